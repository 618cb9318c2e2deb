//! What the request path and telemetry share about bodies: the request
//! body as telemetry hands it on (its bytes counted), and the [`Outcome`]
//! a response body reports back.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus::IntCounter;

/// The client's request body, counted as it streams (never buffered).
pub type RequestBody = Counted<Incoming>;

/// Counts data bytes into a process-wide counter as frames pass.
#[derive(Debug)]
pub struct Counted<B> {
    inner: B,
    counter: Option<&'static IntCounter>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: Option<&'static IntCounter>) -> Self {
        Self { inner, counter }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let (Some(Ok(frame)), Some(counter)) = (&frame, self.counter)
            && let Some(data) = frame.data_ref()
        {
            counter.inc_by(data.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    /// For a failure of the exchange with the app (not a request refused
    /// before it was sent): the full cause, for the log line.
    fn upstream_failure(&self) -> Option<&str>;
}
