//! A steady load, as clients of a Service send it: a few workers, each on
//! its own keep-alive connection, reconnecting when the server closes it.
//! Every request is counted; a failure is anything but a whole 200.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One failed request: what went wrong, and how long it took to fail.
#[derive(Debug, Clone)]
pub struct Failure {
    pub what: String,
    /// The status, if there was a response.
    pub status: Option<u16>,
    pub took: Duration,
}

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    failures: Mutex<Vec<Failure>>,
    /// `/proc/uptime` when the last 200 arrived: the clock the app's log
    /// uses too.
    last_ok_uptime: Mutex<f64>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// What the load saw, once it finished.
#[derive(Debug)]
pub struct Report {
    pub ok: u64,
    pub failures: Vec<Failure>,
    pub last_ok_uptime: f64,
}

impl Report {
    pub fn total(&self) -> u64 {
        self.ok + self.failures.len() as u64
    }
}

impl Load {
    /// `workers` workers, worker `i` asking for `paths[i % paths.len()]`.
    pub fn start(target: SocketAddr, paths: &[&'static str], workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let workers = (0..workers).map(|i| tokio::spawn(worker(target, paths[i % paths.len()], stop.clone(), stats.clone()))).collect();
        Self { stop, stats, workers }
    }

    /// Stops new requests `lag` from now, as an endpoint removal that takes
    /// `lag` to reach the load balancer does for a deleted pod; requests in
    /// flight go on.
    pub fn stop_after(&self, lag: Duration) -> tokio::task::JoinHandle<()> {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(lag).await;
            stop.store(true, Ordering::Release);
        })
    }

    pub fn ok(&self) -> u64 {
        self.stats.ok.load(Ordering::Acquire)
    }

    /// Waits until `n` requests succeeded: the load is flowing.
    pub async fn until_ok(&self, n: u64) {
        super::common::eventually(&format!("{n} successful requests"), || async move { (self.ok() >= n).then_some(()) }).await;
    }

    /// Stops new requests, waits for those in flight, and reports.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Release);
        for worker in self.workers {
            worker.await.expect("load worker panicked");
        }
        Report {
            ok: self.stats.ok.load(Ordering::Acquire),
            failures: self.stats.failures.lock().expect("stats").clone(),
            last_ok_uptime: *self.stats.last_ok_uptime.lock().expect("stats"),
        }
    }
}

/// Seconds since boot, as `/proc/uptime` says (10 ms resolution): the same
/// clock inside every container.
pub fn uptime() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").expect("read /proc/uptime");
    text.split_whitespace().next().and_then(|s| s.parse().ok()).expect("parse /proc/uptime")
}

async fn worker(target: SocketAddr, path: &'static str, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Acquire) {
        let started = Instant::now();
        let fail = |what: String, status: Option<u16>| {
            stats.failures.lock().expect("stats").push(Failure { what, status, took: started.elapsed() });
        };
        let mut sender = match conn.take().filter(|c| !c.is_closed()) {
            Some(sender) => sender,
            None => match connect(target).await {
                Ok(sender) => sender,
                Err(e) => {
                    fail(format!("connect: {e}"), None);
                    // A client backs off a little before it tries again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if sender.ready().await.is_err() {
            // Closed by the server between requests: nothing was sent, so a
            // client simply opens a new connection.
            continue;
        }
        let request = Request::get(path).header(header::HOST, "legacy-app").body(Empty::new()).expect("request");
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let close = response.headers().get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, close))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok((200, close))) => {
                stats.ok.fetch_add(1, Ordering::AcqRel);
                *stats.last_ok_uptime.lock().expect("stats") = uptime();
                if !close {
                    conn = Some(sender);
                }
            }
            Ok(Ok((status, _))) => fail(format!("HTTP {status}"), Some(status)),
            // Closed just as the request went out, before any of it was
            // written: what every HTTP client retries on a new connection.
            Ok(Err(e)) if e.is_canceled() => {}
            Ok(Err(e)) => fail(format!("{e}"), None),
            Err(_) => fail(format!("no answer within {REQUEST_TIMEOUT:?}"), None),
        }
    }
}

async fn connect(target: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await??;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
