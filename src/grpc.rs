//! What gRPC looks like on the wire, as far as outrider needs to know:
//! which requests are gRPC calls, and the headers that carry a call's
//! deadline and status. Shared by the request path (`proxy::grpc`),
//! telemetry and the health check, so all three agree on what a call is.
//! Message bodies are never read here.

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, header::CONTENT_TYPE};

/// The call's status code, in the trailers (or the headers of a
/// trailers-only answer).
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The status's message, percent-encoded.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// The client's deadline.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The status codes' names, by value: `OK` (0) to `UNAUTHENTICATED` (16).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Whether a request is a gRPC call: a `POST` whose `Content-Type` is
/// `application/grpc`, bare or with a subtype (`+proto`, `+json`) or
/// parameters. gRPC-Web (`application/grpc-web*`) is not: it is
/// HTTP/1-compatible, goes wherever plain requests go, and its status
/// travels inside the response body.
///
/// The method is compared first: any other request costs one comparison
/// (0.7 ns measured, `grpc_detection_cost` below), and only a `POST` a
/// header look-up (9 ns among seven headers).
pub fn is_call(method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::POST && headers.get(CONTENT_TYPE).is_some_and(|v| is_content_type(v.as_bytes()))
}

fn is_content_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    value.len() >= GRPC.len() && value[..GRPC.len()].eq_ignore_ascii_case(GRPC) && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// The client's deadline from `grpc-timeout` (gRPC over HTTP/2: at most 8
/// digits and a unit). A malformed value is ignored, as gRPC servers do.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn grpc_content_types_and_not_grpc_web() {
        for yes in ["application/grpc", "application/grpc+proto", "application/grpc+json", "Application/GRPC", "application/grpc;charset=x"]
        {
            assert!(is_content_type(yes.as_bytes()), "{yes}");
        }
        for no in
            ["application/grpc-web", "application/grpc-web-text+proto", "application/grpcx", "application/json", "application/grp", ""]
        {
            assert!(!is_content_type(no.as_bytes()), "{no}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
        assert!(is_call(&Method::POST, &headers));
        assert!(!is_call(&Method::GET, &headers), "gRPC calls are POSTs");
        assert!(!is_call(&Method::POST, &HeaderMap::new()));
    }

    fn headers(timeout: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&GRPC_TIMEOUT, HeaderValue::from_str(timeout).unwrap());
        h
    }

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        assert_eq!(timeout(&headers("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(timeout(&headers("2M")), Some(Duration::from_secs(120)));
        assert_eq!(timeout(&headers("3S")), Some(Duration::from_secs(3)));
        assert_eq!(timeout(&headers("250m")), Some(Duration::from_millis(250)));
        assert_eq!(timeout(&headers("99999999u")), Some(Duration::from_micros(99_999_999)));
        assert_eq!(timeout(&headers("5n")), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "100", "123456789S", "1s", "-1S", "1 S", "1.5S", "١S"] {
            assert_eq!(timeout(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    /// `cargo test --release --lib grpc_detection_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn grpc_detection_cost() {
        use std::{hint::black_box, time::Instant};
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "shop.internal:8080"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("accept", "application/json"),
            ("accept-encoding", "gzip, deflate, br"),
            ("content-type", "application/json"),
            ("content-length", "512"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ] {
            headers.insert(HeaderName::from_static(name), value.parse().unwrap());
        }
        const N: u32 = 10_000_000;
        for method in [Method::GET, Method::POST] {
            let t = Instant::now();
            let mut calls = 0u32;
            for _ in 0..N {
                calls += u32::from(is_call(black_box(&method), black_box(&headers)));
            }
            assert_eq!(calls, 0);
            println!("{method}: {:.2} ns per request", t.elapsed().as_secs_f64() * 1e9 / f64::from(N));
        }
    }
}
