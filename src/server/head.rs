//! The HTTP/1 request head's own limits, checked before anything else sees
//! the request (telemetry adds headers of its own):
//!
//! * A head over `OUTRIDER_MAX_HEADER_BYTES` → 431, a header line over
//!   `OUTRIDER_MAX_HEADER_LINE_BYTES` → 431, a request line over it → 414.
//!   hyper bounds its read buffer, not the head: a head that arrives in one
//!   read can be larger than that bound, so the head is measured here, as
//!   it was sent (`METHOD SP target SP HTTP/1.1 CRLF`, each
//!   `name: value CRLF`, the final CRLF; spaces around a value that hyper
//!   trimmed are not counted).
//!
//! * A head with both `Content-Length` and `Transfer-Encoding` → 400. hyper
//!   drops the `Content-Length` before the request gets here, so the raw
//!   head is looked at as it is read (see [`super::framing`]); what
//!   arrives here is a request with `Transfer-Encoding` on a connection
//!   where such a head was seen.
//!
//! Each is answered with the connection closed: what follows such a head on
//! the connection cannot be trusted to be a request.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The limits, and the counters of what they refused
/// (`outrider_refused_requests_total{reason}`).
#[derive(Debug, Clone)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_line_bytes: usize,
    /// One for each [`Refusal`], in the order of `REASONS`.
    pub refused: [Option<IntCounter>; 3],
}

/// The `reason` label of each [`Refusal`], in the order of
/// [`HeadLimits::refused`].
pub const REASONS: [&str; 3] = ["header_too_large", "uri_too_long", "ambiguous_length"];

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    HeaderTooLarge = 0,
    UriTooLong = 1,
    AmbiguousLength = 2,
}

impl Refusal {
    /// The label value, and the index of the counter.
    pub(super) fn reason(self) -> (&'static str, usize) {
        let i = self as usize;
        (REASONS[i], i)
    }

    /// The answer: short plain text, connection closed.
    pub(super) fn response(self) -> Response<Full<Bytes>> {
        let (status, text) = match self {
            Self::HeaderTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "431 Request Header Fields Too Large: the request head or one of its lines exceeds the limit\n",
            ),
            Self::UriTooLong => (StatusCode::URI_TOO_LONG, "414 URI Too Long: the request line exceeds the limit\n"),
            Self::AmbiguousLength => {
                (StatusCode::BAD_REQUEST, "400 Bad Request: the request has both Content-Length and Transfer-Encoding\n")
            }
        };
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// Checks an HTTP/1 request's head against the limits; `ambiguous_heads`
/// counts the connection's heads that had both framings.
pub(super) fn check<B>(req: &Request<B>, limits: &HeadLimits, ambiguous_heads: &AtomicUsize) -> Result<(), Refusal> {
    let headers = req.headers();
    // The load first: it is zero on every connection but an attacker's.
    if ambiguous_heads.load(Ordering::Relaxed) > 0 && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(Refusal::AmbiguousLength);
    }
    let uri = req.uri();
    let mut target = uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    if let Some(authority) = uri.authority() {
        // An absolute-form target: `scheme://authority/path`.
        target += authority.as_str().len() + uri.scheme_str().map_or(0, |s| s.len() + 3);
    }
    // `METHOD SP target SP HTTP/1.1`
    let line = req.method().as_str().len() + 1 + target + 9;
    if line > limits.max_line_bytes {
        return Err(Refusal::UriTooLong);
    }
    let mut head = line + 2 + 2;
    for (name, value) in headers {
        let field = name.as_str().len() + 2 + value.len();
        if field > limits.max_line_bytes {
            return Err(Refusal::HeaderTooLarge);
        }
        head += field + 2;
    }
    if head > limits.max_head_bytes {
        return Err(Refusal::HeaderTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 100, max_line_bytes: 40, refused: [None, None, None] };

    fn check_<B>(req: &Request<B>, limits: &HeadLimits) -> Result<(), Refusal> {
        check(req, limits, &AtomicUsize::new(0))
    }

    fn request(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::get(target).body(()).expect("a request");
        for (name, value) in headers {
            req.headers_mut().append(http::HeaderName::from_bytes(name.as_bytes()).expect("a name"), value.parse().expect("a value"));
        }
        req
    }

    #[test]
    fn the_head_is_counted_as_sent_and_the_limit_is_inclusive() {
        let limits = HeadLimits { max_line_bytes: 100, ..LIMITS };
        // "GET / HTTP/1.1\r\n" (16) + "host: a\r\n" (9) + "\r\n" (2) = 27
        // bytes, and "x: VALUE\r\n" is 5 + VALUE: 68 bytes of value make 100.
        let with = |len: usize| request("/", &[("host", "a"), ("x", &"f".repeat(len))]);
        assert_eq!(check_(&with(67), &limits), Ok(()), "under");
        assert_eq!(check_(&with(68), &limits), Ok(()), "exactly at the limit");
        assert_eq!(check_(&with(69), &limits), Err(Refusal::HeaderTooLarge), "one byte over");
    }

    #[test]
    fn long_lines() {
        assert_eq!(check_(&request(&format!("/{}", "p".repeat(40)), &[]), &LIMITS), Err(Refusal::UriTooLong));
        assert_eq!(check_(&request("/", &[("cookie", &"c".repeat(40))]), &LIMITS), Err(Refusal::HeaderTooLarge));
        assert_eq!(check_(&request("http://a.example/x", &[]), &LIMITS), Ok(()));
    }

    #[test]
    fn a_chunked_request_after_an_ambiguous_head_is_refused() {
        let limits = HeadLimits { max_line_bytes: 100, ..LIMITS };
        let seen = AtomicUsize::new(1);
        assert_eq!(check(&request("/", &[("transfer-encoding", "chunked")]), &limits, &seen), Err(Refusal::AmbiguousLength));
        assert_eq!(check(&request("/", &[("content-length", "0")]), &limits, &seen), Ok(()), "hyper answers one with a single framing");
        let clean = AtomicUsize::new(0);
        assert_eq!(check(&request("/", &[("transfer-encoding", "chunked")]), &limits, &clean), Ok(()));
    }
}
