//! The pooled client to the app, over TCP or a Unix socket.

use std::{
    future::Future,
    io,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::{TcpStream, UnixStream};

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
}

/// The client type the proxy uses.
pub type UpstreamClient = Client<Connector, Incoming>;

/// Builds the pooled client.
pub fn client(options: &ClientOptions) -> UpstreamClient {
    let connector = Connector { target: options.target.clone(), timeout: options.connect_timeout };
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
#[derive(Debug, Clone)]
pub struct Connector {
    target: Target,
    timeout: Duration,
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
}

impl ConnectError {
    /// The io error kind, when there is one (refused, unreachable, ...).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Timeout { .. } => None,
            Self::Io { source, .. } => Some(source.kind()),
        }
    }
}

// === impl Connector ===

impl tower::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = self.target.clone();
        let timeout = self.timeout;
        // Boxed: runs once per new connection, not per request.
        Box::pin(async move {
            let describe = || match &target {
                Target::Tcp(addr) => addr.to_string(),
                Target::Unix(path) => format!("unix:{}", path.display()),
            };
            let connect = async {
                match &target {
                    Target::Tcp(addr) => {
                        let stream = TcpStream::connect(&**addr).await?;
                        stream.set_nodelay(true)?;
                        Ok(UpstreamIo::Tcp(TokioIo::new(stream)))
                    }
                    Target::Unix(path) => Ok(UpstreamIo::Unix(TokioIo::new(UnixStream::connect(path).await?))),
                }
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(source)) => Err(ConnectError::Io { target: describe(), source }),
                Err(_) => Err(ConnectError::Timeout { target: describe(), timeout }),
            }
        })
    }
}

/// A connection to the app.
#[derive(Debug)]
pub enum UpstreamIo {
    Tcp(TokioIo<TcpStream>),
    Unix(TokioIo<UnixStream>),
}

// === impl UpstreamIo ===

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Self::Unix(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Self::Unix(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_flush(cx),
            Self::Unix(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Self::Unix(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Unix(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(io) => io.is_write_vectored(),
            Self::Unix(io) => io.is_write_vectored(),
        }
    }
}
