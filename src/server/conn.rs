//! Serves one client connection to its end: picks the protocol, drains as
//! the process's phase advances, bounds idle time, and parks HTTP/1
//! connections that sit idle.
//!
//! Parking: hyper gives every HTTP/1 connection an 8 KiB read and an
//! 8 KiB write buffer and keeps them for the connection's life. A sidecar
//! behind a pooling client or load balancer holds thousands of keep-alive
//! connections that are idle nearly all the time. So once a connection has
//! been idle for [`PARK_AFTER`], hyper's connection is taken apart
//! (`graceful_shutdown` on an idle connection stops it without touching the
//! socket; `into_parts` hands back the socket and any unparsed bytes) and
//! the task waits on the bare socket. The next byte from the client starts
//! a fresh hyper connection on the same socket. A busy connection never
//! parks, so the hot path pays nothing for this; nor does one whose
//! response the client has not taken yet (hyper drops a response body once
//! its last bytes are in its write buffer, and taking the connection apart
//! then would drop them: see `Watched`).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, atomic::AtomicBool},
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use hyper::{
    body::{Body, Incoming},
    server::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    time::Instant,
};
use tracing::{debug, trace};

use crate::gate::Gated;

use crate::drain::{Phase, Phases};

use super::{
    framing::Scan,
    service::{ConnService, ConnState, InPlace},
    transport::{Protocol, Rewind, Transport, Upgraded},
};

/// How long an HTTP/1 connection sits idle before it gives back hyper's
/// buffers. Long enough that a connection in steady use never parks (at
/// 40 000 requests/s over 64 connections each one is idle about 2 ms
/// between requests). Short because the allocator keeps what it frees for
/// reuse rather than returning it at once: while connections arrive, the
/// heap holds a buffer pair for every connection that was busy within one
/// such window, so a burst of 5 000 new connections a second holds 8 MiB
/// at 100 ms, 20 MiB at 250 ms (measured with glibc's allocator). Unparking costs a new hyper connection (two buffer
/// allocations), paid at most once per idle spell.
const PARK_AFTER: Duration = Duration::from_millis(100);

/// How often a connection with a request in progress looks again: a
/// request that ends between two looks is parked up to this much late,
/// and the timer costs a wake-up per look.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

/// Bound on flushing a closing connection (a TLS `close_notify` to a
/// client that stopped reading).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// hyper's per-protocol connection settings.
#[derive(Clone)]
pub(super) struct Protocols {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
    /// An HTTP/2 connection with no stream open this long gets a GOAWAY.
    pub(super) h2_idle_timeout: Option<Duration>,
    /// An HTTP/1 client that takes none of its response this long is
    /// disconnected.
    pub(super) send_timeout: Option<Duration>,
}

/// What a connection needs from its listener.
pub(super) struct Listener<'a, M> {
    pub(super) protocols: &'a Protocols,
    pub(super) make_service: &'a M,
    /// The process-wide draining flag, read by every HTTP/1 response.
    pub(super) draining: &'static AtomicBool,
    pub(super) head_timeout: Duration,
    /// The head limits, on listeners that have them.
    pub(super) head: Option<&'static super::head::HeadLimits>,
    pub(super) quiet: Option<&'static super::QuietCounters>,
}

/// Counts one connection closed for going quiet, on measured listeners.
pub(super) fn count(counter: Option<&prometheus::IntCounter>) {
    if let Some(counter) = counter {
        counter.inc();
    }
}

/// Serves one connection to the end.
pub(super) async fn drive<T, M, S, B>(listener: Listener<'_, M>, mut io: T, info: super::ConnInfo, mut phase: Phases)
where
    T: Transport,
    M: Fn(super::ConnInfo) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + Unpin + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // One timer per connection, re-armed only when it fires: the bound on
    // the first bytes, then on each idle spell (see `Idle`).
    let timer = tokio::time::sleep(listener.head_timeout);
    tokio::pin!(timer);
    let sniffed = tokio::select! {
        sniffed = io.protocol() => sniffed,
        () = timer.as_mut() => {
            count(listener.quiet.map(|q| &q.request_head));
            return debug!(timeout = ?listener.head_timeout, "nothing received within the header read timeout; closing");
        }
        () = phase.reached(Phase::Close) => return,
    };
    let (protocol, prefix) = match sniffed {
        Ok(Some(sniffed)) => sniffed,
        Ok(None) => return,
        Err(e) => return debug!(error = %e, "connection failed before its first request"),
    };
    let io = Rewind::new(prefix, io);
    let state = Arc::new(ConnState::new());
    let http1 = protocol == Protocol::Http1;
    let peer = info.remote;
    let service = InPlace(std::cell::RefCell::new(ConnService {
        inner: (listener.make_service)(info),
        close_when: http1.then_some(listener.draining),
        state: state.clone(),
        head: listener.head,
        peer,
    }));
    match protocol {
        Protocol::Http1 => {
            let idle =
                Idle { state, head_timeout: listener.head_timeout, send_timeout: listener.protocols.send_timeout, quiet: listener.quiet };
            serve_http1(&listener.protocols.http1, io, service, idle, phase, timer).await;
        }
        Protocol::Http2 => {
            let idle = listener.protocols.h2_idle_timeout.map(|timeout| (timeout, state));
            serve_http2(&listener.protocols.http2, io, service, phase, idle, timer, listener.quiet).await;
        }
    }
}

/// HTTP/2: a GOAWAY as soon as the drain starts; the client finishes its
/// open streams and opens new ones elsewhere, with no race. Also a GOAWAY
/// once no stream has been open for the idle timeout: a client that answers
/// PINGs but never sends a request would otherwise hold its slot forever.
async fn serve_http2<T, S, B>(
    builder: &http2::Builder<TokioExecutor>,
    io: Rewind<T>,
    service: InPlace<ConnService<S>>,
    mut phase: Phases,
    idle: Option<(Duration, Arc<ConnState>)>,
    mut timer: Pin<&mut tokio::time::Sleep>,
    quiet: Option<&'static super::QuietCounters>,
) where
    T: Transport,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), service));
    let (mut goaway_sent, mut idle_goaway) = (false, false);
    if let Some((timeout, _)) = &idle {
        timer.as_mut().reset(Instant::now() + *timeout);
    }
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            // Polled only when it fires: at most once per idle timeout.
            () = Gated::new(timer.as_mut()), if idle.is_some() => {
                let Some((timeout, state)) = &idle else { continue };
                match state.idle_since() {
                    // A graceful GOAWAY waits for the client's answer to a
                    // PING; one that does not answer within another idle
                    // timeout, with still no stream open, is closed.
                    Some(_) if idle_goaway => return debug!("no answer to the idle GOAWAY; closed"),
                    Some(since) if since + *timeout <= Instant::now() => {
                        debug!(timeout = ?timeout, "no HTTP/2 stream open within the idle timeout; closing");
                        count(quiet.map(|q| &q.h2_idle));
                        if !goaway_sent {
                            conn.as_mut().graceful_shutdown();
                        }
                        goaway_sent = true;
                        idle_goaway = true;
                        timer.as_mut().reset(Instant::now() + *timeout);
                    }
                    Some(since) => timer.as_mut().reset(since + *timeout),
                    None => timer.as_mut().reset(Instant::now() + *timeout),
                }
            }
            // After the GOAWAY, the same branch waits for the cut.
            () = Gated::new(phase.reached(if goaway_sent { Phase::Cut } else { Phase::Drain })) => {
                if goaway_sent {
                    return debug!("closed at the drain timeout");
                }
                conn.as_mut().graceful_shutdown();
                goaway_sent = true;
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            // hyper's keep-alive: the client did not answer a PING.
            count(quiet.map(|q| &q.h2_ping));
        }
        debug!(error = %e, "connection ended with error");
    }
}

/// HTTP/1: *not* closed while idle during the drain, since a client may be
/// writing its next request into the socket at that very moment, and it
/// would be lost. Every response carries `Connection: close` instead (see
/// `ConnService`), so each client leaves after its next exchange; idle ones
/// are closed when the listener closes (`Phase::Close`).
async fn serve_http1<T, S, B>(
    builder: &http1::Builder,
    mut io: Rewind<T>,
    mut service: InPlace<ConnService<S>>,
    idle: Idle,
    mut phase: Phases,
    mut timer: Pin<&mut tokio::time::Sleep>,
) where
    T: Transport,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + Unpin + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut drain = false;
    loop {
        // Boxed so that a parked connection's task holds only the socket.
        let watched = Watched { io, scan: Scan::new(), state: idle.state.clone() };
        let mut conn = Box::new(builder.serve_connection(TokioIo::new(watched), service));
        let (mut parking, mut closing) = (false, false);
        let round = Instant::now();
        timer.as_mut().reset(round + PARK_AFTER);
        let result = loop {
            tokio::select! {
                // Fixed order: the connection is what wakes the task nearly
                // every time, and a random start costs a draw per poll.
                biased;
                result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break result,
                // Drain, then Close, then the cut: one branch, polled only
                // when the phase moves.
                () = Gated::new(phase.reached(if closing { Phase::Cut } else if drain { Phase::Close } else { Phase::Drain })) => {
                    if closing {
                        // Dropping the connection closes its socket.
                        return debug!("closed at the drain timeout");
                    }
                    if drain {
                        // The listener has closed: idle connections close
                        // now, busy ones after their response.
                        closing = true;
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
                    drain = true;
                }
                () = Gated::new(timer.as_mut()), if !closing => match idle.next(round, parking) {
                    Next::Wait(at) => timer.as_mut().reset(at),
                    Next::Stalled => {
                        count(idle.quiet.map(|q| &q.send));
                        return debug!(timeout = ?idle.send_timeout, "the client took none of its response within the send timeout; closing");
                    }
                    Next::Close => {
                        count(idle.quiet.map(|q| &q.request_head));
                        return debug!(timeout = ?idle.head_timeout, "no request head within the header read timeout; closing");
                    }
                    Next::Park => {
                        trace!("idle; parking");
                        // hyper stops an idle connection at once; one that
                        // is still reading a request body finishes it first.
                        parking = true;
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
                },
            }
        };
        if let Err(e) = result {
            return debug!(error = %e, "connection ended with error");
        }
        let parts = conn.into_parts();
        service = parts.service;
        io = parts.io.into_inner().io;
        io.unread(parts.read_buf);
        if let Some(upgrade) = idle.state.take_upgrade() {
            // The proxy splices it to the app; if it gave up, the client
            // connection simply closes.
            let _ = upgrade.send(Upgraded::new(io));
            return;
        }
        if !parking || closing {
            // The client closed, or asked to (`Connection: close`), or
            // the listener is closing.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, io.shutdown()).await;
            return;
        }
        // Unparsed bytes (a request head cut short) go straight to the
        // next hyper connection.
        if !io.has_prefix() {
            // Parked: nothing but the socket until the client speaks.
            timer.as_mut().reset(idle.deadline());
            tokio::select! {
                readable = io.get_ref().readable() => if readable.is_err() { return },
                () = timer.as_mut() => return debug!(timeout = ?idle.head_timeout, "idle keep-alive connection timed out; closing"),
                () = phase.reached(Phase::Close) => return,
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/1 connection's transport as hyper uses it, telling its
    /// [`ConnState`] two things: a request head with both `Content-Length`
    /// and `Transfer-Encoding` in what was read (see `framing`; hyper drops
    /// the evidence before the request reaches a service), and whether
    /// writes to the client go through: while they do not, hyper holds
    /// response bytes, and the connection is neither idle nor parked (taking
    /// hyper's connection apart would drop them). One wrapper for both: each
    /// layer here is a call on every read and write.
    struct Watched<T> {
        #[pin]
        io: T,
        // Each hyper connection starts at a message boundary, so does the scan.
        scan: Scan,
        state: Arc<ConnState>,
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let found = this.scan.feed(&buf.filled()[before..]);
            if found > 0 {
                this.state.ambiguous_heads.fetch_add(found, std::sync::atomic::Ordering::Relaxed);
            }
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = this.io.poll_write(cx, buf);
        this.state.wrote(written.is_pending());
        written
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = this.io.poll_write_vectored(cx, bufs);
        this.state.wrote(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let flushed = this.io.poll_flush(cx);
        this.state.wrote(flushed.is_pending());
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Decides, each time the connection's timer fires, what an HTTP/1
/// connection does about being idle.
struct Idle {
    state: Arc<ConnState>,
    /// How long a connection may wait for a complete request head, from
    /// when it opened or its last response ended (slowloris, idle
    /// keep-alive).
    head_timeout: Duration,
    /// How long the client may take none of its response.
    send_timeout: Option<Duration>,
    quiet: Option<&'static super::QuietCounters>,
}

enum Next {
    /// Look again then.
    Wait(Instant),
    Park,
    Close,
    /// The client has not read its response for the send timeout.
    Stalled,
}

impl Idle {
    /// `round` is when the current hyper connection started. It may park
    /// only once it has answered a request: before that hyper does not count
    /// it as idle, and shutting it down would only turn keep-alive off.
    fn next(&self, round: Instant, parking: bool) -> Next {
        let now = Instant::now();
        if let (Some(blocked), Some(timeout)) = (self.state.blocked_since(), self.send_timeout) {
            if now >= blocked + timeout {
                return Next::Stalled;
            }
            return Next::Wait((blocked + timeout).min(now + BUSY_RECHECK));
        }
        let Some(since) = self.state.idle_since() else {
            // A request is in progress: it is bounded elsewhere.
            return Next::Wait(now + BUSY_RECHECK);
        };
        let close_at = since + self.head_timeout;
        let park = !parking && since > round && PARK_AFTER < self.head_timeout;
        if now >= close_at {
            Next::Close
        } else if park && now >= since + PARK_AFTER {
            Next::Park
        } else if park {
            Next::Wait(since + PARK_AFTER)
        } else {
            // Nothing to do until the head timeout, unless a request comes
            // and ends first (then parking is at most `BUSY_RECHECK` late).
            Next::Wait(close_at.min(now + BUSY_RECHECK))
        }
    }

    /// When a parked connection is closed for idling.
    fn deadline(&self) -> Instant {
        self.state.idle_since().map_or_else(|| Instant::now() + self.head_timeout, |since| since + self.head_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gated_future_completes_when_its_own_waker_fires() {
        let (tx, mut rx) = tokio::sync::watch::channel(Phase::Serve);
        let (other_tx, mut other_rx) = tokio::sync::mpsc::channel::<()>(1);
        let waiter = tokio::spawn(async move {
            let mut gated = std::pin::pin!(Gated::new(async {
                let _ = rx.wait_for(|p| *p >= Phase::Drain).await;
            }));
            // Woken by something else first: the gate stays shut.
            loop {
                tokio::select! {
                    () = gated.as_mut() => return,
                    _ = other_rx.recv() => {}
                }
            }
        });
        other_tx.send(()).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send(Phase::Drain).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken by the phase").unwrap();
    }
}

#[cfg(test)]
mod slow_reader {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::TokioTimer;
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    /// An in-memory client connection: the pipe's capacity stands for the
    /// socket buffers, and the client never sends a second request.
    impl Transport for DuplexStream {
        async fn readable(&self) -> std::io::Result<()> {
            std::future::pending().await
        }

        async fn protocol(&mut self) -> std::io::Result<Option<(Protocol, Bytes)>> {
            Ok(Some((Protocol::Http1, Bytes::new())))
        }
    }

    /// The app's body has ended, but most of it is still in hyper's write
    /// buffer because the client reads slowly: the connection is busy, not
    /// idle. Parking it then (hyper counts a `Connection: close` exchange as
    /// done once its last bytes are buffered, and is taken apart without
    /// flushing them) or closing it at the head timeout cut the response.
    #[tokio::test(start_paused = true)]
    async fn a_response_still_being_written_is_neither_parked_nor_closed() {
        const LEN: usize = 1 << 20;
        static DRAINING: AtomicBool = AtomicBool::new(false);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_drain, watch) = crate::drain::Manual::new();
        let mut http1 = http1::Builder::new();
        http1.timer(TokioTimer::new()).writev(false);
        let protocols = Protocols { http1, http2: http2::Builder::new(TokioExecutor::new()), h2_idle_timeout: None, send_timeout: None };
        let body = Bytes::from(vec![7u8; LEN]);
        let make_service = move |_: crate::server::ConnInfo| {
            let body = body.clone();
            tower::service_fn(move |_: Request<Incoming>| std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(body.clone())))))
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let info = crate::server::ConnInfo { remote: addr, local: addr, tls: false, client_subject: None };
        let served = tokio::spawn(async move {
            let listener = Listener {
                protocols: &protocols,
                make_service: &make_service,
                draining: &DRAINING,
                head_timeout: Duration::from_secs(1),
                head: None,
                quiet: None,
            };
            drive(listener, server, info, watch.phases()).await;
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").await.unwrap();
        // Nothing read for longer than the parking delay and the head timeout.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(got.len() - body_at, LEN, "the response was cut");
        served.await.unwrap();
    }
}
