#!/usr/bin/env bash
# The benchmark's gRPC row: unary calls to a tonic app reached directly,
# through nginx (grpc_pass) and through outrider (telemetry off), in one run,
# the targets alternated round by round as in run.sh.
#
#   bash benches/grpc.sh            # full: 3 interleaved rounds (~2.5 min after the build)
#   bash benches/grpc.sh --quick    # smoke: 1 round of 2 s per target (~20 s after the build)
#   bash benches/grpc.sh --no-build # reuse the binaries already built
#   BENCH_OUTRIDER_BIN=path ...     # measure that outrider binary instead of
#                                   # the shipped static one (deploy/build-static.sh)
#   BENCH_REV=rev ...               # commit to record for that binary
#   BENCH_KEEP_TMP=1 ...            # keep logs and raw h2load output in /tmp
#   BENCH_GRPC_UPSTREAM_PROTOCOL=.. # OUTRIDER_UPSTREAM_PROTOCOL for the
#                                   # outrider row (default empty: not set,
#                                   # outrider's own default, auto)
#
# The app is examples/grpc_bench_app.rs (tonic's grpc.health.v1.Health over
# h2c), built with the bench-app profile (release without fat LTO; --quick
# builds it in the dev profile, which `cargo test` builds anyway: a smoke
# checks the plumbing, not the figures). The load is h2load (nghttp2-client)
# calling grpc.health.v1.Health/Check. Servers (app, nginx, outrider) share
# CPU 0; h2load runs on CPU 1. Everything binds 127.0.0.1. Results: a
# markdown table on stdout, every raw number in benches/results/grpc.json
# (the table also in grpc.md). Needs root only to apt-get install
# nghttp2-client (h2load), nginx-light and curl when missing.
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
        echo "grpc.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

# Two loads, as run.sh's c64 and c1: 64 calls in flight as 16 streams on
# each of 4 connections (a few busy gRPC channels), and one call at a time.
if ((QUICK)); then
    MODE=quick ROUNDS=1 DM=2 D1=2 DWARM=0 APP_PROFILE=dev
else
    MODE=full ROUNDS=3 DM=10 D1=5 DWARM=1 APP_PROFILE=bench-app
fi
LOADS=(c4m16 c1m1)
declare -A LOAD_ARGS=([c4m16]="-c4 -m16" [c1m1]="-c1 -m1")
declare -A LOAD_SECS=([c4m16]=$DM [c1m1]=$D1)

# Ports: the benchmarks own 18081-18099; run.sh uses 18081-18085.
P_APP=18086 P_NGINX=18087 P_OUT=18088 A_OUT=18089
CPU_SERVERS=0 CPU_LOAD=1

# outrider's default (auto) sends gRPC calls over h2c by itself: the row
# measures what a user gets without a setting. BENCH_GRPC_UPSTREAM_PROTOCOL=http2
# measures the forced protocol instead.
GRPC_UPSTREAM_PROTOCOL="${BENCH_GRPC_UPSTREAM_PROTOCOL-}"

# The call: grpc.health.v1.Health/Check with an empty HealthCheckRequest
# (the whole server's health), a 5-byte gRPC frame (uncompressed flag,
# length 0). The answer: HealthCheckResponse{status: SERVING} = 08 01 in a
# 7-byte frame, then the trailers.
CALL_PATH=/grpc.health.v1.Health/Check
RESPONSE_HEX=00000000020801
RESPONSE_BYTES=$((${#RESPONSE_HEX} / 2))

SHIPPED_BIN="target/$(uname -m)-unknown-linux-gnu/release/outrider"
OUTRIDER="${BENCH_OUTRIDER_BIN:-$ROOT/$SHIPPED_BIN}"
RESULTS="$HERE/results"

log() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
    printf 'grpc.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- tools
log "tools"
(($(nproc) >= 2)) || die "needs 2 CPUs (servers on CPU 0, load generator on CPU 1); nproc says $(nproc)"
for c in cargo python3 taskset getconf; do
    command -v "$c" >/dev/null || die "'$c' not found"
done
need_apt=()
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
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
for c in h2load nginx curl; do
    command -v "$c" >/dev/null || die "$c is still missing after the install"
done
H2LOAD_VERSION="$(h2load --version 2>&1 | head -1)"
NGINX_VERSION="$(nginx -v 2>&1 | sed 's/^nginx version: //')"
CLK_TCK="$(getconf CLK_TCK)"
echo "$H2LOAD_VERSION; nginx: $NGINX_VERSION; CLK_TCK=$CLK_TCK" >&2

# ---------------------------------------------------------------- build
# The app's path comes from cargo (it honours CARGO_TARGET_DIR).
build_app() {
    cargo build --profile "$APP_PROFILE" --locked --example grpc_bench_app --manifest-path "$ROOT/Cargo.toml" \
        --message-format=json-render-diagnostics |
        sed -n 's/.*"executable":"\([^"]*\/grpc_bench_app\)".*/\1/p' | tail -n 1
}
if ((BUILD)); then
    log "build (outrider: release, static; the app: profile $APP_PROFILE)"
    if [[ -z "${BENCH_OUTRIDER_BIN:-}" ]]; then
        OUTRIDER=$(cd "$ROOT" && bash deploy/build-static.sh) || die "cargo build of outrider failed"
    fi
    APP_BIN=$(build_app) || die "cargo build of the gRPC app failed"
else
    # Where cargo puts it: the dev profile's directory is "debug".
    APP_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/${APP_PROFILE/#dev/debug}/examples/grpc_bench_app"
fi
[[ -x "$OUTRIDER" ]] || die "$OUTRIDER not built (drop --no-build)"
[[ -n "$APP_BIN" && -x "$APP_BIN" ]] || die "the gRPC app (examples/grpc_bench_app.rs) is not built (drop --no-build)"

# ---------------------------------------------------------------- processes
TMP="$(mktemp -d /tmp/outrider-grpc-bench.XXXXXX)"
chmod 755 "$TMP" # nginx's workers run as nobody and keep temp files here
PIDS=()
declare -A PID_OF=()
KEEP_TMP=${BENCH_KEEP_TMP:-0}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids
    if ((rc != 0)); then
        echo "grpc.sh: failed (exit $rc); logs kept in $TMP:" >&2
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

for p in $P_APP $P_NGINX $P_OUT $A_OUT; do
    port_busy "$p" && die "127.0.0.1:$p is already in use; stop whatever listens there"
done

log "start servers (servers on CPU $CPU_SERVERS, load on CPU $CPU_LOAD; temp dir $TMP)"
printf '\0\0\0\0\0' >"$TMP/request.bin"
start app $CPU_SERVERS "$APP_BIN" "$P_APP"

mkdir -p "$TMP/nginx-temp"
sed -e "s|@TMP@|$TMP|g" -e "s|@UPSTREAM_PORT@|$P_APP|g" -e "s|@PORT@|$P_NGINX|g" \
    "$HERE/nginx-grpc.conf.template" >"$TMP/nginx.conf"
nginx -t -q -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log" >"$TMP/nginx-check.log" 2>&1 ||
    die "nginx rejects the generated config (is its grpc module built in?): $(cat "$TMP/nginx-check.log")"
start nginx $CPU_SERVERS nginx -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log" -g 'daemon off;'

# As run.sh's outrider-off: nothing inherited but PATH and HOME.
OUT_ENV=(PATH="$PATH" HOME="${HOME:-/root}"
    OUTRIDER_UPSTREAM="http://127.0.0.1:$P_APP" OUTRIDER_LISTEN="127.0.0.1:$P_OUT" OUTRIDER_ADMIN_LISTEN="127.0.0.1:$A_OUT"
    OUTRIDER_ACCESS_LOG=false OUTRIDER_LOG=warn OUTRIDER_LOG_FORMAT=json
    OUTRIDER_DRAIN_DELAY=0s OUTRIDER_DRAIN_TIMEOUT=2s OTEL_SDK_DISABLED=true)
[[ -n $GRPC_UPSTREAM_PROTOCOL ]] && OUT_ENV+=(OUTRIDER_UPSTREAM_PROTOCOL="$GRPC_UPSTREAM_PROTOCOL")
start outrider $CPU_SERVERS env -i "${OUT_ENV[@]}" "$OUTRIDER"
wait_http outrider "http://127.0.0.1:$A_OUT/readyz"

NGINX_PIDS=("${PID_OF[nginx]}")
for _ in $(seq 100); do
    mapfile -t workers < <(pgrep -P "${PID_OF[nginx]}" || true)
    ((${#workers[@]})) && break
    sleep 0.02
done
((${#workers[@]})) || die "nginx has no worker process (log: $TMP/nginx-error.log)"
NGINX_PIDS+=("${workers[@]}")

declare -A URL=(
    [direct]="http://127.0.0.1:$P_APP$CALL_PATH"
    [nginx]="http://127.0.0.1:$P_NGINX$CALL_PATH"
    [outrider]="http://127.0.0.1:$P_OUT$CALL_PATH"
)
declare -A PROXY_PIDS=([direct]="" [nginx]="${NGINX_PIDS[*]}" [outrider]="${PID_OF[outrider]}")
TARGETS=(direct nginx outrider)
APP_PID="${PID_OF[app]}"
ALL_SERVER_PIDS=("$APP_PID" "${NGINX_PIDS[@]}" "${PID_OF[outrider]}")

# ---------------------------------------------------------------- check
# h2load counts a call as good on HTTP 200, which a gRPC error carries too:
# one call per target read in full first (grpc-status 0, the response
# message byte for byte), and every measured run's DATA bytes later.
# curl hands HTTP/2 trailers to its header output, after the body.
grpc_call() { # URL HEADERS-OUT BODY-OUT
    curl -sS --http2-prior-knowledge --max-time 2 -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary @"$TMP/request.bin" -D "$2" -o "$3" "$1"
}
log "check responses"
for t in "${TARGETS[@]}"; do
    deadline=$((SECONDS + 15)) # the app and nginx may still be starting
    until grpc_call "${URL[$t]}" "$TMP/check-$t.headers" "$TMP/check-$t.body" 2>"$TMP/check-$t.err"; do
        ((SECONDS < deadline)) || die "$t: the call failed: $(cat "$TMP/check-$t.err")"
        for name in app nginx outrider; do
            kill -0 "${PID_OF[$name]}" 2>/dev/null || die "$name exited (log: $TMP/$name.log)"
        done
        sleep 0.05
    done
    status="$(tr -d '\r' <"$TMP/check-$t.headers" | awk -F': ' 'tolower($1) == "grpc-status" { print $2 }')"
    body="$(od -An -tx1 -v "$TMP/check-$t.body" | tr -d ' \n')"
    [[ $status == 0 && $body == "$RESPONSE_HEX" ]] ||
        die "$t: grpc-status '${status:-none}' and response $body (\"$(head -c 120 "$TMP/check-$t.body" | tr -c '[:print:]' .)\"; want 0 and $RESPONSE_HEX); headers: $(tr -d '\r' <"$TMP/check-$t.headers" | tr '\n' ' ')"
    echo "$t: grpc-status 0, response message as expected" >&2
done

# ---------------------------------------------------------------- load
RECORDS="$TMP/records.jsonl"
: >"$RECORDS"

# run_h2load LOAD TARGET ROUND
run_h2load() {
    local load=$1 t=$2 round=$3 out="$TMP/h2load-$1-$2-r$3.txt" pb="" pa="" ub ua sb sa
    # shellcheck disable=SC2086
    [[ -n "${PROXY_PIDS[$t]}" ]] && pb="$(cpu_ticks ${PROXY_PIDS[$t]})"
    ub="$(cpu_ticks "$APP_PID")"
    sb="$(sys_snapshot)"
    # shellcheck disable=SC2086
    taskset -c $CPU_LOAD h2load -t1 ${LOAD_ARGS[$load]} -D "${LOAD_SECS[$load]}" \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$TMP/request.bin" "${URL[$t]}" >"$out" 2>&1 ||
        die "h2load against $t failed: $(tail -3 "$out")"
    # shellcheck disable=SC2086
    [[ -n "${PROXY_PIDS[$t]}" ]] && pa="$(cpu_ticks ${PROXY_PIDS[$t]})"
    ua="$(cpu_ticks "$APP_PID")"
    sa="$(sys_snapshot)"
    python3 "$HELPERS" grpc-record --out "$RECORDS" --h2load "$out" --load "$load" --target "$t" --round "$round" \
        --url "${URL[$t]}" --response-bytes "$RESPONSE_BYTES" --clk-tck "$CLK_TCK" \
        ${pb:+--proxy-cpu-before "$pb" --proxy-cpu-after "$pa"} \
        --upstream-cpu-before "$ub" --upstream-cpu-after "$ua" --sys-before "$sb" --sys-after "$sa" \
        --server-cpu "$CPU_SERVERS" || die "h2load against $t: wrong or unparsable results ($out)"
}

BUSY_BEFORE="$(machine_busy)"

if ((DWARM)); then
    log "warm-up (${DWARM}s per target, not recorded)"
    for t in "${TARGETS[@]}"; do
        # shellcheck disable=SC2086
        taskset -c $CPU_LOAD h2load -t1 ${LOAD_ARGS[c4m16]} -D "$DWARM" -H 'content-type: application/grpc' \
            -H 'te: trailers' -d "$TMP/request.bin" "${URL[$t]}" >"$TMP/warmup-$t.txt" 2>&1 ||
            die "warm-up against $t failed: $(tail -3 "$TMP/warmup-$t.txt")"
    done
fi

log "load: $ROUNDS interleaved round(s); c4m16 for ${DM}s and c1m1 for ${D1}s per target"
for round in $(seq "$ROUNDS"); do
    for load in "${LOADS[@]}"; do
        for t in "${TARGETS[@]}"; do run_h2load "$load" "$t" "$round"; done
    done
done

# ---------------------------------------------------------------- report
COMMAND="bash benches/grpc.sh"
((QUICK)) && COMMAND+=" --quick"
if [[ -n "${BENCH_REV:-}" ]]; then
    GIT_REV="$BENCH_REV"
elif [[ -n "${BENCH_OUTRIDER_BIN:-}" ]]; then
    GIT_REV="unknown (BENCH_OUTRIDER_BIN without BENCH_REV)"
else
    GIT_REV="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
fi
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
    "machine_busy_before": $BUSY_BEFORE,
    "versions": {
        "outrider_git": "$GIT_REV",
        "outrider_bin": "${BENCH_OUTRIDER_BIN:-$SHIPPED_BIN}",
        "outrider_bin_sha256": "$(sha256sum "$OUTRIDER" | cut -d' ' -f1)",
        "app": "examples/grpc_bench_app.rs (tonic-health), cargo profile $APP_PROFILE",
        "nginx": "$NGINX_VERSION",
        "h2load": "$H2LOAD_VERSION",
        "rustc": "$(rustc --version 2>/dev/null || echo unknown)",
    },
    "config": {
        "rounds": $ROUNDS,
        "order": "each round: c4m16 against direct, nginx, outrider; then c1m1 in the same order",
        "call": "unary $CALL_PATH, a 5-byte request frame, a $RESPONSE_BYTES-byte response frame",
        "outrider_env": "OTEL_SDK_DISABLED=true OUTRIDER_ACCESS_LOG=false${GRPC_UPSTREAM_PROTOCOL:+ OUTRIDER_UPSTREAM_PROTOCOL=$GRPC_UPSTREAM_PROTOCOL}",
        "nginx": "benches/nginx-grpc.conf.template: listen http2 (h2c), grpc_pass, upstream keepalive 64",
        "pinning": {"app, nginx, outrider": $CPU_SERVERS, "h2load": $CPU_LOAD},
    },
    "loads": {
        "c4m16": {"h2load": "-t1 -c4 -m16 -D $DM", "title": "64 calls in flight: 4 connections × 16 streams (\`h2load -t1 -c4 -m16\`, ${DM} s)"},
        "c1m1": {"h2load": "-t1 -c1 -m1 -D $D1", "title": "one call at a time (\`h2load -t1 -c1 -m1\`, ${D1} s)"},
    },
}
json.dump(meta, open(sys.argv[1], "w"))
PY

mkdir -p "$RESULTS"
log "results ($MODE)"
python3 "$HELPERS" grpc-report --records "$RECORDS" --meta "$TMP/meta.json" \
    --json-out "$RESULTS/grpc.json" --md-out "$RESULTS/grpc.md"
echo >&2
echo "raw numbers: $RESULTS/grpc.json; table: $RESULTS/grpc.md" >&2
