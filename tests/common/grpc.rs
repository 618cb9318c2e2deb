//! A gRPC test service, `outrider.test.Echo`, written by hand the way
//! tonic's generated code is (prost messages, `tonic::server::Grpc` and
//! `tonic::client::Grpc` with `tonic_prost::ProstCodec`), and the apps that
//! serve it: gRPC only (h2c), gRPC over TLS (ALPN h2), and a mixed app that
//! serves gRPC, plain HTTP and a WebSocket on one port, as a tonic + axum
//! app does.
//!
//! The app records what the tests need to assert without sleeping: the
//! authority and metadata each call saw, the order in which a server
//! stream's messages were sent, and every handler whose future or stream was
//! dropped before it finished (a cancel that reached the app).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::Semaphore, task::AbortHandle};
use tonic::{Status, codec::Streaming, transport::Channel};
use tonic_types::{ErrorDetails, StatusExt};

use super::otlp_tls::Pki;

pub const SERVICE: &str = "outrider.test.Echo";

/// Messages up to this size pass both ways: the 4 MiB test message and its
/// framing, which tonic's 4 MiB default would refuse.
pub const MAX_MESSAGE: usize = 8 << 20;

/// The metadata key the app echoes back in [`EchoReply::metadata`].
pub const METADATA_KEY: &str = "x-test-metadata";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
    #[prost(string, tag = "2")]
    pub text: String,
    /// Server streaming: how many messages to send.
    #[prost(uint32, tag = "3")]
    pub count: u32,
    /// Server streaming: the pause before each message after the first;
    /// `Slow`: how long to take.
    #[prost(uint64, tag = "4")]
    pub gap_ms: u64,
    /// Server streaming: send each message after the first only once the
    /// test calls [`EchoApp::release`], so a test proves a message was
    /// delivered before the next one existed, with no clock involved.
    #[prost(bool, tag = "5")]
    pub gated: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
    #[prost(string, tag = "2")]
    pub text: String,
    /// The message's place in its stream (0-based), or how many messages a
    /// client stream held.
    #[prost(uint32, tag = "3")]
    pub seq: u32,
    /// The `:authority` the app saw (HTTP/2), or its `Host` (HTTP/1.1).
    #[prost(string, tag = "4")]
    pub authority: String,
    /// The `x-test-metadata` value the app saw, if any.
    #[prost(string, tag = "5")]
    pub metadata: String,
    /// The HTTP version the request reached the app with (`HTTP/2.0`...).
    #[prost(string, tag = "6")]
    pub version: String,
}

impl EchoReply {
    /// The reply without its authority and version: what a comparison of
    /// a direct call with one through outrider expects to be equal when
    /// the client connects to two different addresses (whose authorities
    /// differ by their ports).
    pub fn content(&self) -> (Bytes, String, u32, String) {
        (self.payload.clone(), self.text.clone(), self.seq, self.metadata.clone())
    }
}

/// The error `Fail` answers: code, message and rich details in trailers.
pub fn failure() -> Status {
    let mut details = ErrorDetails::with_bad_request_violation("name", "must not be empty");
    details.set_retry_info(Some(Duration::from_secs(3)));
    Status::with_error_details(tonic::Code::InvalidArgument, "the request is invalid", details)
}

// ===== the app =====

/// What the app observed, shared with the test.
pub struct State {
    /// Handlers entered.
    started: AtomicUsize,
    /// Handlers (or their response streams) dropped before they finished.
    cancelled: AtomicUsize,
    /// Server stream messages sent, by sequence number, in the order sent.
    sent: Mutex<Vec<u32>>,
    /// Permits for gated server streams: one per message after the first.
    gate: Semaphore,
    /// What the last call saw: (authority, version).
    last_seen: Mutex<Option<(String, Version)>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            started: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            sent: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            last_seen: Mutex::new(None),
        }
    }
}

/// Counts a handler as cancelled when dropped before [`Guard::finish`]: a
/// future dropped mid-way (the client went away, or the proxy did), or a
/// response stream dropped before its end.
struct Guard {
    state: Arc<State>,
    finished: AtomicBool,
}

impl Guard {
    fn new(state: &Arc<State>) -> Self {
        state.started.fetch_add(1, SeqCst);
        Self { state: state.clone(), finished: AtomicBool::new(false) }
    }

    fn finish(&self) {
        self.finished.store(true, SeqCst);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.finished.load(SeqCst) {
            self.state.cancelled.fetch_add(1, SeqCst);
        }
    }
}

/// What one request looked like at the app, before tonic hides it.
#[derive(Clone)]
struct Seen {
    authority: String,
    version: Version,
}

impl Seen {
    fn of<B>(req: &Request<B>) -> Self {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| req.headers().get(http::header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()))
            .unwrap_or_default();
        Self { authority, version: req.version() }
    }

    fn reply(&self, metadata: &tonic::metadata::MetadataMap) -> EchoReply {
        EchoReply {
            authority: self.authority.clone(),
            version: format!("{:?}", self.version),
            metadata: metadata.get(METADATA_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned(),
            ..EchoReply::default()
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

fn grpc() -> tonic::server::Grpc<tonic_prost::ProstCodec<EchoReply, EchoRequest>> {
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Serves one gRPC request of `outrider.test.Echo`.
async fn serve_grpc(state: Arc<State>, req: Request<Incoming>) -> Response<tonic::body::Body> {
    let seen = Seen::of(&req);
    *state.last_seen.lock().unwrap() = Some((seen.authority.clone(), seen.version));
    let method = req.uri().path().strip_prefix("/outrider.test.Echo/").unwrap_or_default().to_owned();
    match method.as_str() {
        "Echo" => {
            let service = tower::service_fn(move |request: tonic::Request<EchoRequest>| {
                let reply = seen.reply(request.metadata());
                let message = request.into_inner();
                async move { Ok::<_, Status>(tonic::Response::new(EchoReply { payload: message.payload, text: message.text, ..reply })) }
            });
            grpc().unary(service, req).await
        }
        "Fail" => {
            let service = tower::service_fn(|_: tonic::Request<EchoRequest>| async { Err::<tonic::Response<EchoReply>, _>(failure()) });
            grpc().unary(service, req).await
        }
        "Slow" => {
            let state = state.clone();
            let service = tower::service_fn(move |request: tonic::Request<EchoRequest>| {
                let guard = Guard::new(&state);
                let reply = seen.reply(request.metadata());
                let gap = Duration::from_millis(request.get_ref().gap_ms);
                async move {
                    tokio::time::sleep(gap).await;
                    guard.finish();
                    Ok::<_, Status>(tonic::Response::new(EchoReply { text: "slow done".into(), ..reply }))
                }
            });
            grpc().unary(service, req).await
        }
        "Countdown" => {
            let state = state.clone();
            let service = tower::service_fn(move |request: tonic::Request<EchoRequest>| {
                let guard = Guard::new(&state);
                let state = state.clone();
                let reply = seen.reply(request.metadata());
                let message = request.into_inner();
                let stream = countdown_stream(guard, state, reply, message);
                async move { Ok::<_, Status>(tonic::Response::new(stream)) }
            });
            grpc().server_streaming(service, req).await
        }
        "Sum" => {
            let state = state.clone();
            let service = tower::service_fn(move |request: tonic::Request<Streaming<EchoRequest>>| {
                let guard = Guard::new(&state);
                let reply = seen.reply(request.metadata());
                let mut messages = request.into_inner();
                async move {
                    let (mut text, mut payload, mut n) = (String::new(), Vec::new(), 0);
                    while let Some(message) = messages.next().await {
                        let message = message?;
                        text.push_str(&message.text);
                        payload.extend_from_slice(&message.payload);
                        n += 1;
                    }
                    guard.finish();
                    Ok::<_, Status>(tonic::Response::new(EchoReply { text, payload: payload.into(), seq: n, ..reply }))
                }
            });
            grpc().client_streaming(service, req).await
        }
        "Chat" => {
            let state = state.clone();
            let service = tower::service_fn(move |request: tonic::Request<Streaming<EchoRequest>>| {
                let guard = Guard::new(&state);
                let reply = seen.reply(request.metadata());
                let messages = request.into_inner();
                // Each message is answered as it arrives: nothing is read
                // ahead, so a ping-pong client proves nobody buffers.
                let stream = futures_util::stream::unfold((messages, 0u32, Some(guard)), move |(mut messages, seq, guard)| {
                    let reply = reply.clone();
                    async move {
                        match messages.next().await {
                            Some(Ok(m)) => {
                                Some((Ok(EchoReply { text: m.text, payload: m.payload, seq, ..reply }), (messages, seq + 1, guard)))
                            }
                            Some(Err(status)) => Some((Err(status), (messages, seq, guard))),
                            None => {
                                if let Some(guard) = guard {
                                    guard.finish();
                                }
                                None
                            }
                        }
                    }
                });
                async move { Ok::<_, Status>(tonic::Response::new(Box::pin(stream) as ReplyStream)) }
            });
            grpc().streaming(service, req).await
        }
        _ => {
            let mut response = Response::new(tonic::body::Body::empty());
            response.headers_mut().insert("grpc-status", (tonic::Code::Unimplemented as i32).into());
            response.headers_mut().insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
            response
        }
    }
}

/// The `Countdown` stream: `count` messages, each after the gap (and, when
/// gated, after the test released it), each recorded as sent before it is
/// handed to tonic.
fn countdown_stream(guard: Guard, state: Arc<State>, reply: EchoReply, message: EchoRequest) -> ReplyStream {
    let count = message.count;
    let stream = futures_util::stream::unfold((0u32, guard), move |(seq, guard)| {
        let (state, reply, message) = (state.clone(), reply.clone(), message.clone());
        async move {
            if seq == count {
                guard.finish();
                return None;
            }
            if seq > 0 {
                tokio::time::sleep(Duration::from_millis(message.gap_ms)).await;
                if message.gated {
                    state.gate.acquire().await.unwrap().forget();
                }
            }
            state.sent.lock().unwrap().push(seq);
            Some((Ok(EchoReply { seq, text: message.text, payload: message.payload, ..reply }), (seq + 1, guard)))
        }
    });
    Box::pin(stream)
}

fn text(status: StatusCode, body: String) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
}

/// The mixed app's non-gRPC routes: `GET /hello` answers
/// `<authority or Host> <version>`, `/ws` is a WebSocket echo.
async fn serve_http(mut req: Request<Incoming>) -> Response<tonic::body::Body> {
    let seen = Seen::of(&req);
    match req.uri().path() {
        "/hello" => text(StatusCode::OK, format!("{} {:?}", seen.authority, seen.version)),
        "/ws" => {
            let Some(response) = super::websocket_echo(&mut req) else {
                return text(StatusCode::BAD_REQUEST, "not a WebSocket handshake".into());
            };
            response.body(tonic::body::Body::empty()).unwrap()
        }
        _ => text(StatusCode::NOT_FOUND, "no such route".into()),
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// HTTP/2 with prior knowledge only: an HTTP/1.1 request is refused.
    Grpc,
    /// HTTP/1.1 and h2c on one port (with upgrades): gRPC by content type,
    /// everything else to the HTTP routes.
    Mixed,
}

/// The Echo service on loopback; stopped (listener and every connection)
/// when dropped or on [`EchoApp::stop`].
pub struct EchoApp {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    tls: bool,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl EchoApp {
    /// A gRPC-only app: h2c with prior knowledge, as `tonic::transport::Server`.
    pub async fn grpc() -> Self {
        Self::start(Kind::Grpc, None).await
    }

    /// A mixed app: gRPC + `GET /hello` + WebSocket `/ws` on one port,
    /// HTTP/1.1 and h2c, like a tonic + axum app.
    pub async fn mixed() -> Self {
        Self::start(Kind::Mixed, None).await
    }

    /// A gRPC-only app over TLS (ALPN `h2` only), with `pki`'s server
    /// certificate for `localhost`.
    pub async fn grpc_tls(pki: &Pki) -> Self {
        Self::start(Kind::Grpc, Some(tokio_rustls::TlsAcceptor::from(pki.server_config(false, &[b"h2"])))).await
    }

    async fn start(kind: Kind, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let app = Self { addr, state: state.clone(), tls: tls.is_some(), tasks: tasks.clone() };
        let connections = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (state, tls) = (state.clone(), tls.clone());
                let task = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            Ok::<_, Infallible>(if kind == Kind::Grpc || is_grpc(&req) {
                                serve_grpc(state, req).await
                            } else {
                                serve_http(req).await
                            })
                        }
                    });
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            serve(kind, TokioIo::new(stream), service).await;
                        }
                        None => serve(kind, TokioIo::new(stream), service).await,
                    }
                });
                connections.lock().unwrap().push(task.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        app
    }

    pub fn url(&self) -> String {
        if self.tls { format!("https://localhost:{}", self.addr.port()) } else { format!("http://{}", self.addr) }
    }

    /// Stops listening and closes every connection, as a crashed app.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Handlers entered so far.
    pub fn started(&self) -> usize {
        self.state.started.load(SeqCst)
    }

    /// Handlers whose future or stream was dropped before finishing.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(SeqCst)
    }

    /// The sequence numbers of the server stream messages sent so far.
    pub fn sent(&self) -> Vec<u32> {
        self.state.sent.lock().unwrap().clone()
    }

    /// Lets a gated server stream send one more message.
    pub fn release(&self) {
        self.state.gate.add_permits(1);
    }

    /// The authority and HTTP version of the last gRPC call.
    pub fn last_seen(&self) -> Option<(String, Version)> {
        self.state.last_seen.lock().unwrap().clone()
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve<IO, S>(kind: Kind, io: TokioIo<IO>, service: S)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<tonic::body::Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    // A connection's error (a client gone mid-call) is the test's to see
    // from the client side; the app has nothing to add.
    match kind {
        Kind::Grpc => drop(hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await),
        Kind::Mixed => {
            drop(hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(io, service).await)
        }
    }
}

// ===== the client =====

/// A hand-written `outrider.test.Echo` client over any tonic transport.
#[derive(Clone)]
pub struct EchoClient<T> {
    inner: tonic::client::Grpc<T>,
}

/// A client on a tonic `Channel` to `url` (`http://` or, with a CA in
/// `tls`, `https://`), with `origin` as the `:authority` when given.
pub async fn connect(url: &str, origin: Option<&str>, tls: Option<&Pki>) -> EchoClient<Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap();
    if let Some(origin) = origin {
        endpoint = endpoint.origin(origin.parse().unwrap());
    }
    if let Some(pki) = tls {
        let ca = tonic::transport::Certificate::from_pem(std::fs::read(pki.path("ca.pem")).unwrap());
        endpoint = endpoint.tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost")).unwrap();
    }
    let channel = tokio::time::timeout(super::PATIENCE, endpoint.connect()).await.expect("connected in time").expect("a connection");
    EchoClient::new(channel)
}

/// The transport of [`raw_client`].
pub type RawTransport = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>;

/// A client on a plain hyper h2c client: unlike tonic's `Channel` it does
/// not enforce `grpc-timeout` itself, so a deadline test sees what the
/// server side (outrider) answered rather than the client's own timer.
pub fn raw_client(url: &str) -> EchoClient<RawTransport> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    EchoClient {
        inner: tonic::client::Grpc::with_origin(client, url.parse().unwrap())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    }
}

fn path(method: &'static str) -> http::uri::PathAndQuery {
    // `method` is one of this file's constants, so the format is valid.
    format!("/{SERVICE}/{method}").parse().unwrap()
}

fn codec() -> tonic_prost::ProstCodec<EchoRequest, EchoReply> {
    tonic_prost::ProstCodec::default()
}

impl<T> EchoClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    pub fn new(inner: T) -> Self {
        Self { inner: tonic::client::Grpc::new(inner).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE) }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner.ready().await.map_err(|e| Status::unavailable(format!("not ready: {}", e.into())))
    }

    pub async fn echo(&mut self, request: impl tonic::IntoRequest<EchoRequest>) -> Result<tonic::Response<EchoReply>, Status> {
        self.ready().await?;
        self.inner.unary(request.into_request(), path("Echo"), codec()).await
    }

    pub async fn fail(&mut self, request: impl tonic::IntoRequest<EchoRequest>) -> Result<tonic::Response<EchoReply>, Status> {
        self.ready().await?;
        self.inner.unary(request.into_request(), path("Fail"), codec()).await
    }

    pub async fn slow(&mut self, request: impl tonic::IntoRequest<EchoRequest>) -> Result<tonic::Response<EchoReply>, Status> {
        self.ready().await?;
        self.inner.unary(request.into_request(), path("Slow"), codec()).await
    }

    pub async fn countdown(
        &mut self,
        request: impl tonic::IntoRequest<EchoRequest>,
    ) -> Result<tonic::Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        self.inner.server_streaming(request.into_request(), path("Countdown"), codec()).await
    }

    pub async fn sum<S>(&mut self, messages: tonic::Request<S>) -> Result<tonic::Response<EchoReply>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        self.inner.client_streaming(messages, path("Sum"), codec()).await
    }

    /// Bidirectional: a request holding the stream of messages (a
    /// `tonic::Request` so that the test can take its cancellation handle).
    pub async fn chat<S>(&mut self, messages: tonic::Request<S>) -> Result<tonic::Response<Streaming<EchoReply>>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        self.inner.streaming(messages, path("Chat"), codec()).await
    }
}

/// Messages fed to a client or bidirectional stream one at a time by the
/// test: the stream ends when the sender is dropped.
pub fn feed() -> (tokio::sync::mpsc::UnboundedSender<EchoRequest>, impl Stream<Item = EchoRequest> + Send + 'static) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    (tx, futures_util::stream::poll_fn(move |cx: &mut Context<'_>| -> Poll<Option<EchoRequest>> { rx.poll_recv(cx) }))
}

/// The next message of `stream`, failing the test after [`super::PATIENCE`]
/// (a proxy that buffers would otherwise hang the test).
pub async fn next(stream: &mut Streaming<EchoReply>, what: &str) -> Option<EchoReply> {
    tokio::time::timeout(super::PATIENCE, stream.message()).await.unwrap_or_else(|_| panic!("timed out waiting for {what}")).unwrap()
}

/// Decoded error details, printable for comparison (tonic-types' types
/// have no `PartialEq`).
pub fn details(status: &Status) -> String {
    format!("{:?}", status.check_error_details().expect("decodable error details"))
}
