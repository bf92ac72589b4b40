#!/usr/bin/env bash
# Producer cost: what pgrelay's write path costs an application that inserts
# templates. Single-row INSERTs from pgbench, one configuration at a time,
# rounds interleaved so drift (autovacuum, checkpoints, a noisy neighbour)
# hits every configuration alike. A real relay (cmd/relay, its sequencer
# and reader) runs against the database for the whole benchmark, so every
# configuration pays for it alike and pgrelay is measured as it is deployed.
#
#   plain    a table with the columns of public.templates and no trigger
#   fk       the same table with the foreign key of created_by to users
#   app      public.templates with the app's own checks (share-list check,
#            foreign key) but pgrelay's capture trigger disabled
#   pgrelay  fully installed: capture trigger on, the relay announcing
#   wal      capture mode wal: public.templates with the app's checks, the
#            capture trigger off because the mode is wal, the relay's
#            sequencer streaming the replication slot and appending the
#            events (needs wal_level = logical); after each run the mode
#            goes back to trigger and the slot is drained and dropped
#   logrow   the floor of trigger capture: the app's table with pgrelay's
#            trigger off and one that only copies each row into a table
#            (no audience, no id, no notification)
#   slot     the floor of wal capture: the app's table with pgrelay's
#            trigger off and pg_recvlogical streaming a pgoutput slot on
#            pgrelay's publication to /dev/null; its walsender and process
#            count as the capture's CPU
#
# Usage: bash bench/producer-cost.sh
#   DATABASE_URL   database to use; pgrelay is migrated into it and a `bench`
#                  schema is created and dropped again. Unset: a database
#                  pgrelay_bench is created (and dropped at the end) on the
#                  libpq default server, host 127.0.0.1 if PGHOST is unset.
#   ROUNDS=3 SECONDS_PER_RUN=20 CLIENTS="4 16 64"   the shape of the run
#   CONFIGS="plain fk app pgrelay wal"              what to measure (also: logrow slot)
#   RELAY_ADDR=127.0.0.1:18099                      where the relay listens
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
CLIENTS=${CLIENTS:-4 16 64}
THREADS=${THREADS:-2}
CONFIGS=${CONFIGS:-plain fk app pgrelay wal}
RELAY_ADDR=${RELAY_ADDR:-127.0.0.1:18099}
out=bench/out
# Fixture scripts are re-runnable; their "does not exist, skipping" notices are noise.
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
mkdir -p "$out"

. bench/lib.sh
use_database pgrelay_bench

relay_pid="" recv_pid=""
floor_slot=pgrelay_bench_floor
cleanup() {
    if [[ -n "$relay_pid" ]]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
    stop_receiver 2>/dev/null || true
    psql -qX "$DATABASE_URL" -f bench/teardown.sql >/dev/null 2>&1 || true
    drop_created_database
}
trap cleanup EXIT

go build -o "$out/migrate" ./cmd/migrate
go build -o "$out/relay" ./cmd/relay
"$out/migrate" up >/dev/null
psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/setup.sql

sql() { psql -qXAt -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$1"; }

"$out/relay" --addr "$RELAY_ADDR" --jwt-secret bench-secret-0123456789abcdef >"$out/relay.log" 2>&1 &
relay_pid=$!
wait_for_sequencer

# wait_capture MODE waits until MODE is the capture mode in force and, for
# trigger, until the slot of the last wal run is drained and dropped.
wait_capture() {
    local cond="mode = '$1'"
    [[ $1 == trigger ]] && cond="$cond AND slot_name IS NULL"
    for _ in $(seq 1 600); do
        [[ "$(sql "SELECT $cond FROM relay.capture")" == t ]] && return 0
        sleep 0.1
    done
    echo "capture mode $1 not in force after 60 s (see $out/relay.log)" >&2
    exit 1
}


# start_receiver creates the floor's slot and streams it to /dev/null. The
# slot is created for each run and dropped after it, so no run decodes WAL
# that other configurations wrote.
start_receiver() {
    sql "SELECT pg_create_logical_replication_slot('$floor_slot', 'pgoutput')" >/dev/null
    pg_recvlogical -d "$DATABASE_URL" --slot "$floor_slot" --start -o proto_version=1 -o publication_names=pgrelay \
        -f /dev/null --fsync-interval=1 >"$out/recvlogical.log" 2>&1 &
    recv_pid=$!
    for _ in $(seq 1 100); do
        [[ "$(sql "SELECT active FROM pg_replication_slots WHERE slot_name = '$floor_slot'")" == t ]] && return 0
        sleep 0.1
    done
    echo "pg_recvlogical did not start streaming slot $floor_slot (see $out/recvlogical.log)" >&2
    exit 1
}

stop_receiver() {
    if [[ -n "$recv_pid" ]]; then kill "$recv_pid" 2>/dev/null || true; wait "$recv_pid" 2>/dev/null || true; recv_pid=""; fi
    for _ in $(seq 1 50); do
        [[ "$(sql "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$floor_slot' AND active")" == 0 ]] && break
        sleep 0.1
    done
    sql "SELECT pg_drop_replication_slot('$floor_slot') FROM pg_replication_slots WHERE slot_name = '$floor_slot'" >/dev/null
}

# run CONFIG CLIENTS prints the tx/s of one pgbench run and the CPU time
# spent per insert by everything that works for it: the producers (pgbench
# and its backends), the relay's backends and the relay process. CPU time per
# insert is what decides throughput when the cores are the limit, and it
# is barely moved by other work on a shared machine, which tx/s is not.
# It is measured from 1 s after the start to 1 s before the end, so
# connecting and stopping are left out.
run() {
    local config=$1 clients=$2 script=bench/insert_templates.sql table=public.templates
    if [[ $config == wal ]]; then
        sql "SELECT relay.set_capture('wal')" >/dev/null 2>&1
        wait_capture wal
    fi
    psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -f bench/reset.sql
    case $config in
    plain) script=bench/insert_plain.sql table=bench.plain ;;
    fk) script=bench/insert_fk.sql table=bench.fk ;;
    app) sql "ALTER TABLE public.templates DISABLE TRIGGER pgrelay_templates" ;;
    logrow) sql "ALTER TABLE public.templates DISABLE TRIGGER pgrelay_templates; ALTER TABLE public.templates ENABLE TRIGGER bench_logrow" ;;
    slot) sql "ALTER TABLE public.templates DISABLE TRIGGER pgrelay_templates"; start_receiver ;;
    esac
    pgbench -n -M prepared -c "$clients" -j "$THREADS" -T "$SECONDS_PER_RUN" -f "$script" "$DATABASE_URL" >"$out/pgbench.out" 2>"$out/pgbench.err" &
    local bench=$! start=$SECONDS producers relays p0 p1 r0 r1 x0 x1 n0 n1
    # Measure once every client is connected (64 take a while on a busy
    # machine), up to 1 s before the end: a client not yet connected when
    # the first sample is taken would be left out of the CPU per insert
    # while its rows are counted.
    until [[ $(sql "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgbench'") -ge $clients ]]; do
        if ((SECONDS - start > SECONDS_PER_RUN - 3)); then
            echo "configuration $config: $clients pgbench clients were not all connected after $((SECONDS - start)) s, too late to measure; raise SECONDS_PER_RUN" >&2
            exit 1
        fi
        sleep 0.2
    done
    sleep 0.5
    producers=$(sql "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgbench'")
    relays=$(sql "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pgrelay%'")
    local capture_pids=$relay_pid
    if [[ $config == slot ]]; then
        # The floor's capture: its walsender stands in for the relay's backends.
        relays="$relays $(sql "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$floor_slot'")"
        capture_pids="$relay_pid $recv_pid"
    fi
    p0=$(cpu_ticks $producers "$bench"); r0=$(cpu_ticks $relays); x0=$(cpu_ticks $capture_pids)
    n0=$(sql "SELECT count(*) FROM $table")
    local left=$((SECONDS_PER_RUN - (SECONDS - start) - 1))
    sleep $((left > 1 ? left : 1))
    p1=$(cpu_ticks $producers "$bench"); r1=$(cpu_ticks $relays); x1=$(cpu_ticks $capture_pids)
    n1=$(sql "SELECT count(*) FROM $table")
    wait "$bench" || true
    if [[ $config == wal ]]; then
        # How far the capture was behind when the producers stopped.
        echo "  wal: slot $(sql "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint FROM relay.capture c JOIN pg_replication_slots s ON s.slot_name = c.slot_name") bytes behind at the end of the run, $(sql "SELECT count(*) FROM relay.events") of $(sql "SELECT count(*) FROM public.templates") rows appended" >&2
        sql "SELECT relay.set_capture('trigger')" >/dev/null
        wait_capture trigger
    fi
    local tps
    tps=$(awk '/^tps = .*without initial connection time/ { print $3 }' "$out/pgbench.out")
    case $config in
    app) sql "ALTER TABLE public.templates ENABLE TRIGGER pgrelay_templates" ;;
    logrow) sql "ALTER TABLE public.templates DISABLE TRIGGER bench_logrow; ALTER TABLE public.templates ENABLE TRIGGER pgrelay_templates" ;;
    slot) stop_receiver; sql "ALTER TABLE public.templates ENABLE TRIGGER pgrelay_templates" ;;
    esac
    if [[ -z "$tps" || $n1 -le $n0 ]]; then
        echo "pgbench failed in configuration $config:" >&2
        cat "$out/pgbench.err" >&2
        exit 1
    fi
    local per=$((1000000 / hz)) n=$((n1 - n0)) p r x
    p=$(( $(cpu_delta "$p0" "$p1") * per / n )); r=$(( $(cpu_delta "$r0" "$r1") * per / n )); x=$(( $(cpu_delta "$x0" "$x1") * per / n ))
    echo "$tps $((p + r + x)) $p $r $x"
}

read -ra configs <<<"$CONFIGS"
read -ra client_counts <<<"$CLIENTS"
results="$out/results.tsv"
: >"$results"
echo "producer cost: clients $CLIENTS, $ROUNDS rounds x $SECONDS_PER_RUN s per configuration, a relay running"
for round in $(seq 1 "$ROUNDS"); do
    for clients in "${client_counts[@]}"; do
        for config in "${configs[@]}"; do
            read -r tps cpu cpu_producers cpu_relay_db cpu_relay < <(run "$config" "$clients")
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$clients" "$config" "$tps" "$cpu" >>"$results"
            printf 'round %s  %3s clients  %-8s %8.0f tx/s  %4s µs CPU/insert (producers %s, relay backends %s, relay %s)  (load %s)\n' \
                "$round" "$clients" "$config" "$tps" "$cpu" "$cpu_producers" "$cpu_relay_db" "$cpu_relay" "$(cut -d' ' -f1-3 /proc/loadavg)"
        done
    done
done

echo
echo "summary: mean of the rounds; tx/s ratios to plain and to app per round; CPU per insert (µs) and its"
echo "inverse ratio (plain CPU / this CPU, the throughput ratio where the cores are the limit)"
awk -F'\t' -v configs="${configs[*]}" -v clients="${client_counts[*]}" '
    { tps[$1, $2, $3] = $4; cpu[$1, $2, $3] = $5; if ($1 > rounds) rounds = $1 }
    END {
        n = split(configs, c, " "); m = split(clients, k, " ")
        for (j = 1; j <= m; j++) {
            printf "%s clients\n", k[j]
            for (i = 1; i <= n; i++) {
                sum = 0; csum = 0; rp = ""; ra = ""; cp = ""; ca = ""
                for (r = 1; r <= rounds; r++) {
                    t = tps[r, k[j], c[i]]; sum += t; u = cpu[r, k[j], c[i]]; csum += u
                    if (tps[r, k[j], "plain"] > 0) { rp = rp sprintf(" %.2f", t / tps[r, k[j], "plain"]); cp = cp sprintf(" %.2f", cpu[r, k[j], "plain"] / u) }
                    if (tps[r, k[j], "app"] > 0) { ra = ra sprintf(" %.2f", t / tps[r, k[j], "app"]); ca = ca sprintf(" %.2f", cpu[r, k[j], "app"] / u) }
                }
                printf "  %-8s %8.0f tx/s  /plain:%s  /app:%s   %4.0f µs CPU/insert  /plain:%s  /app:%s\n", c[i], sum / rounds, rp, ra, csum / rounds, cp, ca
            }
        }
    }' "$results"
echo
echo "machine: $(nproc) cores, $(free -h | awk '/^Mem:/ { print $2 }') memory, $(sql 'SHOW server_version'), synchronous_commit=$(sql 'SHOW synchronous_commit'), $(date -u '+%Y-%m-%d %H:%M UTC'), load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
