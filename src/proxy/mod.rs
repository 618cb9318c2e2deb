//! The request path: one proxied exchange from the client to the app.
//!
//! 1. Refuse what a reverse proxy cannot forward (`CONNECT` → 405).
//! 2. Rewrite the head: strip hop-by-hop headers, keep `Host`, append
//!    `X-Forwarded-*` (and `Via` when enabled), point the URI at the app.
//! 3. Send it on the pooled client, bounded by the request timeout; the
//!    request body streams through as the app reads it.
//! 4. Strip the response's hop-by-hop headers and stream its body back.
//!    A `101 Switching Protocols` splices the two connections together.
//!
//! Failures never escape as errors: each becomes a short plain-text
//! response (502/504/...) and one log line.

pub mod error;
pub mod headers;
pub mod pool;
pub mod upstream;

use std::{
    convert::Infallible,
    sync::Arc,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{EXPECT, HOST},
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug, warn};

pub use self::error::ProxyError;
use self::{pool::Lease, upstream::UpstreamClient};
use crate::{
    body::{Outcome, RequestBody},
    drain::{Phase, Watch},
    gate::Gated,
    server::ConnInfo,
    telemetry::metrics::Metrics,
};

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
    /// Released when the body is dropped, i.e. once it was sent.
    _slot: Option<InflightSlot>,
}

impl ProxyBody {
    fn error(error: ProxyError) -> Response<Self> {
        error.into_response().map(|body| Self {
            inner: Either::Right(body),
            lease: None,
            upstream_time: None,
            error: Some(error),
            _slot: None,
        })
    }
}

/// One request in flight to the app (`OUTRIDER_MAX_INFLIGHT`).
#[derive(Debug)]
struct InflightSlot(&'static AtomicUsize);

impl InflightSlot {
    /// `Some(None)` when there is no limit: nothing to count.
    fn take(counter: &'static AtomicUsize, max: usize) -> Option<Option<Self>> {
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
}

/// Settings for the request path.
#[derive(Clone)]
pub struct ProxyOptions {
    pub client: upstream::ClientOptions,
    /// Time the app has to send its response head.
    pub request_timeout: Option<Duration>,
    /// Append `Via` on requests and responses.
    pub via: bool,
    /// `X-Forwarded-Proto` value for this listener.
    pub scheme: &'static str,
    /// Upstream latency and error counters.
    pub metrics: Option<&'static Metrics>,
    /// Requests in flight to the app at once; 0 = no limit.
    pub max_inflight: usize,
    /// Largest request body forwarded; 0 = no limit.
    pub max_body_bytes: u64,
    /// Header that carries the verified client certificate's subject
    /// (mTLS). Any copy a client sends is removed so it cannot be forged.
    pub client_cert_header: Option<http::HeaderName>,
}

/// The proxy, shared by every connection of the public listener. Built
/// once and leaked: it lives as long as the process, and requests then
/// reach it without touching a shared reference count.
#[derive(Clone, Copy)]
pub struct Proxy {
    inner: &'static Inner,
}

struct Inner {
    upstream: Upstream,
    /// URI parts of the app, pre-parsed once: cloning them is a refcount.
    upstream_scheme: Scheme,
    upstream_authority: Authority,
    upstream_version: Version,
    request_timeout: Option<Duration>,
    via: bool,
    scheme: &'static str,
    /// Upgraded (spliced) connections are tracked by the drain, which
    /// waits for them, and closed at its cut.
    drain: Watch,
    metrics: Option<&'static Metrics>,
    max_inflight: usize,
    /// Requests in flight; process-lifetime, so guards hold no refcount.
    inflight: &'static AtomicUsize,
    max_body_bytes: u64,
    client_cert_header: Option<http::HeaderName>,
}

/// How requests reach the app.
enum Upstream {
    /// HTTP/1: each connection is driven by the request using it.
    Http1(&'static pool::Pool),
    /// HTTP/2 (prior knowledge or ALPN): hyper-util's client, whose
    /// connections run as tasks of their own and multiplex requests.
    /// Boxed: the client is large and this variant the rare one.
    Http2(Box<UpstreamClient>),
}

// === impl Proxy ===

impl Proxy {
    /// Builds the proxy on `connector`. Upgraded connections follow `drain`:
    /// it waits for them, and closes them at its cut.
    pub fn new(options: &ProxyOptions, connector: upstream::Connector, drain: Watch) -> Self {
        let upstream_authority = match &options.client.target {
            upstream::Target::Tcp(addr) => addr.parse().unwrap_or_else(|_| Authority::from_static("localhost")),
            // The connector ignores the URI for Unix sockets; the authority
            // only has to be a valid, constant pool key.
            upstream::Target::Unix(_) => Authority::from_static("localhost"),
        };
        Self {
            inner: Box::leak(Box::new(Inner {
                upstream: if options.client.http2 {
                    Upstream::Http2(Box::new(upstream::client(&options.client, connector)))
                } else {
                    Upstream::Http1(pool::Pool::new(connector, options.client.pool_max_idle, options.client.pool_idle_timeout))
                },
                upstream_scheme: Scheme::HTTP,
                upstream_authority,
                upstream_version: if options.client.http2 { Version::HTTP_2 } else { Version::HTTP_11 },
                request_timeout: options.request_timeout,
                via: options.via,
                scheme: options.scheme,
                drain,
                metrics: options.metrics,
                max_inflight: options.max_inflight,
                inflight: Box::leak(Box::new(AtomicUsize::new(0))),
                max_body_bytes: options.max_body_bytes,
                client_cert_header: options.client_cert_header.clone(),
            })),
        }
    }

    /// The service for one accepted connection.
    pub fn service(
        &self,
        conn: ConnInfo,
    ) -> impl tower::Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = Infallible, Future: Send + Unpin>
    + Clone
    + Send
    + Unpin
    + use<> {
        let inner = self.inner;
        let peer = Arc::new(Peer {
            forwarded_for: headers::forwarded_for(conn.remote.ip()),
            client_subject: conn.client_subject.as_deref().and_then(|s| HeaderValue::from_str(s).ok()),
        });
        // Boxed once here: the exchange's state is a few KiB, and unboxed it
        // would be copied whole by every layer that wraps it and again into
        // hyper's connection; one allocation costs less than those copies.
        tower::service_fn(move |req| Box::pin(forward(inner, peer.clone(), req)))
    }
}

/// What a request needs from its connection, prepared once per connection.
struct Peer {
    /// This client's `X-Forwarded-For` entry.
    forwarded_for: Option<HeaderValue>,
    /// Subject of the client's verified certificate (mTLS).
    client_subject: Option<HeaderValue>,
}

async fn forward(inner: &'static Inner, peer: Arc<Peer>, mut req: Request<RequestBody>) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() == Method::CONNECT {
        debug!("refusing CONNECT");
        return Ok(ProxyBody::error(ProxyError::MethodNotAllowed));
    }
    if inner.max_body_bytes > 0 {
        let declared = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > inner.max_body_bytes) {
            return Ok(ProxyBody::error(ProxyError::PayloadTooLarge));
        }
        // Chunked or unknown length: enforced while streaming.
        req.body_mut().set_limit(inner.max_body_bytes);
    }
    // Load shedding: the slot is held until the response body ends.
    let slot = match InflightSlot::take(inner.inflight, inner.max_inflight) {
        Some(slot) => slot,
        None => {
            if let Some(counter) = inner.metrics.map(|m| &m.load_shed) {
                counter.inc();
            }
            return Ok(ProxyBody::error(ProxyError::Overloaded));
        }
    };
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    // Taken before the request is consumed; resolves once the server hands
    // over the client's connection after our 101 response.
    let client_upgrade = if upgrade { req.extensions_mut().remove::<crate::server::OnUpgrade>() } else { None };

    let (mut parts, body) = req.into_parts();
    let client_version = parts.version;
    // An absolute-form target (and every HTTP/2 request) carries the
    // authority in the URI; it then wins over any Host header (RFC 9112 §3.2.2).
    if let Some(authority) = parts.uri.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(HOST, host);
        }
    }
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(name) = &inner.client_cert_header {
        parts.headers.remove(name);
        if let Some(subject) = peer.client_subject.clone() {
            parts.headers.insert(name.clone(), subject);
        }
    }
    // hyper already answers `100 Continue` when we first read the body, i.e.
    // once the app connection is up; the app must not answer it again.
    parts.headers.remove(EXPECT);
    let host = parts.headers.get(HOST).cloned();
    headers::add_forwarded(&mut parts.headers, peer.forwarded_for.clone(), inner.scheme, host);
    if inner.via {
        headers::add_via(&mut parts.headers, client_version);
    }
    // HTTP/1 sends the origin form (`/path?query`), which is what the
    // client sent in all but the rare absolute-form request; HTTP/2 needs
    // the scheme and authority for its pseudo-headers.
    let http2 = matches!(inner.upstream, Upstream::Http2(_));
    if http2 || parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        if http2 {
            uri.scheme = Some(inner.upstream_scheme.clone());
            uri.authority = Some(inner.upstream_authority.clone());
        }
        uri.path_and_query = Some(path_and_query);
        parts.uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            // Unreachable with parts taken from valid URIs; answer rather than panic.
            Err(_) => return Ok(ProxyBody::error(ProxyError::Protocol)),
        };
    }
    parts.version = inner.upstream_version;
    let method = parts.method.clone();
    // For log lines: the trace context telemetry put on the request.
    let traceparent = parts.headers.get(&TRACEPARENT).cloned();
    let request = Request::from_parts(parts, body);

    let sent_at = Instant::now();
    let sent = send(inner, request, upgrade);
    let result: Result<_, UpstreamFailure> = match inner.request_timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamFailure(ProxyError::Timeout, format!("no response head within {limit:?}"))),
        },
        None => sent.await,
    };

    let upstream_time = sent_at.elapsed();
    let (mut response, lease) = match result {
        Ok(exchange) => exchange,
        Err(UpstreamFailure(error, detail)) => {
            let (trace_id, span_id) = trace_ids(traceparent.as_ref());
            warn!(%method, error.kind = error.kind(), error.detail = %detail, status = error.status().as_u16(), trace_id, span_id, "upstream request failed");
            if let Some(counter) = inner.metrics.and_then(|m| m.upstream_error(error.kind())) {
                counter.inc();
            }
            return Ok(ProxyBody::error(error));
        }
    };
    if let Some(metrics) = inner.metrics {
        metrics.upstream_duration.observe(upstream_time.as_secs_f64());
    }

    let app_version = response.version();
    // The client gets the version it spoke, whatever the app answered with
    // (an HTTP/1.0 app must not downgrade a keep-alive client).
    *response.version_mut() = client_version;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(response.headers_mut(), switching && upgrade);
    if inner.via {
        headers::add_via(response.headers_mut(), app_version);
    }
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let mut drain = inner.drain.clone();
        inner.drain.connections().spawn(
            async move {
                let (mut client, app) = match tokio::join!(client_upgrade.wait(), upstream_upgrade) {
                    (Ok(client), Ok(app)) => (client, app),
                    (Err(e), _) => return debug!(error = %e, "upgrade did not complete"),
                    (_, Err(e)) => return debug!(error = %e, "upgrade did not complete"),
                };
                let mut app = TokioIo::new(app);
                tokio::select! {
                    biased;
                    copied = tokio::io::copy_bidirectional(&mut client, &mut app) => match copied {
                        Ok((up, down)) => debug!(bytes_to_app = up, bytes_to_client = down, "upgraded connection closed"),
                        Err(e) => debug!(error = %e, "upgraded connection ended with error"),
                    },
                    // Both sockets close as the task ends.
                    () = Gated::new(drain.reached(Phase::Cut)) => debug!("upgraded connection closed at the drain timeout"),
                }
            }
            .in_current_span(),
        );
    }
    Ok(response.map(|body| ProxyBody { inner: Either::Left(body), lease, upstream_time: Some(upstream_time), error: None, _slot: slot }))
}

/// Sends the request on the configured protocol.
async fn send(
    inner: &'static Inner,
    request: Request<RequestBody>,
    upgrade: bool,
) -> Result<(Response<Incoming>, Option<Lease>), UpstreamFailure> {
    match &inner.upstream {
        Upstream::Http1(pool) => pool.send(request, upgrade).await.map_err(|e| match e {
            // Classified from the inner error itself: `transparent` would
            // hide it from a walk down the source chain.
            pool::PoolError::Connect(e) => UpstreamFailure::new(&e, ProxyError::ConnectRefused),
            pool::PoolError::Http(e) => UpstreamFailure::new(&e, ProxyError::Protocol),
        }),
        Upstream::Http2(client) => match client.request(request).await {
            Ok(response) => Ok((response, None)),
            Err(e) => Err(UpstreamFailure::new(&e, if e.is_connect() { ProxyError::ConnectRefused } else { ProxyError::Protocol })),
        },
    }
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Trace and span id from a `traceparent` value, without allocating.
fn trace_ids(traceparent: Option<&HeaderValue>) -> (&str, &str) {
    let Some(tp) = traceparent.and_then(|v| v.to_str().ok()) else { return ("", "") };
    match (tp.get(3..35), tp.get(36..52)) {
        (Some(trace), Some(span)) => (trace, span),
        _ => ("", ""),
    }
}

/// An upstream failure with its classification and the underlying cause.
struct UpstreamFailure(ProxyError, String);

impl UpstreamFailure {
    /// Classifies `e`, falling back to `otherwise` when its chain does not tell.
    fn new(e: &(dyn std::error::Error + 'static), otherwise: ProxyError) -> Self {
        let kind = ProxyError::classify(e).unwrap_or(otherwise);
        // The full chain, for the log line only.
        let mut detail = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        Self(kind, detail)
    }
}
