//! An upgraded connection (WebSocket, or any `101 Switching Protocols`):
//! the client's and the app's sockets spliced together, until either side
//! closes, both stay silent for the idle timeout, or the drain cuts it.
//!
//! Without the idle bound a tunnel whose peers both went away without a
//! FIN (a NAT dropped the mapping, a laptop closed) holds its task and two
//! sockets forever. nginx closes an idle proxied WebSocket after 60 s
//! (`proxy_read_timeout`), which breaks apps that ping less often; the
//! default here is ten minutes.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};
use tracing::debug;

use crate::{
    drain::{Phase, Watch},
    gate::Gated,
};

/// Splices `client` and `app` until one closes, both idle past `idle`
/// (`None`: never), or the drain's cut; `true` if the idle bound closed it.
pub(super) async fn splice<C, A>(client: C, app: A, idle: Option<Duration>, mut drain: Watch) -> bool
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Activity { io: client, started, last: last.clone() };
    let mut app = Activity { io: app, started, last: last.clone() };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut app);
    tokio::pin!(copy);
    let idle_for = idle.unwrap_or(Duration::MAX);
    let timer = tokio::time::sleep(idle.map_or(Duration::from_secs(86_400 * 365), |d| d));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            copied = &mut copy => {
                match copied {
                    Ok((up, down)) => debug!(bytes_to_app = up, bytes_to_client = down, "upgraded connection closed"),
                    Err(e) => debug!(error = %e, "upgraded connection ended with error"),
                }
                return false;
            }
            // Both sockets close as the task ends.
            () = Gated::new(drain.reached(Phase::Cut)) => {
                debug!("upgraded connection closed at the drain timeout");
                return false;
            }
            () = timer.as_mut(), if idle.is_some() => {
                // Re-armed from the last byte seen, rather than reset on
                // every byte: one timer wake-up per idle period at most.
                let quiet_since = started + Duration::from_nanos(last.load(Ordering::Relaxed));
                let deadline = quiet_since + idle_for;
                if Instant::now() >= deadline {
                    debug!(idle = ?idle_for, "upgraded connection idle on both sides; closing");
                    return true;
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// Stamps the time of every byte read or written.
struct Activity<T> {
    io: T,
    started: Instant,
    /// Nanoseconds from `started` to the last activity, either side.
    last: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Under paused time, over in-memory pipes.

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::drain::Manual;

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_idle_on_both_sides_closes_at_the_timeout_and_traffic_keeps_it_open() {
        let (mut client, client_end) = tokio::io::duplex(1024);
        let (mut app, app_end) = tokio::io::duplex(1024);
        let (_drain, watch) = Manual::new();
        let started = Instant::now();
        let tunnel = tokio::spawn(splice(client_end, app_end, Some(Duration::from_secs(60)), watch));
        // Traffic every 40 s for two minutes: never 60 s of silence.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            client.write_all(b"ping").await.expect("write");
            let mut got = [0u8; 4];
            app.read_exact(&mut got).await.expect("the app got it");
        }
        assert!(!tunnel.is_finished(), "closed while in use");
        assert!(tunnel.await.expect("the tunnel task"), "reported as closed by the idle bound");
        assert_eq!(started.elapsed(), Duration::from_secs(120 + 60), "closed 60 s after the last byte");
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.expect("EOF"), 0, "the client's side was closed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_cut_closes_a_tunnel_in_use() {
        let (_client, client_end) = tokio::io::duplex(1024);
        let (_app, app_end) = tokio::io::duplex(1024);
        let (drain, watch) = Manual::new();
        let tunnel = tokio::spawn(splice(client_end, app_end, None, watch));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!tunnel.is_finished(), "no idle bound configured");
        drain.advance(Phase::Cut);
        let idle = tokio::time::timeout(Duration::from_secs(1), tunnel).await.expect("closed at the cut").expect("the tunnel task");
        assert!(!idle, "the cut is not the idle bound");
    }
}
