#!/usr/bin/env bash
# What each extra relay costs PostgreSQL: the same subscribers and insert
# rate served by 1, 2, 4, 8 and 16 relays (relaybench --spawn N, each run on
# a fresh database), and for each the database side of it during the
# measured window: connections held by relays, transactions per second
# (pg_stat_database.xact_commit: the sequencer's polls, every relay's reads
# and the producer's inserts), and CPU of the database's backends, split
# into the relays' sessions and the producer's.
#
# Usage: bash bench/relay-count.sh [OUTDIR]
#   RELAYS="1 2 4 8 16"  SUBSCRIBERS=4000  AUDIENCE=100  RATE=200
#   WARMUP=5s  DURATION=20s  (the sample covers 10 s of the measured window)
#   DATABASE_URL  server relaybench creates its databases on
#                 (default host=127.0.0.1 dbname=postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/relay-count}
RELAYS=${RELAYS:-1 2 4 8 16}
SUBSCRIBERS=${SUBSCRIBERS:-4000}
AUDIENCE=${AUDIENCE:-100}
RATE=${RATE:-200}
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-20s}
server=${DATABASE_URL:-host=127.0.0.1 dbname=postgres}
secret=relaycount-secret-0123456789abcdef
mkdir -p "$out"
. bench/lib.sh
build_binaries
hz=$(getconf CLK_TCK)
sql() { psql -qXAt "$server" -c "$1"; }

# ticks DB APP_PATTERN prints "pid ticks" (user + system CPU) for each of
# DB's backends whose application_name matches APP_PATTERN (LIKE).
ticks() {
    local p
    for p in $(sql "SELECT pid FROM pg_stat_activity WHERE datname = '$1' AND application_name LIKE '$2'"); do
        awk -v p="$p" '{ print p, $14 + $15 }' "/proc/$p/stat" 2>/dev/null || true
    done
}
# delta BEFORE AFTER sums the ticks spent in between by the backends present
# in both samples (one that ended or began meanwhile is left out, not
# counted as negative time).
delta() {
    awk 'NR == FNR { before[$1] = $2; next } ($1 in before) { sum += $2 - before[$1] } END { print sum + 0 }' <(echo "$1") <(echo "$2")
}

summary="$out/summary.tsv"
printf 'relays\trelay_connections\ttx_per_s\trelay_backends_cpu_pct\tproducer_backends_cpu_pct\tp50_ms\tp99_ms\tp999_ms\tmissing\tload\n' >"$summary"
for n in $RELAYS; do
    log="$out/relaybench-$n.txt" json="$out/relays-$n.json"
    echo "== $n relay(s), $SUBSCRIBERS subscribers, $RATE inserts/s (load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$bin/relaybench" --spawn "$n" --relay-bin "$bin/relay" --migrate-bin "$bin/migrate" \
        --database-url "$server" --jwt-secret "$secret" --label "relays-$n" \
        --subscribers "$SUBSCRIBERS" --audience "$AUDIENCE" --rate "$RATE" \
        --warmup "$WARMUP" --duration "$DURATION" --connect-concurrency 128 --json "$json" >"$log" 2>&1 &
    bench=$!
    until grep -q "inserting" "$log" 2>/dev/null; do
        kill -0 "$bench" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.2
    done
    sleep "${WARMUP%s}"
    db=$(sql "SELECT datname FROM pg_stat_activity WHERE datname LIKE 'relaybench_%' AND application_name LIKE 'pgrelay%' LIMIT 1")
    conns=$(sql "SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' AND application_name LIKE 'pgrelay%'")
    x0=$(sql "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'")
    r0=$(ticks "$db" 'pgrelay%'); p0=$(ticks "$db" 'relaybench')
    t0=$(date +%s%3N)
    sleep 10
    x1=$(sql "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'")
    r1=$(ticks "$db" 'pgrelay%'); p1=$(ticks "$db" 'relaybench')
    t1=$(date +%s%3N)
    wait "$bench" || true
    tail -n 6 "$log"
    ms=$((t1 - t0))
    jq -r --arg n "$n" --arg c "$conns" \
        --arg tx "$(( (x1 - x0) * 1000 / ms ))" \
        --arg r "$(( $(delta "$r0" "$r1") * 100000 / hz / ms ))" --arg p "$(( $(delta "$p0" "$p1") * 100000 / hz / ms ))" \
        --arg l "$(cut -d' ' -f1 /proc/loadavg)" \
        '[$n, $c, $tx, $r, $p, .load.latency.p50_ms, .load.latency.p99_ms, .load.latency.p999_ms, .load.deliveries_missing, $l] | @tsv' \
        "$json" >>"$summary"
done
echo; column -t "$summary"
