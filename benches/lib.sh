# Shared by run.sh, callgrind.sh and profile.sh: sourced, not run.

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
