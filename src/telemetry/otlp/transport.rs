//! One delivery attempt of an encoded batch to the collector: the HTTP
//! client (plain, or TLS with files re-read on rotation), the wire framing
//! and compression, and what the collector answered, read into a
//! [`Reply`] that the export loop (`super`) judges.

use std::{
    fmt,
    sync::{Mutex, PoisonError},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

mod connect;
mod gzip;
mod tls;

use connect::TlsConnect;
pub use gzip::Compression;
pub use tls::{CollectorTls, warn_if_configured as warn_if_tls_configured};

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

/// gRPC's mapping of an HTTP status that is not 200 to a gRPC code.
fn grpc_code_of_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// The attempt got no answer: connection refused or reset, TLS failure,
/// a malformed response.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Sends encoded batches to one collector URL.
pub struct Transport {
    client: Clients,
    uri: Uri,
    wire: Wire,
    compression: Compression,
    /// Every request's headers, built once. Never logged: they carry API
    /// keys.
    headers: HeaderMap,
}

/// The pooled HTTP client, over plain TCP or TLS.
#[expect(clippy::large_enum_variant, reason = "one per process: boxing saves nothing")]
enum Clients {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(TlsClient),
}

struct TlsClient {
    tls: CollectorTls,
    /// Rebuilt (with a fresh pool) when the TLS files change, so that a
    /// rotated client certificate or CA is used from the next attempt.
    /// Locked on the export thread only, for a pointer copy.
    client: Mutex<Client<TlsConnect, Full<Bytes>>>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the headers: they carry API keys.
        let mut s = f.debug_struct("Transport");
        s.field("uri", &self.uri).field("wire", &self.wire).field("compression", &self.compression);
        if let Clients::Tls(tls) = &self.client {
            s.field("tls", &tls.tls);
        }
        s.finish_non_exhaustive()
    }
}

impl Transport {
    /// `uri` is the full export URL (`https://` with `tls`); `headers` the
    /// configured ones plus the protocol's own; `tls` with the connector
    /// its files gave at start-up. The compression's headers are added
    /// here.
    pub fn new(
        uri: Uri,
        wire: Wire,
        mut headers: HeaderMap,
        compression: Compression,
        tls: Option<(CollectorTls, tokio_rustls::TlsConnector)>,
    ) -> Self {
        if compression == Compression::Gzip {
            match wire {
                Wire::Http => {
                    headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                Wire::Grpc => {
                    headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
                    headers.insert("grpc-accept-encoding", HeaderValue::from_static("gzip"));
                }
            }
        }
        let client = match tls {
            None => Clients::Plain(client(wire, HttpConnector::new())),
            Some((tls, connector)) => {
                let client = Mutex::new(client(wire, TlsConnect::new(connector, tls.server_name())));
                Clients::Tls(TlsClient { tls, client })
            }
        };
        Self { client, uri, wire, compression, headers }
    }

    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// The bytes to send for one encoded `ExportTraceServiceRequest`,
    /// framed (and compressed) for the wire. Built once per batch, on the
    /// export thread; every retry sends the same bytes.
    pub fn frame(&self, message: Vec<u8>) -> Bytes {
        let (compressed, message) = match self.compression {
            Compression::None => (false, message),
            Compression::Gzip => (true, gzip::compress(&message)),
        };
        match self.wire {
            Wire::Http => Bytes::from(message),
            Wire::Grpc => {
                let mut framed = Vec::with_capacity(5 + message.len());
                // The compressed flag, then the length, big-endian.
                framed.push(u8::from(compressed));
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
        let response = self.request(request).await.map_err(|e| TransportError(describe(&e)))?;
        let (parts, body) = response.into_parts();
        // Read to the end: the connection is reused, and gRPC's verdict is
        // in the trailers.
        let body = body.collect().await.map_err(|e| TransportError(format!("reading the response: {e}")))?;
        match self.wire {
            Wire::Http => {
                let retry_after = parts.headers.get(http::header::RETRY_AFTER).cloned();
                let mut body = body.to_bytes();
                if parts.headers.get(http::header::CONTENT_ENCODING).is_some_and(|e| e.as_bytes().eq_ignore_ascii_case(b"gzip")) {
                    body = gzip::decompress(&body).map(Bytes::from).map_err(|e| TransportError(format!("the response: {e}")))?;
                }
                Ok(Reply::Http { status: parts.status, retry_after, body })
            }
            // Not a gRPC answer (a proxy in the way, or an HTTP/2 server
            // that is not the collector): the gRPC status it stands for, as
            // gRPC's "HTTP to gRPC status code mapping" gives it, so that a
            // 404 is final and a 503 is retried.
            Wire::Grpc if parts.status != StatusCode::OK => Ok(Reply::Grpc {
                code: grpc_code_of_http(parts.status),
                message: format!("collector answered HTTP {} to a gRPC request", parts.status),
                details: None,
                body: Bytes::new(),
            }),
            Wire::Grpc => {
                let trailers = body.trailers().cloned();
                let field = |name: &str| parts.headers.get(name).or_else(|| trailers.as_ref().and_then(|t| t.get(name)));
                let Some(code) = field("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok()) else {
                    return Err(TransportError("collector answered without a gRPC status".to_owned()));
                };
                let message = field("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let details = field("grpc-status-details-bin").map(|v| Bytes::copy_from_slice(v.as_bytes()));
                let body = body.to_bytes();
                // One message behind its 5-byte prefix; its first byte says
                // whether it is compressed, with the response's
                // `grpc-encoding`.
                let body = match body.first() {
                    None => Bytes::new(),
                    Some(0) => body.slice(5.min(body.len())..),
                    Some(_) => {
                        let encoding = parts.headers.get("grpc-encoding").map(HeaderValue::as_bytes);
                        if encoding != Some(b"gzip") {
                            return Err(TransportError("collector answered a compressed message in an encoding not asked for".to_owned()));
                        }
                        let message = body.slice(5.min(body.len())..);
                        gzip::decompress(&message).map(Bytes::from).map_err(|e| TransportError(format!("the response: {e}")))?
                    }
                };
                Ok(Reply::Grpc { code, message, details, body })
            }
        }
    }

    async fn request(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match &self.client {
            Clients::Plain(client) => client.request(request).await,
            Clients::Tls(tls) => {
                let client = {
                    let mut current = tls.client.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(connector) = tls.tls.reloaded() {
                        *current = self::client(self.wire, TlsConnect::new(connector, tls.tls.server_name()));
                    }
                    current.clone()
                };
                client.request(request).await
            }
        }
    }
}

fn client<C>(wire: Wire, connector: C) -> Client<C, Full<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new()).http2_only(wire == Wire::Grpc).build(connector)
}

/// hyper-util's error, with its causes (a TLS handshake's reason is two
/// levels down) on one line.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(wire: Wire, compression: Compression) -> Transport {
        let mut headers = HeaderMap::new();
        headers.insert("api-key", HeaderValue::from_static("s3cret-value"));
        Transport::new("http://127.0.0.1:4317/x".parse().unwrap(), wire, headers, compression, None)
    }

    /// A non-gRPC answer on the gRPC wire is judged by the gRPC code it
    /// stands for: a wrong path (404) is final, an overloaded proxy (503)
    /// is retried.
    #[test]
    fn http_statuses_on_the_grpc_wire_map_to_grpc_codes() {
        for (status, code) in [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14), (500, 2)] {
            assert_eq!(grpc_code_of_http(StatusCode::from_u16(status).unwrap()), code, "{status}");
        }
    }

    #[test]
    fn debug_never_shows_header_values() {
        for wire in [Wire::Grpc, Wire::Http] {
            let shown = format!("{:?}", transport(wire, Compression::Gzip));
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("127.0.0.1:4317"), "{shown}");
        }
    }

    #[test]
    fn grpc_frames_say_whether_they_are_compressed() {
        let message = b"spans ".repeat(100);
        let plain = transport(Wire::Grpc, Compression::None).frame(message.clone());
        assert_eq!(plain[0], 0);
        assert_eq!(&plain[1..5], &u32::try_from(message.len()).unwrap().to_be_bytes());
        assert_eq!(&plain[5..], &message[..]);
        let packed = transport(Wire::Grpc, Compression::Gzip);
        assert_eq!(packed.headers["grpc-encoding"], "gzip");
        let packed = packed.frame(message.clone());
        assert_eq!(packed[0], 1);
        assert_eq!(u32::from_be_bytes(packed[1..5].try_into().unwrap()) as usize, packed.len() - 5);
        assert_eq!(gzip::decompress(&packed[5..]).unwrap(), message);
        let http = transport(Wire::Http, Compression::Gzip);
        assert_eq!(http.headers[http::header::CONTENT_ENCODING], "gzip");
        assert_eq!(gzip::decompress(&http.frame(message.clone())).unwrap(), message);
    }
}
