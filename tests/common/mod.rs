//! Test harness: the real `outrider` binary, a real upstream HTTP server on
//! loopback, and helpers that poll instead of sleeping.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub mod exposition;
pub mod grpc;
pub mod kubernetes;
pub mod otlp;
pub mod otlp_faulty;
pub mod otlp_tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_outrider");

/// How long to wait for anything that should happen "soon". Generous, so a
/// loaded CI machine does not flake; tests poll and return as soon as ready.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// Polls `check` until it returns `Some`, or panics after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(PATIENCE, what, check).await
}

/// Polls `check` until it returns `Some`, or panics once `patience` has
/// passed. A check that itself hangs (a request nobody answers) counts
/// against the same deadline, so this never waits longer than `patience`.
pub async fn eventually_within<T, F, Fut>(patience: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {patience:?} waiting for {what}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {patience:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a condition the test can read directly (a counter, a file, a
/// process state) until it holds, or panics after [`PATIENCE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    eventually(what, || {
        let holds = condition();
        async move { holds.then_some(()) }
    })
    .await;
}

/// An address where nothing listens, kept so while the guard lives: the
/// port is bound but never listened on, so a connect is refused and the
/// kernel cannot hand the port to a listener another test starts meanwhile
/// (binding a listener on port 0 and dropping it frees the port at once).
pub fn refused_addr() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
    (socket.local_addr().expect("its address"), socket)
}

/// Accepts a WebSocket handshake and echoes every text and binary message
/// on the upgraded connection: the `101` to send, without its body; `None`
/// when the request is no handshake.
pub fn websocket_echo(req: &mut Request<hyper::body::Incoming>) -> Option<http::response::Builder> {
    let key = req.headers().get("sec-websocket-key").cloned()?;
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Some(
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())),
    )
}

/// Polls `url` until it answers `status`.
pub async fn wait_status(url: &str, status: u16) {
    eventually(&format!("{url} to answer {status}"), || async move { (get(url).await.map(|r| r.0).unwrap_or(0) == status).then_some(()) })
        .await;
}

// ===== the upstream app =====

/// What the app saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub at: Instant,
}

/// A real HTTP/1.1 + h2c server on loopback, recording every request.
///
/// Routes:
/// * `/echo`: streams the request body back, frame by frame.
/// * `/count`: reads the body, answers with its length in bytes.
/// * `/bytes/N`: streams N bytes of a known pattern in 64 KiB frames.
/// * `/slow/MS`: answers after MS milliseconds.
/// * `/trailers`: a chunked body followed by a `x-checksum` trailer.
/// * `/ws`: a WebSocket echo server.
/// * anything else: 200 with body `hello from app`.
pub struct App {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Bodies the app saw end in an error (the request was cut, not completed).
    pub aborted: Arc<std::sync::atomic::AtomicUsize>,
    /// Bodies `/count` read to a clean end.
    pub completed: Arc<std::sync::atomic::AtomicUsize>,
    /// TCP connections accepted.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener).await
    }

    pub async fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let aborted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let record = Record { seen: seen.clone(), aborted: aborted.clone(), completed: completed.clone() };
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(record.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, aborted, completed, accepted, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the app saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn pattern(len: usize) -> impl Iterator<Item = Bytes> {
    const CHUNK: usize = 64 * 1024;
    let block: Bytes = (0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK);
        left -= n;
        Some(block.slice(..n))
    })
}

/// A streamed body of `len` pattern bytes; never held in memory whole.
pub fn pattern_body(len: usize) -> TestBody {
    let stream = futures_util::stream::iter(pattern(len).map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b))));
    BodyExt::boxed(StreamBody::new(stream))
}

#[derive(Clone)]
struct Record {
    seen: Arc<Mutex<Vec<Seen>>>,
    aborted: Arc<std::sync::atomic::AtomicUsize>,
    completed: Arc<std::sync::atomic::AtomicUsize>,
}

async fn handle(record: Record, mut req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    use std::sync::atomic::Ordering::SeqCst;
    record.seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        at: Instant::now(),
    });
    let path = req.uri().path().to_owned();
    let response = if path == "/echo" {
        let body = req.into_body().map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed();
        Response::new(body)
    } else if path == "/count" {
        let mut body = req.into_body();
        let mut n = 0usize;
        let mut ok = true;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        n += data.len();
                    }
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            record.completed.fetch_add(1, SeqCst);
            Response::new(full(n.to_string()))
        } else {
            record.aborted.fetch_add(1, SeqCst);
            let mut r = Response::new(full("aborted"));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        Response::new(pattern_body(n.parse().unwrap()))
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        Response::new(full("slow done"))
    } else if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"part1,"))),
            Ok(Frame::data(Bytes::from_static(b"part2"))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::builder()
            .header("trailer", "x-checksum")
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))))
            .unwrap()
    } else if path == "/ws" {
        websocket_echo(&mut req).expect("a WebSocket handshake").body(full("")).unwrap()
    } else {
        Response::builder().header("x-app", "yes").body(full("hello from app")).unwrap()
    };
    Ok(response)
}

// ===== the outrider process =====

/// A running outrider, killed when dropped.
pub struct Outrider {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Builder for an outrider process with test-friendly defaults: ephemeral
/// ports, JSON logs, short drain.
pub struct Spawn {
    env: HashMap<String, String>,
    args: Vec<String>,
    one_cpu: bool,
}

pub fn outrider(upstream: &str) -> Spawn {
    let mut env = HashMap::new();
    for (k, v) in [
        ("OUTRIDER_LISTEN", "127.0.0.1:0"),
        ("OUTRIDER_ADMIN_LISTEN", "127.0.0.1:0"),
        ("OUTRIDER_LOG", "info,outrider=debug"),
        ("OUTRIDER_LOG_FORMAT", "json"),
        ("OUTRIDER_DRAIN_DELAY", "0"),
        ("OUTRIDER_DRAIN_TIMEOUT", "5s"),
    ] {
        env.insert(k.to_owned(), v.to_owned());
    }
    env.insert("OUTRIDER_UPSTREAM".into(), upstream.to_owned());
    Spawn { env, args: Vec::new(), one_cpu: false }
}

impl Spawn {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_owned(), v.to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs outrider with an affinity mask of one CPU (as a sidecar with a
    /// one-CPU limit), which selects its single-threaded runtime.
    pub fn one_cpu(mut self) -> Self {
        self.one_cpu = true;
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = if self.one_cpu {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        // A clean slate: the developer's own OUTRIDER_*/OTEL_* must not leak in.
        for (k, _) in std::env::vars() {
            if k.starts_with("OUTRIDER_") || k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(&self.env).args(&self.args);
        cmd
    }

    /// Starts outrider and waits until both listeners answer.
    pub async fn start(self) -> Outrider {
        let mut child = self.command().stdin(Stdio::null()).stdout(Stdio::inherit()).stderr(Stdio::piped()).spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[outrider] {line}");
                if line.contains("outrider started") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let started = tokio::task::spawn_blocking(move || rx.recv_timeout(PATIENCE)).await.unwrap().expect("outrider did not start");
        let v: serde_json::Value = serde_json::from_str(&started).unwrap();
        let listen = v["listen"].as_str().unwrap().parse().unwrap();
        let admin = v["admin"].as_str().unwrap().parse().unwrap();
        let outrider = Outrider { child, listen, admin, logs };
        let url = outrider.admin_url("/livez");
        eventually("/livez", || {
            let url = url.clone();
            async move { (get(&url).await.ok()?.0 == 200).then_some(()) }
        })
        .await;
        outrider
    }
}

impl Outrider {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the process to exit.
    pub async fn wait(mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < PATIENCE, "outrider did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True while the process runs (not exited, not a zombie).
    pub fn child_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    }

    /// Waits for a log line matching `pred` (logs are written by a
    /// background thread, so a line can trail the response it describes).
    pub async fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually(what, || {
            let line = self.logs().into_iter().find(|l| pred(l));
            async move { line }
        })
        .await
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The value of one series on `/metrics`, `name` or `name{labels}`
    /// exactly as exposed; `None` if it is absent or the scrape failed.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (status, _, body) = get(&self.admin_url("/metrics")).await.ok()?;
        if status != 200 {
            return None;
        }
        let prefix = format!("{series} ");
        String::from_utf8_lossy(&body).lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// Scrapes `/metrics` until `series` has a value that satisfies `pred`,
    /// and returns it.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let pred = &pred;
        eventually(&format!("{series} on /metrics to reach the expected value"), move || async move {
            self.metric(series).await.filter(|v| pred(*v))
        })
        .await
    }

    /// Peak resident memory so far, from the kernel's own accounting.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
    }
}

impl Drop for Outrider {
    /// Two SIGTERMs (the fast path) so that outrider stops its app too and
    /// no test leaves processes behind; SIGKILL if that takes too long.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.pid());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ===== clients =====

pub type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// GET `url` and collect the body.
pub async fn get(url: &str) -> Result<(u16, HeaderMap, Bytes), hyper_util::client::legacy::Error> {
    send(&client(), Request::get(url).body(full("")).unwrap()).await
}

pub async fn send(client: &Client, req: Request<TestBody>) -> Result<(u16, HeaderMap, Bytes), hyper_util::client::legacy::Error> {
    let response = client.request(req).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Ok((status, headers, body))
}

/// A request whose end the test decides: a chunked `POST /count` that has
/// sent the first chunk of its body and sends the rest on [`Self::finish`].
/// It stays in flight (at the proxy and at the app) for exactly as long as
/// the test needs, instead of as long as a slow route happens to take.
pub struct HeldUpload {
    stream: tokio::net::TcpStream,
}

impl HeldUpload {
    pub async fn start(addr: SocketAddr) -> Self {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"POST /count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").await.unwrap();
        Self { stream }
    }

    /// Ends the body and reads the response: `(200, "5")` from the app.
    pub async fn finish(mut self) -> (u16, String) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(b"0\r\n\r\n").await.unwrap();
        read_response(&mut self.stream).await
    }
}

/// Sends raw bytes on a fresh TCP connection and returns everything read
/// until the peer closes (or `PATIENCE` runs out).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a `Content-Length` body: status and body.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await.expect("a response head in time").unwrap();
        assert!(n > 0, "closed before a response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().parse().unwrap()))
        .expect("a Content-Length");
    while buf.len() < head_end + length {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await.expect("the body in time").unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (status, String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned())
}
