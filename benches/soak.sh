#!/usr/bin/env bash
# Soak test (not run in CI): 20 minutes of mixed traffic through outrider
# while its RSS, open descriptors and tokio tasks are sampled every 10 s.
#
#   bash benches/soak.sh               # build (release) and run 1200 s
#   SOAK_DURATION=120 bash benches/soak.sh   # a short run, to try it out
#   bash benches/soak.sh --no-build    # reuse target/release/outrider
#   SOAK_OUTRIDER_BIN=path ...         # soak that binary instead (no build)
#   SOAK_REV=rev ...                   # commit to record for that binary
#   SOAK_NAME=name ...                 # results as benches/results/NAME.* (soak)
#   SOAK_RESTART_EVERY=s SOAK_RESTART_DOWN=s SOAK_WARMUP=s SOAK_SEED=n
#   SOAK_PORT_BASE=28100               # outrider, admin, app, OTLP sink: +0..+3
#   SOAK_KEEP_TMP=1                    # keep the logs in /tmp
#
# The traffic (benches/soak.py): HTTP/1 keep-alive and one connection per
# request, h2c, WebSocket echo sessions, slow clients, 4-16 MiB uploads
# and downloads, client aborts, and the app (benches/soak_app.py, aiohttp)
# killed with SIGKILL every 180 s and started again 3 s later. Everything
# binds 127.0.0.1. Results: benches/results/soak.{csv,json,md,png}; exit
# status 0 on PASS, 1 on FAIL, 2 when the soak itself could not run.
# Needs python3 with aiohttp, h2 and matplotlib: installed with pip when
# missing (pip install aiohttp h2 matplotlib).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

BUILD=1
for arg in "$@"; do
    case "$arg" in
    --no-build) BUILD=0 ;;
    -h | --help)
        awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
        exit 0
        ;;
    *)
        echo "soak.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done
die() {
    printf 'soak.sh: error: %s\n' "$*" >&2
    exit 2
}

for c in cargo python3; do
    command -v "$c" >/dev/null || die "'$c' not found"
done
if ! python3 -c 'import aiohttp, h2, matplotlib' 2>/dev/null; then
    echo "installing aiohttp, h2 and matplotlib with pip" >&2
    python3 -m pip install -q aiohttp h2 matplotlib ||
        die "pip install aiohttp h2 matplotlib failed; install them first"
fi

OUTRIDER="${SOAK_OUTRIDER_BIN:-$ROOT/target/release/outrider}"
if [[ -z "${SOAK_OUTRIDER_BIN:-}" ]] && ((BUILD)); then
    (cd "$ROOT" && cargo build --release --locked) || die "cargo build --release failed"
fi
[[ -x "$OUTRIDER" ]] || die "$OUTRIDER not built (drop --no-build)"

if [[ -n "${SOAK_REV:-}" ]]; then
    REV="$SOAK_REV"
elif [[ -n "${SOAK_OUTRIDER_BIN:-}" ]]; then
    REV="unknown (SOAK_OUTRIDER_BIN without SOAK_REV)"
else
    REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    [[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]] && REV+=" (src modified)"
fi

BASE="${SOAK_PORT_BASE:-28100}"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $BASE $((BASE + 1)) $((BASE + 2)) $((BASE + 3)); do
    port_busy "$p" && die "127.0.0.1:$p is already in use (SOAK_PORT_BASE moves the four ports)"
done

TMP="$(mktemp -d /tmp/outrider-soak.XXXXXX)"
finish() {
    local rc=$?
    if ((rc == 0)) && [[ "${SOAK_KEEP_TMP:-0}" != 1 ]]; then
        rm -rf "$TMP"
    else
        echo "soak.sh: logs kept in $TMP" >&2
    fi
    exit "$rc"
}
trap finish EXIT

COMMAND="bash benches/soak.sh"
[[ -n "${SOAK_DURATION:-}" ]] && COMMAND="SOAK_DURATION=$SOAK_DURATION $COMMAND"
args=(--bin "$OUTRIDER" --port "$BASE" --admin-port $((BASE + 1)) --app-port $((BASE + 2)) --sink-port $((BASE + 3))
    --duration "${SOAK_DURATION:-1200}" --tmp "$TMP" --out-dir "$HERE/results" --name "${SOAK_NAME:-soak}"
    --commit "$REV" --command "$COMMAND" --seed "${SOAK_SEED:-1}" --restart-down "${SOAK_RESTART_DOWN:-3}")
[[ -n "${SOAK_WARMUP:-}" ]] && args+=(--warmup "$SOAK_WARMUP")
[[ -n "${SOAK_RESTART_EVERY:-}" ]] && args+=(--restart-every "$SOAK_RESTART_EVERY")
python3 "$HERE/soak.py" "${args[@]}"
