//! Logging set-up: structured JSON in containers, human-readable on a TTY.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Output format, decided before the subscriber is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Pretty,
    /// Pretty when stderr is a terminal, JSON otherwise (a container).
    Auto,
}

/// Installs the global subscriber. Logs go to stderr so that stdout stays
/// the wrapped app's own, and `--print-config` output stays clean.
///
/// Lines are written by a background thread: a request never waits on a
/// `write(2)` to a slow log pipe. If the pipe stalls long enough to fill the
/// buffer, lines are dropped rather than requests delayed. Keep the
/// returned guard alive until exit; dropping it flushes what is queued.
///
/// # Errors
/// Fails if `filter` is not valid EnvFilter syntax (config validates it
/// first) or a subscriber is already installed.
pub fn init_logging(filter: &str, format: Format) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let filter = EnvFilter::builder().parse(filter)?;
    let json = match format {
        Format::Json => true,
        Format::Pretty => false,
        Format::Auto => !std::io::stderr().is_terminal(),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        // The queue is preallocated: 128k lines (the default) cost ~4 MiB
        // of resident memory at idle. 8k lines absorb any burst a healthy
        // log pipe lets through.
        .buffered_lines_limit(8192)
        .thread_name("outrider-log")
        .finish(std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(false).with_span_list(false).with_writer(writer))
            .try_init()?;
    } else {
        let ansi = std::io::stderr().is_terminal();
        registry.with(fmt::layer().with_ansi(ansi).with_writer(writer)).try_init()?;
    }
    Ok(guard)
}

mod batch;
mod env;
mod exemplar;
pub mod grpc;
pub mod metrics;
pub mod observe;
pub mod openmetrics;
pub mod otel;
// Public (and hidden) only for the fuzz target fuzz/fuzz_targets/otlp.rs,
// which checks the encoder against opentelemetry-proto.
#[doc(hidden)]
pub mod otlp;
pub mod propagation;
pub mod routes;
