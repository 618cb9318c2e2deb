# syntax=docker/dockerfile:1
#
# outrider: a single static binary in a distroless image.
#
#   docker build -t ghcr.io/outrider-proxy/outrider:0.1.0 .
#
# The binary is linked against musl, so it needs no libc and also runs when
# copied into any other image (see "Wrap mode" at the bottom). It allocates
# with jemalloc, not musl's allocator (a fifth slower here; see "The
# allocator" in docs/performance.md); jemalloc's C sources build with
# musl-gcc and make. The build steps were checked natively:
# `CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked
# --target x86_64-unknown-linux-musl` gives a static-pie binary of 7.7 MiB;
# with distroless/static (~2 MiB) the image stays under 15 MB.

############################ builder ############################
FROM rust:1-bookworm AS builder

ARG TARGET=x86_64-unknown-linux-musl

RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "${TARGET}"

# ring (used by rustls) compiles C and assembly: build it with musl-gcc.
ENV CC_x86_64_unknown_linux_musl=musl-gcc

WORKDIR /build

# Dependency layer: build every dependency against empty sources, so that a
# change under src/ does not rebuild the ~200 crates of Cargo.lock.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --target "${TARGET}" \
 && rm -rf src

# The real sources. `touch` makes them newer than the dummy build's
# artefacts: COPY keeps the build context's timestamps, which may be older.
# `.git` is not in the context, so the commit for `outrider_build_info`
# comes in as a build argument:
#   docker build --build-arg OUTRIDER_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG OUTRIDER_COMMIT=unknown
ENV OUTRIDER_COMMIT=${OUTRIDER_COMMIT}
COPY build.rs ./
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target "${TARGET}" \
 && cp "target/${TARGET}/release/outrider" /outrider \
 && /outrider --version

############################ runtime ############################
# distroless/static: no shell, no libc; has CA certificates and an
# /etc/passwd entry for uid 65532 ("nonroot").
FROM gcr.io/distroless/static-debian12:nonroot

LABEL org.opencontainers.image.title="outrider" \
      org.opencontainers.image.description="A lightweight sidecar reverse proxy that gives a legacy HTTP app tracing, metrics, probes and lossless shutdown" \
      org.opencontainers.image.source="https://github.com/outrider-proxy/outrider" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

COPY --from=builder /outrider /outrider

USER 65532:65532

# 8080: public listener (OUTRIDER_LISTEN); 9901: admin listener with
# /livez, /readyz, /startupz, /metrics and /drain (OUTRIDER_ADMIN_LISTEN).
EXPOSE 8080 9901

# Without arguments outrider runs as a pod sidecar in front of an app it did
# not start (OUTRIDER_UPSTREAM, default http://127.0.0.1:8081).
ENTRYPOINT ["/outrider"]

# ----------------------------------------------------------------------------
# Wrap mode: put the binary into the legacy app's own image and let outrider
# start and supervise the app (it can be PID 1; it forwards the drain to the
# app as SIGTERM, then SIGKILL after OUTRIDER_APP_STOP_TIMEOUT):
#
#   FROM your-legacy-app-base
#   COPY --from=ghcr.io/outrider-proxy/outrider:0.1.0 /outrider /usr/local/bin/outrider
#   ...
#   ENTRYPOINT ["outrider", "--", "./legacy-app"]
#
# The app must listen on OUTRIDER_UPSTREAM (default 127.0.0.1:8081).
# See deploy/kubernetes/app-wrap.yaml.
