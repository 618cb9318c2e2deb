//! Prometheus metrics, in a registry owned by the process (never the
//! crate's global default), with label handles resolved ahead of the
//! request path.
//!
//! The request histogram's labels are bounded by construction: ten method
//! values (the nine standard ones and `_OTHER`), three protocol versions,
//! status codes 100–599, and the configured route templates. Each
//! combination's handle is created on first use and cached in a lock-free
//! table, so recording a request is an index computation and an atomic
//! add: no hashing, no lock, no allocation.

use std::sync::OnceLock;

use http::{Method, Version};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Methods with their own label value; everything else is `_OTHER`, as the
/// OpenTelemetry semantic conventions prescribe.
pub const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER"];
const VERSIONS: [&str; 3] = ["1.0", "1.1", "2"];
const STATUSES: usize = 500;

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

/// One histogram handle per status code 100–599, created on first use.
type StatusHandles = Box<[OnceLock<Histogram>]>;

/// Every metric outrider exports.
pub struct Metrics {
    registry: Registry,
    duration: HistogramVec,
    with_route: bool,
    /// `(route, method, version)` → lazily built per-status handle table.
    handles: Box<[OnceLock<StatusHandles>]>,
    route_labels: Vec<String>,
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
        let mut labels = vec!["http_request_method", "http_response_status_code", "network_protocol_version"];
        if !routes.is_empty() {
            labels.push("http_route");
        }
        let duration = HistogramVec::new(
            HistogramOpts::new("http_server_request_duration_seconds", "Duration of HTTP server requests, until the response body ends.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &labels,
        )?;
        registry.register(Box::new(duration.clone()))?;

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
        let slots = route_labels.len() * METHODS.len() * VERSIONS.len();
        Ok(Self {
            duration,
            with_route: !routes.is_empty(),
            handles: (0..slots).map(|_| OnceLock::new()).collect(),
            route_labels,
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

    /// Records one finished request.
    pub fn record_request(&self, method: usize, version: Version, status: u16, route: Option<usize>, seconds: f64) {
        let version = version_index(version);
        let route = route.unwrap_or(self.route_labels.len() - 1);
        let slot = (route * METHODS.len() + method.min(METHODS.len() - 1)) * VERSIONS.len() + version;
        let Some(table) = self.handles.get(slot) else { return };
        let table = table.get_or_init(|| (0..STATUSES).map(|_| OnceLock::new()).collect());
        let status = status.clamp(100, 599);
        let Some(handle) = table.get(usize::from(status - 100)) else { return };
        handle
            .get_or_init(|| {
                let status = status.to_string();
                let mut values = vec![METHODS[method.min(METHODS.len() - 1)], status.as_str(), VERSIONS[version]];
                if self.with_route {
                    values.push(self.route_labels[route].as_str());
                }
                self.duration.with_label_values(&values)
            })
            .observe(seconds);
    }

    /// The refused-request counter for the error kind `kind`, if it is one.
    pub fn refused(&self, kind: &str) -> Option<&IntCounter> {
        REFUSED_REASONS.iter().position(|r| *r == kind).map(|i| &self.refused[i])
    }

    /// The upstream error counter for `kind` (one of [`UPSTREAM_ERROR_KINDS`]).
    pub fn upstream_error(&self, kind: &str) -> Option<&IntCounter> {
        UPSTREAM_ERROR_KINDS.iter().position(|k| *k == kind).map(|i| &self.upstream_errors[i])
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

    #[test]
    fn records_into_bounded_labels() {
        let m = Metrics::new(&["/users/{id}"], "0.0.0", "abc").unwrap();
        m.record_request(method_index(&Method::GET), Version::HTTP_11, 200, Some(0), 0.01);
        m.record_request(method_index(&Method::from_bytes(b"BREW").unwrap()), Version::HTTP_2, 418, None, 0.02);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",network_protocol_version="1.1"} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"http_request_method="_OTHER",http_response_status_code="418",http_route="",network_protocol_version="2"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"outrider_build_info{commit="abc",version="0.0.0"} 1"#));
    }
}
