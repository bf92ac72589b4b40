#!/usr/bin/env bash
# pgrelay (SSE and WebSocket) and pg_eventserv side by side, in one session,
# on pg_eventserv's own scenario: every inserted row goes to every
# subscriber. Each system gets only its own trigger while it is measured
# (pgrelay's capture trigger, or a trigger that NOTIFYs the row as JSON for
# pg_eventserv), and runs are interleaved so that the machine's drift hits
# every system alike. The system "floor" is bench/cmd/fanfloor: the same
# number of loopback connections written and read with nothing else in the
# way, the least latency any server can reach here with clients on the same
# cores.
#
# pg_eventserv is not part of this repository: build it yourself from its
# public repository (github.com/CrunchyData/pg_eventserv, `go build`) and
# give the binary's path. Nothing of it is committed here.
#
# Usage: PG_EVENTSERV_BIN=/path/to/pg_eventserv bash bench/eventserv-compare.sh [OUTDIR]
#   SUBSCRIBERS="1000 5000"  RATE=44  ROUNDS=2  WARMUP=3s  DURATION=20s
#   SYSTEMS="floor pg_eventserv sse ws"
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
SYSTEMS=${SYSTEMS:-floor pg_eventserv sse ws}
server=${DATABASE_URL:-host=127.0.0.1 dbname=postgres}
db=pgrelay_evcompare
dburl="$server dbname=$db"
secret=evcompare-secret-0123456789abcdef
relay_addr=127.0.0.1:18110
es_port=17700
mkdir -p "$out"

. bench/lib.sh
build_binaries
go build -o "$bin/fanfloor" ./bench/cmd/fanfloor

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

# fanout_quantiles BEFORE AFTER TRANSPORT prints the p50 and p99, in ms, of
# pgrelay_fanout_seconds between two scrapes of /metrics (the upper bounds of
# the buckets they fall in): the relay's own share of the deliveries'
# latency, from an event reaching its hub to the write to the client.
fanout_quantiles() {
    awk -v tr="$3" '
        $1 ~ "^pgrelay_fanout_seconds_bucket\\{transport=\"" tr "\"" {
            le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
            if (FILENAME == ARGV[1]) { before[le] = $2 } else { n++; les[n] = le; delta[le] = $2 - before[le] }
        }
        END {
            total = delta["+Inf"]
            if (total <= 0) { print "-\t-"; exit }
            p50 = "-"; p99 = "-"
            for (i = 1; i <= n; i++) {
                if (p50 == "-" && delta[les[i]] >= 0.5 * total) p50 = les[i]
                if (p99 == "-" && delta[les[i]] >= 0.99 * total) p99 = les[i]
            }
            print ms_of(p50) "\t" ms_of(p99)
        }
        function ms_of(v) { return v == "+Inf" ? v : v * 1000 }' "$1" "$2"
}

summary="$out/summary.tsv"
# server_us and client_us are CPU time per delivery (µs) of the system
# measured and of relaybench, over the measured window (floor: of its one
# process, both ends): on a machine whose cores the two share, their sum
# bounds how fast one row reaches everyone.
# relay_fanout_p50_ms and relay_fanout_p99_ms: see fanout_quantiles (pgrelay
# only; they include the warm-up's deliveries).
printf 'round\tsubscribers\tsystem\tp50_ms\tp99_ms\tp999_ms\tdelivered\tmissing\tserver_us\tclient_us\trelay_fanout_p50_ms\trelay_fanout_p99_ms\tload\n' >"$summary"
for round in $(seq 1 "$ROUNDS"); do
    for n in $SUBSCRIBERS; do
        for system in $SYSTEMS; do
            if [[ $system == floor ]]; then
                echo "== round $round, $n subscribers, floor (load $(cut -d' ' -f1-3 /proc/loadavg))"
                "$bin/fanfloor" --subscribers "$n" --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" >"$out/floor-$n-r$round.txt"
                line=$(<"$out/floor-$n-r$round.txt")
                echo "$line"
                field() { tr ' ' '\n' <<<"$line" | sed -n "s/^$1=//p" | sed 's/ms$//; s/us$//'; }
                # One process writes and reads: its CPU per delivery is both ends'.
                printf '%s\t%s\tfloor\t%s\t%s\t%s\t%s\t0\t%s\t-\t-\t-\t%s\n' "$round" "$n" \
                    "$(field p50)" "$(field p99)" "$(field p99.9)" "$(field deliveries)" "$(field cpu_per_delivery)" \
                    "$(cut -d' ' -f1 /proc/loadavg)" >>"$summary"
                continue
            fi
            trigger_for "$system"
            url=http://$relay_addr pid=$relay_pid transport=$system
            if [[ $system == pg_eventserv ]]; then start_eventserv; url=http://127.0.0.1:$es_port pid=$es_pid; fi
            json="$out/$system-$n-r$round.json"
            echo "== round $round, $n subscribers, $system (load $(cut -d' ' -f1-3 /proc/loadavg))"
            curl -sf "http://$relay_addr/metrics" >"$json.metrics-before" || true
            "$bin/relaybench" --url "$url" --relay-pid "$pid" --transport "$transport" \
                --database-url "$dburl" --jwt-secret "$secret" --label "$system-$n" \
                --subscribers "$n" --audience "$n" --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" \
                --connect-concurrency 128 --json "$json" | tail -n 12
            jq -r --arg r "$round" --arg n "$n" --arg s "$system" \
                '(.load.deliveries_per_second | if . > 0 then 1e4 / . else 0 end) as $per
                | [$r, $n, $s, .load.latency.p50_ms, .load.latency.p99_ms, .load.latency.p999_ms, .load.deliveries, .load.deliveries_missing,
                   (.database.measured.relay_processes_cpu_pct * $per | . * 100 | round / 100),
                   (.database.measured.relaybench_processes_cpu_pct * $per | . * 100 | round / 100)] | @tsv' \
                "$json" | tr -d '\n' >>"$summary"
            curl -sf "http://$relay_addr/metrics" >"$json.metrics-after" || true
            fanout="-\t-"
            [[ $system == pg_eventserv ]] || fanout=$(fanout_quantiles "$json.metrics-before" "$json.metrics-after" "$system")
            printf '\t%b\t%s\n' "$fanout" "$(cut -d' ' -f1 /proc/loadavg)" >>"$summary"
        done
    done
done
echo; column -t "$summary"
