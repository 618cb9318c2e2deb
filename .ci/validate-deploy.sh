#!/usr/bin/env bash
# Validates the deployment artefacts under deploy/ without a cluster or a
# Docker engine:
#   * yamllint on every YAML file (.yamllint.yaml);
#   * kubernetes-validate --strict on every Kubernetes manifest, against the
#     oldest Kubernetes the manifests support (1.29: native sidecars) and the
#     newest version whose schemas kubernetes-validate bundles;
#   * structural checks in Python for what has no bundled schema (the
#     ServiceMonitor CRD, the kustomization, the compose file) and for the
#     cross-file invariants a schema cannot see (Service selectors, admin
#     token, grace period).
# Prints one "OK ..." line per check; exits non-zero on the first failure.
#
#   bash .ci/validate-deploy.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
# Oldest version with native sidecars on by default, newest bundled schema.
K8S_MIN_VERSION=1.29.0
K8S_VERSION=1.37.0
KUBERNETES_VALIDATE_REQ="kubernetes-validate>=1.37.0"
YAMLLINT_REQ="yamllint>=1.35"

K8S_DIR=deploy/kubernetes
COMPOSE_FILE=deploy/compose/docker-compose.yml
# Not plain Kubernetes API objects: checked structurally below.
K8S_SKIP=(kustomization.yaml servicemonitor.yaml)

fail() {
    echo "FAIL $*" >&2
    exit 1
}

# --- tools -------------------------------------------------------------------
if ! "$PYTHON" -c 'import yamllint' 2>/dev/null; then
    echo "installing $YAMLLINT_REQ"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "$YAMLLINT_REQ"
fi
if ! "$PYTHON" - "$K8S_VERSION" <<'EOF' 2>/dev/null; then
import sys
import kubernetes_validate.utils as u
sys.exit(0 if sys.argv[1] in u.all_versions() else 1)
EOF
    echo "installing $KUBERNETES_VALIDATE_REQ"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --upgrade "$KUBERNETES_VALIDATE_REQ"
fi
echo "OK tools: yamllint $("$PYTHON" -m yamllint --version | awk '{print $2}')," \
    "kubernetes-validate $("$PYTHON" -m kubernetes_validate --version)," \
    "schemas for Kubernetes $K8S_MIN_VERSION and $K8S_VERSION"

# --- yamllint ----------------------------------------------------------------
lint_targets=(deploy/ .yamllint.yaml)
if [[ -d .github ]]; then
    lint_targets+=(.github)
fi
"$PYTHON" -m yamllint -c .yamllint.yaml --strict "${lint_targets[@]}" || fail "yamllint ${lint_targets[*]}"
echo "OK yamllint ${lint_targets[*]}"

# --- kubernetes-validate -----------------------------------------------------
manifests=()
for f in "$K8S_DIR"/*.yaml; do
    skip=
    for s in "${K8S_SKIP[@]}"; do
        if [[ $(basename "$f") == "$s" ]]; then
            skip=1
        fi
    done
    if [[ -z $skip ]]; then
        manifests+=("$f")
    fi
done
(( ${#manifests[@]} > 0 )) || fail "no manifests in $K8S_DIR"

for version in "$K8S_MIN_VERSION" "$K8S_VERSION"; do
    for f in "${manifests[@]}"; do
        # kubernetes-validate only warns (exit 0) for a kind it has no schema
        # for, so a WARN line counts as a failure too.
        if ! out=$("$PYTHON" -m kubernetes_validate --strict -k "$version" "$f" 2>&1); then
            echo "$out" >&2
            fail "kubernetes-validate --strict -k $version $f"
        fi
        if grep -Eq '^(WARN|ERROR|FATAL)' <<<"$out"; then
            echo "$out" >&2
            fail "kubernetes-validate --strict -k $version $f"
        fi
        echo "OK kubernetes-validate --strict -k $version $f ($(grep -c '^INFO' <<<"$out") resources)"
    done
done

# --- structural checks -------------------------------------------------------
"$PYTHON" - "$K8S_DIR" "$COMPOSE_FILE" <<'EOF'
import base64
import os
import re
import sys

import yaml

k8s_dir, compose_file = sys.argv[1], sys.argv[2]


def fail(msg):
    print(f"FAIL {msg}", file=sys.stderr)
    sys.exit(1)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def dig(obj, *keys):
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


# kustomization: every listed resource exists; the CRD-based one is not listed.
kpath = os.path.join(k8s_dir, "kustomization.yaml")
kust = load_all(kpath)[0]
if kust.get("kind") != "Kustomization":
    fail(f"{kpath}: kind is not Kustomization")
resources = kust.get("resources") or []
if not resources:
    fail(f"{kpath}: no resources")
for r in resources:
    if not os.path.isfile(os.path.join(k8s_dir, r)):
        fail(f"{kpath}: resource {r} does not exist")
if "servicemonitor.yaml" in resources:
    fail(f"{kpath}: servicemonitor.yaml needs a CRD and must stay out of the base")
unlisted = sorted(
    f for f in os.listdir(k8s_dir)
    if f.endswith((".yaml", ".yml")) and f not in resources and f not in ("kustomization.yaml", "servicemonitor.yaml")
)
if unlisted:
    fail(f"{kpath}: not listed: {', '.join(unlisted)}")
print(f"OK {kpath}: {len(resources)} resources exist")

# Everything in the base, by kind.
objects = []
for r in resources:
    for doc in load_all(os.path.join(k8s_dir, r)):
        objects.append((r, doc))
deployments = [(f, d) for f, d in objects if d.get("kind") == "Deployment"]
services = [(f, d) for f, d in objects if d.get("kind") == "Service"]
secrets = {d["metadata"]["name"]: d for _, d in objects if d.get("kind") == "Secret"}


def pod_containers(dep):
    spec = dig(dep, "spec", "template", "spec") or {}
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def is_outrider(c):
    return "outrider" in c.get("image", "") or (c.get("command") or [""])[0] == "outrider"


# Every Service selects a Deployment whose pods listen on its target ports.
for f, svc in services:
    name = svc["metadata"]["name"]
    sel = dig(svc, "spec", "selector") or {}
    matches = [d for _, d in deployments
               if sel and all((dig(d, "spec", "template", "metadata", "labels") or {}).get(k) == v for k, v in sel.items())]
    if not matches:
        fail(f"{f}: Service {name} selects no Deployment")
    for d in matches:
        ports = {p["containerPort"] for c in pod_containers(d) for p in c.get("ports") or []}
        for p in dig(svc, "spec", "ports") or []:
            if p["targetPort"] not in ports and not isinstance(p["targetPort"], str):
                fail(f"{f}: Service {name} port {p['name']} -> {p['targetPort']} not declared by {d['metadata']['name']}")
print(f"OK {k8s_dir}: {len(services)} Services select Deployments that declare their target ports")

# Deployments that run outrider: grace period, sidecar shape, token.
DRAIN_TIMEOUT, APP_STOP_TIMEOUT = 20, 10  # outrider's defaults, seconds
for f, d in deployments:
    name = d["metadata"]["name"]
    spec = dig(d, "spec", "template", "spec")
    outriders = [c for c in pod_containers(d) if is_outrider(c)]
    if not outriders:
        continue
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < DRAIN_TIMEOUT + APP_STOP_TIMEOUT:
        fail(f"{f}: {name}: terminationGracePeriodSeconds {grace} < drain {DRAIN_TIMEOUT}s + app stop {APP_STOP_TIMEOUT}s")
    for c in spec.get("initContainers") or []:
        if is_outrider(c):
            if c.get("restartPolicy") != "Always":
                fail(f"{f}: {name}: outrider init container without restartPolicy: Always is not a sidecar")
            if dig(c, "startupProbe", "httpGet", "path") == "/startupz":
                fail(f"{f}: {name}: a native sidecar's startupProbe gates the app's start; /startupz waits for the app")
    hooks = 0
    tokens = {}
    for c in outriders:
        for e in c.get("env") or []:
            ref = dig(e, "valueFrom", "secretKeyRef")
            if e["name"] == "OUTRIDER_ADMIN_TOKEN" and ref:
                sec = secrets.get(ref["name"])
                if sec is None:
                    fail(f"{f}: {name}: Secret {ref['name']} is not in the base")
                value = (sec.get("stringData") or {}).get(ref["key"])
                if value is None and ref["key"] in (sec.get("data") or {}):
                    value = base64.b64decode(sec["data"][ref["key"]]).decode()
                if value is None:
                    fail(f"{f}: {name}: Secret {ref['name']} has no key {ref['key']}")
                tokens[c["name"]] = value
    for c in pod_containers(d):
        hook = dig(c, "lifecycle", "preStop", "httpGet")
        if not hook:
            continue
        hooks += 1
        if hook.get("path") != "/drain" or hook.get("port") != 9901:
            fail(f"{f}: {name}: preStop of {c['name']} should GET /drain on port 9901")
        headers = {h["name"].lower(): h["value"] for h in hook.get("httpHeaders") or []}
        if not tokens:
            fail(f"{f}: {name}: preStop /drain from the kubelet is not loopback: outrider needs OUTRIDER_ADMIN_TOKEN")
        for value in tokens.values():
            if headers.get("authorization") != f"Bearer {value}":
                fail(f"{f}: {name}: preStop Authorization header does not match the outrider-admin-token Secret")
    drain = f"preStop /drain token matches Secret" if hooks else "no preStop hook (drain on SIGTERM)"
    print(f"OK {f}: {name}: grace {grace}s >= {DRAIN_TIMEOUT + APP_STOP_TIMEOUT}s, {drain}")

# ServiceMonitor (CRD, no bundled schema).
smpath = os.path.join(k8s_dir, "servicemonitor.yaml")
for sm in load_all(smpath):
    if sm.get("apiVersion") != "monitoring.coreos.com/v1" or sm.get("kind") != "ServiceMonitor":
        fail(f"{smpath}: expected monitoring.coreos.com/v1 ServiceMonitor")
    if not dig(sm, "metadata", "name"):
        fail(f"{smpath}: no metadata.name")
    allowed_spec = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
                    "sampleLimit", "targetLimit", "attachMetadata", "scrapeProtocols", "labelLimit",
                    "labelNameLengthLimit", "labelValueLengthLimit", "keepDroppedTargets", "scrapeClass",
                    "bodySizeLimit", "fallbackScrapeProtocol", "selectorMechanism",
                    "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
                    "scrapeClassicHistograms", "convertClassicHistogramsToNHCB"}
    unknown = set(sm.get("spec") or {}) - allowed_spec
    if unknown:
        fail(f"{smpath}: unknown spec fields {sorted(unknown)}")
    labels = dig(sm, "spec", "selector", "matchLabels") or {}
    if not labels:
        fail(f"{smpath}: spec.selector.matchLabels is empty")
    endpoints = dig(sm, "spec", "endpoints") or []
    if not endpoints:
        fail(f"{smpath}: no spec.endpoints")
    selected = [s for _, s in services if all((s["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())]
    if not selected:
        fail(f"{smpath}: selector {labels} matches no Service")
    for ep in endpoints:
        if not ep.get("port") or not str(ep.get("path", "")).startswith("/"):
            fail(f"{smpath}: each endpoint needs a port name and a path")
        for s in selected:
            if ep["port"] not in {p.get("name") for p in s["spec"]["ports"]}:
                fail(f"{smpath}: Service {s['metadata']['name']} has no port named {ep['port']}")
    print(f"OK {smpath}: ServiceMonitor selects {len(selected)} Services on port(s) "
          f"{', '.join(e['port'] + e['path'] for e in endpoints)}")

# docker compose file.
doc = load_all(compose_file)
if len(doc) != 1 or not isinstance(doc[0], dict):
    fail(f"{compose_file}: expected one YAML mapping")
compose = doc[0]
svcs = compose.get("services")
if not isinstance(svcs, dict) or not svcs:
    fail(f"{compose_file}: no top-level services")
port_re = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}:)?\d{1,5}(-\d{1,5})?(:\d{1,5}(-\d{1,5})?)?(/(tcp|udp))?$")
for name, s in svcs.items():
    if not isinstance(s, dict):
        fail(f"{compose_file}: service {name} is not a mapping")
    if "image" not in s and "build" not in s:
        fail(f"{compose_file}: service {name} has neither image nor build")
    deps = s.get("depends_on") or []
    for dep in deps if isinstance(deps, list) else deps.keys():
        if dep not in svcs:
            fail(f"{compose_file}: service {name} depends_on unknown service {dep}")
    mode = s.get("network_mode", "")
    if mode.startswith("service:"):
        target = mode.split(":", 1)[1]
        if target not in svcs:
            fail(f"{compose_file}: service {name} network_mode targets unknown service {target}")
        if "ports" in s:
            fail(f"{compose_file}: service {name} shares {target}'s network: publish its ports on {target}")
    for p in s.get("ports") or []:
        if not isinstance(p, str) or not port_re.match(p):
            fail(f"{compose_file}: service {name} port {p!r} must be a quoted string like \"8080:8080\"")
print(f"OK {compose_file}: {len(svcs)} services ({', '.join(svcs)}), references and ports valid")
EOF

echo "OK deploy/ validated"
