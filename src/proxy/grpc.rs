//! gRPC on the request path: which requests are gRPC, the client's
//! deadline (`grpc-timeout`), and outrider's own answers in the shape a
//! gRPC client understands.
//!
//! A gRPC client reads the outcome of a call from `grpc-status`, not from
//! the HTTP status: a `502` with a text body reaches application code as
//! `UNKNOWN` or `INTERNAL`, and client libraries retry neither. So for a
//! gRPC request every answer outrider makes itself becomes `200` with
//! `grpc-status` and `grpc-message` in the headers and no body (a
//! "trailers-only" response), with the code a client acts on: `UNAVAILABLE`
//! (retryable) when the app could not be reached, `DEADLINE_EXCEEDED` when
//! it was too slow, `RESOURCE_EXHAUSTED` when a limit refused the call.
//! The mapping follows Envoy's for its local replies.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response, StatusCode, header::CONTENT_TYPE};

use super::{body::ProxyBody, error::ProxyError};
use crate::grpc::{GRPC_MESSAGE, GRPC_STATUS, timeout};

/// gRPC status codes outrider answers with.
mod code {
    pub const CANCELLED: u8 = 1;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
}

/// The gRPC status, and its message, for one of outrider's own answers.
pub fn status(error: ProxyError) -> (u8, &'static str) {
    match error {
        ProxyError::ConnectRefused => (code::UNAVAILABLE, "outrider: the app refused the connection"),
        ProxyError::ConnectTimeout => (code::UNAVAILABLE, "outrider: connecting to the app timed out"),
        ProxyError::Unavailable => (code::UNAVAILABLE, "outrider: the app is unavailable"),
        ProxyError::Reset => (code::UNAVAILABLE, "outrider: the app closed the connection before answering"),
        ProxyError::Protocol => (code::INTERNAL, "outrider: the app's answer was not valid HTTP"),
        ProxyError::Timeout => (code::DEADLINE_EXCEEDED, "outrider: no answer from the app within the deadline"),
        ProxyError::RequestBodyTimeout => (code::DEADLINE_EXCEEDED, "outrider: the request stream stalled before the app answered"),
        ProxyError::ResponseBodyTimeout => (code::DEADLINE_EXCEEDED, "outrider: the app's response stream stalled"),
        ProxyError::Overloaded => (code::RESOURCE_EXHAUSTED, "outrider: too many calls in flight to the app"),
        ProxyError::PayloadTooLarge => (code::RESOURCE_EXHAUSTED, "outrider: request larger than OUTRIDER_MAX_BODY_BYTES"),
        ProxyError::ClientAborted => (code::CANCELLED, "outrider: the client's request stream failed"),
        ProxyError::MethodNotAllowed => (code::UNIMPLEMENTED, "outrider: method not allowed"),
    }
}

/// Rewrites outrider's own answer to a gRPC request as a trailers-only
/// gRPC response; the app's answers pass untouched.
fn reshape(response: &mut Response<ProxyBody>) {
    let Some(error) = response.body().own_answer() else { return };
    let (code, message) = status(error);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.clear();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(&GRPC_STATUS, HeaderValue::from(u16::from(code)));
    // The messages are plain ASCII without `%`: nothing to percent-encode.
    headers.insert(&GRPC_MESSAGE, HeaderValue::from_static(message));
    response.body_mut().clear_own_answer();
}

/// The layer, first on the proxy's request path (inside telemetry, which
/// then sees the status the client gets): for gRPC requests, bounds the
/// wait for the app's response head by the client's deadline, and
/// reshapes outrider's own answers.
#[derive(Clone)]
pub(super) struct Grpc<S> {
    pub(super) inner: S,
}

impl<S, B> tower::Service<Request<B>> for Grpc<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = GrpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !crate::grpc::is_call(req.method(), req.headers()) {
            return GrpcFuture { inner: self.inner.call(req), grpc: false, deadline: None };
        }
        // Boxed: a timer is large, and only a call with a deadline has one.
        let deadline = timeout(req.headers()).map(|limit| Box::pin(tokio::time::sleep(limit)));
        GrpcFuture { inner: self.inner.call(req), grpc: true, deadline }
    }
}

/// The response future: the inner one, raced against the client's
/// deadline. Dropping the inner future at the deadline cancels the call
/// at the app too (an HTTP/2 stream is reset, an HTTP/1 connection closed).
pub(super) struct GrpcFuture<F> {
    inner: F,
    grpc: bool,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F> Future for GrpcFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(Ok(mut response)) = Pin::new(&mut this.inner).poll(cx) {
            if this.grpc {
                reshape(&mut response);
            }
            return Poll::Ready(Ok(response));
        }
        let Some(deadline) = this.deadline.as_mut() else { return Poll::Pending };
        std::task::ready!(deadline.as_mut().poll(cx));
        let mut response = ProxyBody::upstream_failure(ProxyError::Timeout, "the client's grpc-timeout passed".into());
        reshape(&mut response);
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every answer outrider makes has a gRPC code a client acts on: never
    /// OK, never UNKNOWN; the app being away is retryable (UNAVAILABLE).
    #[test]
    fn every_error_has_a_meaningful_code() {
        for error in ProxyError::ALL {
            let (code, message) = status(error);
            assert!(code != 0 && code != 2 && code <= 16, "{error:?} → {code}");
            assert!(message.is_ascii() && !message.contains('%'), "{message}");
            assert!(HeaderValue::from_str(message).is_ok());
        }
        assert_eq!(status(ProxyError::ConnectRefused).0, 14);
        assert_eq!(status(ProxyError::Unavailable).0, 14);
        assert_eq!(status(ProxyError::Timeout).0, 4);
        assert_eq!(status(ProxyError::Overloaded).0, 8);
        assert_eq!(status(ProxyError::PayloadTooLarge).0, 8);
    }

    #[test]
    fn own_answers_become_trailers_only_and_the_apps_pass() {
        let mut response = ProxyBody::error(ProxyError::ConnectRefused);
        reshape(&mut response);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[&GRPC_STATUS], "14");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        assert!(response.headers().get(http::header::RETRY_AFTER).is_none());
        assert!(hyper::body::Body::is_end_stream(response.body()), "a trailers-only answer has no body");
        // Telemetry still learns what failed.
        assert_eq!(crate::body::Outcome::error_kind(response.body()), Some(ProxyError::ConnectRefused.kind()));
    }

    /// Under paused time: a call whose app never answers gets
    /// DEADLINE_EXCEEDED at the client's deadline, and the call to the app
    /// is dropped (cancelled) then, not at outrider's own timeout.
    #[tokio::test(start_paused = true)]
    async fn the_clients_deadline_bounds_the_wait() {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let never = tower::service_fn(move |_req: Request<()>| {
            let guard = Dropped(flag.clone());
            Box::pin(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(ProxyBody::error(ProxyError::Timeout))
            })
        });
        let mut grpc = Grpc { inner: never };
        let req =
            Request::post("/pkg.Svc/Method").header(CONTENT_TYPE, "application/grpc").header("grpc-timeout", "1500m").body(()).unwrap();
        let started = tokio::time::Instant::now();
        let response = tower::Service::call(&mut grpc, req).await.unwrap();
        assert_eq!(started.elapsed(), std::time::Duration::from_millis(1500));
        assert_eq!(response.headers()[&GRPC_STATUS], "4");
        assert!(dropped.load(Ordering::SeqCst), "the call to the app was not cancelled");
    }
}
