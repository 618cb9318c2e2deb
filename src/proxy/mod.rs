//! The request path: one proxied exchange from the client to the app, as
//! layers in the order a request meets them (telemetry wraps them all; see
//! `telemetry::observe`):
//!
//! 1. [`grpc`]: for a gRPC call, the client's deadline bounds the wait for
//!    the app, and outrider's own answers become gRPC statuses.
//! 2. [`limits`]: `CONNECT` → 405, a body over the limit → 413, too many
//!    requests in flight → 503.
//! 3. [`forward`]: choose the protocol to the app (gRPC over HTTP/2, the
//!    rest over HTTP/1.1, unless one is forced), rewrite the head
//!    (hop-by-hop headers, `X-Forwarded-*`, `Via`, the URI), send it
//!    bounded by the request timeout, splice the connections after a `101`
//!    ([`tunnel`]).
//! 4. [`pool`] (HTTP/1, connections driven by the requests using them) or
//!    [`multiplex`] (HTTP/2, one shared connection).
//! 5. [`hold`]: on the connect path only, wait while the app refuses
//!    connections, and report every attempt to the app's health.
//! 6. [`connect`]: one TCP, TLS or Unix connection to the app.
//!
//! Failures never escape as errors: each becomes a short plain-text
//! response (502/504/...) carrying its classification ([`error`]), or for
//! gRPC a `grpc-status`, which telemetry logs and counts with the
//! request's trace id.

mod body;
pub mod connect;
pub mod error;
mod forward;
pub mod grpc;
pub mod headers;
pub mod hold;
mod idle;
pub mod limits;
pub mod multiplex;
pub mod pool;
#[cfg(test)]
mod tests;
mod tunnel;

use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{
    HeaderValue, Request, Response,
    uri::{Authority, Scheme},
};

pub use self::{body::ProxyBody, error::ProxyError};
use self::{
    connect::{Target, UpstreamTls},
    forward::{Inner, Peer, Upstream},
    grpc::Grpc,
    hold::{BufferOptions, Hold},
    limits::{Bounds, Limits},
};
use crate::{body::RequestBody, drain::Watch, server::ConnInfo, trust::TrustedProxies};

/// The protocols outrider speaks to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC over HTTP/2, everything else over HTTP/1.1.
    Auto,
    Http1,
    Http2,
}

/// How to reach the app.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub target: Target,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// Hold requests while the app refuses connections; `None` fails at once.
    pub buffer: Option<BufferOptions>,
    /// TLS to the app (`https://` upstream).
    pub tls: Option<UpstreamTls>,
}

/// Settings for the request path.
#[derive(Clone)]
pub struct ProxyOptions {
    pub client: ClientOptions,
    /// Time the app has to send its response head.
    pub request_timeout: Option<Duration>,
    /// Append `Via` on requests and responses.
    pub via: bool,
    /// `X-Forwarded-Proto` value for this listener.
    pub scheme: &'static str,
    /// Requests in flight to the app at once; 0 = no limit.
    pub max_inflight: usize,
    /// Largest request body forwarded; 0 = no limit.
    pub max_body_bytes: u64,
    /// Header that carries the verified client certificate's subject
    /// (mTLS). Any copy a client sends is removed so it cannot be forged.
    pub client_cert_header: Option<http::HeaderName>,
    /// Front proxies whose forwarding headers stand.
    pub trusted_proxies: TrustedProxies,
    /// Send RFC 7239 `Forwarded` too.
    pub forwarded: bool,
    /// An upgraded connection silent both ways this long is closed.
    pub tunnel_idle_timeout: Option<Duration>,
    /// A request body that stops arriving this long before the response
    /// has begun: 408.
    pub request_body_idle_timeout: Option<Duration>,
    /// A response body that stops arriving this long (with no request body
    /// frame either): the client's stream is reset.
    pub response_body_idle_timeout: Option<Duration>,
    /// Counts tunnels closed by their idle bound (a metric handle: the
    /// tunnel outlives the request whose outcome telemetry reads).
    pub tunnel_idle_closed: Option<prometheus::IntCounter>,
}

/// The proxy, shared by every connection of the public listener. Built
/// once and leaked: it lives as long as the process, and requests then
/// reach it without touching a shared reference count.
#[derive(Clone, Copy)]
pub struct Proxy {
    inner: &'static Inner,
    bounds: &'static Bounds,
    trusted: &'static TrustedProxies,
    forwarded: bool,
}

// === impl Proxy ===

impl Proxy {
    /// Builds the proxy: new connections to the app go through `hold`;
    /// upgraded connections follow `drain` (it waits for them, and closes
    /// them at its cut).
    pub fn new(options: &ProxyOptions, hold: Hold, drain: Watch) -> Self {
        let upstream_authority = match &options.client.target {
            Target::Tcp(addr) => addr.parse().unwrap_or_else(|_| Authority::from_static("localhost")),
            // The connector ignores the URI for Unix sockets; the authority
            // only has to be a valid, constant pool key.
            Target::Unix(_) => Authority::from_static("localhost"),
        };
        let upstream = Upstream {
            http1: (options.client.protocol != Protocol::Http2)
                .then(|| pool::Pool::new(hold.clone(), options.client.pool_max_idle, options.client.pool_idle_timeout)),
            http2: (options.client.protocol != Protocol::Http1).then(|| multiplex::Multiplex::new(hold.for_http2())),
        };
        Self {
            inner: Box::leak(Box::new(Inner {
                upstream,
                upstream_scheme: if options.client.tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP },
                upstream_authority,
                request_timeout: options.request_timeout,
                via: options.via,
                scheme: options.scheme,
                drain,
                client_cert_header: options.client_cert_header.clone(),
                tunnel_idle_timeout: options.tunnel_idle_timeout,
                response_body_idle_timeout: options.response_body_idle_timeout,
                tunnel_idle_closed: options.tunnel_idle_closed.clone(),
            })),
            bounds: Box::leak(Box::new(Bounds {
                max_inflight: options.max_inflight,
                inflight: std::sync::atomic::AtomicUsize::new(0),
                max_body_bytes: options.max_body_bytes,
                request_body_idle: options.request_body_idle_timeout,
                watch_activity: options.request_body_idle_timeout.is_some()
                    || options.response_body_idle_timeout.is_some()
                    || options.request_timeout.is_some(),
            })),
            trusted: Box::leak(Box::new(options.trusted_proxies.clone())),
            forwarded: options.forwarded,
        }
    }

    /// The service for one accepted connection: gRPC's shape, the limits,
    /// then the forwarding.
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
            hop: headers::Hop::new(
                conn.remote.ip(),
                inner.scheme,
                conn.local.port(),
                self.trusted.contains(conn.remote.ip()),
                self.forwarded,
            ),
            client_subject: conn.client_subject.as_deref().and_then(|s| HeaderValue::from_str(s).ok()),
        });
        // Boxed once here: the exchange's state is a few KiB, and unboxed it
        // would be copied whole by every layer that wraps it and again into
        // hyper's connection; one allocation costs less than those copies.
        let forward = tower::service_fn(move |req| Box::pin(forward::forward(inner, peer.clone(), req)));
        Grpc { inner: Limits { inner: forward, bounds: self.bounds } }
    }
}
