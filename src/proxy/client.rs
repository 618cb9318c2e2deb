//! hyper-util's pooled client, for HTTP/2 to the app: there one
//! connection serves many requests at once and needs a task of its own
//! (HTTP/1 has the request-driven pool instead).

use std::time::Duration;

use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};

use super::{hold::Hold, limits::UpstreamBody};

/// The client type the proxy uses.
pub type UpstreamClient = Client<Hold, UpstreamBody>;

/// Builds the HTTP/2 client on the hold layer's connections.
pub fn client(connector: Hold, idle_timeout: Duration, max_idle: usize) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(max_idle)
        // The app may close an idle keep-alive connection just as we pick it
        // from the pool; hyper retries such requests when nothing was sent.
        .retry_canceled_requests(true)
        .set_host(false)
        .http2_only(true)
        .build(connector)
}
