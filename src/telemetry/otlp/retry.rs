//! What a collector's answer means for a batch, as the OTLP specification
//! says (<https://opentelemetry.io/docs/specs/otlp/#failures>): accepted
//! (perhaps in part), worth another attempt (and after how long), or
//! refused for good. Also the backoff between attempts.
//!
//! Pure functions over a [`Reply`]: the few protobuf fields involved
//! (`google.rpc.Status`, `RetryInfo`, `Duration`, and
//! `ExportTraceServiceResponse.partial_success`) are read by hand with a
//! small field reader rather than by linking prost into the binary for
//! five fields.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, StatusCode};

use super::transport::{Reply, TransportError};

/// The judgement of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The collector took the batch; `rejected` of its spans it refused
    /// (`partial_success`), with its explanation.
    Accepted { rejected: u64, message: String },
    /// Worth another attempt: after `after` if the collector said
    /// (`Retry-After`, `RetryInfo`), else after the backoff.
    Retry { after: Option<Duration>, status: String, message: String },
    /// Refused for good: another attempt would get the same answer.
    Fail { status: String, message: String },
}

const RESOURCE_EXHAUSTED: u32 = 8;
/// CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
/// DATA_LOSS: the specification's retryable codes (RESOURCE_EXHAUSTED
/// only with a `RetryInfo`).
const GRPC_RETRYABLE: [u32; 6] = [1, 4, 10, 11, 14, 15];

/// The longest collector message kept for a log line: the text is the
/// collector's, and a log line is not the place for a page of it.
const MAX_MESSAGE: usize = 256;

/// Judges one attempt's outcome. `now` reads an HTTP-date `Retry-After`.
pub fn judge(outcome: &Result<Reply, TransportError>, now: SystemTime) -> Verdict {
    match outcome {
        // Connection refused or reset, no answer: the collector may be
        // restarting.
        Err(e) => Verdict::Retry { after: None, status: "no answer".to_owned(), message: clip(&e.0) },
        Ok(Reply::Http { status, body, .. }) if status.is_success() => accepted(body),
        Ok(Reply::Http { status, retry_after, body }) => {
            // A failed answer's body is a `google.rpc.Status` (when the
            // collector follows the specification): its message explains.
            let message = decode_status(body).map(|s| s.message).unwrap_or_default();
            let status_text = format!("HTTP {}", status.as_u16());
            if http_retryable(*status) {
                Verdict::Retry { after: retry_after.as_ref().and_then(|v| parse_retry_after(v, now)), status: status_text, message }
            } else {
                Verdict::Fail { status: status_text, message }
            }
        }
        Ok(Reply::Grpc { code: 0, body, .. }) => accepted(body),
        Ok(Reply::Grpc { code, message, details, .. }) => {
            let status = grpc_status_text(*code);
            let retry_info = details.as_deref().and_then(decode_details_retry_delay);
            let message = clip(&percent_decode_lossy(message));
            if GRPC_RETRYABLE.contains(code) || (*code == RESOURCE_EXHAUSTED && retry_info.is_some()) {
                Verdict::Retry { after: retry_info, status, message }
            } else {
                Verdict::Fail { status, message }
            }
        }
    }
}

/// The HTTP statuses the specification calls retryable.
pub fn http_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// `gRPC UNAVAILABLE (14)`.
pub fn grpc_status_text(code: u32) -> String {
    match usize::try_from(code).ok().and_then(|c| crate::grpc::CODE_NAMES.get(c)) {
        Some(name) => format!("gRPC {name} ({code})"),
        None => format!("gRPC {code}"),
    }
}

fn accepted(body: &[u8]) -> Verdict {
    // An answer that does not decode is still a success: the collector
    // said so, and the spans are not sent again.
    let (rejected, message) = decode_partial_success(body).unwrap_or_default();
    Verdict::Accepted { rejected, message }
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3). A date
/// in the past means now.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `ExportTraceServiceResponse.partial_success`: `rejected_spans` (field
/// 1) and `error_message` (field 2) of field 1. `None` when malformed.
pub fn decode_partial_success(body: &[u8]) -> Option<(u64, String)> {
    let mut out = (0, String::new());
    for_each_field(body, |field, value| {
        if let (1, Value::Bytes(partial)) = (field, value) {
            for_each_field(partial, |field, value| {
                match (field, value) {
                    // int64 on the wire: a negative count is nonsense, read as 0.
                    (1, Value::Varint(n)) => out.0 = if i64::from_ne_bytes(n.to_ne_bytes()) < 0 { 0 } else { n },
                    (2, Value::Bytes(m)) => out.1 = clip(&String::from_utf8_lossy(m)),
                    _ => {}
                }
                Some(())
            })?;
        }
        Some(())
    })?;
    Some(out)
}

/// A decoded `google.rpc.Status`: its message, and the `retry_delay` of a
/// `google.rpc.RetryInfo` among its details.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RpcStatus {
    pub message: String,
    pub retry_delay: Option<Duration>,
}

const RETRY_INFO_TYPE: &[u8] = b"type.googleapis.com/google.rpc.RetryInfo";

/// `google.rpc.Status { int32 code = 1; string message = 2; repeated Any
/// details = 3; }`, `Any { string type_url = 1; bytes value = 2; }`.
pub fn decode_status(bytes: &[u8]) -> Option<RpcStatus> {
    let mut status = RpcStatus::default();
    for_each_field(bytes, |field, value| {
        match (field, value) {
            (2, Value::Bytes(m)) => status.message = clip(&String::from_utf8_lossy(m)),
            (3, Value::Bytes(any)) => {
                let (mut type_url, mut payload) = (&[][..], &[][..]);
                for_each_field(any, |field, value| {
                    match (field, value) {
                        (1, Value::Bytes(t)) => type_url = t,
                        (2, Value::Bytes(v)) => payload = v,
                        _ => {}
                    }
                    Some(())
                })?;
                if type_url == RETRY_INFO_TYPE {
                    status.retry_delay = Some(decode_retry_info(payload)?);
                }
            }
            _ => {}
        }
        Some(())
    })?;
    Some(status)
}

/// `RetryInfo { google.protobuf.Duration retry_delay = 1; }`, `Duration {
/// int64 seconds = 1; int32 nanos = 2; }`. An absent delay is zero; a
/// negative one too.
pub fn decode_retry_info(bytes: &[u8]) -> Option<Duration> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    for_each_field(bytes, |field, value| {
        if let (1, Value::Bytes(duration)) = (field, value) {
            for_each_field(duration, |field, value| {
                match (field, value) {
                    (1, Value::Varint(s)) => seconds = i64::from_ne_bytes(s.to_ne_bytes()),
                    (2, Value::Varint(n)) => nanos = i64::from_ne_bytes(n.to_ne_bytes()),
                    _ => {}
                }
                Some(())
            })?;
        }
        Some(())
    })?;
    let seconds = u64::try_from(seconds).unwrap_or(0);
    let nanos = u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0);
    Some(Duration::new(seconds, nanos))
}

/// The `retry_delay` carried by a `grpc-status-details-bin` header value:
/// a base64 `google.rpc.Status` (padded or not, as gRPC allows both).
pub fn decode_details_retry_delay(header: &[u8]) -> Option<Duration> {
    decode_status(&base64_decode(header)?)?.retry_delay
}

/// Standard-alphabet base64, padding optional.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let text = text.strip_suffix(b"==").or_else(|| text.strip_suffix(b"=")).unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | sextet(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&acc.to_be_bytes()[1..]),
            3 => out.extend_from_slice(&(acc << 6).to_be_bytes()[1..3]),
            2 => out.push(u8::try_from(acc >> 4).ok()?),
            _ => return None,
        }
    }
    Some(out)
}

/// One protobuf field's value, by wire type.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32- and 64-bit values, which none of the fields read here use.
    Fixed,
}

/// Calls `f` with each field of a message in order; `None` when the bytes
/// are not a well-formed message (or `f` says so).
fn for_each_field<'a>(mut buf: &'a [u8], mut f: impl FnMut(u64, Value<'a>) -> Option<()>) -> Option<()> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut buf)?),
            1 => {
                buf = buf.get(8..)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Value::Bytes(bytes)
            }
            5 => {
                buf = buf.get(4..)?;
                Value::Fixed
            }
            // Groups (3, 4) are long deprecated and never in these messages.
            _ => return None,
        };
        f(key >> 3, value)?;
    }
    Some(())
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// `grpc-message` is percent-encoded (the gRPC HTTP/2 protocol); a bad
/// escape is kept as it is.
fn percent_decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The first wait after a failed attempt. One second, the gRPC connection
/// backoff's first step: a collector restarting (the usual cause) is back
/// within seconds, not milliseconds, and with the default 10 s export
/// timeout it leaves room for four attempts (at about 0, 1, 3 and 7 s).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The wait before retry number `retry` (0 for the first retry), with
/// "equal jitter": half of the doubled step is fixed, the other half is
/// scaled by `unit` (in [0, 1)). The fixed half keeps a retry from
/// following its failure at once, and the random half spreads the retries
/// of many sidecars that all saw the same collector go down at once.
pub fn backoff(retry: u32, unit: f64) -> Duration {
    let step = INITIAL_BACKOFF.saturating_mul(1u32 << retry.min(16)).min(MAX_BACKOFF);
    let half = step / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A small pseudo-random source for the jitter (xorshift64*), seeded from
/// the standard library's per-process random hash keys: jitter needs
/// spread, not secrecy, and this saves a dependency.
#[derive(Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Self(seed | 1)
    }

    /// A value in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // The top 53 bits, as a fraction.
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn http(status: u16) -> Result<Reply, TransportError> {
        Ok(Reply::Http { status: StatusCode::from_u16(status).unwrap(), retry_after: None, body: Bytes::new() })
    }

    fn grpc(code: u32, details: Option<&[u8]>) -> Result<Reply, TransportError> {
        Ok(Reply::Grpc { code, message: "m".into(), details: details.map(Bytes::copy_from_slice), body: Bytes::new() })
    }

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Accepted { .. } => "accepted",
            Verdict::Retry { .. } => "retry",
            Verdict::Fail { .. } => "fail",
        }
    }

    // Protobuf writing, for the tests' messages.
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        put_varint(out, field << 3 | 2);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    fn put_int(out: &mut Vec<u8>, field: u64, v: u64) {
        put_varint(out, field << 3);
        put_varint(out, v);
    }
    fn status_with_retry_info(seconds: i64, nanos: i32) -> Vec<u8> {
        let mut duration = Vec::new();
        put_int(&mut duration, 1, seconds as u64);
        put_int(&mut duration, 2, nanos as i64 as u64);
        let mut retry_info = Vec::new();
        put_bytes(&mut retry_info, 1, &duration);
        let mut any = Vec::new();
        put_bytes(&mut any, 1, RETRY_INFO_TYPE);
        put_bytes(&mut any, 2, &retry_info);
        let mut status = Vec::new();
        put_int(&mut status, 1, 8);
        put_bytes(&mut status, 2, b"slow down");
        put_bytes(&mut status, 3, &any);
        status
    }
    fn base64(bytes: &[u8], pad: bool) -> Vec<u8> {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize]);
            }
            if pad {
                out.extend(std::iter::repeat_n(b'=', 3 - chunk.len()));
            }
        }
        out
    }

    #[test]
    fn http_statuses_are_classified_as_the_specification_says() {
        let now = SystemTime::now();
        for status in [429, 502, 503, 504] {
            assert_eq!(kind(&judge(&http(status), now)), "retry", "{status}");
        }
        for status in [400, 401, 403, 404, 405, 408, 413, 415, 500, 501, 505] {
            assert_eq!(kind(&judge(&http(status), now)), "fail", "{status}");
        }
        for status in [200, 202, 204] {
            assert_eq!(judge(&http(status), now), Verdict::Accepted { rejected: 0, message: String::new() });
        }
        assert_eq!(kind(&judge(&Err(TransportError("connection refused".into())), now)), "retry");
    }

    #[test]
    fn grpc_codes_are_classified_as_the_specification_says() {
        let now = SystemTime::now();
        for code in [1, 4, 10, 11, 14, 15] {
            assert_eq!(kind(&judge(&grpc(code, None), now)), "retry", "{}", grpc_status_text(code));
        }
        for code in [2, 3, 5, 6, 7, 8, 9, 12, 13, 16, 17, 99] {
            assert_eq!(kind(&judge(&grpc(code, None), now)), "fail", "{}", grpc_status_text(code));
        }
        assert_eq!(kind(&judge(&grpc(0, None), now)), "accepted");
        // RESOURCE_EXHAUSTED with a RetryInfo: retried after its delay.
        let details = base64(&status_with_retry_info(2, 500_000_000), false);
        assert_eq!(
            judge(&grpc(8, Some(&details)), now),
            Verdict::Retry { after: Some(Duration::from_millis(2500)), status: "gRPC RESOURCE_EXHAUSTED (8)".into(), message: "m".into() }
        );
        // Details without a RetryInfo do not make it retryable.
        let mut plain = Vec::new();
        put_bytes(&mut plain, 2, b"no retry info");
        assert_eq!(kind(&judge(&grpc(8, Some(&base64(&plain, true))), now)), "fail");
        // grpc-message is percent-decoded.
        let reply = Ok(Reply::Grpc { code: 3, message: "bad%20span%3A 100%".into(), details: None, body: Bytes::new() });
        assert_eq!(judge(&reply, now), Verdict::Fail { status: "gRPC INVALID_ARGUMENT (3)".into(), message: "bad span: 100%".into() });
        // Undecodable details neither.
        assert_eq!(kind(&judge(&grpc(8, Some(b"!!not base64")), now)), "fail");
        // A retryable code's RetryInfo is honoured too.
        assert!(matches!(judge(&grpc(14, Some(&details)), now), Verdict::Retry { after: Some(_), .. }));
        assert!(matches!(judge(&grpc(14, None), now), Verdict::Retry { after: None, .. }));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let v = |s: &str| parse_retry_after(&HeaderValue::from_str(s).unwrap(), now);
        assert_eq!(v("120"), Some(Duration::from_secs(120)));
        assert_eq!(v(" 0 "), Some(Duration::ZERO));
        assert_eq!(v("Sun, 06 Nov 1994 08:49:40 GMT"), Some(Duration::from_secs(3)));
        // RFC 850 and asctime forms, which HTTP-date also allows.
        assert_eq!(v("Sunday, 06-Nov-94 08:49:47 GMT"), Some(Duration::from_secs(10)));
        assert_eq!(v("Sun Nov  6 08:50:37 1994"), Some(Duration::from_secs(60)));
        assert_eq!(v("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO), "a date in the past: now");
        assert_eq!(v("-1"), None);
        assert_eq!(v("soon"), None);
        // Through judge: the header is honoured on a retryable status.
        let reply = Ok(Reply::Http {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(HeaderValue::from_static("7")),
            body: Bytes::new(),
        });
        assert!(matches!(judge(&reply, now), Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
    }

    #[test]
    fn retry_info_and_status_decode() {
        let status = status_with_retry_info(3, 250_000_000);
        let decoded = decode_status(&status).unwrap();
        assert_eq!(decoded, RpcStatus { message: "slow down".into(), retry_delay: Some(Duration::from_millis(3250)) });
        for pad in [false, true] {
            assert_eq!(base64_decode(&base64(&status, pad)).unwrap(), status, "pad {pad}");
            assert_eq!(decode_details_retry_delay(&base64(&status, pad)), Some(Duration::from_millis(3250)));
        }
        // Every remainder length round-trips.
        for n in 0..8 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 200) as u8).collect();
            assert_eq!(base64_decode(&base64(&bytes, false)).unwrap(), bytes);
        }
        // Negative delays read as zero.
        assert_eq!(decode_status(&status_with_retry_info(-5, -1)).unwrap().retry_delay, Some(Duration::ZERO));
        // Truncated messages are refused, not misread.
        assert_eq!(decode_status(&status[..status.len() - 3]), None);
        assert_eq!(decode_status(&[0x0b]), None, "a group");
        // Unknown fields (fixed32/64 too) are skipped.
        let mut with_unknown = vec![0x39, 1, 2, 3, 4, 5, 6, 7, 8, 0x45, 1, 2, 3, 4];
        with_unknown.extend_from_slice(&status);
        assert_eq!(decode_status(&with_unknown).unwrap().message, "slow down");
    }

    #[test]
    fn partial_success_decodes() {
        let mut partial = Vec::new();
        put_int(&mut partial, 1, 7);
        put_bytes(&mut partial, 2, b"7 spans too old");
        let mut response = Vec::new();
        put_bytes(&mut response, 1, &partial);
        assert_eq!(decode_partial_success(&response), Some((7, "7 spans too old".to_owned())));
        assert_eq!(decode_partial_success(&[]), Some((0, String::new())), "an empty response: all accepted");
        let reply = Ok(Reply::Grpc { code: 0, message: String::new(), details: None, body: Bytes::from(response.clone()) });
        assert_eq!(judge(&reply, SystemTime::now()), Verdict::Accepted { rejected: 7, message: "7 spans too old".into() });
        let reply = Ok(Reply::Http { status: StatusCode::OK, retry_after: None, body: Bytes::from(response) });
        assert_eq!(judge(&reply, SystemTime::now()), Verdict::Accepted { rejected: 7, message: "7 spans too old".into() });
        // A long message is clipped for the log.
        let mut partial = Vec::new();
        put_bytes(&mut partial, 2, "x".repeat(10_000).as_bytes());
        let mut response = Vec::new();
        put_bytes(&mut response, 1, &partial);
        assert!(decode_partial_success(&response).unwrap().1.chars().count() <= MAX_MESSAGE + 1);
        // An HTTP failure's Status body gives the message.
        let mut status = Vec::new();
        put_bytes(&mut status, 2, b"bad span");
        let reply = Ok(Reply::Http { status: StatusCode::BAD_REQUEST, retry_after: None, body: Bytes::from(status) });
        assert_eq!(judge(&reply, SystemTime::now()), Verdict::Fail { status: "HTTP 400".into(), message: "bad span".into() });
    }

    #[test]
    fn backoff_doubles_with_jitter_inside_its_bounds() {
        let mut jitter = Jitter::new();
        for retry in 0..40 {
            let step = INITIAL_BACKOFF.saturating_mul(1 << retry.min(16)).min(MAX_BACKOFF);
            for _ in 0..200 {
                let d = backoff(retry, jitter.unit());
                assert!(d >= step / 2 && d <= step, "retry {retry}: {d:?} outside [{:?}, {step:?}]", step / 2);
            }
        }
        assert_eq!(backoff(0, 0.0), Duration::from_millis(500));
        assert!(backoff(2, 0.999_999) < Duration::from_secs(4));
        assert_eq!(backoff(30, 0.0), MAX_BACKOFF / 2);
        // The jitter spreads: both halves of [0, 1) are drawn.
        let draws: Vec<f64> = (0..1000).map(|_| jitter.unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|u| *u < 0.5) && draws.iter().any(|u| *u >= 0.5));
    }
}
