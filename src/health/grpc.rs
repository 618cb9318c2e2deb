//! The standard gRPC health check, `grpc.health.v1.Health/Check`, over one
//! HTTP/2 connection, and the few bytes of protobuf it needs.
//!
//! The two messages are encoded and decoded by hand: a request is one
//! optional string field and a response one enum field, which is about
//! forty lines here against a protobuf runtime and generated code in the
//! binary for the sake of one call every two seconds.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioExecutor;

use super::get;

/// The method every gRPC health service serves.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// A health answer is a few bytes; anything past this is not one.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Longest `grpc-message` quoted in a `/readyz` reason.
const MAX_MESSAGE_CHARS: usize = 120;

/// `HealthCheckResponse.ServingStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingStatus {
    Unknown,
    Serving,
    NotServing,
    ServiceUnknown,
    /// A value this version of the protocol does not name.
    Other(i32),
}

impl ServingStatus {
    fn from_wire(value: i32) -> Self {
        match value {
            0 => Self::Unknown,
            1 => Self::Serving,
            2 => Self::NotServing,
            3 => Self::ServiceUnknown,
            n => Self::Other(n),
        }
    }
}

/// Why a response message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated message")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("field {field} has wire type {wire_type}")]
    WireType { field: u64, wire_type: u8 },
    #[error("compressed message (none was asked for)")]
    Compressed,
    #[error("frame of {declared} bytes holds {actual}")]
    FrameLength { declared: usize, actual: usize },
}

/// Why the check did not find the service serving; `Display` is the
/// `/readyz` reason.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("grpc health: {}", serving_status_name(*.0))]
    NotServing(ServingStatus),
    #[error("grpc health: service {0:?} unknown")]
    ServiceUnknown(String),
    #[error("grpc health: status {code} ({}){}", code_name(*code), quoted(message))]
    Status { code: u32, message: String },
    #[error("grpc health: HTTP {0}")]
    Http(u16),
    #[error("grpc health: no grpc-status in the answer")]
    NoStatus,
    #[error("grpc health: status 0 (OK) without a response message")]
    NoMessage,
    #[error("grpc health: bad response: {0}")]
    Decode(#[from] DecodeError),
    #[error("grpc health: HTTP/2 handshake: {}", get::chain(.0))]
    Handshake(#[source] hyper::Error),
    #[error("grpc health: {}", get::chain(.0))]
    Exchange(#[source] hyper::Error),
    #[error("grpc health: connection closed without an answer")]
    Closed,
    #[error("grpc health: {0}")]
    Other(String),
}

fn serving_status_name(status: ServingStatus) -> String {
    match status {
        ServingStatus::Unknown => "UNKNOWN".into(),
        ServingStatus::Serving => "SERVING".into(),
        ServingStatus::NotServing => "NOT_SERVING".into(),
        ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN".into(),
        ServingStatus::Other(n) => format!("serving status {n}"),
    }
}

fn quoted(message: &str) -> String {
    if message.is_empty() { String::new() } else { format!(": {message}") }
}

/// The canonical name of a gRPC status code.
fn code_name(code: u32) -> &'static str {
    usize::try_from(code).ok().and_then(|i| crate::grpc::CODE_NAMES.get(i)).copied().unwrap_or("not a gRPC code")
}

/// Calls `Health/Check` for `service` (empty: the whole server) over a
/// fresh HTTP/2 connection on `io`, and judges the answer: `Ok` only for
/// SERVING with `grpc-status: 0`.
///
/// `base` is `scheme://authority` for the `:scheme` and `:authority` of the
/// request; `timeout` is sent as `grpc-timeout`, so the app can give up when
/// outrider does.
///
/// # Errors
/// The app is not serving `service`, or the call failed; see [`Failure`].
pub async fn check<I>(io: I, base: &str, service: &str, timeout: Duration) -> Result<(), Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(Failure::Handshake)?;
    let conn = tokio::spawn(conn);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{base}{CHECK_PATH}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(&crate::grpc::GRPC_TIMEOUT, grpc_timeout(timeout))
        .header(header::USER_AGENT, concat!("outrider-health/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(encode_request(service)))
        .map_err(|e| Failure::Other(format!("bad request: {e}")))?;
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(e) => return Err(get::why(e, conn).await.map_or(Failure::Closed, Failure::Exchange)),
    };
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Err(Failure::Http(parts.status.as_u16()));
    }
    // Trailers-only: the status is in the headers and there is no message.
    if parts.headers.contains_key(&crate::grpc::GRPC_STATUS) {
        judge_status(&parts.headers, service)?;
        return Err(Failure::NoMessage);
    }
    let collected = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| Failure::Other(format!("response body: {}", get::chain(&*e))))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    judge_status(&trailers, service)?;
    match decode_response(collected.to_bytes())? {
        ServingStatus::Serving => Ok(()),
        ServingStatus::ServiceUnknown => Err(Failure::ServiceUnknown(service.to_owned())),
        status => Err(Failure::NotServing(status)),
    }
}

/// `grpc-status` (and `grpc-message`) from a header or trailer block:
/// `Ok` for 0, else the failure. Health servers answer `NOT_FOUND` for a
/// service they do not know (the protocol's `Check`; only `Watch` uses
/// SERVICE_UNKNOWN), which is worth its own reason.
fn judge_status(fields: &HeaderMap, service: &str) -> Result<(), Failure> {
    let code = fields.get(&crate::grpc::GRPC_STATUS).ok_or(Failure::NoStatus)?;
    let code: u32 = code.to_str().ok().and_then(|c| c.parse().ok()).ok_or(Failure::NoStatus)?;
    match code {
        0 => Ok(()),
        5 if !service.is_empty() => Err(Failure::ServiceUnknown(service.to_owned())),
        code => Err(Failure::Status { code, message: fields.get(&crate::grpc::GRPC_MESSAGE).map(grpc_message).unwrap_or_default() }),
    }
}

/// A `grpc-message` as text: percent-decoded (the gRPC encoding of
/// anything outside printable ASCII), control characters dropped, and cut
/// to [`MAX_MESSAGE_CHARS`] so a chatty app cannot flood `/readyz`.
fn grpc_message(value: &HeaderValue) -> String {
    let raw = value.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (raw[i], raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make at most 255.
                bytes.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b, ..) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&bytes).chars().filter(|c| !c.is_control()).take(MAX_MESSAGE_CHARS).collect()
}

/// `grpc-timeout`: at most eight digits and a unit; milliseconds, rounded
/// up so a sub-millisecond bound is not sent as "no time at all".
fn grpc_timeout(timeout: Duration) -> String {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    if millis <= 99_999_999 { format!("{millis}m") } else { format!("{}S", timeout.as_secs().min(99_999_999)) }
}

/// A length-prefixed `HealthCheckRequest { service = 1 }`. The empty
/// service is the default value, which protobuf does not send.
pub fn encode_request(service: &str) -> Bytes {
    let mut message = BytesMut::with_capacity(service.len() + 11);
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, wire type 2 (length-delimited)
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0); // not compressed
    // A service name is an environment variable: far below 4 GiB.
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(&message);
    frame.freeze()
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// The status of one length-prefixed `HealthCheckResponse`, as a protobuf
/// reader would: unknown fields skipped, the last `status` wins, an absent
/// one is UNKNOWN (0).
///
/// # Errors
/// The frame or the message is malformed.
pub fn decode_response(mut frame: Bytes) -> Result<ServingStatus, DecodeError> {
    if frame.len() < 5 {
        return Err(DecodeError::Truncated);
    }
    if frame.get_u8() != 0 {
        return Err(DecodeError::Compressed);
    }
    let declared = frame.get_u32() as usize;
    if declared != frame.len() {
        return Err(DecodeError::FrameLength { declared, actual: frame.len() });
    }
    let mut status = 0;
    while frame.has_remaining() {
        let key = get_varint(&mut frame)?;
        let (field, wire_type) = (key >> 3, (key & 7) as u8);
        match (field, wire_type) {
            // An enum is an int32: its low 32 bits, as protobuf reads it.
            (1, 0) => status = get_varint(&mut frame)? as i32,
            (1, _) => return Err(DecodeError::WireType { field, wire_type }),
            (_, 0) => drop(get_varint(&mut frame)?),
            (_, 1) => skip(&mut frame, 8)?,
            (_, 2) => {
                let len = get_varint(&mut frame)?;
                skip(&mut frame, usize::try_from(len).map_err(|_| DecodeError::Truncated)?)?;
            }
            (_, 5) => skip(&mut frame, 4)?,
            _ => return Err(DecodeError::WireType { field, wire_type }),
        }
    }
    Ok(ServingStatus::from_wire(status))
}

fn get_varint(buf: &mut Bytes) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for i in 0..10 {
        if !buf.has_remaining() {
            return Err(DecodeError::Truncated);
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::VarintTooLong)
}

fn skip(buf: &mut Bytes, len: usize) -> Result<(), DecodeError> {
    if buf.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    buf.advance(len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two messages as prost, the reference implementation, writes
    /// and reads them.
    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        service: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckResponse {
        #[prost(int32, tag = "1")]
        status: i32,
        #[prost(string, tag = "7")]
        extra: String,
    }

    fn framed(message: &[u8]) -> Bytes {
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(message);
        frame.into()
    }

    #[test]
    fn requests_are_what_prost_reads() {
        use prost::Message as _;
        for service in ["", "a", "grpc.health.v1.Health", &"x".repeat(300), "ünïcode.Service"] {
            let frame = encode_request(service);
            assert_eq!(frame[0], 0);
            assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, frame.len() - 5);
            assert_eq!(HealthCheckRequest::decode(&frame[5..]).unwrap().service, service);
            assert_eq!(frame[5..], HealthCheckRequest { service: service.into() }.encode_to_vec()[..]);
        }
    }

    #[test]
    fn responses_are_read_as_prost_writes_them() {
        use prost::Message as _;
        for (status, expected) in [
            (0, ServingStatus::Unknown),
            (1, ServingStatus::Serving),
            (2, ServingStatus::NotServing),
            (3, ServingStatus::ServiceUnknown),
            (9, ServingStatus::Other(9)),
            (-1, ServingStatus::Other(-1)),
        ] {
            let message = HealthCheckResponse { status, extra: "unknown field".into() }.encode_to_vec();
            assert_eq!(decode_response(framed(&message)), Ok(expected), "{status}");
        }
        assert_eq!(decode_response(framed(&[])), Ok(ServingStatus::Unknown), "an absent status is its default");
        // Unknown fields of every wire type are skipped; the last status wins.
        let message = [0x08, 0x02, 0x10, 0x96, 0x01, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0x25, 0, 0, 0, 0, 0x08, 0x01];
        assert_eq!(decode_response(framed(&message)), Ok(ServingStatus::Serving));
    }

    #[test]
    fn malformed_responses_are_errors_not_panics() {
        assert_eq!(decode_response(Bytes::new()), Err(DecodeError::Truncated));
        assert_eq!(decode_response(Bytes::from_static(&[0, 0, 0])), Err(DecodeError::Truncated));
        assert_eq!(decode_response(Bytes::from_static(&[1, 0, 0, 0, 2, 8, 1])), Err(DecodeError::Compressed));
        assert_eq!(decode_response(Bytes::from_static(&[0, 0, 0, 0, 5, 8, 1])), Err(DecodeError::FrameLength { declared: 5, actual: 2 }));
        assert_eq!(decode_response(framed(&[0x08])), Err(DecodeError::Truncated));
        assert_eq!(decode_response(framed(&[0x08, 0x80])), Err(DecodeError::Truncated));
        assert_eq!(
            decode_response(framed(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])),
            Err(DecodeError::VarintTooLong)
        );
        assert_eq!(decode_response(framed(&[0x0a, 0x01, 0x01])), Err(DecodeError::WireType { field: 1, wire_type: 2 }));
        assert_eq!(decode_response(framed(&[0x12, 0x05, b'a'])), Err(DecodeError::Truncated));
        assert_eq!(decode_response(framed(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f])), Err(DecodeError::Truncated));
        assert_eq!(decode_response(framed(&[0x19, 0, 0])), Err(DecodeError::Truncated));
        assert_eq!(decode_response(framed(&[0x1b])), Err(DecodeError::WireType { field: 3, wire_type: 3 }));
        // Every prefix of a valid answer, and every byte flipped: an
        // answer or an error, never a panic.
        let valid = framed(&[0x08, 0x01, 0x12, 0x02, b'h', b'i', 0x25, 1, 2, 3, 4]);
        for len in 0..valid.len() {
            let _ = decode_response(valid.slice(..len));
        }
        for i in 0..valid.len() {
            for bit in 0..8 {
                let mut bytes = valid.to_vec();
                bytes[i] ^= 1 << bit;
                let _ = decode_response(bytes.into());
            }
        }
    }

    #[test]
    fn statuses_and_messages_make_short_reasons() {
        let fields = |code: &str, message: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_str(code).unwrap());
            if !message.is_empty() {
                h.insert("grpc-message", HeaderValue::from_str(message).unwrap());
            }
            h
        };
        assert!(judge_status(&fields("0", ""), "").is_ok());
        let reason = |code, message, service| judge_status(&fields(code, message), service).unwrap_err().to_string();
        assert_eq!(reason("12", "", ""), "grpc health: status 12 (UNIMPLEMENTED)");
        assert_eq!(reason("14", "app%20is%20down%0A%E2%9C%93", ""), "grpc health: status 14 (UNAVAILABLE): app is down✓");
        assert_eq!(reason("5", "service not registered", "x.Y"), "grpc health: service \"x.Y\" unknown");
        assert_eq!(reason("5", "", ""), "grpc health: status 5 (NOT_FOUND)");
        assert_eq!(reason("99", "%zz", ""), "grpc health: status 99 (not a gRPC code): %zz");
        assert_eq!(reason("x", "", ""), "grpc health: no grpc-status in the answer");
        assert_eq!(reason("2", &"long ".repeat(100), "").len(), "grpc health: status 2 (UNKNOWN): ".len() + MAX_MESSAGE_CHARS);
        assert_eq!(judge_status(&HeaderMap::new(), "").unwrap_err().to_string(), "grpc health: no grpc-status in the answer");
        assert_eq!(Failure::NotServing(ServingStatus::NotServing).to_string(), "grpc health: NOT_SERVING");
    }

    #[test]
    fn timeouts_fit_grpc_timeout() {
        assert_eq!(grpc_timeout(Duration::from_secs(1)), "1000m");
        assert_eq!(grpc_timeout(Duration::from_micros(1)), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(24 * 3600)), "86400000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }
}
