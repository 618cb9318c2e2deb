//! Is the app healthy? Decided by an active check in the background and by
//! what real traffic sees, and read by the probes from memory.
//!
//! The state is a `watch` channel: probes and held requests read or await
//! it; nothing on the request path takes a lock to report (successes and
//! failures are atomics, and the channel is only written when the verdict
//! changes).
//!
//! The active check lives in `check`; the requests it makes in `get`
//! (HTTP/1.1 and HTTP/2) and `grpc` (the standard gRPC health service).

mod check;
mod get;
mod grpc;

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

pub use check::{Check, CheckOptions, run_checks};
pub use get::{GetError, get_status};
use tokio::sync::watch;
use tracing::{info, warn};

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
