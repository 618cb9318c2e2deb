//! Accepts connections and serves them with hyper, following the drain's
//! [`Phase`] so that the shutdown sequence can drain them in steps.
//!
//! Each connection drains itself (see [`conn`]): HTTP/2 connections get a
//! GOAWAY, HTTP/1.1 ones a `Connection: close` on their next response, and
//! idle HTTP/1.1 ones are closed only when the listener closes.
//!
//! Connections accepted *while* draining are still served, because endpoint
//! removal in Kubernetes takes seconds to propagate and those clients did
//! nothing wrong; they just do not get keep-alive.

mod conn;
mod framing;
mod head;
mod service;
mod transport;

pub use head::{HeadLimits, REASONS as REFUSED_HEAD_REASONS};
pub use transport::{NotUpgraded, OnUpgrade, Upgraded};

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::{
    body::{Body, Incoming},
    server::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{Instrument, debug, debug_span, warn};

use crate::drain::{Phase, Phases, Watch};
use conn::{Listener, Protocols};

/// What a connection's service learns about the connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The connection is TLS.
    pub tls: bool,
    /// Subject of the client's verified certificate (mTLS).
    pub client_subject: Option<Arc<str>>,
}

/// Knobs for the HTTP server side of a listener.
#[derive(Clone)]
pub struct ServerOptions {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Open and total connection counters, if this listener is measured.
    pub connections: Option<(prometheus::IntGauge, prometheus::IntCounter)>,
    /// Connections served at once; further ones wait in the kernel's
    /// accept backlog rather than being accepted and dropped.
    pub max_connections: usize,
    /// Terminate TLS with this acceptor.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Check HTTP/1 request heads against these (the public listener).
    pub head: Option<HeadLimits>,
    /// HTTP/2: PING a client silent this long (`None`: never), and close
    /// its connection if the answer takes longer than the timeout.
    pub h2_keepalive: Option<(Duration, Duration)>,
    /// HTTP/2: a connection with no stream open this long gets a GOAWAY.
    pub h2_idle_timeout: Option<Duration>,
    /// HTTP/1: a client that takes none of its response this long is
    /// disconnected.
    pub send_timeout: Option<Duration>,
    /// Counts connections closed because the client went quiet, if this
    /// listener is measured.
    pub quiet: Option<QuietCounters>,
}

/// Client connections closed because the client went quiet, by the bound
/// that closed them (`outrider_connection_timeouts_total{cause}`).
#[derive(Debug, Clone)]
pub struct QuietCounters {
    /// No complete request head (or TLS handshake) within
    /// `OUTRIDER_HEADER_READ_TIMEOUT`.
    pub request_head: prometheus::IntCounter,
    /// An HTTP/2 PING not answered within `OUTRIDER_H2_KEEPALIVE_TIMEOUT`.
    pub h2_ping: prometheus::IntCounter,
    /// No HTTP/2 stream open for `OUTRIDER_H2_IDLE_TIMEOUT`.
    pub h2_idle: prometheus::IntCounter,
    /// An HTTP/1 client that took none of its response for
    /// `OUTRIDER_SEND_TIMEOUT`.
    pub send: prometheus::IntCounter,
}

/// Serves `listener` until the phase reaches [`Phase::Close`], spawning one
/// task per connection on the drain's tracker so the drain can wait for them. At
/// [`Phase::Cut`] (the drain timeout) every connection still open is closed
/// at once: HTTP/1 and HTTP/2 alike lose their socket, and their in-flight
/// requests with it.
///
/// `make_service` builds the per-connection service: it is where
/// connection-scoped facts (the peer address) enter the request path
/// without a per-request allocation.
pub async fn serve<M, S, B>(name: &'static str, listener: TcpListener, options: ServerOptions, drain: Watch, make_service: M)
where
    M: Fn(ConnInfo) -> S + Send + Sync + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + Unpin + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let protocols = Arc::new(build(&options));
    let make_service = Arc::new(make_service);
    // Read once per request by every HTTP/1 connection.
    let draining = drain.draining_flag();
    let mut phase = drain.clone();
    let head: Option<&'static HeadLimits> = options.head.clone().map(|h| &*Box::leak(Box::new(h)));
    let quiet: Option<&'static QuietCounters> = options.quiet.clone().map(|q| &*Box::leak(Box::new(q)));
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut backoff = Duration::from_millis(5);
    loop {
        // At the connection limit, stop accepting: the kernel queues new
        // connections in the backlog until a slot frees up.
        let slot = tokio::select! {
            biased;
            () = phase.reached(Phase::Close) => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = phase.reached(Phase::Close) => break,
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
        let open = options.connections.clone().map(|(active, total)| {
            total.inc();
            active.inc();
            OpenConnection(active)
        });
        let local = stream.local_addr().unwrap_or(remote);
        let protocols = protocols.clone();
        let phase = drain.phases();
        let make_service = make_service.clone();
        let tls = options.tls.clone();
        let handshake_timeout = options.header_read_timeout;
        // Debug level: a span is entered and left on every poll of the
        // connection, which costs more than it tells at the default level.
        let span = debug_span!("conn", listener = name, peer = %remote);
        drain.connections().spawn(
            async move {
                let _slot = slot;
                let _open = open;
                let listener = Listener {
                    protocols: &protocols,
                    make_service: &*make_service,
                    draining,
                    head_timeout: handshake_timeout,
                    head,
                    quiet,
                };
                let info = ConnInfo { remote, local, tls: tls.is_some(), client_subject: None };
                match tls {
                    None => conn::drive(listener, stream, info, phase).await,
                    // Boxed: the handshake's state is several KiB, and
                    // every plain connection's task would be sized for it.
                    Some(acceptor) => Box::pin(serve_tls(listener, acceptor, stream, info, phase)).await,
                }
            }
            .instrument(span),
        );
    }
    debug!(listener = name, "stopped accepting");
}

async fn serve_tls<M, S, B>(
    listener: Listener<'_, M>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    info: ConnInfo,
    phase: Phases,
) where
    M: Fn(ConnInfo) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + Unpin + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The handshake is bounded like a request head: a client that stalls
    // it is a slowloris too.
    let stream = match tokio::time::timeout(listener.head_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
        Err(_) => {
            conn::count(listener.quiet.map(|q| &q.request_head));
            return debug!("TLS handshake timed out");
        }
    };
    let client_subject = crate::tls::client_subject(stream.get_ref().1).map(Arc::from);
    let info = ConnInfo { client_subject, ..info };
    // Boxed once more: a parked connection keeps only the stream.
    conn::drive(listener, Box::new(stream), info, phase).await;
}

fn build(options: &ServerOptions) -> Protocols {
    let mut http1 = http1::Builder::new();
    http1
        // The slowloris bound is the connection's own, cheaper timer.
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // Bounds the read buffer, not the head: the head's own limit is
        // checked exactly on the request path (431), and this is twice it
        // so that hyper's cruder bound (also 431) never comes first.
        .max_buf_size(options.max_header_bytes.saturating_mul(2))
        // Small responses dominate proxy traffic; one copy beats writev.
        .writev(false);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        // A client that went silent (dead, or half-open behind a NAT, or
        // stopped mid-way through a header block) would hold its connection
        // slot forever. One that answers PINGs but opens no stream is
        // bounded by the idle timeout instead (`conn::serve_http2`).
        .keep_alive_interval(options.h2_keepalive.map(|(interval, _)| interval))
        .keep_alive_timeout(options.h2_keepalive.map_or(Duration::from_secs(20), |(_, timeout)| timeout))
        // Bounds the cost of a rapid-reset flood (CVE-2023-44487).
        .max_pending_accept_reset_streams(Some(50))
        .max_concurrent_streams(Some(1024));
    Protocols { http1, http2, h2_idle_timeout: options.h2_idle_timeout, send_timeout: options.send_timeout }
}

/// Errors that concern one failed handshake, not the listener.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// Decrements the open-connections gauge when the connection task ends.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
