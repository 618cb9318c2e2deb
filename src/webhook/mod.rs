//! `outrider webhook`: a mutating admission webhook that adds outrider to
//! the pods the API server sends it, with what `outrider inject` does to a
//! pod ([`crate::inject::pod`]), answered as a JSON Patch.
//!
//! * `args`: the flags and their `OUTRIDER_WEBHOOK_*` variables.
//! * `review`: one AdmissionReview in, one out; pure.
//! * `routes`: the HTTP routes around it (`/inject`, probes, metrics).
//! * `metrics`: the two Prometheus families.
//! * `serve`: TLS, the listener, the shutdown.
//!
//! Which pods are sent is the MutatingWebhookConfiguration's business
//! (deploy/kubernetes/webhook/); the server reads nothing from the API and
//! needs no RBAC.

mod args;
mod metrics;
pub mod review;
mod routes;
mod serve;

pub use args::Settings;
pub use routes::BODY_LIMIT;

use std::process::ExitCode;

use tracing::error;

use crate::{
    cli::{self, EX_CONFIG},
    telemetry,
};

/// `outrider webhook [flags]`; `args` starts with `webhook`.
pub fn command(args: impl Iterator<Item = String>) -> ExitCode {
    let settings = match args::parse(args) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let _log_guard = match telemetry::init_logging(&settings.log, telemetry::Format::Auto) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("outrider webhook: cannot set up logging: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let runtime = match cli::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve::run(settings));
    // Connection tasks cut at the end may still hold sockets.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ serve::StartError::Tls(_)) => {
            eprintln!("outrider webhook: {e}");
            ExitCode::from(EX_CONFIG)
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
