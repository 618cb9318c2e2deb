//! Trace context propagation: which header formats outrider reads a
//! caller's trace from and writes its own span into (`OTEL_PROPAGATORS`),
//! and the B3 formats that Zipkin-instrumented callers speak.
//!
//! W3C Trace Context is read by the SDK's propagator and written by the
//! request layer (`observe`), which formats `traceparent` without `fmt`.
//! B3 is parsed and written here, by hand: it is a few hex fields, and
//! opentelemetry-zipkin's propagator would bring the Zipkin exporter's
//! dependencies for them.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use super::env::{OtelError, non_empty};

/// One propagation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// W3C `traceparent` / `tracestate`.
    TraceContext,
    /// W3C `baggage`: named for completeness; outrider has no use for
    /// baggage and forwards the header untouched either way.
    Baggage,
    /// Zipkin's single `b3` header.
    B3,
    /// Zipkin's `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` headers.
    B3Multi,
}

/// The configured formats, in order. Extraction follows the composite
/// propagator of the OpenTelemetry specification: each format in turn, a
/// later one's context replacing an earlier one's. Injection writes every
/// configured format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagators {
    formats: [Option<Format>; 4],
}

impl Default for Propagators {
    /// `tracecontext,baggage`, the specification's default.
    fn default() -> Self {
        Self { formats: [Some(Format::TraceContext), Some(Format::Baggage), None, None] }
    }
}

impl Propagators {
    /// No format: outrider neither reads nor writes trace headers; every
    /// span starts a new trace and the headers reach the app as sent.
    pub const NONE: Self = Self { formats: [None; 4] };

    /// From `OTEL_PROPAGATORS`.
    ///
    /// # Errors
    /// An unknown or unsupported name, or `none` together with another.
    pub fn from_env() -> Result<Self, OtelError> {
        match non_empty("OTEL_PROPAGATORS") {
            None => Ok(Self::default()),
            Some(list) => Self::parse(&list),
        }
    }

    fn parse(list: &str) -> Result<Self, OtelError> {
        let invalid = |reason| OtelError::Invalid { var: "OTEL_PROPAGATORS", value: list.to_owned(), reason };
        let mut out = Self::NONE;
        let mut none = false;
        let mut n = 0;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let format = match name.to_ascii_lowercase().as_str() {
                "tracecontext" => Format::TraceContext,
                "baggage" => Format::Baggage,
                "b3" => Format::B3,
                "b3multi" => Format::B3Multi,
                "none" => {
                    none = true;
                    continue;
                }
                "jaeger" | "xray" | "ottrace" => {
                    return Err(invalid("jaeger, xray and ottrace are not supported; expected tracecontext, baggage, b3, b3multi or none"));
                }
                _ => return Err(invalid("expected a comma-separated list of tracecontext, baggage, b3, b3multi, or none")),
            };
            if out.formats[..n].contains(&Some(format)) {
                continue;
            }
            out.formats[n] = Some(format);
            n += 1;
        }
        if none && n > 0 {
            return Err(invalid("none cannot be combined with other propagators"));
        }
        Ok(out)
    }

    pub fn has(&self, format: Format) -> bool {
        self.formats.contains(&Some(format))
    }

    /// The formats in configured order.
    pub fn iter(&self) -> impl Iterator<Item = Format> + '_ {
        self.formats.iter().flatten().copied()
    }

    /// For the start-up log line.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self
            .iter()
            .map(|f| match f {
                Format::TraceContext => "tracecontext",
                Format::Baggage => "baggage",
                Format::B3 => "b3",
                Format::B3Multi => "b3multi",
            })
            .collect();
        if names.is_empty() { "none".to_owned() } else { names.join(",") }
    }
}

pub static B3: HeaderName = HeaderName::from_static("b3");
pub static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A caller's span from the single `b3` header:
/// `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`. A lone
/// sampling state (`b3: 0`) carries no span and gives `None`.
pub fn extract_b3(headers: &HeaderMap) -> Option<SpanContext> {
    let value = headers.get(&B3)?.to_str().ok()?;
    let mut fields = value.split('-');
    let trace_id = trace_id(fields.next()?)?;
    let span_id = span_id(fields.next()?)?;
    let sampled = match fields.next() {
        None => None,
        Some(state) => Some(sampling_state(state)?),
    };
    if let Some(parent) = fields.next() {
        span_id_checked(parent)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(remote(trace_id, span_id, sampled))
}

/// A caller's span from the `X-B3-*` headers.
pub fn extract_b3_multi(headers: &HeaderMap) -> Option<SpanContext> {
    let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let trace_id = trace_id(get(&X_B3_TRACE_ID)?)?;
    let span_id = span_id(get(&X_B3_SPAN_ID)?)?;
    // Debug (`X-B3-Flags: 1`) implies sampled.
    let sampled = if get(&X_B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        match get(&X_B3_SAMPLED) {
            None => None,
            Some("1") | Some("true") => Some(true),
            Some("0") | Some("false") => Some(false),
            Some(_) => return None,
        }
    };
    Some(remote(trace_id, span_id, sampled))
}

/// A deferred sampling decision (no sampling state) is taken as "not
/// sampled", as the OpenTelemetry Java and Go B3 propagators do: a caller
/// that did not decide does not force outrider to record.
fn remote(trace_id: TraceId, span_id: SpanId, sampled: Option<bool>) -> SpanContext {
    let flags = if sampled == Some(true) { TraceFlags::SAMPLED } else { TraceFlags::default() };
    SpanContext::new(trace_id, span_id, flags, true, TraceState::default())
}

fn sampling_state(state: &str) -> Option<bool> {
    match state {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// 32 or 16 lowercase or uppercase hex digits; a 64-bit id is the low half
/// of the 128-bit one. All zeros is invalid.
fn trace_id(hex: &str) -> Option<TraceId> {
    if hex.len() != 32 && hex.len() != 16 {
        return None;
    }
    let id = u128::from_str_radix(hex, 16).ok().filter(|id| *id != 0)?;
    hex.bytes().all(|b| b.is_ascii_hexdigit()).then(|| TraceId::from(id))
}

fn span_id_checked(hex: &str) -> Option<u64> {
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().filter(|id| *id != 0)
}

fn span_id(hex: &str) -> Option<SpanId> {
    span_id_checked(hex).map(SpanId::from)
}

/// Writes `sc` as the single `b3` header: `{trace}-{span}-{1|0}`.
pub fn inject_b3(sc: &SpanContext, headers: &mut HeaderMap) {
    let mut v = [0u8; 32 + 1 + 16 + 2];
    hex_into(&sc.trace_id().to_bytes(), &mut v[..32]);
    v[32] = b'-';
    hex_into(&sc.span_id().to_bytes(), &mut v[33..49]);
    v[49] = b'-';
    v[50] = if sc.is_sampled() { b'1' } else { b'0' };
    if let Ok(value) = HeaderValue::from_bytes(&v) {
        headers.insert(B3.clone(), value);
    }
}

/// Writes `sc` as the `X-B3-*` headers. The caller's `X-B3-ParentSpanId`
/// and `X-B3-Flags` described its own span and are removed.
pub fn inject_b3_multi(sc: &SpanContext, headers: &mut HeaderMap) {
    let mut trace = [0u8; 32];
    hex_into(&sc.trace_id().to_bytes(), &mut trace);
    let mut span = [0u8; 16];
    hex_into(&sc.span_id().to_bytes(), &mut span);
    if let (Ok(trace), Ok(span)) = (HeaderValue::from_bytes(&trace), HeaderValue::from_bytes(&span)) {
        headers.insert(X_B3_TRACE_ID.clone(), trace);
        headers.insert(X_B3_SPAN_ID.clone(), span);
        headers.insert(X_B3_SAMPLED.clone(), HeaderValue::from_static(if sc.is_sampled() { "1" } else { "0" }));
    }
    headers.remove(&X_B3_PARENT_SPAN_ID);
    headers.remove(&X_B3_FLAGS);
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn otel_propagators_is_parsed_strictly() {
        assert_eq!(Propagators::parse("tracecontext,baggage").unwrap(), Propagators::default());
        let p = Propagators::parse(" b3multi , TraceContext,b3multi").unwrap();
        assert_eq!(p.iter().collect::<Vec<_>>(), [Format::B3Multi, Format::TraceContext]);
        assert_eq!(Propagators::parse("none").unwrap(), Propagators::NONE);
        assert_eq!(Propagators::NONE.names(), "none");
        for bad in ["tracecontext,b3single", "none,b3", "jaeger", "w3c"] {
            let e = Propagators::parse(bad).unwrap_err().to_string();
            assert!(e.contains("OTEL_PROPAGATORS"), "{e}");
        }
    }

    #[test]
    fn b3_single_header() {
        let sc = extract_b3(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")])).unwrap();
        assert_eq!(format!("{:032x}", sc.trace_id()), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(format!("{:016x}", sc.span_id()), "e457b5a2e4d86bd1");
        assert!(sc.is_sampled() && sc.is_remote());
        // 64-bit trace id, debug, deferred, denied.
        let sc = extract_b3(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")])).unwrap();
        assert_eq!(format!("{:032x}", sc.trace_id()), "000000000000000064fe8b2a57d3eff7");
        assert!(sc.is_sampled());
        assert!(!extract_b3(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")])).unwrap().is_sampled());
        assert!(!extract_b3(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")])).unwrap().is_sampled());
        for bad in [
            "0",
            "",
            "xyz-e457b5a2e4d86bd1-1",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd-1",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
            "64fe8b2a57d3eff7-0000000000000000-1",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
            "+4fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        ] {
            assert!(extract_b3(&headers(&[("b3", bad)])).is_none(), "{bad}");
        }
    }

    #[test]
    fn b3_multi_headers() {
        let h =
            headers(&[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-sampled", "1")]);
        let sc = extract_b3_multi(&h).unwrap();
        assert_eq!(format!("{:032x}", sc.trace_id()), "463ac35c9f6413ad48485a3953bb6124");
        assert!(sc.is_sampled());
        let h = headers(&[("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-flags", "1")]);
        assert!(extract_b3_multi(&h).unwrap().is_sampled(), "debug implies sampled");
        let h = headers(&[("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-sampled", "yes")]);
        assert!(extract_b3_multi(&h).is_none());
        assert!(extract_b3_multi(&headers(&[("x-b3-spanid", "a2fb4a1d1a96d312")])).is_none());
    }

    #[test]
    fn injected_b3_reads_back() {
        let sc = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            SpanId::from(0xb7ad6b7169203331),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut h = headers(&[("x-b3-parentspanid", "05e3ac9a4f6e3b90"), ("x-b3-flags", "1")]);
        inject_b3(&sc, &mut h);
        inject_b3_multi(&sc, &mut h);
        assert_eq!(h["b3"], "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1");
        assert_eq!(h["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(h["x-b3-spanid"], "b7ad6b7169203331");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("x-b3-parentspanid") && !h.contains_key("x-b3-flags"));
        for extracted in [extract_b3(&h).unwrap(), extract_b3_multi(&h).unwrap()] {
            assert_eq!((extracted.trace_id(), extracted.span_id(), extracted.is_sampled()), (sc.trace_id(), sc.span_id(), true));
        }
    }
}
