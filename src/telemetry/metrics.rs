//! Prometheus metrics, in a registry owned by the process (never the
//! crate's global default), with label handles resolved ahead of the
//! request path.
//!
//! The request histogram's labels are bounded by construction: ten method
//! values (the nine standard ones and `_OTHER`), three protocol versions,
//! two schemes, status codes 100–599, the error types of
//! [`ERROR_TYPES`] (or the status code of a 5xx), and the configured
//! route templates. Each combination's handle is created on first use and
//! cached in lock-free tables, so recording a request is an index
//! computation and atomic adds: no hashing, no lock, no allocation. A
//! sampled request also leaves its trace as its bucket's exemplar
//! (see [`super::exemplar`]), exposed in the OpenMetrics format only.
//!
//! A gRPC call is recorded a second time, in `rpc_server_duration_seconds`
//! by its gRPC status alone (see [`Metrics::record_request`] for why a
//! family of its own rather than a label on the request histogram).

use std::{sync::OnceLock, time::Instant};

use http::{Method, Version};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    proto::{LabelPair, Metric, MetricFamily},
};

use super::{
    exemplar::{Exemplar, Slot, WallClock},
    grpc::Code,
    openmetrics,
};

/// Methods with their own label value; everything else is `_OTHER`, as the
/// OpenTelemetry semantic conventions prescribe.
pub const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER"];
const VERSIONS: [&str; 3] = ["1.0", "1.1", "2"];
const STATUSES: usize = 500;
const DURATION: &str = "http_server_request_duration_seconds";
/// The OpenTelemetry semantic conventions' `rpc.server.duration` (the
/// generation of the RPC conventions whose `rpc.grpc.status_code` the spans
/// carry), in seconds like every duration outrider exports.
const RPC_DURATION: &str = "rpc_server_duration_seconds";
/// `rpc_grpc_status_code` of a call that ended without a `grpc-status`.
const NO_GRPC_STATUS: usize = Code::COUNT;

/// `url_scheme` values: the listener's scheme.
pub const SCHEMES: [&str; 2] = ["http", "https"];

/// `error_type` values for a request that ended in one of outrider's own
/// error kinds: every kind the proxy (`ProxyError::kind`) and the request
/// layer produce, the gRPC status codes a server counts as errors (a gRPC
/// call that failed with HTTP 200), a gRPC call that ended without any
/// status, and `_OTHER` for a kind missing here. Without a kind the label
/// is the status code of a 5xx response, and empty otherwise.
pub const ERROR_TYPES: [&str; 21] = [
    "connect",
    "timeout",
    "reset",
    "protocol",
    "unavailable",
    "overloaded",
    "client_aborted",
    "method_not_allowed",
    "payload_too_large",
    "request_body_timeout",
    "response_body_timeout",
    "client_closed",
    "response_body_aborted",
    // Code::SERVER_ERRORS, in its order.
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    GRPC_STATUS_MISSING,
    "_OTHER",
];

/// `error_type` of a gRPC call whose response ended (or broke off) without
/// a `grpc-status`: its client cannot know how the call went.
pub const GRPC_STATUS_MISSING: &str = "grpc_status_missing";

/// Upstream failure kinds, in `outrider_upstream_errors_total{kind}`.
pub const UPSTREAM_ERROR_KINDS: [&str; 5] = ["connect", "timeout", "reset", "protocol", "unavailable"];

/// Why outrider refused a request itself, in
/// `outrider_refused_requests_total{reason}` (the error kinds of those answers).
pub const REFUSED_REASONS: [&str; 5] = ["method_not_allowed", "payload_too_large", "header_too_large", "uri_too_long", "ambiguous_length"];

/// The bodies an idle bound can cut, in `outrider_body_timeouts_total{direction}`.
pub const BODY_TIMEOUT_DIRECTIONS: [&str; 2] = ["request", "response"];

/// What closed a quiet client connection, in
/// `outrider_connection_timeouts_total{cause}`.
pub const CONNECTION_TIMEOUT_CAUSES: [&str; 5] = ["request_head", "h2_ping", "h2_idle", "tunnel_idle", "send"];

/// Why a span was not exported, in `outrider_spans_dropped_total{reason}`:
/// the export queue was full, the collector refused it in an otherwise
/// accepted batch (`partial_success`), or its batch failed (refused for
/// good, retries out of time, or still unsent at exit).
pub const SPAN_DROP_REASONS: [&str; 3] = ["queue_full", "rejected", "export_failed"];

/// Latency buckets from 0.5 ms to 30 s: a sidecar adds well under a
/// millisecond, legacy apps take seconds; both ends need resolution.
const LATENCY_BUCKETS: [f64; 16] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// One series of the request histogram, and the latest exemplar of each
/// of its buckets (`+Inf` last), allocated with its first exemplar.
struct Series {
    histogram: Histogram,
    exemplars: OnceLock<Box<[Slot; LATENCY_BUCKETS.len() + 1]>>,
}

impl Series {
    fn new(histogram: Histogram) -> Self {
        Self { histogram, exemplars: OnceLock::new() }
    }

    /// Counts `seconds`; with a trace, it becomes its bucket's exemplar.
    fn observe(&self, seconds: f64, trace: Option<&TraceRef>, timestamp_ms: impl FnOnce() -> u64) {
        self.histogram.observe(seconds);
        if let Some(trace) = trace {
            // The bucket Histogram::observe counts the value in: the first
            // bound at or above it, else +Inf.
            let bucket = LATENCY_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(LATENCY_BUCKETS.len());
            let slots = self.exemplars.get_or_init(|| Box::new(std::array::from_fn(|_| Slot::default())));
            slots[bucket].record(&Exemplar {
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                value: seconds,
                timestamp_ms: timestamp_ms(),
            });
        }
    }
}

/// One series per status code 100–599, created on first use.
type StatusHandles = Box<[OnceLock<Series>]>;
/// Per error type (none first, then [`ERROR_TYPES`]), created on first use.
type ErrorHandles = Box<[OnceLock<StatusHandles>]>;

/// A finished request, as the request histogram records it.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Index in [`METHODS`].
    pub method: usize,
    pub version: Version,
    pub status: u16,
    /// Index of the matched route template.
    pub route: Option<usize>,
    /// `url.scheme`, one of [`SCHEMES`].
    pub scheme: &'static str,
    /// outrider's own error kind, when the request ended in one.
    pub error: Option<&'static str>,
    pub seconds: f64,
    /// When it ended (its duration's end): the exemplar's timestamp.
    pub end: Instant,
    /// The request's span, when it is sampled and exported: the
    /// exemplar of the bucket the request falls in.
    pub trace: Option<TraceRef>,
    /// For a gRPC call, its status; `Some(None)` when it ended without one.
    pub grpc: Option<Option<Code>>,
}

/// A span's ids, as bytes.
#[derive(Debug, Clone, Copy)]
pub struct TraceRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// Every metric outrider exports.
pub struct Metrics {
    registry: Registry,
    duration: HistogramVec,
    /// `rpc_server_duration_seconds`, by gRPC status code (0–16), then
    /// for calls without a status; each series created on first use.
    rpc_duration: Box<[OnceLock<Series>]>,
    rpc_duration_family: HistogramVec,
    with_route: bool,
    /// `(route, method, version, scheme)` → lazily built tables, by error
    /// type then status.
    handles: Box<[OnceLock<ErrorHandles>]>,
    route_labels: Vec<String>,
    /// Exemplar timestamps.
    clock: WallClock,
    pub active_requests: IntGauge,
    pub request_body_bytes: IntCounter,
    pub response_body_bytes: IntCounter,
    pub upstream_errors: [IntCounter; UPSTREAM_ERROR_KINDS.len()],
    pub upstream_duration: Histogram,
    pub connections_active: IntGauge,
    pub connections_total: IntCounter,
    pub spans_ended: IntCounter,
    pub spans_exported: IntCounter,
    /// In the order of [`SPAN_DROP_REASONS`].
    pub spans_dropped: [IntCounter; SPAN_DROP_REASONS.len()],
    pub load_shed: IntCounter,
    pub refused: [IntCounter; REFUSED_REASONS.len()],
    /// `[request, response]`: bodies cut by their idle bound.
    pub body_timeouts: [IntCounter; BODY_TIMEOUT_DIRECTIONS.len()],
    /// In the order of [`CONNECTION_TIMEOUT_CAUSES`].
    pub connection_timeouts: [IntCounter; CONNECTION_TIMEOUT_CAUSES.len()],
    pub app_ready: IntGauge,
    pub draining: IntGauge,
    pub drain_cut_connections: IntCounter,
    pub buffered_requests: IntGauge,
    /// Tasks alive on outrider's runtime, set at scrape time.
    pub runtime_tasks: IntGauge,
}

/// A metric could not be registered (a programming error: duplicate name).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Registers every metric. `routes` are the route templates, in order;
    /// when empty the `http_route` label is left out altogether.
    ///
    /// # Errors
    /// Only on a duplicate registration, which would be a bug.
    pub fn new(routes: &[&str], version: &str, commit: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let mut labels = vec!["http_request_method", "http_response_status_code", "network_protocol_version", "url_scheme", "error_type"];
        if !routes.is_empty() {
            labels.push("http_route");
        }
        let duration = HistogramVec::new(
            HistogramOpts::new(DURATION, "Duration of HTTP server requests, until the response body ends.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &labels,
        )?;
        registry.register(Box::new(duration.clone()))?;

        let rpc_duration_family = HistogramVec::new(
            HistogramOpts::new(RPC_DURATION, "Duration of gRPC calls, until the response body ends, by gRPC status.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["rpc_system", "rpc_grpc_status_code"],
        )?;
        registry.register(Box::new(rpc_duration_family.clone()))?;

        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };

        // A counter family with one label over a fixed set of values, each
        // series resolved once so that requests never look a label up.
        fn labelled<const N: usize>(
            registry: &Registry,
            name: &str,
            help: &str,
            label: &str,
            values: [&str; N],
        ) -> Result<[IntCounter; N], prometheus::Error> {
            let family = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(family.clone()))?;
            Ok(values.map(|v| family.with_label_values(&[v])))
        }
        let upstream_errors = labelled(
            &registry,
            "outrider_upstream_errors_total",
            "Requests that failed between outrider and the app, by kind.",
            "kind",
            UPSTREAM_ERROR_KINDS,
        )?;

        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "outrider_upstream_request_duration_seconds",
                "Time from sending a request to the app until its response head arrived.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(upstream_duration.clone()))?;

        let refused = labelled(
            &registry,
            "outrider_refused_requests_total",
            "Requests outrider answered itself without forwarding them, by reason.",
            "reason",
            REFUSED_REASONS,
        )?;

        let body_timeouts = labelled(
            &registry,
            "outrider_body_timeouts_total",
            "Bodies that stopped arriving for their idle timeout: request (the client's, answered 408) or response (the app's; the client's stream is reset).",
            "direction",
            BODY_TIMEOUT_DIRECTIONS,
        )?;

        let connection_timeouts = labelled(
            &registry,
            "outrider_connection_timeouts_total",
            "Client connections closed because the client went quiet, by the bound that closed them.",
            "cause",
            CONNECTION_TIMEOUT_CAUSES,
        )?;

        let spans_dropped = labelled(
            &registry,
            "outrider_spans_dropped_total",
            "Spans not exported, by reason; requests are unaffected.",
            "reason",
            SPAN_DROP_REASONS,
        )?;

        let build_info =
            IntGaugeVec::new(Opts::new("outrider_build_info", "Build information; the value is always 1."), &["version", "commit"])?;
        registry.register(Box::new(build_info.clone()))?;
        build_info.with_label_values(&[version, commit]).set(1);

        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        let mut route_labels: Vec<String> = routes.iter().map(|r| (*r).to_owned()).collect();
        // Unmatched paths share one label value, which keeps it bounded.
        route_labels.push(String::new());
        let slots = route_labels.len() * METHODS.len() * VERSIONS.len() * SCHEMES.len();
        Ok(Self {
            duration,
            rpc_duration: (0..=Code::COUNT).map(|_| OnceLock::new()).collect(),
            rpc_duration_family,
            with_route: !routes.is_empty(),
            handles: (0..slots).map(|_| OnceLock::new()).collect(),
            route_labels,
            clock: WallClock::new(),
            active_requests: gauge("http_server_active_requests", "Requests being served right now.")?,
            request_body_bytes: counter("outrider_request_body_bytes_total", "Request body bytes received from clients.")?,
            response_body_bytes: counter("outrider_response_body_bytes_total", "Response body bytes sent to clients.")?,
            upstream_errors,
            upstream_duration,
            connections_active: gauge("outrider_connections_active", "Client connections open right now.")?,
            connections_total: counter("outrider_connections_total", "Client connections accepted.")?,
            spans_ended: counter("outrider_spans_ended_total", "Sampled server spans handed to the export queue.")?,
            spans_exported: counter("outrider_spans_exported_total", "Spans the OTLP collector accepted.")?,
            spans_dropped,
            load_shed: counter("outrider_load_shed_total", "Requests refused with 503 because OUTRIDER_MAX_INFLIGHT were in flight.")?,
            refused,
            body_timeouts,
            connection_timeouts,
            app_ready: gauge("outrider_app_ready", "1 when the app passes its health check.")?,
            draining: gauge("outrider_draining", "1 once outrider has started draining.")?,
            drain_cut_connections: counter(
                "outrider_drain_cut_connections_total",
                "Client connections still open at the drain timeout (or a second shutdown signal), closed then.",
            )?,
            buffered_requests: gauge("outrider_buffered_requests", "Requests held while the app is not accepting connections.")?,
            runtime_tasks: gauge("outrider_runtime_tasks", "Tokio tasks alive on outrider's runtime.")?,
            registry,
        })
    }

    /// Records one finished request, and its exemplar when it has a trace.
    ///
    /// A gRPC call is also recorded in `rpc_server_duration_seconds`, whose
    /// only varying label is the gRPC status: at most 18 series (17 codes
    /// and "no status"), of 17 buckets each, whatever the traffic: 24 KiB
    /// at most (a series measured 1.3 KiB of heap: two shards of 16
    /// buckets, count and sum, its labels and bounds). The status as one
    /// more label of the request histogram would have multiplied every one
    /// of its label combinations by up to 18, and each table of statuses
    /// (500 slots, built per combination and error type) as much; and the
    /// HTTP histogram would no longer follow the HTTP conventions. `rpc.service` and `rpc.method` are left out: the
    /// client chooses them, and the spans carry them.
    pub fn record_request(&self, request: &Finished) {
        let method = request.method.min(METHODS.len() - 1);
        let version = version_index(request.version);
        let route = request.route.unwrap_or(self.route_labels.len() - 1);
        let scheme = usize::from(request.scheme == SCHEMES[1]);
        let error = request.error.map_or(0, |kind| 1 + ERROR_TYPES.iter().position(|t| *t == kind).unwrap_or(ERROR_TYPES.len() - 1));
        let status = request.status.clamp(100, 599);
        let Some(errors) = self.handles.get(slot(route, method, version, scheme)) else { return };
        let errors = errors.get_or_init(|| (0..=ERROR_TYPES.len()).map(|_| OnceLock::new()).collect());
        let Some(statuses) = errors.get(error) else { return };
        let statuses = statuses.get_or_init(|| (0..STATUSES).map(|_| OnceLock::new()).collect());
        let Some(series) = statuses.get(usize::from(status - 100)) else { return };
        let series = series.get_or_init(|| {
            let status = status.to_string();
            let error = match error {
                0 if request.status >= 500 => status.as_str(),
                0 => "",
                i => ERROR_TYPES[i - 1],
            };
            let mut values = vec![METHODS[method], status.as_str(), VERSIONS[version], SCHEMES[scheme], error];
            if self.with_route {
                values.push(self.route_labels[route].as_str());
            }
            Series::new(self.duration.with_label_values(&values))
        });
        let timestamp_ms = || self.clock.millis(request.end);
        series.observe(request.seconds, request.trace.as_ref(), timestamp_ms);
        if let Some(status) = request.grpc {
            let index = status.map_or(NO_GRPC_STATUS, Code::index);
            let Some(series) = self.rpc_duration.get(index) else { return };
            let series = series.get_or_init(|| {
                let code = status.map_or("", Code::label);
                Series::new(self.rpc_duration_family.with_label_values(&["grpc", code]))
            });
            series.observe(request.seconds, request.trace.as_ref(), timestamp_ms);
        }
    }

    /// The series of `rpc_server_duration_seconds` with these labels, if it
    /// has been created.
    fn rpc_series(&self, labels: &[LabelPair]) -> Option<&Series> {
        let code = labels.iter().find(|l| l.name() == "rpc_grpc_status_code")?.value();
        let index = if code.is_empty() { NO_GRPC_STATUS } else { code.parse::<usize>().ok().filter(|c| *c < Code::COUNT)? };
        self.rpc_duration.get(index)?.get()
    }

    /// The series of the request histogram with these labels, if it has
    /// been created: the table indices, computed back from the values.
    fn series(&self, labels: &[LabelPair]) -> Option<&Series> {
        let value = |name: &str| labels.iter().find(|l| l.name() == name).map(LabelPair::value);
        let position = |values: &[&str], v: Option<&str>| v.and_then(|v| values.iter().position(|x| *x == v));
        let method = position(&METHODS, value("http_request_method"))?;
        let version = position(&VERSIONS, value("network_protocol_version"))?;
        let scheme = position(&SCHEMES, value("url_scheme"))?;
        let route = match value("http_route") {
            Some(route) => self.route_labels.iter().position(|r| r == route)?,
            None => self.route_labels.len() - 1,
        };
        let status: u16 = value("http_response_status_code")?.parse().ok()?;
        let error = match value("error_type")? {
            e if e.is_empty() || e.parse::<u16>().is_ok() => 0,
            e => 1 + ERROR_TYPES.iter().position(|t| *t == e)?,
        };
        let errors = self.handles.get(slot(route, method, version, scheme))?.get()?;
        let statuses = errors.get(error)?.get()?;
        statuses.get(usize::from(status.checked_sub(100)?))?.get()
    }

    /// The refused-request counter for the error kind `kind`, if it is one.
    pub fn refused(&self, kind: &str) -> Option<&IntCounter> {
        REFUSED_REASONS.iter().position(|r| *r == kind).map(|i| &self.refused[i])
    }

    /// The upstream error counter for `kind` (one of [`UPSTREAM_ERROR_KINDS`]).
    pub fn upstream_error(&self, kind: &str) -> Option<&IntCounter> {
        UPSTREAM_ERROR_KINDS.iter().position(|k| *k == kind).map(|i| &self.upstream_errors[i])
    }

    /// The OpenMetrics 1.0 exposition, with the request histograms'
    /// exemplars.
    pub fn encode_openmetrics(&self) -> String {
        self.clock.resync();
        openmetrics::encode(&self.registry.gather(), |family: &MetricFamily, metric: &Metric| {
            let series = match family.name() {
                DURATION => self.series(metric.get_label())?,
                RPC_DURATION => self.rpc_series(metric.get_label())?,
                _ => return None,
            };
            Some(&series.exemplars.get()?[..])
        })
    }

    /// The text exposition format (0.0.4).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric family that
        // fails to encode is skipped rather than failing the scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The index in `Metrics::handles` of a `(route, method, version, scheme)`.
fn slot(route: usize, method: usize, version: usize, scheme: usize) -> usize {
    ((route * METHODS.len() + method) * VERSIONS.len() + version) * SCHEMES.len() + scheme
}

/// Index of a method in [`METHODS`].
pub fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

fn version_index(version: Version) -> usize {
    match version {
        Version::HTTP_09 | Version::HTTP_10 => 0,
        Version::HTTP_2 | Version::HTTP_3 => 2,
        _ => 1,
    }
}

/// The `network.protocol.version` value.
pub fn version_label(version: Version) -> &'static str {
    VERSIONS[version_index(version)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &Method, version: Version, status: u16, route: Option<usize>, seconds: f64) -> Finished {
        Finished {
            method: method_index(method),
            version,
            status,
            route,
            scheme: "http",
            error: None,
            seconds,
            end: Instant::now(),
            trace: None,
            grpc: None,
        }
    }

    #[test]
    fn records_into_bounded_labels() {
        let m = Metrics::new(&["/users/{id}"], "0.0.0", "abc").unwrap();
        m.record_request(&request(&Method::GET, Version::HTTP_11, 200, Some(0), 0.01));
        m.record_request(&request(&Method::from_bytes(b"BREW").unwrap(), Version::HTTP_2, 418, None, 0.02));
        m.record_request(&Finished {
            scheme: "https",
            error: Some("timeout"),
            ..request(&Method::GET, Version::HTTP_11, 504, Some(0), 0.2)
        });
        m.record_request(&request(&Method::POST, Version::HTTP_11, 500, None, 0.2));
        m.record_request(&Finished { error: Some("no_such_kind"), ..request(&Method::GET, Version::HTTP_11, 200, None, 0.1) });
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            r#"http_server_request_duration_seconds_count{error_type="",http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",network_protocol_version="1.1",url_scheme="http"} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"{error_type="",http_request_method="_OTHER",http_response_status_code="418",http_route="",network_protocol_version="2",url_scheme="http"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{error_type="timeout",http_request_method="GET",http_response_status_code="504",http_route="/users/{id}",network_protocol_version="1.1",url_scheme="https"} 1"#),
            "outrider's own error kind: {text}"
        );
        assert!(
            text.contains(r#"_count{error_type="500",http_request_method="POST",http_response_status_code="500""#),
            "a 5xx of the app: {text}"
        );
        assert!(text.contains(r#"_count{error_type="_OTHER",http_request_method="GET",http_response_status_code="200""#), "{text}");
        assert!(text.contains(r#"outrider_build_info{commit="abc",version="0.0.0"} 1"#));
    }

    #[test]
    fn every_error_kind_of_the_proxy_has_its_own_error_type() {
        for kind in crate::proxy::ProxyError::ALL.map(crate::proxy::ProxyError::kind) {
            assert!(ERROR_TYPES.contains(&kind), "{kind} is missing from ERROR_TYPES");
        }
        for name in Code::SERVER_ERRORS {
            assert!(ERROR_TYPES.contains(&name), "the gRPC server error {name} is missing from ERROR_TYPES");
        }
        assert_eq!(ERROR_TYPES.last(), Some(&"_OTHER"), "the fallback is the last entry");
    }

    /// gRPC calls are counted by status in a family of their own, bounded
    /// to the 17 codes and "no status"; other requests never reach it.
    #[test]
    fn grpc_calls_by_status_in_their_own_family_with_exemplars() {
        let m = Metrics::new(&[], "0.0.0", "abc").unwrap();
        let code = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", v.parse().unwrap());
            Code::of(&h)
        };
        let call = |status, seconds| Finished { grpc: Some(status), ..request(&Method::POST, Version::HTTP_2, 200, None, seconds) };
        let trace = TraceRef { trace_id: [0x12; 16], span_id: [0x34; 8] };
        m.record_request(&Finished { trace: Some(trace), ..call(code("0"), 0.002) });
        m.record_request(&call(code("0"), 0.002));
        m.record_request(&Finished { error: Some("UNAVAILABLE"), ..call(code("14"), 0.3) });
        m.record_request(&Finished { error: Some(GRPC_STATUS_MISSING), ..call(None, 0.01) });
        m.record_request(&request(&Method::POST, Version::HTTP_2, 200, None, 0.01));
        let text = String::from_utf8(m.encode()).unwrap();
        let count = |labels: &str| {
            let prefix = format!("rpc_server_duration_seconds_count{{{labels}}} ");
            text.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_owned)
        };
        assert_eq!(count(r#"rpc_grpc_status_code="0",rpc_system="grpc""#).as_deref(), Some("2"), "{text}");
        assert_eq!(count(r#"rpc_grpc_status_code="14",rpc_system="grpc""#).as_deref(), Some("1"), "{text}");
        assert_eq!(count(r#"rpc_grpc_status_code="",rpc_system="grpc""#).as_deref(), Some("1"), "{text}");
        assert_eq!(text.matches("rpc_server_duration_seconds_count{").count(), 3, "a plain request is not a call: {text}");
        assert!(text.contains(r#"{error_type="UNAVAILABLE",http_request_method="POST",http_response_status_code="200""#), "{text}");
        assert!(text.contains(r#"{error_type="grpc_status_missing",http_request_method="POST",http_response_status_code="200""#));

        let om = m.encode_openmetrics();
        let ids = format!(r#"# {{trace_id="{}",span_id="{}"}} 0.002 "#, "12".repeat(16), "34".repeat(8));
        let bucket = |family: &str, labels: &str| {
            om.lines().find(|l| l.starts_with(&format!("{family}_bucket{{{labels}le=\"0.0025\"}}"))).unwrap_or_else(|| panic!("{om}"))
        };
        assert!(bucket("rpc_server_duration_seconds", r#"rpc_grpc_status_code="0",rpc_system="grpc","#).contains(&ids), "{om}");
        assert!(bucket("http_server_request_duration_seconds", r#"error_type="",http_request_method="POST",http_response_status_code="200",network_protocol_version="2",url_scheme="http","#).contains(&ids), "{om}");
        assert!(!bucket("rpc_server_duration_seconds", r#"rpc_grpc_status_code="14",rpc_system="grpc","#).contains('#'), "{om}");
    }

    #[test]
    fn a_traced_request_is_its_buckets_exemplar_in_openmetrics_only() {
        let m = Metrics::new(&[], "0.0.0", "abc").unwrap();
        let trace = TraceRef { trace_id: [0xab; 16], span_id: [0xcd; 8] };
        m.record_request(&Finished { trace: Some(trace), ..request(&Method::GET, Version::HTTP_11, 200, None, 0.003) });
        m.record_request(&Finished { trace: Some(trace), ..request(&Method::GET, Version::HTTP_11, 200, None, 90.0) });
        m.record_request(&request(&Method::GET, Version::HTTP_11, 200, None, 0.02));
        let om = m.encode_openmetrics();
        let labels =
            r#"error_type="",http_request_method="GET",http_response_status_code="200",network_protocol_version="1.1",url_scheme="http""#;
        let ids = format!(r#"# {{trace_id="{}",span_id="{}"}}"#, "ab".repeat(16), "cd".repeat(8));
        let line = |le: &str| {
            om.lines().find(|l| l.starts_with(&format!("http_server_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}"))).unwrap()
        };
        assert!(
            line("0.005").starts_with(&format!("http_server_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1 {ids} 0.003 ")),
            "{om}"
        );
        assert!(line("+Inf").contains(&format!("3 {ids} 90 ")), "{om}");
        assert!(!line("0.025").contains('#'), "an untraced request leaves no exemplar: {om}");
        assert!(!line("0.0025").contains('#'), "{om}");
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("# TYPE outrider_connections counter\n"));
        assert!(!String::from_utf8(m.encode()).unwrap().contains("trace_id"), "the text format has no exemplars");
    }
}
