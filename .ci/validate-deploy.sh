#!/usr/bin/env bash
# Validates the deployment artefacts under deploy/ without a cluster or a
# Docker engine:
#   * yamllint on every YAML file (.yamllint.yaml);
#   * kubernetes-validate --strict on every Kubernetes manifest, against the
#     oldest Kubernetes the manifests support (1.29: native sidecars) and the
#     newest version whose schemas kubernetes-validate bundles;
#   * structural checks in Python for what has no bundled schema (the
#     ServiceMonitor and cert-manager CRDs, the kustomizations, the compose
#     file) and for the cross-file invariants a schema cannot see (Service
#     selectors, admin token, grace period; the webhook's Service,
#     certificate and MutatingWebhookConfiguration agreeing).
#   * deploy/kubernetes/webhook/ (`outrider webhook`) likewise.
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
WEBHOOK_DIR=$K8S_DIR/webhook
COMPOSE_FILE=deploy/compose/docker-compose.yml
# Not plain Kubernetes API objects: checked structurally below.
K8S_SKIP=(kustomization.yaml servicemonitor.yaml certificate.yaml)

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
for f in "$K8S_DIR"/*.yaml "$WEBHOOK_DIR"/*.yaml; do
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
"$PYTHON" - "$K8S_DIR" "$COMPOSE_FILE" "$WEBHOOK_DIR" <<'EOF'
import base64
import os
import re
import sys

import yaml

k8s_dir, compose_file, webhook_dir = sys.argv[1], sys.argv[2], sys.argv[3]


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

# The webhook (deploy/kubernetes/webhook/): its kustomization, the
# cert-manager objects (CRDs, no bundled schema), and that the Service, the
# Deployment, the Certificate and the MutatingWebhookConfiguration agree.
wkpath = os.path.join(webhook_dir, "kustomization.yaml")
wkust = load_all(wkpath)[0]
if wkust.get("kind") != "Kustomization" or wkust.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
    fail(f"{wkpath}: expected a kustomize.config.k8s.io/v1beta1 Kustomization")
wresources = wkust.get("resources") or []
for r in wresources:
    if not os.path.isfile(os.path.join(webhook_dir, r)):
        fail(f"{wkpath}: resource {r} does not exist")
unlisted = sorted(f for f in os.listdir(webhook_dir)
                  if f.endswith((".yaml", ".yml")) and f not in wresources and f != "kustomization.yaml")
if unlisted:
    fail(f"{wkpath}: not listed: {', '.join(unlisted)}")
wobjects = [(r, d) for r in wresources for d in load_all(os.path.join(webhook_dir, r))]


def one(kind, api_version=None):
    found = [(f, d) for f, d in wobjects if d.get("kind") == kind and (api_version is None or d.get("apiVersion") == api_version)]
    if len(found) != 1:
        fail(f"{webhook_dir}: expected one {api_version or ''} {kind}, found {len(found)}")
    return found[0]


_, ns = one("Namespace")
namespace = ns["metadata"]["name"]
for f, d in wobjects:
    if d.get("kind") not in ("Namespace", "MutatingWebhookConfiguration") and dig(d, "metadata", "namespace") != namespace:
        fail(f"{f}: {d.get('kind')} {dig(d, 'metadata', 'name')} is not in namespace {namespace}")

# cert-manager: a self-signed Issuer and a Certificate for the Service's DNS name.
cf, issuer = one("Issuer", "cert-manager.io/v1")
if set(issuer.get("spec") or {}) != {"selfSigned"}:
    fail(f"{cf}: the Issuer should be selfSigned only")
cf, cert = one("Certificate", "cert-manager.io/v1")
cspec = cert.get("spec") or {}
allowed_cert = {"secretName", "dnsNames", "duration", "renewBefore", "privateKey", "issuerRef", "commonName",
                "usages", "secretTemplate", "subject", "isCA", "ipAddresses", "uris", "emailAddresses",
                "revisionHistoryLimit", "keystores", "literalSubject", "additionalOutputFormats",
                "nameConstraints", "otherNames", "encodeUsagesInRequest", "renewBeforePercentage", "signatureAlgorithm"}
unknown = set(cspec) - allowed_cert
if unknown:
    fail(f"{cf}: unknown Certificate spec fields {sorted(unknown)}")
for field in ("secretName", "dnsNames", "issuerRef"):
    if not cspec.get(field):
        fail(f"{cf}: Certificate without spec.{field}")
ref = cspec["issuerRef"]
if ref.get("name") != issuer["metadata"]["name"] or ref.get("kind", "Issuer") != "Issuer" \
        or ref.get("group", "cert-manager.io") != "cert-manager.io":
    fail(f"{cf}: issuerRef does not name the Issuer {issuer['metadata']['name']}")
dur = re.compile(r"^(\d+(\.\d+)?(h|m|s|ms))+$")
for field in ("duration", "renewBefore"):
    if field in cspec and not dur.match(str(cspec[field])):
        fail(f"{cf}: spec.{field} {cspec[field]!r} is not a Go duration")

# The Deployment runs `outrider webhook` with the Certificate's Secret.
df, dep = one("Deployment", "apps/v1")
pod = dig(dep, "spec", "template", "spec")
containers = pod.get("containers") or []
hooks = [c for c in containers if (c.get("args") or [None])[0] == "webhook"]
if len(hooks) != 1:
    fail(f"{df}: expected one container running `outrider webhook`")
hook = hooks[0]
secret_volumes = {v["name"]: dig(v, "secret", "secretName") for v in pod.get("volumes") or [] if "secret" in v}
mounts = {m["name"]: m["mountPath"] for m in hook.get("volumeMounts") or []}
env = {e["name"]: e.get("value") for e in hook.get("env") or []}
tls_volume = [n for n, s in secret_volumes.items() if s == cspec["secretName"]]
if not tls_volume or tls_volume[0] not in mounts:
    fail(f"{df}: the Secret {cspec['secretName']} of the Certificate is not mounted in the webhook container")
tls_dir = mounts[tls_volume[0]].rstrip("/")
for var, name in (("OUTRIDER_WEBHOOK_TLS_CERT", "tls.crt"), ("OUTRIDER_WEBHOOK_TLS_KEY", "tls.key")):
    if env.get(var) != f"{tls_dir}/{name}":
        fail(f"{df}: {var} should be {tls_dir}/{name}")
if pod.get("automountServiceAccountToken") is not False:
    fail(f"{df}: the webhook reads nothing from the API: automountServiceAccountToken must be false")
if (dep["spec"].get("replicas") or 1) < 2:
    fail(f"{df}: one replica leaves the API server without the webhook during a rollout")
ports = {p["name"]: p["containerPort"] for p in hook.get("ports") or []}
listen = env.get("OUTRIDER_WEBHOOK_LISTEN", "0.0.0.0:8443")
if int(listen.rsplit(":", 1)[1]) not in ports.values():
    fail(f"{df}: OUTRIDER_WEBHOOK_LISTEN {listen} is not a declared container port")
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    get = dig(hook, probe, "httpGet") or {}
    if get.get("path") != path or get.get("scheme") != "HTTPS":
        fail(f"{df}: {probe} should GET {path} over HTTPS")
pf, pdb = one("PodDisruptionBudget", "policy/v1")
labels = dig(dep, "spec", "template", "metadata", "labels") or {}
if not all(labels.get(k) == v for k, v in (dig(pdb, "spec", "selector", "matchLabels") or {}).items()):
    fail(f"{pf}: the PodDisruptionBudget does not select the webhook's pods")

# The Service reaches that port; the Certificate names the Service.
sf, svc = one("Service")
if not all(labels.get(k) == v for k, v in (dig(svc, "spec", "selector") or {}).items()):
    fail(f"{sf}: the Service does not select the webhook's pods")
svc_name = svc["metadata"]["name"]
if f"{svc_name}.{namespace}.svc" not in cspec["dnsNames"]:
    fail(f"{cf}: dnsNames must include {svc_name}.{namespace}.svc, the name the API server dials")

# Every webhook: through that Service, Ignore, no side effects, v1, pods only,
# kube-system and the webhook's namespace excluded.
mf, mwc = one("MutatingWebhookConfiguration", "admissionregistration.k8s.io/v1")
inject_from = dig(mwc, "metadata", "annotations", "cert-manager.io/inject-ca-from")
if inject_from != f"{namespace}/{cert['metadata']['name']}":
    fail(f"{mf}: cert-manager.io/inject-ca-from should be {namespace}/{cert['metadata']['name']}")
webhooks = mwc.get("webhooks") or []
if len(webhooks) != 2:
    fail(f"{mf}: expected two webhooks (namespace and pod selection)")
svc_ports = {p["port"]: p.get("targetPort", p["port"]) for p in dig(svc, "spec", "ports") or []}
for wh in webhooks:
    name = wh["name"]
    ref = dig(wh, "clientConfig", "service") or {}
    if (ref.get("name"), ref.get("namespace"), ref.get("path")) != (svc_name, namespace, "/inject"):
        fail(f"{mf}: {name}: clientConfig.service should be {namespace}/{svc_name} path /inject")
    target = svc_ports.get(ref.get("port", 443))
    if target is None or (target not in ports and target not in ports.values()):
        fail(f"{mf}: {name}: Service port {ref.get('port', 443)} does not reach the webhook container")
    expected = {"failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 5}
    for k, v in expected.items():
        if wh.get(k) != v:
            fail(f"{mf}: {name}: {k} should be {v!r}, is {wh.get(k)!r}")
    for rule in wh.get("rules") or []:
        if rule.get("operations") != ["CREATE"] or rule.get("resources") != ["pods"] or rule.get("apiGroups") != [""]:
            fail(f"{mf}: {name}: rules should match the CREATE of pods only")
    excluded = [e for e in dig(wh, "namespaceSelector", "matchExpressions") or []
                if e.get("key") == "kubernetes.io/metadata.name" and e.get("operator") == "NotIn"]
    if not excluded or not {"kube-system", namespace} <= set(excluded[0].get("values") or []):
        fail(f"{mf}: {name}: kube-system and {namespace} must be excluded by kubernetes.io/metadata.name")
if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
    fail(f"{df}: the webhook must run as non-root")
print(f"OK {webhook_dir}: {len(wresources)} resources; Certificate {cert['metadata']['name']} for "
      f"{svc_name}.{namespace}.svc mounted in the Deployment, {len(webhooks)} webhooks through the Service, "
      f"failurePolicy Ignore, {namespace} and kube-system excluded")

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
