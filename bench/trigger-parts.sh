#!/usr/bin/env bash
# What each part of a topic's capture trigger costs a producer: the
# templates topic's capture function is replaced by variants that leave one
# part out, and single-row INSERTs from pgbench are run against each, rounds
# interleaved, with a relay (cmd/relay) running as deployed. For each run it
# prints tx/s and the whole machine's CPU time per insert (every process,
# from /proc/stat), which is what decides throughput on a machine whose
# cores are the limit.
#
#   app      pgrelay's capture trigger disabled (the app's own checks only)
#   asis     the capture function as relay.create_topic makes it
#   noaud    without the audience: '{}' instead of the topic's audience function
#   nowake   without the sequencer's idle check and wake-up NOTIFY
#   noset    without the function's fixed search_path (measurement only: a
#            SECURITY DEFINER function without one is unsafe)
#
# The variants are measurements, not configurations: the original function
# is put back at the end.
#
# Usage: bash bench/trigger-parts.sh
#   DATABASE_URL   as for bench/producer-cost.sh (unset: a database
#                  pgrelay_trigger_parts is created and dropped)
#   CLIENTS=16 SECONDS_PER_RUN=8 ROUNDS=2 VARIANTS="app asis noaud nowake noset"
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-16}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
ROUNDS=${ROUNDS:-2}
VARIANTS=${VARIANTS:-app asis noaud nowake noset}
RELAY_ADDR=${RELAY_ADDR:-127.0.0.1:18098}
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"

. bench/lib.sh
use_database pgrelay_trigger_parts
sql() { psql -qXAt -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$1"; }

relay_pid="" orig=""
cleanup() {
    if [[ -n "$orig" ]]; then printf '%s\n' "$orig" | psql -qX "$DATABASE_URL" >/dev/null 2>&1 || true; fi
    if [[ -n "$relay_pid" ]]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
    psql -qX "$DATABASE_URL" -f bench/teardown.sql >/dev/null 2>&1 || true
    drop_created_database
}
trap cleanup EXIT

mkdir -p "$bin"
go build -o "$bin/migrate" ./cmd/migrate
go build -o "$bin/relay" ./cmd/relay
"$bin/migrate" up >/dev/null
psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/setup.sql
"$bin/relay" --addr "$RELAY_ADDR" --jwt-secret bench-secret-0123456789abcdef >"$bin/trigger-parts-relay.log" 2>&1 &
relay_pid=$!
wait_for_sequencer

orig=$(sql "SELECT pg_get_functiondef('relay.capture_templates()'::regprocedure)")
audience="coalesce(relay.templates_audience(NEW), '{}')"
wake_returning='RETURNING (SELECT s.idle FROM relay.sequencer s) INTO idle;'

# variant NAME prints the capture function of variant NAME, and fails if
# the part it leaves out is not where it was expected (the function changed).
variant() {
    local f=$orig
    case $1 in
    asis) ;;
    noaud) f=${f/"$audience"/"'{}'::text[]"} ;;
    nowake) f=$(printf '%s\n' "${f/"$wake_returning"/;}" | awk '
        # Drop the IF idle THEN block, with the IFs nested in it.
        /^ *IF idle THEN/ { depth = 1; next }
        depth > 0 && /^ *IF / { depth++ }
        depth > 0 && /^ *END IF;/ { depth--; next }
        depth == 0') ;;
    noset) f=$(printf '%s\n' "$f" | grep -v '^ SET search_path') ;;
    *) echo "unknown variant $1" >&2; return 1 ;;
    esac
    if [[ $1 != asis && "$f" == "$orig" ]]; then
        echo "variant $1: the part it leaves out was not found in relay.capture_templates()" >&2
        return 1
    fi
    printf '%s\n' "$f"
}

machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

echo "capture trigger parts: $CLIENTS clients, $ROUNDS rounds x $SECONDS_PER_RUN s per variant, a relay running"
for round in $(seq 1 "$ROUNDS"); do
    for v in $VARIANTS; do
        psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/reset.sql
        if [[ $v == app ]]; then
            sql "ALTER TABLE public.templates DISABLE TRIGGER pgrelay_templates"
        else
            variant "$v" | psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null
        fi
        c0=$(machine_ticks)
        tps=$(pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f bench/insert_templates.sql "$DATABASE_URL" 2>"$bin/pgbench.err" |
            awk '/^tps = .*without initial connection time/ { print $3 }')
        c1=$(machine_ticks)
        n=$(sql "SELECT count(*) FROM public.templates")
        sql "ALTER TABLE public.templates ENABLE TRIGGER pgrelay_templates"
        printf '%s\n' "$orig" | psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null
        if [[ -z "$tps" || $n -eq 0 ]]; then
            echo "pgbench failed for variant $v:" >&2
            cat "$bin/pgbench.err" >&2
            exit 1
        fi
        printf 'round %s  %-8s %8.0f tx/s  %4d µs machine CPU/insert  (load %s)\n' \
            "$round" "$v" "$tps" $(((c1 - c0) * 1000000 / hz / n)) "$(cut -d' ' -f1-3 /proc/loadavg)"
    done
done
echo "machine: $(nproc) cores, $(sql 'SHOW server_version'), synchronous_commit=$(sql 'SHOW synchronous_commit'), $(date -u '+%Y-%m-%d %H:%M UTC')"
