//! Forwards one request to the app: rewrites the head, sends it on the
//! pool (HTTP/1) or the client (HTTP/2), bounded by the request timeout,
//! and splices the connections after a `101 Switching Protocols`. The
//! failures it meets become outrider's own answers, classified.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{
    HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{EXPECT, HOST},
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug};

use super::{
    body::ProxyBody,
    error::{ExchangeError, ProxyError},
    headers,
    idle::{self, Cut},
    limits::UpstreamBody as RequestBody,
    multiplex::Multiplex,
    pool,
};
use crate::drain::Watch;

/// What forwarding needs, built once.
pub(super) struct Inner {
    pub(super) upstream: Upstream,
    /// URI parts of the app, pre-parsed once: cloning them is a refcount.
    /// HTTP/2 needs them for its pseudo-headers; the authority is only
    /// the fallback for a request that named none.
    pub(super) upstream_scheme: Scheme,
    pub(super) upstream_authority: Authority,
    pub(super) request_timeout: Option<Duration>,
    pub(super) via: bool,
    pub(super) scheme: &'static str,
    /// Upgraded (spliced) connections are tracked by the drain, which
    /// waits for them, and closed at its cut.
    pub(super) drain: Watch,
    pub(super) client_cert_header: Option<http::HeaderName>,
    /// An upgraded connection silent both ways this long is closed.
    pub(super) tunnel_idle_timeout: Option<Duration>,
    /// The app's response body stalled this long resets the client's stream.
    pub(super) response_body_idle_timeout: Option<Duration>,
    pub(super) tunnel_idle_closed: Option<prometheus::IntCounter>,
}

/// How requests reach the app: the protocols it is spoken to in, at least
/// one of them.
pub(super) struct Upstream {
    /// HTTP/1: each connection is driven by the request using it.
    pub(super) http1: Option<&'static pool::Pool>,
    /// HTTP/2 (prior knowledge or ALPN): one shared connection whose
    /// streams carry the requests.
    pub(super) http2: Option<&'static Multiplex>,
}

impl Upstream {
    /// Whether `req` goes over HTTP/2: gRPC does when both are spoken
    /// (gRPC needs HTTP/2's trailers; everything else is safest on
    /// HTTP/1.1, which every app speaks and which carries upgrades), and
    /// everything does when HTTP/2 is all there is.
    fn http2_for<B>(&self, req: &Request<B>) -> bool {
        match (self.http1, self.http2) {
            (Some(_), Some(_)) => crate::grpc::is_call(req.method(), req.headers()),
            (None, _) => true,
            (Some(_), None) => false,
        }
    }
}

/// What a request needs from its connection, prepared once per connection.
pub(super) struct Peer {
    /// What this hop says about the client (`X-Forwarded-*`, `Forwarded`).
    pub(super) hop: headers::Hop,
    /// Subject of the client's verified certificate (mTLS).
    pub(super) client_subject: Option<HeaderValue>,
}

pub(super) async fn forward(
    inner: &'static Inner,
    peer: Arc<Peer>,
    mut req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let http2 = inner.upstream.http2_for(&req);
    // Upgrades exist in HTTP/1.1 only; to an app spoken to in HTTP/2 alone
    // the request goes without its `Upgrade`, and the app answers it as
    // a plain request.
    let upgrade = !http2 && req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    // Taken before the request is consumed; resolves once the server hands
    // over the client's connection after our 101 response.
    let client_upgrade = if upgrade { req.extensions_mut().remove::<crate::server::OnUpgrade>() } else { None };

    // How the request body moves: the request timeout starts at its end,
    // and the response's idle bound counts its frames as activity.
    let activity = req.body().activity().cloned();
    let (mut parts, body) = req.into_parts();
    let client_version = parts.version;
    // An absolute-form target (and every HTTP/2 request) carries the
    // authority in the URI; it then wins over any Host header (RFC 9112 §3.2.2).
    if let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(HOST, host);
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
    headers::add_forwarded(&mut parts.headers, &peer.hop, host);
    if inner.via {
        headers::add_via(&mut parts.headers, client_version);
    }
    // HTTP/1 sends the origin form (`/path?query`), which is what the
    // client sent in all but the rare absolute-form request; HTTP/2 needs
    // the scheme and authority for its pseudo-headers. The authority is
    // the one the client named, as HTTP/1 keeps its Host: virtual hosts
    // and gRPC services routed by `:authority` see what they would
    // without outrider.
    if http2 || parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        if http2 {
            uri.scheme = Some(inner.upstream_scheme.clone());
            // An HTTP/2 client's own `:authority` is reused as it is (a
            // reference count); an HTTP/1.1 client's Host is parsed.
            let host = parts.headers.remove(HOST);
            let named = parts.uri.authority().cloned().or_else(|| host.and_then(|h| Authority::try_from(h.as_bytes()).ok()));
            uri.authority = Some(named.unwrap_or_else(|| inner.upstream_authority.clone()));
        }
        uri.path_and_query = Some(path_and_query);
        parts.uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            // Unreachable with parts taken from valid URIs; answer rather than panic.
            Err(_) => return Ok(ProxyBody::error(ProxyError::Protocol)),
        };
    }
    parts.version = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
    let request = Request::from_parts(parts, body);

    let sent_at = Instant::now();
    let sent = std::pin::pin!(send(&inner.upstream, request, http2, upgrade));
    let result: Result<_, UpstreamFailure> = match inner.request_timeout {
        Some(limit) => match idle::within(limit, activity.as_deref(), sent).await {
            Ok(result) => result,
            Err(()) => Err(UpstreamFailure(
                ProxyError::Timeout,
                format!("no response head within {limit:?} of the request's end, or of the app's last read of its body"),
            )),
        },
        None => sent.await,
    };
    if let Some(activity) = &activity {
        activity.respond();
    }

    let upstream_time = sent_at.elapsed();
    let (mut response, lease) = match result {
        Ok(exchange) => exchange,
        // Telemetry logs and counts it, with the request's trace id. A body
        // outrider cut itself decides the kind: over HTTP/2 the exchange
        // fails with only "stream reset", which would blame the app.
        Err(UpstreamFailure(error, detail)) => {
            let error = match activity.as_ref().and_then(|a| a.cut_by()) {
                Some(Cut::TooLarge) => ProxyError::PayloadTooLarge,
                Some(Cut::Stalled) => ProxyError::RequestBodyTimeout,
                None => error,
            };
            return Ok(ProxyBody::upstream_failure(error, detail));
        }
    };

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
        let (drain, idle) = (inner.drain.clone(), inner.tunnel_idle_timeout);
        inner.drain.connections().spawn(
            async move {
                let (client, app) = match tokio::join!(client_upgrade.wait(), upstream_upgrade) {
                    (Ok(client), Ok(app)) => (client, app),
                    (Err(e), _) => return debug!(error = %e, "upgrade did not complete"),
                    (_, Err(e)) => return debug!(error = %e, "upgrade did not complete"),
                };
                if super::tunnel::splice(client, TokioIo::new(app), idle, drain).await
                    && let Some(counter) = &inner.tunnel_idle_closed
                {
                    counter.inc();
                }
            }
            .in_current_span(),
        );
    }
    let idle = if switching { None } else { inner.response_body_idle_timeout.as_ref() };
    Ok(response.map(|body| ProxyBody::streamed(body, lease, upstream_time, idle, activity)))
}

/// Sends the request over the protocol chosen for it.
async fn send(
    upstream: &Upstream,
    request: Request<RequestBody>,
    http2: bool,
    upgrade: bool,
) -> Result<(Response<Incoming>, Option<pool::Lease>), UpstreamFailure> {
    let sent = match (http2, upstream.http1, upstream.http2) {
        (true, _, Some(multiplex)) => multiplex.send(request).await.map(|response| (response, None)),
        (_, Some(pool), _) => pool.send(request, upgrade).await,
        // `Upstream` always has one protocol; answer rather than panic.
        _ => return Err(UpstreamFailure(ProxyError::Protocol, "no protocol to reach the app with".into())),
    };
    // Classified from the inner error itself: `transparent` would hide it
    // from a walk down the source chain.
    sent.map_err(|e| match e {
        ExchangeError::Connect(e) => UpstreamFailure::new(&e, ProxyError::ConnectRefused),
        ExchangeError::Http(e) => UpstreamFailure::new(&e, ProxyError::Protocol),
    })
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
