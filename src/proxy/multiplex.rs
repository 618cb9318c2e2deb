//! HTTP/2 to the app: one connection, shared by every request that goes
//! over HTTP/2, its streams multiplexed. The connection runs as a task of
//! its own (unlike an HTTP/1 connection, many requests drive it at once).
//!
//! Why not hyper-util's pooled client, which outrider used before: it keys
//! its pool by each request's scheme and authority, and HTTP/2 takes
//! `:authority` from that same URI. Preserving the client's `:authority`
//! would then open a connection per distinct `Host` a client chose to
//! send; sending the app's address instead rewrites what the app sees.
//! Here there is one key, the app, whatever a request says.

use std::{sync::Mutex, time::Duration};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::http2::{Builder, SendRequest},
};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::debug;

use super::{
    hold::{Hold, HoldError},
    limits::UpstreamBody,
};

/// Why an HTTP/2 exchange with the app failed.
#[derive(Debug, thiserror::Error)]
pub enum MultiplexError {
    #[error(transparent)]
    Connect(#[from] HoldError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The shared HTTP/2 connection to the app, opened on first use and again
/// whenever the last one has closed (the app restarted, or sent GOAWAY).
pub struct Multiplex {
    connector: Hold,
    builder: Builder<TokioExecutor>,
    /// The live connection's handle. Locked only to clone it (a reference
    /// count), never across an await.
    current: Mutex<Option<SendRequest<UpstreamBody>>>,
    /// One connect at a time: requests arriving meanwhile wait for it and
    /// share the connection it makes, rather than each opening their own.
    connecting: tokio::sync::Mutex<()>,
}

impl Multiplex {
    /// The connection holder on `connector`. Leaked: it lives as long as
    /// the process, and requests reach it without a reference count.
    pub fn new(connector: Hold) -> &'static Self {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // A PING every 20 s while streams are open notices an app
            // connection that died without a FIN (a killed pod behind a
            // CNI that drops packets) before the streams' own bounds do.
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        Box::leak(Box::new(Self { connector, builder, current: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) }))
    }

    /// Sends `req` on the shared connection, opening one if there is none.
    ///
    /// # Errors
    /// No connection could be made, or the app did not answer with a
    /// response head (it reset the stream, or the connection broke).
    pub async fn send(&'static self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, MultiplexError> {
        let mut req = req;
        // Twice at most: a connection that closed between our check and
        // the send hands the request back untouched, and a fresh
        // connection then gets it.
        for _ in 0..2 {
            let mut sender = self.sender().await?;
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        // `live()` skips the closed handle from now on.
                        debug!(error = %e.error(), "app connection closed before the request went out; sending on a new one");
                        req = back;
                    }
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = self.sender().await?;
        Ok(sender.send_request(req).await?)
    }

    /// The live connection, or a new one.
    async fn sender(&'static self) -> Result<SendRequest<UpstreamBody>, MultiplexError> {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let io = self.connector.connect().await?;
        let (sender, connection) = self.builder.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "HTTP/2 connection to the app ended with error");
            }
        });
        *self.lock() = Some(sender.clone());
        Ok(sender)
    }

    fn live(&self) -> Option<SendRequest<UpstreamBody>> {
        self.lock().as_ref().filter(|sender| !sender.is_closed()).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<UpstreamBody>>> {
        // Holds a handle only: a panic cannot leave it half-written.
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
