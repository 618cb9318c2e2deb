//! OTLP span export, over HTTP/protobuf or gRPC, encoding straight from
//! the SDK's `SpanData` into protobuf bytes.
//!
//! Why not opentelemetry-otlp's exporter: it first converts every span
//! into opentelemetry-proto's message structs (a `String` and a `Vec` for
//! each attribute), then encodes those, then frees them all. With every
//! request traced that was two thirds of tracing's CPU cost. Here a batch
//! is written into one buffer in one pass.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header::CONTENT_TYPE};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};

use super::env::{OtelError, non_empty, traces_or_general};

mod encode;
mod transport;

#[doc(hidden)]
pub use encode::{encode_request, encode_resource};
use transport::Reply;
use transport::{CollectorTls, Compression};
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
            Some((_, v)) if v.eq_ignore_ascii_case("true") => true,
            Some((_, v)) if v.eq_ignore_ascii_case("false") => false,
            Some((var, v)) => return Err(OtelError::Invalid { var, value: v, reason: "expected true or false" }),
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

    /// One batch, one attempt: what the collector's answer means.
    async fn deliver(&self, body: Bytes) -> Result<(), String> {
        match self.transport.send(body).await.map_err(|e| e.0)? {
            Reply::Http { status, .. } if status.is_success() => Ok(()),
            Reply::Http { status, .. } => Err(format!("collector answered {status}")),
            Reply::Grpc { code: 0, .. } => Ok(()),
            Reply::Grpc { code, message, .. } => Err(format!("collector answered gRPC status {code}: {message}")),
        }
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = self.transport.frame(encode_request(&self.resource, &batch, false));
        match tokio::time::timeout(self.timeout, self.deliver(body)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OTelSdkError::InternalFailure(e)),
            Err(_) => Err(OTelSdkError::Timeout(self.timeout)),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = encode_resource(resource);
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
    use super::*;

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
