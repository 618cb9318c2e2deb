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
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
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
use tracing::{Instrument, debug, debug_span, warn};

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
        // Debug level: a span is entered and left on every poll of the
        // connection, which costs more than it tells at the default level.
        let span = debug_span!("conn", listener = name, peer = %remote);
        tracker.spawn(
            async move {
                let _slot = slot;
                let _open = open;
                let info = ConnInfo { remote, local, tls: tls.is_some(), client_subject: None };
                match tls {
                    None => drive(&builder, TokioIo::new(stream), &*make_service, info, draining, phase, handshake_timeout).await,
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
                        drive(&builder, TokioIo::new(stream), &*make_service, info, draining, phase, handshake_timeout).await;
                    }
                }
            }
            .instrument(span),
        );
    }
    debug!(listener = name, "stopped accepting");
}

/// Serves one connection to the end, draining it as the phase advances,
/// and closing an HTTP/1 connection that waits longer than `head_timeout`
/// for a request head (a slowloris, or an idle keep-alive).
///
/// That bound is one timer per connection that is only re-armed when it
/// fires, rather than hyper's `header_read_timeout`, which allocates and
/// registers a fresh timer for every request: on a busy keep-alive
/// connection the timer here is never touched at all.
async fn drive<I, M, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    make_service: &M,
    info: ConnInfo,
    draining: &'static AtomicBool,
    mut phase: watch::Receiver<Phase>,
    head_timeout: Duration,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    M: Fn(ConnInfo) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = Arc::new(ConnState::new());
    let service = InPlace(std::cell::RefCell::new(ConnService { inner: make_service(info), draining, state: state.clone() }));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let idle = tokio::time::sleep(head_timeout);
    tokio::pin!(idle);
    let (mut drain, mut goaway_sent) = (false, false);
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            () = reached(&mut phase, if drain { Phase::Close } else { Phase::Drain }) => {
                if !drain {
                    drain = true;
                } else {
                    // The listener has closed: HTTP/1 connections that are
                    // idle close now, busy ones after their response.
                    if !goaway_sent {
                        conn.as_mut().graceful_shutdown();
                    }
                    break conn.await;
                }
            }
            // A connection may reveal itself as HTTP/2 later.
            () = tokio::time::sleep(Duration::from_millis(50)), if drain && !goaway_sent => {}
            () = idle.as_mut() => match state.idle_deadline(head_timeout) {
                Some(deadline) if deadline <= tokio::time::Instant::now() && !state.is_h2() => {
                    debug!(timeout = ?head_timeout, "no request head within the header read timeout; closing");
                    return;
                }
                Some(deadline) => idle.as_mut().reset(deadline),
                None => idle.as_mut().reset(tokio::time::Instant::now() + head_timeout),
            },
        }
        // Until the listener closes, only HTTP/2 is told to go (GOAWAY);
        // HTTP/1.1 leaves via `Connection: close`.
        if drain && !goaway_sent && state.is_h2() {
            conn.as_mut().graceful_shutdown();
            goaway_sent = true;
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with error");
    }
}

/// What a connection's service and its driver share.
struct ConnState {
    is_h2: AtomicBool,
    /// Requests between their head and the end of their response body.
    busy: AtomicUsize,
    /// When `busy` last dropped to zero (or the connection opened), as
    /// nanoseconds since [`epoch`].
    idle_since: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        Self { is_h2: AtomicBool::new(false), busy: AtomicUsize::new(0), idle_since: AtomicU64::new(since_epoch()) }
    }

    fn is_h2(&self) -> bool {
        self.is_h2.load(Ordering::Relaxed)
    }

    /// When the connection has waited too long for its next request head;
    /// `None` while a request is in progress.
    fn idle_deadline(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
        Some(tokio::time::Instant::from_std(epoch() + idle_since + timeout))
    }
}

/// A process-wide origin, so that an instant fits in an atomic.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
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
        // The slowloris bound is `drive`'s own, cheaper timer.
        .timer(TokioTimer::new())
        .header_read_timeout(None)
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

/// The per-connection layer between hyper and the proxy: adds
/// `Connection: close` to HTTP/1 responses once the process drains, notes
/// when a connection turns out to be HTTP/2, and tells the connection's
/// driver when requests begin and end (for the idle bound).
struct ConnService<S> {
    inner: S,
    draining: &'static AtomicBool,
    state: Arc<ConnState>,
}

// === impl ConnService ===

impl<S, B> tower::Service<Request<Incoming>> for ConnService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = ConnServiceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.state.is_h2.store(true, Ordering::Relaxed);
        }
        let active = Active::begin(&self.state);
        ConnServiceFuture { inner: self.inner.call(req), close: http1.then_some(self.draining), active: Some(active) }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ConnService`].
    pub struct ConnServiceFuture<F> {
        #[pin]
        inner: F,
        close: Option<&'static AtomicBool>,
        active: Option<Active>,
    }
}

impl<F, B, E> Future for ConnServiceFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        // Checked at response time: a request that began before the drain
        // and ends during it still tells its client to go. An upgrade
        // response keeps its own `Connection: upgrade`.
        if this.close.is_some_and(|d| d.load(Ordering::Relaxed)) && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let active = this.active.take();
        Poll::Ready(Ok(response.map(|inner| Tracked { inner, _active: active })))
    }
}

/// A request in progress on its connection, from its head to the end of
/// its response body (when hyper drops the body).
struct Active(Arc<ConnState>);

impl Active {
    fn begin(state: &Arc<ConnState>) -> Self {
        state.busy.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        // Stamped before the count drops, so a reader that sees zero also
        // sees this request's end.
        self.0.idle_since.store(since_epoch(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in progress.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        _active: Option<Active>,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Decrements the open-connections gauge when the connection task ends.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
