//! outrider's hand-written OTLP encoder (`telemetry::otlp`) against the
//! official types, as the unit test `encodes_what_opentelemetry_proto_would`
//! does for one batch: arbitrary spans (names, attributes of every value
//! type, events, links, status, ids, scopes, resource).
//!
//! Invariant: what outrider encodes decodes (prost) into the
//! `ExportTraceServiceRequest` that opentelemetry-proto's own conversion
//! makes of the same spans, and is as long as prost's encoding of it; the
//! gRPC form is the same bytes behind an uncompressed 5-byte prefix.
//!
//! A timestamp past what `u64` nanoseconds hold (the year 2554) is written
//! as `u64::MAX` by outrider, on purpose, where opentelemetry-proto's
//! conversion wraps around (`as u64`): the expected side is made from the
//! time clamped to `u64::MAX` nanoseconds.

#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{common::tonic::ResourceAttributesWithSchema, trace::tonic::group_spans_by_resource_and_scope},
};
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanEvents, SpanLinks},
};
use outrider::telemetry::otlp::{encode_request, encode_resource};
use prost::Message;

#[derive(Arbitrary, Debug)]
enum AnyValue {
    Bool(bool),
    I64(i64),
    /// Small integers and short strings take the encoder's shortcut.
    Small(u8),
    F64(f64),
    String(String),
    Bools(Vec<bool>),
    I64s(Vec<i64>),
    F64s(Vec<f64>),
    Strings(Vec<String>),
}

impl AnyValue {
    fn value(&self) -> Value {
        match self {
            Self::Bool(b) => Value::Bool(*b),
            Self::I64(i) => Value::I64(*i),
            Self::Small(i) => Value::I64(i64::from(*i) - 1),
            Self::F64(f) => Value::F64(*f),
            Self::String(s) => Value::String(s.clone().into()),
            Self::Bools(v) => Value::Array(Array::Bool(v.clone())),
            Self::I64s(v) => Value::Array(Array::I64(v.clone())),
            Self::F64s(v) => Value::Array(Array::F64(v.clone())),
            Self::Strings(v) => Value::Array(Array::String(v.iter().cloned().map(StringValue::from).collect())),
        }
    }
}

type Attributes = Vec<(String, AnyValue)>;

fn attributes(attributes: &Attributes) -> Vec<KeyValue> {
    attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.value())).collect()
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Time {
    Nanos(u64),
    BeforeEpoch(u64),
    /// Seconds, past the year 2554 for most values.
    Far(u64),
}

impl Time {
    fn at(self) -> SystemTime {
        match self {
            Self::Nanos(n) => UNIX_EPOCH + Duration::from_nanos(n),
            Self::BeforeEpoch(n) => UNIX_EPOCH.checked_sub(Duration::from_nanos(n)).unwrap_or(UNIX_EPOCH),
            Self::Far(s) => UNIX_EPOCH.checked_add(Duration::from_secs(s)).unwrap_or(UNIX_EPOCH),
        }
    }
}

/// The time opentelemetry-proto is given: at most `u64::MAX` nanoseconds.
fn clamped(t: SystemTime) -> SystemTime {
    let max = UNIX_EPOCH + Duration::from_nanos(u64::MAX);
    t.min(max)
}

#[derive(Arbitrary, Debug)]
struct Context {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    remote: bool,
    /// A `tracestate` header, kept when valid.
    trace_state: String,
}

impl Context {
    fn context(&self) -> SpanContext {
        let state = self.trace_state.parse::<TraceState>().unwrap_or_default();
        SpanContext::new(TraceId::from(self.trace_id), SpanId::from(self.span_id), TraceFlags::new(self.flags), self.remote, state)
    }
}

#[derive(Arbitrary, Debug)]
struct EventInput {
    name: String,
    time: Time,
    attributes: Attributes,
    dropped: u32,
}

#[derive(Arbitrary, Debug)]
struct LinkInput {
    context: Context,
    attributes: Attributes,
    dropped: u32,
}

#[derive(Arbitrary, Debug)]
enum StatusInput {
    Unset,
    Ok,
    Error(String),
}

#[derive(Arbitrary, Debug)]
struct ScopeInput {
    name: String,
    version: Option<String>,
    schema_url: Option<String>,
    attributes: Attributes,
}

#[derive(Arbitrary, Debug)]
struct SpanInput {
    context: Context,
    parent: u64,
    parent_remote: bool,
    kind: u8,
    name: String,
    start: Time,
    end: Time,
    attributes: Attributes,
    dropped_attributes: u32,
    events: Vec<EventInput>,
    dropped_events: u32,
    links: Vec<LinkInput>,
    dropped_links: u32,
    status: StatusInput,
    /// Index into the input's scopes, so that spans share them.
    scope: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    resource: Attributes,
    resource_schema_url: Option<String>,
    scopes: Vec<ScopeInput>,
    spans: Vec<SpanInput>,
}

fn scope(s: &ScopeInput) -> InstrumentationScope {
    let mut builder = InstrumentationScope::builder(s.name.clone()).with_attributes(attributes(&s.attributes));
    if let Some(version) = &s.version {
        builder = builder.with_version(version.clone());
    }
    if let Some(url) = &s.schema_url {
        builder = builder.with_schema_url(url.clone());
    }
    builder.build()
}

fn span(s: &SpanInput, scopes: &[InstrumentationScope]) -> SpanData {
    let mut events = SpanEvents::default();
    events.events = s.events.iter().map(|e| Event::new(e.name.clone(), e.time.at(), attributes(&e.attributes), e.dropped)).collect();
    events.dropped_count = s.dropped_events;
    let mut links = SpanLinks::default();
    links.links = s.links.iter().map(|l| Link::new(l.context.context(), attributes(&l.attributes), l.dropped)).collect();
    links.dropped_count = s.dropped_links;
    let kinds = [SpanKind::Internal, SpanKind::Server, SpanKind::Client, SpanKind::Producer, SpanKind::Consumer];
    SpanData {
        span_context: s.context.context(),
        parent_span_id: SpanId::from(s.parent),
        parent_span_is_remote: s.parent_remote,
        span_kind: kinds[usize::from(s.kind) % kinds.len()].clone(),
        name: s.name.clone().into(),
        start_time: s.start.at(),
        end_time: s.end.at(),
        attributes: attributes(&s.attributes),
        dropped_attributes_count: s.dropped_attributes,
        events,
        links,
        status: match &s.status {
            StatusInput::Unset => Status::Unset,
            StatusInput::Ok => Status::Ok,
            StatusInput::Error(description) => Status::error(description.clone()),
        },
        instrumentation_scope: if scopes.is_empty() {
            InstrumentationScope::default()
        } else {
            scopes[usize::from(s.scope) % scopes.len()].clone()
        },
    }
}

fuzz_target!(|input: Input| {
    let mut resource = Resource::builder_empty().with_attributes(attributes(&input.resource));
    if let Some(url) = &input.resource_schema_url {
        resource = resource.with_schema_url([], url.clone());
    }
    let resource = resource.build();
    let scopes: Vec<InstrumentationScope> = input.scopes.iter().map(scope).collect();
    let batch: Vec<SpanData> = input.spans.iter().map(|s| span(s, &scopes)).collect();

    let ours = encode_request(&encode_resource(&resource), &batch, false);

    let mut expected_batch = batch.clone();
    for span in &mut expected_batch {
        span.start_time = clamped(span.start_time);
        span.end_time = clamped(span.end_time);
        for event in &mut span.events.events {
            event.timestamp = clamped(event.timestamp);
        }
    }
    let theirs = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(expected_batch, &ResourceAttributesWithSchema::from(&resource)),
    };
    let decoded = ExportTraceServiceRequest::decode(&ours[..]).expect("outrider's encoding decodes");
    if decoded != theirs {
        // NaN is not equal to itself: then only the bits can tell.
        assert_eq!(decoded.encode_to_vec(), theirs.encode_to_vec(), "decoded:\n{decoded:#?}\nexpected:\n{theirs:#?}");
    }
    // Not the same bytes: outrider writes `ResourceSpans.schema_url`
    // (field 3) before the scope spans (field 2), which protobuf allows (a
    // parser takes fields in any order) and prost does not do. The same
    // length, then: the same fields, each encoded the same way.
    assert_eq!(ours.len(), theirs.encoded_len(), "same meaning, other length");

    let framed = encode_request(&encode_resource(&resource), &batch, true);
    assert_eq!(framed[0], 0, "uncompressed");
    assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, ours.len());
    assert_eq!(&framed[5..], &ours[..]);
});
