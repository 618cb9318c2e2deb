//! OTLP receivers over TLS (gRPC with tonic, HTTP with hyper, each with an
//! optional client-certificate requirement) and receivers that check gzip,
//! plus the test PKI they use: a CA, a server certificate for
//! `localhost`/127.0.0.1, a client certificate, and a second, unrelated CA.

use std::{
    io::Read,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

use super::{
    full,
    otlp::{Receiver, Store, store},
};

/// The test PKI, written to a temporary directory removed on drop.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("outrider-otlp-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ca(&format!("{name} collector CA"));
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("other-ca.pem"), self::ca("unrelated CA").pem()).unwrap();
        let pki = Self { dir, ca };
        pki.issue("server", "collector", &["localhost", "127.0.0.1"]);
        pki.issue("client", "outrider", &[]);
        pki.issue("stranger", "someone else", &[]);
        pki
    }

    /// Writes `<name>.crt` and `<name>.key`, signed by the CA.
    fn issue(&self, name: &str, cn: &str, sans: &[&str]) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The receiver's TLS: the server certificate, ALPN `alpn`, and when
    /// `require_client_cert`, a client certificate signed by the CA.
    pub fn server_config(&self, require_client_cert: bool, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let certs = CertificateDer::pem_file_iter(self.dir.join("server.crt")).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(self.dir.join("server.key")).unwrap();
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `data` to `path` as a Secret update does: a new file renamed
/// over the old one.
pub fn replace_file(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A receiver and the TLS handshakes it refused (a client that does not
/// trust its certificate, or that has none to show when one is required).
pub struct TlsReceiver {
    pub receiver: Receiver,
    pub refused: Arc<AtomicUsize>,
    /// The `api-key` header of every export received.
    pub api_keys: Keys,
}

pub type Keys = Arc<std::sync::Mutex<Vec<String>>>;

impl std::ops::Deref for TlsReceiver {
    type Target = Receiver;
    fn deref(&self) -> &Receiver {
        &self.receiver
    }
}

impl TlsReceiver {
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn api_keys(&self) -> Vec<String> {
        self.api_keys.lock().unwrap().clone()
    }
}

/// Accepts TCP connections and completes TLS handshakes, each in its own
/// task; established streams come out of the channel.
fn accept_tls(listener: TcpListener, config: Arc<rustls::ServerConfig>, refused: Arc<AtomicUsize>) -> tokio::sync::mpsc::Receiver<TlsConn> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (acceptor, tx, refused) = (acceptor.clone(), tx.clone(), refused.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(tls) => {
                        let _ = tx.send(TlsConn(tls)).await;
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    rx
}

/// OTLP/gRPC (tonic) over TLS, ALPN `h2`.
pub async fn grpc_tls(pki: &Pki, require_client_cert: bool) -> TlsReceiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let mut accepted = accept_tls(listener, pki.server_config(require_client_cert, &[b"h2"]), refused.clone());
    let spans = Store::default();
    let api_keys = Keys::default();
    let service = TraceServiceServer::new(Collector(spans.clone(), api_keys.clone()));
    let task = tokio::spawn(async move {
        let incoming = futures_util::stream::poll_fn(move |cx| accepted.poll_recv(cx).map(|c| c.map(Ok::<_, std::io::Error>)));
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    TlsReceiver { receiver: Receiver { addr, spans, task }, refused, api_keys }
}

/// OTLP/HTTP over TLS (HTTP/1.1 or HTTP/2, by ALPN).
pub async fn http_tls(pki: &Pki, require_client_cert: bool) -> TlsReceiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let mut accepted = accept_tls(listener, pki.server_config(require_client_cert, &[b"h2", b"http/1.1"]), refused.clone());
    let spans = Store::default();
    let api_keys = Keys::default();
    let (sink, keys) = (spans.clone(), api_keys.clone());
    let task = tokio::spawn(async move {
        while let Some(conn) = accepted.recv().await {
            serve_http(TokioIo::new(conn), sink.clone(), keys.clone(), false);
        }
    });
    TlsReceiver { receiver: Receiver { addr, spans, task }, refused, api_keys }
}

/// OTLP/HTTP in clear that requires `Content-Encoding: gzip`.
pub async fn http_gzip() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Store::default();
    let sink = spans.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            serve_http(TokioIo::new(stream), sink.clone(), Keys::default(), true);
        }
    });
    Receiver { addr, spans, task }
}

fn serve_http<IO>(io: TokioIo<IO>, sink: Store, keys: Keys, gzip: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let sink = sink.clone();
            if let Some(key) = req.headers().get("api-key") {
                keys.lock().unwrap().push(key.to_str().unwrap().to_owned());
            }
            async move {
                assert_eq!(req.uri().path(), "/v1/traces");
                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                let encoding = req.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_owned());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let message = if gzip {
                    assert_eq!(encoding.as_deref(), Some("gzip"), "compression is on: the body must say gzip");
                    gunzip(&body)
                } else {
                    assert_eq!(encoding, None, "compression is off");
                    body
                };
                store(&sink, ExportTraceServiceRequest::decode(message).unwrap());
                let out = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                Ok::<_, std::convert::Infallible>(
                    Response::builder().header("content-type", "application/x-protobuf").body(full(Bytes::from(out))).unwrap(),
                )
            }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
    });
}

/// OTLP/gRPC in clear (h2c), written by hand to see the wire: it requires
/// `grpc-encoding: gzip`, a `grpc-accept-encoding` naming gzip and the
/// compressed flag, and answers with a gzip-compressed message too.
pub async fn grpc_gzip() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Store::default();
    let sink = spans.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sink = sink.clone();
        async move {
            assert_eq!(req.uri().path(), "/opentelemetry.proto.collector.trace.v1.TraceService/Export");
            assert_eq!(req.headers()["content-type"], "application/grpc");
            assert_eq!(req.headers()["grpc-encoding"], "gzip");
            let accepts = req.headers()["grpc-accept-encoding"].to_str().unwrap().to_owned();
            assert!(accepts.split(',').any(|e| e.trim() == "gzip"), "grpc-accept-encoding: {accepts}");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body[0], 1, "the compressed flag");
            let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, body.len() - 5, "one message, its length prefixed");
            store(&sink, ExportTraceServiceRequest::decode(gunzip(&body[5..])).unwrap());
            let answer = gzip(&ExportTraceServiceResponse { partial_success: None }.encode_to_vec());
            let mut message = vec![1];
            message.extend_from_slice(&(answer.len() as u32).to_be_bytes());
            message.extend_from_slice(&answer);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(message))), Ok(Frame::trailers(trailers))];
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-encoding", "gzip")
                    .body(StreamBody::new(futures_util::stream::iter(frames)))
                    .unwrap(),
            )
        }
    });
    Receiver { addr, spans, task: super::otlp::serve_each(listener, service) }
}

pub fn gunzip(data: &[u8]) -> Bytes {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).expect("a gzip body");
    Bytes::from(out)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

struct Collector(Store, Keys);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(key) = request.metadata().get("api-key") {
            self.1.lock().unwrap().push(key.to_str().unwrap().to_owned());
        }
        store(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A server-side TLS stream tonic can serve: tonic asks its connections
/// for their peer information, through a trait this crate must implement.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
