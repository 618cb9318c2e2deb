//! Opens one connection to the app, over TCP (plain or TLS) or a Unix
//! socket, bounded by the connect timeout. Nothing else: waiting for an
//! app that is away is the hold layer's job, reusing connections the pool's.

use std::{
    io,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

/// Where the app listens.
#[derive(Debug, Clone)]
pub enum Target {
    /// `host:port`, resolved at connect time so DNS changes are followed.
    Tcp(Arc<str>),
    Unix(PathBuf),
}

/// How to speak TLS to the app: one connector per protocol, because ALPN
/// is chosen at the handshake. A connection for HTTP/1 offers only
/// `http/1.1` and one for HTTP/2 only `h2`, so the app can never pick the
/// other and leave a request on a connection that speaks the wrong one.
#[derive(Clone)]
pub struct UpstreamTls {
    pub http1: tokio_rustls::TlsConnector,
    pub http2: tokio_rustls::TlsConnector,
    /// The name the app's certificate must carry.
    pub server_name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish()
    }
}

/// Connects to the configured app whatever a request's URI says, so the
/// pool has exactly one key and a client cannot steer connections.
#[derive(Debug, Clone)]
pub struct Connect {
    target: Target,
    timeout: Duration,
    tls: Option<UpstreamTls>,
    /// Connections for HTTP/2 (ALPN `h2` over TLS).
    http2: bool,
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
    /// A short reason for `/readyz` and logs.
    pub fn short(&self) -> String {
        match self {
            Self::Timeout { .. } => "connect timeout".into(),
            Self::Io { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => "connect refused".into(),
                io::ErrorKind::NotFound => "socket not found".into(),
                _ => format!("connect failed: {source}"),
            },
        }
    }

    /// The app is not listening (yet): worth waiting for.
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound))
    }
}

// === impl Connect ===

impl Connect {
    /// Connections for HTTP/1 (ALPN `http/1.1` over TLS).
    pub fn new(target: Target, timeout: Duration, tls: Option<UpstreamTls>) -> Self {
        Self { target, timeout, tls, http2: false }
    }

    /// The same app, for connections that will speak HTTP/2.
    #[must_use]
    pub fn for_http2(&self) -> Self {
        Self { http2: true, ..self.clone() }
    }

    /// The app's address, for building request URIs.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// One attempt, bounded by the connect timeout.
    ///
    /// # Errors
    /// The app refused, was unreachable, or did not answer in time.
    pub async fn connect(&self) -> Result<UpstreamIo, ConnectError> {
        self.connect_within(self.timeout).await
    }

    /// One attempt, bounded by `timeout` and the connect timeout.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn connect_within(&self, timeout: Duration) -> Result<UpstreamIo, ConnectError> {
        let timeout = timeout.min(self.timeout);
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
                            let connector = if self.http2 { &tls.http2 } else { &tls.http1 };
                            let stream = connector.connect(tls.server_name.clone(), stream).await?;
                            Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
                        }
                    }
                }
                Target::Unix(path) => Ok(UpstreamIo::Unix(TokioIo::new(UnixStream::connect(path).await?))),
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(io)) => Ok(io),
            Ok(Err(source)) => Err(ConnectError::Io { target: describe(), source }),
            Err(_) => Err(ConnectError::Timeout { target: describe(), timeout }),
        }
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
