# Shared by run.sh and profile.sh: sourced, not run.

# Stops every process in the PIDS array, newest first (outrider flushes its
# spans to the sink and closes its upstream connections before those go):
# SIGTERM, up to 2.5 s of grace, then SIGKILL.
stop_pids() {
    local i p
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        p=${PIDS[i]}
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
