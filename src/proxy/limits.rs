//! The request limits, first on the request path after telemetry (so what
//! they refuse is still traced, counted and logged): the methods a reverse
//! proxy cannot forward, the body size and how long it may stall, and the
//! requests in flight. (The
//! request head's own limits come earlier, in `server::head`: telemetry
//! adds headers of its own.)

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::AtomicUsize},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::{Either, Ready, ready};
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};

use super::{
    body::{InflightSlot, ProxyBody},
    error::{BodyTooLarge, ProxyError},
    idle::{Activity, Cut, IdleTimer, RequestBodyIdle},
};
use crate::body::RequestBody;

/// The request body as it goes to the app: the client's, bounded.
pub type UpstreamBody = Limited<RequestBody>;

/// The limits' settings and the in-flight count. Process-lifetime, so
/// requests reach them without a reference count.
#[derive(Debug)]
pub(super) struct Bounds {
    /// Requests in flight to the app at once; 0 = no limit.
    pub(super) max_inflight: usize,
    pub(super) inflight: AtomicUsize,
    /// Largest request body forwarded; 0 = no limit.
    pub(super) max_body_bytes: u64,
    /// A request body that stops arriving for this long, before the
    /// response has begun, fails (408).
    pub(super) request_body_idle: Option<Duration>,
    /// Any bound that needs to know how the request body is moving (its
    /// own idle bound, the response's, or the request timeout), or why it
    /// was cut (the body size limit).
    pub(super) watch_activity: bool,
}

/// The layer: refuses what it must, and otherwise passes the request on
/// with its body bounded and its in-flight slot taken.
#[derive(Clone)]
pub(super) struct Limits<S> {
    pub(super) inner: S,
    pub(super) bounds: &'static Bounds,
}

// === impl Limits ===

impl<S, B: Body> tower::Service<Request<B>> for Limits<S>
where
    S: tower::Service<Request<Limited<B>>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<ProxyBody>, Infallible>>, Slotted<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let refuse = |error| Either::Left(ready(Ok(ProxyBody::error(error))));
        if req.method() == Method::CONNECT {
            // A reverse proxy has nowhere to tunnel to.
            return refuse(ProxyError::MethodNotAllowed);
        }
        let limit = match self.bounds.max_body_bytes {
            0 => u64::MAX,
            max => {
                let declared =
                    req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > max) {
                    return refuse(ProxyError::PayloadTooLarge);
                }
                // Chunked or unknown length: enforced while streaming.
                max
            }
        };
        // Load shedding: the slot is held until the response body ends.
        let Some(slot) = InflightSlot::take(&self.bounds.inflight, self.bounds.max_inflight) else {
            return refuse(ProxyError::Overloaded);
        };
        // Only a request with a body has anything to share with its
        // response; a `GET` allocates nothing here.
        let activity = (self.bounds.watch_activity && !req.body().is_end_stream()).then(|| Arc::new(Activity::new()));
        let idle = activity.as_ref().and(self.bounds.request_body_idle.as_ref()).map(IdleTimer::new);
        let req = req.map(|body| Limited { inner: Some(body), seen: 0, limit, activity, idle });
        Either::Right(Slotted { inner: self.inner.call(req), slot })
    }
}

/// The response future, which hands the slot to the response body.
pub(super) struct Slotted<F> {
    inner: F,
    slot: Option<InflightSlot>,
}

impl<F> Future for Slotted<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut response) = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        response.body_mut().hold(self.slot.take());
        Poll::Ready(Ok(response))
    }
}

/// A request body that fails once it grows past its limit, or once it
/// stops arriving before the response has begun.
#[derive(Debug)]
pub struct Limited<B> {
    /// `None` for a body that was empty from the start (see [`Limited::empty`]).
    inner: Option<B>,
    seen: u64,
    limit: u64,
    /// Shared with the response body; `None` for a request without a body.
    activity: Option<Arc<Activity>>,
    idle: Option<IdleTimer>,
}

impl<B> Limited<B> {
    /// An empty body, for a request outrider sends again by itself.
    pub fn empty() -> Self {
        Self { inner: None, seen: 0, limit: u64::MAX, activity: None, idle: None }
    }

    /// What the response body and the request timeout learn from this one.
    pub(super) fn activity(&self) -> Option<&Arc<Activity>> {
        self.activity.as_ref()
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        let frame = match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                if let Some(activity) = &this.activity {
                    activity.end();
                }
                return Poll::Ready(None);
            }
            Poll::Pending => {
                if let Some(activity) = &this.activity {
                    activity.wait();
                    if let Some(idle) = &mut this.idle
                        && !activity.responded()
                        && idle.poll_expired(cx, None).is_ready()
                    {
                        activity.cut(Cut::Stalled);
                        return Poll::Ready(Some(Err(Box::new(RequestBodyIdle { timeout: idle.timeout() }))));
                    }
                }
                return Poll::Pending;
            }
        };
        if let Some(activity) = &this.activity {
            if let Some(idle) = &mut this.idle {
                idle.progressed();
            }
            if inner.is_end_stream() {
                activity.end();
            } else {
                activity.touch();
            }
        }
        if let Some(data) = frame.data_ref() {
            this.seen = this.seen.saturating_add(data.len() as u64);
            if this.seen > this.limit {
                if let Some(activity) = &this.activity {
                    activity.cut(Cut::TooLarge);
                }
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.limit }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
