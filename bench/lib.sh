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
