//! Reading `OTEL_*` variables, shared by the SDK set-up (`otel`) and the
//! exporter (`otlp`): the helpers and the error a bad value gives.

/// A bad `OTEL_*` value.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("invalid {var}={value:?}: {reason}")]
    Invalid { var: &'static str, value: String, reason: &'static str },
    /// A file named by a variable that cannot be used.
    #[error("invalid {var}={value:?}: {reason}")]
    File { var: &'static str, value: String, reason: String },
    /// A variable that must be set because another one is.
    #[error("{var} must be set too: {with} is set, and one needs the other")]
    Missing { var: &'static str, with: &'static str },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

pub(super) fn non_empty(var: &str) -> Option<String> {
    std::env::var(var).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The traces-only variable if set, else the general one (the OTLP
/// exporter specification's precedence), with the name of the one used.
pub(super) fn traces_or_general(traces: &'static str, general: &'static str) -> Option<(&'static str, String)> {
    non_empty(traces).map(|v| (traces, v)).or_else(|| non_empty(general).map(|v| (general, v)))
}

/// `var`'s value `value` as a boolean: `true` or `false`, in any case.
pub(super) fn flag(var: &'static str, value: String) -> Result<bool, OtelError> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(OtelError::Invalid { var, value, reason: "expected true or false" })
    }
}
