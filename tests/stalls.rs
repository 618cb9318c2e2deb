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

/// The type of each HTTP/2 frame in `bytes` (a server's side of the
/// connection, which has no preface).
fn frame_types(mut frames: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while frames.len() >= 9 {
        let len = usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        types.push(frames[3]);
        frames = frames.get(9 + len..).unwrap_or_default();
    }
    types
}

/// Opens a connection, sends `bytes`, then nothing; returns what comes back
/// until outrider closes it (a reset included), and how long after the last
/// byte sent. Fails if it is still open after [`PATIENCE`].
async fn stall_after(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let quiet = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await.expect("the stalled connection was never closed").ok();
    (out, quiet.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_http2_client_is_pinged_then_closed() {
    let app = App::start().await;
    let o = outrider(&app.url())
        .env("OUTRIDER_H2_KEEPALIVE_INTERVAL", "1s")
        .env("OUTRIDER_H2_KEEPALIVE_TIMEOUT", "1s")
        .env("OUTRIDER_HEADER_READ_TIMEOUT", "1h")
        .start()
        .await;
    // Read what outrider sends (SETTINGS, its PING, then GOAWAY) and never
    // answer: the PING goes unacknowledged.
    let (seen, took) = stall_after(o.listen, H2_PREFACE).await;
    assert!(took >= Duration::from_secs(1), "closed before the keep-alive interval: {took:?}");
    assert!(took < Duration::from_secs(10), "closed {took:?} after going silent, with 1 s + 1 s configured");
    // A PING frame (type 6) went out before the close.
    let types = frame_types(&seen);
    assert!(types.contains(&6), "no PING was sent: frame types {types:?}");
    assert_eq!(o.wait_metric("outrider_connection_timeouts_total{cause=\"h2_ping\"}", |n| n > 0.0).await, 1.0);
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
    assert_eq!(o.wait_metric("outrider_connection_timeouts_total{cause=\"tunnel_idle\"}", |n| n > 0.0).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_gets_408_and_the_app_sees_the_request_aborted() {
    use std::sync::atomic::Ordering::SeqCst;
    let app = App::start().await;
    let o = outrider(&app.url()).env("OUTRIDER_REQUEST_BODY_IDLE_TIMEOUT", "1s").start().await;
    // 10 of the 100 bytes announced, then silence.
    let (out, took) = stall_after(o.listen, b"POST /count HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\n0123456789").await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "answered {took:?} after the last byte, 1 s configured");
    wait_until("the app to see its request aborted", || app.aborted.load(SeqCst) == 1).await;
    assert_eq!(app.completed.load(SeqCst), 0);
    let line = o.wait_log("the access log line", |l| l.contains("outrider::access") && l.contains("/count")).await;
    assert!(line.contains("\"status\":408") && line.contains("request_body_timeout"), "{line}");
    assert_eq!(o.metric("outrider_body_timeouts_total{direction=\"request\"}").await, Some(1.0));

    // HTTP/2: a stream whose body stops after its first frame gets 408.
    type Chunk = Result<hyper::body::Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"0123456789")))).await.expect("first frame");
    let frames = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|frame| (frame, rx)) });
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames));
    let started = Instant::now();
    let (status, _, _) = send(&h2c_client(), http::Request::post(o.url("/count")).body(body).expect("a request")).await.expect("an answer");
    assert_eq!(status, 408);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(tx);
    assert_eq!(o.wait_metric("outrider_body_timeouts_total{direction=\"request\"}", |n| n >= 2.0).await, 2.0);

    // A slow but steady body is not idle, and the request timeout counts
    // from its end: a 3 s upload with a 1 s request timeout is served.
    let slow = outrider(&app.url()).env("OUTRIDER_REQUEST_BODY_IDLE_TIMEOUT", "2s").env("OUTRIDER_REQUEST_TIMEOUT", "1s").start().await;
    let mut stream = tokio::net::TcpStream::connect(slow.listen).await.expect("connect");
    stream.write_all(b"POST /count HTTP/1.1\r\nhost: app\r\nconnection: close\r\ncontent-length: 6\r\n\r\n").await.expect("head");
    for part in [&b"ab"[..], b"cd", b"ef"] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stream.write_all(part).await.expect("part");
    }
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await.expect("an answer").expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\n6"), "{text}");
}

/// An app that answers every request with a head announcing 100 bytes, the
/// first 10 of them, and then nothing.
async fn stalling_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
                // Held open and silent until the peer goes.
                let _ = stream.read(&mut byte).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_response_body_is_cut_on_http1_and_reset_on_http2() {
    let app = stalling_app().await;
    let o = outrider(&format!("http://{app}")).env("OUTRIDER_RESPONSE_BODY_IDLE_TIMEOUT", "1s").start().await;
    let (out, took) = stall_after(o.listen, b"GET /stall HTTP/1.1\r\nhost: app\r\n\r\n").await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\n0123456789"), "the head and the first bytes pass: {text}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "cut {took:?} after the request, 1 s configured");
    let line = o.wait_log("the access log line", |l| l.contains("outrider::access") && l.contains("/stall")).await;
    assert!(line.contains("\"status\":200") && line.contains("response_body_timeout"), "{line}");
    o.wait_log("the warning", |l| l.contains("upstream response body cut")).await;
    assert_eq!(o.metric("outrider_body_timeouts_total{direction=\"response\"}").await, Some(1.0));

    // HTTP/2: the stream is reset and the connection stays: a second
    // stalled request goes over the same one.
    let client = h2c_client();
    for n in [2.0, 3.0] {
        let started = Instant::now();
        let response = client.request(http::Request::get(o.url("/stall")).body(full("")).expect("a request")).await.expect("the head");
        assert_eq!(response.status(), 200);
        let error = http_body_util::BodyExt::collect(response.into_body()).await.expect_err("the stalled h2 response completed");
        assert!(started.elapsed() < Duration::from_secs(10));
        let reset = std::error::Error::source(&error).and_then(|e| e.downcast_ref::<h2::Error>()).and_then(h2::Error::reason);
        assert_eq!(reset, Some(h2::Reason::INTERNAL_ERROR), "a RST_STREAM: {error:?}");
        assert_eq!(o.metric("outrider_body_timeouts_total{direction=\"response\"}").await, Some(n));
    }
    assert_eq!(o.metric("outrider_connections_total").await, Some(2.0), "one HTTP/1 connection, one HTTP/2 connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_connection_without_streams_gets_a_goaway_at_the_idle_timeout() {
    let app = App::start().await;
    let o = outrider(&app.url())
        .env("OUTRIDER_H2_IDLE_TIMEOUT", "1s")
        // PINGs off: the idle bound alone must close it.
        .env("OUTRIDER_H2_KEEPALIVE_INTERVAL", "0")
        .start()
        .await;
    // A stream open longer than the idle timeout keeps the connection.
    let client = h2c_client();
    let (status, _, body) = send(&client, http::Request::get(o.url("/slow/2500")).body(full("")).expect("a request")).await.expect("slow");
    assert_eq!((status, &body[..]), (200, &b"slow done"[..]));
    assert_eq!(o.metric("outrider_connections_total").await, Some(1.0));
    // Then idle: closed.
    o.wait_metric("outrider_connections_active", |n| n == 0.0).await;

    // On the wire: a connection that opens no stream gets a GOAWAY (type 7).
    let (seen, took) = stall_after(o.listen, H2_PREFACE).await;
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "closed {took:?} after the preface, 1 s configured");
    let types = frame_types(&seen);
    assert!(types.contains(&7), "no GOAWAY was sent: frame types {types:?}");
    // The first connection's close and this one's.
    assert_eq!(o.wait_metric("outrider_connection_timeouts_total{cause=\"h2_idle\"}", |n| n >= 2.0).await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_header_block_left_unfinished_is_closed_by_the_ping_bound() {
    let app = App::start().await;
    let o = outrider(&app.url())
        .env("OUTRIDER_H2_KEEPALIVE_INTERVAL", "1s")
        .env("OUTRIDER_H2_KEEPALIVE_TIMEOUT", "1s")
        .env("OUTRIDER_H2_IDLE_TIMEOUT", "1h")
        .start()
        .await;
    // HEADERS on stream 1 (`:method GET`) without END_HEADERS: only
    // CONTINUATION may follow, and none does.
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend_from_slice(&[0, 0, 1, 0x1, 0x1, 0, 0, 0, 1, 0x82]);
    let (_, took) = stall_after(o.listen, &bytes).await;
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "closed {took:?} after the stall, 1 s + 1 s configured");
    assert_eq!(app.count(), 0, "no request reached the app");
    assert_eq!(o.wait_metric("outrider_connection_timeouts_total{cause=\"h2_ping\"}", |n| n > 0.0).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http1_client_that_stops_reading_is_disconnected_at_the_send_timeout() {
    let app = App::start().await;
    let o = outrider(&app.url()).env("OUTRIDER_SEND_TIMEOUT", "1s").start().await;
    // 256 MiB, far more than the socket buffers hold, and never read.
    let mut stream = tokio::net::TcpStream::connect(o.listen).await.expect("connect");
    stream.write_all(b"GET /bytes/268435456 HTTP/1.1\r\nhost: app\r\n\r\n").await.expect("send");
    assert_eq!(o.wait_metric("outrider_connection_timeouts_total{cause=\"send\"}", |n| n > 0.0).await, 1.0);
    // What was buffered can still be read, then the connection ends short.
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await.expect("the connection stayed open") {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < 268_435_456, "the whole body arrived");
    // A client that reads, however slowly in between, is not cut.
    let (status, _, body) = get(&o.url("/bytes/1048576")).await.expect("a normal download");
    assert_eq!((status, body.len()), (200, 1_048_576));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_stops_reading_an_upload_and_never_answers_gets_504() {
    // Reads the head, then neither the body nor anything else.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 256];
            let _ = stream.read(&mut head).await;
            held.push(stream);
        }
    });
    let o = outrider(&format!("http://{app}")).env("OUTRIDER_REQUEST_TIMEOUT", "1s").start().await;
    let mut stream = tokio::net::TcpStream::connect(o.listen).await.expect("connect");
    let len = 256usize << 20;
    stream.write_all(format!("POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: {len}\r\n\r\n").as_bytes()).await.expect("head");
    let (mut read, mut write) = stream.into_split();
    // The upload goes on as long as anything takes it.
    let upload = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..len / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut out = Vec::new();
    let mut chunk = [0u8; 512];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, read.read(&mut chunk)).await.expect("no answer: the stalled upload was never bounded") {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 504 "), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    upload.abort();
}
