//! Body wrappers shared by the request path and telemetry.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus::IntCounter;

/// The request body as the proxy forwards it: the client's stream, with
/// its bytes counted as they pass (never buffered).
pub type RequestBody = Counted<Incoming>;

/// Counts data bytes into a process-wide counter as frames pass, and
/// fails the stream once it exceeds an optional limit.
#[derive(Debug)]
pub struct Counted<B> {
    /// `None` for a body that was empty from the start (see [`Counted::empty`]).
    inner: Option<B>,
    counter: Option<&'static IntCounter>,
    seen: u64,
    limit: u64,
}

/// The request body grew past `OUTRIDER_MAX_BODY_BYTES`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: Option<&'static IntCounter>) -> Self {
        Self { inner: Some(inner), counter, seen: 0, limit: u64::MAX }
    }

    /// An empty body, for a request outrider sends again by itself.
    pub fn empty() -> Self {
        Self { inner: None, counter: None, seen: 0, limit: u64::MAX }
    }

    /// Fails the body after `limit` bytes.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let frame = match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            self.seen = self.seen.saturating_add(len);
            if let Some(counter) = self.counter {
                counter.inc_by(len);
            }
            if self.seen > self.limit {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: self.limit }))));
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

/// What the request path learned about one exchange, read by telemetry
/// from the response body it wraps (no per-request allocation).
pub trait Outcome {
    /// Time from sending to the app until its response head arrived.
    fn upstream_time(&self) -> Option<std::time::Duration>;
    /// A low-cardinality failure kind (`connect`, `timeout`, ...), if the
    /// response is outrider's own error answer.
    fn error_kind(&self) -> Option<&'static str>;
}
