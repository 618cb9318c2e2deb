//! Plain-text answers of outrider's own endpoints (the admin listener, the
//! webhook): UTF-8, never cached, since probes and operators must see the
//! state of now.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// A fixed body.
pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, Bytes::from_static(body.as_bytes()))
}

/// A body made for this answer.
pub fn owned(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, Bytes::from(body))
}

/// Any body: the caller may set more headers (a content type of its own).
pub fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
