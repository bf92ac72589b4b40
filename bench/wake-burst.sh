#!/usr/bin/env bash
# Wake-up cost of a burst: how many NOTIFYs on pgrelay_wake a burst of
# inserts sends when it starts while the sequencer is idle. A relay runs
# against a fresh database; after QUIET seconds without inserts, CLIENTS
# pgbench clients insert INSERTS templates between them, and a session
# listening on pgrelay_wake counts the notifications.
#
# Usage: bash bench/wake-burst.sh
#   ROUNDS=3 QUIET=5 CLIENTS=16 INSERTS=1008   the shape of the run
#   RELAY_BIN, MIGRATE_BIN   binaries to measure (default: built from here)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
QUIET=${QUIET:-5}
CLIENTS=${CLIENTS:-16}
INSERTS=${INSERTS:-1008}
out=bench/out
mkdir -p "$out"
export PGHOST=${PGHOST:-127.0.0.1}
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
db=pgrelay_wake_bench
DATABASE_URL="host=$PGHOST dbname=$db"
export DATABASE_URL

relay_pid=""
cleanup() {
    if [[ -n "$relay_pid" ]]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
    psql -qX -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT

RELAY_BIN=${RELAY_BIN:-$out/relay}
MIGRATE_BIN=${MIGRATE_BIN:-$out/migrate}
[[ -n "${RELAY_BIN_GIVEN:-}" ]] || go build -o "$out/relay" ./cmd/relay
[[ -n "${RELAY_BIN_GIVEN:-}" ]] || go build -o "$out/migrate" ./cmd/migrate
go build -o "$out/wakecount" ./bench/cmd/wakecount

psql -qX -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
"$MIGRATE_BIN" up >/dev/null
psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/setup.sql
"$RELAY_BIN" --addr 127.0.0.1:18097 --jwt-secret bench-secret-0123456789abcdef >"$out/relay.log" 2>&1 &
relay_pid=$!

per_client=$(( INSERTS / CLIENTS ))
for round in $(seq 1 "$ROUNDS"); do
    sleep "$QUIET"
    "$out/wakecount" >"$out/wakecount.out" 2>"$out/wakecount.err" &
    counter=$!
    until grep -q listening "$out/wakecount.err" 2>/dev/null; do sleep 0.05; done
    idle=$(psql -qXAt "$DATABASE_URL" -c "SELECT idle FROM relay.sequencer")
    pgbench -n -M prepared -c "$CLIENTS" -j 2 -t "$per_client" -f bench/insert_templates.sql "$DATABASE_URL" >"$out/pgbench.out" 2>&1
    tps=$(awk '/^tps = / { print int($3) }' "$out/pgbench.out")
    sleep 1
    kill -TERM "$counter" 2>/dev/null || true
    wait "$counter" || { echo "wakecount failed:" >&2; cat "$out/wakecount.err" >&2; exit 1; }
    printf 'round %s: %s inserts from %s clients after %ss quiet (sequencer idle before: %s): %s, %s tx/s, load %s\n' \
        "$round" "$(( per_client * CLIENTS ))" "$CLIENTS" "$QUIET" "$idle" "$(cat "$out/wakecount.out")" "$tps" "$(cut -d' ' -f1-3 /proc/loadavg)"
done
