//! Accepts connections and serves them with hyper, following a [`Phase`]
//! signal so that the caller can drain them in steps.
//!
//! Each connection drains itself. When the process starts draining:
//! * HTTP/2 connections get a GOAWAY: the client finishes its open streams
//!   and opens new ones elsewhere, with no race.
//! * HTTP/1.1 connections are *not* closed while idle: a client may be
//!   writing its next request into that socket at that very moment, and it
//!   would be lost. Instead every response carries `Connection: close`, so
//!   each client leaves after its next exchange. Idle ones are closed when
//!   the listener closes (`Phase::Close`), after the drain delay.
//!
//! Connections accepted *while* draining are still served, because endpoint
//! removal in Kubernetes takes seconds to propagate and those clients did
//! nothing wrong; they just do not get keep-alive.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, Request, Response, Version, header::CONNECTION};
use hyper::body::{Body, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
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
    M: Fn(ConnInfo) -> S + Send + Sync + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = build(&options);
    let make_service = Arc::new(make_service);
    // Read once per request by every connection: a process-lifetime flag,
    // leaked so that requests need no reference count to reach it.
    let draining: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let mut watch_phase = phase.clone();
    tokio::spawn(async move {
        reached(&mut watch_phase, Phase::Drain).await;
        draining.store(true, Ordering::Relaxed);
    });
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut backoff = Duration::from_millis(5);
    loop {
        // At the connection limit, stop accepting: the kernel queues new
        // connections in the backlog until a slot frees up.
        let slot = tokio::select! {
            biased;
            () = reached(&mut phase, Phase::Close) => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
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
        let open = options.connections.clone().map(|(active, total)| {
            total.inc();
            active.inc();
            OpenConnection(active)
        });
        let local = stream.local_addr().unwrap_or(remote);
        let builder = builder.clone();
        let phase = phase.clone();
        let make_service = make_service.clone();
        let tls = options.tls.clone();
        let handshake_timeout = options.header_read_timeout;
        let span = info_span!("conn", listener = name, peer = %remote);
        tracker.spawn(
            async move {
                let _slot = slot;
                let _open = open;
                let info = ConnInfo { remote, local, tls: tls.is_some(), client_subject: None };
                match tls {
                    None => drive(&builder, TokioIo::new(stream), &*make_service, info, draining, phase).await,
                    Some(acceptor) => {
                        // The handshake is bounded like a request head:
                        // a client that stalls it is a slowloris too.
                        let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                            Err(_) => return debug!("TLS handshake timed out"),
                        };
                        let client_subject = crate::tls::client_subject(stream.get_ref().1).map(Arc::from);
                        let info = ConnInfo { client_subject, ..info };
                        drive(&builder, TokioIo::new(stream), &*make_service, info, draining, phase).await;
                    }
                }
            }
            .instrument(span),
        );
    }
    debug!(listener = name, "stopped accepting");
}

/// Serves one connection to the end, draining it as the phase advances.
async fn drive<I, M, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    make_service: &M,
    info: ConnInfo,
    draining: &'static AtomicBool,
    mut phase: watch::Receiver<Phase>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    M: Fn(ConnInfo) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let is_h2 = Arc::new(AtomicBool::new(false));
    let service = InPlace(std::cell::RefCell::new(DrainAware { inner: make_service(info), draining, is_h2: is_h2.clone() }));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = reached(&mut phase, Phase::Drain) => {
            // Until the listener closes, only HTTP/2 is told to go (GOAWAY);
            // HTTP/1.1 leaves via `Connection: close`. A connection may
            // reveal itself as HTTP/2 later.
            let mut goaway_sent = false;
            loop {
                if !goaway_sent && is_h2.load(Ordering::Relaxed) {
                    conn.as_mut().graceful_shutdown();
                    goaway_sent = true;
                }
                tokio::select! {
                    result = conn.as_mut() => break result,
                    () = reached(&mut phase, Phase::Close) => {
                        if !goaway_sent {
                            conn.as_mut().graceful_shutdown();
                        }
                        break conn.await;
                    }
                    () = tokio::time::sleep(Duration::from_millis(50)), if !goaway_sent => {}
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with error");
    }
}

/// Resolves once the phase is at least `target`. If the sender is gone the
/// process is exiting: treat that as reached.
async fn reached(phase: &mut watch::Receiver<Phase>, target: Phase) {
    let _ = phase.wait_for(|p| *p >= target).await;
}

fn build(options: &ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Slowloris bound; needs a timer to be enforced at all.
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // Bounds the request head; hyper answers 431 past it.
        .max_buf_size(options.max_header_bytes)
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

/// Calls a tower service from hyper without cloning it for each request.
///
/// hyper calls through `&self`; tower through `&mut self`, after a
/// readiness poll. hyper-util's `TowerToHyperService` bridges the two by
/// cloning the whole service stack per request. The stacks served here
/// are ready at all times (they shed load by answering, not by
/// back-pressure), so the connection keeps one and calls it in place.
struct InPlace<S>(std::cell::RefCell<S>);

/// The service was not ready, or was already being called (neither
/// happens with the services outrider builds). hyper closes the connection.
#[derive(Debug, thiserror::Error)]
#[error("service not ready")]
struct NotReady;

impl<S, B> hyper::service::Service<Request<Incoming>> for InPlace<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = NotReady;
    type Future = InPlaceFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let Ok(mut service) = self.0.try_borrow_mut() else { return InPlaceFuture::NotReady };
        match service.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Ok(())) => InPlaceFuture::Called { inner: service.call(req) },
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => InPlaceFuture::NotReady,
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`InPlace`].
    #[project = InPlaceProj]
    enum InPlaceFuture<F> {
        Called { #[pin] inner: F },
        NotReady,
    }
}

impl<F, B> Future for InPlaceFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, NotReady>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            InPlaceProj::Called { inner } => inner.poll(cx).map(|Ok(response)| Ok(response)),
            InPlaceProj::NotReady => Poll::Ready(Err(NotReady)),
        }
    }
}

/// Adds `Connection: close` to HTTP/1 responses once the process drains,
/// and notes when a connection turns out to be HTTP/2.
#[derive(Clone)]
struct DrainAware<S> {
    inner: S,
    draining: &'static AtomicBool,
    is_h2: Arc<AtomicBool>,
}

// === impl DrainAware ===

impl<S, B> tower::Service<Request<Incoming>> for DrainAware<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DrainAwareFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.is_h2.store(true, Ordering::Relaxed);
        }
        DrainAwareFuture { inner: self.inner.call(req), close: http1.then_some(self.draining) }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`DrainAware`].
    pub struct DrainAwareFuture<F> {
        #[pin]
        inner: F,
        close: Option<&'static AtomicBool>,
    }
}

impl<F, B, E> Future for DrainAwareFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        // Checked at response time: a request that began before the drain
        // and ends during it still tells its client to go. An upgrade
        // response keeps its own `Connection: upgrade`.
        if this.close.is_some_and(|d| d.load(Ordering::Relaxed)) && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}

/// Decrements the open-connections gauge when the connection task ends.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
