//! The `outrider.dev/*` annotations of one workload, read and checked
//! before anything is changed, so a bad value fails the workload with a
//! line naming the annotation instead of injecting something half right.

use std::time::Duration;

use serde_json::{Map, Value};

use super::options::{DEFAULT_ADMIN_PORT, DEFAULT_LISTEN_PORT, InjectError, annotation as key};

/// outrider's own defaults (docs/configuration.md), which the grace period
/// is computed from when no annotation overrides them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
const APP_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The app port to front: a number, or the name of one of the app
/// container's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// Everything the annotations decide.
#[derive(Debug, Clone)]
pub struct Settings {
    pub disabled: bool,
    pub image: Option<String>,
    pub container: Option<String>,
    pub upstream_port: Option<PortRef>,
    pub listen_port: u16,
    pub admin_port: u16,
    /// Set only when annotated: the sidecar then gets the variable.
    pub drain_delay: Option<String>,
    pub drain_timeout: Option<String>,
    pub app_stop_timeout: Option<String>,
    /// What the grace period must cover: drain timeout + app stop timeout.
    pub shutdown: Duration,
    pub otlp_endpoint: Option<String>,
}

/// Reads the annotations; `layers` from least to most specific (the
/// workload's own, then its pod template's), the last one setting a key wins.
///
/// # Errors
/// A value that cannot be used, naming its annotation.
pub fn read(layers: &[Option<&Map<String, Value>>]) -> Result<Settings, InjectError> {
    let get = |k: &'static str| -> Result<Option<&str>, InjectError> {
        let mut found = None;
        for layer in layers.iter().flatten() {
            match layer.get(k) {
                None => {}
                Some(Value::String(s)) => found = Some(s.trim()),
                Some(_) => return Err(bad(k, "must be a string (quote it in YAML)")),
            }
        }
        Ok(found)
    };
    let disabled = match get(key::INJECT)? {
        None | Some("enabled") => false,
        Some("disabled") => true,
        Some(other) => return Err(bad(key::INJECT, &format!("{other:?}: expected enabled or disabled"))),
    };
    let image = match get(key::IMAGE)? {
        None => None,
        Some(s) if !s.is_empty() && !s.contains(char::is_whitespace) => Some(s.to_owned()),
        Some(s) => return Err(bad(key::IMAGE, &format!("{s:?} is not an image reference"))),
    };
    let container = get(key::CONTAINER)?.map(str::to_owned);
    let upstream_port = match get(key::UPSTREAM_PORT)? {
        None => None,
        Some(s) => Some(match s.parse::<u16>() {
            Ok(n) if n > 0 => PortRef::Number(n),
            _ if is_port_name(s) => PortRef::Name(s.to_owned()),
            _ => return Err(bad(key::UPSTREAM_PORT, &format!("{s:?}: expected a port number (1-65535) or a port name"))),
        }),
    };
    let listen_port = port(key::LISTEN_PORT, get(key::LISTEN_PORT)?, DEFAULT_LISTEN_PORT)?;
    let admin_port = port(key::ADMIN_PORT, get(key::ADMIN_PORT)?, DEFAULT_ADMIN_PORT)?;
    if listen_port == admin_port {
        return Err(bad(key::ADMIN_PORT, &format!("{admin_port} is also the listen port ({})", key::LISTEN_PORT)));
    }
    let (drain_delay, delay) = duration(key::DRAIN_DELAY, get(key::DRAIN_DELAY)?)?;
    let (drain_timeout, timeout) = duration(key::DRAIN_TIMEOUT, get(key::DRAIN_TIMEOUT)?)?;
    let (app_stop_timeout, stop) = duration(key::APP_STOP_TIMEOUT, get(key::APP_STOP_TIMEOUT)?)?;
    let timeout = timeout.unwrap_or(DRAIN_TIMEOUT);
    if let Some(delay) = delay
        && delay > timeout
    {
        return Err(bad(key::DRAIN_DELAY, &format!("longer than the drain timeout ({})", humantime::format_duration(timeout))));
    }
    let otlp_endpoint = match get(key::OTLP_ENDPOINT)? {
        None => None,
        Some(s) if (s.starts_with("http://") || s.starts_with("https://")) && !s.contains(char::is_whitespace) && s.len() > 8 => {
            Some(s.to_owned())
        }
        Some(s) => return Err(bad(key::OTLP_ENDPOINT, &format!("{s:?}: expected an http:// or https:// URL"))),
    };
    Ok(Settings {
        disabled,
        image,
        container,
        upstream_port,
        listen_port,
        admin_port,
        drain_delay,
        drain_timeout,
        app_stop_timeout,
        shutdown: timeout + stop.unwrap_or(APP_STOP_TIMEOUT),
        otlp_endpoint,
    })
}

fn bad(key: &'static str, reason: &str) -> InjectError {
    InjectError::Annotation { key, reason: reason.to_owned() }
}

fn port(key: &'static str, value: Option<&str>, default: u16) -> Result<u16, InjectError> {
    match value {
        None => Ok(default),
        Some(s) => match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(key, &format!("{s:?}: expected a port number (1-65535)"))),
        },
    }
}

/// A duration as outrider's own settings take it (`5s`, `1m30s`), kept as
/// written for the sidecar's environment.
fn duration(key: &'static str, value: Option<&str>) -> Result<(Option<String>, Option<Duration>), InjectError> {
    match value {
        None => Ok((None, None)),
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d <= Duration::from_secs(24 * 3600) => Ok((Some(s.to_owned()), Some(d))),
            Ok(_) => Err(bad(key, &format!("{s:?}: longer than 24h"))),
            Err(e) => Err(bad(key, &format!("{s:?}: {e} (e.g. 20s, 1m30s)"))),
        },
    }
}

/// An IANA service name, as Kubernetes requires of a port name: 1-15
/// lower-case letters, digits and inner single hyphens, at least one letter.
pub fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=15).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn the_template_wins_over_the_workload() {
        let workload = map(json!({"outrider.dev/listen-port": "16000", "outrider.dev/image": "a:1"}));
        let template = map(json!({"outrider.dev/listen-port": "17000"}));
        let s = read(&[Some(&workload), Some(&template)]).unwrap();
        assert_eq!(s.listen_port, 17000);
        assert_eq!(s.image.as_deref(), Some("a:1"));
        assert_eq!(s.shutdown, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_name_their_annotation() {
        for (k, v) in [
            ("outrider.dev/inject", "yes"),
            ("outrider.dev/listen-port", "0"),
            ("outrider.dev/admin-port", "70000"),
            ("outrider.dev/upstream-port", "Http_Port"),
            ("outrider.dev/drain-timeout", "20"),
            ("outrider.dev/drain-delay", "1h"),
            ("outrider.dev/otlp-endpoint", "jaeger:4317"),
            ("outrider.dev/image", "two words"),
        ] {
            let err = read(&[Some(&map(json!({k: v})))]).unwrap_err();
            assert!(err.to_string().starts_with(&format!("annotation {k}: ")), "{k}={v}: {err}");
        }
        let err = read(&[Some(&map(json!({"outrider.dev/listen-port": 15080})))]).unwrap_err();
        assert!(err.to_string().contains("quote it"), "{err}");
    }

    #[test]
    fn the_grace_period_covers_the_annotated_drain() {
        let s = read(&[Some(&map(json!({"outrider.dev/drain-timeout": "45s", "outrider.dev/app-stop-timeout": "15s"})))]).unwrap();
        assert_eq!(s.shutdown, Duration::from_secs(60));
        assert_eq!(s.drain_timeout.as_deref(), Some("45s"));
    }

    #[test]
    fn port_names_follow_kubernetes() {
        for ok in ["http", "grpc-web", "h2c", "a1", "abcdefghijklmno"] {
            assert!(is_port_name(ok), "{ok}");
        }
        for no in ["", "8080", "-http", "http-", "ht--tp", "HTTP", "abcdefghijklmnop", "ht_tp"] {
            assert!(!is_port_name(no), "{no}");
        }
    }
}
