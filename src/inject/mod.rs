//! `outrider inject` (and the webhook's core): adds outrider to the pod
//! templates of Kubernetes manifests, and takes it out again.
//!
//! * `options`: what a run is told, the names it reserves, its errors.
//! * `settings`: the `outrider.dev/*` annotations, checked up front.
//! * `sidecar`: the containers, hook and volume added, typed (k8s-openapi).
//! * `original`: the record of what was changed, for an exact uninject.
//! * `pod`: one pod template in, or out.
//! * `stream`: a multi-document YAML stream, and its Services.
//! * `command`: the `outrider inject` command line.
//!
//! The design (ports, probes, the drain hook, why no iptables) is in
//! docs/kubernetes.md.

mod command;
mod options;
mod original;
mod pod;
mod settings;
mod sidecar;
mod stream;

use serde_json::Value;

pub use self::{
    command::command,
    options::{DEFAULT_IMAGE, InjectError, Mode, Options, Sidecar, annotation},
    sidecar::ADMIN_TOKEN_SECRET,
    stream::Output,
};

/// What happened to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// outrider is in; the notes say what moved where.
    Injected { notes: Vec<String> },
    /// outrider was taken out.
    Uninjected,
    /// Left as it was, for this reason.
    Skipped { reason: String },
}

/// Injects outrider into a Pod object (`apiVersion`, `kind`, `metadata`,
/// `spec`) in place, as the webhook does for each new pod. Injecting an
/// injected pod changes nothing.
///
/// # Errors
/// An annotation, the pod spec or the app's ports do not allow it; the pod
/// is left unchanged.
pub fn pod(pod: &mut Value, opts: &Options) -> Result<Outcome, InjectError> {
    let name = workload_name(pod);
    let workload = self::pod::Workload { kind: "Pod", name: name.as_deref(), annotations: None };
    Ok(match self::pod::inject(pod, &workload, opts)? {
        self::pod::Injected::Done { mut notes, takeover } => {
            // The webhook sees no Service: say what becomes of them.
            notes.push(format!("Services: {}", self::stream::elsewhere(&takeover, opts.sidecar)));
            Outcome::Injected { notes }
        }
        self::pod::Injected::Skipped { reason } => Outcome::Skipped { reason },
    })
}

/// The name of the workload a pod was made from, as `outrider inject` on
/// that workload would see it: a ReplicaSet's pod `web-7d9f8c-x2x4q`
/// (generateName `web-7d9f8c-`, label `pod-template-hash: 7d9f8c`) is
/// `web`; a StatefulSet's `db-0` is `db`; otherwise the pod's name, or its
/// generateName without the trailing `-`.
fn workload_name(pod: &Value) -> Option<String> {
    let label = |k: &str| pod.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str);
    let generated = pod.pointer("/metadata/generateName").and_then(Value::as_str).map(|n| n.trim_end_matches('-'));
    let named = pod.pointer("/metadata/name").and_then(Value::as_str).filter(|n| !n.is_empty());
    let name = generated.filter(|n| !n.is_empty()).or(named)?;
    let suffix = label("pod-template-hash").or_else(|| label("apps.kubernetes.io/pod-index"));
    let base = suffix.and_then(|s| name.strip_suffix(s)).and_then(|n| n.strip_suffix('-')).filter(|n| !n.is_empty());
    Some(base.unwrap_or(name).to_owned())
}

/// Takes outrider out of a Pod object, restoring what inject changed.
///
/// # Errors
/// The `outrider.dev/original` annotation is damaged.
pub fn uninject_pod(pod: &mut Value) -> Result<Outcome, InjectError> {
    Ok(if self::pod::uninject(pod)? { Outcome::Uninjected } else { Outcome::Skipped { reason: "outrider is not in this pod".to_owned() } })
}

/// Injects into (or takes out of) every pod template of a multi-document
/// YAML stream, and moves the Services that reach them.
///
/// # Errors
/// A document is not YAML, or a workload cannot be injected.
pub fn stream(input: &str, opts: &Options, mode: Mode) -> Result<Output, InjectError> {
    self::stream::run(input, opts, mode)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::workload_name;

    #[test]
    fn a_pod_is_named_for_its_workload() {
        let name = |meta: serde_json::Value| workload_name(&json!({"metadata": meta}));
        assert_eq!(name(json!({"generateName": "web-7d9f8c-", "labels": {"pod-template-hash": "7d9f8c"}})).as_deref(), Some("web"));
        assert_eq!(name(json!({"name": "db-0", "labels": {"apps.kubernetes.io/pod-index": "0"}})).as_deref(), Some("db"));
        assert_eq!(name(json!({"generateName": "agent-"})).as_deref(), Some("agent"));
        assert_eq!(name(json!({"name": "solo"})).as_deref(), Some("solo"));
        assert_eq!(name(json!({})), None);
    }
}
