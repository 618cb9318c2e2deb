//! Connections to an `https://` collector for hyper's pooled client: TCP
//! by hyper-util's connector (DNS, address fallback), then a rustls
//! handshake that verifies the collector's name.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// Connects every request to the one collector, over TLS.
#[derive(Clone)]
pub struct TlsConnect {
    tcp: HttpConnector,
    tls: TlsConnector,
    /// The name the collector's certificate must carry: the endpoint's host.
    server_name: ServerName<'static>,
}

impl TlsConnect {
    pub fn new(tls: TlsConnector, server_name: ServerName<'static>) -> Self {
        let mut tcp = HttpConnector::new();
        // The URI says https; TLS is this connector's own job.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        Self { tcp, tls, server_name }
    }
}

impl tower::Service<Uri> for TlsConnect {
    type Response = TlsIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_ready(cx).map_err(io::Error::other)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = self.tcp.call(uri);
        let (tls, name) = (self.tls.clone(), self.server_name.clone());
        Box::pin(async move {
            let stream = tcp.await.map_err(io::Error::other)?.into_inner();
            let stream = tls.connect(name, stream).await.map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
            Ok(TlsIo(TokioIo::new(stream)))
        })
    }
}

/// A TLS connection to the collector.
#[derive(Debug)]
pub struct TlsIo(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        match self.0.inner().get_ref().1.alpn_protocol() {
            Some(b"h2") => Connected::new().negotiated_h2(),
            _ => Connected::new(),
        }
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
