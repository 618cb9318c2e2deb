"""Rewrites a manifest of deploy/kubernetes so that podman 4.3's
`kube play` can start it on a test machine; prints the result.

    python3 kube_play.py MANIFEST NAME SECRET IMAGE=LOCAL [IMAGE=LOCAL ...]

Only what podman cannot do, or what a test must not do, is changed:
  * images become locally built ones (nothing can be pulled);
  * the Deployment is renamed NAME and runs one replica (the pod is named
    NAME-pod-0; two would collide on nothing here, but one is enough);
  * `ports` go: podman publishes every containerPort on the host, where
    they could collide; named probe ports become their numbers;
  * env from `fieldRef` to metadata.namespace / spec.nodeName goes: podman
    4.3 cannot resolve them and refuses the whole pod;
  * secretKeyRef names become SECRET, a podman secret the test creates (a
    Kubernetes Secret in the same play is not used by podman for env);
  * emptyDir volumes are renamed NAME-VOLUME: podman makes each a named
    volume of the whole machine, which two plays must not share;
  * the pod's restartPolicy becomes OnFailure: podman 4.3 applies it to
    init containers too, so with a Deployment's Always it restarts
    outrider-init after each successful run and the play fails removing
    it ("cannot remove container ... as it is running"). Kubernetes runs an
    init container to completion whatever the pod's policy.
Everything else, the security context, env, probes and hooks, is played
as written (podman ignores the hooks and the readiness/startup probes).
"""

import sys

import yaml

UNSUPPORTED_FIELDS = {"metadata.namespace", "spec.nodeName"}


def main(path, name, secret, *mapping):
    images = dict(m.split("=", 1) for m in mapping)
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    out = []
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        doc["metadata"]["name"] = name
        doc["spec"]["replicas"] = 1
        spec = doc["spec"]["template"]["spec"]
        spec["restartPolicy"] = "OnFailure"
        volumes = {}
        for v in spec.get("volumes") or []:
            if "emptyDir" in v:
                volumes[v["name"]] = f"{name}-{v['name']}"
                v["name"] = volumes[v["name"]]
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            if c["image"] not in images:
                sys.exit(f"no local image given for {c['image']}")
            c["image"] = images[c["image"]]
            c["imagePullPolicy"] = "Never"
            ports = {p.get("name"): p["containerPort"] for p in c.pop("ports", None) or []}
            env = []
            for e in c.get("env") or []:
                ref = e.get("valueFrom") or {}
                if ref.get("fieldRef", {}).get("fieldPath") in UNSUPPORTED_FIELDS:
                    continue
                if "secretKeyRef" in ref:
                    ref["secretKeyRef"]["name"] = secret
                env.append(e)
            c["env"] = env
            for m in c.get("volumeMounts") or []:
                m["name"] = volumes.get(m["name"], m["name"])
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = (c.get(probe) or {}).get("httpGet")
                if get and isinstance(get.get("port"), str):
                    get["port"] = ports[get["port"]]
        out.append(doc)
    if not out:
        sys.exit(f"{path}: no Deployment")
    yaml.safe_dump_all(out, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
