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
#     selectors, no secret written in any manifest, the preStop drain hook
#     and the volume it runs from, grace period; the webhook's Service,
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

# No secret is written in any manifest (the base, the webhook's, the
# optional ServiceMonitor): no Secret with data, no Authorization header in a
# kubelet hook or probe (a header cannot be read from a Secret, so it would be
# a literal), and OUTRIDER_ADMIN_TOKEN only ever from a secretKeyRef.
all_objects = []
for d in (k8s_dir, webhook_dir):
    for f in sorted(os.listdir(d)):
        if f.endswith((".yaml", ".yml")):
            all_objects += [(os.path.join(d, f), doc) for doc in load_all(os.path.join(d, f))]


def walk(node, path=""):
    """Every mapping of a document, with where it is."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


token_refs = 0
for f, doc in all_objects:
    what = f"{doc.get('kind')} {dig(doc, 'metadata', 'name')}"
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        fail(f"{f}: {what}: a Secret with its value written in the manifest; create it with kubectl instead")
    for where, node in walk(doc):
        for h in node.get("httpHeaders") or []:
            if str(h.get("name", "")).lower() == "authorization":
                fail(f"{f}: {what}{where}: an Authorization header is a literal secret in the manifest")
        if node.get("name") == "OUTRIDER_ADMIN_TOKEN" and ("value" in node or "valueFrom" in node):
            if "value" in node or not dig(node, "valueFrom", "secretKeyRef"):
                fail(f"{f}: {what}{where}: OUTRIDER_ADMIN_TOKEN must come from a secretKeyRef, never a value")
            token_refs += 1
print(f"OK {len(all_objects)} objects in {k8s_dir}: no Secret data, no Authorization header, "
      f"OUTRIDER_ADMIN_TOKEN only from a secretKeyRef ({token_refs} found)")

# Deployments that run outrider: grace period, sidecar shape, and the app's
# preStop hook: `outrider drain` over loopback (no token), run from the copy
# outrider-init puts in an emptyDir the app container mounts.
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
    inits = spec.get("initContainers") or []
    for c in inits:
        if is_outrider(c) and c["name"] != "outrider-init":
            if c.get("restartPolicy") != "Always":
                fail(f"{f}: {name}: outrider init container without restartPolicy: Always is not a sidecar")
            if dig(c, "startupProbe", "httpGet", "path") == "/startupz":
                fail(f"{f}: {name}: a native sidecar's startupProbe gates the app's start; /startupz waits for the app")
    apps = [c for c in spec.get("containers") or [] if not is_outrider(c)]
    if not apps:
        # Wrap mode: outrider is the container's entrypoint and drains on
        # SIGTERM itself; no hook.
        print(f"OK {f}: {name}: grace {grace}s >= {DRAIN_TIMEOUT + APP_STOP_TIMEOUT}s, no preStop hook (drain on SIGTERM)")
        continue
    sidecars = [c for c in outriders if c["name"] != "outrider-init"]
    if len(sidecars) != 1:
        fail(f"{f}: {name}: expected one outrider sidecar, found {len(sidecars)}")
    env = {e["name"]: e.get("value") for e in sidecars[0].get("env") or []}
    admin_port = (env.get("OUTRIDER_ADMIN_LISTEN") or "0.0.0.0:9901").rsplit(":", 1)[1]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    installers = [c for c in inits if c["name"] == "outrider-init"]
    if len(installers) != 1 or not is_outrider(installers[0]) or installers[0].get("restartPolicy"):
        fail(f"{f}: {name}: expected one run-once init container outrider-init with outrider's image")
    installer = installers[0]
    if installer.get("image") != sidecars[0].get("image"):
        fail(f"{f}: {name}: outrider-init and the sidecar should run the same image (the hook talks to that sidecar)")
    if native := [c for c in inits if c.get("restartPolicy") == "Always"]:
        if inits.index(installer) > inits.index(native[0]):
            fail(f"{f}: {name}: outrider-init should come before the native sidecar")
    args = installer.get("args") or []
    if len(args) != 2 or args[0] != "install-hook":
        fail(f"{f}: {name}: outrider-init should run `install-hook DIR`, runs {args}")
    installed = {m["mountPath"].rstrip("/"): m["name"] for m in installer.get("volumeMounts") or []}
    hook_volume = installed.get(args[1].rstrip("/"))
    if hook_volume is None or "emptyDir" not in volumes.get(hook_volume, {}):
        fail(f"{f}: {name}: outrider-init installs into {args[1]}, which is not an emptyDir volume it mounts")
    for c in apps:
        command = dig(c, "lifecycle", "preStop", "exec", "command") or []
        if dig(c, "lifecycle", "preStop", "httpGet"):
            fail(f"{f}: {name}: {c['name']}: a kubelet httpGet preStop comes from the node and needs the token; "
                 "use the exec hook `outrider drain`")
        if len(command) != 4 or command[1:] != ["drain", "--admin", f"127.0.0.1:{admin_port}"] \
                or not command[0].endswith("/outrider"):
            fail(f"{f}: {name}: {c['name']}: preStop should be exec [DIR/outrider, drain, --admin, "
                 f"127.0.0.1:{admin_port}], is {command}")
        hook_dir = command[0].rsplit("/", 1)[0]
        mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts") or []}
        mount = mounts.get(hook_dir)
        if mount is None or mount["name"] != hook_volume:
            fail(f"{f}: {name}: {c['name']}: the hook runs from {hook_dir}, where the volume {hook_volume} "
                 "outrider-init fills is not mounted")
        if mount.get("readOnly") is not True:
            fail(f"{f}: {name}: {c['name']}: mount {hook_volume} read-only: the app has no business changing the hook")
    print(f"OK {f}: {name}: grace {grace}s >= {DRAIN_TIMEOUT + APP_STOP_TIMEOUT}s, preStop `outrider drain` over "
          f"loopback from volume {hook_volume}, filled by outrider-init")

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
    env = s.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    token = env.get("OUTRIDER_ADMIN_TOKEN")
    if token is not None and not re.fullmatch(r"\$\{?\w+(:?[-?][^}]*)?\}?", str(token)):
        fail(f"{compose_file}: service {name}: OUTRIDER_ADMIN_TOKEN is a literal; pass it from the environment (${{VAR}})")
print(f"OK {compose_file}: {len(svcs)} services ({', '.join(svcs)}), references and ports valid")
EOF

echo "OK deploy/ validated"
