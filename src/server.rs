//! Accepts connections and serves them with hyper, following a [`Phase`]
//! signal so that the caller can drain them in steps.
//!
//! Each connection drains itself: its task watches the phase and, when the
//! process starts draining, asks hyper to finish the request in flight and
//! close (`Connection: close` on HTTP/1.1, GOAWAY on HTTP/2). Connections
//! accepted *while* draining are still served, because endpoint removal in
//! Kubernetes takes seconds to propagate and those clients did nothing
//! wrong; they just do not get keep-alive.

use std::{convert::Infallible, io, net::SocketAddr, time::Duration};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

/// Where the process is in its shutdown sequence. Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation.
    Serve,
    /// Keep accepting, but close each connection after its current request.
    Drain,
    /// Stop accepting; open connections finish what they have in flight.
    Close,
}

/// What a connection's service learns about the connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// Knobs for the HTTP server side of a listener.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Serves `listener` until the phase reaches [`Phase::Close`], spawning one
/// task per connection on `tracker` so the caller can wait for them.
///
/// `make_service` builds the per-connection service: it is where
/// connection-scoped facts (the peer address) enter the request path
/// without a per-request allocation.
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    options: ServerOptions,
    mut phase: watch::Receiver<Phase>,
    tracker: TaskTracker,
    make_service: M,
) where
    M: Fn(ConnInfo) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = build(&options, true);
    // Connections accepted during the drain get one response each.
    let builder_no_keepalive = build(&options, false);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            () = reached(&mut phase, Phase::Close) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(conn) => {
                backoff = Duration::from_millis(5);
                conn
            }
            Err(e) if is_transient_accept_error(&e) => continue,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning or dying;
                // connections finishing will free descriptors.
                warn!(listener = name, error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(remote);
        let service = TowerToHyperService::new(make_service(ConnInfo { remote, local }));
        let accepted_in = *phase.borrow();
        let builder = if accepted_in == Phase::Serve { builder.clone() } else { builder_no_keepalive.clone() };
        let mut phase = phase.clone();
        let span = info_span!("conn", listener = name, peer = %remote);
        tracker.spawn(
            async move {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::pin!(conn);
                // The phase at which this connection must start closing:
                // connections from before the drain close at `Drain`,
                // those accepted during it (already without keep-alive) at
                // `Close`, once no new requests can be expected on them.
                let close_at = if accepted_in == Phase::Serve { Phase::Drain } else { Phase::Close };
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = reached(&mut phase, close_at) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with error");
                }
            }
            .instrument(span),
        );
    }
    debug!(listener = name, "stopped accepting");
}

/// Resolves once the phase is at least `target`. If the sender is gone the
/// process is exiting: treat that as reached.
async fn reached(phase: &mut watch::Receiver<Phase>, target: Phase) {
    let _ = phase.wait_for(|p| *p >= target).await;
}

fn build(options: &ServerOptions, keep_alive: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Slowloris bound; needs a timer to be enforced at all.
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // Bounds the request head; hyper answers 431 past it.
        .max_buf_size(options.max_header_bytes)
        .keep_alive(keep_alive)
        // Small responses dominate proxy traffic; one copy beats writev.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        // Bounds the cost of a rapid-reset flood (CVE-2023-44487).
        .max_pending_accept_reset_streams(Some(50))
        .max_concurrent_streams(Some(1024));
    builder
}

/// Errors that concern one failed handshake, not the listener.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}
