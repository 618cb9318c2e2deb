//! One `GET` over a fresh connection, in HTTP/1.1 or HTTP/2: the status
//! the app answered, or why there was no answer.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

const USER_AGENT: &str = concat!("outrider-health/", env!("CARGO_PKG_VERSION"));

/// Why a `GET` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("handshake: {}", chain(.0))]
    Handshake(#[source] hyper::Error),
    /// The exchange failed: refused, cut, or not in the protocol spoken (an
    /// HTTP/2 app sends frames an HTTP/1 reader cannot parse).
    #[error("request: {}", chain(.0))]
    Request(#[source] hyper::Error),
    /// The connection ended before an answer and hyper kept no cause: an
    /// HTTP/1 reader that gets bytes before it has sent its request (an
    /// HTTP/2 server's SETTINGS) closes the connection without one.
    #[error("connection closed without an answer")]
    Closed,
    #[error("bad path {0:?}")]
    BadPath(String),
}

/// An error and its sources, `: `-separated: hyper's own message is often
/// just "connection error", the cause is below it.
pub(super) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// One `GET path` over a fresh HTTP/1.1 connection on `io`; the status.
/// Shared by the app health check and `outrider wait-ready`.
///
/// # Errors
/// The handshake or the request failed, or `path` is not a valid target.
pub async fn get_status<I>(io: I, host: &str, path: &str) -> Result<StatusCode, GetError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await.map_err(GetError::Handshake)?;
    let conn = tokio::spawn(conn);
    let request = Request::get(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|_| GetError::BadPath(path.to_owned()))?;
    match sender.send_request(request).await {
        Ok(response) => Ok(response.status()),
        Err(e) => Err(why(e, conn).await.map_or(GetError::Closed, GetError::Request)),
    }
}

/// [`get_status`] over HTTP/2: prior knowledge (h2c) on a plain
/// connection, h2 on one whose TLS handshake chose it. `base` is
/// `scheme://authority`, for `:scheme` and `:authority`.
///
/// # Errors
/// As [`get_status`].
pub async fn get_status_h2<I>(io: I, base: &str, path: &str) -> Result<StatusCode, GetError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), io).await.map_err(GetError::Handshake)?;
    let conn = tokio::spawn(conn);
    let request = Request::get(format!("{base}{path}"))
        .header(header::USER_AGENT, USER_AGENT)
        .body(Empty::new())
        .map_err(|_| GetError::BadPath(path.to_owned()))?;
    // Dropping the sender when this returns ends the connection with a
    // GOAWAY once the stream is done.
    match sender.send_request(request).await {
        Ok(response) => Ok(response.status()),
        Err(e) => Err(why(e, conn).await.map_or(GetError::Closed, GetError::Request)),
    }
}

/// The error that says why a request failed, if any does. When the
/// connection ends first (the app closed it, or sent what the protocol
/// cannot parse) hyper reports the request "canceled" and the cause, if it
/// kept one, is the connection's own error: e.g. `invalid HTTP version
/// parsed` for HTTP/2 frames read as HTTP/1, which tells a reader what
/// happened where "canceled" does not.
pub(super) async fn why(request: hyper::Error, conn: JoinHandle<hyper::Result<()>>) -> Option<hyper::Error> {
    if !request.is_canceled() {
        return Some(request);
    }
    match conn.await {
        Ok(Err(cause)) => Some(cause),
        _ => None,
    }
}
