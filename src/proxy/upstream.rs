//! The pooled client to the app, over TCP or a Unix socket.

use std::{
    future::Future,
    io,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{
    net::{TcpStream, UnixStream},
    time::Instant,
};
use tracing::{debug, info};

use crate::{
    body::RequestBody,
    drain::{Phase, Watch},
    health::Health,
};

/// Where and how to reach the app.
#[derive(Debug, Clone)]
pub enum Target {
    /// `host:port`, resolved at connect time so DNS changes are followed.
    Tcp(Arc<str>),
    Unix(PathBuf),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub target: Target,
    pub http2: bool,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// Hold requests while the app refuses connections; `None` fails at once.
    pub buffer: Option<BufferOptions>,
    /// TLS to the app (`https://` upstream).
    pub tls: Option<UpstreamTls>,
}

/// How to speak TLS to the app.
#[derive(Clone)]
pub struct UpstreamTls {
    pub connector: tokio_rustls::TlsConnector,
    /// The name the app's certificate must carry.
    pub server_name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish()
    }
}

/// Bounds on requests held while the app is away.
#[derive(Debug, Clone, Copy)]
pub struct BufferOptions {
    /// Requests held at once; more get 503 at once.
    pub max: usize,
    /// How long one request is held before it gets 503.
    pub timeout: Duration,
}

/// The client type the proxy uses.
pub type UpstreamClient = Client<Connector, RequestBody>;

/// Builds the pooled client around `connector`.
pub fn client(options: &ClientOptions, connector: Connector) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(options.pool_idle_timeout)
        .pool_max_idle_per_host(options.pool_max_idle)
        // The app may close an idle keep-alive connection just as we pick it
        // from the pool; hyper retries such requests when nothing was sent.
        .retry_canceled_requests(true)
        .set_host(false)
        .http2_only(options.http2)
        .build(connector)
}

/// Connects to the configured app whatever the request URI says, so the
/// pool has exactly one key and a client cannot steer connections.
///
/// It is also where requests wait while the app is away: a connection that
/// is refused is retried until the app accepts or the buffer timeout runs
/// out. Nothing of the request has been sent at that point, so the retry is
/// invisible to the client and safe for any method.
#[derive(Clone)]
pub struct Connector {
    target: Target,
    timeout: Duration,
    buffer: Option<BufferOptions>,
    tls: Option<UpstreamTls>,
    health: Health,
    /// Requests currently held (the `outrider_buffered_requests` gauge).
    held: Arc<AtomicUsize>,
    /// Set when a held request gave up; until the app is healthy again,
    /// new requests fail at once instead of piling up for the full timeout.
    fail_fast: Arc<AtomicBool>,
    /// Followed to the start of the drain. From then on nothing is held,
    /// and what is held is let go: an app that refuses connections during the
    /// drain has stopped for good (its own SIGTERM came at the same time as
    /// ours, as with a classic sidecar), so waiting for it only turns a
    /// quick 503 into a slow one, and holds the drain open with it.
    drain: Watch,
}

/// Why a connection to the app could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {target} timed out after {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("connect to {target}: {source}")]
    Io {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("app unavailable and {max} requests already waiting for it")]
    BufferFull { max: usize },
    #[error("app did not accept connections within {waited:?}")]
    BufferTimeout { waited: Duration },
    #[error("app refused connections during the drain")]
    Draining,
}

impl ConnectError {
    /// A short reason for `/readyz` and logs.
    pub fn short(&self) -> String {
        match self {
            Self::Timeout { .. } => "connect timeout".into(),
            Self::Io { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => "connect refused".into(),
                io::ErrorKind::NotFound => "socket not found".into(),
                _ => format!("connect failed: {source}"),
            },
            Self::BufferFull { .. } | Self::BufferTimeout { .. } | Self::Draining => "app unavailable".into(),
        }
    }

    /// The app is not listening (yet): worth waiting for.
    fn is_refused(&self) -> bool {
        matches!(self, Self::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound))
    }
}

// === impl Connector ===

impl Connector {
    /// Holding stops when `drain` starts (see the field).
    pub fn new(options: &ClientOptions, health: Health, drain: Watch) -> Self {
        Self {
            target: options.target.clone(),
            timeout: options.connect_timeout,
            buffer: options.buffer,
            tls: options.tls.clone(),
            health,
            held: Arc::new(AtomicUsize::new(0)),
            fail_fast: Arc::new(AtomicBool::new(false)),
            drain,
        }
    }

    /// The count of requests held while the app is away.
    pub fn held_counter(&self) -> Arc<AtomicUsize> {
        self.held.clone()
    }

    /// One connection attempt, bounded by the connect timeout.
    ///
    /// # Errors
    /// The app refused, was unreachable, or did not answer in time.
    pub async fn connect_once(&self) -> Result<UpstreamIo, ConnectError> {
        self.connect_within(self.timeout).await
    }

    async fn connect_within(&self, timeout: Duration) -> Result<UpstreamIo, ConnectError> {
        let describe = || match &self.target {
            Target::Tcp(addr) => addr.to_string(),
            Target::Unix(path) => format!("unix:{}", path.display()),
        };
        let connect = async {
            match &self.target {
                Target::Tcp(addr) => {
                    let stream = TcpStream::connect(&**addr).await?;
                    stream.set_nodelay(true)?;
                    match &self.tls {
                        None => Ok(UpstreamIo::Tcp(TokioIo::new(stream))),
                        Some(tls) => {
                            let stream = tls.connector.connect(tls.server_name.clone(), stream).await?;
                            Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
                        }
                    }
                }
                Target::Unix(path) => Ok(UpstreamIo::Unix(TokioIo::new(UnixStream::connect(path).await?))),
            }
        };
        let result = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(io)) => Ok(io),
            Ok(Err(source)) => Err(ConnectError::Io { target: describe(), source }),
            Err(_) => Err(ConnectError::Timeout { target: describe(), timeout }),
        };
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
    /// As [`Self::connect_once`], or the app stayed away past the buffer
    /// bounds.
    pub async fn connect(&self) -> Result<UpstreamIo, ConnectError> {
        let first = match self.connect_once().await {
            Ok(io) => return Ok(io),
            Err(e) => e,
        };
        let Some(buffer) = self.buffer.filter(|_| first.is_refused()) else { return Err(first) };
        if self.drain.is_draining() {
            return Err(ConnectError::Draining);
        }
        if self.fail_fast.load(Ordering::Relaxed) && !self.health.is_healthy() {
            return Err(ConnectError::BufferTimeout { waited: Duration::ZERO });
        }
        let Some(_slot) = HeldSlot::take(&self.held, buffer.max) else {
            return Err(ConnectError::BufferFull { max: buffer.max });
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
                    return Err(ConnectError::Draining);
                }
            }
            if Instant::now() >= deadline {
                if !self.fail_fast.swap(true, Ordering::Relaxed) {
                    info!(waited = ?buffer.timeout, "app did not come back within the buffer timeout; failing fast until it does");
                }
                return Err(ConnectError::BufferTimeout { waited: buffer.timeout });
            }
            // Bounded by the deadline too, so a hold never outlasts it.
            let limit = self.timeout.min(deadline.saturating_duration_since(Instant::now()));
            match self.connect_within(limit).await {
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
                Err(e) => return Err(e),
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

impl tower::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        // Boxed: runs once per new connection, not per request.
        let connector = self.clone();
        Box::pin(async move { connector.connect().await })
    }
}

/// A connection to the app.
#[derive(Debug)]
pub enum UpstreamIo {
    Tcp(TokioIo<TcpStream>),
    Unix(TokioIo<UnixStream>),
    /// Boxed: a TLS session is large, and rare next to plain connections.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

// === impl UpstreamIo ===

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            Self::Tls(io) if io.inner().get_ref().1.alpn_protocol() == Some(b"h2") => Connected::new().negotiated_h2(),
            _ => Connected::new(),
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Self::Unix(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Self::Unix(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_flush(cx),
            Self::Unix(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Self::Unix(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Unix(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(io) => io.is_write_vectored(),
            Self::Unix(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The hold layer, in-process under paused time: an app that is not
    //! there is a Unix socket path that does not exist, which fails at once
    //! (no real wait for the paused clock to skip over).

    use super::*;

    const BUFFER_TIMEOUT: Duration = Duration::from_secs(30);

    fn connector(drain: Watch) -> Connector {
        let options = ClientOptions {
            target: Target::Unix(PathBuf::from("/nonexistent/outrider-test-app.sock")),
            http2: false,
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 8,
            buffer: Some(BufferOptions { max: 4, timeout: BUFFER_TIMEOUT }),
            tls: None,
        };
        Connector::new(&options, Health::new(1, 1), drain)
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
        assert!(matches!(result, Err(ConnectError::BufferTimeout { waited }) if waited == BUFFER_TIMEOUT), "{result:?}");
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
            assert!(matches!(result, Err(ConnectError::Draining)), "{result:?}");
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
        assert!(matches!(result, Err(ConnectError::Draining)), "{result:?}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A request refused during the drain answers 503, as any request the
        // buffer cannot take.
        let err = result.unwrap_err();
        assert_eq!(crate::proxy::error::ProxyError::classify(&err), Some(crate::proxy::error::ProxyError::Unavailable));
    }
}
