//! OpenTelemetry tracing: the SDK tracer provider and outrider's batch
//! processor (`batch`) feeding the OTLP exporter (`otlp`), configured by the
//! standard `OTEL_*` variables.
//!
//! Spans are created with the SDK directly, not through the
//! `tracing-opentelemetry` bridge: the bridge attaches and detaches an OTel
//! context on every poll of every instrumented future, which measured at
//! ~6 µs per request, more than everything else outrider does. One span is
//! started when a request arrives and ended when its response body ends.

use std::{fmt, time::Duration};

use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    Resource,
    trace::{SdkTracer, SdkTracerProvider},
};
use tracing::{info, warn};

pub use super::{batch::ExportCounters, env::OtelError};
use super::{
    batch::{BatchConfig, BatchProcessor},
    env::{flag, non_empty, traces_or_general},
    otlp::{OtlpExporter, Wire},
    propagation::Propagators,
};

/// The standard variables honoured here, for the configuration reference.
pub const OTEL_VARIABLES: &[(&str, &str, &str)] = &[
    ("OTEL_SDK_DISABLED", "false", "`true` turns tracing off entirely: no spans, no trace ids in logs."),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "Collector base URL, e.g. `http://jaeger:4317` (gRPC) or `http://jaeger:4318` (HTTP; `/v1/traces` is added). `https://` is TLS, verified against the system's CA certificates (or the bundled Mozilla roots when the system has none). For gRPC also `host:port` without a scheme: TLS unless `OTEL_EXPORTER_OTLP_INSECURE=true`. Unset: spans are not exported.",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "",
        "Traces-only endpoint; for HTTP the full URL including `/v1/traces`. Overrides the one above.",
    ),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "`grpc` or `http/protobuf`."),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "", "Traces-only protocol; overrides the one above."),
    ("OTEL_EXPORTER_OTLP_HEADERS", "", "Extra export headers, `key=value,key2=value2`, values percent-encoded (e.g. an API key)."),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "", "Traces-only headers, added to the ones above."),
    (
        "OTEL_EXPORTER_OTLP_INSECURE",
        "false",
        "`true`: a scheme-less gRPC endpoint (`collector:4317`) is plaintext instead of TLS. No effect on `http://` (plaintext) or `https://` (TLS) endpoints.",
    ),
    ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "", "Traces-only; overrides the one above."),
    (
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "",
        "PEM file of the CA certificate(s) that verify the collector over TLS, used instead of the system's. Re-read when it changes (a rotated Secret); a broken new file is logged and the previous one kept.",
    ),
    ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "", "Traces-only CA file; overrides the one above."),
    (
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "",
        "PEM client certificate (chain) presented to a collector that asks for one (mTLS). Needs `OTEL_EXPORTER_OTLP_CLIENT_KEY`. Re-read when it changes.",
    ),
    ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "", "Traces-only client certificate; overrides the one above."),
    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "", "PEM private key of the client certificate. Re-read when it changes."),
    ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "", "Traces-only client key; overrides the one above."),
    (
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "none",
        "`gzip` or `none`. gzip cuts a batch of 512 spans by 85 % for ~1 ms of the export thread's CPU, never the request path's.",
    ),
    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "", "Traces-only compression; overrides the one above."),
    (
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "10000",
        "Export timeout in milliseconds: bounds each batch, retries and their waits included; a batch still unsent then is dropped.",
    ),
    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "", "Traces-only timeout; overrides the one above."),
    ("OTEL_TRACES_EXPORTER", "otlp", "`otlp`, or `none`: spans are not exported (trace ids still reach the logs and the app)."),
    (
        "OTEL_PROPAGATORS",
        "tracecontext,baggage",
        "Trace header formats read from callers and written to the app, in order: `tracecontext`, `baggage`, `b3` (single header), `b3multi` (`X-B3-*`), or `none`.",
    ),
    ("OTEL_SERVICE_NAME", "", "`service.name`; default: the wrapped command's name, else `outrider`."),
    ("OTEL_RESOURCE_ATTRIBUTES", "", "Extra resource attributes, `key=value,...`."),
    (
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`.",
    ),
    ("OTEL_TRACES_SAMPLER_ARG", "", "Ratio for the `traceidratio` samplers, 0.0–1.0."),
    (
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "2048",
        "Spans queued for export, 1–1000000; beyond it spans are dropped (counted `queue_full`), never requests slowed. A batch being retried is out of the queue, which keeps filling.",
    ),
    ("OTEL_BSP_SCHEDULE_DELAY", "5000", "Milliseconds between export batches, at most 86400000 (a day)."),
    (
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "512",
        "Spans per export request, 1–1000000; a full batch is sent at once. Above `OTEL_BSP_MAX_QUEUE_SIZE`, the queue size is used.",
    ),
    ("K8S_POD_NAME", "", "Downward API: becomes `k8s.pod.name`."),
    ("K8S_NAMESPACE_NAME", "", "Downward API: becomes `k8s.namespace.name`."),
    ("K8S_NODE_NAME", "", "Downward API: becomes `k8s.node.name`."),
];

/// The tracing half of telemetry: what the request layer needs.
pub struct Tracing {
    /// `None` when `OTEL_SDK_DISABLED=true`.
    pub tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
    /// Where spans go, for the start-up log line.
    pub destination: String,
    /// An exporter is configured.
    exporting: bool,
    /// `OTEL_PROPAGATORS`: the trace header formats read and written.
    pub propagators: Propagators,
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing")
            .field("enabled", &self.tracer.is_some())
            .field("destination", &self.destination)
            .field("propagators", &self.propagators)
            .finish()
    }
}

impl Tracing {
    /// Sets up tracing from the environment. Must run inside the Tokio
    /// runtime: the gRPC exporter's channel lives on it.
    ///
    /// # Errors
    /// An invalid `OTEL_*` value, or an exporter that cannot be built.
    pub fn from_env(default_service_name: &str, counters: ExportCounters) -> Result<Self, OtelError> {
        check_sdk_variables()?;
        let propagators = Propagators::from_env()?;
        let exporter = traces_exporter()?;
        if env_flag("OTEL_SDK_DISABLED")? {
            return Ok(Self { tracer: None, provider: None, destination: "disabled".into(), exporting: false, propagators });
        }
        let mut resource = Resource::builder();
        let service_name_set = non_empty("OTEL_SERVICE_NAME").is_some()
            || non_empty("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.split(',').any(|kv| kv.trim_start().starts_with("service.name=")));
        if !service_name_set {
            resource = resource.with_service_name(default_service_name.to_owned());
        }
        for (var, key) in
            [("K8S_POD_NAME", "k8s.pod.name"), ("K8S_NAMESPACE_NAME", "k8s.namespace.name"), ("K8S_NODE_NAME", "k8s.node.name")]
        {
            if let Some(value) = non_empty(var) {
                resource = resource.with_attribute(KeyValue::new(key, value));
            }
        }
        let resource = resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();

        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        let endpoint = traces_or_general("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT").filter(|_| exporter);
        let exporting = endpoint.is_some();
        let destination = match endpoint {
            None if !exporter => "none (OTEL_TRACES_EXPORTER=none): trace ids only".to_owned(),
            None => "none (OTEL_EXPORTER_OTLP_ENDPOINT unset): trace ids only".to_owned(),
            Some((endpoint_var, endpoint)) => {
                let (var, protocol) = traces_or_general("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
                    .unwrap_or(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()));
                let wire = match protocol.as_str() {
                    "grpc" => Wire::Grpc,
                    "http/protobuf" => Wire::Http,
                    _ => return Err(OtelError::Invalid { var, value: protocol, reason: "expected grpc or http/protobuf" }),
                };
                let exporter = OtlpExporter::from_env(endpoint_var, &endpoint, wire)?;
                let runtime = export_runtime().map_err(|e| OtelError::Exporter(format!("cannot start the export thread: {e}")))?;
                let processor = BatchProcessor::start(exporter, batch_config(), counters, &runtime);
                builder = builder.with_span_processor(processor);
                format!("{endpoint} ({protocol})")
            }
        };
        let provider = builder.build();
        use opentelemetry::trace::TracerProvider as _;
        let tracer = provider.tracer("outrider");
        Ok(Self { tracer: Some(tracer), provider: Some(provider), destination, exporting, propagators })
    }

    /// True when spans are exported (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports what is queued, waiting at most `timeout`. Blocking: call
    /// from a blocking context.
    pub fn shutdown(&self, timeout: Duration) {
        let Some(provider) = &self.provider else { return };
        match provider.shutdown_with_timeout(timeout) {
            Ok(()) if self.exporting => info!("queued spans exported"),
            Ok(()) => {}
            Err(e) => warn!(error = %e, "telemetry flush incomplete"),
        }
    }
}

/// A single-threaded runtime on a dedicated thread, for span export.
fn export_runtime() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new().name("outrider-export".into()).spawn(move || {
        lower_priority();
        runtime.block_on(std::future::pending::<()>());
    })?;
    Ok(handle)
}

/// Telemetry must never slow the requests it describes. The threads that
/// batch and encode spans run at nice +10, so that when they compete with
/// request handling for the CPU (a sidecar's CPU limit is small) the kernel
/// runs the request first, and spans wait. On Linux the nice value is per
/// thread. Once per thread; a failure only costs that preference.
///
/// Why +10 and not +19: at +19 (a CPU share of 1.5 % against +10's 10 %)
/// a one-connection run with TLS and gzip export had a p99 of 255–452 µs
/// against 456–543 µs, but at 64 connections with the CPU saturated the
/// exporter kept up with 17 % of the spans (356 112 of 428 649 dropped,
/// `queue_full`) where +10 exported all 413 509. Both runs on one CPU
/// shared with the request thread, the bench upstream and nothing else.
fn lower_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !LOWERED.with(|lowered| lowered.replace(true))
        && let Err(e) = rustix::process::nice(10)
    {
        tracing::debug!(error = %e, "could not lower the priority of a telemetry thread");
    }
}

/// The variables the SDK reads itself, checked first: the SDK falls back to
/// its defaults on a value it cannot use, and a typo in a sampler name would
/// silently sample everything.
fn check_sdk_variables() -> Result<(), OtelError> {
    const SAMPLERS: [&str; 6] =
        ["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"];
    if let Some(sampler) = non_empty("OTEL_TRACES_SAMPLER")
        && !SAMPLERS.contains(&sampler.as_str())
    {
        return Err(OtelError::Invalid {
            var: "OTEL_TRACES_SAMPLER",
            value: sampler,
            reason: "expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
        });
    }
    if let Some(arg) = non_empty("OTEL_TRACES_SAMPLER_ARG")
        && !arg.parse::<f64>().is_ok_and(|ratio| (0.0..=1.0).contains(&ratio))
    {
        return Err(OtelError::Invalid { var: "OTEL_TRACES_SAMPLER_ARG", value: arg, reason: "expected a ratio from 0.0 to 1.0" });
    }
    for (var, max, reason) in [
        ("OTEL_BSP_MAX_QUEUE_SIZE", 1_000_000, "expected a whole number from 1 to 1000000"),
        ("OTEL_BSP_SCHEDULE_DELAY", 86_400_000, "expected milliseconds from 1 to 86400000"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1_000_000, "expected a whole number from 1 to 1000000"),
    ] {
        if let Some(value) = non_empty(var)
            && !value.parse::<u64>().is_ok_and(|n| (1..=max).contains(&n))
        {
            return Err(OtelError::Invalid { var, value, reason });
        }
    }
    Ok(())
}

/// `OTEL_TRACES_EXPORTER`: whether spans are exported (`otlp`, the
/// default) or not (`none`). The specification's other values name
/// exporters outrider does not have, and are refused rather than ignored.
fn traces_exporter() -> Result<bool, OtelError> {
    match non_empty("OTEL_TRACES_EXPORTER").map(|v| v.to_ascii_lowercase()) {
        None => Ok(true),
        Some(v) if v == "otlp" => Ok(true),
        Some(v) if v == "none" => Ok(false),
        Some(v) => Err(OtelError::Invalid { var: "OTEL_TRACES_EXPORTER", value: v, reason: "expected otlp or none" }),
    }
}

/// The `OTEL_BSP_*` values, checked by [`check_sdk_variables`] first.
fn batch_config() -> BatchConfig {
    let number = |var, default: u64| non_empty(var).and_then(|v| v.parse::<u64>().ok()).unwrap_or(default);
    let max_queue_size = usize::try_from(number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)).unwrap_or(2048);
    BatchConfig {
        max_queue_size,
        schedule_delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)),
        max_export_batch_size: usize::try_from(number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)).unwrap_or(512).min(max_queue_size),
    }
}

fn env_flag(var: &'static str) -> Result<bool, OtelError> {
    non_empty(var).map_or(Ok(false), |value| flag(var, value))
}
