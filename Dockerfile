# syntax=docker/dockerfile:1
#
# outrider: one static binary in a `FROM scratch` image.
#
# Two ways to build it, both giving the same runtime stage below:
#
#   bash deploy/image.sh
#       builds the binary on this machine (deploy/build-static.sh) and the
#       `prebuilt` target around it with podman or docker; needs no registry.
#   docker build --build-arg OUTRIDER_COMMIT=$(git rev-parse --short=12 HEAD) -t outrider .
#       (or podman build) builds the binary in the `builder` stage (pulls
#       rust:1-bookworm) and the last stage, `runtime`, around it.
#
# The binary is static glibc (`-C target-feature=+crt-static`): no
# interpreter, no shared libraries, so it runs in an empty image and can be
# copied into any other (see "Wrap mode" at the bottom). It allocates with
# jemalloc. The image holds the binary and the CA roots (for HTTPS to the
# app) and nothing else: no shell, no package manager, no passwd file.

# deploy/image.sh builds `--target prebuilt --build-arg BINARY_FROM=<image>`;
# a plain build builds the last stage, from `builder`. No stage names an ARG in
# FROM for the default path: buildah before the header-ARG fix (Debian 12's
# podman 4.3.1) skips such a stage's dependency and then tries to pull
# "builder" from a registry.
ARG BINARY_FROM=builder

############################ builder ############################
FROM rust:1-bookworm AS builder

WORKDIR /build

# Dependency layer: build every dependency against empty sources, so that a
# change under src/ does not rebuild the ~200 crates of Cargo.lock.
COPY Cargo.toml Cargo.lock ./
COPY deploy/build-static.sh deploy/
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && bash deploy/build-static.sh \
 && rm -rf src

# The real sources. `touch` makes them newer than the dummy build's
# artefacts: COPY keeps the build context's timestamps, which may be older.
# `.git` is not in the context, so the commit for `outrider_build_info` and
# `--version` comes in as a build argument.
ARG OUTRIDER_COMMIT=unknown
ENV OUTRIDER_COMMIT=${OUTRIDER_COMMIT}
COPY build.rs ./
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cp "$(bash deploy/build-static.sh)" /outrider \
 && /outrider --version

FROM ${BINARY_FROM} AS prebuilt-binary

############################ runtime ############################
FROM scratch AS runtime-base

LABEL org.opencontainers.image.title="outrider" \
      org.opencontainers.image.description="A lightweight sidecar reverse proxy that gives a legacy HTTP app tracing, metrics, probes and lossless shutdown" \
      org.opencontainers.image.source="https://github.com/outrider-proxy/outrider" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

# Numeric, since there is no /etc/passwd: Kubernetes' runAsNonRoot can
# verify a numeric user without one. 65532 is distroless' "nonroot".
USER 65532:65532

# 8080: public listener (OUTRIDER_LISTEN); 9901: admin listener with
# /livez, /readyz, /startupz, /metrics and /drain (OUTRIDER_ADMIN_LISTEN).
EXPOSE 8080 9901

# Without arguments outrider runs as a pod sidecar in front of an app it did
# not start (OUTRIDER_UPSTREAM, default http://127.0.0.1:8081).
ENTRYPOINT ["/outrider"]

FROM runtime-base AS prebuilt
COPY --from=prebuilt-binary /outrider /outrider
COPY --from=prebuilt-binary /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

############################ default target ############################
FROM runtime-base AS runtime
COPY --from=builder /outrider /outrider
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

# ----------------------------------------------------------------------------
# Wrap mode: put the binary into the legacy app's own image and let outrider
# start and supervise the app as PID 1 (it forwards the drain to the app as
# SIGTERM, then SIGKILL after OUTRIDER_APP_STOP_TIMEOUT, reaps orphans, and
# exits with the app's exit code):
#
#   FROM your-legacy-app-base
#   COPY --from=outrider /outrider /usr/local/bin/outrider
#   ...
#   ENTRYPOINT ["outrider", "--", "./legacy-app"]
#
# The app must listen on OUTRIDER_UPSTREAM (default 127.0.0.1:8081).
# See deploy/kubernetes/app-wrap.yaml; tests/containers.rs runs exactly this.
