#!/usr/bin/env bash
# Producer cost: what pgrelay's write path costs an application that inserts
# templates. Single-row INSERTs from 16 pgbench clients, one configuration at
# a time, rounds interleaved so drift (autovacuum, checkpoints, a noisy
# neighbour) hits every configuration alike.
#
#   a  plain      a table with the columns of public.templates and no trigger
#   b  app        public.templates with the app's own triggers (location
#                 check, foreign key) but pgrelay's capture trigger disabled
#   c  busy       fully installed, sequencer busy (no NOTIFY), and a poller
#                 reading the log every 2 ms in another process
#   d  idle       fully installed, sequencer idle: every insert sends the
#                 wake NOTIFY
#
# Usage: bash bench/producer-cost.sh
#   DATABASE_URL   database to use; pgrelay is migrated into it and a `bench`
#                  schema is created and dropped again. Unset: a database
#                  pgrelay_bench is created (and dropped at the end) on the
#                  libpq default server, host 127.0.0.1 if PGHOST is unset.
#   ROUNDS=3 SECONDS_PER_RUN=20 CLIENTS=16   the shape of the run
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
out=bench/out
# Fixture scripts are re-runnable; their "does not exist, skipping" notices are noise.
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
mkdir -p "$out"

created_db=""
if [[ -z "${DATABASE_URL:-}" ]]; then
    export PGHOST=${PGHOST:-127.0.0.1}
    psql -qX -d postgres -c "DROP DATABASE IF EXISTS pgrelay_bench WITH (FORCE)" -c "CREATE DATABASE pgrelay_bench"
    created_db=pgrelay_bench
    DATABASE_URL="host=$PGHOST dbname=pgrelay_bench"
fi
export DATABASE_URL

poller_pid=""
cleanup() {
    if [[ -n "$poller_pid" ]]; then kill "$poller_pid" 2>/dev/null || true; fi
    psql -qX "$DATABASE_URL" -f bench/teardown.sql >/dev/null 2>&1 || true
    if [[ -n "$created_db" ]]; then
        psql -qX -d postgres -c "DROP DATABASE IF EXISTS $created_db WITH (FORCE)" || true
    fi
}
trap cleanup EXIT

go build -o "$out/migrate" ./cmd/migrate
go build -o "$out/poller" ./bench/cmd/poller
"$out/migrate" up >/dev/null
psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/setup.sql

sql() { psql -qXAt -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$1"; }

# run CONFIG prints the tx/s of one pgbench run in that configuration.
run() {
    local config=$1 script=bench/insert_templates.sql
    psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/reset.sql
    case $config in
    plain) script=bench/insert_plain.sql ;;
    app) sql "ALTER TABLE public.templates DISABLE TRIGGER pgrelay_templates" ;;
    busy)
        sql "UPDATE relay.sequencer SET idle = false, changed_at = now()"
        "$out/poller" --interval 2ms >"$out/poller.log" 2>&1 &
        poller_pid=$!
        ;;
    idle) sql "UPDATE relay.sequencer SET idle = true, changed_at = now()" ;;
    esac
    local tps
    tps=$(pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -f "$script" "$DATABASE_URL" 2>"$out/pgbench.err" |
        awk '/^tps = .*without initial connection time/ { print $3 }')
    case $config in
    app) sql "ALTER TABLE public.templates ENABLE TRIGGER pgrelay_templates" ;;
    busy)
        kill -TERM "$poller_pid"
        wait "$poller_pid" || true
        poller_pid=""
        sql "UPDATE relay.sequencer SET idle = true, changed_at = now()"
        echo "  $(cat "$out/poller.log")" >&2
        ;;
    esac
    if [[ -z "$tps" ]]; then
        echo "pgbench failed in configuration $config:" >&2
        cat "$out/pgbench.err" >&2
        exit 1
    fi
    echo "$tps"
}

configs=(plain app busy idle)
results="$out/results.tsv"
: >"$results"
echo "producer cost: $CLIENTS clients, $ROUNDS rounds x $SECONDS_PER_RUN s per configuration"
for round in $(seq 1 "$ROUNDS"); do
    for config in "${configs[@]}"; do
        tps=$(run "$config")
        printf '%s\t%s\t%s\n' "$round" "$config" "$tps" >>"$results"
        printf 'round %s  %-6s %10.0f tx/s\n' "$round" "$config" "$tps"
    done
done

echo
echo "summary (ratio to plain, per round and mean of the rounds):"
awk -F'\t' -v configs="${configs[*]}" '
    { tps[$1, $2] = $3; if ($1 > rounds) rounds = $1 }
    END {
        n = split(configs, c, " ")
        for (i = 1; i <= n; i++) {
            sum = 0; ratios = ""
            for (r = 1; r <= rounds; r++) {
                sum += tps[r, c[i]]
                ratios = ratios sprintf(" %.2f", tps[r, c[i]] / tps[r, "plain"])
            }
            mean = sum / rounds
            if (i == 1) base = mean
            printf "  %-6s mean %8.0f tx/s  ratio %.2fx  (rounds:%s)\n", c[i], mean, mean / base, ratios
        }
    }' "$results"
echo
echo "machine: $(nproc) cores, $(free -h | awk '/^Mem:/ { print $2 }') memory, $(sql 'SHOW server_version'), synchronous_commit=$(sql 'SHOW synchronous_commit'), $(date -u +%Y-%m-%d)"
