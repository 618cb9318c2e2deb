#!/usr/bin/env bash
# Side-by-side benchmark: a fast upstream reached directly, through nginx,
# through outrider with telemetry off, and through outrider with tracing
# (100% sampled, OTLP/HTTP export to a local sink over TLS, gzip-compressed,
# as a managed backend is reached) and metrics on.
#
#   bash benches/run.sh            # full run: 3 interleaved rounds (~4 min)
#   bash benches/run.sh --quick    # smoke run: 1 round of 2 s each (~30 s)
#   bash benches/run.sh --no-build # reuse the binaries already built
#   BENCH_OUTRIDER_BIN=path ...    # measure that outrider binary instead
#                                  # of building the shipped static binary
#                                  # (deploy/build-static.sh)
#   BENCH_REV=rev ...              # commit to record for that binary, or
#                                  # when the tree is not a git checkout
#   BENCH_KEEP_TMP=1 ...           # keep logs and raw wrk output in /tmp
#   BENCH_EXPORT=plain ...         # outrider-full exports over plain http,
#                                  # uncompressed (default: https-gzip)
#
# Servers (upstream, nginx, outrider) share CPU 0; wrk and the Python
# clients run on CPU 1. Everything binds 127.0.0.1. Results: a markdown
# table on stdout and every raw number in benches/results/latest.json.
# Needs root only to apt-get install nginx-light and wrk when missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"
ROOT="$(cd "$HERE/.." && pwd)"
HELPERS="$HERE/helpers.py"

QUICK=0
BUILD=1
for arg in "$@"; do
    case "$arg" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    -h | --help)
        awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
        exit 0
        ;;
    *)
        echo "run.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

if ((QUICK)); then
    MODE=quick ROUNDS=1 D64=2 D1=2 DWARM=0 D1M=1 READYZ_N=100 IDLE_N=1000 STR_RUNS=3 RETURN_S=0
else
    MODE=full ROUNDS=3 D64=10 D1=5 DWARM=1 D1M=3 READYZ_N=500 IDLE_N=10000 STR_RUNS=5 RETURN_S=15
fi

# Ports. 4318 is the OTLP/HTTP default; the rest are unlikely to be taken.
P_UP=18081 P_NGINX=18082 P_OFF=18083 P_FULL=18084 P_STR=18085
A_OFF=19083 A_FULL=19084 A_STR=19085 P_SINK=4318
CPU_SERVERS=0 CPU_LOAD=1

# The binary the image ships (static glibc, deploy/build-static.sh): the
# libc and allocator it links moved these figures before.
SHIPPED_BIN="target/$(uname -m)-unknown-linux-gnu/release/outrider"
OUTRIDER="${BENCH_OUTRIDER_BIN:-$ROOT/$SHIPPED_BIN}"
UPSTREAM_BIN="$HERE/upstream/target/release/bench-upstream"
RESULTS="$HERE/results"

BENCH_EXPORT="${BENCH_EXPORT:-https-gzip}"
log() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
    printf 'run.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- tools
log "tools"
(($(nproc) >= 2)) || die "needs 2 CPUs (servers on CPU 0, load generator on CPU 1); nproc says $(nproc)"
for c in cargo python3 taskset getconf; do
    command -v "$c" >/dev/null || die "'$c' not found"
done
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
    ((EUID == 0)) || die "missing ${need_apt[*]}; run as root so apt-get can install them, or install them first"
    export DEBIAN_FRONTEND=noninteractive
    echo "installing ${need_apt[*]}" >&2
    apt-get update -qq
    if ! apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; then
        # nginx-light is gone from newer Debian releases: plain nginx then.
        need_apt=("${need_apt[@]/nginx-light/nginx}")
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null ||
            die "apt-get install ${need_apt[*]} failed"
    fi
fi
command -v wrk >/dev/null || die "wrk is still missing after the install"
command -v nginx >/dev/null || die "nginx is still missing after the install"
WRK_VERSION="$(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//' || true)"
NGINX_VERSION="$(nginx -v 2>&1 | sed 's/^nginx version: //')"
if command -v wrk2 >/dev/null; then
    echo "note: wrk2 is installed but not used (runs are closed-loop wrk; p99.9 is not reported)" >&2
fi
CLK_TCK="$(getconf CLK_TCK)"
echo "wrk: $WRK_VERSION; nginx: $NGINX_VERSION; CLK_TCK=$CLK_TCK" >&2

# ---------------------------------------------------------------- build
if ((BUILD)); then
    log "build (release)"
    if [[ -z "${BENCH_OUTRIDER_BIN:-}" ]]; then
        OUTRIDER=$(cd "$ROOT" && bash deploy/build-static.sh) || die "cargo build of outrider failed"
    fi
    cargo build --release --locked --manifest-path "$HERE/upstream/Cargo.toml" || die "cargo build of the bench upstream failed"
fi
[[ -x "$OUTRIDER" ]] || die "$OUTRIDER not built (drop --no-build)"
[[ -x "$UPSTREAM_BIN" ]] || die "$UPSTREAM_BIN not built (drop --no-build)"

# ---------------------------------------------------------------- processes
TMP="$(mktemp -d /tmp/outrider-bench.XXXXXX)"
chmod 755 "$TMP" # nginx's workers run as nobody and keep temp files here
PIDS=()
declare -A PID_OF=()
KEEP_TMP=${BENCH_KEEP_TMP:-0} # 1: keep logs and raw wrk output

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids
    if ((rc != 0)); then
        echo "run.sh: failed (exit $rc); logs kept in $TMP:" >&2
        local f
        for f in "$TMP"/*.log; do
            [[ -s "$f" ]] || continue
            echo "--- $f (last lines)" >&2
            tail -n 15 "$f" >&2
        done
    elif ((KEEP_TMP == 0)); then
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for p in $P_UP $P_NGINX $P_OFF $P_FULL $P_STR $A_OFF $A_FULL $A_STR $P_SINK; do
    port_busy "$p" && die "127.0.0.1:$p is already in use; stop whatever listens there"
done

# 10 000 idle connections need as many descriptors in outrider, nginx and
# the client: raise the soft limit as far as the hard limit allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
NOFILE="$(ulimit -n)"
if [[ "$NOFILE" != unlimited ]] && ((NOFILE < IDLE_N + 256)); then
    IDLE_N=$((NOFILE - 256))
    echo "note: open-file limit is $NOFILE; the idle-connection test opens $IDLE_N" >&2
fi

# forget PID: a process that has been waited for; never signal its reused PID.
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# outrider's environment: nothing inherited but PATH and HOME, so a stray
# OUTRIDER_* or OTEL_* variable in the caller's shell cannot skew the run.
outrider_env() { # LISTEN ADMIN TELEMETRY(off|full)
    local e=(PATH="$PATH" HOME="${HOME:-/root}"
        OUTRIDER_UPSTREAM="http://127.0.0.1:$P_UP" OUTRIDER_LISTEN="127.0.0.1:$1" OUTRIDER_ADMIN_LISTEN="127.0.0.1:$2"
        OUTRIDER_ACCESS_LOG=false OUTRIDER_LOG=warn OUTRIDER_LOG_FORMAT=json
        OUTRIDER_DRAIN_DELAY=0s OUTRIDER_DRAIN_TIMEOUT=2s)
    if [[ $3 == off ]]; then
        e+=(OTEL_SDK_DISABLED=true)
    else
        e+=(OTEL_SDK_DISABLED=false OTEL_TRACES_SAMPLER=always_on OTEL_SERVICE_NAME=bench-app
            OTEL_EXPORTER_OTLP_ENDPOINT="$SINK_SCHEME://127.0.0.1:$P_SINK" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)
        [[ $BENCH_EXPORT == https-gzip ]] &&
            e+=(OTEL_EXPORTER_OTLP_CERTIFICATE="$TMP/sink-ca.pem" OTEL_EXPORTER_OTLP_COMPRESSION=gzip)
    fi
    printf '%s\n' "${e[@]}"
}

log "start servers (servers on CPU $CPU_SERVERS, load on CPU $CPU_LOAD; temp dir $TMP)"
start upstream $CPU_SERVERS "$UPSTREAM_BIN" "$P_UP"
wait_http upstream "http://127.0.0.1:$P_UP/"

# The sink parses every span in Python on the load generator's CPU. As a
# SCHED_IDLE task it runs only while wrk waits, instead of delaying wrk's
# own measurements: at normal priority (and even at nice 19, which the
# kernel lets finish its slice) it put a 1.4 ms p99 into outrider-full at c1.
case $BENCH_EXPORT in
plain) SINK_SCHEME=http SINK_TLS=() ;;
https-gzip)
    # A private CA and a certificate for 127.0.0.1, as an in-cluster
    # collector behind TLS would have.
    SINK_SCHEME=https SINK_TLS=(--tls-cert "$TMP/sink.pem" --tls-key "$TMP/sink-key.pem")
    sink_certificates "$TMP" || die "openssl could not make the sink's certificate"
    ;;
*) die "BENCH_EXPORT must be plain or https-gzip, not '$BENCH_EXPORT'" ;;
esac
SINK_CURL=(--cacert "$TMP/sink-ca.pem")
[[ $SINK_SCHEME == http ]] && SINK_CURL=()
start sink $CPU_LOAD chrt --idle 0 python3 "$HERE/otlp_sink.py" --port "$P_SINK" "${SINK_TLS[@]}"
wait_http sink "$SINK_SCHEME://127.0.0.1:$P_SINK/stats" 200 "${SINK_CURL[@]}"

mkdir -p "$TMP/nginx-temp"
sed -e "s|@TMP@|$TMP|g" -e "s|@NOFILE@|$NOFILE|g" -e "s|@WORKER_CONNECTIONS@|$((NOFILE > 20000 ? 20000 : NOFILE - 64))|g" \
    -e "s|@UPSTREAM_PORT@|$P_UP|g" -e "s|@PORT@|$P_NGINX|g" "$HERE/nginx.conf.template" >"$TMP/nginx.conf"
nginx -t -q -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log" >"$TMP/nginx-check.log" 2>&1 ||
    die "nginx rejects the generated config: $(cat "$TMP/nginx-check.log")"
start nginx $CPU_SERVERS nginx -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log" -g 'daemon off;'
wait_http nginx "http://127.0.0.1:$P_NGINX/"

mapfile -t ENV_OFF < <(outrider_env $P_OFF $A_OFF off)
mapfile -t ENV_FULL < <(outrider_env $P_FULL $A_FULL full)
start outrider-off $CPU_SERVERS env -i "${ENV_OFF[@]}" "$OUTRIDER"
start outrider-full $CPU_SERVERS env -i "${ENV_FULL[@]}" "$OUTRIDER"
wait_http outrider-off "http://127.0.0.1:$A_OFF/readyz"
wait_http outrider-full "http://127.0.0.1:$A_FULL/readyz"

EXTRAS="$TMP/extras"
mkdir -p "$EXTRAS"
# Idle RSS: right after /readyz turned 200, before any proxied request.
printf '%s' "$(status_kib "${PID_OF[outrider-off]}" VmRSS)" >"$EXTRAS/idle_rss_kib.outrider-off.json"
printf '%s' "$(status_kib "${PID_OF[outrider-full]}" VmRSS)" >"$EXTRAS/idle_rss_kib.outrider-full.json"

# nginx: the master plus its worker(s); outrider and the upstream: one process.
NGINX_PIDS=("${PID_OF[nginx]}")
for _ in $(seq 100); do
    mapfile -t workers < <(pgrep -P "${PID_OF[nginx]}" || true)
    ((${#workers[@]})) && break
    sleep 0.02
done
((${#workers[@]})) || die "nginx has no worker process"
NGINX_PIDS+=("${workers[@]}")
nginx_idle=0
for p in "${NGINX_PIDS[@]}"; do nginx_idle=$((nginx_idle + $(status_kib "$p" VmRSS))); done
printf '%s' "$nginx_idle" >"$EXTRAS/idle_rss_kib.nginx.json"

declare -A URL=(
    [direct]="http://127.0.0.1:$P_UP"
    [nginx]="http://127.0.0.1:$P_NGINX"
    [outrider-off]="http://127.0.0.1:$P_OFF"
    [outrider-full]="http://127.0.0.1:$P_FULL"
)
declare -A PROXY_PIDS=(
    [direct]=""
    [nginx]="${NGINX_PIDS[*]}"
    [outrider-off]="${PID_OF[outrider-off]}"
    [outrider-full]="${PID_OF[outrider-full]}"
)
TARGETS=(direct nginx outrider-off outrider-full)

# ---------------------------------------------------------------- check
log "check responses"
EXPECTED="$(printf 'outrider-bench-upstream-64-byte-body-0123456789abcdefghijklmnop\n' | sha256sum)"
for t in "${TARGETS[@]}"; do
    curl -sS --fail --max-time 5 -o "$TMP/body" "${URL[$t]}/" || die "$t: GET / failed"
    size="$(stat -c %s "$TMP/body")"
    [[ "$size" == 64 && "$(sha256sum <"$TMP/body")" == "$EXPECTED" ]] ||
        die "$t: GET / returned $size bytes, not the upstream's 64-byte body"
    size="$(curl -sS --fail --max-time 10 -o /dev/null -w '%{size_download}' "${URL[$t]}/1m")" || die "$t: GET /1m failed"
    [[ "$size" == 1048576 ]] || die "$t: GET /1m returned $size bytes, not 1 MiB"
    echo "$t: 64-byte and 1 MiB bodies ok" >&2
done

# ---------------------------------------------------------------- load
# sys_snapshot (lib.sh) compares CPU 0's busy time with these servers' own.
ALL_SERVER_PIDS=("${PID_OF[upstream]}" "${NGINX_PIDS[@]}" "${PID_OF[outrider-off]}" "${PID_OF[outrider-full]}")

RECORDS="$TMP/records.jsonl"
: >"$RECORDS"
UP_PID="${PID_OF[upstream]}"

# run_wrk LOAD TARGET ROUND CONNS SECONDS
run_wrk() {
    local load=$1 t=$2 round=$3 conns=$4 secs=$5
    local out="$TMP/wrk-$load-$t-r$round.txt" pb="" pa="" ub ua sb sa
    # shellcheck disable=SC2086
    [[ -n "${PROXY_PIDS[$t]}" ]] && pb="$(cpu_ticks ${PROXY_PIDS[$t]})"
    ub="$(cpu_ticks "$UP_PID")"
    sb="$(sys_snapshot)"
    taskset -c $CPU_LOAD wrk -t1 -c"$conns" -d"${secs}s" --latency "${URL[$t]}/" >"$out" 2>&1 ||
        die "wrk against $t failed: $(tail -3 "$out")"
    # shellcheck disable=SC2086
    [[ -n "${PROXY_PIDS[$t]}" ]] && pa="$(cpu_ticks ${PROXY_PIDS[$t]})"
    ua="$(cpu_ticks "$UP_PID")"
    sa="$(sys_snapshot)"
    python3 "$HELPERS" record --out "$RECORDS" --wrk "$out" --load "$load" --target "$t" --round "$round" \
        --url "${URL[$t]}/" --clk-tck "$CLK_TCK" \
        ${pb:+--proxy-cpu-before "$pb" --proxy-cpu-after "$pa"} \
        --upstream-cpu-before "$ub" --upstream-cpu-after "$ua" --sys-before "$sb" --sys-after "$sa" --server-cpu "$CPU_SERVERS" || die "cannot parse $out"
}

# Other work on the machine (a build, a test suite) skews every number:
# measure how busy both CPUs are while the benchmark itself is idle.
machine_busy >"$EXTRAS/machine_busy_before.json"

if ((DWARM)); then
    log "warm-up (${DWARM}s per target, not recorded)"
    for t in "${TARGETS[@]}"; do
        taskset -c $CPU_LOAD wrk -t1 -c64 -d"${DWARM}s" "${URL[$t]}/" >"$TMP/warmup-$t.txt" 2>&1 ||
            die "warm-up against $t failed: $(tail -3 "$TMP/warmup-$t.txt")"
    done
fi

log "load: $ROUNDS interleaved round(s); c64 for ${D64}s and c1 for ${D1}s per target"
for round in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do run_wrk c64 "$t" "$round" 64 "$D64"; done
    for t in "${TARGETS[@]}"; do run_wrk c1 "$t" "$round" 1 "$D1"; done
done

# Peak RSS over the request-rate runs, before the 1 MiB and idle-connection
# tests push the high-water mark up for reasons of their own.
for t in outrider-off outrider-full; do
    printf '%s' "$(status_kib "${PID_OF[$t]}" VmHWM)" >"$EXTRAS/peak_rss_kib.$t.json"
done
nginx_hwm=0
for p in "${NGINX_PIDS[@]}"; do nginx_hwm=$((nginx_hwm + $(status_kib "$p" VmHWM))); done
printf '%s' "$nginx_hwm" >"$EXTRAS/peak_rss_kib.nginx.json"

log "1 MiB bodies: wrk -c8 for ${D1M}s per target"
for t in "${TARGETS[@]}"; do
    out="$TMP/wrk-1m-$t.txt"
    taskset -c $CPU_LOAD wrk -t1 -c8 -d"${D1M}s" --latency "${URL[$t]}/1m" >"$out" 2>&1 || die "wrk /1m against $t failed"
    python3 "$HELPERS" mibps --wrk "$out" --target "$t" >"$EXTRAS/throughput_1m.$t.json" || die "cannot parse $out"
done

log "/readyz latency during c64 load ($READYZ_N sequential requests, a new connection each)"
for t in outrider-off outrider-full; do
    admin=$A_OFF
    [[ $t == outrider-full ]] && admin=$A_FULL
    taskset -c $CPU_LOAD wrk -t1 -c64 -d60s "${URL[$t]}/" >"$TMP/wrk-readyz-$t.txt" 2>&1 &
    wrk_pid=$!
    PIDS+=("$wrk_pid")
    sleep 0.3 # let wrk open its connections (not a readiness wait: the load is already on)
    taskset -c $CPU_LOAD python3 "$HELPERS" readyz-latency --port "$admin" --n "$READYZ_N" --deadline 30 \
        >"$EXTRAS/readyz_under_load.$t.json" || die "readyz-latency against $t failed"
    kill -INT "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" 2>/dev/null || true
    forget "$wrk_pid"
    echo "  $t: $(cat "$EXTRAS/readyz_under_load.$t.json")" >&2
done

# Spans: what outrider-full handed to its exporter and what the sink got,
# read before the idle-connection test adds requests of its own.
scrape() { curl -sS --max-time 5 "http://127.0.0.1:$A_FULL/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
sleep 1.5 # one export interval (OTEL_BSP_SCHEDULE_DELAY, 1 s) for the last batch
ended="$(scrape outrider_spans_ended_total)"
exported="$(scrape outrider_spans_exported_total)"
failed="$(scrape 'outrider_spans_dropped_total{reason="export_failed"}')"
queue_full="$(scrape 'outrider_spans_dropped_total{reason="queue_full"}')"
rejected="$(scrape 'outrider_spans_dropped_total{reason="rejected"}')"
sink="$(curl -sS --max-time 5 "${SINK_CURL[@]}" "$SINK_SCHEME://127.0.0.1:$P_SINK/stats")"
cat >"$EXTRAS/spans.json" <<EOF
{"outrider_spans_ended_total": ${ended:-null}, "outrider_spans_exported_total": ${exported:-null},
 "outrider_spans_dropped_total": {"export_failed": ${failed:-null}, "queue_full": ${queue_full:-null}, "rejected": ${rejected:-null}},
 "sink": $sink}
EOF
echo "spans: ended ${ended:-?}, exported ${exported:-?}, dropped: export_failed ${failed:-?}, queue_full ${queue_full:-?}, rejected ${rejected:-?}; sink $sink" >&2

# After the connections close, how much memory goes back to the OS (and
# when): a sidecar that keeps the memory of its busiest minute is charged
# for it against the pod's limit for good.
log "RSS with $IDLE_N idle keep-alive connections, and ${RETURN_S}s after they close"
for t in nginx outrider-off outrider-full; do
    port="${URL[$t]##*:}"
    pid_args=()
    for p in ${PROXY_PIDS[$t]}; do pid_args+=(--pid "$p"); done
    taskset -c $CPU_LOAD python3 "$HELPERS" idle-conns --port "$port" "${pid_args[@]}" --n "$IDLE_N" \
        --returned-after "$RETURN_S" >"$EXTRAS/idle_conns.$t.json" || die "idle-conns against $t failed"
    echo "  $t: $(cat "$EXTRAS/idle_conns.$t.json")" >&2
done

log "process start -> /readyz 200 ($STR_RUNS starts each, pod mode, upstream already up)"
for tel in off full; do
    mapfile -t env_str < <(outrider_env $P_STR $A_STR $tel)
    env_args=()
    for kv in "${env_str[@]}"; do env_args+=(--env "$kv"); done
    env -i PATH="$PATH" python3 "$HELPERS" start-to-ready --bin "$OUTRIDER" --runs "$STR_RUNS" --cpu $CPU_SERVERS \
        "${env_args[@]}" >"$EXTRAS/start_to_ready.outrider-$tel.json" || die "start-to-ready failed"
    echo "  outrider-$tel: $(cat "$EXTRAS/start_to_ready.outrider-$tel.json")" >&2
done

log "binary size"
cp "$OUTRIDER" "$TMP/outrider.stripped"
strip "$TMP/outrider.stripped" 2>/dev/null || echo "note: strip not found; reporting the file as built" >&2
cat >"$EXTRAS/binary.json" <<EOF
{"path": "${BENCH_OUTRIDER_BIN:-$SHIPPED_BIN}", "file_bytes": $(stat -c %s "$OUTRIDER"), "stripped_bytes": $(stat -c %s "$TMP/outrider.stripped")}
EOF
cat "$EXTRAS/binary.json" >&2

# ---------------------------------------------------------------- report
COMMAND="bash benches/run.sh"
((QUICK)) && COMMAND+=" --quick"
# The checkout's commit says what was measured only if the binary was built
# from it here; for BENCH_OUTRIDER_BIN, BENCH_REV says (else "unknown").
if [[ -n "${BENCH_REV:-}" ]]; then
    GIT_REV="$BENCH_REV"
elif [[ -n "${BENCH_OUTRIDER_BIN:-}" ]]; then
    GIT_REV="unknown (BENCH_OUTRIDER_BIN without BENCH_REV)"
else
    GIT_REV="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
fi
BIN_SHA="$(sha256sum "$OUTRIDER" | cut -d' ' -f1)"
GIT_DIRTY=false
[[ -z "${BENCH_OUTRIDER_BIN:-}" && -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]] &&
    GIT_DIRTY=true
python3 - "$TMP/meta.json" <<PY
import json, sys
meta = {
    "mode": "$MODE",
    "command": "$COMMAND",
    "machine": {
        "nproc": $(nproc),
        "cpu_model": "$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)",
        "kernel": "$(uname -r)",
        "clk_tck": $CLK_TCK,
    },
    "versions": {
        "outrider_git": "$GIT_REV",
        "outrider_src_dirty": $([[ $GIT_DIRTY == true ]] && echo True || echo False),
        "outrider_bin": "${BENCH_OUTRIDER_BIN:-$SHIPPED_BIN}",
        "outrider_bin_sha256": "$BIN_SHA",
        "nginx": "$NGINX_VERSION",
        "wrk": "$WRK_VERSION",
        "rustc": "$(rustc --version 2>/dev/null || echo unknown)",
    },
    "config": {
        "rounds": $ROUNDS, "c64_seconds": $D64, "c1_seconds": $D1, "throughput_1m_seconds": $D1M,
        "readyz_requests": $READYZ_N, "idle_connections": $IDLE_N, "rss_returned_after_seconds": $RETURN_S, "start_to_ready_runs": $STR_RUNS,
        "pinning": {"upstream, nginx, outrider": $CPU_SERVERS, "wrk, python clients, otlp sink": $CPU_LOAD},
        "order": "each round: c64 against direct, nginx, outrider-off, outrider-full; then c1 in the same order",
        "outrider_access_log": False,
        "nginx_access_log": False,
        "outrider_full_telemetry": "OTEL_TRACES_SAMPLER=always_on, OTLP http/protobuf to $SINK_SCHEME://127.0.0.1:$P_SINK ($BENCH_EXPORT), metrics on",
    },
}
json.dump(meta, open(sys.argv[1], "w"))
PY

mkdir -p "$RESULTS"
log "results ($MODE)"
python3 "$HELPERS" report --records "$RECORDS" --extras "$EXTRAS" --meta "$TMP/meta.json" \
    --json-out "$RESULTS/latest.json" --md-out "$RESULTS/latest.md"
echo >&2
echo "raw numbers: $RESULTS/latest.json; table: $RESULTS/latest.md" >&2
