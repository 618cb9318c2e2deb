//! The body of every response the proxy gives: the app's, streamed (and
//! feeding the HTTP/1 connection it arrives on), or outrider's own short
//! answer; either way with the [`Outcome`] telemetry reads.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::{error::ProxyError, pool::Lease};
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
        })
    }

    /// Outrider's answer for an exchange with the app that failed.
    pub(super) fn upstream_failure(error: ProxyError, cause: String) -> Response<Self> {
        let mut response = Self::error(error);
        response.body_mut().failure = Some(cause.into_boxed_str());
        response
    }

    /// The app's body, streamed.
    pub(super) fn streamed(body: Incoming, lease: Option<Lease>, upstream_time: Duration) -> Self {
        Self { inner: Either::Left(body), lease, upstream_time: Some(upstream_time), error: None, failure: None, slot: None }
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
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        let body = match &mut this.inner {
            Either::Left(body) => body,
            Either::Right(body) => return std::pin::Pin::new(body).poll_frame(cx).map_err(|never| match never {}),
        };
        let Some(lease) = this.lease.as_mut() else { return std::pin::Pin::new(body).poll_frame(cx) };
        // The body first: its next frame is often read already. Only when
        // it has none does the connection read more, and then the body
        // gets a second look rather than a wake-up of its own.
        let mut drove = false;
        loop {
            match std::pin::Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending if !drove => {
                    lease.poll_driver(cx);
                    drove = true;
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if body.is_end_stream() {
                        lease.release();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    lease.release();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.lease = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
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
        if let (Some(lease), Either::Left(body)) = (self.lease.as_mut(), &self.inner) {
            if hyper::body::Body::is_end_stream(body) {
                lease.release();
            }
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
