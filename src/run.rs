//! Turns a [`Config`] into running parts and runs them: the listeners, the
//! proxy, the health checks, telemetry, the app, and the shutdown sequence
//! that ends them. Every long-lived task is supervised: one that ends while
//! outrider is serving fails `/livez` and stops the process non-zero.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, OnceLock},
};

use tokio::{net::TcpListener, task::JoinSet};
use tracing::{error, info};

use crate::{
    admin,
    config::{AppHealthCheck, AppProcess, Config, UpstreamAddr, UpstreamProtocol},
    drain::{self, App, DrainPlan, Phase, Shutdown},
    health::{self, Health},
    proxy::{
        self, ClientOptions, Proxy,
        connect::{Connect, Target, UpstreamTls},
        hold::{BufferOptions, Hold},
    },
    server::{self, ServerOptions},
    supervisor::{self, External, Supervisor},
    telemetry::{
        metrics::{Metrics, MetricsError},
        observe::{ObserveOptions, Observer},
        otel,
    },
    tls::{Tls, TlsOptions},
};

/// Exit code when a background task died (sysexits' `EX_SOFTWARE`).
pub const EX_SOFTWARE: i32 = 70;

/// Why outrider could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting read at start-up is wrong (exit code 2).
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Spawn(#[from] supervisor::SpawnError),
}

impl StartError {
    /// The exit code the process ends with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 2,
            Self::Spawn(e) => i32::from(e.exit_code()),
            Self::Io { .. } | Self::Metrics(_) => 1,
        }
    }
}

/// Builds every part from `config`, starts `command` as the app (wrap mode)
/// if there is one, serves until the shutdown sequence ends, and returns
/// the exit code: the app's in wrap mode, 0 in pod mode, [`EX_SOFTWARE`]
/// if a background task died.
///
/// # Errors
/// Something needed at start-up is missing or wrong; nothing is left
/// running (the app is started last).
pub async fn run(config: Config, command: Vec<String>) -> Result<i32, StartError> {
    // Bind before starting the app: a port clash must not leave it orphaned.
    let io = |what: String| move |source| StartError::Io { what, source };
    let listener = TcpListener::bind(config.listen).await.map_err(io(format!("cannot listen on {} (OUTRIDER_LISTEN)", config.listen)))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(io(format!("cannot listen on {} (OUTRIDER_ADMIN_LISTEN)", config.admin_listen)))?;

    // The bound addresses, not the configured ones: port 0 picks a free port.
    let listen_addr = listener.local_addr().map_err(io("the proxy listener's address".into()))?;
    let admin_addr = admin_listener.local_addr().map_err(io("the admin listener's address".into()))?;

    let plan = DrainPlan { delay: config.drain_delay, timeout: config.drain_timeout, app_stop_timeout: config.app_stop_timeout };

    // TLS before the app: a bad certificate must not leave it running.
    let tls = match &config.tls {
        Some(t) => Some(
            Tls::new(TlsOptions {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: t.client_ca.clone(),
                reload_interval: t.reload_interval,
            })
            .map_err(|e| StartError::Config(format!("invalid TLS configuration (OUTRIDER_TLS_*): {e}")))?,
        ),
        None => None,
    };

    let upstream_tls = tls_to_app(&config)?;
    // Telemetry before the app: a bad OTEL_* value must not leave it running.
    let metrics: &'static Metrics =
        Box::leak(Box::new(Metrics::new(&config.routes_list(), env!("CARGO_PKG_VERSION"), env!("BUILD_GIT_COMMIT"))?));
    let service_name = command
        .first()
        .and_then(|c| std::path::Path::new(c).file_name())
        .map_or_else(|| "outrider".to_owned(), |n| n.to_string_lossy().into_owned());
    let tracing = otel::Tracing::from_env(&service_name, {
        let [queue_full, rejected, export_failed] = metrics.spans_dropped.clone();
        otel::ExportCounters {
            ended: metrics.spans_ended.clone(),
            exported: metrics.spans_exported.clone(),
            queue_full,
            rejected,
            export_failed,
        }
    })
    .map_err(|e| StartError::Config(e.to_string()))?;
    let traces_to = tracing.destination.clone();
    let propagators = tracing.propagators.names();
    let observer = Observer::new(
        metrics,
        tracing,
        ObserveOptions {
            routes: config.routes.clone(),
            capture_query: config.trace_query,
            trace_response: config.trace_response,
            access_log: config.access_log,
            scheme: if config.tls.is_some() { "https" } else { "http" },
            trusted_proxies: config.trusted_proxies.clone(),
        },
    );

    // Signal handlers before the app, so a signal during its start-up is
    // handled rather than fatal.
    // A background task that dies stops outrider as a second signal would
    // (the drain skipped, the app stopped), and it exits non-zero.
    let (fatal, fatal_signals) = tokio::sync::mpsc::unbounded_channel();
    let fatal_signals = futures_util::stream::unfold(fatal_signals, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) });
    let signals = drain::os_signals().map_err(io("cannot install signal handlers".into()))?;
    let signals: drain::SignalStream = Box::pin(futures_util::stream::select(signals, fatal_signals));
    let (shutdown, drain, trigger) = Shutdown::new(signals, plan, metrics.drain_cut_connections.clone());

    let app = if command.is_empty() {
        match &config.app_process {
            Some(AppProcess::Name(name)) => App::External(External::Name(name.clone())),
            Some(AppProcess::PidFile(path)) => App::External(External::PidFile(path.clone())),
            None => App::None,
        }
    } else {
        supervisor::become_subreaper();
        App::Child(Supervisor::spawn(&command)?)
    };

    let client_options = ClientOptions {
        target: match &config.upstream {
            UpstreamAddr::Tcp { authority, .. } => Target::Tcp(authority.as_str().into()),
            UpstreamAddr::Unix(path) => Target::Unix(path.clone()),
        },
        protocol: match config.upstream_protocol {
            UpstreamProtocol::Auto => proxy::Protocol::Auto,
            UpstreamProtocol::Http1 => proxy::Protocol::Http1,
            UpstreamProtocol::Http2 => proxy::Protocol::Http2,
        },
        connect_timeout: config.upstream_connect_timeout,
        pool_idle_timeout: config.upstream_pool_idle_timeout,
        pool_max_idle: config.upstream_pool_max_idle,
        buffer: config.buffer.map(|(max, timeout)| BufferOptions { max, timeout }),
        tls: upstream_tls,
    };
    let health = Health::new(config.app_health_failures, config.app_health_successes);
    let connect = Connect::new(client_options.target.clone(), client_options.connect_timeout, client_options.tls.clone());
    let hold = Hold::new(connect.clone(), client_options.buffer, health.clone(), drain.clone());
    let held = hold.held_counter();
    let mut tasks = Supervised::default();
    // The active check connects as requests do, but straight: it reports
    // its own verdict, where the hold layer reports real traffic's.
    // The health check offers the ALPN protocol it is about to speak.
    let checkers = [connect.clone(), connect.for_http2()];
    tasks.spawn(
        "the app health check",
        health::run_checks(
            health.clone(),
            move |http2: bool| {
                let checker = checkers[usize::from(http2)].clone();
                async move { checker.connect().await.map_err(|e| e.short()) }
            },
            match &config.upstream {
                UpstreamAddr::Tcp { scheme, authority } => format!("{scheme}://{authority}"),
                UpstreamAddr::Unix(_) => "http://localhost".to_owned(),
            },
            health::CheckOptions {
                check: match &config.app_health {
                    AppHealthCheck::Tcp => health::Check::Connect,
                    AppHealthCheck::HttpPath(path) => health::Check::Http(path.clone()),
                    AppHealthCheck::Grpc(service) => health::Check::Grpc(service.clone()),
                },
                http2: config.upstream_protocol == UpstreamProtocol::Http2,
                interval: config.app_health_interval,
                failures: config.app_health_failures,
                successes: config.app_health_successes,
                timeout: config.app_health_timeout.max(config.upstream_connect_timeout),
            },
        ),
    );

    let proxy = Proxy::new(
        &proxy::ProxyOptions {
            client: client_options,
            request_timeout: config.request_timeout,
            via: config.via,
            scheme: if config.tls.is_some() { "https" } else { "http" },
            max_inflight: config.max_inflight,
            max_body_bytes: config.max_body_bytes,
            client_cert_header: config.tls.as_ref().and_then(|t| t.client_cert_header.clone()),
            trusted_proxies: config.trusted_proxies.clone(),
            forwarded: config.forwarded,
            tunnel_idle_timeout: config.tunnel_idle_timeout,
            request_body_idle_timeout: config.request_body_idle_timeout,
            response_body_idle_timeout: config.response_body_idle_timeout,
            tunnel_idle_closed: Some(metrics.connection_timeouts[3].clone()),
        },
        hold,
        drain.clone(),
    );
    let admin_options = ServerOptions {
        header_read_timeout: config.header_read_timeout,
        max_header_bytes: config.max_header_bytes,
        connections: None,
        // Probes must answer even when the proxy side is saturated.
        max_connections: 1024,
        tls: None,
        head: None,
        h2_keepalive: config.h2_keepalive_interval.map(|interval| (interval, config.h2_keepalive_timeout)),
        h2_idle_timeout: config.h2_idle_timeout,
        send_timeout: config.send_timeout,
        quiet: None,
    };
    let options = ServerOptions {
        connections: Some((metrics.connections_active.clone(), metrics.connections_total.clone())),
        max_connections: config.max_connections,
        tls: tls.as_ref().map(|t| t.acceptor.clone()),
        head: Some(server::HeadLimits {
            max_head_bytes: config.max_header_bytes,
            max_line_bytes: config.max_header_line_bytes,
            refused: server::REFUSED_HEAD_REASONS.map(|reason| metrics.refused(reason).cloned()),
        }),
        quiet: Some(server::QuietCounters {
            request_head: metrics.connection_timeouts[0].clone(),
            h2_ping: metrics.connection_timeouts[1].clone(),
            h2_idle: metrics.connection_timeouts[2].clone(),
            send: metrics.connection_timeouts[4].clone(),
        }),
        ..admin_options.clone()
    };
    if let Some(tls) = tls {
        tasks.spawn("the certificate reloader", tls.watch());
    }
    tasks.spawn(
        "the proxy listener",
        server::serve("proxy", listener, options, drain.clone(), move |conn| observer.layer(proxy.service(conn.clone()), conn)),
    );

    // The admin listener outlives the drain: probes must keep answering
    // (with 503) until the process exits, so it follows no drain.
    let failed = Arc::new(OnceLock::new());
    let admin_state = admin::AdminState {
        drain: drain.clone(),
        failed: failed.clone(),
        health,
        trigger,
        token: config.admin_token.as_deref().map(Into::into),
        metrics,
        held,
    };
    tasks.spawn(
        "the admin listener",
        server::serve("admin", admin_listener, admin_options, drain::Watch::detached(), move |conn| {
            admin::service(admin_state.clone(), conn.remote)
        }),
    );
    tokio::spawn(tasks.watch(drain, failed.clone(), fatal));

    info!(
        listen = %listen_addr,
        admin = %admin_addr,
        upstream = %config.upstream,
        upstream_protocol = %config.upstream_protocol,
        mode = match app {
            App::Child(_) => "wrap",
            _ => "sidecar",
        },
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("BUILD_GIT_COMMIT"),
        traces = %traces_to,
        propagators = %propagators,
        "outrider started"
    );
    let mut code = shutdown.run(app).await;
    if failed.get().is_some() {
        code = EX_SOFTWARE;
    }
    // Bounded: a collector that is down must not hold up the exit.
    let _ = tokio::task::spawn_blocking(move || observer.shutdown(std::time::Duration::from_secs(3))).await;
    info!(exit_code = code, "outrider stopped");
    Ok(code)
}

/// How to speak TLS to an `https://` app, offering `h2` or `http/1.1`.
fn tls_to_app(config: &Config) -> Result<Option<UpstreamTls>, StartError> {
    let (UpstreamAddr::Tcp { authority, .. }, Some(ca)) = (&config.upstream, &config.upstream_ca) else { return Ok(None) };
    let connector =
        |http2| crate::tls::client_connector(ca, http2).map_err(|e| StartError::Config(format!("invalid OUTRIDER_UPSTREAM_CA: {e}")));
    Ok(Some(UpstreamTls {
        http1: connector(false)?,
        http2: connector(true)?,
        server_name: rustls_pki_types::ServerName::try_from(authority.host().to_owned())
            .map_err(|e| StartError::Config(format!("invalid OUTRIDER_UPSTREAM host for TLS: {e}")))?,
    }))
}

/// The long-lived tasks, by name.
#[derive(Default)]
struct Supervised {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Supervised {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Waits for a task to end. The proxy listener ends by design once the
    /// drain closes it; any other end, or any end while still serving, is a
    /// fault: it is logged, recorded in `failed` (which fails `/livez`),
    /// and stops outrider through `fatal` as a second SIGTERM would.
    async fn watch(mut self, drain: drain::Watch, failed: Arc<OnceLock<String>>, fatal: tokio::sync::mpsc::UnboundedSender<i32>) {
        while let Some(done) = self.set.join_next_with_id().await {
            let (id, how) = match done {
                Ok((id, ())) if drain.phase() != Phase::Serve => {
                    self.names.remove(&id);
                    continue;
                }
                Ok((id, ())) => (id, "ended"),
                Err(e) if e.is_panic() => (e.id(), "panicked"),
                Err(e) => (e.id(), "was cancelled"),
            };
            let what = format!("{} {how}", self.names.get(&id).copied().unwrap_or("a background task"));
            error!(task = %what, "a background task died; stopping");
            let _ = failed.set(what);
            for _ in 0..2 {
                let _ = fatal.send(signal_hook::consts::SIGTERM);
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn watched(tasks: Supervised, phase: Phase) -> (Option<String>, Vec<i32>) {
        let (drain, watch) = drain::Manual::new();
        drain.advance(phase);
        let failed = Arc::new(OnceLock::new());
        let (fatal, mut signals) = tokio::sync::mpsc::unbounded_channel();
        tasks.watch(watch, failed.clone(), fatal).await;
        let mut sent = Vec::new();
        while let Ok(signal) = signals.try_recv() {
            sent.push(signal);
        }
        (failed.get().cloned(), sent)
    }

    #[tokio::test]
    async fn a_listener_that_dies_stops_outrider() {
        let mut tasks = Supervised::default();
        tasks.spawn("the app health check", std::future::pending());
        tasks.spawn("the proxy listener", async { panic!("accept loop broke") });
        let (failed, signals) = watched(tasks, Phase::Serve).await;
        assert_eq!(failed.as_deref(), Some("the proxy listener panicked"));
        assert_eq!(signals, [signal_hook::consts::SIGTERM; 2], "a second signal skips the drain");
    }

    #[tokio::test]
    async fn a_task_that_returns_while_serving_is_a_fault_too() {
        let mut tasks = Supervised::default();
        tasks.spawn("the admin listener", async {});
        let (failed, _) = watched(tasks, Phase::Serve).await;
        assert_eq!(failed.as_deref(), Some("the admin listener ended"));
    }

    #[tokio::test]
    async fn the_proxy_listener_closing_in_the_drain_is_not() {
        let mut tasks = Supervised::default();
        tasks.spawn("the proxy listener", async {});
        let (failed, signals) = watched(tasks, Phase::Close).await;
        assert_eq!(failed, None);
        assert!(signals.is_empty());
    }
}
