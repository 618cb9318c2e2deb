//! The protobuf encoding of an `ExportTraceServiceRequest`, straight from
//! the SDK's `SpanData` into one buffer in one pass.

use std::{borrow::Cow, time::SystemTime};

use opentelemetry::{
    Array, InstrumentationScope, KeyValue, Value,
    trace::{SpanKind, Status},
};
use opentelemetry_sdk::{Resource, trace::SpanData};

// === protobuf encoding ===
//
// Field numbers are those of opentelemetry-proto's `trace.proto`,
// `common.proto` and `resource.proto` (v1). Proto3 scalars equal to their
// default are left out, as every protobuf encoder does.

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // Bits needed, 7 per byte; 0 still takes a byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, u64::from(field << 3 | u32::from(wire)));
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// Length of a length-delimited field holding `len` bytes.
fn field_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A `string`/`bytes` field, left out when empty.
fn string_field(buf: &mut Vec<u8>, field: u32, s: &[u8]) {
    if !s.is_empty() {
        bytes_field(buf, field, s);
    }
}

fn string_field_len(field: u32, s: &[u8]) -> usize {
    if s.is_empty() { 0 } else { field_len(field, s.len()) }
}

fn uint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, VARINT);
        varint(buf, v);
    }
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `AnyValue`'s encoded length.
fn any_value_len(value: &Value) -> usize {
    match value {
        // A oneof member is written even when it holds the default.
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => field_len(1, s.as_str().len()),
        Value::Array(array) => field_len(5, array_len(array)),
        other => field_len(1, other.as_str().len()),
    }
}

fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            tag(buf, 2, VARINT);
            buf.push(u8::from(*b));
        }
        Value::I64(i) => {
            tag(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => {
            tag(buf, 4, FIXED64);
            buf.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => bytes_field(buf, 1, s.as_str().as_bytes()),
        Value::Array(array) => {
            tag(buf, 5, LEN);
            varint(buf, array_len(array) as u64);
            array_values(buf, array);
        }
        other => bytes_field(buf, 1, other.as_str().as_bytes()),
    }
}

/// `ArrayValue`'s encoded length: each element an `AnyValue` in field 1.
fn array_len(array: &Array) -> usize {
    let elements = |lens: &mut dyn Iterator<Item = usize>| lens.map(|l| field_len(1, l)).sum();
    match array {
        Array::Bool(v) => elements(&mut v.iter().map(|_| 2)),
        Array::I64(v) => elements(&mut v.iter().map(|i| 1 + varint_len(*i as u64))),
        Array::F64(v) => elements(&mut v.iter().map(|_| 9)),
        Array::String(v) => elements(&mut v.iter().map(|s| field_len(1, s.as_str().len()))),
        other => elements(&mut std::iter::once(field_len(1, other.to_string().len()))),
    }
}

fn array_values(buf: &mut Vec<u8>, array: &Array) {
    let mut each = |value: Value| {
        tag(buf, 1, LEN);
        varint(buf, any_value_len(&value) as u64);
        any_value(buf, &value);
    };
    match array {
        Array::Bool(v) => v.iter().for_each(|b| each(Value::Bool(*b))),
        Array::I64(v) => v.iter().for_each(|i| each(Value::I64(*i))),
        Array::F64(v) => v.iter().for_each(|f| each(Value::F64(*f))),
        Array::String(v) => v.iter().for_each(|s| each(Value::String(s.clone()))),
        other => each(Value::String(other.to_string().into())),
    }
}

/// A `KeyValue` message in `field`.
fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    if short_key_value(buf, field, key, value) {
        return;
    }
    let value_len = any_value_len(value);
    tag(buf, field, LEN);
    varint(buf, (string_field_len(1, key.as_bytes()) + field_len(2, value_len)) as u64);
    string_field(buf, 1, key.as_bytes());
    tag(buf, 2, LEN);
    varint(buf, value_len as u64);
    any_value(buf, value);
}

/// The attributes of a server span are nearly all a short key with a
/// short string or a small integer: every tag and length then fits one
/// byte, and the message is written as two fixed-size headers and two
/// copies instead of field by field (a third of the encoder's time went
/// to `key_value`). False, having written nothing, for anything else.
fn short_key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value) -> bool {
    let key = key.as_bytes();
    let (value_field, value_bytes, int) = match value {
        Value::String(s) => (1, s.as_str().as_bytes(), 0),
        Value::I64(i) if (0..128).contains(i) => (3, &[][..], *i as u8),
        _ => return false,
    };
    // AnyValue: the member's tag, then its length and bytes or its varint.
    let any_len = if value_field == 1 { 2 + value_bytes.len() } else { 2 };
    let body_len = 2 + key.len() + 2 + any_len;
    if field >= 16 || key.is_empty() || body_len >= 128 {
        return false;
    }
    buf.reserve(2 + body_len);
    // Single-byte tags: (field << 3) | wire type. Lengths are < 128 here.
    buf.extend_from_slice(&[(field << 3) as u8 | LEN, body_len as u8, 1 << 3 | LEN, key.len() as u8]);
    buf.extend_from_slice(key);
    if value_field == 1 {
        buf.extend_from_slice(&[2 << 3 | LEN, any_len as u8, 1 << 3 | LEN, value_bytes.len() as u8]);
        buf.extend_from_slice(value_bytes);
    } else {
        buf.extend_from_slice(&[2 << 3 | LEN, any_len as u8, 3 << 3 | VARINT, int]);
    }
    true
}

fn attributes(buf: &mut Vec<u8>, field: u32, attributes: &[KeyValue]) {
    for kv in attributes {
        key_value(buf, field, kv.key.as_str(), &kv.value);
    }
}

/// `ResourceSpans.resource` (field 1) and `.schema_url` (field 3).
///
/// Public (and hidden) only for the fuzz target `fuzz/fuzz_targets/otlp.rs`.
#[doc(hidden)]
pub fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut inner = Vec::new();
    for (key, value) in resource.iter() {
        key_value(&mut inner, 1, key.as_str(), value);
    }
    let mut out = Vec::with_capacity(inner.len() + 16);
    bytes_field(&mut out, 1, &inner);
    string_field(&mut out, 3, resource.schema_url().unwrap_or("").as_bytes());
    out
}

/// `ScopeSpans.scope` (field 1): an `InstrumentationScope`.
fn encode_scope(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    let mut inner = Vec::new();
    string_field(&mut inner, 1, scope.name().as_bytes());
    string_field(&mut inner, 2, scope.version().unwrap_or("").as_bytes());
    for kv in scope.attributes() {
        key_value(&mut inner, 3, kv.key.as_str(), &kv.value);
    }
    bytes_field(buf, 1, &inner);
}

/// Span flags: the W3C trace flags, and whether the parent was remote.
fn span_flags(trace_flags: u8, remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// One `Span` message, without its tag and length.
fn encode_span(buf: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes_field(buf, 1, &context.trace_id().to_bytes());
    bytes_field(buf, 2, &context.span_id().to_bytes());
    let trace_state = context.trace_state().header();
    string_field(buf, 3, trace_state.as_bytes());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes_field(buf, 4, &span.parent_span_id.to_bytes());
    }
    string_field(buf, 5, span.name.as_bytes());
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    uint_field(buf, 6, kind);
    fixed64_field(buf, 7, nanos(span.start_time));
    fixed64_field(buf, 8, nanos(span.end_time));
    attributes(buf, 9, &span.attributes);
    uint_field(buf, 10, u64::from(span.dropped_attributes_count));
    for event in &span.events.events {
        let mut inner = Vec::new();
        fixed64_field(&mut inner, 1, nanos(event.timestamp));
        string_field(&mut inner, 2, event.name.as_bytes());
        attributes(&mut inner, 3, &event.attributes);
        uint_field(&mut inner, 4, u64::from(event.dropped_attributes_count));
        bytes_field(buf, 11, &inner);
    }
    uint_field(buf, 12, u64::from(span.events.dropped_count));
    for link in &span.links.links {
        let linked = &link.span_context;
        let mut inner = Vec::new();
        bytes_field(&mut inner, 1, &linked.trace_id().to_bytes());
        bytes_field(&mut inner, 2, &linked.span_id().to_bytes());
        string_field(&mut inner, 3, linked.trace_state().header().as_bytes());
        attributes(&mut inner, 4, &link.attributes);
        uint_field(&mut inner, 5, u64::from(link.dropped_attributes_count));
        tag(&mut inner, 6, FIXED32);
        inner.extend_from_slice(&span_flags(linked.trace_flags().to_u8(), linked.is_remote()).to_le_bytes());
        bytes_field(buf, 13, &inner);
    }
    uint_field(buf, 14, u64::from(span.links.dropped_count));
    let (code, message): (u64, Cow<'_, str>) = match &span.status {
        Status::Unset => (0, Cow::Borrowed("")),
        Status::Ok => (1, Cow::Borrowed("")),
        Status::Error { description } => (2, Cow::Borrowed(description.as_ref())),
    };
    // Always present, as opentelemetry-proto's conversion has it.
    tag(buf, 15, LEN);
    varint(buf, (string_field_len(2, message.as_bytes()) + if code == 0 { 0 } else { 1 + varint_len(code) }) as u64);
    string_field(buf, 2, message.as_bytes());
    uint_field(buf, 3, code);
    tag(buf, 16, FIXED32);
    buf.extend_from_slice(&span_flags(context.trace_flags().to_u8(), span.parent_span_is_remote).to_le_bytes());
}

/// An `ExportTraceServiceRequest` holding `batch`; with `grpc`, behind
/// gRPC's 5-byte message prefix. `resource` comes from [`encode_resource`].
///
/// Public (and hidden) only for the fuzz target `fuzz/fuzz_targets/otlp.rs`.
#[doc(hidden)]
pub fn encode_request(resource: &[u8], batch: &[SpanData], grpc: bool) -> Vec<u8> {
    // Spans grouped by instrumentation scope, in order of first sight
    // (nearly always one scope).
    let mut scopes: Vec<(&InstrumentationScope, Vec<u8>)> = Vec::new();
    let mut span = Vec::with_capacity(512);
    for data in batch {
        let scope = &data.instrumentation_scope;
        let i = match scopes.iter().position(|(s, _)| *s == scope) {
            Some(i) => i,
            None => {
                let mut head = Vec::with_capacity(batch.len() * 400);
                encode_scope(&mut head, scope);
                scopes.push((scope, head));
                scopes.len() - 1
            }
        };
        span.clear();
        encode_span(&mut span, data);
        bytes_field(&mut scopes[i].1, 2, &span);
    }
    let scope_spans_len =
        |(scope, body): &(&InstrumentationScope, Vec<u8>)| body.len() + string_field_len(3, scope.schema_url().unwrap_or("").as_bytes());
    let resource_spans_len = resource.len() + scopes.iter().map(|s| field_len(2, scope_spans_len(s))).sum::<usize>();
    let request_len = field_len(1, resource_spans_len);

    let mut out = Vec::with_capacity(5 + request_len);
    if grpc {
        // Uncompressed, then the length, big-endian.
        out.push(0);
        out.extend_from_slice(&u32::try_from(request_len).unwrap_or(u32::MAX).to_be_bytes());
    }
    tag(&mut out, 1, LEN);
    varint(&mut out, resource_spans_len as u64);
    out.extend_from_slice(resource);
    for entry in &scopes {
        tag(&mut out, 2, LEN);
        varint(&mut out, scope_spans_len(entry) as u64);
        out.extend_from_slice(&entry.1);
        string_field(&mut out, 3, entry.0.schema_url().unwrap_or("").as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Every field this encoder writes, decoded by the protobuf types
    /// collectors use, equals what opentelemetry-proto's own conversion
    /// produces from the same spans.
    #[test]
    fn encodes_what_opentelemetry_proto_would() {
        use opentelemetry::trace::{Event, Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        use opentelemetry_proto::{
            tonic::collector::trace::v1::ExportTraceServiceRequest,
            transform::{common::tonic::ResourceAttributesWithSchema, trace::tonic::group_spans_by_resource_and_scope},
        };
        use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
        use prost::Message;

        let resource = Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "shop"), KeyValue::new("k8s.pod.name", "shop-1")])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.26.0")
            .build();
        let scope = InstrumentationScope::builder("outrider").with_version("1.2.3").with_attributes([KeyValue::new("a", 1_i64)]).build();
        let other_scope = InstrumentationScope::builder("other").with_schema_url("https://example.com/s").build();
        let context = |trace: u128, span: u64, remote| {
            SpanContext::new(
                TraceId::from(trace),
                SpanId::from(span),
                TraceFlags::SAMPLED,
                remote,
                TraceState::from_key_value([("vendor", "v1")]).unwrap(),
            )
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut events = SpanEvents::default();
        events.events.push(Event::new("retry", t0 + Duration::from_millis(1), vec![KeyValue::new("attempt", 2_i64)], 1));
        events.dropped_count = 3;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(context(7, 8, true), vec![KeyValue::new("why", "follows")], 0));
        let span = |scope: &InstrumentationScope, span: u64, parent: u64, status: Status, attributes: Vec<KeyValue>| SpanData {
            span_context: context(0x0af7651916cd43dd8448eb211c80319c, span, false),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: parent != 0,
            span_kind: if parent == 0 { SpanKind::Server } else { SpanKind::Client },
            name: "GET /users/{id}".into(),
            start_time: t0,
            end_time: t0 + Duration::from_micros(1500),
            attributes,
            dropped_attributes_count: 2,
            events: events.clone(),
            links: links.clone(),
            status,
            instrumentation_scope: scope.clone(),
        };
        let batch = vec![
            span(
                &scope,
                1,
                0xb7ad6b7169203331,
                Status::error("upstream_timeout"),
                vec![
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("empty", ""),
                    KeyValue::new("http.response.status_code", 504_i64),
                    KeyValue::new("negative", -1_i64),
                    KeyValue::new("flag", false),
                    KeyValue::new("ratio", 0.25_f64),
                    KeyValue::new(
                        "list",
                        Value::Array(vec!["a", "b"].into_iter().map(Into::into).collect::<Vec<opentelemetry::StringValue>>().into()),
                    ),
                    KeyValue::new("ints", Value::Array(vec![1_i64, -2, 300].into())),
                    KeyValue::new("bools", Value::Array(vec![true, false].into())),
                    KeyValue::new("floats", Value::Array(vec![1.5_f64].into())),
                    // Around the one-byte-length shortcut: the longest
                    // value that takes it, one byte more, far more, an
                    // integer just past it, and an empty key.
                    KeyValue::new("url.path", "/".repeat(127 - 2 - 8 - 2 - 2)),
                    KeyValue::new("url.path", "/".repeat(127 - 2 - 8 - 2 - 2 + 1)),
                    KeyValue::new("url.query", "q=".repeat(300)),
                    KeyValue::new("server.port", 128_i64),
                    KeyValue::new("", "no key"),
                ],
            ),
            span(&other_scope, 2, 0, Status::Ok, vec![]),
            span(&scope, 3, 0, Status::Unset, vec![KeyValue::new("url.path", "/users/7")]),
        ];

        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch.clone(), &ResourceAttributesWithSchema::from(&resource)),
        };
        let ours = encode_request(&encode_resource(&resource), &batch, false);
        assert_eq!(ExportTraceServiceRequest::decode(&ours[..]).unwrap(), theirs);
        assert_eq!(ours.len(), theirs.encoded_len(), "same bytes, not only the same meaning");

        let framed = encode_request(&encode_resource(&resource), &batch, true);
        assert_eq!(framed[0], 0, "uncompressed");
        assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, framed.len() - 5);
        assert_eq!(&framed[5..], &ours[..]);
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
        }
    }
}
