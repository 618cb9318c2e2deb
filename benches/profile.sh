#!/usr/bin/env bash
# Where outrider spends its CPU under load: `perf record` (cpu-clock sampling,
# which works in VMs without hardware counters; frame-pointer call graphs) of
# outrider behind wrk: with telemetry off and with tracing (100% sampled,
# OTLP/HTTP to benches/otlp_sink.py) and metrics on at 64 connections, and
# with telemetry off at 1 connection (where per-request wake-ups dominate).
#
#   bash benches/profile.sh [SECONDS]     # default 10 s per configuration
#
# Builds a copy of outrider with symbols and frame pointers in
# target/profiling (the release profile otherwise unchanged), the bench
# upstream as run.sh does, and writes benches/results/profile-off-c64.txt,
# profile-full-c64.txt and profile-off-c1.txt: the share of samples per
# binary (outrider vs kernel vs libc), then the top functions by self time
# and by inclusive time; and syscalls-c64.txt: syscalls per request of
# nginx and outrider side by side (perf trace -s).
# Same pinning and ports as run.sh, so do not run both at once. Root or
# perf_event_paranoid <= 1 is needed for perf; it is installed with
# apt-get (linux-perf) when missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"
ROOT="$(cd "$HERE/.." && pwd)"
SECS="${1:-10}"
[[ "$SECS" =~ ^[0-9]+$ ]] || {
    echo "usage: bash benches/profile.sh [SECONDS]" >&2
    exit 2
}
P_UP=18081 P_PROXY=18083 A_PROXY=19083 P_SINK=4318
PROF_BIN="$ROOT/target/profiling/release/outrider"
UPSTREAM_BIN="$HERE/upstream/target/release/bench-upstream"
RESULTS="$HERE/results"

die() {
    printf 'profile.sh: error: %s\n' "$*" >&2
    exit 1
}
log() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*" >&2; }

need_apt=()
command -v perf >/dev/null || need_apt+=(linux-perf)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
    ((EUID == 0)) || die "missing ${need_apt[*]}; run as root or install them"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null || die "apt-get install ${need_apt[*]} failed"
fi
perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1 ||
    die "perf cannot sample here (perf_event_paranoid is $(cat /proc/sys/kernel/perf_event_paranoid); run as root)"

log "build outrider with symbols and frame pointers (target/profiling)"
(cd "$ROOT" && CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release --locked --target-dir target/profiling) ||
    die "profiling build failed"
cargo build --release --locked --manifest-path "$HERE/upstream/Cargo.toml" || die "upstream build failed"

TMP="$(mktemp -d /tmp/outrider-profile.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids
    if ((rc != 0)); then
        echo "profile.sh: failed (exit $rc); logs in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_http() { # PID URL
    local deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
        kill -0 "$1" 2>/dev/null || die "a server exited during startup (logs in $TMP)"
        [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$2" || true)" == 200 ]] && return 0
        sleep 0.01
    done
    die "$2 did not answer 200 within 15 s"
}

taskset -c 0 "$UPSTREAM_BIN" "$P_UP" >"$TMP/upstream.log" 2>&1 &
PIDS+=("$!")
wait_http "$!" "http://127.0.0.1:$P_UP/"
taskset -c 1 chrt --idle 0 python3 "$HERE/otlp_sink.py" --port "$P_SINK" >"$TMP/sink.log" 2>&1 &
PIDS+=("$!")
wait_http "$!" "http://127.0.0.1:$P_SINK/stats"

# perf pads its columns to the longest symbol: drop the padding and the
# empty trailing columns.
tidy() { sed -E 's/[[:space:]]+(-[[:space:]]+-)?[[:space:]]*$//'; }

# start_outrider off|full PORT ADMIN_PORT: starts it on CPU 0 and waits for
# /readyz; $! is its PID afterwards.
start_outrider() {
    local env_vars=(PATH="$PATH" HOME="${HOME:-/root}" OUTRIDER_UPSTREAM="http://127.0.0.1:$P_UP"
        OUTRIDER_LISTEN="127.0.0.1:$2" OUTRIDER_ADMIN_LISTEN="127.0.0.1:$3"
        OUTRIDER_ACCESS_LOG=false OUTRIDER_LOG=warn OUTRIDER_DRAIN_DELAY=0s OUTRIDER_DRAIN_TIMEOUT=2s)
    if [[ $1 == off ]]; then
        env_vars+=(OTEL_SDK_DISABLED=true)
    else
        env_vars+=(OTEL_TRACES_SAMPLER=always_on OTEL_SERVICE_NAME=bench-app
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$P_SINK" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)
    fi
    taskset -c 0 env -i "${env_vars[@]}" "$PROF_BIN" >"$TMP/outrider-$1-$2.log" 2>&1 &
    PIDS+=("$!")
    wait_http "$!" "http://127.0.0.1:$3/readyz"
}

mkdir -p "$RESULTS"
for config in off:64 full:64 off:1; do
    tel=${config%:*} conns=${config#*:}
    log "outrider, telemetry $tel: perf record for ${SECS}s under wrk -t1 -c$conns"
    start_outrider "$tel" "$P_PROXY" "$A_PROXY"
    pid=$!
    taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:$P_PROXY/" >/dev/null # warm-up
    taskset -c 1 wrk -t1 -c"$conns" -d"$((SECS + 2))s" --latency "http://127.0.0.1:$P_PROXY/" >"$TMP/wrk-$tel.txt" 2>&1 &
    wrk_pid=$!
    sleep 1 # inside the wrk run: sample steady state, not the connection setup
    perf record -e cpu-clock -F 1999 -g -p "$pid" -o "$TMP/perf-$tel.data" -- sleep "$SECS" >"$TMP/perf-$tel.log" 2>&1 ||
        die "perf record failed: $(tail -3 "$TMP/perf-$tel.log")"
    wait "$wrk_pid" || die "wrk failed: $(tail -3 "$TMP/wrk-$tel.txt")"
    out="$RESULTS/profile-$tel-c$conns.txt"
    set +o pipefail # head closes the pipe early on purpose
    {
        echo "# outrider $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "${BENCH_REV:-unknown}"), telemetry $tel, wrk -t1 -c$conns, ${SECS}s of cpu-clock samples at 1999 Hz"
        grep -E 'Requests/sec|requests in' "$TMP/wrk-$tel.txt" | sed 's/^ */# wrk: /'
        echo
        echo "## samples by binary"
        perf report -i "$TMP/perf-$tel.data" --stdio --no-children --sort dso 2>/dev/null | grep -E '^ +[0-9]' | head -8
        echo
        echo "## top 30 functions by self time"
        perf report -i "$TMP/perf-$tel.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.3 2>/dev/null |
            grep -E '^ +[0-9]' | tidy | head -30
        echo
        echo "## top 30 user-space functions by self time (outrider and libc; % of all samples)"
        perf report -i "$TMP/perf-$tel.data" --stdio --no-children --dsos outrider,libc.so.6 --sort dso,symbol -g none \
            --percent-limit 0.2 2>/dev/null | grep -E '^ +[0-9]' | tidy | head -30
        echo
        echo "## outrider, hyper and opentelemetry functions by inclusive time (self + callees, kernel included)"
        perf report -i "$TMP/perf-$tel.data" --stdio --children --sort symbol -g none --percent-limit 1 2>/dev/null |
            grep -E '^ +[0-9]' | grep -E 'outrider::|hyper::|hyper_util::|opentelemetry|prometheus|prost::' | tidy | head -30
        echo
        echo "## top 40 functions by inclusive time (self + callees)"
        perf report -i "$TMP/perf-$tel.data" --stdio --children --sort symbol -g none --percent-limit 2 2>/dev/null |
            grep -E '^ +[0-9]' | tidy | head -40
    } >"$out"
    set -o pipefail
    echo "wrote $out" >&2
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'PIDS[${#PIDS[@]}-1]'
done

# Syscalls and context switches per request, nginx next to outrider: the
# kernel is two thirds of outrider's profile, so how often each proxy enters
# it is the first thing to compare. `perf trace -s` slows the traced process,
# so the request rate here is not comparable with run.sh's; the counts per
# request are what matter.
log "syscalls per request under wrk -t1 -c64 (perf trace -s, 3 s each)"
command -v nginx >/dev/null || die "nginx not installed (bash benches/run.sh installs it)"
mkdir -p "$TMP/nginx-temp"
chmod 755 "$TMP"
sed -e "s|@TMP@|$TMP|g" -e "s|@NOFILE@|1024|g" -e "s|@WORKER_CONNECTIONS@|1024|g" \
    -e "s|@UPSTREAM_PORT@|$P_UP|g" -e "s|@PORT@|18082|g" "$HERE/nginx.conf.template" >"$TMP/nginx.conf"
taskset -c 0 nginx -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log" -g 'daemon off;' >"$TMP/nginx.log" 2>&1 &
PIDS+=("$!")
nginx_master=$!
wait_http "$nginx_master" "http://127.0.0.1:18082/"
nginx_worker="$(pgrep -P "$nginx_master" | head -1)"
start_outrider off 18083 19083
off_pid=$!
start_outrider full 18084 19084
full_pid=$!
# ctx_switches PID: voluntary and involuntary context switches, all threads.
ctx_switches() {
    cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ { v += $2 } /^nonvoluntary_ctxt_switches/ { n += $2 } END { print v, n }'
}
syscall_out="$RESULTS/syscalls-c64.txt"
{
    echo "# syscalls per request, wrk -t1 -c64 for 3 s while perf trace -s follows the proxy (nginx: its worker)"
    for t in nginx:18082:$nginx_worker outrider-off:18083:$off_pid outrider-full:18084:$full_pid; do
        IFS=: read -r name port pid <<<"$t"
        taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:$port/" >/dev/null # warm-up
        cs_before="$(ctx_switches "$pid")"
        perf trace -s -p "$pid" -o "$TMP/trace-$name.txt" -- \
            taskset -c 1 wrk -t1 -c64 -d3s "http://127.0.0.1:$port/" >"$TMP/wrk-trace-$name.txt" 2>&1 ||
            die "perf trace against $name failed"
        cs_after="$(ctx_switches "$pid")"
        python3 - "$name" "$TMP/trace-$name.txt" "$TMP/wrk-trace-$name.txt" "$cs_before" "$cs_after" <<'PY'
import re, sys
name, trace, wrk, cs0, cs1 = sys.argv[1:]
v0, n0 = map(int, cs0.split()); v1, n1 = map(int, cs1.split())
requests = int(re.search(r"(\d+) requests in", open(wrk).read()).group(1))
calls, errors = {}, {}
for line in open(trace):
    m = re.match(r"\s+(\w+)\s+(\d+)\s+(\d+)\s+[0-9.]+", line)
    if m:
        calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
        errors[m.group(1)] = errors.get(m.group(1), 0) + int(m.group(3))
total = sum(calls.values())
print(f"\n## {name}: {requests} requests, {total / requests:.2f} syscalls per request, "
      f"{(v1 - v0) / requests:.3f} voluntary + {(n1 - n0) / requests:.3f} involuntary context switches per request")
for sc, n in sorted(calls.items(), key=lambda kv: -kv[1])[:12]:
    err = f" ({errors[sc] / requests:.2f} failed, e.g. EAGAIN)" if errors[sc] else ""
    print(f"  {sc:<16} {n / requests:6.2f}{err}")
PY
    done
} >"$syscall_out"
echo "wrote $syscall_out" >&2
