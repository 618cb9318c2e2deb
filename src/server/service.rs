//! The per-connection layer between hyper and the service stack.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderValue, Request, Response, StatusCode,
    header::{CONNECTION, UPGRADE},
};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use tokio::sync::oneshot;
use tracing::info;

use super::{
    head::{self, HeadLimits},
    transport::{OnUpgrade, Upgraded},
};

/// What a connection's service and its driver share.
pub(super) struct ConnState {
    /// Requests between their head and the end of their response body.
    busy: AtomicUsize,
    /// When `busy` last dropped to zero (or the connection opened), as
    /// nanoseconds since [`epoch`].
    idle_since: AtomicU64,
    /// The last write to the client did not go through: hyper holds
    /// response bytes the client has not taken yet (see [`Self::wrote`]).
    write_blocked: AtomicBool,
    /// When the current spell of blocked writes began, as nanoseconds
    /// since [`epoch`] (for the send timeout); meaningful while
    /// `write_blocked` is set.
    blocked_since: AtomicU64,
    /// A `101` went out: the driver hands the connection to `upgrade`.
    switched: AtomicBool,
    /// Where an upgrade request waits for its connection. Only touched by
    /// requests that ask to upgrade.
    upgrade: Mutex<Option<oneshot::Sender<Upgraded>>>,
    /// Heads with both `Content-Length` and `Transfer-Encoding` read on
    /// this connection (counted by the transport in `conn`).
    pub(super) ambiguous_heads: AtomicUsize,
}

impl ConnState {
    pub(super) fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(since_epoch()),
            write_blocked: AtomicBool::new(false),
            blocked_since: AtomicU64::new(0),
            switched: AtomicBool::new(false),
            upgrade: Mutex::new(None),
            ambiguous_heads: AtomicUsize::new(0),
        }
    }

    /// When the last request ended (or the connection opened); `None`
    /// while a request is in progress, or its response is still being
    /// written: hyper drops a response body once its last bytes are in its
    /// write buffer, and a slow reader may take them much later.
    pub(super) fn idle_since(&self) -> Option<tokio::time::Instant> {
        if self.busy.load(Ordering::Acquire) > 0 || self.write_blocked.load(Ordering::Relaxed) {
            return None;
        }
        let idle_since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
        Some(tokio::time::Instant::from_std(epoch() + idle_since))
    }

    /// What a write (or flush) to the client just did: `blocked` when it
    /// could not go through. The idle time of a connection whose writes
    /// were blocked starts when they go through again.
    pub(super) fn wrote(&self, blocked: bool) {
        if blocked {
            // Stamped once per spell: a blocked write is retried on every
            // wake-up, and only the first one starts the send timeout.
            if !self.write_blocked.load(Ordering::Relaxed) {
                self.blocked_since.store(since_epoch(), Ordering::Relaxed);
                self.write_blocked.store(true, Ordering::Relaxed);
            }
        } else if self.write_blocked.load(Ordering::Relaxed) {
            self.idle_since.store(since_epoch(), Ordering::Relaxed);
            self.write_blocked.store(false, Ordering::Relaxed);
        }
    }

    /// Since when the client has taken none of what was written to it, if
    /// it has not.
    pub(super) fn blocked_since(&self) -> Option<tokio::time::Instant> {
        if !self.write_blocked.load(Ordering::Relaxed) {
            return None;
        }
        let since = Duration::from_nanos(self.blocked_since.load(Ordering::Relaxed));
        Some(tokio::time::Instant::from_std(epoch() + since))
    }

    /// The upgrade to hand the connection to, if a `101` was written.
    pub(super) fn take_upgrade(&self) -> Option<oneshot::Sender<Upgraded>> {
        if !self.switched.load(Ordering::Acquire) {
            return None;
        }
        self.upgrade.lock().ok()?.take()
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

/// Calls a tower service from hyper without cloning it for each request.
///
/// hyper calls through `&self`; tower through `&mut self`, after a
/// readiness poll. hyper-util's `TowerToHyperService` bridges the two by
/// cloning the whole service stack per request. The stacks served here
/// are ready at all times (they shed load by answering, not by
/// back-pressure), so the connection keeps one and calls it in place.
pub(super) struct InPlace<S>(pub(super) std::cell::RefCell<S>);

/// The service was not ready, or was already being called (neither
/// happens with the services outrider builds). hyper closes the connection.
#[derive(Debug, thiserror::Error)]
#[error("service not ready")]
pub(super) struct NotReady;

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
    pub(super) enum InPlaceFuture<F> {
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

/// Refuses an HTTP/1 head over its limits (see [`super::head`]), adds `Connection: close` to HTTP/1 responses once the
/// process drains, tells the connection's driver when requests begin and
/// end (for the idle bound and parking), and arranges the hand-over of
/// upgraded connections.
pub(super) struct ConnService<S> {
    pub(super) inner: S,
    /// `Some` on HTTP/1 connections: the process-wide draining flag.
    pub(super) close_when: Option<&'static AtomicBool>,
    pub(super) state: Arc<ConnState>,
    /// The listener's head limits, checked on HTTP/1 requests.
    pub(super) head: Option<&'static HeadLimits>,
    /// For the log line of a refused head.
    pub(super) peer: std::net::SocketAddr,
}

// === impl ConnService ===

impl<S, B> tower::Service<Request<Incoming>> for ConnService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = ConnServiceFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if let (Some(limits), Some(_)) = (self.head, self.close_when)
            && let Err(refusal) = head::check(&req, limits, &self.state.ambiguous_heads)
        {
            let (reason, i) = refusal.reason();
            if let Some(counter) = &limits.refused[i] {
                counter.inc();
            }
            info!(peer = %self.peer, reason, "refused a request head; closing the connection");
            let response = refusal.response().map(|body| Tracked { inner: Either::Right(body), _active: None });
            return ConnServiceFuture::Refused { response: Some(response) };
        }
        let upgrade = self.close_when.is_some() && req.headers().contains_key(UPGRADE);
        if upgrade {
            let (tx, on_upgrade) = OnUpgrade::pair();
            if let Ok(mut slot) = self.state.upgrade.lock() {
                *slot = Some(tx);
            }
            req.extensions_mut().insert(on_upgrade);
        }
        let active = Active::begin(&self.state);
        ConnServiceFuture::Called { inner: self.inner.call(req), close: self.close_when, upgrade, active: Some(active) }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ConnService`].
    #[project = ConnServiceProj]
    pub(super) enum ConnServiceFuture<F, B> {
        Called {
            #[pin]
            inner: F,
            close: Option<&'static AtomicBool>,
            upgrade: bool,
            active: Option<Active>,
        },
        /// The head was refused; the stack never saw the request.
        Refused { response: Option<Response<Tracked<B>>> },
    }
}

impl<F, B, E> Future for ConnServiceFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (inner, close, upgrade, active) = match self.project() {
            ConnServiceProj::Called { inner, close, upgrade, active } => (inner, close, upgrade, active),
            // Polled once: hyper does not poll a completed future.
            ConnServiceProj::Refused { response } => return response.take().map_or(Poll::Pending, |r| Poll::Ready(Ok(r))),
        };
        let mut response = std::task::ready!(inner.poll(cx))?;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let active = active.take();
        if *upgrade && let Some(active) = &active {
            active.0.switched.store(switching, Ordering::Release);
        }
        // Checked at response time: a request that began before the drain
        // and ends during it still tells its client to go. An upgrade
        // response keeps its own `Connection: upgrade`.
        if close.is_some_and(|d| d.load(Ordering::Relaxed)) && !switching {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response.map(|inner| Tracked { inner: Either::Left(inner), _active: active })))
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
    /// A response body that keeps its request counted as in progress: the
    /// stack's, or the short answer to a refused head.
    pub struct Tracked<B> {
        #[pin]
        inner: Either<B, Full<Bytes>>,
        _active: Option<Active>,
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
