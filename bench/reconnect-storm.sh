#!/usr/bin/env bash
# Reconnect storm: four relays on one fresh database, STREAMS_PER_RELAY SSE
# streams on each (relaybench --spawn 4, subscriber i on relay i mod 4),
# RATE inserts/s. KILL_AT into the measured window relay 0 gets SIGKILL
# (SIGNAL); its streams reopen on the other three after a random delay
# within WINDOW, with Last-Event-ID (relaybench --reconnect). Reports the
# time until every stream was back and caught up, the undisturbed streams'
# p99 before, during and after the storm, the database's load and the CPU
# of the relays and of the load generators before and during it (on one
# machine the clients' own reconnecting competes with what they measure),
# and the tally of every template (nothing lost, nothing twice).
#
# Usage: bash bench/reconnect-storm.sh [OUTDIR]
#   STREAMS_PER_RELAY=10000  RATE=200  AUDIENCE=100  WINDOW=5s
#   WARMUP=5s  DURATION=40s  KILL_AT=10s  DRAIN=30s  SIGNAL=KILL
#   RELAY_FLAGS="..."  extra flags for every relay (e.g. "--replay-cache-bytes=0"
#                 to compare a storm without the replay cache)
#   ISOLATE_KILLED=1  hold the killed relay's streams in a load generator of
#                 their own at nice 19 (relaybench --isolate-killed): their
#                 reconnecting then takes only idle CPU, as clients on other
#                 machines would take none of this one's
#   DATABASE_URL  server relaybench creates its database on
#                 (default host=127.0.0.1 dbname=postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/reconnect-storm}
STREAMS_PER_RELAY=${STREAMS_PER_RELAY:-10000}
RATE=${RATE:-200}
AUDIENCE=${AUDIENCE:-100}
WINDOW=${WINDOW:-5s}
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-40s}
KILL_AT=${KILL_AT:-10s}
DRAIN=${DRAIN:-30s}
SIGNAL=${SIGNAL:-KILL}
server=${DATABASE_URL:-host=127.0.0.1 dbname=postgres}
secret=storm-secret-0123456789abcdef
mkdir -p "$out"
. bench/lib.sh
build_binaries
relay_flags=()
for f in ${RELAY_FLAGS:-}; do relay_flags+=("--relay-flag=$f"); done
if [[ -n "${ISOLATE_KILLED:-}" ]]; then relay_flags+=(--isolate-killed); fi

subs=$((4 * STREAMS_PER_RELAY))
json="$out/storm-$SIGNAL.json"
echo "== reconnect storm: $subs streams on 4 relays, SIG$SIGNAL to relay 0 at $KILL_AT, $RATE inserts/s (load $(cut -d' ' -f1-3 /proc/loadavg))"
"$bin/relaybench" --spawn 4 --relay-bin "$bin/relay" --migrate-bin "$bin/migrate" "${relay_flags[@]}" \
    --database-url "$server" --jwt-secret "$secret" --label "reconnect-storm-$SIGNAL" \
    --subscribers "$subs" --audience "$AUDIENCE" --rate "$RATE" \
    --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" --connect-concurrency 128 \
    --reconnect --reconnect-window "$WINDOW" --kill-after "$KILL_AT" --kill-relay 0 --kill-signal "$SIGNAL" \
    --json "$json" | tee "$out/storm-$SIGNAL.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "per second (from the kill at .storm.killed_at_s): tx/s, relay backends CPU %, undisturbed p99 ms"
jq -r '.database.per_second[] | [.at_s, .tx_per_s, .relay_backends_cpu_pct, .relay_processes_cpu_pct, .undisturbed_p99_ms] | map(. * 10 | round / 10) | @tsv' "$json" |
    column -t -N at_s,tx_per_s,relay_backends_cpu,relay_procs_cpu,undisturbed_p99_ms
