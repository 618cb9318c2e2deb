//! OTLP span export, over HTTP/protobuf or gRPC, encoding straight from
//! the SDK's `SpanData` into protobuf bytes.
//!
//! Why not opentelemetry-otlp's exporter: it first converts every span
//! into opentelemetry-proto's message structs (a `String` and a `Vec` for
//! each attribute), then encodes those, then frees them all. With every
//! request traced that was two thirds of tracing's CPU cost. Here a batch
//! is written into one buffer in one pass.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderName, HeaderValue, Uri, header::CONTENT_TYPE};
use opentelemetry_sdk::{Resource, trace::SpanData};
use retry::{Jitter, Verdict, backoff, judge};
use tokio::time::Instant;
use tracing::debug;

use super::env::{OtelError, flag, non_empty, traces_or_general};

mod encode;
mod retry;
mod transport;

#[doc(hidden)]
pub use encode::{encode_request, encode_resource};
use transport::{CollectorTls, Compression, Reply, TransportError};
pub use transport::{Transport, Wire};

/// Sends batches of spans to one collector.
pub struct OtlpExporter {
    transport: Transport,
    timeout: Duration,
    /// The `resource` and `schema_url` fields of `ResourceSpans`, encoded
    /// once.
    resource: Vec<u8>,
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter").field("transport", &self.transport).finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// Builds the exporter from the `OTEL_EXPORTER_OTLP_*` variables.
    /// `endpoint` comes from `var`: the traces-only variable's URL is used
    /// as given, the general one's gets `/v1/traces` added for HTTP.
    pub fn from_env(var: &'static str, endpoint: &str, wire: Wire) -> Result<Self, OtelError> {
        let signal_specific = var == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
        let invalid = |reason| OtelError::Invalid { var, value: endpoint.to_owned(), reason };
        let base: Uri = endpoint.parse().map_err(|_| invalid("not a URL"))?;
        // `OTEL_EXPORTER_OTLP_INSECURE` applies, per the specification, to a
        // gRPC endpoint without a scheme (`collector:4317`): TLS unless it
        // is true. A scheme says it all.
        let insecure = match traces_or_general("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE") {
            None => false,
            Some((var, value)) => flag(var, value)?,
        };
        let tls = match (base.scheme_str(), wire) {
            (Some("http"), _) => false,
            (Some("https"), _) => true,
            (None, Wire::Grpc) => !insecure,
            (None, Wire::Http) => return Err(invalid("expected an http:// or https:// URL")),
            (Some(_), _) => return Err(invalid("expected an http://, https:// or (gRPC) scheme-less host:port endpoint")),
        };
        let Some(authority) = base.authority().cloned() else { return Err(invalid("no host in the URL")) };
        let path = match wire {
            Wire::Grpc => "/opentelemetry.proto.collector.trace.v1.TraceService/Export".to_owned(),
            Wire::Http if signal_specific => base.path().to_owned(),
            Wire::Http => format!("{}/v1/traces", base.path().trim_end_matches('/')),
        };
        let uri = Uri::builder()
            .scheme(if tls { "https" } else { "http" })
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| invalid("not a URL"))?;
        let tls = if tls {
            // gRPC needs HTTP/2. HTTP/protobuf stays on HTTP/1.1 over TLS
            // as in clear: one request every few seconds gains nothing from
            // HTTP/2's streams, and every OTLP/HTTP receiver speaks 1.1.
            let alpn: &'static [u8] = if wire == Wire::Grpc { b"h2" } else { b"http/1.1" };
            Some(CollectorTls::from_env(var, endpoint, authority.host(), alpn)?)
        } else {
            None
        };
        let compression = match traces_or_general("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION") {
            None => Compression::None,
            Some((_, v)) if v == "none" => Compression::None,
            Some((_, v)) if v == "gzip" => Compression::Gzip,
            Some((var, v)) => return Err(OtelError::Invalid { var, value: v, reason: "expected gzip or none" }),
        };

        // Every request's headers, built once: the configured ones, then
        // the protocol's own, which win over a configured one.
        let mut headers = HeaderMap::new();
        for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            if let Some(list) = non_empty(var) {
                parse_headers(var, &list, &mut headers)?;
            }
        }
        // The OTLP specification asks exporters to name themselves.
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(http::header::USER_AGENT, HeaderValue::from_static(concat!("outrider/", env!("CARGO_PKG_VERSION"))));
        }
        match wire {
            Wire::Http => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
            }
            Wire::Grpc => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
            }
        }
        let timeout = match traces_or_general("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            None => Duration::from_secs(10),
            Some((var, v)) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(OtelError::Invalid { var, value: v, reason: "expected milliseconds, a positive integer" }),
            },
        };
        // Last, once nothing can fail: a configuration error is one line.
        match &tls {
            None => transport::warn_if_tls_configured(),
            Some((tls, _)) => tls.log_roots(),
        }
        let transport = Transport::new(uri, wire, headers, compression, tls);
        Ok(Self { transport, timeout, resource: encode_resource(&Resource::builder_empty().build()) })
    }

    /// The export timeout: how long one batch may take, retries included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The resource every batch is sent with (the provider's).
    pub fn set_resource(&mut self, resource: &Resource) {
        self.resource = encode_resource(resource);
    }

    /// Sends one batch until the collector takes it, refuses it for good,
    /// or the export timeout has passed since now; `cutoff` (the exit's
    /// deadline) can end it sooner. The batch is encoded once; every
    /// attempt sends the same bytes.
    pub async fn export(&self, batch: &[SpanData], cutoff: Option<Instant>) -> Delivery {
        let body = self.transport.frame(encode_request(&self.resource, batch, false));
        let deadline = Instant::now() + self.timeout;
        let deadline = cutoff.map_or(deadline, |cutoff| cutoff.min(deadline));
        // Seeded per batch: a few nanoseconds, and no state to share.
        let mut jitter = Jitter::new();
        deliver(|| self.transport.send(body.clone()), deadline, &mut jitter).await
    }
}

/// How a batch's export ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The collector took it; `rejected` of its spans it refused
    /// (`partial_success`), saying `message`.
    Accepted { rejected: u64, message: String },
    /// Not delivered: refused for good, or still failing at the deadline.
    /// `status` is the last answer (`HTTP 400`, `gRPC UNAVAILABLE (14)`,
    /// `no answer`), `message` the collector's explanation.
    Failed { status: String, message: String, attempts: u32 },
}

/// Attempts until the answer is final or `deadline` passes, waiting
/// between attempts as the collector asked (`Retry-After`, `RetryInfo`)
/// or else by exponential backoff with jitter, every wait cut short at the
/// deadline: the export timeout bounds the whole batch.
async fn deliver<F, Fut>(mut attempt: F, deadline: Instant, jitter: &mut Jitter) -> Delivery
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Reply, TransportError>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Delivery::Failed { status: "no answer".to_owned(), message: "the export timeout passed".to_owned(), attempts };
            }
        };
        match judge(&outcome, SystemTime::now()) {
            Verdict::Accepted { rejected, message } => return Delivery::Accepted { rejected, message },
            Verdict::Fail { status, message } => return Delivery::Failed { status, message, attempts },
            Verdict::Retry { after, status, message } => {
                let asked = after.is_some();
                let wait = after.unwrap_or_else(|| backoff(attempts - 1, jitter.unit()));
                let wait = wait.min(deadline.saturating_duration_since(Instant::now()));
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                debug!(attempt = attempts, status, detail = message, wait_ms, asked, "span export attempt failed; retrying");
                tokio::time::sleep(wait).await;
                if Instant::now() >= deadline {
                    return Delivery::Failed { status, message, attempts };
                }
            }
        }
    }
}

/// `key=value,key2=value2`, values percent-encoded (the OTLP exporter
/// specification's format).
fn parse_headers(var: &'static str, list: &str, headers: &mut HeaderMap) -> Result<(), OtelError> {
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let invalid = |reason| OtelError::Invalid { var, value: list.to_owned(), reason };
        let (name, value) = pair.split_once('=').ok_or_else(|| invalid("expected key=value pairs"))?;
        let name = HeaderName::try_from(name.trim()).map_err(|_| invalid("not a valid header name"))?;
        let value = percent_decode(value.trim()).ok_or_else(|| invalid("bad percent-encoding"))?;
        let value = HeaderValue::try_from(value).map_err(|_| invalid("not a valid header value"))?;
        headers.append(name, value);
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::VecDeque};

    use bytes::Bytes;
    use http::StatusCode;

    use super::*;

    /// Runs the loop against scripted answers, recording when each attempt
    /// was made (paused time: exact).
    async fn scripted(answers: Vec<Option<Result<Reply, TransportError>>>, timeout: Duration) -> (Delivery, Vec<Duration>) {
        let start = Instant::now();
        let answers = RefCell::new(VecDeque::from(answers));
        let times = RefCell::new(Vec::new());
        let delivery = deliver(
            || {
                times.borrow_mut().push(start.elapsed());
                // Past the script, the same as its last answer; None: never answers.
                let next = answers.borrow_mut().pop_front().unwrap_or_else(|| Some(Err(TransportError("refused".into()))));
                async move {
                    match next {
                        Some(answer) => answer,
                        None => std::future::pending().await,
                    }
                }
            },
            start + timeout,
            &mut Jitter::new(),
        )
        .await;
        (delivery, times.into_inner())
    }

    fn http(status: u16, retry_after: Option<&'static str>) -> Option<Result<Reply, TransportError>> {
        Some(Ok(Reply::Http {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: retry_after.map(http::HeaderValue::from_static),
            body: Bytes::new(),
        }))
    }

    fn grpc(code: u32) -> Option<Result<Reply, TransportError>> {
        Some(Ok(Reply::Grpc { code, message: "busy".into(), details: None, body: Bytes::new() }))
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_until_accepted() {
        let (delivery, times) = scripted(vec![http(503, Some("1")), http(503, Some("1")), http(200, None)], TIMEOUT).await;
        assert_eq!(delivery, Delivery::Accepted { rejected: 0, message: String::new() });
        assert_eq!(times, [Duration::ZERO, Duration::from_secs(1), Duration::from_secs(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_jitter_and_never_passes_the_deadline() {
        for _ in 0..50 {
            let (delivery, times) = scripted(vec![grpc(14)], TIMEOUT).await;
            assert!(matches!(&delivery, Delivery::Failed { attempts, .. } if *attempts as usize == times.len()), "{delivery:?}");
            // The waits: 0.5–1 s, 1–2 s, 2–4 s, ... each inside its step.
            for (i, pair) in times.windows(2).enumerate() {
                let step = retry::INITIAL_BACKOFF * (1 << i);
                let wait = pair[1] - pair[0];
                assert!(wait >= step / 2 && wait <= step, "wait {i}: {wait:?} ({times:?})");
            }
            assert!(times.len() >= 3 && times.len() <= 5, "{times:?}");
            assert!(*times.last().unwrap() < TIMEOUT, "{times:?}");
        }
        // Gave up exactly at the deadline, not before, not after.
        let start = Instant::now();
        scripted(vec![grpc(14)], TIMEOUT).await;
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_time_left_ends_at_the_deadline() {
        let start = Instant::now();
        let (delivery, times) = scripted(vec![http(429, Some("3600")), http(200, None)], TIMEOUT).await;
        assert_eq!(times.len(), 1);
        assert_eq!(start.elapsed(), TIMEOUT);
        assert_eq!(delivery, Delivery::Failed { status: "HTTP 429".into(), message: String::new(), attempts: 1 });
    }

    #[tokio::test(start_paused = true)]
    async fn final_answers_are_not_retried() {
        for answer in [http(400, None), http(401, None), http(404, None), grpc(3), grpc(8), grpc(16)] {
            let (delivery, times) = scripted(vec![answer, http(200, None)], TIMEOUT).await;
            assert_eq!(times.len(), 1);
            assert!(matches!(delivery, Delivery::Failed { attempts: 1, .. }), "{delivery:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_never_answers_ends_at_the_deadline() {
        let start = Instant::now();
        let (delivery, times) = scripted(vec![grpc(14), None], TIMEOUT).await;
        assert_eq!(times.len(), 2);
        assert_eq!(start.elapsed(), TIMEOUT);
        assert!(matches!(&delivery, Delivery::Failed { status, attempts: 2, .. } if status == "no answer"), "{delivery:?}");
    }

    #[test]
    fn headers_are_parsed_and_percent_decoded() {
        let mut headers = HeaderMap::new();
        parse_headers("V", "api-key=a%20b%3Dc, x-team = core ,", &mut headers).unwrap();
        assert_eq!(headers["api-key"], "a b=c");
        assert_eq!(headers["x-team"], "core");
        assert!(parse_headers("V", "novalue", &mut headers).is_err());
        assert!(parse_headers("V", "k=%zz", &mut headers).is_err());
    }
}
