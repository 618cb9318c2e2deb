//! Runs the webhook: TLS with hot reload, the HTTPS listener (outrider's
//! own server: the same slow-client bounds and per-connection drain as the
//! proxy), and the shutdown on SIGTERM or SIGINT:
//!
//! 1. `/readyz` fails and connections stop being kept alive, while new
//!    ones are still accepted for [`Settings::drain_delay`] (or until a
//!    second signal): the API server keeps sending reviews to this pod
//!    until the endpoint's removal reaches it, and a refused one would
//!    leave a pod uninjected.
//! 2. The listener closes; reviews in flight finish, for at most
//!    [`IN_FLIGHT_TIMEOUT`].
//! 3. Whatever is still open is closed, and the process exits 0.

use std::{io, sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use super::{
    args::Settings,
    metrics::Metrics,
    routes::{self, State},
};
use crate::{
    drain::{self, Phase},
    server::{self, HeadLimits, ServerOptions},
    tls::{Tls, TlsError, TlsOptions},
};

/// How long reviews in flight may take to finish once the listener has
/// closed: twice the configuration's `timeoutSeconds` (5). The API server
/// has given up on a review by then; waiting longer serves nobody.
pub const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The certificate or key (exit 2: configuration).
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot handle signals: {0}")]
    Signals(#[source] io::Error),
    #[error("cannot set up the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Serves until SIGTERM or SIGINT, then shuts down as described above.
///
/// # Errors
/// The webhook cannot start (see [`StartError`]).
pub async fn run(settings: Settings) -> Result<(), StartError> {
    let tls = Tls::new(TlsOptions {
        cert: settings.tls_cert.clone(),
        key: settings.tls_key.clone(),
        client_ca: None,
        reload_interval: settings.tls_reload_interval,
    })?;
    // Before anything is served: a signal from then on is a shutdown.
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let listener = TcpListener::bind(settings.listen).await.map_err(|source| StartError::Listen { addr: settings.listen, source })?;
    let local = listener.local_addr().unwrap_or(settings.listen);
    let (drain, watch) = drain::Manual::new();
    let state = Arc::new(State { inject: settings.inject.clone(), metrics: Metrics::new()?, drain: watch.clone() });
    // The API server may speak HTTP/2 (ALPN offers it) and keeps its
    // connections open between reviews.
    let options = ServerOptions {
        // A complete request head, or TLS handshake, within this; the API
        // server sends each at once, so only a stalled client waits here.
        header_read_timeout: Duration::from_secs(10),
        // An AdmissionReview's headers are a few hundred bytes.
        max_header_bytes: 64 * 1024,
        connections: None,
        // Every API server replica keeps a few connections; the rest wait
        // in the accept backlog.
        max_connections: 1024,
        tls: Some(tls.acceptor.clone()),
        head: Some(HeadLimits { max_head_bytes: 64 * 1024, max_line_bytes: 16 * 1024, refused: [None, None, None] }),
        // A peer that vanished (an API server replica gone, a NAT that
        // forgot the connection) stops holding a slot after at most 50 s.
        h2_keepalive: Some((Duration::from_secs(30), Duration::from_secs(20))),
        h2_idle_timeout: None,
        // An HTTP/1 client that takes none of its answer for this long is
        // gone; the API server gave up on it after 5 s anyway.
        send_timeout: Some(Duration::from_secs(30)),
        quiet: None,
    };
    let watcher = tokio::spawn(tls.watch());
    let server = tokio::spawn(server::serve("webhook", listener, options, watch.clone(), move |_| routes::service(state.clone())));
    info!(
        listen = %local,
        image = %settings.inject.image,
        sidecar = ?settings.inject.sidecar,
        "webhook serving POST /inject"
    );

    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    info!(signal, drain_delay = ?settings.drain_delay, "shutting down: /readyz fails, still accepting");
    drain.advance(Phase::Drain);
    // A second signal ends the delay: whoever sends it wants out now.
    tokio::select! {
        () = tokio::time::sleep(settings.drain_delay) => {}
        _ = terminate.recv() => info!("second signal: closing the listener now"),
        _ = interrupt.recv() => info!("second signal: closing the listener now"),
    }
    drain.advance(Phase::Close);
    let _ = server.await;
    if tokio::time::timeout(IN_FLIGHT_TIMEOUT, watch.connections().wait()).await.is_err() {
        warn!(open = watch.connections().len(), "reviews still in flight after {IN_FLIGHT_TIMEOUT:?}; closing them");
    }
    drain.advance(Phase::Cut);
    watcher.abort();
    info!("webhook stopped");
    Ok(())
}
