#!/usr/bin/env bash
# Failover under load: three relays on one fresh database; relay A is the
# sequencer, subscribers are on B and C. relaybench inserts at RATE/s while,
# a few seconds into the measured window, A is stopped (SIGKILL, then in a
# second run SIGTERM). Reports, per run, the time from the signal until B or
# C says in /readyz that it is the sequencer, and relaybench's figures for
# the whole window: every template delivered exactly once, in order, and how
# late the events committed around the gap arrived (the max latency; p99 once
# the gap holds more than 1% of the window's events).
#
# Usage: bash bench/failover.sh [OUTDIR]
#   SIGNALS="KILL TERM"  RATE=200  SUBSCRIBERS=2000  AUDIENCE=100
#   WARMUP=3s DURATION=20s  STOP_AT=8 (seconds after relaybench starts)
#   RELAY_FLAGS="..."  extra flags for every relay
#   DATABASE_URL  server to create pgrelay_failover on (default
#                 host=127.0.0.1 dbname=postgres); dropped at the end
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/failover}
SIGNALS=${SIGNALS:-KILL TERM}
RATE=${RATE:-200}
SUBSCRIBERS=${SUBSCRIBERS:-2000}
AUDIENCE=${AUDIENCE:-100}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-20s}
STOP_AT=${STOP_AT:-8}
read -ra relay_flags <<<"${RELAY_FLAGS:-}"
server=${DATABASE_URL:-host=127.0.0.1 dbname=postgres}
db=pgrelay_failover
dburl="$server dbname=$db"
secret=failover-secret-0123456789abcdef
mkdir -p "$out"

. bench/lib.sh
build_binaries

trap 'stop_pids; psql -qX "$server" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

# readyz ADDR prints "true" if the relay at ADDR is the sequencer.
readyz() { curl -s --max-time 0.5 "http://$1/readyz" | jq -r '.sequencer' 2>/dev/null || echo false; }
now_ms() { date +%s%3N; }

printf 'signal\tnew_sequencer_ms\treadyz_ms\tp50_ms\tp99_ms\tp999_ms\tmax_ms\tdelivered\tmissing\textra\tout_of_order\tload\n' >"$out/summary.tsv"
for sig in $SIGNALS; do
    psql -qX "$server" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    DATABASE_URL="$dburl" "$bin/migrate" up >/dev/null
    addrs=(127.0.0.1:18121 127.0.0.1:18122 127.0.0.1:18123)
    relay_pids=()
    for i in 0 1 2; do
        "$bin/relay" --addr "${addrs[$i]}" --name "relay-$i" --database-url "$dburl" --jwt-secret "$secret" \
            "${relay_flags[@]}" >"$out/relay-$sig-$i.log" 2>&1 &
        relay_pids+=($!); pids+=($!)
        # A first, alone, so that it is the sequencer.
        if [[ $i == 0 ]]; then
            for _ in $(seq 1 100); do [[ $(readyz "${addrs[0]}") == true ]] && break; sleep 0.1; done
            [[ $(readyz "${addrs[0]}") == true ]] || { echo "relay A did not become the sequencer" >&2; exit 1; }
        fi
    done
    for a in "${addrs[@]:1}"; do
        for _ in $(seq 1 100); do curl -sf "http://$a/readyz" >/dev/null && break; sleep 0.1; done
    done
    json="$out/failover-$sig.json"
    echo "== SIG$sig of the sequencer under $RATE inserts/s (load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$bin/relaybench" --url "http://${addrs[1]}" --url "http://${addrs[2]}" \
        --relay-pid "${relay_pids[1]}" --relay-pid "${relay_pids[2]}" \
        --database-url "$dburl" --jwt-secret "$secret" --label "failover-$sig" \
        --subscribers "$SUBSCRIBERS" --audience "$AUDIENCE" --rate "$RATE" \
        --warmup "$WARMUP" --duration "$DURATION" --json "$json" >"$out/relaybench-$sig.txt" 2>&1 &
    bench=$!; pids+=($bench)
    sleep "$STOP_AT"
    t0=$(now_ms)
    kill -s "$sig" "${relay_pids[0]}"
    echo "SIG$sig sent to the sequencer at $(date -u -d @"${t0:0:10}.${t0:10}" +%H:%M:%S.%3N) (UTC; the relays' logs say when each took over)"
    # Watched through /readyz too, but taken from the relays' logs: a
    # curl per relay every few milliseconds on a loaded machine adds its own
    # delay to what it watches.
    seen=""
    while [[ -z $seen ]] && (( $(now_ms) - t0 < 10000 )); do
        for a in "${addrs[@]:1}"; do
            if [[ $(readyz "$a") == true ]]; then seen=$(( $(now_ms) - t0 )); break; fi
        done
        [[ -n $seen ]] || sleep 0.005
    done
    took=""
    for i in 1 2; do
        while read -r ts; do
            t=$(date -u -d "$ts" +%s%3N)
            if (( t >= t0 )) && [[ -z $took || $((t - t0)) -lt $took ]]; then took=$((t - t0)); fi
        done < <(sed -n 's/^time=\([^ ]*\) .*msg="this relay is now the sequencer".*/\1/p' "$out/relay-$sig-$i.log")
    done
    echo "new sequencer after ${took:-?} ms by its log, ${seen:-more than 10000} ms as seen through /readyz"
    wait "$bench" || true
    tail -n 8 "$out/relaybench-$sig.txt"
    jq -r --arg s "$sig" --arg t "${took:-none}" --arg seen "${seen:-timeout}" --arg l "$(cut -d' ' -f1 /proc/loadavg)" \
        '[$s, $t, $seen, .load.latency.p50_ms, .load.latency.p99_ms, .load.latency.p999_ms, .load.latency.max_ms, .load.deliveries, .load.deliveries_missing, .load.deliveries_extra, .load.ids_not_increasing, $l] | @tsv' \
        "$json" >>"$out/summary.tsv"
    stop_pids
done
echo; column -t "$out/summary.tsv"
