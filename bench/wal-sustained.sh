#!/usr/bin/env bash
# Sustained rate in capture mode wal: producers insert templates at a fixed
# rate (pgbench -R) for a fixed time while a relay's sequencer streams the
# replication slot and appends the events; every 100 ms the slot's position
# is sampled against the server's WAL position, and the report says how far
# behind the slot was, in bytes and in seconds, and whether it stayed under
# LAG_TARGET seconds the whole time.
#
# Lag in seconds at a sample is how long it took until the slot's confirmed
# position (confirmed_flush_lsn, which the relay moves only after the events
# are committed in the log) reached the WAL position of that sample: the time
# a row written then waited for the slot to be confirmed past it, to within
# the 100 ms sampling step. Lag in bytes is pg_current_wal_lsn() minus the
# confirmed position at the sample.
#
# CPU time per insert is measured as in bench/producer-cost.sh, from 1 s after
# the producers connected to 1 s before they stop: the producers (pgbench and
# its backends), the relay's backends (its walsender and the session that
# writes the log among them) and the relay process.
#
# Usage: bash bench/wal-sustained.sh
#   DATABASE_URL   database to use; pgrelay is migrated into it. Unset: a
#                  database pgrelay_walsustained is created (and dropped at
#                  the end) on the libpq default server, host 127.0.0.1 if
#                  PGHOST is unset. Needs wal_level = logical.
#   RATE=5000 SECONDS_RUN=60 CLIENTS=8 THREADS=2   the producers
#   LAG_TARGET=1                                   seconds the lag must stay under
#   BIN=DIR        use the migrate and relay binaries in DIR instead of
#                  building them (to compare builds)
#   OUT=bench/out/wal-sustained                    where logs and samples go
#   RELAY_ADDR=127.0.0.1:18098 PPROF_ADDR=         where the relay listens; with
#                  PPROF_ADDR set the relay serves Go profiles there
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-5000}
SECONDS_RUN=${SECONDS_RUN:-60}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
LAG_TARGET=${LAG_TARGET:-1}
RELAY_ADDR=${RELAY_ADDR:-127.0.0.1:18098}
PPROF_ADDR=${PPROF_ADDR:-}
out=${OUT:-bench/out/wal-sustained}
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
mkdir -p "$out"

. bench/lib.sh
use_database pgrelay_walsustained

sql() { psql -qXAt -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$1"; }

relay_pid="" sampler_pid=""
cleanup() {
    if [[ -n "$sampler_pid" ]]; then kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; fi
    if [[ -n "$relay_pid" ]]; then
        # Back to trigger first, so the slot is dropped by the relay, not
        # left behind holding WAL.
        sql "SELECT relay.set_capture('trigger')" >/dev/null 2>&1 || true
        for _ in $(seq 1 100); do
            [[ "$(sql "SELECT slot_name IS NULL FROM relay.capture" 2>/dev/null)" == t ]] && break
            sleep 0.1
        done
        kill "$relay_pid" 2>/dev/null || true
        wait "$relay_pid" 2>/dev/null || true
    fi
    drop_created_database
}
trap cleanup EXIT

bin=${BIN:-$out}
if [[ -z "${BIN:-}" ]]; then
    go build -o "$out/migrate" ./cmd/migrate
    go build -o "$out/relay" ./cmd/relay
fi
"$bin/migrate" up >/dev/null
psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/setup.sql

relay_args=(--addr "$RELAY_ADDR" --jwt-secret bench-secret-0123456789abcdef)
[[ -n "$PPROF_ADDR" ]] && relay_args+=(--pprof-addr "$PPROF_ADDR")
"$bin/relay" "${relay_args[@]}" >"$out/relay.log" 2>&1 &
relay_pid=$!
wait_for_sequencer
sql "SELECT relay.set_capture('wal')" >/dev/null
for _ in $(seq 1 600); do
    [[ "$(sql "SELECT mode = 'wal' FROM relay.capture")" == t ]] && break
    sleep 0.1
done
[[ "$(sql "SELECT mode FROM relay.capture")" == wal ]] || { echo "capture mode wal not in force after 60 s (see $out/relay.log)" >&2; exit 1; }
psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/reset.sql

# The sampler: one session, one row per 100 ms: the time, the server's WAL
# position, the slot's confirmed position and the log's applied position,
# as byte offsets.
samples="$out/samples.tsv"
echo "SELECT extract(epoch FROM clock_timestamp()), pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
             pg_wal_lsn_diff(s.confirmed_flush_lsn, '0/0')::bigint, pg_wal_lsn_diff(c.applied_lsn, '0/0')::bigint
        FROM relay.capture c JOIN pg_catalog.pg_replication_slots s ON s.slot_name = c.slot_name \\watch 0.1" |
    psql -qXAt -F $'\t' "$DATABASE_URL" >"$samples" 2>"$out/sampler.err" &
sampler_pid=$!


load0=$(cut -d' ' -f1-3 /proc/loadavg)
sleep 1
t_start=$(date +%s.%N)
pgbench -n -M prepared -R "$RATE" -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_RUN" -f bench/insert_templates.sql "$DATABASE_URL" >"$out/pgbench.out" 2>"$out/pgbench.err" &
bench=$!
start=$SECONDS
until [[ $(sql "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgbench'") -ge $CLIENTS ]] ||
    ((SECONDS - start > SECONDS_RUN / 2)); do sleep 0.2; done
sleep 1
producers=$(sql "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgbench'")
relays=$(sql "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pgrelay%'")
p0=$(cpu_ticks $producers "$bench"); r0=$(cpu_ticks $relays); x0=$(cpu_ticks "$relay_pid")
n0=$(sql "SELECT count(*) FROM public.templates")
left=$((SECONDS_RUN - (SECONDS - start) - 1))
sleep $((left > 1 ? left : 1))
p1=$(cpu_ticks $producers "$bench"); r1=$(cpu_ticks $relays); x1=$(cpu_ticks "$relay_pid")
n1=$(sql "SELECT count(*) FROM public.templates")
wait "$bench" || { echo "pgbench failed:" >&2; cat "$out/pgbench.err" >&2; exit 1; }
t_end=$(date +%s.%N)
load1=$(cut -d' ' -f1-3 /proc/loadavg)

# Let the capture catch up (up to 30 s), then check that every row is in the
# log once. The samples go on meanwhile: a lag still open at the end of the
# run is measured to when it closed.
t_caught=""
for _ in $(seq 1 300); do
    if [[ "$(sql "SELECT (SELECT count(*) FROM relay.events WHERE topic = 'templates') >= (SELECT count(*) FROM public.templates)")" == t ]]; then
        t_caught=$(date +%s.%N)
        break
    fi
    sleep 0.1
done
sleep 0.5
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
rows=$(sql "SELECT count(*) FROM public.templates")
events=$(sql "SELECT count(*) FROM relay.events WHERE topic = 'templates'")
distinct=$(sql "SELECT count(DISTINCT payload->>'id') FROM relay.events WHERE topic = 'templates'")
# Each log transaction has its own xid: events per xid is the batch size.
batches=$(sql "SELECT count(DISTINCT xid) FROM relay.events WHERE topic = 'templates'")

per=$((1000000 / hz)) n=$((n1 - n0))
cpu_p=$(($(cpu_delta "$p0" "$p1") * per / n))
cpu_r=$(($(cpu_delta "$r0" "$r1") * per / n))
cpu_x=$(($(cpu_delta "$x0" "$x1") * per / n))
tps=$(awk '/^tps = .*without initial connection time/ { print $3 }' "$out/pgbench.out")
# pgbench's own lag behind its schedule: how far the producers fell behind
# the asked-for rate (the machine, not the capture, could not keep up).
sched=$(awk '/schedule lag/ { gsub(/[()]/, ""); print "avg " $6 " ms, max " $8 " ms" }' "$out/pgbench.out")

echo "wal sustained: $RATE inserts/s asked for $SECONDS_RUN s, $CLIENTS clients; pgbench $tps tx/s, its lag behind schedule $sched"
echo "rows $rows, events $events ($distinct distinct rows in the log), in $batches log transactions ($((events / (batches > 0 ? batches : 1))) events each on average)"
echo "CPU per insert: $((cpu_p + cpu_r + cpu_x)) µs = producers $cpu_p + relay backends $cpu_r + relay $cpu_x  ($n inserts measured)"
# A sample whose WAL position the slot was never confirmed past is one of the
# last: once the producers stop, nothing moves the confirmed position past
# the WAL the relay itself wrote (the server asks for a confirmation only
# every wal_sender_timeout / 2). Its lag is taken to when every row was in
# the log, an upper bound.
awk -F'\t' -v t0="$t_start" -v t1="$t_end" -v caught="$t_caught" -v target="$LAG_TARGET" '
    NF == 4 { n++; t[n] = $1; cur[n] = $2; conf[n] = $3 }
    END {
        j = 1; m = 0
        for (i = 1; i <= n; i++) {
            if (t[i] < t0 || t[i] > t1) continue
            while (j <= n && (conf[j] < cur[i] || t[j] < t[i])) j++
            # The time the confirmed position passed cur[i], interpolated
            # between the samples either side of it.
            if (j > n) lag = (caught != "" ? caught : t[n]) - t[i]
            else if (j == 1 || t[j - 1] < t[i] || conf[j] == conf[j - 1]) lag = t[j] - t[i]
            else lag = t[j - 1] + (t[j] - t[j - 1]) * (cur[i] - conf[j - 1]) / (conf[j] - conf[j - 1]) - t[i]
            if (lag < 0) lag = 0
            open = (j > n && caught == "")
            m++; s[m] = lag; b[m] = cur[i] - conf[i]
            if (open) unresolved++
        }
        if (m == 0) { print "no samples in the run window"; exit 1 }
        asort(s); asort(b)
        p50 = int(m * 0.50); p99 = int(m * 0.99); if (p50 < 1) p50 = 1; if (p99 < 1) p99 = 1
        printf "slot lag over %d samples (100 ms apart): seconds p50 %.3f, p99 %.3f, max %.3f; bytes p50 %d, p99 %d, max %d\n", m, s[p50], s[p99], s[m], b[p50], b[p99], b[m]
        if (unresolved) printf "%d samples were never caught up with: the capture had not caught up 30 s after the run\n", unresolved
        printf "lag stayed under %s s: %s\n", target, (s[m] < target && !unresolved) ? "yes" : "NO"
    }' "$samples"
echo "load before $load0, after $load1; $(nproc) cores, $(sql 'SHOW server_version'), $(date -u '+%Y-%m-%d %H:%M UTC')"
