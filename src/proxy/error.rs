//! Failures on the request path, classified by who failed, and the short
//! plain-text answers the client gets for them.

use std::{error::Error as StdError, io};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::{connect::ConnectError, hold::HoldError, idle::RequestBodyIdle};

/// The request body grew past `OUTRIDER_MAX_BODY_BYTES`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Why an exchange with the app failed, over either protocol.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Connect(#[from] HoldError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Why a request could not be proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The app refused the connection or could not be reached.
    ConnectRefused,
    /// Connecting to the app took longer than the connect timeout.
    ConnectTimeout,
    /// The app took longer than the request timeout to answer.
    Timeout,
    /// The app closed or reset the connection before a full response head.
    Reset,
    /// The app sent something that is not valid HTTP.
    Protocol,
    /// The client went away or broke its request body mid-stream.
    ClientAborted,
    /// The request cannot be proxied (e.g. `CONNECT`).
    MethodNotAllowed,
    /// The app is away and the request could not be held (buffer full,
    /// held past the buffer timeout, or the drain has started).
    Unavailable,
    /// Too many requests in flight to the app (`OUTRIDER_MAX_INFLIGHT`).
    Overloaded,
    /// The request body is larger than `OUTRIDER_MAX_BODY_BYTES`.
    PayloadTooLarge,
    /// The client stopped sending its request body before the response
    /// began (`OUTRIDER_REQUEST_BODY_IDLE_TIMEOUT`).
    RequestBodyTimeout,
    /// The app stopped sending its response body
    /// (`OUTRIDER_RESPONSE_BODY_IDLE_TIMEOUT`). The head has gone out by
    /// then: the client's stream is reset, and this is its recorded cause.
    ResponseBodyTimeout,
}

impl ProxyError {
    /// Every kind of failure, for the telemetry that lists their labels.
    pub const ALL: [Self; 12] = [
        Self::ConnectRefused,
        Self::ConnectTimeout,
        Self::Timeout,
        Self::Reset,
        Self::Protocol,
        Self::ClientAborted,
        Self::MethodNotAllowed,
        Self::Unavailable,
        Self::Overloaded,
        Self::PayloadTooLarge,
        Self::RequestBodyTimeout,
        Self::ResponseBodyTimeout,
    ];

    /// Classifies an error from the upstream client by walking its source
    /// chain; never by matching strings. `None` when nothing in the chain
    /// tells.
    pub fn classify(err: &(dyn StdError + 'static)) -> Option<Self> {
        // Our own request body bounds sit deep in the chain, under hyper's
        // "user body error"; they decide before anything above them.
        let mut source = Some(err);
        while let Some(e) = source {
            if e.is::<BodyTooLarge>() {
                return Some(Self::PayloadTooLarge);
            }
            if e.is::<RequestBodyIdle>() {
                return Some(Self::RequestBodyTimeout);
            }
            source = e.source();
        }
        let mut source = Some(err);
        while let Some(e) = source {
            if let Some(h) = e.downcast_ref::<HoldError>() {
                return Some(match h {
                    HoldError::Connect(c) => Self::connect(c),
                    HoldError::BufferFull { .. } | HoldError::BufferTimeout { .. } | HoldError::Draining => Self::Unavailable,
                });
            }
            if let Some(c) = e.downcast_ref::<ConnectError>() {
                return Some(Self::connect(c));
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_user() || h.is_body_write_aborted() {
                    // The request body we were streaming failed: that is the
                    // client's side, not the app's.
                    return Some(Self::ClientAborted);
                }
                if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                    return Some(Self::Protocol);
                }
                if h.is_timeout() {
                    return Some(Self::Timeout);
                }
                if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                    return Some(Self::Reset);
                }
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                return Some(match io.kind() {
                    io::ErrorKind::TimedOut => Self::Timeout,
                    _ => Self::Reset,
                });
            }
            source = e.source();
        }
        None
    }

    fn connect(e: &ConnectError) -> Self {
        match e {
            ConnectError::Timeout { .. } => Self::ConnectTimeout,
            ConnectError::Io { .. } => Self::ConnectRefused,
        }
    }

    /// The status the client receives.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ConnectRefused | Self::Reset | Self::Protocol => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout | Self::Timeout | Self::ResponseBodyTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ClientAborted => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// A stable, low-cardinality name for logs and metrics labels.
    pub fn kind(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect",
            Self::ConnectTimeout | Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Protocol => "protocol",
            Self::ClientAborted => "client_aborted",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable => "unavailable",
            Self::Overloaded => "overloaded",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::ResponseBodyTimeout => "response_body_timeout",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Self::ConnectRefused => "502 Bad Gateway: the app refused the connection or is unreachable\n",
            Self::ConnectTimeout => "504 Gateway Timeout: connecting to the app timed out\n",
            Self::Timeout => "504 Gateway Timeout: the app did not answer in time\n",
            Self::Reset => "502 Bad Gateway: the app closed the connection without a complete response\n",
            Self::Protocol => "502 Bad Gateway: the app sent an invalid HTTP response\n",
            Self::ClientAborted => "400 Bad Request: the request body ended abnormally\n",
            Self::MethodNotAllowed => "405 Method Not Allowed: CONNECT is not supported by this reverse proxy\n",
            Self::Unavailable => "503 Service Unavailable: the app is not accepting connections; retry later\n",
            Self::Overloaded => "503 Service Unavailable: too many requests in flight; retry later\n",
            Self::PayloadTooLarge => "413 Content Too Large: the request body exceeds the configured limit\n",
            Self::RequestBodyTimeout => "408 Request Timeout: the request body stopped arriving\n",
            // Never sent: the app's head went out before its body stalled.
            Self::ResponseBodyTimeout => "504 Gateway Timeout: the app stopped sending its response\n",
        }
    }

    /// The response sent to the client. Allocation-free: static body.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(self.body().as_bytes())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, Self::Unavailable | Self::Overloaded) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self == Self::MethodNotAllowed {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    //! Classification walks the source chain and decides by type; every
    //! kind maps to one status and one label.

    use super::*;

    /// An error that wraps another, as hyper and hyper-util do.
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Wrapped(#[source] Box<dyn StdError + Send + Sync>);

    fn refused() -> ConnectError {
        ConnectError::Io { target: "app:1".into(), source: io::Error::from(io::ErrorKind::ConnectionRefused) }
    }

    #[test]
    fn connect_failures_are_the_apps_502_or_504() {
        assert_eq!(ProxyError::classify(&refused()), Some(ProxyError::ConnectRefused));
        let timeout = ConnectError::Timeout { target: "app:1".into(), timeout: std::time::Duration::from_secs(1) };
        assert_eq!(ProxyError::classify(&Wrapped(Box::new(timeout))), Some(ProxyError::ConnectTimeout));
        assert_eq!(ProxyError::classify(&Wrapped(Box::new(HoldError::Connect(refused())))), Some(ProxyError::ConnectRefused));
    }

    #[test]
    fn an_app_that_could_not_be_waited_for_is_503() {
        for e in [HoldError::BufferFull { max: 1 }, HoldError::BufferTimeout { waited: std::time::Duration::ZERO }, HoldError::Draining] {
            assert_eq!(ProxyError::classify(&Wrapped(Box::new(e))), Some(ProxyError::Unavailable));
        }
    }

    #[test]
    fn the_body_limit_wins_wherever_it_sits_in_the_chain() {
        // Under an I/O error that would otherwise read as a reset.
        let deep = Wrapped(Box::new(io::Error::other(Wrapped(Box::new(BodyTooLarge { limit: 4 })))));
        assert_eq!(ProxyError::classify(&deep), Some(ProxyError::PayloadTooLarge));
    }

    #[test]
    fn a_stalled_request_body_is_the_clients_408() {
        // As hyper reports it: a "user body error" whose source is ours.
        let stalled = Wrapped(Box::new(Wrapped(Box::new(RequestBodyIdle { timeout: std::time::Duration::from_secs(1) }))));
        assert_eq!(ProxyError::classify(&stalled), Some(ProxyError::RequestBodyTimeout));
        assert_eq!(ProxyError::RequestBodyTimeout.status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn io_errors_are_a_timeout_or_a_reset_and_the_unknown_is_none() {
        assert_eq!(ProxyError::classify(&io::Error::from(io::ErrorKind::TimedOut)), Some(ProxyError::Timeout));
        assert_eq!(ProxyError::classify(&io::Error::from(io::ErrorKind::BrokenPipe)), Some(ProxyError::Reset));
        assert_eq!(ProxyError::classify(&std::fmt::Error), None);
    }

    #[test]
    fn every_kind_has_its_status_and_a_distinct_label() {
        let all = ProxyError::ALL;
        let statuses: Vec<u16> = all.iter().map(|e| e.status().as_u16()).collect();
        assert_eq!(statuses, [502, 504, 504, 502, 502, 400, 405, 503, 503, 413, 408, 504]);
        for e in all {
            let response = e.into_response();
            assert_eq!(response.status(), e.status());
        }
        let mut labels: Vec<&str> = all.iter().map(|e| e.kind()).collect();
        labels.dedup();
        // The two timeouts share a label on purpose: one alert, one cause.
        assert_eq!(labels.len(), all.len() - 1);
    }
}
