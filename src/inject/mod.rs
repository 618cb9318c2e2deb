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
    let name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .map(|n| n.trim_end_matches('-').to_owned());
    let workload = self::pod::Workload { kind: "Pod", name: name.as_deref(), annotations: None };
    Ok(match self::pod::inject(pod, &workload, opts)? {
        self::pod::Injected::Done { notes, .. } => Outcome::Injected { notes },
        self::pod::Injected::Skipped { reason } => Outcome::Skipped { reason },
    })
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
