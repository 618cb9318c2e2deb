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
/// # Errors
/// Fails if `filter` is not valid EnvFilter syntax (config validates it
/// first) or a subscriber is already installed.
pub fn init_logging(filter: &str, format: Format) -> anyhow::Result<()> {
    let filter = EnvFilter::builder().parse(filter)?;
    let json = match format {
        Format::Json => true,
        Format::Pretty => false,
        Format::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(false).with_span_list(false).with_writer(std::io::stderr))
            .try_init()?;
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()?;
    }
    Ok(())
}

pub mod metrics;
pub mod observe;
pub mod otel;
pub mod routes;
