//! OpenTelemetry tracing: the SDK tracer provider and its batch processor
//! feeding the OTLP exporter (`otlp`), configured by the standard `OTEL_*`
//! variables.
//!
//! Spans are created with the SDK directly, not through the
//! `tracing-opentelemetry` bridge: the bridge attaches and detaches an OTel
//! context on every poll of every instrumented future, which measured at
//! ~6 µs per request, more than everything else outrider does. One span is
//! started when a request arrives and ended when its response body ends.

use std::{fmt, sync::Arc, time::Duration};

use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
};
use prometheus::IntCounter;
use tracing::{info, warn};

pub use super::env::OtelError;
use super::{
    env::{non_empty, traces_or_general},
    otlp::{OtlpExporter, Wire},
};

/// The standard variables honoured here, for the configuration reference.
pub const OTEL_VARIABLES: &[(&str, &str, &str)] = &[
    ("OTEL_SDK_DISABLED", "false", "`true` turns tracing off entirely: no spans, no trace ids in logs."),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "Collector base URL, e.g. `http://jaeger:4317` (gRPC) or `http://jaeger:4318` (HTTP; `/v1/traces` is added). `http://` only. Unset: spans are not exported.",
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
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000", "Export timeout in milliseconds."),
    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "", "Traces-only timeout; overrides the one above."),
    ("OTEL_SERVICE_NAME", "", "`service.name`; default: the wrapped command's name, else `outrider`."),
    ("OTEL_RESOURCE_ATTRIBUTES", "", "Extra resource attributes, `key=value,...`."),
    (
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`.",
    ),
    ("OTEL_TRACES_SAMPLER_ARG", "", "Ratio for the `traceidratio` samplers, 0.0–1.0."),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "2048", "Spans queued for export, 1–1000000; beyond it spans are dropped, never requests slowed."),
    ("OTEL_BSP_SCHEDULE_DELAY", "5000", "Milliseconds between export batches, at most 86400000 (a day)."),
    ("K8S_POD_NAME", "", "Downward API: becomes `k8s.pod.name`."),
    ("K8S_NAMESPACE_NAME", "", "Downward API: becomes `k8s.namespace.name`."),
    ("K8S_NODE_NAME", "", "Downward API: becomes `k8s.node.name`."),
];

/// Counters the exporter reports into.
#[derive(Clone)]
pub struct ExportCounters {
    pub exported: IntCounter,
    pub failed: IntCounter,
}

/// The tracing half of telemetry: what the request layer needs.
pub struct Tracing {
    /// `None` when `OTEL_SDK_DISABLED=true`.
    pub tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
    /// Where spans go, for the start-up log line.
    pub destination: String,
    /// An exporter is configured.
    exporting: bool,
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing").field("enabled", &self.tracer.is_some()).field("destination", &self.destination).finish()
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
        if env_flag("OTEL_SDK_DISABLED")? {
            return Ok(Self { tracer: None, provider: None, destination: "disabled".into(), exporting: false });
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
        let endpoint = traces_or_general("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT");
        let exporting = endpoint.is_some();
        let destination = match endpoint {
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
                let exporter = CountingExporter { inner: Arc::new(exporter), counters, runtime: runtime.clone() };
                let processor = BatchSpanProcessor::builder(exporter).with_batch_config(BatchConfigBuilder::default().build()).build();
                builder = builder.with_span_processor(processor);
                format!("{endpoint} ({protocol})")
            }
        };
        let provider = builder.build();
        use opentelemetry::trace::TracerProvider as _;
        let tracer = provider.tracer("outrider");
        Ok(Self { tracer: Some(tracer), provider: Some(provider), destination, exporting })
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
fn lower_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !LOWERED.with(|lowered| lowered.replace(true)) {
        if let Err(e) = rustix::process::nice(10) {
            tracing::debug!(error = %e, "could not lower the priority of a telemetry thread");
        }
    }
}

/// The variables the SDK reads itself, checked first: the SDK falls back to
/// its defaults on a value it cannot use, and a typo in a sampler name would
/// silently sample everything.
fn check_sdk_variables() -> Result<(), OtelError> {
    const SAMPLERS: [&str; 6] =
        ["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"];
    if let Some(sampler) = non_empty("OTEL_TRACES_SAMPLER") {
        if !SAMPLERS.contains(&sampler.as_str()) {
            return Err(OtelError::Invalid {
                var: "OTEL_TRACES_SAMPLER",
                value: sampler,
                reason: "expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            });
        }
    }
    if let Some(arg) = non_empty("OTEL_TRACES_SAMPLER_ARG") {
        if !arg.parse::<f64>().is_ok_and(|ratio| (0.0..=1.0).contains(&ratio)) {
            return Err(OtelError::Invalid { var: "OTEL_TRACES_SAMPLER_ARG", value: arg, reason: "expected a ratio from 0.0 to 1.0" });
        }
    }
    for (var, max, reason) in [
        ("OTEL_BSP_MAX_QUEUE_SIZE", 1_000_000, "expected a whole number from 1 to 1000000"),
        ("OTEL_BSP_SCHEDULE_DELAY", 86_400_000, "expected milliseconds from 1 to 86400000"),
    ] {
        if let Some(value) = non_empty(var) {
            if !value.parse::<u64>().is_ok_and(|n| (1..=max).contains(&n)) {
                return Err(OtelError::Invalid { var, value, reason });
            }
        }
    }
    Ok(())
}

fn env_flag(var: &'static str) -> Result<bool, OtelError> {
    match non_empty(var).map(|v| v.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(OtelError::Invalid { var, value: v, reason: "expected true or false" }),
    }
}

/// Counts what the collector accepted and what it did not, and runs each
/// export on the export runtime: the SDK's batch thread has no reactor, and
/// both the gRPC and the HTTP client need one.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: Arc<E>,
    counters: ExportCounters,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for ExportCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExportCounters")
    }
}

impl<E: SpanExporter + 'static> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // This runs on the SDK's batch thread, which outrider does not start.
        lower_priority();
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let inner = self.inner.clone();
        let result = match self.runtime.spawn(async move { inner.export(batch).await }).await {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(format!("export task failed: {e}"))),
        };
        match &result {
            Ok(()) => self.counters.exported.inc_by(n),
            Err(e) => {
                self.counters.failed.inc_by(n);
                warn!(spans = n, error = %e, "span export failed; spans dropped");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once, while building the provider: the only owner then.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
