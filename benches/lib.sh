# Shared by run.sh, grpc.sh, callgrind.sh and profile.sh: sourced, not run.

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

# A private CA and a certificate for 127.0.0.1 signed by it, for the OTLP
# sink over TLS (as an in-cluster collector behind TLS would have):
# DIR/sink-ca.pem, DIR/sink.pem, DIR/sink-key.pem.
sink_certificates() { # DIR
    local d=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
        -keyout "$d/sink-ca-key.pem" -out "$d/sink-ca.pem" 2>/dev/null &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
            -keyout "$d/sink-key.pem" -out "$d/sink.csr" 2>/dev/null &&
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$d/sink.ext" &&
        openssl x509 -req -in "$d/sink.csr" -CA "$d/sink-ca.pem" -CAkey "$d/sink-ca-key.pem" -CAcreateserial \
            -days 2 -extfile "$d/sink.ext" -out "$d/sink.pem" 2>/dev/null
}

# The helpers below are run.sh's and grpc.sh's. They use the caller's
# globals: TMP (logs go there), PIDS and PID_OF (processes started), a die
# function, and for sys_snapshot CPU_SERVERS and ALL_SERVER_PIDS.

# A port is free if nothing accepts a connection on it.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME CPU COMMAND... : runs COMMAND pinned to CPU, logs to TMP/NAME.log.
# taskset and env exec, so $! is the server's own PID.
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    PID_OF[$name]=$!
}

# wait_http NAME URL [STATUS [CURL-OPTIONS...]]: poll until URL answers
# STATUS (200), at most 15 s.
wait_http() {
    local name=$1 url=$2 want=${3:-200} code=""
    local extra=("${@:4}")
    local deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
        kill -0 "${PID_OF[$name]}" 2>/dev/null || die "$name exited during startup (log: $TMP/$name.log)"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${extra[@]}" "$url" || true)"
        [[ "$code" == "$want" ]] && return 0
        sleep 0.01
    done
    die "$name did not answer $want on $url within 15 s (last: $code; log: $TMP/$name.log)"
}

# status_kib PID FIELD: a field of /proc/PID/status (VmRSS, VmHWM) in KiB.
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# cpu_ticks PID... : "utime stime" (fields 14 and 15 of /proc/PID/stat),
# each summed over the PIDs. The fields are counted after the ")" that
# closes the command name.
cpu_ticks() {
    local user=0 sys=0 p stat rest
    for p in "$@"; do
        stat="$(<"/proc/$p/stat")"
        rest="${stat##*) }"
        read -r -a f <<<"$rest"
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    echo "$user $sys"
}

# sys_snapshot: CPU_SERVERS's busy and steal ticks and its total (from
# /proc/stat), and the ticks of every server pinned to it (ALL_SERVER_PIDS).
# The difference between the two busy counts is time on that CPU that
# something outside the benchmark took (say a compiler running on the same
# machine), which skews a run.
sys_snapshot() {
    local line f
    line="$(grep "^cpu$CPU_SERVERS " /proc/stat)"
    read -r -a f <<<"$line"
    # user nice system idle iowait irq softirq steal
    local ours
    read -r -a ours < <(cpu_ticks "${ALL_SERVER_PIDS[@]}")
    echo "$((f[1] + f[2] + f[3] + f[6] + f[7])) ${f[8]:-0} $((f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7] + ${f[8]:-0})) $((ours[0] + ours[1]))"
}

# machine_busy: the share of both CPUs that was busy over one second, with
# the benchmark's own servers idle (other work on the machine skews every
# number). Prints the share; warns on stderr above 10 %.
machine_busy() {
    local c1 c2 busy total
    read -r -a c1 < <(grep '^cpu ' /proc/stat)
    sleep 1
    read -r -a c2 < <(grep '^cpu ' /proc/stat)
    busy=$(((c2[1] + c2[2] + c2[3] + c2[6] + c2[7] + c2[8]) - (c1[1] + c1[2] + c1[3] + c1[6] + c1[7] + c1[8])))
    total=$((busy + (c2[4] + c2[5]) - (c1[4] + c1[5])))
    python3 -c "print(round($busy / max(1, $total), 3))"
    if ((busy * 10 > total)); then
        echo "WARNING: the machine is $((busy * 100 / total))% busy before the load starts; results will be noisy" >&2
        ps -eo pcpu,comm --sort=-pcpu | head -4 >&2
    fi
}
