//! Bounds on an exchange that stops moving: a request body the client
//! stops sending, a response body the app stops sending, and the request
//! timeout, which counts from the end of the request body (an app cannot be
//! blamed for a slow answer to a request it has not fully received).
//!
//! Both bodies of an exchange with a request body share one [`Activity`]:
//! the request side stamps it as frames pass and marks the end of the
//! body; the response side's idle bound counts from the last frame either
//! way, so a bidirectional stream where only one side talks (a gRPC watch,
//! a chat) stays open, as in Envoy's stream idle timeout.
//!
//! Cost: nothing for a request without a body (no [`Activity`]) whose
//! response is ready when first polled (no timer). Otherwise one timer per
//! body, created the first time the body has to wait and re-armed at most
//! once per timeout (when it fires after activity, never on every frame),
//! plus a clock read and a relaxed store per request body frame.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// No request body frame for this long (`OUTRIDER_REQUEST_BODY_IDLE_TIMEOUT`).
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {timeout:?}")]
pub struct RequestBodyIdle {
    pub timeout: Duration,
}

/// No response body frame, and no request body frame, for this long
/// (`OUTRIDER_RESPONSE_BODY_IDLE_TIMEOUT`).
#[derive(Debug, thiserror::Error)]
#[error("no response body data for {timeout:?}")]
pub struct ResponseBodyIdle {
    pub timeout: Duration,
}

/// What the two bodies of one exchange share.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    /// Nanoseconds after `origin` of the last request body frame.
    last: AtomicU64,
    /// Nanoseconds after `origin` at which the request body ended, plus
    /// one; 0 while it is still arriving.
    ended: AtomicU64,
    /// The response head arrived: from then on the request body is the
    /// app's business (a stream may send nothing for long), and only the
    /// response's idle bound applies.
    responded: AtomicBool,
    /// The request body is waiting on the client (its last poll had
    /// nothing): a stall then is the client's, bounded by the request
    /// body's idle timeout; otherwise it is the app's, which stopped
    /// taking the body.
    waiting: AtomicBool,
    /// Why outrider itself cut the request body ([`Cut`] as a number, 0
    /// for not cut). Over HTTP/2 the error that cut it does not come back
    /// with the failed exchange (the stream is reset, and the error says
    /// only that), so forwarding reads the reason here.
    cut: AtomicU8,
}

/// Why outrider cut a request body on its way to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// It grew past `OUTRIDER_MAX_BODY_BYTES`.
    TooLarge = 1,
    /// It stalled past `OUTRIDER_REQUEST_BODY_IDLE_TIMEOUT`.
    Stalled = 2,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            responded: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            cut: AtomicU8::new(0),
        }
    }

    /// Outrider cut the request body, for `why`.
    pub(super) fn cut(&self, why: Cut) {
        self.cut.store(why as u8, Ordering::Relaxed);
    }

    /// Why outrider cut the request body, if it did.
    pub(super) fn cut_by(&self) -> Option<Cut> {
        match self.cut.load(Ordering::Relaxed) {
            1 => Some(Cut::TooLarge),
            2 => Some(Cut::Stalled),
            _ => None,
        }
    }

    fn since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// A request body frame passed.
    pub(super) fn touch(&self) {
        self.last.store(self.since_origin(), Ordering::Relaxed);
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// The request body was polled and the client had sent nothing more.
    pub(super) fn wait(&self) {
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// The request body ended.
    pub(super) fn end(&self) {
        let now = self.since_origin();
        self.last.store(now, Ordering::Relaxed);
        // Only the first end counts.
        let _ = self.ended.compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The response head arrived.
    pub(super) fn respond(&self) {
        self.responded.store(true, Ordering::Relaxed);
    }

    pub(super) fn responded(&self) -> bool {
        self.responded.load(Ordering::Relaxed)
    }

    /// When the last request body frame passed (or the exchange began).
    pub(super) fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// When the request body ended, if it has.
    pub(super) fn ended(&self) -> Option<Instant> {
        match self.ended.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.origin + Duration::from_nanos(n - 1)),
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// A body's idle bound: how long it may go on having nothing to give. It
/// counts only while the body is polled and waits, so a peer held back by
/// the other side's back-pressure (hyper does not poll a body it cannot
/// write) is never blamed for it.
///
/// Two words, the timer boxed and made the first time the body waits:
/// bodies move through several layers and futures, and every byte added
/// to them is copied each time (callgrind: 48 bytes more here and in the
/// response body cost ~250 instructions a request in `memcpy`).
#[derive(Debug)]
pub(super) struct IdleTimer {
    timeout: &'static Duration,
    wait: Option<Pin<Box<Wait>>>,
}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    struct Wait {
        // The start of the current wait; `None` right after a frame.
        since: Option<Instant>,
        #[pin]
        sleep: Sleep,
    }
}

impl IdleTimer {
    pub(super) fn new(timeout: &'static Duration) -> Self {
        Self { timeout, wait: None }
    }

    pub(super) fn timeout(&self) -> Duration {
        *self.timeout
    }

    /// A frame passed: the next wait starts afresh.
    pub(super) fn progressed(&mut self) {
        if let Some(wait) = &mut self.wait {
            *wait.as_mut().project().since = None;
        }
    }

    /// Polled while the body has nothing to give: ready once it has waited
    /// a whole timeout, counted from the later of the start of this wait
    /// and `other` (activity elsewhere in the exchange).
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>, other: Option<Instant>) -> Poll<()> {
        let timeout = *self.timeout;
        let wait = self.wait.get_or_insert_with(|| {
            let now = Instant::now();
            Box::pin(Wait { since: Some(now), sleep: tokio::time::sleep_until(now + timeout) })
        });
        let wait = wait.as_mut().project();
        let since = *wait.since.get_or_insert_with(Instant::now);
        let deadline = other.map_or(since, |other| other.max(since)) + timeout;
        let mut sleep = wait.sleep;
        loop {
            // A deadline that moved earlier (a new wait) is set at once; one
            // that moved later waits for the timer to fire, so activity
            // re-arms it at most once per timeout.
            if sleep.deadline() > deadline {
                sleep.as_mut().reset(deadline);
            }
            std::task::ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

/// The request timeout around sending: the app has `limit` from the end of
/// the request body (from the start, for a request without one) to answer
/// with a response head, and while the body is still being sent, `limit`
/// from the last byte of it that the app took, unless the body is waiting
/// on the client. `Err(())` when it did not.
/// `sent` is pinned where it was made: the exchange's future is large, and
/// moving it in here cost a `memcpy` of 196 instructions a request
/// (callgrind).
pub(super) async fn within<F: Future>(limit: Duration, activity: Option<&Activity>, mut sent: Pin<&mut F>) -> Result<F::Output, ()> {
    let sleep = tokio::time::sleep(limit);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            output = &mut sent => return Ok(output),
            () = &mut sleep => {}
        }
        let deadline = match activity {
            None => return Err(()),
            Some(a) => match a.ended() {
                Some(ended) => ended + limit,
                // The client is slow to send: its own idle bound applies.
                None if a.waiting.load(Ordering::Relaxed) => Instant::now() + limit,
                // The app stopped taking the body (back-pressure all the
                // way to the client): counted from the last byte it took.
                None => a.last() + limit,
            },
        };
        if deadline <= sleep.deadline() {
            return Err(());
        }
        sleep.as_mut().reset(deadline);
    }
}

#[cfg(test)]
mod tests {
    //! Under paused time: the clock moves only when every task waits.

    use super::*;

    static TEN_SECONDS: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_fires_a_whole_timeout_after_the_last_activity() {
        let activity = Activity::new();
        let mut timer = IdleTimer::new(&TEN_SECONDS);
        let start = Instant::now();
        // Activity elsewhere at 6 s moves the deadline from 10 s to 16 s.
        let touch = async {
            tokio::time::sleep(Duration::from_secs(6)).await;
            activity.touch();
        };
        let expired = std::future::poll_fn(|cx| timer.poll_expired(cx, Some(activity.last())));
        let ((), ()) = tokio::join!(touch, expired);
        assert_eq!(start.elapsed(), Duration::from_secs(16));

        // A frame starts the next wait afresh, from when it is first polled.
        timer.progressed();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let resumed = Instant::now();
        std::future::poll_fn(|cx| timer.poll_expired(cx, None)).await;
        assert_eq!(resumed.elapsed(), Duration::from_secs(10), "time not spent waiting does not count");
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_counts_from_the_end_of_the_request_body() {
        let activity = Activity::new();
        let start = Instant::now();
        let never = std::pin::pin!(std::future::pending::<()>());
        let body = async {
            // A slow client: the body waits on it for 25 s, longer than
            // the 10 s limit.
            activity.wait();
            tokio::time::sleep(Duration::from_secs(25)).await;
            activity.end();
        };
        let (timed_out, ()) = tokio::join!(within(Duration::from_secs(10), Some(&activity), never), body);
        assert_eq!(timed_out, Err(()));
        assert_eq!(start.elapsed(), Duration::from_secs(35), "10 s after the body ended");

        // The app stops taking the body at 5 s (nothing waits on the
        // client): 10 s after that.
        let stalled = Activity::new();
        let start = Instant::now();
        let app_stops = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stalled.touch();
        };
        let never = std::pin::pin!(std::future::pending::<()>());
        let (timed_out, ()) = tokio::join!(within(Duration::from_secs(10), Some(&stalled), never), app_stops);
        assert_eq!(timed_out, Err(()));
        assert_eq!(start.elapsed(), Duration::from_secs(15));

        // Without a body, from the start.
        let start = Instant::now();
        assert_eq!(within(Duration::from_secs(10), None, std::pin::pin!(std::future::pending::<()>())).await, Err(()));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // An answer in time passes through.
        assert_eq!(within(Duration::from_secs(10), Some(&activity), std::pin::pin!(async { 7 })).await, Ok(7));
    }
}
