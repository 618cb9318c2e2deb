#!/usr/bin/env bash
# Builds the stand-in legacy app's image (see Containerfile) with podman.
# Prints the image name on its last line.
#
#   bash deploy/demo-app/build.sh                    # tags outrider-demo-app:dev
#   APP_IMAGE=localhost/other:tag bash deploy/demo-app/build.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP_IMAGE=${APP_IMAGE:-localhost/outrider-demo-app:dev}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/../podman/containers.conf}

busybox=
for candidate in /bin/busybox /usr/bin/busybox; do
    # Static: no program interpreter to find in an empty image.
    if [[ -x $candidate ]] && ! readelf -l "$candidate" 2>/dev/null | grep -q 'program interpreter'; then
        busybox=$candidate
        break
    fi
done
[[ -n $busybox ]] || { echo "demo-app/build.sh: no static busybox (apt-get install busybox-static)" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -r "$here/www" "$here/app.sh" "$here/Containerfile" "$ctx/"
cp "$busybox" "$ctx/busybox"
before=$(podman image inspect --format '{{.Id}}' "$APP_IMAGE" 2>/dev/null || true)
podman build --quiet -t "$APP_IMAGE" "$ctx" >/dev/null
# Rebuilds do not pile up untagged images.
if [[ -n $before && $before != $(podman image inspect --format '{{.Id}}' "$APP_IMAGE") ]]; then
    podman rmi "$before" >/dev/null 2>&1 || true
fi
echo "$APP_IMAGE"
