#!/usr/bin/env bash
# Runs outrider's image in a podman pod in front of a stand-in legacy app
# (busybox httpd: deploy/demo-app), as a Kubernetes pod runs it: two
# containers sharing one network namespace, both non-root, read-only, with
# no capabilities. Prints what to try, then follows outrider's log.
# The pod is laid out as deploy/kubernetes/app-native-sidecar.yaml lays it
# out: an outrider-init container copies outrider's binary into the pod's
# outrider-bin volume, which the app container mounts read-only. Ctrl-C
# stops the pod the way the kubelet stops a pod with a native sidecar: the
# app's preStop hook (`outrider drain` over loopback, no token), then the
# app, then outrider.
#
#   bash deploy/image.sh && bash deploy/pod-demo.sh
#
# IMAGE (default localhost/outrider:dev) is the outrider image to run;
# OTEL_EXPORTER_OTLP_ENDPOINT, if set, is passed on (reachable from the pod:
# use the host's podman bridge address, not 127.0.0.1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${IMAGE:-localhost/outrider:dev}
POD=${POD:-outrider-demo}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}

command -v podman >/dev/null || { echo "pod-demo.sh: needs podman (apt-get install podman runc)" >&2; exit 1; }
command -v curl >/dev/null || { echo "pod-demo.sh: needs curl" >&2; exit 1; }
podman image exists "$IMAGE" || { echo "pod-demo.sh: no image $IMAGE: run bash deploy/image.sh first" >&2; exit 1; }
app_image=$(bash deploy/demo-app/build.sh)

# The pod's emptyDir for the hook's binary.
hook_volume=$POD-outrider-bin
hook=(/outrider-hook/outrider drain --admin 127.0.0.1:9901)

podman pod rm -f -t 0 "$POD" >/dev/null 2>&1 || true
podman volume rm -f "$hook_volume" >/dev/null 2>&1 || true
cleanup() {
    podman pod rm -f -t 0 "$POD" >/dev/null 2>&1 || true
    podman volume rm -f "$hook_volume" >/dev/null 2>&1 || true
}
trap cleanup EXIT

restricted=(--read-only --cap-drop=all --security-opt=no-new-privileges)
otel=()
[[ -n ${OTEL_EXPORTER_OTLP_ENDPOINT:-} ]] && otel=(-e OTEL_EXPORTER_OTLP_ENDPOINT)
podman pod create --name "$POD" >/dev/null
# outrider-init: runs to completion before the others, as an init container.
podman run --pod "$POD" --name "$POD-outrider-init" "${restricted[@]}" \
    -v "$hook_volume:/outrider-hook" "$IMAGE" install-hook /outrider-hook
podman run -d --pod "$POD" --name "$POD-app" "${restricted[@]}" \
    -v "$hook_volume:/outrider-hook:ro" "$app_image" >/dev/null
podman run -d --pod "$POD" --name "$POD-outrider" "${restricted[@]}" \
    -e OUTRIDER_UPSTREAM=http://127.0.0.1:8081 -e OUTRIDER_APP_HEALTH=/ \
    -e OTEL_SERVICE_NAME=legacy-app -e K8S_POD_NAME="$POD" "${otel[@]}" \
    "$IMAGE" >/dev/null

infra=$(podman pod inspect "$POD" --format '{{.InfraContainerID}}')
ip=$(podman inspect "$infra" --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
for _ in $(seq 100); do
    curl -fs "http://$ip:9901/readyz" >/dev/null && break
    sleep 0.1
done
curl -fs "http://$ip:9901/readyz" >/dev/null || {
    podman logs "$POD-outrider" >&2
    echo "pod-demo.sh: outrider never became ready" >&2
    exit 1
}

cat <<EOT
pod $POD is up at $ip: the app listens on the pod's loopback only, outrider
on $ip:8080 (traffic) and $ip:9901 (probes, metrics). In another terminal:

  curl -i http://$ip:8080/                      # proxied to the app
  curl -i "http://$ip:8080/cgi-bin/slow?2"      # a slow request (2 s)
  curl -s "http://$ip:9901/readyz?verbose"      # readiness, with the app's health
  curl -s http://$ip:9901/metrics | grep ^http_server
  curl -i http://$ip:9901/drain                 # 403: not loopback, no token

Ctrl-C stops the pod as the kubelet would. outrider's log follows.

EOT
podman logs -f "$POD-outrider" &
logs=$!

stop() {
    trap - INT TERM
    # The follower stops here; what outrider logs from now on is printed
    # whole at the end, in order.
    kill "$logs" 2>/dev/null || true
    local since
    since=$(date +%s)
    echo
    echo "== preStop in the app container: ${hook[*]} (returns when the drain is over)"
    podman exec "$POD-app" "${hook[@]}"
    echo "== SIGTERM to the app"
    podman stop -t 30 "$POD-app" >/dev/null
    echo "== SIGTERM to outrider, after the app exited"
    podman stop -t 30 "$POD-outrider" >/dev/null
    echo "== outrider's log since the stop began"
    podman logs --since "$since" "$POD-outrider"
    echo "== exit codes: app $(podman inspect "$POD-app" --format '{{.State.ExitCode}}'), outrider $(podman inspect "$POD-outrider" --format '{{.State.ExitCode}}')"
    exit 0
}
trap stop INT TERM
wait "$logs"
