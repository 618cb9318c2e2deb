//! The tower layer that observes every proxied request: one OpenTelemetry
//! SERVER span, the request metrics, and the access log line.
//!
//! At the request: extract the caller's trace context in the formats of
//! `OTEL_PROPAGATORS` (W3C by default; `baggage` is forwarded to the app
//! untouched, and outrider itself has no use for it), start the span as its
//! child (or a new root), and rewrite those headers on the request so the
//! app continues the trace from outrider's span. At the response: note the
//! status. When the response body ends (or the client goes away), end the
//! span, record the histogram and write the access log: the duration covers
//! the whole exchange, not just the response head.
//!
//! A gRPC call (a `POST` of `application/grpc`) is also described by the
//! RPC conventions: its span is named `package.Service/Method` and carries
//! `rpc.*` attributes, and its gRPC status, read from the response's
//! trailers (or from its headers, for a trailers-only answer), decides
//! whether it failed: a gRPC error comes with HTTP 200.

use std::{
    borrow::Cow,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::{
    Context, KeyValue, StringValue,
    trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use tracing::{info, warn};

use super::{
    grpc::{self, Code},
    metrics::{Finished, GRPC_STATUS_MISSING, METHODS, Metrics, TraceRef, method_index, version_label},
    otel::Tracing,
    propagation::{self, Format, Propagators, hex_into},
    routes::Routes,
};
use crate::{
    body::{Counted, Outcome, RequestBody},
    server::ConnInfo,
    trust::TrustedProxies,
};

static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");
/// Status recorded for a request whose client left before the response.
const CLIENT_CLOSED: u16 = 499;

static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Options of the layer.
#[derive(Debug, Clone, Default)]
pub struct ObserveOptions {
    pub routes: Routes,
    /// Record `url.query` (may hold secrets, so off by default).
    pub capture_query: bool,
    /// Send a W3C `traceresponse` header back to the client.
    pub trace_response: bool,
    /// One JSON line per request on the `outrider::access` target.
    pub access_log: bool,
    /// `url.scheme` of this listener.
    pub scheme: &'static str,
    /// Front proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
}

/// Shared state of the layer. Built once and leaked: it lives as long as
/// the process, and requests then need no reference count to reach it.
pub struct Observer {
    metrics: &'static Metrics,
    tracer: Option<SdkTracer>,
    tracing: Tracing,
    options: ObserveOptions,
    /// Span names, `[route][method]`, built once; the last row is for
    /// unmatched paths (`GET`).
    span_names: Vec<[Cow<'static, str>; METHODS.len()]>,
    /// `http.route` values, one per template, built once.
    route_values: Vec<StringValue>,
    /// `OTEL_PROPAGATORS`.
    propagators: Propagators,
}

impl Observer {
    pub fn new(metrics: &'static Metrics, tracing: Tracing, options: ObserveOptions) -> &'static Self {
        let mut span_names: Vec<[Cow<'static, str>; METHODS.len()]> = (0..options.routes.len())
            // Leaked: a fixed set built once, so that each span takes its
            // name by reference instead of copying it.
            .map(|r| {
                METHODS.map(|m| {
                    let name = format!("{} {}", if m == "_OTHER" { "HTTP" } else { m }, options.routes.template(r));
                    Cow::Borrowed(&*Box::leak(name.into_boxed_str()))
                })
            })
            .collect();
        span_names.push(METHODS.map(|m| Cow::Borrowed(if m == "_OTHER" { "HTTP" } else { m })));
        let route_values = (0..options.routes.len()).map(|r| StringValue::from(Arc::<str>::from(options.routes.template(r)))).collect();
        let tracer = tracing.tracer.clone();
        let propagators = tracing.propagators;
        Box::leak(Box::new(Self { metrics, tracer, tracing, options, span_names, route_values, propagators }))
    }

    /// Flushes pending spans (bounded by `timeout`); blocking.
    pub fn shutdown(&self, timeout: std::time::Duration) {
        self.tracing.shutdown(timeout);
    }

    /// Wraps the service of one connection.
    pub fn layer<S>(&'static self, inner: S, conn: ConnInfo) -> Observe<S> {
        // Formatted once per connection, then shared by its spans.
        let client_address = self.tracer.as_ref().map(|_| StringValue::from(Arc::<str>::from(conn.remote.ip().to_canonical().to_string())));
        let behind_proxy = self.options.trusted_proxies.contains(conn.remote.ip());
        Observe {
            inner,
            observer: self,
            conn,
            attributes: ConnAttributes { client_address, behind_proxy, host: LastSeen(None), user_agent: LastSeen(None) },
        }
    }

    fn start(&'static self, req: &mut Request<Incoming>, conn: &ConnInfo, cached: &mut ConnAttributes) -> Box<RequestState> {
        let start = Instant::now();
        // Behind a trusted front proxy the client is the one it names.
        let client = if cached.behind_proxy {
            let forwarded_for = req.headers().get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
            self.options.trusted_proxies.client_from(forwarded_for)
        } else {
            None
        };
        let method = method_index(req.method());
        let route = if self.options.routes.is_empty() { None } else { self.options.routes.find(req.uri().path()) };
        // The only work a request that is not gRPC does for gRPC: a method
        // comparison (and, for a POST, a header look-up).
        let grpc = crate::grpc::is_call(req.method(), req.headers());
        let span = self.tracer.as_ref().map(|tracer| {
            let parent = self.parent(req.headers());
            let mut name = self.span_names[route.unwrap_or(self.span_names.len() - 1)][method].clone();
            let mut attributes = Vec::with_capacity(if grpc { 16 } else { 12 });
            if grpc {
                attributes.push(KeyValue::new("rpc.system", "grpc"));
                // Three copies of the path's parts per call (span names are
                // `Cow<'static, str>`, so not shareable): gRPC calls only.
                if let Some((service, rpc_method)) = grpc::service_method(req.uri().path()) {
                    name = Cow::Owned(format!("{service}/{rpc_method}"));
                    attributes.push(KeyValue::new("rpc.service", service.to_owned()));
                    attributes.push(KeyValue::new("rpc.method", rpc_method.to_owned()));
                }
            }
            attributes.push(KeyValue::new("http.request.method", METHODS[method]));
            if method == METHODS.len() - 1 {
                attributes.push(KeyValue::new("http.request.method_original", req.method().as_str().to_owned()));
            }
            attributes.push(KeyValue::new("url.path", req.uri().path().to_owned()));
            if self.options.capture_query
                && let Some(q) = req.uri().query()
            {
                attributes.push(KeyValue::new("url.query", q.to_owned()));
            }
            attributes.push(KeyValue::new("url.scheme", self.options.scheme));
            if let Some(route) = route {
                attributes.push(KeyValue::new("http.route", self.route_values[route].clone()));
            }
            let server = match req.uri().authority() {
                // HTTP/2 and absolute-form requests: rare enough to format each time.
                Some(authority) => {
                    let (name, port) = split_host_port(authority.as_str());
                    Some((StringValue::from(name.to_owned()), i64::from(port.unwrap_or(conn.local.port()))))
                }
                None => req.headers().get(http::header::HOST).and_then(|host| {
                    cached.host.get(host, |host| {
                        let (name, port) = split_host_port(host.to_str().ok()?);
                        Some((StringValue::from(Arc::<str>::from(name)), i64::from(port.unwrap_or(conn.local.port()))))
                    })
                }),
            };
            if let Some((name, port)) = server {
                attributes.push(KeyValue::new("server.address", name));
                attributes.push(KeyValue::new("server.port", port));
            }
            match client {
                Some(client) => attributes.push(KeyValue::new("client.address", client.to_canonical().to_string())),
                None => {
                    if let Some(client) = &cached.client_address {
                        attributes.push(KeyValue::new("client.address", client.clone()));
                    }
                }
            }
            attributes.push(KeyValue::new("network.protocol.version", version_label(req.version())));
            if let Some(ua) = req.headers().get(http::header::USER_AGENT)
                && let Some(ua) = cached.user_agent.get(ua, |ua| Some(StringValue::from(Arc::<str>::from(ua.to_str().ok()?))))
            {
                attributes.push(KeyValue::new("user_agent.original", ua));
            }
            let builder = tracer.span_builder(name).with_kind(SpanKind::Server).with_attributes(attributes);
            let span = tracer.build_with_context(builder, &parent);
            self.inject(span.span_context(), req.headers_mut());
            span
        });
        self.metrics.active_requests.inc();
        // Boxed: it travels from the response future into the response
        // body and through every layer in between, moved each time.
        Box::new(RequestState {
            observer: self,
            start,
            method,
            method_name: req.method().clone(),
            route,
            version: req.version(),
            uri: req.uri().clone(),
            client: client.unwrap_or(conn.remote.ip()),
            span,
            status: 0,
            bytes_out: 0,
            upstream_ms: None,
            error_kind: None,
            grpc: grpc.then_some(None),
            done: false,
        })
    }
}

impl Observer {
    /// The caller's span, from the configured formats in order (a later
    /// format's context replaces an earlier one's, as the specification's
    /// composite propagator has it); an empty context starts a new trace.
    fn parent(&self, headers: &http::HeaderMap) -> Context {
        let mut parent = Context::new();
        for format in self.propagators.iter() {
            let found = match format {
                Format::TraceContext => {
                    let context = TraceContextPropagator::new().extract(&TraceHeaders(headers));
                    if context.span().span_context().is_valid() {
                        parent = context;
                    }
                    continue;
                }
                Format::Baggage => continue,
                Format::B3 => propagation::extract_b3(headers),
                Format::B3Multi => propagation::extract_b3_multi(headers),
            };
            if let Some(sc) = found {
                parent = Context::new().with_remote_span_context(sc);
            }
        }
        parent
    }

    /// Writes outrider's span into the request for the app, in every
    /// configured format, so that the app continues the trace from it.
    /// The caller's `tracestate` rides along in the span context; `baggage`
    /// is forwarded untouched like any other header, as are the headers of
    /// formats not configured.
    fn inject(&self, sc: &SpanContext, headers: &mut http::HeaderMap) {
        for format in self.propagators.iter() {
            match format {
                // Written here rather than by the propagator, which formats
                // through `format!` and writes an empty `tracestate` only to
                // have it removed again.
                Format::TraceContext => {
                    if let Some(value) = traceparent(sc) {
                        headers.insert(TRACEPARENT.clone(), value);
                    }
                    match HeaderValue::try_from(sc.trace_state().header()) {
                        Ok(state) if !state.is_empty() => {
                            headers.insert(TRACESTATE.clone(), state);
                        }
                        _ => {
                            headers.remove(&TRACESTATE);
                        }
                    }
                }
                Format::Baggage => {}
                Format::B3 => propagation::inject_b3(sc, headers),
                Format::B3Multi => propagation::inject_b3_multi(sc, headers),
            }
        }
    }
}

/// Per-request record, finished exactly once (body end, error or drop).
struct RequestState {
    observer: &'static Observer,
    start: Instant,
    method: usize,
    /// As sent (a clone of a standard method allocates nothing).
    method_name: http::Method,
    route: Option<usize>,
    version: Version,
    uri: http::Uri,
    /// The client: the peer, or the one a trusted front proxy names.
    client: std::net::IpAddr,
    span: Option<Span>,
    status: u16,
    bytes_out: u64,
    upstream_ms: Option<f64>,
    error_kind: Option<&'static str>,
    /// For a gRPC call, its status once the response has carried one.
    grpc: Option<Option<Code>>,
    done: bool,
}

impl RequestState {
    fn finish(&mut self, body_error: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if self.status == 0 {
            // The client went away before any response: nginx's 499, so
            // the label stays a status code and the case stays visible.
            self.status = CLIENT_CLOSED;
            self.error_kind = Some("client_closed");
        }
        let observer = self.observer;
        let end = Instant::now();
        let elapsed = end.saturating_duration_since(self.start);
        observer.metrics.active_requests.dec();
        observer.metrics.response_body_bytes.inc_by(self.bytes_out);
        // outrider's own error kind says most; then a broken body; then, for
        // a gRPC call, a status that is a server error or no status at all
        // (unless a 5xx says more: its code is the error type then).
        let grpc_error = match self.grpc {
            Some(Some(code)) if code.is_server_error() => Some(code.name()),
            Some(None) if self.status < 500 => Some(GRPC_STATUS_MISSING),
            _ => None,
        };
        let error_type = self.error_kind.or(if body_error { Some("response_body_aborted") } else { None }).or(grpc_error);
        // A sampled span that is exported becomes its bucket's exemplar;
        // without an exporter there is no trace for it to link to.
        let trace = match &self.span {
            Some(span) if span.span_context().is_sampled() && observer.tracing.exporting() => {
                let sc = span.span_context();
                Some(TraceRef { trace_id: sc.trace_id().to_bytes(), span_id: sc.span_id().to_bytes() })
            }
            _ => None,
        };
        observer.metrics.record_request(&Finished {
            method: self.method,
            version: self.version,
            status: self.status,
            route: self.route,
            scheme: observer.options.scheme,
            error: error_type,
            seconds: elapsed.as_secs_f64(),
            end,
            trace,
            grpc: self.grpc,
        });
        let ids = TraceIds::of(self.span.as_ref());
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(self.status)));
            if let Some(Some(code)) = self.grpc {
                span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code.value())));
            }
            if let Some(kind) = error_type {
                span.set_attribute(KeyValue::new("error.type", kind));
            } else if self.status >= 500 {
                span.set_attribute(KeyValue::new("error.type", self.status.to_string()));
            }
            if self.status >= 500 || error_type.is_some() {
                span.set_status(Status::error(""));
            }
            if let Some(ms) = self.upstream_ms {
                span.set_attribute(KeyValue::new("outrider.upstream.duration_ms", ms));
            }
            // Counted as ended by the export queue, which takes it here.
            span.end();
        }
        if observer.options.access_log {
            info!(
                target: "outrider::access",
                method = %self.method_name,
                path = self.uri.path(),
                status = self.status,
                duration_ms = millis(elapsed),
                upstream_ms = self.upstream_ms,
                bytes_out = self.bytes_out,
                client = %self.client.to_canonical(),
                protocol = version_label(self.version),
                error = self.error_kind,
                grpc_status = self.grpc.flatten().map(Code::value),
                trace_id = ids.trace_id(),
                span_id = ids.span_id(),
                "request"
            );
        }
    }
}

impl RequestState {
    /// What the request path reported with the response head: the app's
    /// latency, or outrider's own answer and, for a failed exchange with
    /// the app, its cause (logged here, where the trace id is known).
    fn record_outcome(&mut self, outcome: &impl Outcome) {
        let metrics = self.observer.metrics;
        let upstream_time = outcome.upstream_time();
        self.upstream_ms = upstream_time.map(millis);
        self.error_kind = outcome.error_kind();
        match (self.error_kind, upstream_time) {
            (None, Some(time)) => metrics.upstream_duration.observe(time.as_secs_f64()),
            (Some("overloaded"), _) => metrics.load_shed.inc(),
            (Some(kind), _) => {
                if kind == "request_body_timeout" {
                    metrics.body_timeouts[0].inc();
                }
                let Some(cause) = outcome.upstream_failure() else {
                    if let Some(counter) = metrics.refused(kind) {
                        counter.inc();
                    }
                    return;
                };
                if let Some(counter) = metrics.upstream_error(kind) {
                    counter.inc();
                }
                let ids = TraceIds::of(self.span.as_ref());
                warn!(
                    method = %self.method_name,
                    error.kind = kind,
                    error.detail = cause,
                    status = self.status,
                    // What a gRPC client got instead of the HTTP status.
                    grpc_status = self.grpc.flatten().map(Code::value),
                    trace_id = ids.trace_id(),
                    span_id = ids.span_id(),
                    "upstream request failed"
                );
            }
            (None, None) => {}
        }
    }
}

impl RequestState {
    /// The response body failed mid-stream for a reason the request path
    /// reported (`response_body_timeout`).
    fn body_failed(&mut self, kind: &'static str) {
        self.error_kind = Some(kind);
        if kind == "response_body_timeout" {
            self.observer.metrics.body_timeouts[1].inc();
        }
        let ids = TraceIds::of(self.span.as_ref());
        warn!(
            method = %self.method_name,
            error.kind = kind,
            status = self.status,
            trace_id = ids.trace_id(),
            span_id = ids.span_id(),
            "upstream response body cut"
        );
    }
}

impl Drop for RequestState {
    fn drop(&mut self) {
        // The client went away mid-response; still account for it.
        self.finish(true);
    }
}

/// A span's ids in hex, formatted on the stack for a log line; absent from
/// the line when tracing is off (rather than a string of NUL characters).
struct TraceIds {
    trace_id: [u8; 32],
    span_id: [u8; 16],
    len: (usize, usize),
}

impl TraceIds {
    fn of(span: Option<&Span>) -> Self {
        let mut ids = Self { trace_id: [0; 32], span_id: [0; 16], len: (0, 0) };
        if let Some(span) = span {
            let sc = span.span_context();
            hex_into(&sc.trace_id().to_bytes(), &mut ids.trace_id);
            hex_into(&sc.span_id().to_bytes(), &mut ids.span_id);
            ids.len = (32, 16);
        }
        ids
    }

    fn trace_id(&self) -> Option<&str> {
        std::str::from_utf8(&self.trace_id[..self.len.0]).ok().filter(|id| !id.is_empty())
    }

    fn span_id(&self) -> Option<&str> {
        std::str::from_utf8(&self.span_id[..self.len.1]).ok().filter(|id| !id.is_empty())
    }
}

/// The per-connection service.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    observer: &'static Observer,
    conn: ConnInfo,
    attributes: ConnAttributes,
}

/// Span attribute values that rarely change within a connection, built
/// once and shared (reference counted) by its spans instead of copied into
/// a new `String` for each.
#[derive(Clone)]
struct ConnAttributes {
    client_address: Option<StringValue>,
    /// The peer is a trusted front proxy (`OUTRIDER_TRUSTED_PROXIES`).
    behind_proxy: bool,
    /// `server.address` and `server.port`, from the last `Host`.
    host: LastSeen<(StringValue, i64)>,
    /// `user_agent.original`, from the last `User-Agent`.
    user_agent: LastSeen<StringValue>,
}

/// A value derived from a header, kept while the header stays the same.
#[derive(Clone)]
struct LastSeen<T>(Option<(HeaderValue, T)>);

impl<T: Clone> LastSeen<T> {
    fn get(&mut self, header: &HeaderValue, derive: impl FnOnce(&HeaderValue) -> Option<T>) -> Option<T> {
        match &self.0 {
            Some((seen, value)) if seen == header => Some(value.clone()),
            _ => {
                let value = derive(header)?;
                // A copy, not a clone: hyper's header values are slices of
                // its read buffer, and a clone would keep that whole 8 KiB
                // buffer alive for the connection's life, parked or not.
                let seen = HeaderValue::from_bytes(header.as_bytes()).ok()?;
                self.0 = Some((seen, value.clone()));
                Some(value)
            }
        }
    }
}

/// Reads the W3C trace context headers by their pre-built names.
struct TraceHeaders<'a>(&'a http::HeaderMap);

impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => self.0.get(&TRACEPARENT),
            "tracestate" => self.0.get(&TRACESTATE),
            _ => self.0.get(key),
        };
        value.and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

impl<S, B> tower::Service<Request<Incoming>> for Observe<S>
where
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes> + Outcome + Unpin,
{
    type Response = Response<ObservedBody<B>>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let state = self.observer.start(&mut req, &self.conn, &mut self.attributes);
        let req = req.map(|body| Counted::new(body, Some(&self.observer.metrics.request_body_bytes)));
        ObserveFuture { inner: self.inner.call(req), state: Some(state) }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Observe`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        state: Option<Box<RequestState>>,
    }
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Outcome + Unpin,
{
    type Output = Result<Response<ObservedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.inner.poll(cx));
        let Some(mut state) = this.state.take() else {
            // Polled after completion: a contract violation by the caller.
            return Poll::Pending;
        };
        state.status = response.status().as_u16();
        if state.grpc.is_some() {
            // A trailers-only answer (an error, from the app or outrider)
            // has its status here; any other has it in its trailers.
            state.grpc = Some(Code::of(response.headers()));
        }
        state.record_outcome(response.body());
        if state.observer.options.trace_response
            && let Some(span) = &state.span
            && let Some(v) = traceparent(span.span_context())
        {
            response.headers_mut().insert(TRACERESPONSE.clone(), v);
        }
        let end = response.body().is_end_stream();
        let mut response = response.map(|inner| ObservedBody { inner, state });
        if end {
            response.body_mut().state.finish(false);
        }
        Poll::Ready(Ok(response))
    }
}

/// The response body, counted; finishes the request's record when it ends.
pub struct ObservedBody<B> {
    inner: B,
    state: Box<RequestState>,
}

impl<B: Body<Data = Bytes> + Outcome + Unpin> Body for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.state.bytes_out += data.len() as u64;
                } else if this.state.grpc.is_some()
                    && let Some(code) = frame.trailers_ref().and_then(Code::of)
                {
                    this.state.grpc = Some(Some(code));
                }
                if this.inner.is_end_stream() {
                    this.state.finish(false);
                }
            }
            Some(Err(_)) => {
                // A cut that the request path made itself says why.
                if let Some(kind) = this.inner.error_kind() {
                    this.state.body_failed(kind);
                }
                this.state.finish(true);
            }
            None => this.state.finish(false),
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

/// Milliseconds with microsecond resolution, so log lines show `3.752`
/// rather than binary-float noise such as `3.7517679999999998`.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    // `[::1]:8080`, `example.com:8080`, `example.com`, `::1` (no port).
    if let Some(rest) = host.strip_prefix('[')
        && let Some((addr, port)) = rest.split_once(']')
    {
        return (addr, port.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

/// A W3C `traceparent` (and `traceresponse`) value for `sc`, formatted
/// without `fmt`.
fn traceparent(sc: &SpanContext) -> Option<HeaderValue> {
    let mut v = [0u8; 55];
    v[..3].copy_from_slice(b"00-");
    hex_into(&sc.trace_id().to_bytes(), &mut v[3..35]);
    v[35] = b'-';
    hex_into(&sc.span_id().to_bytes(), &mut v[36..52]);
    v[52] = b'-';
    hex_into(&[sc.trace_flags().to_u8()], &mut v[53..55]);
    HeaderValue::from_bytes(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::{HeaderValue, LastSeen, split_host_port};

    #[test]
    fn a_cached_attribute_follows_its_header() {
        let mut cache = LastSeen(None);
        let derived = std::cell::Cell::new(0);
        let mut get = |header: &'static str| {
            cache.get(&HeaderValue::from_static(header), |h| {
                derived.set(derived.get() + 1);
                Some(h.to_str().ok()?.to_uppercase())
            })
        };
        assert_eq!(get("a.example").as_deref(), Some("A.EXAMPLE"));
        assert_eq!(get("a.example").as_deref(), Some("A.EXAMPLE"));
        assert_eq!(get("b.example").as_deref(), Some("B.EXAMPLE"), "a new header value is not served from the cache");
        assert_eq!(derived.get(), 2);
    }

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(split_host_port("[::1]:9"), ("::1", Some(9)));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }
}
