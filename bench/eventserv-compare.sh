#!/usr/bin/env bash
# pgrelay (SSE and WebSocket) and pg_eventserv side by side, in one session,
# on pg_eventserv's own scenario: every inserted row goes to every
# subscriber. Each system gets only its own trigger while it is measured
# (pgrelay's capture trigger, or a trigger that NOTIFYs the row as JSON for
# pg_eventserv), and runs are interleaved so that the machine's drift hits
# every system alike.
#
# pg_eventserv is not part of this repository: build it yourself from its
# public repository (github.com/CrunchyData/pg_eventserv, `go build`) and
# give the binary's path. Nothing of it is committed here.
#
# Usage: PG_EVENTSERV_BIN=/path/to/pg_eventserv bash bench/eventserv-compare.sh [OUTDIR]
#   SUBSCRIBERS="1000 5000"  RATE=44  ROUNDS=2  WARMUP=3s  DURATION=20s
#   SYSTEMS="pg_eventserv sse ws"
#   DATABASE_URL  server to create the database pgrelay_evcompare on
#                 (default host=127.0.0.1 dbname=postgres); dropped at the end
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PG_EVENTSERV_BIN:?set PG_EVENTSERV_BIN to a pg_eventserv binary built from its public repository}"
out=${1:-bench/out/evcompare}
SUBSCRIBERS=${SUBSCRIBERS:-1000 5000}
RATE=${RATE:-44}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-20s}
SYSTEMS=${SYSTEMS:-pg_eventserv sse ws}
server=${DATABASE_URL:-host=127.0.0.1 dbname=postgres}
db=pgrelay_evcompare
dburl="$server dbname=$db"
secret=evcompare-secret-0123456789abcdef
relay_addr=127.0.0.1:18110
es_port=17700
mkdir -p "$out"

. bench/lib.sh
build_binaries

cleanup() {
    stop_pids
    psql -qX "$server" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -qX "$server" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
DATABASE_URL="$dburl" "$bin/migrate" up >/dev/null
psql -qX -v ON_ERROR_STOP=1 "$dburl" <<'SQL'
CREATE FUNCTION public.evcompare_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relaybench_templates', row_to_json(NEW)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER evcompare_notify AFTER INSERT ON public.templates
    FOR EACH ROW EXECUTE FUNCTION public.evcompare_notify();
ALTER TABLE public.templates DISABLE TRIGGER evcompare_notify;
SQL

"$bin/relay" --addr "$relay_addr" --database-url "$dburl" --jwt-secret "$secret" \
    --max-connections 20000 >"$out/relay.log" 2>&1 &
relay_pid=$!; pids+=("$relay_pid")
for _ in $(seq 1 100); do
    curl -sf "http://$relay_addr/readyz" >/dev/null && break
    sleep 0.1
done

# start_eventserv starts a fresh pg_eventserv for each of its runs: one that
# fell behind keeps its backlog (and, seen here, stops delivering to the
# streams of the next run), which would be measured instead of the run.
es_pid=""
start_eventserv() {
    if [[ -n "$es_pid" ]]; then kill "$es_pid" 2>/dev/null || true; wait "$es_pid" 2>/dev/null || true; fi
    ES_DBCONNECTION="$dburl" ES_HTTPHOST=127.0.0.1 ES_HTTPPORT=$es_port ES_HTTPSPORT=$((es_port + 1)) \
        "$PG_EVENTSERV_BIN" >>"$out/pg_eventserv.log" 2>&1 &
    es_pid=$!; pids+=("$es_pid")
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$es_port/" && return
        sleep 0.1
    done
    echo "pg_eventserv did not answer on port $es_port (log: $out/pg_eventserv.log)" >&2
    exit 1
}

# trigger_for SYSTEM leaves on only the trigger that SYSTEM reads.
trigger_for() {
    case $1 in
    pg_eventserv) psql -qX "$dburl" -c "ALTER TABLE public.templates DISABLE TRIGGER pgrelay_templates" \
                                    -c "ALTER TABLE public.templates ENABLE TRIGGER evcompare_notify" ;;
    *) psql -qX "$dburl" -c "ALTER TABLE public.templates DISABLE TRIGGER evcompare_notify" \
                         -c "ALTER TABLE public.templates ENABLE TRIGGER pgrelay_templates" ;;
    esac
}

summary="$out/summary.tsv"
printf 'round\tsubscribers\tsystem\tp50_ms\tp99_ms\tp999_ms\tdelivered\tmissing\tload\n' >"$summary"
for round in $(seq 1 "$ROUNDS"); do
    for n in $SUBSCRIBERS; do
        for system in $SYSTEMS; do
            trigger_for "$system"
            url=http://$relay_addr pid=$relay_pid transport=$system
            if [[ $system == pg_eventserv ]]; then start_eventserv; url=http://127.0.0.1:$es_port pid=$es_pid; fi
            json="$out/$system-$n-r$round.json"
            echo "== round $round, $n subscribers, $system (load $(cut -d' ' -f1-3 /proc/loadavg))"
            "$bin/relaybench" --url "$url" --relay-pid "$pid" --transport "$transport" \
                --database-url "$dburl" --jwt-secret "$secret" --label "$system-$n" \
                --subscribers "$n" --audience "$n" --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" \
                --connect-concurrency 128 --json "$json" | tail -n 12
            jq -r --arg r "$round" --arg n "$n" --arg s "$system" --arg l "$(cut -d' ' -f1 /proc/loadavg)" \
                '[$r, $n, $s, .load.latency.p50_ms, .load.latency.p99_ms, .load.latency.p999_ms, .load.deliveries, .load.deliveries_missing, $l] | @tsv' \
                "$json" >>"$summary"
        done
    done
done
echo; column -t "$summary"
