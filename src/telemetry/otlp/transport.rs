//! One delivery attempt of an encoded batch to the collector: the HTTP
//! client, the wire framing, and what the collector answered, read into a
//! [`Reply`] that the export loop (`super`) judges.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `http/protobuf`: `POST …/v1/traces`.
    Http,
    /// `grpc`: the `TraceService/Export` method over HTTP/2.
    Grpc,
}

/// What the collector answered to one attempt.
#[derive(Debug)]
pub enum Reply {
    /// `http/protobuf`: the status, the `Retry-After` header if any, and
    /// the body (an `ExportTraceServiceResponse` on success, a `Status` on
    /// failure).
    Http { status: StatusCode, retry_after: Option<HeaderValue>, body: Bytes },
    /// `grpc`: the `grpc-status` code (0 is OK), `grpc-message`, the
    /// decoded `grpc-status-details-bin` (a `google.rpc.Status`) if any,
    /// and the response message without gRPC's 5-byte prefix.
    Grpc { code: u32, message: String, details: Option<Bytes>, body: Bytes },
}

/// The attempt got no answer: connection refused or reset, TLS failure,
/// a malformed response.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Sends encoded batches to one collector URL.
pub struct Transport {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    wire: Wire,
    /// Every request's headers, built once.
    headers: HeaderMap,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").field("uri", &self.uri).field("wire", &self.wire).finish_non_exhaustive()
    }
}

impl Transport {
    /// `uri` is the full export URL; `headers` the configured ones plus the
    /// protocol's own.
    pub fn new(uri: Uri, wire: Wire, headers: HeaderMap) -> Self {
        let client = Client::builder(TokioExecutor::new()).http2_only(wire == Wire::Grpc).build(HttpConnector::new());
        Self { client, uri, wire, headers }
    }

    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// The bytes to send for one encoded `ExportTraceServiceRequest`,
    /// framed for the wire. Built once per batch; every retry sends the
    /// same bytes.
    pub fn frame(&self, message: Vec<u8>) -> Bytes {
        match self.wire {
            Wire::Http => Bytes::from(message),
            Wire::Grpc => {
                let mut framed = Vec::with_capacity(5 + message.len());
                // Uncompressed, then the length, big-endian.
                framed.push(0);
                framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
                framed.extend_from_slice(&message);
                Bytes::from(framed)
            }
        }
    }

    /// One attempt.
    ///
    /// # Errors
    /// When no answer came back.
    pub async fn send(&self, body: Bytes) -> Result<Reply, TransportError> {
        let mut request = Request::builder().method(Method::POST).uri(self.uri.clone());
        if let Some(headers) = request.headers_mut() {
            headers.clone_from(&self.headers);
        }
        let request = request.body(Full::new(body)).map_err(|e| TransportError(e.to_string()))?;
        let response = self.client.request(request).await.map_err(|e| TransportError(format!("{e:?}")))?;
        let (parts, body) = response.into_parts();
        // Read to the end: the connection is reused, and gRPC's verdict is
        // in the trailers.
        let body = body.collect().await.map_err(|e| TransportError(format!("reading the response: {e}")))?;
        match self.wire {
            Wire::Http => {
                let retry_after = parts.headers.get(http::header::RETRY_AFTER).cloned();
                Ok(Reply::Http { status: parts.status, retry_after, body: body.to_bytes() })
            }
            Wire::Grpc if parts.status != StatusCode::OK => {
                Err(TransportError(format!("collector answered HTTP {} to a gRPC request", parts.status)))
            }
            Wire::Grpc => {
                let trailers = body.trailers().cloned();
                let field = |name: &str| parts.headers.get(name).or_else(|| trailers.as_ref().and_then(|t| t.get(name)));
                let Some(code) = field("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok()) else {
                    return Err(TransportError("collector answered without a gRPC status".to_owned()));
                };
                let message = field("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let details = field("grpc-status-details-bin").map(|v| Bytes::copy_from_slice(v.as_bytes()));
                let body = body.to_bytes();
                // One message behind its 5-byte prefix (uncompressed, as
                // nothing asked the collector to compress).
                let body = if body.len() >= 5 { body.slice(5..) } else { Bytes::new() };
                Ok(Reply::Grpc { code, message, details, body })
            }
        }
    }
}
