//! The byte stream under a client connection: which HTTP version it speaks,
//! waiting on it without buffers while it is idle, and handing it over
//! when a request upgrades it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::oneshot,
};
use tokio_rustls::server::TlsStream;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP version a connection speaks, as its first bytes or ALPN tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// A client connection's byte stream: plain TCP or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Resolves once the peer sends something or closes, without reading:
    /// a parked connection waits here holding no buffers.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;

    /// Which protocol the client speaks, with any bytes consumed to find
    /// out (to be read again before the socket), or `None` if the client
    /// closed without sending anything.
    fn protocol(&mut self) -> impl Future<Output = io::Result<Option<(Protocol, Bytes)>>> + Send;
}

impl Transport for TcpStream {
    async fn readable(&self) -> io::Result<()> {
        TcpStream::readable(self).await
    }

    async fn protocol(&mut self) -> io::Result<Option<(Protocol, Bytes)>> {
        // Peeking leaves the bytes in the socket, so the HTTP/1 parser
        // reads the request in one go instead of a 24-byte prefix first.
        let mut first = [0u8; H2_PREFACE.len()];
        let n = self.peek(&mut first).await?;
        if n == 0 {
            return Ok(None);
        }
        match classify(&first[..n]) {
            Some(protocol) => Ok(Some((protocol, Bytes::new()))),
            // The preface arrived split: rare, so read it the slow way
            // (peeking again would return at once with the same bytes).
            None => read_preface(self).await,
        }
    }
}

// Boxed: rustls's connection state is over 1 KiB, and the connection's
// future would otherwise hold a second copy's worth of space for it.
impl Transport for Box<TlsStream<TcpStream>> {
    async fn readable(&self) -> io::Result<()> {
        // rustls holds no unread plaintext here: hyper reads until the
        // socket would block before its connection counts as idle.
        self.get_ref().0.readable().await
    }

    async fn protocol(&mut self) -> io::Result<Option<(Protocol, Bytes)>> {
        match self.get_ref().1.alpn_protocol() {
            Some(b"h2") => Ok(Some((Protocol::Http2, Bytes::new()))),
            Some(_) => Ok(Some((Protocol::Http1, Bytes::new()))),
            // No ALPN: an HTTP/2 client with prior knowledge still opens
            // with the preface.
            None => read_preface(self).await,
        }
    }
}

/// `Some` once `seen` settles the protocol, `None` while it is a proper
/// prefix of the HTTP/2 preface.
fn classify(seen: &[u8]) -> Option<Protocol> {
    if !H2_PREFACE.starts_with(seen) {
        Some(Protocol::Http1)
    } else if seen.len() == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Reads until the bytes stop matching the HTTP/2 preface or complete it.
async fn read_preface<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Option<(Protocol, Bytes)>> {
    let mut seen = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    loop {
        let n = io.read(&mut seen[len..]).await?;
        if n == 0 {
            // Closed mid-preface: whatever came is for hyper to reject.
            return Ok((len > 0).then(|| (Protocol::Http1, Bytes::copy_from_slice(&seen[..len]))));
        }
        len += n;
        if let Some(protocol) = classify(&seen[..len]) {
            return Ok(Some((protocol, Bytes::copy_from_slice(&seen[..len]))));
        }
    }
}

pin_project_lite::pin_project! {
    /// A transport with bytes already read from it put back in front.
    pub struct Rewind<T> {
        prefix: Bytes,
        #[pin]
        inner: T,
    }
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// Bytes hyper read but did not use go back in front of any not yet
    /// read again.
    pub fn unread(&mut self, read_buf: Bytes) {
        if read_buf.is_empty() {
            return;
        }
        self.prefix = if self.prefix.is_empty() {
            read_buf
        } else {
            let mut joined = BytesMut::with_capacity(read_buf.len() + self.prefix.len());
            joined.extend_from_slice(&read_buf);
            joined.extend_from_slice(&self.prefix);
            joined.freeze()
        };
    }

    /// Bytes are waiting in front of the transport.
    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead> AsyncRead for Rewind<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Rewind<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Any client transport, once upgraded: what the proxy splices to the app.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A client connection handed over after a `101 Switching Protocols`,
/// with any bytes the client sent after its request in front.
pub struct Upgraded(Box<dyn Io>);

impl Upgraded {
    pub(super) fn new<T: Transport>(io: Rewind<T>) -> Self {
        Self(Box::new(io))
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Put on an HTTP/1.1 request that asks to upgrade: resolves to the
/// client's connection once a `101` answer to it has been written.
///
/// hyper's own `hyper::upgrade::on` cannot be used: connections are served
/// without hyper's upgrade support so that an idle one can be taken apart
/// and parked (see [`super::conn`]).
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

/// The connection was not handed over: the answer was not a `101`, or the
/// client went away first.
#[derive(Debug, thiserror::Error)]
#[error("the client connection was not upgraded")]
pub struct NotUpgraded;

impl OnUpgrade {
    pub(super) fn pair() -> (oneshot::Sender<Upgraded>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(Arc::new(Mutex::new(Some(rx)))))
    }

    pub async fn wait(self) -> Result<Upgraded, NotUpgraded> {
        let rx = self.0.lock().ok().and_then(|mut rx| rx.take()).ok_or(NotUpgraded)?;
        rx.await.map_err(|_| NotUpgraded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PUT /"), Some(Protocol::Http1));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"P"), None);
    }

    #[tokio::test]
    async fn a_split_preface_is_read_whole_and_given_back() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { read_preface(&mut server).await.unwrap() });
        use tokio::io::AsyncWriteExt;
        client.write_all(b"PRI * HTTP").await.unwrap();
        client.write_all(b"/2.0\r\n\r\nSM\r\n\r\nrest").await.unwrap();
        let (protocol, prefix) = reader.await.unwrap().unwrap();
        assert_eq!(protocol, Protocol::Http2);
        assert_eq!(&prefix[..], &H2_PREFACE[..]);
    }

    #[tokio::test]
    async fn rewind_reads_the_prefix_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Rewind::new(Bytes::from_static(b"lo"), server);
        io.unread(Bytes::from_static(b"hel"));
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
