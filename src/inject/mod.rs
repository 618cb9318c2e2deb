//! `outrider inject`: adds outrider to the pod templates of Kubernetes
//! manifests, and takes it out again. (Skeleton: the API the CLI and the
//! webhook are written against.)

use serde_json::Value;

/// The image injected when neither `--image` nor the `outrider.dev/image`
/// annotation says otherwise: this build's release.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/outrider-proxy/outrider:", env!("CARGO_PKG_VERSION"));

/// How outrider joins the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sidecar {
    /// An init container with `restartPolicy: Always` (Kubernetes >= 1.29).
    #[default]
    Native,
    /// A regular container, for clusters before 1.29.
    Classic,
}

/// What every injection in one run shares.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub sidecar: Sidecar,
}

impl Default for Options {
    fn default() -> Self {
        Self { image: DEFAULT_IMAGE.to_owned(), sidecar: Sidecar::Native }
    }
}

/// Inject or take out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inject,
    Uninject,
}

/// What happened to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected { notes: Vec<String> },
    Uninjected,
    Skipped { reason: String },
}

/// A whole stream's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// Why a manifest could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{0}")]
    Invalid(String),
}

/// Injects outrider into a Pod object (`apiVersion`, `kind`, `metadata`,
/// `spec`) in place.
///
/// # Errors
/// The pod cannot be injected (see [`InjectError`]).
pub fn pod(_pod: &mut Value, _opts: &Options) -> Result<Outcome, InjectError> {
    Err(InjectError::Invalid("not yet".into()))
}

/// Takes outrider out of a Pod object, restoring what inject changed.
///
/// # Errors
/// The pod's outrider annotations are damaged.
pub fn uninject_pod(_pod: &mut Value) -> Result<Outcome, InjectError> {
    Err(InjectError::Invalid("not yet".into()))
}

/// Injects into (or takes out of) every pod template of a multi-document
/// YAML stream.
///
/// # Errors
/// A document is not YAML, or a workload cannot be injected.
pub fn stream(_input: &str, _opts: &Options, _mode: Mode) -> Result<Output, InjectError> {
    Err(InjectError::Invalid("not yet".into()))
}
