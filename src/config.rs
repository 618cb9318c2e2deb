//! Configuration: built-in defaults < optional TOML file (`OUTRIDER_CONFIG`) <
//! `OUTRIDER_*` environment variables < command-line flags.
//!
//! Every setting is declared once, in `settings!` below: key, type, default,
//! kind (parser and bounds), doc line, flag. The environment variable, the
//! TOML key, the flag, the [`Config`] field, `--print-config` and the table
//! in docs/configuration.md all come from that line, so they cannot drift
//! apart.
//!
//! The sources are merged as text ([`RawConfig`]); each setting's kind then
//! parses its text within its bounds, and [`Config::combine`] applies the
//! rules that span settings, so a `Config` that exists is a valid one
//! ("parse, don't validate"). Every error names the environment variable a
//! user would set to fix it, because in a container that is the knob they
//! have.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Data, Format, Toml},
};
use http::uri::{Authority, Scheme};

use crate::{telemetry::routes::Routes, trust::TrustedProxies};

/// Declares the settings: after a one-line doc, `[pub] key: Type =
/// "default", kind [, flag "VALUE_NAME"];`, where the [`Kind`] parses the
/// text, with its bounds. A private setting only feeds a `derived` field,
/// which [`Config::combine`] fills.
macro_rules! settings {
    (@flag) => { None };
    (@flag $flag:literal) => { Some($flag) };
    (
        $( #[doc = $doc:literal] $vis:vis $key:ident: $ty:ty = $default:literal, $kind:expr $(, flag $flag:literal)?; )*
        derived { $( $(#[$meta:meta])* pub $derived:ident: $derived_ty:ty, )* }
    ) => {
        /// The validated configuration.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( #[doc = $doc] $vis $key: $ty, )*
            $( $(#[$meta])* pub $derived: $derived_ty, )*
        }

        /// Every setting, in the order of the reference table.
        pub const SETTINGS: &[Setting] = &[$({
            // Naming the type pins a generic kind's (`number`'s) as the field does.
            let kind: Kind<$ty> = $kind;
            Setting {
                key: stringify!($key),
                default: $default,
                doc: $doc.trim_ascii(),
                flag: settings!(@flag $($flag)?),
                range: kind.range,
                secret: kind.secret,
            }
        },)*];

        impl Config {
            fn parse_each(raw: &RawConfig) -> Result<Self, ConfigError> {
                Ok(Self { $( $key: raw.parse(stringify!($key), &$kind)?, )* $( $derived: None, )* })
            }

            /// The effective configuration as TOML, for `--print-config`.
            pub fn to_toml(&self) -> String {
                let lines = [$( (stringify!($key), ($kind.print)(&self.$key)), )*];
                lines.iter().map(|(key, value)| format!("{key} = {}\n", toml_quote(value))).collect()
            }
        }
    };
}

settings! {
    /// Public listener address, `host:port`. HTTP/1.1 and HTTP/2 (prior knowledge, h2c) are detected per connection.
    pub listen: SocketAddr = "0.0.0.0:8080", ADDR, flag "ADDR";
    /// The app: `http://host:port`, `https://host:port` or `unix:/path/to.sock`. Host names are resolved at connect time; the port defaults to 80/443.
    pub upstream: UpstreamAddr = "http://127.0.0.1:8081", UPSTREAM, flag "URL";
    /// Protocol spoken to the app: `auto` sends gRPC requests (`content-type: application/grpc*`) over HTTP/2 (h2c, or ALPN `h2` to an `https://` app) and everything else, WebSocket upgrades included, over HTTP/1.1, so HTTP/1 apps, gRPC apps and apps serving both on one port work unchanged; `http1` or `http2` sends every request over that one (`http2` for an h2c-only app that is not gRPC).
    pub upstream_protocol: UpstreamProtocol = "auto", PROTOCOL;
    /// Admin listener (probes, metrics), `host:port`. Never serves proxied traffic.
    pub admin_listen: SocketAddr = "0.0.0.0:9901", ADDR, flag "ADDR";
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,outrider::proxy=debug` (ASCII; spaces around the commas are ignored).
    pub log: String = "info", LOG_FILTER, flag "FILTER";
    /// `json`, `pretty`, or `auto`: pretty when stderr is a terminal, JSON otherwise (a container).
    pub log_format: LogFormat = "auto", LOG_FORMAT, flag "FORMAT";
    /// Timeout for opening a connection to the app. Exceeded → 504.
    pub upstream_connect_timeout: Duration = "1s", duration(NONZERO, DAY);
    /// Time the app has to send its response head once the whole request, body included, has been sent (and, while the body is being sent, to go on taking it); `0` disables. Exceeded → 504. A long download is not a slow app: response bodies are bounded only by `OUTRIDER_RESPONSE_BODY_IDLE_TIMEOUT`.
    pub request_timeout: Option<Duration> = "60s", duration_or_off(DAY);
    // nginx's client_body_timeout is 60 s.
    /// A request body that stops arriving for this long before the response has begun gets `408 Request Timeout` (the app sees the request aborted); `0` disables. Once the app has answered, a quiet request body is the app's business (a streaming call).
    pub request_body_idle_timeout: Option<Duration> = "60s", duration_or_off(DAY);
    // Envoy's stream idle timeout (5 min), not nginx's proxy_read_timeout
    // (60 s): server-sent events and gRPC streams are often quiet longer.
    /// A response body from the app that stops arriving for this long, with no request body byte from the client either, is cut: the client's connection (HTTP/1) or stream (HTTP/2) is reset; `0` disables.
    pub response_body_idle_timeout: Option<Duration> = "5m", duration_or_off(DAY);
    /// Idle keep-alive connections to the app are closed after this. Keep it below the app's own keep-alive timeout.
    pub upstream_pool_idle_timeout: Duration = "30s", duration(NONZERO, DAY);
    /// Maximum idle keep-alive connections kept to the app.
    pub upstream_pool_max_idle: usize = "256", number(0, 1 << 20);
    /// Time a client has to send a complete HTTP/1 request head (slowloris bound); also the TLS handshake bound, and the idle timeout of a keep-alive connection waiting for its next request.
    pub header_read_timeout: Duration = "10s", duration(NONZERO, DAY);
    // The minimum leaves hyper room for a request line and common headers.
    /// Largest request head accepted; larger gets `431 Request Header Fields Too Large`.
    pub max_header_bytes: usize = "65536", number(8192, 16 << 20);
    /// HTTP/2 clients are sent a PING after this long without a frame from them; `0` disables. With `OUTRIDER_H2_KEEPALIVE_TIMEOUT`, a client that went silent (a dead peer, a half-open connection) is closed instead of holding a connection slot forever.
    pub h2_keepalive_interval: Option<Duration> = "30s", duration_or_off(DAY);
    /// Time an HTTP/2 client has to answer that PING before its connection is closed.
    pub h2_keepalive_timeout: Duration = "20s", duration(NONZERO, DAY);
    // nginx's send_timeout.
    /// An HTTP/1 client that takes none of its response for this long (its connection's writes blocked: it stopped reading) is disconnected; `0` disables. (An HTTP/2 client that stops reading gets no PING through and is closed by `OUTRIDER_H2_KEEPALIVE_TIMEOUT`.)
    pub send_timeout: Option<Duration> = "60s", duration_or_off(DAY);
    // nginx's http2_idle_timeout was 3 min.
    /// An HTTP/2 connection with no stream open for this long is sent a GOAWAY and closed (clients reconnect when they next need to); `0` disables.
    pub h2_idle_timeout: Option<Duration> = "3m", duration_or_off(DAY);
    /// An upgraded connection (WebSocket) with no byte either way for this long is closed; `0` disables. nginx's equivalent is 60 s, which breaks apps that ping less often.
    pub tunnel_idle_timeout: Option<Duration> = "10m", duration_or_off(DAY);
    // nginx refuses a header line over 8 KiB by default; an app that sat
    // behind no proxy may have taken larger cookies, hence twice that.
    /// Longest request line or header line (name, `: `, value) accepted; a longer header line gets 431, a longer request line 414.
    pub max_header_line_bytes: usize = "16384", number(1024, 16 << 20);
    /// Comma-separated networks (`10.0.0.0/8`, `fd00::/8`, single addresses) of front proxies whose `X-Forwarded-*`/`Forwarded` headers are believed: from them `X-Forwarded-For` is appended to and the other values stand, and the span's `client.address` is the rightmost untrusted `X-Forwarded-For` entry. From anyone else those headers are overwritten with what outrider saw. Empty: nobody is trusted.
    pub trusted_proxies: TrustedProxies = "", TRUSTED;
    /// Also send an RFC 7239 `Forwarded` header (`for`, `proto`, `host`), under the same trust rule as `X-Forwarded-*`.
    pub forwarded: bool = "false", BOOL;
    /// Add a `Via` header (`1.1 outrider`) to requests and responses.
    pub via: bool = "false", BOOL;
    /// After SIGTERM, keep accepting new connections this long while endpoint removal propagates. Must not exceed `OUTRIDER_DRAIN_TIMEOUT`.
    pub drain_delay: Duration = "5s", duration(Duration::ZERO, DAY);
    // 20s drain + 10s app stop = Kubernetes' default 30s grace period.
    /// Longest drain, counted from SIGTERM (so it includes the delay); connections still open then are closed (counted in `outrider_drain_cut_connections_total`) before the app is stopped.
    pub drain_timeout: Duration = "20s", duration(Duration::ZERO, DAY);
    /// After the drain, time between SIGTERM and SIGKILL to the app (wrap mode, or the process named by `OUTRIDER_APP_PROCESS`/`OUTRIDER_APP_PIDFILE`).
    pub app_stop_timeout: Duration = "10s", duration(Duration::ZERO, DAY);
    /// App health check behind `/readyz`: `tcp` (a connect to the upstream); an HTTP path such as `/status`, where 2xx and 3xx are healthy (HTTP/1.1, or h2c for an app that speaks only that); or `grpc` / `grpc:<service>`, the standard `grpc.health.v1.Health/Check` (the whole server, or one service), healthy only when SERVING. Real traffic counts too: a refused connection is a failure.
    pub app_health: AppHealthCheck = "tcp", HEALTH;
    /// Time between active checks once the app has started (every 100 ms before that, so readiness follows a starting app closely).
    pub app_health_interval: Duration = "2s", duration(NONZERO, DAY);
    /// Consecutive failures before a healthy app is declared unhealthy.
    pub app_health_failures: u32 = "3", number(1, 1000);
    /// Consecutive successes before an unhealthy app is declared healthy.
    pub app_health_successes: u32 = "1", number(1, 1000);
    /// Time one active check may take (connect included; never less than `OUTRIDER_UPSTREAM_CONNECT_TIMEOUT`) before it counts as a failure. `outrider inject` sets it from the app's readiness probe's `timeoutSeconds`.
    pub app_health_timeout: Duration = "1s", duration(NONZERO, Duration::from_secs(300));
    /// Requests held at once while the app refuses connections (starting, restarting); beyond that, 503 with `Retry-After`. `0` disables holding: 502 at once.
    buffer_max: usize = "1024", number(0, 1 << 20);
    /// How long a request is held waiting for the app before 503 with `Retry-After`; after one such timeout, requests fail fast until the app is healthy again. Nothing is held once the drain has started. `0` disables holding.
    buffer_timeout: Duration = "30s", duration(Duration::ZERO, DAY);
    /// Bearer token that lets a non-loopback caller use `/drain`. Without it only loopback callers may drain. Never printed.
    pub admin_token: Option<String> = "", secret(16);
    /// Pod mode with `shareProcessNamespace: true`: executable name of the app to SIGTERM after the drain.
    pub app_process: Option<AppProcess> = "", PROCESS;
    /// Pod mode: a file holding the app's PID, instead of `OUTRIDER_APP_PROCESS`.
    app_pidfile: Option<PathBuf> = "", PATH;
    /// Comma-separated route templates, e.g. `/users/{id},/orders/{id}/items`. A matching request's span is named `GET /users/{id}` and its metrics carry `http_route`; without templates the label is absent, so cardinality stays bounded whatever the paths.
    pub routes: Routes = "", ROUTES;
    /// One log line per request (target `outrider::access`): method, path, status, duration, upstream time, bytes, client, trace and span id.
    pub access_log: bool = "true", BOOL;
    /// Record the query string as `url.query` on spans. Off by default: query strings often hold tokens.
    pub trace_query: bool = "false", BOOL;
    /// Add a W3C `traceresponse` header to responses so a caller can find its trace.
    pub trace_response: bool = "false", BOOL;
    /// PEM certificate chain. With `OUTRIDER_TLS_KEY`, the public listener speaks HTTPS only (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, rustls).
    tls_cert: Option<PathBuf> = "", PATH;
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `OUTRIDER_TLS_CERT`.
    tls_key: Option<PathBuf> = "", PATH;
    /// PEM CA bundle: every client must present a certificate signed by one of these (mTLS).
    tls_client_ca: Option<PathBuf> = "", PATH;
    /// Header (e.g. `x-client-subject`) that carries the verified client certificate's subject (RFC 4514) to the app. Any copy a client sends is removed first, so it cannot be forged. Needs `OUTRIDER_TLS_CLIENT_CA`.
    tls_client_cert_header: Option<http::HeaderName> = "", HEADER;
    /// How often the certificate and key files are re-read. A changed, valid pair is used for new handshakes; open connections keep theirs; an invalid pair is logged and ignored.
    tls_reload_interval: Duration = "5s", duration(NONZERO, DAY);
    /// Client connections served at once. Beyond it outrider stops accepting and new connections wait in the kernel's accept queue.
    pub max_connections: usize = "10000", number(1, 1 << 24);
    /// Requests in flight to the app at once (load shedding); more get 503 with `Retry-After: 1` and count in `outrider_load_shed_total`. `0` = no limit.
    pub max_inflight: usize = "0", number(0, 1 << 24);
    /// PEM CA bundle that verifies an `https://` app's certificate (against the host name in `OUTRIDER_UPSTREAM`). Default: the system bundle, `/etc/ssl/certs/ca-certificates.crt`.
    pub upstream_ca: Option<PathBuf> = "", PATH;
    /// Largest request body forwarded: a larger `Content-Length` gets 413 at once; a chunked body that grows past it is cut (the app sees the request aborted) and the client gets 413. `0` = no limit; at most 1 TiB.
    pub max_body_bytes: u64 = "0", number(0, 1 << 40);

    derived {
        /// Holding requests while the app is away; `None` answers 502 at once.
        pub buffer: Option<(usize, Duration)>,
        /// HTTPS on the public listener.
        pub tls: Option<TlsConfig>,
    }
}

impl Config {
    /// The rules that span settings, once each has parsed on its own; also
    /// fills the fields that several settings feed.
    fn combine(&mut self, raw: &RawConfig) -> Result<(), ConfigError> {
        if self.drain_delay > self.drain_timeout {
            let reason = format!("must not exceed OUTRIDER_DRAIN_TIMEOUT ({})", raw.get("drain_timeout"));
            return Err(raw.invalid("drain_delay", &reason));
        }
        self.buffer = (self.buffer_max > 0 && !self.buffer_timeout.is_zero()).then_some((self.buffer_max, self.buffer_timeout));
        if let Some(file) = &self.app_pidfile {
            if self.app_process.is_some() {
                return Err(raw.invalid("app_pidfile", "set either OUTRIDER_APP_PROCESS or OUTRIDER_APP_PIDFILE, not both"));
            }
            self.app_process = Some(AppProcess::PidFile(file.clone()));
        }
        self.tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(raw.invalid("tls_client_ca", "needs OUTRIDER_TLS_CERT and OUTRIDER_TLS_KEY"));
            }
            (None, None) => None,
            (Some(_), None) => return Err(raw.invalid("tls_key", "must be set together with OUTRIDER_TLS_CERT")),
            (None, Some(_)) => return Err(raw.invalid("tls_cert", "must be set together with OUTRIDER_TLS_KEY")),
            (Some(_), Some(_)) if self.tls_client_cert_header.is_some() && self.tls_client_ca.is_none() => {
                return Err(raw.invalid("tls_client_cert_header", "needs OUTRIDER_TLS_CLIENT_CA (no client certificate otherwise)"));
            }
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
                client_cert_header: self.tls_client_cert_header.clone(),
                reload_interval: self.tls_reload_interval,
            }),
        };
        if self.upstream_ca.is_none() && matches!(&self.upstream, UpstreamAddr::Tcp { scheme, .. } if *scheme == Scheme::HTTPS) {
            let system = PathBuf::from(SYSTEM_CA_BUNDLE);
            if !system.is_file() {
                return Err(raw.invalid("upstream_ca", "an https:// upstream needs a CA bundle and the system one is missing"));
            }
            self.upstream_ca = Some(system);
        }
        Ok(())
    }

    /// Loads the configuration from the process environment, the optional
    /// file it names, and `overrides` (command-line flags).
    ///
    /// # Errors
    /// Returns a [`ConfigError`] naming the offending variable.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        // A name that is not UTF-8 can be no setting's: left out, as the
        // check of names always did. Values are read lossily, as before.
        let vars = std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.to_string_lossy().into_owned())));
        let file = std::env::var_os("OUTRIDER_CONFIG").map(|path| TomlSource::File(PathBuf::from(path)));
        Self::load_sources(vars, file, overrides)
    }

    /// [`Config::load`] with `vars` standing for the environment and `toml`
    /// for the content of the file `OUTRIDER_CONFIG` names (an
    /// `OUTRIDER_CONFIG` among `vars` is ignored). The process environment
    /// is not read: the config fuzz target and tests load through this.
    ///
    /// # Errors
    /// Returns a [`ConfigError`] naming the offending variable.
    pub fn load_from(
        vars: impl IntoIterator<Item = (String, String)>,
        toml: Option<&str>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        Self::load_sources(vars, toml.map(TomlSource::Text), overrides)
    }

    fn load_sources(
        vars: impl IntoIterator<Item = (String, String)>,
        file: Option<TomlSource<'_>>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        check_env_names(vars.iter().map(|(name, _)| name.clone()))?;
        let mut raw = RawConfig::default();
        match file {
            None => {}
            Some(TomlSource::File(path)) => {
                if !path.is_file() {
                    let (var, value) = ("OUTRIDER_CONFIG".into(), path.display().to_string());
                    return Err(ConfigError::Invalid { var, value, origin: String::new(), reason: "no such file".into() });
                }
                raw.merge_toml(Toml::file_exact(&path), &path.display().to_string())?;
            }
            Some(TomlSource::Text(text)) => raw.merge_toml(Toml::string(text), "the TOML text")?,
        }
        // Values verbatim: parsing belongs to the kinds, so a bad value gets
        // the same error whatever its source. Names match as they did when
        // figment's Env provider read them (prefix in any case, trimmed), so
        // no deployment's variable stops being read.
        for (name, value) in vars {
            if let Some((prefix, key)) = name.trim().split_at_checked(ENV_PREFIX.len())
                && prefix.eq_ignore_ascii_case(ENV_PREFIX)
            {
                raw.set_from(&key.trim().to_ascii_lowercase(), value, "");
            }
        }
        for (key, value) in &overrides.0 {
            raw.set_from(key, value.clone(), " (from command line)");
        }
        Self::try_from(raw)
    }

    /// The route templates, in order.
    pub fn routes_list(&self) -> Vec<&str> {
        (0..self.routes.len()).map(|i| self.routes.template(i)).collect()
    }
}

/// Where the TOML layer comes from.
enum TomlSource<'a> {
    /// The file `OUTRIDER_CONFIG` names.
    File(PathBuf),
    /// Its content, given directly ([`Config::load_from`]).
    Text(&'a str),
}

/// Prefix of every environment variable outrider reads.
pub const ENV_PREFIX: &str = "OUTRIDER_";

/// The longest duration any setting may declare: none of outrider's waits
/// makes sense longer, and a larger one would overflow the clock arithmetic
/// (`Instant + Duration` panics).
pub const MAX_DURATION: Duration = DAY;
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// The lower bound of a wait that zero would turn into a failure of everything.
const NONZERO: Duration = Duration::from_nanos(1);

/// Debian's (and most distributions') bundle of trusted CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One declared setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// TOML key; the variable is `OUTRIDER_` and the key in upper case.
    pub key: &'static str,
    /// As a user would write it.
    pub default: &'static str,
    pub doc: &'static str,
    /// The value name of the command-line flag, for settings that have one.
    pub flag: Option<&'static str>,
    pub range: Range,
    /// Never shown, not even in an error.
    pub secret: bool,
}

impl Setting {
    pub fn var(&self) -> String {
        var(self.key)
    }
}

/// The environment variable of a key.
fn var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// A declared bound, as the reference table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Any,
    Number(u64, u64),
    Duration(Duration, Duration),
    MinLength(usize),
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Any => Ok(()),
            Self::Number(min, max) => write!(f, "{min}–{max}"),
            Self::Duration(min, max) => write!(f, "{}–{}", format_duration(min), format_duration(max)),
            Self::MinLength(min) => write!(f, "{min}+ characters"),
        }
    }
}

/// The `## Variables` table of docs/configuration.md, which a test keeps
/// equal to the file.
pub fn reference_table() -> String {
    let row = |cells: [&str; 4]| {
        let cells: Vec<String> = cells.iter().map(|c| if c.is_empty() { " ".into() } else { format!(" {c} ") }).collect();
        format!("|{}|\n", cells.join("|"))
    };
    let code = |text: &str| if text.is_empty() { String::new() } else { format!("`{text}`") };
    let mut table = row(["Variable", "Default", "Range", "Meaning"]) + "|---|---|---|---|\n";
    table += &row(["`OUTRIDER_CONFIG`", "", "", "Path of an optional TOML file with the same keys (lower case, no prefix)."]);
    for s in SETTINGS {
        table += &row([&code(&s.var()), &code(s.default), &s.range.to_string(), s.doc]);
    }
    table
}

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

/// Every setting as text, sources merged, each with where it came from
/// (` (from FILE)`; empty for the environment and the defaults).
#[derive(Debug, Clone)]
pub struct RawConfig(BTreeMap<&'static str, (String, String)>);

impl Default for RawConfig {
    fn default() -> Self {
        Self(SETTINGS.iter().map(|s| (s.key, (s.default.to_owned(), String::new()))).collect())
    }
}

impl RawConfig {
    /// Sets a setting by key; `false` for a key that is not one.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> bool {
        self.set_from(key, value.into(), "")
    }

    fn set_from(&mut self, key: &str, value: String, origin: &str) -> bool {
        let Some(s) = SETTINGS.iter().find(|s| s.key == key) else { return false };
        self.0.insert(s.key, (value, origin.to_owned()));
        true
    }

    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", |(text, _)| text)
    }

    fn parse<T>(&self, key: &str, kind: &Kind<T>) -> Result<T, ConfigError> {
        (kind.parse)(self.get(key), kind.range).map_err(|reason| self.invalid(key, &reason))
    }

    /// The error about `key`: its variable, its text unless it is a
    /// secret, and where the text came from.
    fn invalid(&self, key: &str, reason: &str) -> ConfigError {
        let (value, origin) = self.0.get(key).cloned().unwrap_or_default();
        let value = if SETTINGS.iter().any(|s| s.key == key && s.secret) { "<redacted>".into() } else { value };
        ConfigError::Invalid { var: var(key), value, origin, reason: reason.into() }
    }

    /// Merges a TOML file; `name` says where it is, in errors.
    fn merge_toml(&mut self, toml: Data<Toml>, name: &str) -> Result<(), ConfigError> {
        use figment::value::Value;
        let values: BTreeMap<String, Value> = Figment::from(toml).extract().map_err(|e| ConfigError::Source(e.to_string()))?;
        let origin = format!(" (from {name})");
        for (key, value) in values {
            if !SETTINGS.iter().any(|s| s.key == key) {
                let hint = suggestion(&key, SETTINGS.iter().map(|s| s.key)).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
                return Err(ConfigError::Source(format!("unknown key `{key}` in {name} (OUTRIDER_CONFIG){hint}")));
            }
            // A file may say `via = true` or `max_header_bytes = 65536`.
            let text = match value {
                Value::String(_, s) => s,
                Value::Char(_, c) => c.to_string(),
                Value::Bool(_, b) => b.to_string(),
                Value::Num(_, n) => n
                    .to_u128()
                    .map(|u| u.to_string())
                    .or(n.to_i128().map(|i| i.to_string()))
                    .or(n.to_f64().map(|f| f.to_string()))
                    .unwrap_or_default(),
                other => {
                    self.set_from(&key, String::new(), &origin);
                    return Err(self.invalid(&key, &format!("expected a string, number or boolean, found {}", other.to_actual())));
                }
            };
            self.set_from(&key, text, &origin);
        }
        Ok(())
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let mut config = Self::parse_each(&raw)?;
        config.combine(&raw)?;
        Ok(config)
    }
}

/// Command-line flags that override the environment, by setting key. Only
/// flags actually given are present, so they override nothing else.
#[derive(Debug, Default, Clone)]
pub struct Overrides(BTreeMap<&'static str, String>);

impl clap::Args for Overrides {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let help = |s: &Setting| format!("{} ({})", s.doc.replace('`', ""), s.var());
        let arg = |s: &Setting, value_name| clap::Arg::new(s.key).long(s.key.replace('_', "-")).value_name(value_name).help(help(s));
        SETTINGS.iter().fold(cmd, |cmd, s| if let Some(value_name) = s.flag { cmd.arg(arg(s, value_name)) } else { cmd })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for Overrides {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let given = |s: &Setting| Some((s.key, matches.try_get_one::<String>(s.key).ok()??.clone()));
        Ok(Self(SETTINGS.iter().filter(|s| s.flag.is_some()).filter_map(given).collect()))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// Refuses an `OUTRIDER_*` variable outrider does not read: a misspelt one
/// would otherwise be ignored without a word. Kubernetes' service links are
/// let through: every pod of a namespace with a Service named `outrider`
/// gets `OUTRIDER_SERVICE_HOST`, `OUTRIDER_SERVICE_PORT[_<NAME>]`,
/// `OUTRIDER_PORT` and `OUTRIDER_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`, and
/// they must never stop a pod from starting.
fn check_env_names(names: impl Iterator<Item = String>) -> Result<(), ConfigError> {
    let service_link = |rest: &str| {
        rest == "SERVICE_HOST"
            || rest == "SERVICE_PORT"
            || rest.starts_with("SERVICE_PORT_")
            || rest == "PORT"
            || rest
                .strip_prefix("PORT_")
                .is_some_and(|n| n.split('_').next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
    };
    let known = || SETTINGS.iter().map(|s| s.key);
    for name in names {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if rest == "CONFIG" || service_link(rest) || known().any(|k| k.eq_ignore_ascii_case(rest)) {
            continue;
        }
        let hint = suggestion(&rest.to_ascii_lowercase(), known())
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

/// How a setting's text becomes its value within `range`, which the
/// reference table shows too, and the value text again for
/// `--print-config`. Errors are the reason after `invalid VAR="text": `.
struct Kind<T> {
    parse: fn(&str, Range) -> Result<T, String>,
    print: fn(&T) -> String,
    range: Range,
    secret: bool,
}

impl<T> Kind<T> {
    const fn new(parse: fn(&str, Range) -> Result<T, String>, print: fn(&T) -> String) -> Self {
        Self { parse, print, range: Range::Any, secret: false }
    }
}

/// A duration from `min` to `max`, as `250ms`, `5s` or `1m30s`.
const fn duration(min: Duration, max: Duration) -> Kind<Duration> {
    Kind { range: Range::Duration(min, max), ..Kind::new(parse_duration, |d| format_duration(*d)) }
}

/// A duration up to `max` where `0` turns the limit off.
const fn duration_or_off(max: Duration) -> Kind<Option<Duration>> {
    let parse = |text: &str, range| parse_duration(text, range).map(|d| (!d.is_zero()).then_some(d));
    Kind { range: Range::Duration(Duration::ZERO, max), ..Kind::new(parse, |d| format_duration(d.unwrap_or_default())) }
}

/// A bare number is refused: `30` could mean seconds or milliseconds, and
/// guessing wrong is worse than asking.
fn parse_duration(text: &str, range: Range) -> Result<Duration, String> {
    let d = match text.trim() {
        "0" => Duration::ZERO,
        t => humantime::parse_duration(t).map_err(|e| format!("{e}; expected a duration such as 250ms, 5s or 1m"))?,
    };
    match range {
        Range::Duration(_, max) if d > max => Err(format!("must be at most {}", format_duration(max))),
        Range::Duration(min, _) if d < min && d.is_zero() => Err("must be greater than zero".into()),
        Range::Duration(min, _) if d < min => Err(format!("must be at least {}", format_duration(min))),
        _ => Ok(d),
    }
}

/// `24h` rather than humantime's `1day`, and `0` as a user writes it.
fn format_duration(d: Duration) -> String {
    match (d.as_secs(), d.subsec_nanos()) {
        (0, 0) => "0".into(),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// A whole number from `min` to `max`.
const fn number<T: TryFrom<u64> + fmt::Display>(min: u64, max: u64) -> Kind<T> {
    let parse = |text: &str, range| {
        let n: u64 = text.trim().parse().map_err(|_| "expected a whole number")?;
        match range {
            Range::Number(min, max) if !(min..=max).contains(&n) => Err(format!("must be between {min} and {max}")),
            _ => T::try_from(n).map_err(|_| "too large".into()),
        }
    };
    Kind { range: Range::Number(min, max), ..Kind::new(parse, |n| n.to_string()) }
}

/// A secret of at least `min_len` characters; empty for none.
const fn secret(min_len: usize) -> Kind<Option<String>> {
    let parse = |text: &str, range| match (non_empty(text), range) {
        (Some(t), Range::MinLength(min)) if t.len() < min => Err(format!("must be at least {min} characters")),
        (t, _) => Ok(t.map(str::to_owned)),
    };
    let print = |s: &Option<String>| s.as_ref().map(|_| "<redacted>".to_owned()).unwrap_or_default();
    Kind { range: Range::MinLength(min_len), secret: true, ..Kind::new(parse, print) }
}

const BOOL: Kind<bool> = Kind::new(
    |text, _| match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    },
    |b| b.to_string(),
);

/// A file; empty for none.
const PATH: Kind<Option<PathBuf>> =
    Kind::new(|text, _| Ok(non_empty(text).map(PathBuf::from)), |p| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default());

const ADDR: Kind<SocketAddr> = Kind::new(
    |text, _| text.trim().parse().map_err(|_| "expected an IP socket address such as 0.0.0.0:8080 or [::]:8080".into()),
    |a| a.to_string(),
);

const UPSTREAM: Kind<UpstreamAddr> = Kind::new(
    |text, _| parse_upstream(text),
    // `unix://x` would read back as the `unix:///path` form.
    |u| match u {
        UpstreamAddr::Unix(path) if path.to_string_lossy().starts_with("//") => format!("unix://{}", path.display()),
        u => u.to_string(),
    },
);

const PROTOCOL: Kind<UpstreamProtocol> = Kind::new(
    |text, _| match text.trim().to_ascii_lowercase().as_str() {
        "auto" | "" => Ok(UpstreamProtocol::Auto),
        "http1" | "http/1.1" => Ok(UpstreamProtocol::Http1),
        "http2" | "h2c" | "h2" => Ok(UpstreamProtocol::Http2),
        _ => Err("expected auto, http1 or http2".into()),
    },
    UpstreamProtocol::to_string,
);

const LOG_FILTER: Kind<String> = Kind::new(|text, _| parse_log_filter(text), String::clone);

const LOG_FORMAT: Kind<LogFormat> = Kind::new(
    |text, _| match text.trim().to_ascii_lowercase().as_str() {
        "json" => Ok(LogFormat::Json),
        "pretty" | "text" => Ok(LogFormat::Pretty),
        "auto" | "" => Ok(LogFormat::Auto),
        _ => Err("expected json, pretty or auto".into()),
    },
    |f| {
        match f {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
            LogFormat::Auto => "auto",
        }
        .into()
    },
);

const HEALTH: Kind<AppHealthCheck> = Kind::new(
    |text, _| match text.trim() {
        "tcp" | "" => Ok(AppHealthCheck::Tcp),
        "grpc" => Ok(AppHealthCheck::Grpc(String::new())),
        path if path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok() => Ok(AppHealthCheck::HttpPath(path.to_owned())),
        text => match text.strip_prefix("grpc:") {
            // Any other character is the app's business: the name is only
            // sent, in a protobuf string, for the app to look up.
            Some(service) if !service.is_empty() && !service.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                Ok(AppHealthCheck::Grpc(service.to_owned()))
            }
            Some(_) => Err("expected a gRPC service name after grpc:, without spaces, e.g. grpc:my.package.Service".into()),
            None => Err("expected tcp, grpc, grpc:<service> or an HTTP path such as /status".into()),
        },
    },
    |h| match h {
        AppHealthCheck::Tcp => "tcp".into(),
        AppHealthCheck::HttpPath(path) => path.clone(),
        AppHealthCheck::Grpc(service) if service.is_empty() => "grpc".into(),
        AppHealthCheck::Grpc(service) => format!("grpc:{service}"),
    },
);

/// The name only: `combine` makes the other variant out of
/// `OUTRIDER_APP_PIDFILE`, which prints it.
const PROCESS: Kind<Option<AppProcess>> = Kind::new(
    |text, _| Ok(non_empty(text).map(|name| AppProcess::Name(name.to_owned()))),
    |p| if let Some(AppProcess::Name(name)) = p { name.clone() } else { String::new() },
);

const TRUSTED: Kind<TrustedProxies> = Kind::new(|text, _| TrustedProxies::parse(text), TrustedProxies::to_string);

const ROUTES: Kind<Routes> = Kind::new(
    |text, _| Routes::parse(text).map_err(|e| e.to_string()),
    |r| (0..r.len()).map(|i| r.template(i)).collect::<Vec<_>>().join(","),
);

const HEADER: Kind<Option<http::HeaderName>> = Kind::new(
    |text, _| non_empty(text).map(|h| http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| "not a valid header name".into())).transpose(),
    |h| h.as_ref().map(ToString::to_string).unwrap_or_default(),
);

fn non_empty(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|t| !t.is_empty())
}

fn parse_upstream(text: &str) -> Result<UpstreamAddr, String> {
    let v = text.trim();
    if let Some(path) = v.strip_prefix("unix:") {
        // Accept both `unix:/path` and `unix:///path`.
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err("a unix socket path must be absolute, e.g. unix:/run/app.sock".into());
        }
        return Ok(UpstreamAddr::Unix(PathBuf::from(path)));
    }
    let uri: http::Uri = v.parse().map_err(|_| "expected http://host:port or unix:/path")?;
    let (scheme, default_port) = match uri.scheme_str() {
        Some("http") => (Scheme::HTTP, 80),
        Some("https") => (Scheme::HTTPS, 443),
        _ => return Err("expected http://host:port, https://host:port or unix:/path".into()),
    };
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err("must not contain a path; outrider forwards the request's own path".into());
    }
    let authority = uri.authority().cloned().ok_or("missing host")?;
    if authority.as_str().contains('@') {
        return Err("must not contain credentials".into());
    }
    let authority = match authority.port_u16() {
        Some(_) => authority,
        None => format!("{authority}:{default_port}").parse().map_err(|_| "invalid host")?,
    };
    Ok(UpstreamAddr::Tcp { scheme, authority })
}

fn parse_log_filter(text: &str) -> Result<String, String> {
    // tracing-subscriber 0.3 slices each directive with indices taken after
    // trimming it, which panics on non-ASCII text behind leading whitespace.
    // Targets and levels are ASCII, so anything else is refused, and
    // directives are trimmed here first.
    if !text.is_ascii() {
        return Err("expected ASCII directives such as info,outrider=debug".into());
    }
    let log = text.split(',').map(str::trim).filter(|d| !d.is_empty()).collect::<Vec<_>>().join(",");
    tracing_subscriber::EnvFilter::builder().parse(&log).map_err(|e| e.to_string())?;
    Ok(log)
}

/// Which protocol outrider speaks to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// Per request: gRPC over HTTP/2, everything else over HTTP/1.1.
    Auto,
    Http1,
    Http2,
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        })
    }
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
    /// The standard gRPC health service, for this service name (empty:
    /// the whole server).
    Grpc(String),
}

/// Pod mode with a shared process namespace: the app to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppProcess {
    Name(String),
    PidFile(PathBuf),
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

    fn load_with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        for (var, value) in vars {
            assert!(raw.set(&var.trim_start_matches(ENV_PREFIX).to_ascii_lowercase(), *value), "{var} is no setting");
        }
        Config::try_from(raw)
    }

    /// `--print-config` output, read back as a file would be.
    fn reload(printed: &str) -> Config {
        let mut raw = RawConfig::default();
        raw.merge_toml(Toml::string(printed), "printed").unwrap();
        Config::try_from(raw).unwrap()
    }

    #[test]
    fn printed_strings_are_valid_toml() {
        for value in ["plain", "quote \" and backslash \\", "new\nline, tab\t, bell\u{7}, del\u{7f}"] {
            let printed = format!("key = {}\n", toml_quote(value));
            let parsed: BTreeMap<String, String> = figment::Figment::from(Toml::string(&printed)).extract().expect("valid TOML");
            assert_eq!(parsed["key"], value, "{printed}");
        }
    }

    #[test]
    fn every_default_parses_and_prints_back() {
        let c = Config::try_from(RawConfig::default()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.request_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:8081");
        assert_eq!(c.buffer, Some((1024, Duration::from_secs(30))));
        assert!(c.tls.is_none() && c.app_process.is_none() && c.admin_token.is_none());
        let printed = c.to_toml();
        assert_eq!(printed.lines().count(), SETTINGS.len(), "{printed}");
        for (line, s) in printed.lines().zip(SETTINGS) {
            assert!(line.starts_with(&format!("{} = ", s.key)), "{line}");
        }
        assert_eq!(reload(&printed).to_toml(), printed);
    }

    #[test]
    fn settings_are_named_once_and_as_variables_can_be() {
        let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), SETTINGS.len(), "a key is declared twice");
        for s in SETTINGS {
            assert!(s.key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{}", s.key);
            assert!(!s.doc.is_empty() && !s.doc.contains('|') && !s.doc.contains('\n'), "{}: doc must be one table cell", s.key);
            assert_ne!(s.key, "config", "OUTRIDER_CONFIG names the file, it is not a key in it");
        }
    }

    /// Every duration has an upper bound of at most a day, and the parser
    /// enforces the bound the table shows.
    #[test]
    fn every_duration_is_bounded_by_a_day() {
        let mut durations = 0;
        for s in SETTINGS {
            let is_duration = humantime::parse_duration(s.default).is_ok_and(|d| !d.is_zero());
            let Range::Duration(_, max) = s.range else {
                assert!(!is_duration, "{} defaults to a duration but declares no duration bound", s.key);
                continue;
            };
            durations += 1;
            assert!(max <= MAX_DURATION, "{}", s.key);
            let over = humantime::format_duration(max + Duration::from_secs(1)).to_string();
            let e = load_with(&[(&s.var(), &over)]).unwrap_err().to_string();
            assert!(e.contains(&format!("must be at most {}", format_duration(max))), "{e}");
        }
        assert!(durations >= 10, "{durations}");
    }

    #[test]
    fn numbers_refuse_what_is_past_their_bounds() {
        for s in SETTINGS {
            if let Range::Number(min, max) = s.range {
                assert!(load_with(&[(&s.var(), &max.to_string())]).is_ok(), "{}", s.key);
                assert!(load_with(&[(&s.var(), &min.to_string())]).is_ok(), "{}", s.key);
                if max < u64::MAX {
                    let e = load_with(&[(&s.var(), &(max + 1).to_string())]).unwrap_err().to_string();
                    assert!(e.contains(&format!("must be between {min} and {max}")), "{e}");
                }
            }
        }
    }

    #[test]
    fn the_reference_table_is_made_of_the_declarations() {
        let table = reference_table();
        assert_eq!(table.lines().count(), 2 + 1 + SETTINGS.len());
        for (row, s) in table.lines().skip(3).zip(SETTINGS) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!(cells[1], format!("`{}`", s.var()));
            assert_eq!(cells[2].trim_matches('`'), s.default);
            assert_eq!(cells[4], s.doc);
        }
        assert!(table.contains("| `OUTRIDER_REQUEST_TIMEOUT` | `60s` | 0–24h | "), "{table}");
        assert!(table.contains("| `OUTRIDER_UPSTREAM_CONNECT_TIMEOUT` | `1s` | 1ns–24h | "), "{table}");
        assert!(table.contains("| `OUTRIDER_MAX_HEADER_BYTES` | `65536` | 8192–16777216 | "), "{table}");
    }

    #[test]
    fn flags_come_from_the_declarations() {
        use clap::{Args, FromArgMatches};
        let cmd = Overrides::augment_args(clap::Command::new("outrider"));
        let flags: Vec<&str> = cmd.get_arguments().filter_map(clap::Arg::get_long).collect();
        assert_eq!(flags, ["listen", "upstream", "admin-listen", "log", "log-format"]);
        let matches = cmd.try_get_matches_from(["outrider", "--admin-listen", "127.0.0.1:1", "--log", "debug"]).unwrap();
        let overrides = Overrides::from_arg_matches(&matches).unwrap();
        assert_eq!(overrides.0, BTreeMap::from([("admin_listen", "127.0.0.1:1".to_owned()), ("log", "debug".to_owned())]));
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
        let e = load_with(&[("OUTRIDER_LOG_FORMAT", "xml")]).unwrap_err().to_string();
        assert_eq!(e, "invalid OUTRIDER_LOG_FORMAT=\"xml\": expected json, pretty or auto");
        let e = load_with(&[("OUTRIDER_UPSTREAM_PROTOCOL", "http3")]).unwrap_err().to_string();
        assert_eq!(e, "invalid OUTRIDER_UPSTREAM_PROTOCOL=\"http3\": expected auto, http1 or http2");
    }

    #[test]
    fn file_values_are_text_numbers_or_booleans_and_errors_name_the_file() {
        let mut raw = RawConfig::default();
        raw.merge_toml(Toml::string("via = true\nmax_inflight = 7\nrequest_timeout = \"soon\""), "f.toml").unwrap();
        assert!(raw.set("request_timeout", "1s"));
        let c = Config::try_from(raw.clone()).unwrap();
        assert!(c.via && c.max_inflight == 7);
        let e = raw.merge_toml(Toml::string("drain_delay = \"1h\""), "f.toml").and_then(|()| Config::try_from(raw).map(drop));
        assert_eq!(
            e.unwrap_err().to_string(),
            "invalid OUTRIDER_DRAIN_DELAY=\"1h\" (from f.toml): must not exceed OUTRIDER_DRAIN_TIMEOUT (20s)"
        );
        let e = RawConfig::default().merge_toml(Toml::string("listen = [1]"), "f.toml").unwrap_err().to_string();
        assert!(e.starts_with("invalid OUTRIDER_LISTEN=\"\" (from f.toml): expected a string, number or boolean"), "{e}");
        let e = RawConfig::default().merge_toml(Toml::string("[listen]\nx = 1"), "f.toml").unwrap_err().to_string();
        assert!(e.starts_with("invalid OUTRIDER_LISTEN="), "{e}");
        let e = RawConfig::default().merge_toml(Toml::string("[lisen]\nx = 1"), "f.toml").unwrap_err().to_string();
        assert_eq!(e, "unknown key `lisen` in f.toml (OUTRIDER_CONFIG); did you mean `listen`?");
    }

    #[test]
    fn load_from_layers_text_environment_and_flags_like_load() {
        use clap::{Args, FromArgMatches};
        let cmd = Overrides::augment_args(clap::Command::new("outrider"));
        let overrides = Overrides::from_arg_matches(&cmd.try_get_matches_from(["outrider", "--log", "debug"]).unwrap()).unwrap();
        let vars = [("OUTRIDER_LISTEN", "127.0.0.1:2"), ("OUTRIDER_LOG", "warn"), ("OUTRIDER_CONFIG", "/nonexistent"), ("PATH", "/bin")];
        let vars = vars.map(|(k, v)| (k.to_owned(), v.to_owned()));
        let toml = "listen = \"127.0.0.1:1\"\nvia = true\nlog = \"error\"";
        let c = Config::load_from(vars.clone(), Some(toml), &overrides).unwrap();
        assert_eq!((c.listen, c.via, c.log.as_str()), ("127.0.0.1:2".parse().unwrap(), true, "debug"));
        let e = Config::load_from(vars, Some("lisen = 1"), &overrides).unwrap_err().to_string();
        assert_eq!(e, "unknown key `lisen` in the TOML text (OUTRIDER_CONFIG); did you mean `listen`?");
        let e = Config::load_from([("OUTRIDER_LISTN".to_owned(), String::new())], None, &Overrides::default()).unwrap_err().to_string();
        assert!(e.starts_with("unknown variable OUTRIDER_LISTN; did you mean OUTRIDER_LISTEN?"), "{e}");
    }

    #[test]
    fn cross_setting_rules() {
        let e = load_with(&[("OUTRIDER_DRAIN_DELAY", "30s")]).unwrap_err().to_string();
        assert_eq!(e, "invalid OUTRIDER_DRAIN_DELAY=\"30s\": must not exceed OUTRIDER_DRAIN_TIMEOUT (20s)");
        assert_eq!(load_with(&[("OUTRIDER_BUFFER_TIMEOUT", "0")]).unwrap().buffer, None);
        assert_eq!(load_with(&[("OUTRIDER_BUFFER_MAX", "0")]).unwrap().buffer, None);
        let e = load_with(&[("OUTRIDER_APP_PROCESS", "app"), ("OUTRIDER_APP_PIDFILE", "/run/app.pid")]).unwrap_err().to_string();
        assert!(e.starts_with("invalid OUTRIDER_APP_PIDFILE=\"/run/app.pid\": set either"), "{e}");
        let c = load_with(&[("OUTRIDER_APP_PIDFILE", " /run/app.pid ")]).unwrap();
        assert_eq!(c.app_process, Some(AppProcess::PidFile("/run/app.pid".into())));
        assert!(c.to_toml().contains("app_process = \"\"\napp_pidfile = \"/run/app.pid\"\n"));
        let e = load_with(&[("OUTRIDER_TLS_CERT", "/c.pem")]).unwrap_err().to_string();
        assert!(e.starts_with("invalid OUTRIDER_TLS_KEY=\"\""), "{e}");
        let e = load_with(&[("OUTRIDER_TLS_CLIENT_CA", "/ca.pem")]).unwrap_err().to_string();
        assert!(e.contains("needs OUTRIDER_TLS_CERT and OUTRIDER_TLS_KEY"), "{e}");
        let tls = [("OUTRIDER_TLS_CERT", "/c.pem"), ("OUTRIDER_TLS_KEY", "/k.pem"), ("OUTRIDER_TLS_CLIENT_CERT_HEADER", "X-Subject")];
        let e = load_with(&tls).unwrap_err().to_string();
        assert!(e.contains("needs OUTRIDER_TLS_CLIENT_CA"), "{e}");
        let c =
            load_with(&[tls[0], tls[1], tls[2], ("OUTRIDER_TLS_CLIENT_CA", "/ca.pem"), ("OUTRIDER_TLS_RELOAD_INTERVAL", "1m")]).unwrap();
        let t = c.tls.as_ref().unwrap();
        assert_eq!((t.cert.to_str(), t.client_cert_header.as_ref().map(|h| h.as_str())), (Some("/c.pem"), Some("x-subject")));
        assert_eq!(t.reload_interval, Duration::from_secs(60));
        assert_eq!(reload(&c.to_toml()).to_toml(), c.to_toml());
    }

    #[test]
    fn upstream_forms() {
        let parse = parse_upstream;
        assert_eq!(parse("unix:/run/a.sock").unwrap(), UpstreamAddr::Unix("/run/a.sock".into()));
        assert_eq!(parse("unix:///run/a.sock").unwrap(), UpstreamAddr::Unix("/run/a.sock".into()));
        assert!(parse("unix:relative.sock").is_err());
        assert!(parse("http://a:1/path").is_err());
        assert_eq!(parse("http://app").unwrap().to_string(), "http://app:80");
        assert_eq!(parse("https://app").unwrap().to_string(), "https://app:443");
        assert!(parse("http://u:p@a:1").is_err());
        assert_eq!(parse("http://app:8081/").unwrap().to_string(), "http://app:8081");
        let c = load_with(&[("OUTRIDER_UPSTREAM", "unix:////run/a.sock")]).unwrap();
        assert_eq!(reload(&c.to_toml()).upstream, UpstreamAddr::Unix("//run/a.sock".into()));
    }

    #[test]
    fn health_checks() {
        let check = |text: &str| load_with(&[("OUTRIDER_APP_HEALTH", text)]).map(|c| c.app_health);
        assert_eq!(check(" tcp ").unwrap(), AppHealthCheck::Tcp);
        assert_eq!(check("/status?full=1").unwrap(), AppHealthCheck::HttpPath("/status?full=1".into()));
        assert_eq!(check("grpc").unwrap(), AppHealthCheck::Grpc(String::new()));
        assert_eq!(check("grpc:my.pkg.v1.Service").unwrap(), AppHealthCheck::Grpc("my.pkg.v1.Service".into()));
        for (text, shown) in [("grpc", "grpc"), ("grpc:a.B", "grpc:a.B"), ("/healthz", "/healthz"), ("tcp", "tcp")] {
            let c = load_with(&[("OUTRIDER_APP_HEALTH", text)]).unwrap();
            assert!(c.to_toml().contains(&format!("app_health = \"{shown}\"\n")), "{text}");
            assert_eq!(reload(&c.to_toml()).app_health, c.app_health);
        }
        for bad in ["grpc: bad name", "grpc:a\tb", "grpc:a\u{7f}", "grpc:", "grpcx", "status"] {
            let e = check(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid OUTRIDER_APP_HEALTH={bad:?}: expected")), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = load_with(&[("OUTRIDER_ADMIN_TOKEN", "0123456789abcdef-secret")]).unwrap();
        assert!(!c.to_toml().contains("secret"));
        assert!(c.to_toml().contains("admin_token = \"<redacted>\""));
        let e = load_with(&[("OUTRIDER_ADMIN_TOKEN", "short-secret")]).unwrap_err().to_string();
        assert_eq!(e, "invalid OUTRIDER_ADMIN_TOKEN=\"<redacted>\": must be at least 16 characters");
    }
}
