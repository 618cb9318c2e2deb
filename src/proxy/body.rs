//! The body of every response the proxy gives: the app's, streamed (and
//! feeding the HTTP/1 connection it arrives on), or outrider's own short
//! answer; either way with the [`Outcome`] telemetry reads.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use hyper::body::{Frame, Incoming};

use super::{
    error::ProxyError,
    idle::{Activity, IdleTimer, ResponseBodyIdle},
    pool::Lease,
};
use crate::body::Outcome;

/// Body of every response the proxy produces: the app's streamed body, or
/// a small one outrider wrote itself, plus what telemetry wants to know.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Either<Incoming, Full<Bytes>>,
    /// The HTTP/1 app connection this body arrives on: polled here, and
    /// back in the pool once the body has ended.
    lease: Option<Lease>,
    upstream_time: Option<Duration>,
    error: Option<ProxyError>,
    /// The cause of a failed exchange with the app, for the log line.
    failure: Option<Box<str>>,
    /// Released when the body is dropped, i.e. once it was sent.
    slot: Option<InflightSlot>,
    /// The app's body stopping for this long (with no request body frame
    /// either) resets the client's stream.
    idle: Option<IdleTimer>,
    activity: Option<Arc<Activity>>,
}

impl ProxyBody {
    /// Outrider's own answer for `error`.
    pub(super) fn error(error: ProxyError) -> Response<Self> {
        error.into_response().map(|body| Self {
            inner: Either::Right(body),
            lease: None,
            upstream_time: None,
            error: Some(error),
            failure: None,
            slot: None,
            idle: None,
            activity: None,
        })
    }

    /// Outrider's answer for an exchange with the app that failed.
    pub(super) fn upstream_failure(error: ProxyError, cause: String) -> Response<Self> {
        let mut response = Self::error(error);
        response.body_mut().failure = Some(cause.into_boxed_str());
        response
    }

    /// The app's body, streamed, bounded by `idle` while it stalls.
    pub(super) fn streamed(
        body: Incoming,
        lease: Option<Lease>,
        upstream_time: Duration,
        idle: Option<&'static Duration>,
        activity: Option<Arc<Activity>>,
    ) -> Self {
        Self {
            inner: Either::Left(body),
            lease,
            upstream_time: Some(upstream_time),
            error: None,
            failure: None,
            slot: None,
            idle: idle.map(IdleTimer::new),
            activity,
        }
    }

    /// What failed, when this is one of outrider's own answers (not the
    /// app's body, even one that failed later while streaming).
    pub(super) fn own_answer(&self) -> Option<ProxyError> {
        if matches!(self.inner, Either::Right(_)) { self.error } else { None }
    }

    /// Empties outrider's own answer, for a status carried in headers
    /// (gRPC's trailers-only form); what failed is still reported.
    pub(super) fn clear_own_answer(&mut self) {
        if let Either::Right(body) = &mut self.inner {
            *body = Full::default();
        }
    }

    /// Keeps the request's in-flight slot until the body is done.
    pub(super) fn hold(&mut self, slot: Option<InflightSlot>) {
        self.slot = slot;
    }
}

/// One request in flight to the app (`OUTRIDER_MAX_INFLIGHT`).
#[derive(Debug)]
pub(super) struct InflightSlot(&'static AtomicUsize);

impl InflightSlot {
    /// `Some(None)` when there is no limit: nothing to count.
    pub(super) fn take(counter: &'static AtomicUsize, max: usize) -> Option<Option<Self>> {
        if max == 0 {
            return Some(None);
        }
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok().map(|_| Some(Self(counter)))
    }
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl hyper::body::Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let body = match &mut this.inner {
            Either::Left(body) => body,
            Either::Right(body) => return Pin::new(body).poll_frame(cx).map_err(|never| match never {}),
        };
        // The body first: its next frame is often read already. Only when
        // it has none does the connection read more, and then the body
        // gets a second look rather than a wake-up of its own.
        let mut drove = false;
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => match this.lease.as_mut() {
                    Some(lease) if !drove => {
                        lease.poll_driver(cx);
                        drove = true;
                    }
                    _ => break,
                },
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(idle) = &mut this.idle {
                        idle.progressed();
                    }
                    if let (Some(lease), true) = (this.lease.as_mut(), body.is_end_stream()) {
                        lease.release();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    if let Some(lease) = this.lease.as_mut() {
                        lease.release();
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.lease = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
        // Nothing from the app: its idle bound, counted from the later of
        // this wait's start and the client's last request body frame.
        let Some(idle) = &mut this.idle else { return Poll::Pending };
        std::task::ready!(idle.poll_expired(cx, this.activity.as_ref().map(|a| a.last())));
        this.lease = None;
        this.error = Some(ProxyError::ResponseBodyTimeout);
        Poll::Ready(Some(Err(Box::new(ResponseBodyIdle { timeout: idle.timeout() }))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper stops polling a body that reports its end (known length,
        // `HEAD`, 204/304): the connection is reusable all the same.
        if let (Some(lease), Either::Left(body)) = (self.lease.as_mut(), &self.inner)
            && hyper::body::Body::is_end_stream(body)
        {
            lease.release();
        }
    }
}

impl Outcome for ProxyBody {
    fn upstream_time(&self) -> Option<Duration> {
        self.upstream_time
    }

    fn error_kind(&self) -> Option<&'static str> {
        self.error.map(ProxyError::kind)
    }

    fn upstream_failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}
