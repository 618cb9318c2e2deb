//! `outrider [flags] [-- COMMAND ARGS...]`: wires the modules together.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use outrider::{
    admin,
    config::{AppHealthCheck, AppProcess, Config, LogFormat, Overrides, UpstreamAddr, UpstreamProtocol},
    health::{self, Health},
    lifecycle::{self, App, DrainHandles, DrainPlan, Lifecycle},
    proxy::{self, Proxy, upstream},
    server::{self, Phase, ServerOptions},
    supervisor::{self, External, Supervisor},
    telemetry::{
        self,
        metrics::Metrics,
        observe::{ObserveOptions, Observer},
        otel,
    },
    tls::{Tls, TlsOptions},
};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info};

/// Exit code for a configuration or usage error.
const EX_CONFIG: u8 = 2;

/// `outrider --version`: the release and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("OUTRIDER_COMMIT"), ")");

/// A sidecar reverse proxy that gives a legacy HTTP app tracing, metrics,
/// probes and a lossless shutdown. Every flag has an OUTRIDER_* variable;
/// see docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "outrider", version = VERSION, about, long_about = None)]
struct Cli {
    /// Public listener address (OUTRIDER_LISTEN).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The app: http://host:port or unix:/path (OUTRIDER_UPSTREAM).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Admin listener address (OUTRIDER_ADMIN_LISTEN).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Log filter, EnvFilter syntax (OUTRIDER_LOG).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// json, pretty or auto (OUTRIDER_LOG_FORMAT).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// The app to start and supervise; omit to front an app started elsewhere.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `outrider wait-ready [--timeout DURATION] [--admin ADDR]`: exits 0 once
/// outrider's `/readyz` answers 200 (the linkerd-await use case).
#[derive(Debug, Parser)]
#[command(name = "outrider wait-ready")]
struct WaitReady {
    /// Give up after this long (exit 1).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Admin address; default: OUTRIDER_ADMIN_LISTEN with 0.0.0.0 read as 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
}

fn wait_ready(args: impl Iterator<Item = String>) -> ExitCode {
    let cli = match WaitReady::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EX_CONFIG } else { 0 });
        }
    };
    let addr = match cli.admin {
        Some(addr) => addr,
        None => match Config::load(&Overrides::default()) {
            Ok(config) => {
                let mut addr = config.admin_listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
                }
                addr
            }
            Err(e) => {
                eprintln!("outrider: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
    };
    let ready = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(admin::wait_ready(addr, cli.timeout)),
        Err(e) => {
            eprintln!("outrider: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if ready {
        ExitCode::SUCCESS
    } else {
        eprintln!("outrider: {addr}/readyz not ready after {}", humantime::format_duration(cli.timeout));
        ExitCode::FAILURE
    }
}

/// jemalloc rather than the C library's allocator, measured in
/// docs/performance.md ("The allocator"). musl's allocator (the image's
/// libc until it moved to static glibc) maps and unmaps memory as
/// connections come and go: a fifth fewer requests per second and 30 % more
/// kernel time per request. glibc's keeps the memory of a burst of connections for good (55 MiB
/// after 10 000 closed where 9 MiB is in use); jemalloc's background
/// thread returns it within seconds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("wait-ready") {
        return wait_ready(std::env::args().skip(1));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EX_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let overrides =
        Overrides { listen: cli.listen, upstream: cli.upstream, admin_listen: cli.admin_listen, log: cli.log, log_format: cli.log_format };
    let config = match Config::load(&overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("outrider: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let format = match config.log_format {
        LogFormat::Json => telemetry::Format::Json,
        LogFormat::Pretty => telemetry::Format::Pretty,
        LogFormat::Auto => telemetry::Format::Auto,
    };
    let _log_guard = match telemetry::init_logging(&config.log, format) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("outrider: cannot set up logging: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // One worker per CPU this process may use: std reads the affinity mask
    // and the cgroup CPU quota, so a sidecar limited to one CPU gets a
    // single-threaded runtime, which skips the work-stealing machinery.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let runtime = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cpus).enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match run(config, cli.command).await {
            Ok(code) => code,
            Err(e) if e.is::<ConfigFailure>() => {
                eprintln!("outrider: {e}");
                i32::from(EX_CONFIG)
            }
            Err(e) => {
                error!("{e:#}");
                e.downcast_ref::<supervisor::SpawnError>().map_or(1, |e| i32::from(e.exit_code()))
            }
        }
    });
    // Connection tasks may still hold sockets; do not wait for them.
    runtime.shutdown_background();
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

async fn run(config: Config, command: Vec<String>) -> anyhow::Result<i32> {
    // Bind before starting the app: a port clash must not leave it orphaned.
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {} (OUTRIDER_LISTEN)", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (OUTRIDER_ADMIN_LISTEN)", config.admin_listen))?;

    // The bound addresses, not the configured ones: port 0 picks a free port.
    let listen_addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (phase_tx, phase) = watch::channel(Phase::Serve);
    let (drain_request, drain_requested) = watch::channel(false);
    let (drained_tx, drained) = watch::channel(false);
    let connections = TaskTracker::new();
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
            .map_err(|e| ConfigFailure(format!("invalid TLS configuration (OUTRIDER_TLS_*): {e}")))?,
        ),
        None => None,
    };

    let upstream_tls = match (&config.upstream, &config.upstream_ca) {
        (UpstreamAddr::Tcp { authority, .. }, Some(ca)) => Some(upstream::UpstreamTls {
            connector: outrider::tls::client_connector(ca, config.upstream_protocol == UpstreamProtocol::Http2)
                .map_err(|e| ConfigFailure(format!("invalid OUTRIDER_UPSTREAM_CA: {e}")))?,
            server_name: rustls_pki_types::ServerName::try_from(authority.host().to_owned())
                .map_err(|e| ConfigFailure(format!("invalid OUTRIDER_UPSTREAM host for TLS: {e}")))?,
        }),
        _ => None,
    };
    // Telemetry before the app: a bad OTEL_* value must not leave it running.
    let metrics: &'static Metrics =
        Box::leak(Box::new(Metrics::new(&config.routes_list(), env!("CARGO_PKG_VERSION"), env!("OUTRIDER_COMMIT"))?));
    let service_name = command
        .first()
        .and_then(|c| std::path::Path::new(c).file_name())
        .map_or_else(|| "outrider".to_owned(), |n| n.to_string_lossy().into_owned());
    let tracing = otel::Tracing::from_env(
        &service_name,
        otel::ExportCounters { exported: metrics.spans_exported.clone(), failed: metrics.spans_export_failed.clone() },
    )
    .map_err(|e| ConfigFailure(e.to_string()))?;
    let traces_to = tracing.destination.clone();
    let observer = Observer::new(
        metrics,
        tracing,
        ObserveOptions {
            routes: config.routes.clone(),
            capture_query: config.trace_query,
            trace_response: config.trace_response,
            access_log: config.access_log,
            scheme: if config.tls.is_some() { "https" } else { "http" },
        },
    );

    // Signal handlers before the app, so a signal during its start-up is
    // handled rather than fatal.
    let handles = DrainHandles {
        draining: CancellationToken::new(),
        cut: CancellationToken::new(),
        cut_connections: metrics.drain_cut_connections.clone(),
    };
    let signals = lifecycle::os_signals().context("cannot install signal handlers")?;
    let lifecycle = Lifecycle::new(signals, phase_tx, connections.clone(), plan, drain_requested, drained_tx, handles.clone());

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

    let client_options = upstream::ClientOptions {
        target: match &config.upstream {
            UpstreamAddr::Tcp { authority, .. } => upstream::Target::Tcp(authority.as_str().into()),
            UpstreamAddr::Unix(path) => upstream::Target::Unix(path.clone()),
        },
        http2: config.upstream_protocol == UpstreamProtocol::Http2,
        connect_timeout: config.upstream_connect_timeout,
        pool_idle_timeout: config.upstream_pool_idle_timeout,
        pool_max_idle: config.upstream_pool_max_idle,
        buffer: config.buffer.map(|(max, timeout)| upstream::BufferOptions { max, timeout }),
        tls: upstream_tls,
    };
    let health = Health::new(config.app_health_failures, config.app_health_successes);
    let connector = upstream::Connector::new(&client_options, health.clone(), handles.draining.clone());
    let held = connector.held_counter();
    tokio::spawn(health::run_checks(
        health.clone(),
        connector.clone(),
        match &config.upstream {
            UpstreamAddr::Tcp { authority, .. } => authority.to_string(),
            UpstreamAddr::Unix(_) => "localhost".to_owned(),
        },
        health::CheckOptions {
            check: match &config.app_health {
                AppHealthCheck::Tcp => health::Check::Connect,
                AppHealthCheck::HttpPath(path) => health::Check::Http(path.clone()),
            },
            interval: config.app_health_interval,
            failures: config.app_health_failures,
            successes: config.app_health_successes,
            timeout: config.upstream_connect_timeout.max(std::time::Duration::from_secs(1)),
        },
    ));

    let proxy = Proxy::new(
        &proxy::ProxyOptions {
            client: client_options,
            request_timeout: config.request_timeout,
            via: config.via,
            scheme: if config.tls.is_some() { "https" } else { "http" },
            metrics: Some(metrics),
            max_inflight: config.max_inflight,
            max_body_bytes: config.max_body_bytes,
            client_cert_header: config.tls.as_ref().and_then(|t| t.client_cert_header.clone()),
        },
        connector,
        connections.clone(),
        handles.cut.clone(),
    );
    let admin_options = ServerOptions {
        header_read_timeout: config.header_read_timeout,
        max_header_bytes: config.max_header_bytes,
        connections: None,
        // Probes must answer even when the proxy side is saturated.
        max_connections: 1024,
        tls: None,
    };
    let options = ServerOptions {
        connections: Some((metrics.connections_active.clone(), metrics.connections_total.clone())),
        max_connections: config.max_connections,
        tls: tls.as_ref().map(|t| t.acceptor.clone()),
        ..admin_options.clone()
    };
    if let Some(tls) = tls {
        tokio::spawn(tls.watch());
    }
    tokio::spawn(server::serve("proxy", listener, options, phase.clone(), connections.clone(), handles.cut, move |conn| {
        observer.layer(proxy.service(conn.clone()), conn)
    }));

    // The admin listener outlives the drain: probes must keep answering
    // (with 503) until the process exits. Its phase never leaves `Serve`.
    let (admin_phase_tx, admin_phase) = watch::channel(Phase::Serve);
    let admin_state = admin::AdminState {
        phase,
        health,
        drain_request: std::sync::Arc::new(drain_request),
        drained,
        token: config.admin_token.as_deref().map(Into::into),
        metrics,
        held,
    };
    tokio::spawn(server::serve(
        "admin",
        admin_listener,
        admin_options,
        admin_phase,
        TaskTracker::new(),
        CancellationToken::new(),
        move |conn| admin::service(admin_state.clone(), conn.remote),
    ));

    info!(
        listen = %listen_addr,
        admin = %admin_addr,
        upstream = %config.upstream,
        mode = match app {
            App::Child(_) => "wrap",
            _ => "sidecar",
        },
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("OUTRIDER_COMMIT"),
        traces = %traces_to,
        "outrider started"
    );
    let code = lifecycle.run(app).await;
    // Bounded: a collector that is down must not hold up the exit.
    let _ = tokio::task::spawn_blocking(move || observer.shutdown(std::time::Duration::from_secs(3))).await;
    drop(admin_phase_tx);
    info!(exit_code = code, "outrider stopped");
    Ok(code)
}

/// A configuration error found after start-up began (e.g. an `OTEL_*`
/// value, read where it is used): still exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConfigFailure(String);
