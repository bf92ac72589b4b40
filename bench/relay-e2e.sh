#!/usr/bin/env bash
# Reproduces the end-to-end figures of docs/performance.md with one command:
# each scenario spawns its own relay on a fresh database migrated by
# cmd/migrate (relaybench --spawn), so only a PostgreSQL server is needed
# (DATABASE_URL names a database on it to connect to for CREATE DATABASE;
# default: host=127.0.0.1 dbname=postgres).
#
#   bench/relay-e2e.sh [OUTDIR]        # default OUTDIR: docs/perf
#
# Scenarios (the targets of issue 7):
#   latency    10,000 SSE subscribers, 200 inserts/s, 100 recipients each
#   broadcast  10,000 SSE subscribers, every template to all of them
#   idle       50,000 idle SSE subscribers: relay RSS per subscriber, read
#              after 130 s so that the runtime's periodic GC (every 2 min)
#              has run and the figure is live memory, not garbage
#   scale      50,000 SSE subscribers on 4 relays (12,500 each) on one
#              database, 200 inserts/s, 100 recipients each; relaybench
#              spreads the streams over as many processes as its open-file
#              limit requires (3 at a limit of 20,000)
# (SCENARIOS="scale" runs only that one; it is not in the default list.)
# CAPTURE=wal runs them with the database in capture mode wal
# (relaybench --capture; the server needs wal_level = logical); TRANSPORT=ws
# over WebSocket instead of SSE.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/perf}
mkdir -p "$out"
secret=${RELAY_JWT_SECRET:-relaybench-secret-0123456789}
go build -o "${TMPDIR:-/tmp}/relaybench" ./cmd/relaybench
mode=()
if [[ -n "${CAPTURE:-}" ]]; then mode+=(--capture "$CAPTURE"); fi
if [[ -n "${TRANSPORT:-}" ]]; then mode+=(--transport "$TRANSPORT"); fi
rb() { "${TMPDIR:-/tmp}/relaybench" --spawn 1 --jwt-secret "$secret" "${mode[@]}" "$@"; }

scenarios=${SCENARIOS:-latency broadcast idle}
for s in $scenarios; do
    echo "== $s (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    case $s in
    latency)
        rb --label latency --subscribers 10000 --audience 100 --rate 200 --warmup 5s --duration 30s \
           --connect-concurrency 128 --json "$out/latency.json" --plot "$out/latency.svg" ;;
    broadcast)
        rb --label broadcast --subscribers 10000 --audience 10000 --rate 15 --warmup 3s --duration 20s \
           --connect-concurrency 128 --relay-flag=--queue-size=4096 --json "$out/broadcast.json" --plot "$out/broadcast.svg" ;;
    scale)
        "${TMPDIR:-/tmp}/relaybench" --spawn 4 --jwt-secret "$secret" "${mode[@]}" --label scale-50k-4-relays \
           --subscribers 50000 --audience 100 --rate 200 --warmup 5s --duration 30s --drain 30s --producers 16 \
           --connect-concurrency 128 --json "$out/scale-50k-4-relays.json" --plot "$out/scale-50k-4-relays.svg" ;;
    idle)
        rb --label idle --subscribers 50000 --audience 100 --rate 0 --settle 130s \
           --connect-concurrency 256 --json "$out/idle.json" ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
done
