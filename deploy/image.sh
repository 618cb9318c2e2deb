#!/usr/bin/env bash
# Builds outrider's container image from this checkout, offline: the static
# binary is built here (deploy/build-static.sh), then the Dockerfile's
# runtime stage is built on top of it with podman (or docker if there is no
# podman). No image is pulled.
#
#   bash deploy/image.sh                 # tags outrider:dev
#   IMAGE=registry.example/outrider:1.2 bash deploy/image.sh
#   BINARY=path/to/outrider bash deploy/image.sh         # skip the cargo build
#
# Prints the image name on its last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${IMAGE:-localhost/outrider:dev}

if command -v podman >/dev/null; then
    ENGINE=(podman)
    # Settings for hosts without systemd (see the file), unless the caller
    # has its own.
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=(docker)
    # BuildKit skips the stages `--target prebuilt` does not need; docker's
    # legacy builder would build the `builder` stage and pull its base.
    export DOCKER_BUILDKIT=1
else
    echo "image.sh: neither podman nor a running docker engine found (apt-get install podman runc)" >&2
    exit 1
fi

bin=${BINARY:-$(bash deploy/build-static.sh)}
ca=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca ]] || { echo "image.sh: no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 1; }

# The binary and CA roots as a one-layer image, which the Dockerfile's
# `prebuilt` target takes through BINARY_FROM.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/outrider"
cp "$ca" "$ctx/ca-certificates.crt"
printf '%s\n' 'FROM scratch' 'COPY outrider /outrider' \
    'COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt' >"$ctx/Containerfile"
staging=localhost/outrider-binary:staging
"${ENGINE[@]}" build --quiet -t "$staging" -f "$ctx/Containerfile" "$ctx" >/dev/null

before=$("${ENGINE[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
"${ENGINE[@]}" build --quiet --target prebuilt --build-arg BINARY_FROM="$staging" -t "$IMAGE" -f Dockerfile . >/dev/null
"${ENGINE[@]}" rmi "$staging" >/dev/null 2>&1 || true
# The image this tag named before, unless a container still uses it:
# rebuilds do not pile up untagged images.
if [[ -n $before && $before != $("${ENGINE[@]}" image inspect --format '{{.Id}}' "$IMAGE") ]]; then
    "${ENGINE[@]}" rmi "$before" >/dev/null 2>&1 || true
fi

size=$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo "image.sh: built $IMAGE ($(( size / 1000 )) kB): $("${ENGINE[@]}" run --rm "$IMAGE" --version)" >&2
echo "$IMAGE"
