# Shared by the bench scripts that drive relays with relaybench; sourced
# from the repository's root.

# Where the scripts' binaries go.
bin=bench/out

# build_binaries builds the relay, the migrator and relaybench into $bin.
build_binaries() {
    mkdir -p "$bin"
    go build -o "$bin/migrate" ./cmd/migrate
    go build -o "$bin/relay" ./cmd/relay
    go build -o "$bin/relaybench" ./cmd/relaybench
}

# pids holds the background processes a script started; stop_pids ends them
# and waits for them.
pids=()
stop_pids() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    pids=()
}

# use_database NAME: unless DATABASE_URL is set, (re)creates database NAME on
# the libpq default server (host 127.0.0.1 if PGHOST is unset), points
# DATABASE_URL at it and records it in created_db, for drop_created_database.
created_db=""
use_database() {
    if [[ -z "${DATABASE_URL:-}" ]]; then
        export PGHOST=${PGHOST:-127.0.0.1}
        psql -qX -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
        created_db=$1
        DATABASE_URL="host=$PGHOST dbname=$1"
    fi
    export DATABASE_URL
}

# drop_created_database drops the database use_database created, if any.
drop_created_database() {
    if [[ -n "$created_db" ]]; then
        psql -qX -d postgres -c "DROP DATABASE IF EXISTS $created_db WITH (FORCE)" || true
    fi
}

# cpu_ticks PID... prints "pid ticks" (user + system CPU time in clock
# ticks) for each process that is still running.
cpu_ticks() {
    local p
    for p in "$@"; do
        awk -v p="$p" '{ print p, $14 + $15 }' "/proc/$p/stat" 2>/dev/null || true
    done
}
# cpu_delta BEFORE AFTER sums the ticks spent between two cpu_ticks samples
# by the processes present in both (a session that ended or began in
# between is left out rather than counted as negative time).
cpu_delta() {
    awk 'NR == FNR { before[$1] = $2; next } ($1 in before) { sum += $2 - before[$1] } END { print sum + 0 }' <(echo "$1") <(echo "$2")
}
hz=$(getconf CLK_TCK)

# wait_for_sequencer waits up to 10 s until a relay holds the sequencer role
# in $DATABASE_URL, so that a run does not start before events flow.
wait_for_sequencer() {
    for _ in $(seq 1 100); do
        [[ "$(psql -qXAt "$DATABASE_URL" -c 'SELECT holder_pid IS NOT NULL FROM relay.sequencer')" == t ]] && return 0
        sleep 0.1
    done
    echo "no relay became the sequencer within 10 s" >&2
}
