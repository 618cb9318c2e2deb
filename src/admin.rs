//! The admin listener: probes for the kubelet, never proxied traffic.
//!
//! Routes:
//! * `GET /livez` (alias `/health`): 200 while outrider's event loop runs.
//!   Never depends on the app, so a slow app does not get the pod killed.
//! * `GET /readyz` (alias `/ready`): 200 while outrider accepts traffic
//!   normally, 503 with a one-line reason once it drains.
//!
//! Handlers answer from in-memory state only; they never call the app.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::server::Phase;

/// What the probes read.
#[derive(Clone)]
pub struct AdminState {
    /// The proxy listener's phase: anything but `Serve` is not ready.
    pub phase: watch::Receiver<Phase>,
}

/// The admin service for one connection.
pub fn service(
    state: AdminState,
) -> impl tower::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone + Send + 'static {
    tower::service_fn(move |req: Request<Incoming>| {
        let response = route(&state, &req);
        async move { Ok(response) }
    })
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/livez" | "/health" | "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" | "/ready" => match *state.phase.borrow() {
            Phase::Serve => text(StatusCode::OK, "ready\n"),
            Phase::Drain | Phase::Close => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
