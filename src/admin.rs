//! The admin listener: probes for the kubelet, the drain hook, never
//! proxied traffic.
//!
//! Routes:
//! * `GET /livez` (aliases `/health`, `/healthz`): 200 while outrider's event
//!   loop runs. Never depends on the app, so a slow app does not get the pod
//!   killed.
//! * `GET /readyz` (alias `/ready`): 200 when the app is healthy **and**
//!   outrider is not draining; else 503 with a one-line reason. `?verbose`
//!   lists each check.
//! * `GET /startupz`: 200 once the app has been healthy at least once.
//! * `GET /metrics`: Prometheus text format 0.0.4, or OpenMetrics 1.0 (with
//!   exemplars) for a scraper whose `Accept` prefers it.
//! * `POST /drain` (or `GET`, for the kubelet's `httpGet` hooks, which cannot
//!   POST): starts the drain and answers once in-flight requests are done.
//!   Allowed from a loopback peer, or with `Authorization: Bearer <token>`
//!   when `OUTRIDER_ADMIN_TOKEN` is set; everyone else gets 403, so a peer
//!   on the pod network cannot take a pod out of service.
//!
//! Probe handlers answer from in-memory state only; they never call the app.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::{
    drain::{Phase, Trigger, Watch},
    health::Health,
    plain::{owned, respond, text},
    telemetry::{metrics::Metrics, openmetrics},
};

/// What the admin routes read and drive.
#[derive(Clone)]
pub struct AdminState {
    /// The drain: anything but `Serve` is not ready.
    pub drain: Watch,
    pub health: Health,
    /// Asks for the drain, and learns when it is done.
    pub trigger: Trigger,
    /// Bearer token for non-loopback `/drain` callers.
    pub token: Option<Arc<str>>,
    pub metrics: &'static Metrics,
    /// Requests held while the app is away.
    pub held: Arc<AtomicUsize>,
    /// Set when a background task died: `/livez` fails from then on.
    pub failed: Arc<std::sync::OnceLock<String>>,
}

/// The admin service for one connection from `peer`.
pub fn service(
    state: AdminState,
    peer: SocketAddr,
) -> impl tower::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send + Unpin>
+ Clone
+ Send
+ Unpin
+ 'static {
    // Boxed: the server needs an `Unpin` future, and probes are too rare
    // for the allocation to matter.
    tower::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        Box::pin(async move { Ok(route(&state, peer, &req).await) })
    })
}

async fn route(state: &AdminState, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/drain" {
        return drain(state, peer, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path {
        "/livez" | "/health" | "/healthz" => match state.failed.get() {
            None => text(StatusCode::OK, "ok\n"),
            Some(what) => Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from(format!("{what}\n"))))
                .unwrap_or_else(|_| text(StatusCode::SERVICE_UNAVAILABLE, "a background task died\n")),
        },
        "/readyz" | "/ready" => readiness(state, req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "verbose"))),
        "/metrics" => metrics(state, req),
        "/startupz" => {
            if state.health.status().started {
                text(StatusCode::OK, "started\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "app not started yet\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn readiness(state: &AdminState, verbose: bool) -> Response<Full<Bytes>> {
    let phase = state.drain.phase();
    let app = state.health.status();
    let draining = phase != Phase::Serve;
    let ready = app.healthy && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !verbose {
        return match (draining, app.healthy) {
            (true, _) => text(status, "draining\n"),
            (false, false) => owned(status, format!("app not ready: {}\n", app.reason)),
            (false, true) => text(status, "ready\n"),
        };
    }
    let mut body = String::with_capacity(128);
    let _ = writeln!(body, "[{}] draining: {}", if draining { "-" } else { "+" }, if draining { "yes" } else { "no" });
    if app.healthy {
        let _ = writeln!(body, "[+] app: healthy");
    } else {
        let _ = writeln!(body, "[-] app: {}", app.reason);
    }
    body.push_str(if ready { "readyz check passed\n" } else { "readyz check failed\n" });
    owned(status, body)
}

fn metrics(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    // Gauges that mirror state owned elsewhere are set at scrape time.
    let m = state.metrics;
    m.app_ready.set(i64::from(state.health.is_healthy()));
    m.draining.set(i64::from(state.drain.phase() != Phase::Serve));
    m.buffered_requests.set(i64::try_from(state.held.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    // The admin server runs on the runtime that serves the proxy: one read
    // of its task counter per scrape, nothing on the request path.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        m.runtime_tasks.set(i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
    }
    let accept = req.headers().get_all(header::ACCEPT).into_iter().map(HeaderValue::as_bytes);
    let (body, content_type) = if openmetrics::accept::wants_openmetrics(accept) {
        (Bytes::from(m.encode_openmetrics()), openmetrics::CONTENT_TYPE)
    } else {
        (Bytes::from(m.encode()), "text/plain; version=0.0.4; charset=utf-8")
    };
    let mut response = respond(StatusCode::OK, body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Caches between Prometheus and outrider must not answer one
    // format's request with the other's.
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

async fn drain(state: &AdminState, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST && req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /drain\n");
    }
    if !authorized(state, peer, req) {
        warn!(%peer, "refused /drain: not loopback and no valid admin token");
        return text(StatusCode::FORBIDDEN, "forbidden: /drain needs a loopback caller or the admin token\n");
    }
    if state.trigger.request() {
        info!(%peer, "drain requested through the admin endpoint");
    }
    // Resolves when the process exits first, too: the drain is over then.
    state.trigger.clone().drained().await;
    text(StatusCode::OK, "drained\n")
}

fn authorized(state: &AdminState, peer: SocketAddr, req: &Request<Incoming>) -> bool {
    if peer.ip().to_canonical().is_loopback() {
        return true;
    }
    let (Some(token), Some(given)) = (&state.token, req.headers().get(header::AUTHORIZATION)) else { return false };
    // The scheme is case-insensitive (RFC 9110 §11.1) and may be followed
    // by more than one space (RFC 6750 §2.1 allows `1*SP`).
    let given = given.as_bytes();
    let Some((scheme, rest)) = given.split_at_checked(6) else { return false };
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return false;
    }
    constant_time_eq(rest.trim_ascii_start(), token.as_bytes())
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `outrider wait-ready`: polls `/readyz` on `addr` until it answers 200,
/// for an app's entrypoint or a start-up ordering script. True if ready
/// within `timeout`.
pub async fn wait_ready(addr: SocketAddr, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if readyz_ok(addr).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn readyz_ok(addr: SocketAddr) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let status = crate::health::get_status(hyper_util::rt::TokioIo::new(stream), &addr.to_string(), "/readyz").await.ok()?;
        Some(status == StatusCode::OK)
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), attempt).await.ok().flatten().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
