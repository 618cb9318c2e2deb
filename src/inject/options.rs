//! What one injection run is told, the names it reserves, and how it fails.

/// The image injected when neither `--image` nor the `outrider.dev/image`
/// annotation says otherwise: this build's release.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/outrider-proxy/outrider:", env!("CARGO_PKG_VERSION"));

/// The sidecar container. Reserved: a pod that already has a container of
/// this name is an injected one.
pub const SIDECAR: &str = "outrider";
/// The init container that copies outrider's binary for the app's preStop
/// hook.
pub const INIT: &str = "outrider-init";
/// The volume that carries that binary into the app container.
pub const VOLUME: &str = "outrider-bin";
/// Where the volume is mounted, in `outrider-init` and the app container.
/// Not `/outrider`: that is the binary's own path in outrider's image.
pub const MOUNT: &str = "/outrider-hook";
/// The admin port's name in the sidecar.
pub const ADMIN_PORT_NAME: &str = "outrider-admin";
/// The public port's name when the app's port had none to take over.
pub const LISTEN_PORT_NAME: &str = "outrider";

/// Defaults of the ports outrider listens on in an injected pod. Not the
/// proxy's own defaults (8080), which an app is likely to use itself.
pub const DEFAULT_LISTEN_PORT: u16 = 15080;
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// Annotation keys, on the pod template (or the pod) and, for
/// `outrider inject`, the workload itself.
pub mod annotation {
    pub const INJECT: &str = "outrider.dev/inject";
    pub const IMAGE: &str = "outrider.dev/image";
    pub const CONTAINER: &str = "outrider.dev/container";
    pub const UPSTREAM_PORT: &str = "outrider.dev/upstream-port";
    pub const LISTEN_PORT: &str = "outrider.dev/listen-port";
    pub const ADMIN_PORT: &str = "outrider.dev/admin-port";
    pub const DRAIN_DELAY: &str = "outrider.dev/drain-delay";
    pub const DRAIN_TIMEOUT: &str = "outrider.dev/drain-timeout";
    pub const APP_STOP_TIMEOUT: &str = "outrider.dev/app-stop-timeout";
    pub const OTLP_ENDPOINT: &str = "outrider.dev/otlp-endpoint";
    /// Written by inject: the version that injected the pod.
    pub const INJECTED: &str = "outrider.dev/injected";
    /// Written by inject: every field it changed, as it was (JSON).
    pub const ORIGINAL: &str = "outrider.dev/original";
    /// Written by inject on a Service: the target ports it moved (JSON).
    pub const ORIGINAL_TARGET_PORTS: &str = "outrider.dev/original-target-ports";
    /// kubectl's choice of container for `logs` and `exec`.
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
}

/// How outrider joins the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sidecar {
    /// An init container with `restartPolicy: Always` (Kubernetes >= 1.29):
    /// started before the app and stopped after it.
    #[default]
    Native,
    /// A regular container next to the app, for clusters before 1.29.
    Classic,
}

/// What every injection in one run shares.
#[derive(Debug, Clone)]
pub struct Options {
    /// The image, unless a workload's `outrider.dev/image` says otherwise.
    pub image: String,
    pub sidecar: Sidecar,
}

impl Default for Options {
    fn default() -> Self {
        Self { image: DEFAULT_IMAGE.to_owned(), sidecar: Sidecar::Native }
    }
}

/// Inject, or take out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inject,
    Uninject,
}

/// Why a manifest could not be injected. Each names what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// An `outrider.dev/*` annotation has a value that cannot be used.
    #[error("annotation {key}: {reason}")]
    Annotation { key: &'static str, reason: String },
    /// The pod spec cannot take outrider as it is.
    #[error("{0}")]
    Pod(String),
    /// A field has a shape the Kubernetes API would refuse.
    #[error("{field}: {reason}")]
    Malformed { field: String, reason: String },
    /// The input is not YAML (or not a manifest).
    #[error("document {document}: {reason}")]
    Document { document: usize, reason: String },
}
