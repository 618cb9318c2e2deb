//! Holds a request while the app is away: a connection that is refused
//! is retried until the app accepts or the buffer timeout runs out.
//! Nothing of the request has been sent at that point, so the retry is
//! invisible to the client and safe for any method. Every attempt's
//! outcome is also the passive half of the app's health: real traffic
//! notices an app that went away before the next active check does.
//!
//! It sits under the pool, on the connect path only: a request that finds
//! a pooled connection has nothing to wait for.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tracing::{debug, info};

use super::connect::{Connect, ConnectError, UpstreamIo};
use crate::{
    drain::{Phase, Watch},
    health::Health,
};

/// Bounds on requests held while the app is away.
#[derive(Debug, Clone, Copy)]
pub struct BufferOptions {
    /// Requests held at once; more get 503 at once.
    pub max: usize,
    /// How long one request is held before it gets 503.
    pub timeout: Duration,
}

/// The connect path with holding and passive health.
#[derive(Clone)]
pub struct Hold {
    connect: Connect,
    buffer: Option<BufferOptions>,
    health: Health,
    /// Requests currently held (the `outrider_buffered_requests` gauge).
    held: Arc<AtomicUsize>,
    /// Set when a held request gave up; until the app is healthy again,
    /// new requests fail at once instead of piling up for the full timeout.
    fail_fast: Arc<AtomicBool>,
    /// Followed to the start of the drain. From then on nothing is held,
    /// and what is held is let go: an app that refuses connections during
    /// the drain has stopped for good (its own SIGTERM came at the same
    /// time as ours, as with a classic sidecar), so waiting for it only
    /// turns a quick 503 into a slow one, and holds the drain open with it.
    drain: Watch,
}

/// Why the hold layer gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// Not worth waiting for (or holding is off): the connect error itself.
    #[error(transparent)]
    Connect(ConnectError),
    #[error("app unavailable and {max} requests already waiting for it")]
    BufferFull { max: usize },
    #[error("app did not accept connections within {waited:?}")]
    BufferTimeout { waited: Duration },
    #[error("app refused connections during the drain")]
    Draining,
}

// === impl Hold ===

impl Hold {
    /// `buffer: None` holds nothing: a refused connection fails at once.
    pub fn new(connect: Connect, buffer: Option<BufferOptions>, health: Health, drain: Watch) -> Self {
        Self { connect, buffer, health, held: Arc::new(AtomicUsize::new(0)), fail_fast: Arc::new(AtomicBool::new(false)), drain }
    }

    /// The same holding and health, for connections that will speak
    /// HTTP/2: one buffer, one fail-fast verdict, whichever protocol a
    /// request goes over.
    #[must_use]
    pub fn for_http2(&self) -> Self {
        Self { connect: self.connect.for_http2(), ..self.clone() }
    }

    /// The count of requests held while the app is away.
    pub fn held_counter(&self) -> Arc<AtomicUsize> {
        self.held.clone()
    }

    /// One attempt, its outcome reported to the app's health.
    async fn attempt(&self, timeout: Duration) -> Result<UpstreamIo, ConnectError> {
        let result = self.connect.connect_within(timeout).await;
        match &result {
            Ok(_) => {
                self.health.success();
                self.fail_fast.store(false, Ordering::Relaxed);
            }
            Err(e) => self.health.failure(&e.short()),
        }
        result
    }

    /// Connects, holding the caller while the app refuses connections.
    ///
    /// # Errors
    /// The connect error when it is not worth waiting for, or the app
    /// stayed away past the buffer bounds.
    pub async fn connect(&self) -> Result<UpstreamIo, HoldError> {
        let first = match self.attempt(Duration::MAX).await {
            Ok(io) => return Ok(io),
            Err(e) => e,
        };
        let Some(buffer) = self.buffer.filter(|_| first.is_refused()) else { return Err(HoldError::Connect(first)) };
        if self.drain.is_draining() {
            return Err(HoldError::Draining);
        }
        if self.fail_fast.load(Ordering::Relaxed) && !self.health.is_healthy() {
            return Err(HoldError::BufferTimeout { waited: Duration::ZERO });
        }
        let Some(_slot) = HeldSlot::take(&self.held, buffer.max) else {
            return Err(HoldError::BufferFull { max: buffer.max });
        };
        let started = Instant::now();
        let deadline = started + buffer.timeout;
        let mut health = self.health.subscribe();
        let mut backoff = Duration::from_millis(10);
        let mut drain = self.drain.clone();
        debug!("app refused the connection; holding the request until it accepts");
        loop {
            // Wake on a verdict change (the checker saw the app come up)
            // or after a short backoff, whichever is first.
            let wait = tokio::time::sleep_until(deadline.min(Instant::now() + backoff));
            tokio::select! {
                () = wait => {}
                _ = health.changed() => {}
                () = drain.reached(Phase::Drain) => {
                    debug!(held_for = ?started.elapsed(), "drain started while the app was away; letting the held request go");
                    return Err(HoldError::Draining);
                }
            }
            if Instant::now() >= deadline {
                if !self.fail_fast.swap(true, Ordering::Relaxed) {
                    info!(waited = ?buffer.timeout, "app did not come back within the buffer timeout; failing fast until it does");
                }
                return Err(HoldError::BufferTimeout { waited: buffer.timeout });
            }
            // Bounded by the deadline too, so a hold never outlasts it.
            match self.attempt(deadline.saturating_duration_since(Instant::now())).await {
                Ok(io) => {
                    debug!(held_for = ?started.elapsed(), "app accepted; sending the held request");
                    return Ok(io);
                }
                // A timeout here is an app that has only just started
                // listening: a burst of held requests overflows a small
                // listen backlog (5 in many frameworks), and the kernel
                // drops the excess SYNs. Nothing was sent; try again.
                Err(e) if e.is_refused() || matches!(e, ConnectError::Timeout { .. }) => {
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(HoldError::Connect(e)),
            }
        }
    }
}

/// One place in the bounded buffer, released on drop.
struct HeldSlot<'a>(&'a AtomicUsize);

impl<'a> HeldSlot<'a> {
    fn take(held: &'a AtomicUsize, max: usize) -> Option<Self> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok().map(|_| Self(held))
    }
}

impl Drop for HeldSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    //! The hold layer, in-process under paused time: an app that is not
    //! there is a Unix socket path that does not exist, which fails at once
    //! (no real wait for the paused clock to skip over).

    use super::*;

    const BUFFER_TIMEOUT: Duration = Duration::from_secs(30);

    fn connector(drain: Watch) -> Hold {
        let connect =
            Connect::new(super::super::connect::Target::Unix("/nonexistent/outrider-test-app.sock".into()), Duration::from_secs(1), None);
        Hold::new(connect, Some(BufferOptions { max: 4, timeout: BUFFER_TIMEOUT }), Health::new(1, 1), drain)
    }

    /// Waits (in paused time) until `n` requests are held.
    async fn until_held(held: &AtomicUsize, n: usize) {
        while held.load(Ordering::Acquire) != n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_gives_up_at_the_buffer_timeout() {
        let (_drain, watch) = crate::drain::Manual::new();
        let connector = connector(watch);
        let started = Instant::now();
        let result = connector.connect().await;
        assert!(matches!(result, Err(HoldError::BufferTimeout { waited }) if waited == BUFFER_TIMEOUT), "{result:?}");
        assert!(started.elapsed() >= BUFFER_TIMEOUT, "gave up after {:?}", started.elapsed());
        assert_eq!(connector.held_counter().load(Ordering::Acquire), 0, "the slot was not given back");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_lets_held_requests_go_at_once() {
        let (drain, watch) = crate::drain::Manual::new();
        let connector = connector(watch);
        let held = connector.held_counter();
        let started = Instant::now();
        let requests: Vec<_> = (0..3)
            .map(|_| {
                let connector = connector.clone();
                tokio::spawn(async move { connector.connect().await })
            })
            .collect();
        until_held(&held, 3).await;
        let cancelled_at = started.elapsed();
        drain.advance(Phase::Drain);
        for request in requests {
            let result = request.await.expect("connect task panicked");
            assert!(matches!(result, Err(HoldError::Draining)), "{result:?}");
        }
        // Paused time: nothing moved the clock but the requests' own backoff
        // before the cancel; the cancel itself took no time.
        assert_eq!(started.elapsed(), cancelled_at, "held requests waited after the drain started");
        assert_eq!(held.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_held_once_the_drain_started() {
        let (drain, watch) = crate::drain::Manual::new();
        drain.advance(Phase::Drain);
        let connector = connector(watch);
        let started = Instant::now();
        let result = connector.connect().await;
        assert!(matches!(result, Err(HoldError::Draining)), "{result:?}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A request refused during the drain answers 503, as any request the
        // buffer cannot take.
        let err = result.unwrap_err();
        assert_eq!(crate::proxy::error::ProxyError::classify(&err), Some(crate::proxy::error::ProxyError::Unavailable));
    }
}
