//! HTTP/1 connections to the app, each driven by the request using it.
//!
//! hyper-util's pooled client gives every connection a task of its own: a
//! request hands its head to that task over a channel and waits for the
//! response on another, so every exchange pays two cross-task wake-ups and
//! a boxed future on the busiest path outrider has. Here a request checks
//! a connection out and polls it itself: from the request future while it
//! waits for the response head, then from the response body while that
//! streams to the client. When the body has ended the connection goes back
//! to the pool. An HTTP/1 connection carries one exchange at a time, so
//! nothing else ever needs to poll it meanwhile.
//!
//! HTTP/2 to the app keeps hyper-util's client: there one connection
//! serves many requests at once and needs its own task.

use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::http1::{Builder, Connection, SendRequest},
};
use tokio::sync::oneshot;
use tracing::debug;

use super::{
    connect::UpstreamIo,
    error::{ExchangeError, ProxyError},
    hold::Hold,
    limits::UpstreamBody as RequestBody,
};

type Driver = Connection<UpstreamIo, RequestBody>;

/// A pooled connection idle this long may be closed by the app (its
/// keep-alive timeout) just as a request goes out on it. For such a
/// connection, an idempotent request without a body is kept so it can be
/// sent again on a new connection, as RFC 9110 §9.2.2 allows. Connections
/// reused sooner than this (a busy proxy's) skip the copy.
const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(250);

/// Idle HTTP/1 connections to the app, most recently used first, and the
/// requests waiting for one.
pub struct Pool {
    state: Mutex<State>,
    max_idle: usize,
    idle_timeout: Duration,
    connector: Hold,
    builder: Builder,
}

#[derive(Default)]
struct State {
    idle: Vec<Idle>,
    /// Requests that are opening a connection: a connection coming back
    /// in the meantime goes to them rather than to the idle list.
    waiters: VecDeque<oneshot::Sender<Box<Conn>>>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Idle {
    /// How long it has been idle, if it is still worth keeping: not idle
    /// past `timeout`, and open and ready (see [`Conn::poll_idle`]).
    fn usable(&mut self, timeout: Duration, cx: &mut Context<'_>) -> Option<Duration> {
        let idle_for = self.since.elapsed();
        (idle_for < timeout && self.conn.poll_idle(cx)).then_some(idle_for)
    }
}

/// One connection: the handle that sends requests on it, and the state
/// machine that does its I/O. Boxed so that moving it in and out of the
/// pool copies a pointer.
struct Conn {
    send: SendRequest<RequestBody>,
    /// `None` once it has finished (the connection closed).
    driver: Option<Driver>,
}

impl Conn {
    /// Moves the connection's I/O along; false once it has closed.
    fn poll_driver(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = self.driver.as_mut() else { return false };
        match Pin::new(driver).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    debug!(error = %e, "app connection ended with error");
                }
                self.driver = None;
                false
            }
        }
    }

    /// Ready for the next request: open and not mid-exchange. Polls the
    /// driver once first, so that a close by the app is noticed. The waker
    /// only has to stand in until the next real poll replaces it.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        self.poll_driver(cx) && self.send.is_ready()
    }
}

// === impl Pool ===

impl Pool {
    /// A pool on `connector`. Leaked: it lives as long as the process, and
    /// requests then reach it without a reference count.
    pub fn new(connector: Hold, max_idle: usize, idle_timeout: Duration) -> &'static Self {
        let mut builder = Builder::new();
        // Request heads are small; one copy into hyper's buffer beats a
        // gather write, as on the client-facing side.
        builder.writev(false);
        let pool: &'static Self = Box::leak(Box::new(Self { state: Mutex::default(), max_idle, idle_timeout, connector, builder }));
        if max_idle > 0 {
            tokio::spawn(pool.sweep_forever());
        }
        pool
    }

    /// Sends `req` to the app on a pooled or new connection. The returned
    /// [`Lease`] must be polled alongside the response body (see
    /// [`Lease::poll_driver`]); an upgrade's connection is handed to a task
    /// of its own instead and no lease comes back.
    ///
    /// # Errors
    /// The connection could not be made, or the app did not answer with a
    /// response head.
    pub async fn send(
        &'static self,
        mut req: Request<RequestBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Lease>), ExchangeError> {
        let mut fresh_only = false;
        loop {
            let pooled = if fresh_only { None } else { poll_fn(|cx| Poll::Ready(self.checkout(cx))).await };
            let reused = pooled.is_some();
            let mut replay = None;
            let mut conn = match pooled {
                Some((conn, idle_for)) => {
                    if idle_for >= REPLAY_AFTER_IDLE && !upgrade && replayable(&req) {
                        replay = Some(copy_head(&req));
                    }
                    conn
                }
                // Boxed: a large future, and only for a new connection.
                None => Box::pin(self.connect_or_wait()).await?,
            };
            if upgrade {
                // After a 101 hyper hands the connection's I/O to
                // `hyper::upgrade::on`; that needs `with_upgrades`, and the
                // connection never comes back to the pool.
                if let Some(driver) = conn.driver.take() {
                    tokio::spawn(async move {
                        if let Err(e) = driver.with_upgrades().await {
                            debug!(error = %e, "upgraded app connection ended with error");
                        }
                    });
                }
                return Ok((Box::pin(conn.send.send_request(req)).await?, None));
            }
            let mut sent = std::pin::pin!(conn.send.try_send_request(req));
            let result = poll_fn(|cx| {
                conn.poll_driver(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => return Ok((response, Some(Lease { conn: Some(conn), pool: self }))),
                // The app closed an idle connection just as we took it, and
                // nothing was written: safe to send again, for any method.
                Err(mut e) if reused && e.message().is_some() => {
                    debug!("pooled app connection was closed; retrying on another");
                    match e.take_message() {
                        Some(message) => req = message,
                        None => return Err(e.into_error().into()),
                    }
                }
                Err(e) => {
                    let error = e.into_error();
                    // Closed or reset before any response: the app shut the
                    // idle connection as the request crossed it.
                    match replay {
                        Some(copy) if ProxyError::classify(&error) == Some(ProxyError::Reset) => {
                            debug!(error = %error, "the app closed an idle connection as the request reached it; sending again on a new one");
                            req = copy;
                            fresh_only = true;
                        }
                        _ => return Err(error.into()),
                    }
                }
            }
        }
    }

    /// A new connection, or one another request hands back first, as
    /// hyper-util's pool does. A connect can take long for reasons that say
    /// nothing about the app's health: a small listen backlog overflowing
    /// in a burst makes the kernel drop the SYN, and its retransmission
    /// comes a second later. A request then rather takes the connection
    /// that frees up meanwhile; its own connect goes on in the background
    /// and lands in the pool.
    async fn connect_or_wait(&'static self) -> Result<Box<Conn>, ExchangeError> {
        let mut connect = Box::pin(self.connect());
        if self.max_idle == 0 {
            return connect.await;
        }
        let (handed_tx, handed) = oneshot::channel();
        self.lock().waiters.push_back(handed_tx);
        tokio::select! {
            biased;
            conn = &mut connect => conn,
            Ok(conn) = handed => {
                tokio::spawn(async move {
                    if let Ok(conn) = connect.await {
                        self.checkin(conn);
                    }
                });
                Ok(conn)
            }
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, ExchangeError> {
        let io = self.connector.connect().await?;
        let (send, driver) = self.builder.handshake(io).await?;
        Ok(Box::new(Conn { send, driver: Some(driver) }))
    }

    /// The most recently used live connection, if any, and how long it
    /// was idle.
    fn checkout(&self, cx: &mut Context<'_>) -> Option<(Box<Conn>, Duration)> {
        loop {
            let mut idle = self.lock().idle.pop()?;
            if let Some(idle_for) = idle.usable(self.idle_timeout, cx) {
                return Some((idle.conn, idle_for));
            }
        }
    }

    fn checkin(&self, mut conn: Box<Conn>) {
        if self.max_idle == 0 || !conn.poll_idle(&mut Context::from_waker(Waker::noop())) {
            return;
        }
        let mut state = self.lock();
        // A waiter whose request is gone (it connected first, or the client
        // left) returns the connection, and the next one is tried.
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                Err(back) => conn = back,
            }
        }
        if state.idle.len() < self.max_idle {
            state.idle.push(Idle { conn, since: Instant::now() });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic cannot leave the list half-updated (push and pop are
        // atomic as far as a reader can tell), so a poisoned lock is fine.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes connections that idled past the timeout or that the app
    /// closed, so that none lingers in CLOSE_WAIT until the next request.
    async fn sweep_forever(&'static self) {
        let period = (self.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut cx = Context::from_waker(Waker::noop());
            let mut state = self.lock();
            state.waiters.retain(|waiter| !waiter.is_closed());
            state.idle.retain_mut(|idle| idle.usable(self.idle_timeout, &mut cx).is_some());
        }
    }
}

/// Safe to send twice: an idempotent method (RFC 9110 §9.2.2) and no body
/// (a body has been consumed by the first attempt).
fn replayable(req: &Request<RequestBody>) -> bool {
    use http::Method;
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
        && hyper::body::Body::is_end_stream(req.body())
}

fn copy_head(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// A connection lent to one exchange: polled by the response body as it
/// streams, and returned to the pool once the body has ended. Dropped
/// before then (the client went away mid-body), it closes the connection,
/// since the rest of that response would otherwise be read as the next one.
pub struct Lease {
    conn: Option<Box<Conn>>,
    pool: &'static Pool,
}

impl Lease {
    /// Moves the connection's I/O along, which feeds the response body.
    pub fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = self.conn.as_mut() {
            conn.poll_driver(cx);
        }
    }

    /// The response body has ended: the connection may serve another.
    pub fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(conn);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("open", &self.conn.is_some()).finish()
    }
}
