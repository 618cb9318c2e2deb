//! Configuration: built-in defaults < optional TOML file (`OUTRIDER_CONFIG`) <
//! `OUTRIDER_*` environment variables < command-line flags.
//!
//! Figment extracts everything into [`RawConfig`], a struct of loosely typed
//! strings; [`Config::try_from`] then parses each field into its real type, so
//! a `Config` that exists is a valid one ("parse, don't validate"). Every
//! error names the environment variable a user would set to fix it, because
//! in a container that is the knob they have.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment, Provider,
    providers::{Env, Format, Serialized, Toml},
};
use http::uri::{Authority, Scheme};
use serde::{Deserialize, Serialize};

use crate::telemetry::routes::Routes;

/// Prefix of every environment variable outrider reads.
pub const ENV_PREFIX: &str = "OUTRIDER_";

/// A configuration error, rendered as the one line printed before exiting 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value was present but could not be parsed.
    #[error("invalid {var}={value:?}{origin}: {reason}")]
    Invalid { var: String, value: String, origin: String, reason: String },
    /// The config file or the sources could not be read at all.
    #[error("{0}")]
    Source(String),
}

/// Values as they come from figment: strings (or what figment parsed out of
/// them), defaults already applied. Field names are the lower-case variable
/// names without the prefix, which is what `Env::prefixed` produces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    // A TOML file may say `via = true` or `max_header_bytes = 65536`;
    // every field takes numbers and booleans as their string form.
    #[serde(deserialize_with = "lossy_string")]
    pub listen: String,
    #[serde(deserialize_with = "lossy_string")]
    pub upstream: String,
    #[serde(deserialize_with = "lossy_string")]
    pub upstream_protocol: String,
    #[serde(deserialize_with = "lossy_string")]
    pub admin_listen: String,
    #[serde(deserialize_with = "lossy_string")]
    pub log: String,
    #[serde(deserialize_with = "lossy_string")]
    pub log_format: String,
    #[serde(deserialize_with = "lossy_string")]
    pub upstream_connect_timeout: String,
    #[serde(deserialize_with = "lossy_string")]
    pub request_timeout: String,
    #[serde(deserialize_with = "lossy_string")]
    pub upstream_pool_idle_timeout: String,
    #[serde(deserialize_with = "lossy_string")]
    pub upstream_pool_max_idle: String,
    #[serde(deserialize_with = "lossy_string")]
    pub header_read_timeout: String,
    #[serde(deserialize_with = "lossy_string")]
    pub max_header_bytes: String,
    #[serde(deserialize_with = "lossy_string")]
    pub via: String,
    #[serde(deserialize_with = "lossy_string")]
    pub drain_delay: String,
    #[serde(deserialize_with = "lossy_string")]
    pub drain_timeout: String,
    #[serde(deserialize_with = "lossy_string")]
    pub app_stop_timeout: String,
    #[serde(deserialize_with = "lossy_string")]
    pub app_health: String,
    #[serde(deserialize_with = "lossy_string")]
    pub app_health_interval: String,
    #[serde(deserialize_with = "lossy_string")]
    pub app_health_failures: String,
    #[serde(deserialize_with = "lossy_string")]
    pub app_health_successes: String,
    #[serde(deserialize_with = "lossy_string")]
    pub buffer_max: String,
    #[serde(deserialize_with = "lossy_string")]
    pub buffer_timeout: String,
    #[serde(deserialize_with = "lossy_string")]
    pub admin_token: String,
    #[serde(deserialize_with = "lossy_string")]
    pub app_process: String,
    #[serde(deserialize_with = "lossy_string")]
    pub app_pidfile: String,
    #[serde(deserialize_with = "lossy_string")]
    pub routes: String,
    #[serde(deserialize_with = "lossy_string")]
    pub access_log: String,
    #[serde(deserialize_with = "lossy_string")]
    pub trace_query: String,
    #[serde(deserialize_with = "lossy_string")]
    pub trace_response: String,
    #[serde(deserialize_with = "lossy_string")]
    pub tls_cert: String,
    #[serde(deserialize_with = "lossy_string")]
    pub tls_key: String,
    #[serde(deserialize_with = "lossy_string")]
    pub tls_client_ca: String,
    #[serde(deserialize_with = "lossy_string")]
    pub tls_client_cert_header: String,
    #[serde(deserialize_with = "lossy_string")]
    pub tls_reload_interval: String,
    #[serde(deserialize_with = "lossy_string")]
    pub max_connections: String,
    #[serde(deserialize_with = "lossy_string")]
    pub max_inflight: String,
    #[serde(deserialize_with = "lossy_string")]
    pub max_body_bytes: String,
    #[serde(deserialize_with = "lossy_string")]
    pub upstream_ca: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            upstream: "http://127.0.0.1:8081".into(),
            upstream_protocol: "http1".into(),
            admin_listen: "0.0.0.0:9901".into(),
            log: "info".into(),
            log_format: "auto".into(),
            upstream_connect_timeout: "1s".into(),
            request_timeout: "60s".into(),
            upstream_pool_idle_timeout: "30s".into(),
            upstream_pool_max_idle: "256".into(),
            header_read_timeout: "10s".into(),
            max_header_bytes: "65536".into(),
            via: "false".into(),
            drain_delay: "5s".into(),
            drain_timeout: "20s".into(),
            app_stop_timeout: "10s".into(),
            app_health: "tcp".into(),
            app_health_interval: "2s".into(),
            app_health_failures: "3".into(),
            app_health_successes: "1".into(),
            buffer_max: "1024".into(),
            buffer_timeout: "30s".into(),
            admin_token: String::new(),
            app_process: String::new(),
            app_pidfile: String::new(),
            routes: String::new(),
            access_log: "true".into(),
            trace_query: "false".into(),
            trace_response: "false".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            tls_client_cert_header: String::new(),
            tls_reload_interval: "5s".into(),
            max_connections: "10000".into(),
            max_inflight: "0".into(),
            max_body_bytes: "0".into(),
            upstream_ca: String::new(),
        }
    }
}

/// Every variable outrider accepts, with its default and meaning, in the
/// order `docs/configuration.md` lists them. A test keeps the two in sync.
pub const VARIABLES: &[(&str, &str)] = &[
    ("OUTRIDER_CONFIG", "Path of an optional TOML file with the same keys (lower case, no prefix)."),
    ("OUTRIDER_LISTEN", "Public listener address, `host:port`."),
    ("OUTRIDER_UPSTREAM", "The app: `http://host:port` or `unix:/path/to.sock`."),
    ("OUTRIDER_UPSTREAM_PROTOCOL", "Protocol spoken to the app: `http1` or `http2` (prior knowledge)."),
    ("OUTRIDER_ADMIN_LISTEN", "Admin listener (probes, metrics), `host:port`."),
    ("OUTRIDER_LOG", "Log filter in `tracing` EnvFilter syntax."),
    ("OUTRIDER_LOG_FORMAT", "`json`, `pretty`, or `auto` (pretty on a TTY, JSON otherwise)."),
    ("OUTRIDER_UPSTREAM_CONNECT_TIMEOUT", "Timeout for opening a connection to the app."),
    ("OUTRIDER_REQUEST_TIMEOUT", "Time the app has to send response headers; `0` disables."),
    ("OUTRIDER_UPSTREAM_POOL_IDLE_TIMEOUT", "How long an idle pooled connection to the app is kept."),
    ("OUTRIDER_UPSTREAM_POOL_MAX_IDLE", "Maximum idle pooled connections to the app."),
    ("OUTRIDER_HEADER_READ_TIMEOUT", "Time a client has to send complete request headers (HTTP/1)."),
    ("OUTRIDER_MAX_HEADER_BYTES", "Largest request head accepted; larger gets 431."),
    ("OUTRIDER_VIA", "Add a `Via` header to requests and responses (`true`/`false`)."),
    ("OUTRIDER_DRAIN_DELAY", "After SIGTERM, keep accepting new connections this long while endpoints update."),
    ("OUTRIDER_DRAIN_TIMEOUT", "Longest drain, counted from SIGTERM (includes the delay); then open requests are cut."),
    ("OUTRIDER_APP_STOP_TIMEOUT", "After the drain, time between SIGTERM and SIGKILL to the wrapped app."),
    ("OUTRIDER_APP_HEALTH", "App health check: `tcp` (connect) or an HTTP path such as `/status` (2xx/3xx healthy)."),
    ("OUTRIDER_APP_HEALTH_INTERVAL", "Time between active health checks once the app has started."),
    ("OUTRIDER_APP_HEALTH_FAILURES", "Consecutive failures before the app is declared unhealthy."),
    ("OUTRIDER_APP_HEALTH_SUCCESSES", "Consecutive successes before the app is declared healthy again."),
    ("OUTRIDER_BUFFER_MAX", "Requests held at once while the app refuses connections; `0` disables holding."),
    ("OUTRIDER_BUFFER_TIMEOUT", "How long a request is held waiting for the app; `0` disables holding. Nothing is held during the drain."),
    ("OUTRIDER_ADMIN_TOKEN", "Bearer token that lets a non-loopback caller use `/drain`."),
    ("OUTRIDER_APP_PROCESS", "Pod mode: name of the app process to stop after the drain (needs `shareProcessNamespace`)."),
    ("OUTRIDER_APP_PIDFILE", "Pod mode: file holding the app's PID, the alternative to `OUTRIDER_APP_PROCESS`."),
    ("OUTRIDER_ROUTES", "Route templates for span names and the `http_route` label, e.g. `/users/{id},/orders/{id}/items`."),
    ("OUTRIDER_ACCESS_LOG", "One log line per request (`true`/`false`)."),
    ("OUTRIDER_TRACE_QUERY", "Record the query string as `url.query` on spans; it may hold secrets."),
    ("OUTRIDER_TRACE_RESPONSE", "Send a W3C `traceresponse` header back to clients."),
    ("OUTRIDER_TLS_CERT", "PEM certificate chain: with `OUTRIDER_TLS_KEY`, the public listener speaks HTTPS."),
    ("OUTRIDER_TLS_KEY", "PEM private key for `OUTRIDER_TLS_CERT`."),
    ("OUTRIDER_TLS_CLIENT_CA", "PEM CA bundle: require and verify client certificates (mTLS)."),
    ("OUTRIDER_TLS_CLIENT_CERT_HEADER", "Header that carries the verified client subject to the app; client copies are stripped."),
    ("OUTRIDER_TLS_RELOAD_INTERVAL", "How often the certificate files are checked for a rotated pair."),
    ("OUTRIDER_MAX_CONNECTIONS", "Client connections served at once; more wait in the kernel's accept queue."),
    ("OUTRIDER_MAX_INFLIGHT", "Requests in flight to the app at once; more get 503 with `Retry-After`. `0` = no limit."),
    ("OUTRIDER_MAX_BODY_BYTES", "Largest request body forwarded; larger gets 413. `0` = no limit."),
    ("OUTRIDER_UPSTREAM_CA", "PEM CA bundle that verifies an `https://` app; default: the system bundle."),
];

/// `(variable, default)` for every variable, defaults as a user writes them;
/// `OUTRIDER_CONFIG` has none.
pub fn defaults() -> Vec<(&'static str, String)> {
    let defaults: BTreeMap<String, String> = Figment::from(Serialized::defaults(RawConfig::default())).extract().unwrap_or_default();
    VARIABLES
        .iter()
        .map(|(var, _)| {
            let key = var.trim_start_matches(ENV_PREFIX).to_ascii_lowercase();
            (*var, defaults.get(&key).cloned().unwrap_or_default())
        })
        .collect()
}

/// Which protocol outrider speaks to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

/// Where the app listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// A TCP address; `authority` is used to build request URIs.
    Tcp { scheme: Scheme, authority: Authority },
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { scheme, authority } => write!(f, "{scheme}://{authority}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How logs are written: the logging set-up's own type, not a copy.
pub use crate::telemetry::Format as LogFormat;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listener for proxied traffic.
    pub listen: SocketAddr,
    /// The app outrider fronts.
    pub upstream: UpstreamAddr,
    /// Protocol to the app; HTTP/1.1 unless the app is known to speak h2c.
    pub upstream_protocol: UpstreamProtocol,
    /// Admin listener: probes and metrics, never proxied traffic.
    pub admin_listen: SocketAddr,
    /// `tracing` EnvFilter directives.
    pub log: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Bound on TCP/Unix connect to the app.
    pub upstream_connect_timeout: Duration,
    /// Bound on the time from sending the request to receiving the app's
    /// response head. `None` waits forever. Response bodies are not bounded:
    /// a long download is not a slow app.
    pub request_timeout: Option<Duration>,
    /// Idle pooled connections older than this are closed. Keep it below
    /// the app's own keep-alive timeout to avoid reusing a closing socket.
    pub upstream_pool_idle_timeout: Duration,
    /// Maximum idle connections kept to the app.
    pub upstream_pool_max_idle: usize,
    /// Slowloris bound: a client must finish its request head in this time.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 above).
    pub max_header_bytes: usize,
    /// Add `Via: 1.1 outrider` to requests and responses.
    pub via: bool,
    /// After SIGTERM, keep accepting new connections for this long: the
    /// endpoint removal is still propagating to every node.
    pub drain_delay: Duration,
    /// Longest drain, from the signal (so it includes `drain_delay`).
    /// 20s drain + 10s app stop = Kubernetes' default 30s grace period.
    pub drain_timeout: Duration,
    /// Time the wrapped app gets between SIGTERM and SIGKILL.
    pub app_stop_timeout: Duration,
    /// Active app health check.
    pub app_health: AppHealthCheck,
    /// Interval of the active check once the app has started.
    pub app_health_interval: Duration,
    /// Consecutive failures that make a healthy app unhealthy.
    pub app_health_failures: u32,
    /// Consecutive successes that make an unhealthy app healthy.
    pub app_health_successes: u32,
    /// Holding requests while the app is away; `None` answers 502 at once.
    pub buffer: Option<(usize, Duration)>,
    /// Lets non-loopback callers use `/drain`. Never printed.
    pub admin_token: Option<String>,
    /// Pod mode: how to find the app process to stop after the drain.
    pub app_process: Option<AppProcess>,
    /// Route templates: bounded span names and `http_route` values.
    pub routes: Routes,
    /// The raw list, for `--print-config`.
    routes_text: String,
    /// One access log line per request.
    pub access_log: bool,
    /// Record `url.query` on spans.
    pub trace_query: bool,
    /// Send `traceresponse` to clients.
    pub trace_response: bool,
    /// HTTPS on the public listener.
    pub tls: Option<TlsConfig>,
    /// Client connections served at once.
    pub max_connections: usize,
    /// Requests in flight to the app; 0 = no limit.
    pub max_inflight: usize,
    /// Largest request body; 0 = no limit.
    pub max_body_bytes: u64,
    /// CA bundle verifying an `https://` app.
    pub upstream_ca: Option<PathBuf>,
}

/// TLS settings of the public listener.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_cert_header: Option<http::HeaderName>,
    pub reload_interval: Duration,
}

/// How the app's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppHealthCheck {
    Tcp,
    HttpPath(String),
}

/// Pod mode with a shared process namespace: the app to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppProcess {
    Name(String),
    PidFile(PathBuf),
}

/// Command-line flags that override the environment. Each is `None` unless
/// given, so it only overrides what the user actually typed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

impl Overrides {
    fn has(&self, key: &str) -> bool {
        match key {
            "listen" => self.listen.is_some(),
            "upstream" => self.upstream.is_some(),
            "admin_listen" => self.admin_listen.is_some(),
            "log" => self.log.is_some(),
            "log_format" => self.log_format.is_some(),
            _ => false,
        }
    }
}

impl Config {
    /// Loads the configuration from the process environment, the optional
    /// file it names, and `overrides` (command-line flags).
    ///
    /// # Errors
    /// Returns a [`ConfigError`] naming the offending variable.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        let mut file = None;
        let known = known_keys();
        check_env_names(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()), &known)?;
        if let Some(path) = std::env::var_os("OUTRIDER_CONFIG") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(invalid("OUTRIDER_CONFIG", &path.display().to_string(), "no such file"));
            }
            let keys = Figment::from(Toml::file_exact(&path)).data().map_err(|e| ConfigError::Source(e.to_string()))?;
            for key in keys.values().flat_map(|dict| dict.keys()) {
                if !known.contains(key) {
                    return Err(ConfigError::Source(format!(
                        "unknown key `{key}` in {} (OUTRIDER_CONFIG){}",
                        path.display(),
                        suggestion(key, known.iter().map(String::as_str)).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default()
                    )));
                }
            }
            figment = figment.merge(Toml::file_exact(&path));
            file = Some(path);
        }
        // Environment values are taken verbatim, as strings: figment's own
        // Env provider would parse `{a,b}` or `[x]` as structures, and
        // `Config::try_from` owns all parsing so that a bad value gets the
        // same error whatever its source.
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let env: BTreeMap<String, String> =
            Env::prefixed(ENV_PREFIX).only(&known).iter().map(|(k, v)| (k.as_str().to_ascii_lowercase(), v)).collect();
        let figment = figment.merge(Serialized::globals(&env)).merge(Serialized::globals(overrides));
        let origin = |key: &str| {
            if overrides.has(key) {
                " (from command line)".to_string()
            } else if env.contains_key(key) {
                String::new()
            } else if let Some(file) = &file {
                format!(" (from {})", file.display())
            } else {
                String::new()
            }
        };
        Self::from_figment(&figment, origin)
    }

    fn from_figment(figment: &Figment, origin: impl Fn(&str) -> String) -> Result<Self, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            if key.is_empty() {
                return ConfigError::Source(e.to_string());
            }
            ConfigError::Invalid {
                var: format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()),
                value: figment.find_value(&key).map(|v| format!("{v:?}")).unwrap_or_default(),
                origin: origin(&key),
                reason: e.kind.to_string(),
            }
        })?;
        Self::try_from(raw).map_err(|mut e| {
            if let ConfigError::Invalid { var, origin: o, .. } = &mut e {
                *o = origin(&var.trim_start_matches(ENV_PREFIX).to_ascii_lowercase());
            }
            e
        })
    }

    /// The route templates, in order.
    pub fn routes_list(&self) -> Vec<&str> {
        (0..self.routes.len()).map(|i| self.routes.template(i)).collect()
    }

    /// The effective configuration as TOML, for `--print-config`.
    pub fn to_toml(&self) -> String {
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        let mut out = String::new();
        let mut line = |k: &str, v: String| {
            out.push_str(k);
            out.push_str(" = ");
            out.push_str(&toml_quote(&v));
            out.push('\n');
        };
        line("listen", self.listen.to_string());
        line("upstream", self.upstream.to_string());
        line(
            "upstream_protocol",
            match self.upstream_protocol {
                UpstreamProtocol::Http1 => "http1",
                UpstreamProtocol::Http2 => "http2",
            }
            .into(),
        );
        line("admin_listen", self.admin_listen.to_string());
        line("log", self.log.clone());
        line(
            "log_format",
            match self.log_format {
                LogFormat::Json => "json",
                LogFormat::Pretty => "pretty",
                LogFormat::Auto => "auto",
            }
            .into(),
        );
        line("upstream_connect_timeout", dur(self.upstream_connect_timeout));
        line("request_timeout", self.request_timeout.map_or_else(|| "0".into(), dur));
        line("upstream_pool_idle_timeout", dur(self.upstream_pool_idle_timeout));
        line("upstream_pool_max_idle", self.upstream_pool_max_idle.to_string());
        line("header_read_timeout", dur(self.header_read_timeout));
        line("max_header_bytes", self.max_header_bytes.to_string());
        line("via", self.via.to_string());
        line("drain_delay", dur(self.drain_delay));
        line("drain_timeout", dur(self.drain_timeout));
        line("app_stop_timeout", dur(self.app_stop_timeout));
        line(
            "app_health",
            match &self.app_health {
                AppHealthCheck::Tcp => "tcp".into(),
                AppHealthCheck::HttpPath(p) => p.clone(),
            },
        );
        line("app_health_interval", dur(self.app_health_interval));
        line("app_health_failures", self.app_health_failures.to_string());
        line("app_health_successes", self.app_health_successes.to_string());
        let (max, timeout) = self.buffer.unwrap_or((0, Duration::ZERO));
        line("buffer_max", max.to_string());
        line("buffer_timeout", if timeout.is_zero() { "0".into() } else { dur(timeout) });
        line("admin_token", if self.admin_token.is_some() { "<redacted>".into() } else { String::new() });
        let (process, pidfile) = match &self.app_process {
            Some(AppProcess::Name(n)) => (n.clone(), String::new()),
            Some(AppProcess::PidFile(p)) => (String::new(), p.display().to_string()),
            None => (String::new(), String::new()),
        };
        line("app_process", process);
        line("app_pidfile", pidfile);
        line("routes", self.routes_text.clone());
        line("access_log", self.access_log.to_string());
        line("trace_query", self.trace_query.to_string());
        line("trace_response", self.trace_response.to_string());
        let tls = self.tls.as_ref();
        let path = |p: Option<&PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
        line("tls_cert", path(tls.map(|t| &t.cert)));
        line("tls_key", path(tls.map(|t| &t.key)));
        line("tls_client_ca", path(tls.and_then(|t| t.client_ca.as_ref())));
        line("tls_client_cert_header", tls.and_then(|t| t.client_cert_header.as_ref()).map(|h| h.to_string()).unwrap_or_default());
        line("tls_reload_interval", dur(tls.map_or(Duration::from_secs(5), |t| t.reload_interval)));
        line("max_connections", self.max_connections.to_string());
        line("max_inflight", self.max_inflight.to_string());
        line("max_body_bytes", self.max_body_bytes.to_string());
        line("upstream_ca", self.upstream_ca.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
        out
    }
}

/// Keys accepted from the environment: the variables without prefix. Any
/// other `OUTRIDER_*` is ignored: Kubernetes injects `<SERVICE>_PORT` style
/// variables for every Service, so a Service named `outrider` must not
/// break start-up.
fn known_keys() -> Vec<String> {
    VARIABLES.iter().filter(|(v, _)| *v != "OUTRIDER_CONFIG").map(|(v, _)| v.trim_start_matches(ENV_PREFIX).to_ascii_lowercase()).collect()
}

/// Refuses an `OUTRIDER_*` variable outrider does not read: a misspelt one
/// would otherwise be ignored without a word. Kubernetes' service links are
/// let through: every pod of a namespace with a Service named `outrider`
/// gets `OUTRIDER_SERVICE_HOST`, `OUTRIDER_SERVICE_PORT[_<NAME>]`,
/// `OUTRIDER_PORT` and `OUTRIDER_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`, and
/// they must never stop a pod from starting.
fn check_env_names(names: impl Iterator<Item = String>, known: &[String]) -> Result<(), ConfigError> {
    let service_link = |rest: &str| {
        rest == "SERVICE_HOST"
            || rest == "SERVICE_PORT"
            || rest.starts_with("SERVICE_PORT_")
            || rest == "PORT"
            || rest
                .strip_prefix("PORT_")
                .is_some_and(|n| n.split('_').next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
    };
    for name in names {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if rest == "CONFIG" || service_link(rest) || known.iter().any(|k| k.eq_ignore_ascii_case(rest)) {
            continue;
        }
        let hint = suggestion(&rest.to_ascii_lowercase(), known.iter().map(String::as_str))
            .map(|s| format!("; did you mean {ENV_PREFIX}{}?", s.to_ascii_uppercase()))
            .unwrap_or_default();
        return Err(ConfigError::Source(format!("unknown variable {name}{hint} (docs/configuration.md lists them all)")));
    }
    Ok(())
}

/// The closest of `candidates` to `word`, if it is close enough to be a
/// typo: at most a third of the word's letters edited.
fn suggestion<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates.map(|c| (edit_distance(word, c), c)).filter(|(d, _)| *d * 3 <= word.len().max(3)).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

/// Levenshtein distance over bytes (variable names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Debian's (and most distributions') bundle of trusted CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let upstream = parse_upstream(&raw.upstream)?;
        Ok(Self {
            listen: parse_socket_addr("OUTRIDER_LISTEN", &raw.listen)?,
            upstream_protocol: match raw.upstream_protocol.trim().to_ascii_lowercase().as_str() {
                "http1" | "http/1.1" => UpstreamProtocol::Http1,
                "http2" | "h2c" | "h2" => UpstreamProtocol::Http2,
                _ => return Err(invalid("OUTRIDER_UPSTREAM_PROTOCOL", &raw.upstream_protocol, "expected http1 or http2")),
            },
            admin_listen: parse_socket_addr("OUTRIDER_ADMIN_LISTEN", &raw.admin_listen)?,
            log: {
                // tracing-subscriber 0.3 slices each directive with indices
                // taken after trimming it, which panics on non-ASCII text
                // behind leading whitespace. Targets and levels are ASCII,
                // so anything else is refused, and directives are trimmed
                // here first.
                if !raw.log.is_ascii() {
                    return Err(invalid("OUTRIDER_LOG", &raw.log, "expected ASCII directives such as info,outrider=debug"));
                }
                let log = raw.log.split(',').map(str::trim).filter(|d| !d.is_empty()).collect::<Vec<_>>().join(",");
                tracing_subscriber::EnvFilter::builder().parse(&log).map_err(|e| invalid("OUTRIDER_LOG", &raw.log, &e.to_string()))?;
                log
            },
            log_format: match raw.log_format.trim().to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "pretty" | "text" => LogFormat::Pretty,
                "auto" | "" => LogFormat::Auto,
                _ => return Err(invalid("OUTRIDER_LOG_FORMAT", &raw.log_format, "expected json, pretty or auto")),
            },
            upstream_connect_timeout: parse_nonzero_duration("OUTRIDER_UPSTREAM_CONNECT_TIMEOUT", &raw.upstream_connect_timeout)?,
            request_timeout: parse_optional_duration("OUTRIDER_REQUEST_TIMEOUT", &raw.request_timeout)?,
            upstream_pool_idle_timeout: parse_nonzero_duration("OUTRIDER_UPSTREAM_POOL_IDLE_TIMEOUT", &raw.upstream_pool_idle_timeout)?,
            upstream_pool_max_idle: parse_number("OUTRIDER_UPSTREAM_POOL_MAX_IDLE", &raw.upstream_pool_max_idle, 0, 1 << 20)?,
            header_read_timeout: parse_nonzero_duration("OUTRIDER_HEADER_READ_TIMEOUT", &raw.header_read_timeout)?,
            // hyper needs room for at least a minimal request line.
            max_header_bytes: parse_number("OUTRIDER_MAX_HEADER_BYTES", &raw.max_header_bytes, 8192, 16 << 20)?,
            via: parse_bool("OUTRIDER_VIA", &raw.via)?,
            drain_delay: {
                let delay = parse_duration("OUTRIDER_DRAIN_DELAY", &raw.drain_delay)?;
                let timeout = parse_duration("OUTRIDER_DRAIN_TIMEOUT", &raw.drain_timeout)?;
                if delay > timeout {
                    return Err(invalid(
                        "OUTRIDER_DRAIN_DELAY",
                        &raw.drain_delay,
                        &format!("must not exceed OUTRIDER_DRAIN_TIMEOUT ({})", raw.drain_timeout),
                    ));
                }
                delay
            },
            drain_timeout: parse_duration("OUTRIDER_DRAIN_TIMEOUT", &raw.drain_timeout)?,
            app_stop_timeout: parse_duration("OUTRIDER_APP_STOP_TIMEOUT", &raw.app_stop_timeout)?,
            app_health: match raw.app_health.trim() {
                "tcp" | "" => AppHealthCheck::Tcp,
                path if path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok() => {
                    AppHealthCheck::HttpPath(path.to_owned())
                }
                _ => return Err(invalid("OUTRIDER_APP_HEALTH", &raw.app_health, "expected tcp or an HTTP path such as /status")),
            },
            app_health_interval: parse_nonzero_duration("OUTRIDER_APP_HEALTH_INTERVAL", &raw.app_health_interval)?,
            app_health_failures: u32::try_from(parse_number("OUTRIDER_APP_HEALTH_FAILURES", &raw.app_health_failures, 1, 1000)?)
                .unwrap_or(3),
            app_health_successes: u32::try_from(parse_number("OUTRIDER_APP_HEALTH_SUCCESSES", &raw.app_health_successes, 1, 1000)?)
                .unwrap_or(1),
            buffer: {
                let max = parse_number("OUTRIDER_BUFFER_MAX", &raw.buffer_max, 0, 1 << 20)?;
                let timeout = parse_duration("OUTRIDER_BUFFER_TIMEOUT", &raw.buffer_timeout)?;
                (max > 0 && !timeout.is_zero()).then_some((max, timeout))
            },
            admin_token: match raw.admin_token.trim() {
                "" => None,
                t if t.len() < 16 => return Err(invalid("OUTRIDER_ADMIN_TOKEN", "<redacted>", "must be at least 16 characters")),
                t => Some(t.to_owned()),
            },
            app_process: match (raw.app_process.trim(), raw.app_pidfile.trim()) {
                ("", "") => None,
                (name, "") => Some(AppProcess::Name(name.to_owned())),
                ("", file) => Some(AppProcess::PidFile(PathBuf::from(file))),
                _ => {
                    return Err(invalid(
                        "OUTRIDER_APP_PIDFILE",
                        &raw.app_pidfile,
                        "set either OUTRIDER_APP_PROCESS or OUTRIDER_APP_PIDFILE, not both",
                    ));
                }
            },
            routes: Routes::parse(&raw.routes).map_err(|e| invalid("OUTRIDER_ROUTES", &raw.routes, &e.to_string()))?,
            routes_text: raw.routes.trim().to_owned(),
            access_log: parse_bool("OUTRIDER_ACCESS_LOG", &raw.access_log)?,
            trace_query: parse_bool("OUTRIDER_TRACE_QUERY", &raw.trace_query)?,
            trace_response: parse_bool("OUTRIDER_TRACE_RESPONSE", &raw.trace_response)?,
            tls: parse_tls(&raw)?,
            max_connections: parse_number("OUTRIDER_MAX_CONNECTIONS", &raw.max_connections, 1, 1 << 24)?,
            max_inflight: parse_number("OUTRIDER_MAX_INFLIGHT", &raw.max_inflight, 0, 1 << 24)?,
            max_body_bytes: u64::try_from(parse_number("OUTRIDER_MAX_BODY_BYTES", &raw.max_body_bytes, 0, usize::MAX)?).unwrap_or(u64::MAX),
            upstream_ca: match (raw.upstream_ca.trim(), &upstream) {
                ("", UpstreamAddr::Tcp { scheme, .. }) if *scheme == Scheme::HTTPS => {
                    let system = PathBuf::from(SYSTEM_CA_BUNDLE);
                    if !system.is_file() {
                        return Err(invalid(
                            "OUTRIDER_UPSTREAM_CA",
                            "",
                            "an https:// upstream needs a CA bundle and the system one is missing",
                        ));
                    }
                    Some(system)
                }
                ("", _) => None,
                (path, _) => Some(PathBuf::from(path)),
            },
            upstream,
        })
    }
}

fn parse_tls(raw: &RawConfig) -> Result<Option<TlsConfig>, ConfigError> {
    let (cert, key) = (raw.tls_cert.trim(), raw.tls_key.trim());
    let reload_interval = parse_nonzero_duration("OUTRIDER_TLS_RELOAD_INTERVAL", &raw.tls_reload_interval)?;
    let header = raw.tls_client_cert_header.trim();
    let ca = raw.tls_client_ca.trim();
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => {
            if !ca.is_empty() {
                return Err(invalid("OUTRIDER_TLS_CLIENT_CA", ca, "needs OUTRIDER_TLS_CERT and OUTRIDER_TLS_KEY"));
            }
            return Ok(None);
        }
        (false, true) => return Err(invalid("OUTRIDER_TLS_KEY", "", "must be set together with OUTRIDER_TLS_CERT")),
        (true, false) => return Err(invalid("OUTRIDER_TLS_CERT", "", "must be set together with OUTRIDER_TLS_KEY")),
        (false, false) => {}
    }
    let client_cert_header = match header {
        "" => None,
        h => Some(
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| invalid("OUTRIDER_TLS_CLIENT_CERT_HEADER", h, "not a valid header name"))?,
        ),
    };
    if client_cert_header.is_some() && ca.is_empty() {
        return Err(invalid("OUTRIDER_TLS_CLIENT_CERT_HEADER", header, "needs OUTRIDER_TLS_CLIENT_CA (no client certificate otherwise)"));
    }
    Ok(Some(TlsConfig {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
        client_ca: (!ca.is_empty()).then(|| PathBuf::from(ca)),
        client_cert_header,
        reload_interval,
    }))
}

fn invalid(var: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid { var: var.into(), value: value.into(), origin: String::new(), reason: reason.into() }
}

fn parse_socket_addr(var: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| invalid(var, value, "expected an IP socket address such as 0.0.0.0:8080 or [::]:8080"))
}

/// Parses `250ms`, `5s`, `1m30s`. A bare number is rejected: `30` could mean
/// seconds or milliseconds, and guessing wrong is worse than asking.
///
/// Every duration is at most [`MAX_DURATION`]: none of outrider's waits
/// makes sense longer, and a larger one would overflow the clock arithmetic
/// (`Instant + Duration` panics).
pub fn parse_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(v).map_err(|e| invalid(var, value, &format!("{e}; expected a duration such as 250ms, 5s or 1m")))?;
    if d > MAX_DURATION {
        return Err(invalid(var, value, "must be at most 24h"));
    }
    Ok(d)
}

/// The longest duration any setting takes.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

fn parse_nonzero_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(var, value)?;
    if d.is_zero() {
        return Err(invalid(var, value, "must be greater than zero"));
    }
    Ok(d)
}

/// `0` means "no limit".
fn parse_optional_duration(var: &str, value: &str) -> Result<Option<Duration>, ConfigError> {
    let d = parse_duration(var, value)?;
    Ok((!d.is_zero()).then_some(d))
}

fn parse_number(var: &str, value: &str, min: usize, max: usize) -> Result<usize, ConfigError> {
    let n: usize = value.trim().parse().map_err(|_| invalid(var, value, "expected a whole number"))?;
    if !(min..=max).contains(&n) {
        return Err(invalid(var, value, &format!("must be between {min} and {max}")));
    }
    Ok(n)
}

fn parse_bool(var: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(invalid(var, value, "expected true or false")),
    }
}

fn parse_upstream(value: &str) -> Result<UpstreamAddr, ConfigError> {
    const VAR: &str = "OUTRIDER_UPSTREAM";
    let v = value.trim();
    if let Some(path) = v.strip_prefix("unix:") {
        // Accept both `unix:/path` and `unix:///path`.
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err(invalid(VAR, value, "a unix socket path must be absolute, e.g. unix:/run/app.sock"));
        }
        return Ok(UpstreamAddr::Unix(PathBuf::from(path)));
    }
    let uri: http::Uri = v.parse().map_err(|_| invalid(VAR, value, "expected http://host:port or unix:/path"))?;
    let (scheme, default_port) = match uri.scheme_str() {
        Some("http") => (Scheme::HTTP, 80),
        Some("https") => (Scheme::HTTPS, 443),
        _ => return Err(invalid(VAR, value, "expected http://host:port, https://host:port or unix:/path")),
    };
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(invalid(VAR, value, "must not contain a path; outrider forwards the request's own path"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| invalid(VAR, value, "missing host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid(VAR, value, "must not contain credentials"));
    }
    let authority = match authority.port_u16() {
        Some(_) => authority,
        None => format!("{authority}:{default_port}").parse().map_err(|_| invalid(VAR, value, "invalid host"))?,
    };
    Ok(UpstreamAddr::Tcp { scheme, authority })
}

fn lossy_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Lossy;
    impl serde::de::Visitor<'_> for Lossy {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, number or boolean")
        }
        fn visit_str<E>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_bool<E>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(Lossy)
}

fn toml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // TOML basic strings may hold no control character but tab.
            c if c.is_control() && c != '\t' => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_strings_are_valid_toml() {
        for value in ["plain", "quote \" and backslash \\", "new\nline, tab\t, bell\u{7}, del\u{7f}"] {
            let printed = format!("key = {}\n", toml_quote(value));
            let parsed: BTreeMap<String, String> = figment::Figment::from(Toml::string(&printed)).extract().expect("valid TOML");
            assert_eq!(parsed["key"], value, "{printed}");
        }
    }

    fn load_with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        for (k, v) in vars {
            figment = figment.merge((k.trim_start_matches(ENV_PREFIX).to_ascii_lowercase(), *v));
        }
        Config::from_figment(&figment, |_| String::new())
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::try_from(RawConfig::default()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.request_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:8081");
    }

    #[test]
    fn durations_are_human() {
        let c = load_with(&[("OUTRIDER_REQUEST_TIMEOUT", "250ms"), ("OUTRIDER_UPSTREAM_CONNECT_TIMEOUT", "1m30s")]).unwrap();
        assert_eq!(c.request_timeout, Some(Duration::from_millis(250)));
        assert_eq!(c.upstream_connect_timeout, Duration::from_secs(90));
        assert_eq!(load_with(&[("OUTRIDER_REQUEST_TIMEOUT", "0")]).unwrap().request_timeout, None);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = load_with(&[("OUTRIDER_LISTEN", "nope")]).unwrap_err().to_string();
        assert!(e.starts_with("invalid OUTRIDER_LISTEN=\"nope\""), "{e}");
        let e = load_with(&[("OUTRIDER_REQUEST_TIMEOUT", "30")]).unwrap_err().to_string();
        assert!(e.contains("OUTRIDER_REQUEST_TIMEOUT"), "{e}");
        let e = load_with(&[("OUTRIDER_UPSTREAM", "ftp://x")]).unwrap_err().to_string();
        assert!(e.contains("OUTRIDER_UPSTREAM="), "{e}");
        let e = load_with(&[("OUTRIDER_LOG", "foo=bogus")]).unwrap_err().to_string();
        assert!(e.contains("OUTRIDER_LOG="), "{e}");
        // Found by proptest: this used to panic inside tracing-subscriber.
        let e = load_with(&[("OUTRIDER_LOG", " \u{16aab}|Y5h\u{1092e}=/{")]).unwrap_err().to_string();
        assert!(e.contains("OUTRIDER_LOG="), "{e}");
        assert_eq!(load_with(&[("OUTRIDER_LOG", " info , outrider=debug,")]).map(|c| c.log).ok().as_deref(), Some("info,outrider=debug"));
    }

    #[test]
    fn upstream_forms() {
        assert_eq!(parse_upstream("unix:/run/a.sock").unwrap(), UpstreamAddr::Unix("/run/a.sock".into()));
        assert_eq!(parse_upstream("unix:///run/a.sock").unwrap(), UpstreamAddr::Unix("/run/a.sock".into()));
        assert!(parse_upstream("unix:relative.sock").is_err());
        assert!(parse_upstream("http://a:1/path").is_err());
        assert_eq!(parse_upstream("http://app").unwrap().to_string(), "http://app:80");
        assert_eq!(parse_upstream("https://app").unwrap().to_string(), "https://app:443");
        assert!(parse_upstream("http://u:p@a:1").is_err());
        assert_eq!(parse_upstream("http://app:8081/").unwrap().to_string(), "http://app:8081");
    }

    #[test]
    fn every_variable_is_a_raw_config_field() {
        let fields: BTreeMap<String, String> = Figment::from(Serialized::defaults(RawConfig::default())).extract().unwrap();
        let keys = known_keys();
        for key in &keys {
            assert!(fields.contains_key(key), "{key} is listed in VARIABLES but RawConfig has no such field");
        }
        assert_eq!(fields.len(), keys.len(), "RawConfig has a field VARIABLES does not list");
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = load_with(&[("OUTRIDER_ADMIN_TOKEN", "0123456789abcdef-secret")]).unwrap();
        assert!(!c.to_toml().contains("secret"));
    }
}
