//! A peer that stops talking does not hold a connection forever: each stall
//! has its bound. Against the real binary, with raw sockets and short
//! settings; the bounds asserted are generous (seconds), the ordering exact.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP/2 connection preface and an empty SETTINGS frame: all a client
/// has to send to have a connection, and then it goes silent.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_http2_client_is_pinged_then_closed() {
    let app = App::start().await;
    let o = outrider(&app.url())
        .env("OUTRIDER_H2_KEEPALIVE_INTERVAL", "1s")
        .env("OUTRIDER_H2_KEEPALIVE_TIMEOUT", "1s")
        .env("OUTRIDER_HEADER_READ_TIMEOUT", "1h")
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(o.listen).await.expect("connect");
    stream.write_all(H2_PREFACE).await.expect("preface");
    let started = Instant::now();
    // Read what outrider sends (SETTINGS, its PING, then GOAWAY) and never
    // answer: the PING goes unacknowledged.
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection was still open after {PATIENCE:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "closed before the keep-alive interval: {took:?}");
    assert!(took < Duration::from_secs(10), "closed {took:?} after going silent, with 1 s + 1 s configured");
    // A PING frame (type 6) went out before the close.
    let mut frames = seen.as_slice();
    let mut types = Vec::new();
    while frames.len() >= 9 {
        let len = usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        types.push(frames[3]);
        frames = frames.get(9 + len..).unwrap_or_default();
    }
    assert!(types.contains(&6), "no PING was sent: frame types {types:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_answers_pings_keeps_its_connection() {
    let app = App::start().await;
    let o = outrider(&app.url()).env("OUTRIDER_H2_KEEPALIVE_INTERVAL", "1s").env("OUTRIDER_H2_KEEPALIVE_TIMEOUT", "1s").start().await;
    // hyper's client answers PINGs by itself.
    let client = h2c_client();
    let (status, _, _) = send(&client, http::Request::get(o.url("/")).body(full("")).expect("a request")).await.expect("first");
    assert_eq!(status, 200);
    // Idle across several keep-alive rounds (the point of the wait: it
    // is the idle time itself that is tested), then reused.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, _, _) = send(&client, http::Request::get(o.url("/")).body(full("")).expect("a request")).await.expect("second");
    assert_eq!(status, 200);
    assert_eq!(
        o.metric("outrider_connections_total").await,
        Some(1.0),
        "the idle connection survived the keep-alive rounds and was reused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_websocket_is_closed_at_the_tunnel_idle_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = App::start().await;
    let o = outrider(&app.url()).env("OUTRIDER_TUNNEL_IDLE_TIMEOUT", "1s").start().await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", o.listen)).await.expect("the upgrade");
    assert_eq!(response.status(), 101);
    // In use for longer than the idle timeout: kept open.
    let mut quiet = Instant::now();
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ws.send(Message::text(format!("ping {i}"))).await.expect("send");
        let echoed = tokio::time::timeout(PATIENCE, ws.next()).await.expect("an echo in time").expect("open").expect("a frame");
        quiet = Instant::now();
        assert_eq!(echoed.into_text().expect("text").as_str(), format!("ping {i}"));
    }
    // Then silent both ways: closed, without a close frame (the tunnel does
    // not speak WebSocket), within a generous bound of the 1 s configured.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel was still open after {PATIENCE:?}");
    let took = quiet.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "closed {took:?} after the last byte");
}
