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

use super::{error::ExchangeError, hold::Hold, limits::UpstreamBody};

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
    pub async fn send(&'static self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, ExchangeError> {
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
    async fn sender(&'static self) -> Result<SendRequest<UpstreamBody>, ExchangeError> {
        match self.live() {
            Some(sender) => Ok(sender),
            // Boxed: connecting (the hold layer's wait, the handshake) is a
            // large future, and inline it would be carried, and moved, by
            // every request's future, HTTP/1 ones included, whose
            // `forward` holds this one as a variant.
            None => Box::pin(self.connect()).await,
        }
    }

    /// Opens the shared connection, or waits for the request already
    /// opening it.
    async fn connect(&'static self) -> Result<SendRequest<UpstreamBody>, ExchangeError> {
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

#[cfg(test)]
mod tests {
    //! The shared connection against a real HTTP/2 server on a Unix socket,
    //! in-process.

    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use tokio::{net::UnixListener, task::JoinSet};

    use super::*;
    use crate::{
        health::Health,
        proxy::connect::{Connect, Target},
    };

    /// An h2c server answering each request with the `:authority` it saw;
    /// counts its connections, which `close` drops at once (no GOAWAY, as
    /// when the app is killed).
    struct App {
        accepted: Arc<AtomicUsize>,
        connections: Arc<Mutex<JoinSet<()>>>,
        path: std::path::PathBuf,
        _dir: TempDir,
    }

    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl App {
        fn start(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("outrider-multiplex-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("app.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let connections = Arc::new(Mutex::new(JoinSet::new()));
            let (count, set) = (accepted.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let authority = req.uri().authority().map(ToString::to_string).unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(authority))))
                    });
                    let conn =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service);
                    set.lock().unwrap().spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
            Self { accepted, connections, path, _dir: TempDir(dir) }
        }

        fn close_connections(&self) {
            self.connections.lock().unwrap().abort_all();
        }
    }

    fn multiplex(app: &App) -> &'static Multiplex {
        let (_drain, watch) = crate::drain::Manual::new();
        let connect = Connect::new(Target::Unix(app.path.clone()), Duration::from_secs(5), None).for_http2();
        Multiplex::new(Hold::new(connect, None, Health::new(1, 1), watch))
    }

    async fn call(multiplex: &'static Multiplex, authority: &str) -> String {
        use http_body_util::BodyExt;
        let req =
            Request::post(format!("http://{authority}/pkg.Svc/Method")).version(http::Version::HTTP_2).body(UpstreamBody::empty()).unwrap();
        let response = multiplex.send(req).await.expect("an answer");
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_connection_and_keep_their_authority() {
        let app = App::start("share");
        let multiplex = multiplex(&app);
        let calls: Vec<_> = (0..16).map(|i| tokio::spawn(call(multiplex, if i % 2 == 0 { "a.example" } else { "b.example:81" }))).collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), if i % 2 == 0 { "a.example" } else { "b.example:81" });
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 1, "one connection, whatever the authorities");
    }

    #[tokio::test]
    async fn a_closed_connection_is_replaced() {
        let app = App::start("replace");
        let multiplex = multiplex(&app);
        assert_eq!(call(multiplex, "a").await, "a");
        app.close_connections();
        // The handle learns of the close from its connection task.
        for _ in 0..500 {
            if multiplex.live().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(multiplex.live().is_none(), "the closed connection was still offered");
        assert_eq!(call(multiplex, "b").await, "b");
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
    }
}
