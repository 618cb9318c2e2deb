//! The webhook's HTTP routes:
//!
//! * `POST /inject`: an AdmissionReview v1 in, the answer out (see
//!   [`super::review`]). A body over [`BODY_LIMIT`] is 413, one not sent in
//!   full within [`BODY_TIMEOUT`] is 408, one that is not an
//!   AdmissionReview v1 is 400 with the reason.
//! * `GET /healthz`: 200 while the process serves.
//! * `GET /readyz`: 200, or 503 once the shutdown has begun.
//! * `GET /metrics`: Prometheus text format 0.0.4.
//!
//! Anything else: 404, or 405 for a known path with the wrong method.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tracing::{error, info, warn};

use super::{
    metrics::{MALFORMED, Metrics},
    review::{self, Verdict},
};
use crate::{
    drain::{Phase, Watch},
    inject::Options,
    plain::{owned, respond, text},
};

/// The largest AdmissionReview accepted. The API server takes request
/// bodies of at most 3 MB, and etcd stores objects of at most 1.5 MiB by
/// default; a review holds the pod once on CREATE (twice on UPDATE): 8 MiB
/// leaves room, and bounds what a client that is not the API server can
/// make the webhook buffer.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The whole body must arrive within this. The API server gives up on the
/// webhook after `timeoutSeconds` (5) anyway; a slower body is a stalled
/// or hostile client holding a connection.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection's routes share.
pub struct State {
    pub inject: Options,
    pub metrics: Metrics,
    /// The shutdown: from [`Phase::Drain`] on, `/readyz` fails.
    pub drain: Watch,
}

/// The service for one connection.
pub fn service(
    state: Arc<State>,
) -> impl tower::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send + Unpin> + Send + Unpin + 'static
{
    // Boxed: the server needs an `Unpin` future, and one allocation per
    // admission is nothing next to parsing a pod.
    tower::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        Box::pin(async move { Ok(route(&state, req).await) })
    })
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.uri().path() {
        "/inject" if req.method() == Method::POST => inject(state, req).await,
        "/inject" => not_allowed("POST"),
        "/healthz" if get => text(StatusCode::OK, "ok\n"),
        "/readyz" if get => {
            if state.drain.phase() == Phase::Serve {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
        }
        "/metrics" if get => {
            let mut response = respond(StatusCode::OK, Bytes::from(state.metrics.encode()));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            response
        }
        "/healthz" | "/readyz" | "/metrics" => not_allowed("GET, HEAD"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn inject(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), BODY_LIMIT).collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            warn!(error = %e, "admission request body failed");
            return text(StatusCode::BAD_REQUEST, "cannot read the request body\n");
        }
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the request body took too long\n"),
    };
    let started = std::time::Instant::now();
    // On the async worker, not spawn_blocking: a review is milliseconds of
    // CPU at most (4.5 ms for the fixture's pod, unoptimised), and its only
    // client is the API server, a few reviews at a time.
    let reviewed = match review::review(&body, &state.inject) {
        Ok(reviewed) => reviewed,
        Err(e) => {
            state.metrics.count(MALFORMED);
            warn!(error = %e, bytes = body.len(), "malformed AdmissionReview");
            return owned(StatusCode::BAD_REQUEST, format!("malformed AdmissionReview: {e}\n"));
        }
    };
    let json = serde_json::to_vec(&reviewed.response);
    state.metrics.observe(started.elapsed().as_secs_f64());
    let json = match json {
        Ok(json) => json,
        Err(e) => {
            // Serialising types built in memory does not fail; if it did,
            // the API server's failurePolicy (Ignore) admits the pod.
            state.metrics.count(Verdict::Error.label());
            error!(uid = %reviewed.uid, error = %e, "cannot serialise the AdmissionReview response");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialise the response\n");
        }
    };
    state.metrics.count(reviewed.verdict.label());
    log(&reviewed);
    let mut response = respond(StatusCode::OK, Bytes::from(json));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn log(r: &review::Reviewed) {
    let outcome = r.verdict.label();
    let (uid, namespace, generate_name, name, reason) = (&r.uid, &r.namespace, &r.generate_name, &r.name, &r.reason);
    match r.verdict {
        Verdict::Error => error!(uid, namespace, generate_name, name, outcome, reason, "pod not injected"),
        Verdict::Ignored => tracing::debug!(uid, namespace, outcome, reason, "admission ignored"),
        _ => info!(uid, namespace, generate_name, name, outcome, reason, "pod admitted"),
    }
}

fn too_large() -> Response<Full<Bytes>> {
    owned(StatusCode::PAYLOAD_TOO_LARGE, format!("an AdmissionReview is at most {BODY_LIMIT} bytes\n"))
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
