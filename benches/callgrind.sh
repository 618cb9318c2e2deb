#!/usr/bin/env bash
# User-space instructions per request, under callgrind: repeatable whatever
# else the machine does (this VM has no hardware counters, and CPU time
# drifts with its load), so the way to compare two builds of outrider.
#
#   bash benches/callgrind.sh BIN [BIN ...]
#   CALLGRIND_TELEMETRY=full bash benches/callgrind.sh BIN [BIN ...]
#   CALLGRIND_TELEMETRY=full CALLGRIND_EXPORT=https-gzip bash benches/callgrind.sh BIN ...
#
# For each binary, telemetry off as in run.sh's outrider-off (or, with
# CALLGRIND_TELEMETRY=full, tracing 100 % sampled and exported over
# OTLP/HTTP to benches/otlp_sink.py, in clear (or with
# CALLGRIND_EXPORT=https-gzip over TLS and gzip, as run.sh's outrider-full
# does by default), in front of
# the bench upstream: one run that only starts, becomes ready and stops,
# and one with `wrk -t1 -c16 -d10s` in between. Prints
#   (instructions of the loaded run - instructions of the idle run) / requests.
# Needs valgrind and wrk; uses run.sh's ports (not at the same time as it).
#
#   CALLGRIND_GRPC=1 bash benches/callgrind.sh BIN [BIN ...]
#
# measures a unary gRPC call instead (grpc.sh's call, telemetry off): in
# front of examples/grpc_bench_app.rs (built with the bench-app profile
# when missing), with outrider's default protocol (or grpc.sh's
# BENCH_GRPC_UPSTREAM_PROTOCOL when set) and `h2load -t1 -c4 -m16 -D 10` as the load.
# Needs h2load (nghttp2-client) then.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/lib.sh"

(($# > 0)) || { echo "usage: bash benches/callgrind.sh BIN [BIN ...]" >&2; exit 2; }
GRPC=${CALLGRIND_GRPC:-0}
for c in valgrind wrk curl $( ((GRPC)) && echo h2load); do
    command -v "$c" >/dev/null || { echo "callgrind.sh: needs $c" >&2; exit 1; }
done
UPSTREAM_BIN="$HERE/upstream/target/release/bench-upstream"
UPSTREAM_PROTOCOL=()
if ((GRPC)); then
    UPSTREAM_BIN="${CARGO_TARGET_DIR:-$HERE/../target}/bench-app/examples/grpc_bench_app"
    [[ -x $UPSTREAM_BIN ]] ||
        cargo build --profile bench-app --locked --example grpc_bench_app --manifest-path "$HERE/../Cargo.toml" >&2
    PROTOCOL="${BENCH_GRPC_UPSTREAM_PROTOCOL-}"
    [[ -n $PROTOCOL ]] && UPSTREAM_PROTOCOL=(OUTRIDER_UPSTREAM_PROTOCOL="$PROTOCOL")
fi
[[ -x $UPSTREAM_BIN ]] || cargo build --release --locked --manifest-path "$HERE/upstream/Cargo.toml" >&2
P_UP=18081 P_OFF=18083 P_ADMIN=18093 P_SINK=4318
TELEMETRY=(OTEL_SDK_DISABLED=true)
if [[ ${CALLGRIND_TELEMETRY:-off} == full ]]; then
    TELEMETRY=(OTEL_SDK_DISABLED=false OTEL_TRACES_SAMPLER=always_on OTEL_SERVICE_NAME=bench-app
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$P_SINK" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)
fi

TMP="$(mktemp -d /tmp/outrider-callgrind.XXXXXX)"
PIDS=()
trap 'stop_pids; rm -rf "$TMP"' EXIT
SINK_TLS=()
if [[ ${CALLGRIND_TELEMETRY:-off} == full && ${CALLGRIND_EXPORT:-plain} == https-gzip ]]; then
    sink_certificates "$TMP" || { echo "callgrind.sh: openssl could not make the sink's certificate" >&2; exit 1; }
    SINK_TLS=(--tls-cert "$TMP/sink.pem" --tls-key "$TMP/sink-key.pem")
    TELEMETRY=(OTEL_SDK_DISABLED=false OTEL_TRACES_SAMPLER=always_on OTEL_SERVICE_NAME=bench-app
        OTEL_EXPORTER_OTLP_ENDPOINT="https://127.0.0.1:$P_SINK" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
        OTEL_EXPORTER_OTLP_CERTIFICATE="$TMP/sink-ca.pem" OTEL_EXPORTER_OTLP_COMPRESSION=gzip)
fi

"$UPSTREAM_BIN" "$P_UP" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
if [[ ${CALLGRIND_TELEMETRY:-off} == full ]]; then
    python3 "$HERE/otlp_sink.py" --port "$P_SINK" "${SINK_TLS[@]}" >"$TMP/sink.log" 2>&1 &
    PIDS+=($!)
fi

# Runs BIN under callgrind; with "load", drives wrk through it. Prints the
# instruction total, then the request count.
measure() {
    local bin=$1 load=$2 out="$TMP/callgrind.out" requests=0
    env "${TELEMETRY[@]}" "${UPSTREAM_PROTOCOL[@]}" OUTRIDER_ACCESS_LOG=false OUTRIDER_LOG=warn OUTRIDER_DRAIN_DELAY=0s \
        OUTRIDER_LISTEN=127.0.0.1:$P_OFF OUTRIDER_ADMIN_LISTEN=127.0.0.1:$P_ADMIN \
        OUTRIDER_UPSTREAM=http://127.0.0.1:$P_UP \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" >"$TMP/outrider.log" 2>&1 &
    local pid=$!
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:$P_ADMIN/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    if [[ $load == load ]] && ((GRPC)); then
        printf '\0\0\0\0\0' >"$TMP/request.bin"
        h2load -t1 -c4 -m16 -D 10 -H 'content-type: application/grpc' -H 'te: trailers' -d "$TMP/request.bin" \
            "http://127.0.0.1:$P_OFF/grpc.health.v1.Health/Check" >"$TMP/h2load.txt"
        # h2load's "succeeded" is HTTP 200; each answer must carry the 7-byte message too.
        read -r requests data < <(awk '/^requests:/ {r = $8} /^traffic:/ {gsub(/[()]/, "", $(NF - 1)); d = $(NF - 1)} END {print r, d}' "$TMP/h2load.txt")
        ((data >= 7 * requests)) || { echo "callgrind.sh: $data response bytes for $requests calls" >&2; requests=0; }
    elif [[ $load == load ]]; then
        wrk -t1 -c16 -d10s "http://127.0.0.1:$P_OFF/" >"$TMP/wrk.txt"
        requests=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$(awk '/^totals:/ {print $2}' "$out") $requests"
}

printf '%-60s %14s %10s %16s\n' binary "instructions" requests "per request"
for bin in "$@"; do
    read -r idle _ < <(measure "$bin" idle)
    read -r loaded requests < <(measure "$bin" load)
    ((requests > 0)) || { echo "callgrind.sh: no request counted for $bin" >&2; exit 1; }
    printf '%-60s %14s %10s %16s\n' "$bin" "$loaded" "$requests" "$(( (loaded - idle) / requests ))"
done
