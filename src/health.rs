//! Is the app healthy? Decided by an active check in the background and by
//! what real traffic sees, and read by the probes from memory.
//!
//! The state is a `watch` channel: probes and held requests read or await
//! it; nothing on the request path takes a lock to report (successes and
//! failures are atomics, and the channel is only written when the verdict
//! changes).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How the app is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP (or Unix socket) connect.
    Connect,
    /// `GET path`; 2xx and 3xx are healthy.
    Http(String),
}

/// Thresholds and timing of the active check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub check: Check,
    pub interval: Duration,
    /// Consecutive failures before a healthy app is declared unhealthy.
    pub failures: u32,
    /// Consecutive successes before an unhealthy app is declared healthy.
    pub successes: u32,
    /// Bound on one check.
    pub timeout: Duration,
}

/// The verdict the probes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub healthy: bool,
    /// The app has been healthy at least once (the startup probe).
    pub started: bool,
    /// Why the last check failed, for `/readyz`.
    pub reason: String,
}

/// Shared handle: report observations, read or await the verdict.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    status: watch::Sender<Status>,
    consecutive_failures: AtomicU32,
    consecutive_successes: AtomicU32,
    failures_needed: u32,
    successes_needed: u32,
}

// === impl Health ===

impl Health {
    pub fn new(failures: u32, successes: u32) -> Self {
        let (status, _) = watch::channel(Status { healthy: false, started: false, reason: "not checked yet".into() });
        Self {
            inner: Arc::new(Inner {
                status,
                consecutive_failures: AtomicU32::new(0),
                consecutive_successes: AtomicU32::new(0),
                failures_needed: failures.max(1),
                successes_needed: successes.max(1),
            }),
        }
    }

    /// The current verdict.
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    pub fn is_healthy(&self) -> bool {
        self.inner.status.borrow().healthy
    }

    /// A receiver that wakes on every change of verdict.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// The app answered (a check passed, or a connection was made).
    pub fn success(&self) {
        self.inner.consecutive_failures.store(0, Ordering::Relaxed);
        let n = self.inner.consecutive_successes.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        // Cheap fast path for the request path: already healthy, no write.
        if n >= self.inner.successes_needed && !self.inner.status.borrow().healthy {
            self.inner.status.send_if_modified(|s| {
                let changed = !s.healthy;
                if changed {
                    info!("app is healthy");
                }
                s.healthy = true;
                s.started = true;
                s.reason.clear();
                changed
            });
        }
    }

    /// The app could not be reached or answered badly.
    pub fn failure(&self, reason: &str) {
        self.inner.consecutive_successes.store(0, Ordering::Relaxed);
        let n = self.inner.consecutive_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let flip = n >= self.inner.failures_needed;
        self.inner.status.send_if_modified(|s| {
            let was = s.healthy;
            // Before the first success, "not ready" needs no threshold.
            if flip || !s.started {
                s.healthy = false;
            }
            let changed = was != s.healthy || s.reason != reason;
            if was && !s.healthy {
                warn!(reason, consecutive_failures = n, "app is unhealthy");
            }
            if s.reason != reason {
                s.reason.clear();
                s.reason.push_str(reason);
            }
            changed
        });
    }
}

/// Runs the active check forever. Until the app is first healthy it checks
/// every 100 ms, so readiness follows a starting app closely.
///
/// `connect` opens one connection to the app, or says in a few words why
/// it could not: the proxy's own connector, so the check reaches the app
/// exactly as requests do (TCP, Unix socket or TLS), without this module
/// knowing how.
pub async fn run_checks<C, F, I>(health: Health, connect: C, host: String, options: CheckOptions)
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<I, String>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let fast = Duration::from_millis(100).min(options.interval);
    loop {
        let result = tokio::time::timeout(options.timeout, check_once(&connect, &host, &options.check)).await;
        match result {
            Ok(Ok(())) => health.success(),
            Ok(Err(reason)) => {
                debug!(%reason, "app health check failed");
                health.failure(&reason);
            }
            Err(_) => health.failure("health check timed out"),
        }
        let started = health.inner.status.borrow().started;
        tokio::time::sleep(if started { options.interval } else { fast }).await;
    }
}

async fn check_once<C, F, I>(connect: &C, host: &str, check: &Check) -> Result<(), String>
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<I, String>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let io = connect().await?;
    let Check::Http(path) = check else { return Ok(()) };
    http_check(io, host, path).await
}

async fn http_check<I>(io: I, host: &str, path: &str) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let status = get_status(io, host, path).await?;
    if status.is_success() || status.is_redirection() { Ok(()) } else { Err(format!("health check {path} returned {}", status.as_u16())) }
}

/// One `GET path` over a fresh HTTP/1.1 connection on `io`; the status.
/// Shared by the app health check and `outrider wait-ready`.
///
/// # Errors
/// The handshake or the request failed, or `path` is not a valid target.
pub async fn get_status<I>(io: I, host: &str, path: &str) -> Result<http::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, concat!("outrider-health/", env!("CARGO_PKG_VERSION")))
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("bad path {path:?}: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    Ok(response.status())
}
