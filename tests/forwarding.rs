//! What reaches the app is what outrider saw, not what a client claims:
//! the request head's limits hold however its bytes arrive, an ambiguous
//! body length is refused, and forwarding headers are believed only from a
//! trusted front proxy. Against the real binary, with raw sockets.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` in one write and reads until the connection closes:
/// the status (0 if none) and whether it closed within the patience.
async fn one_write(addr: SocketAddr, request: &[u8]) -> (u16, bool, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("the request was written");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await.is_ok();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, closed, text)
}

/// A request head of exactly `size` bytes as sent: `GET /limit HTTP/1.1`,
/// Host, `Connection: close`, and `x-fill-N` headers of at most 1000 bytes.
fn head_of(size: usize) -> Vec<u8> {
    let mut head = String::from("GET /limit HTTP/1.1\r\nhost: app\r\nconnection: close\r\n");
    let mut n = 0;
    // Each filler line: `x-fill-NNNN: ` (13) + value + CRLF (2).
    while head.len() + 2 + 15 + 1 < size {
        let room = size - head.len() - 2 - 15;
        let value = room.min(1000);
        head.push_str(&format!("x-fill-{n:04}: {}\r\n", "v".repeat(value)));
        n += 1;
    }
    assert!(head.len() + 2 <= size, "cannot build a head of {size} bytes");
    // Pad the last filler value to land exactly on `size`.
    let missing = size - head.len() - 2;
    if missing > 0 {
        let at = head.len() - 2;
        head.insert_str(at, &"v".repeat(missing));
    }
    head.push_str("\r\n");
    assert_eq!(head.len(), size);
    head.into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_head_limit_is_exact_however_the_bytes_arrive() {
    let app = App::start().await;
    let o = outrider(&app.url()).env("OUTRIDER_MAX_HEADER_BYTES", "16384").start().await;
    let addr = o.listen;

    let (status, _, text) = one_write(addr, &head_of(16384)).await;
    assert_eq!(status, 200, "a head exactly at the limit passes: {text}");
    assert_eq!(app.count(), 1);

    let (status, closed, text) = one_write(addr, &head_of(16385)).await;
    assert_eq!(status, 431, "one byte over, in one write: {text}");
    assert!(closed, "the connection closes after a 431");

    // 100 KiB in one write, over hyper's own read-buffer bound too.
    let (status, _, text) = one_write(addr, &head_of(100 * 1024)).await;
    assert_eq!(status, 431, "100 KiB in one write: {text}");

    // The same 100 KiB in small pieces.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for piece in head_of(100 * 1024).chunks(512) {
        if stream.write_all(piece).await.is_err() {
            break; // closed on us mid-head: fine, as long as it said 431
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"), "{}", String::from_utf8_lossy(&out));

    assert_eq!(app.count(), 1, "no oversized head reached the app");
    // Heads past twice the limit fill hyper's read buffer first, and hyper
    // answers those 431s itself: only the one-byte-over head is counted.
    assert_eq!(o.metric("outrider_refused_requests_total{reason=\"header_too_large\"}").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_line_over_the_line_limit_is_refused() {
    let app = App::start().await;
    let o = outrider(&app.url()).start().await;
    let long_header = format!("GET / HTTP/1.1\r\nhost: app\r\ncookie: {}\r\n\r\n", "c".repeat(16384));
    let (status, _, _) = one_write(o.listen, long_header.as_bytes()).await;
    assert_eq!(status, 431);
    let long_target = format!("GET /{} HTTP/1.1\r\nhost: app\r\n\r\n", "p".repeat(16384));
    let (status, _, _) = one_write(o.listen, long_target.as_bytes()).await;
    assert_eq!(status, 414);
    let at_limit = format!("GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\ncookie: {}\r\n\r\n", "c".repeat(16384 - 8));
    let (status, _, _) = one_write(o.listen, at_limit.as_bytes()).await;
    assert_eq!(status, 200, "a header line of exactly 16 KiB passes");
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    let app = App::start().await;
    let o = outrider(&app.url()).start().await;
    // The classic CL.TE smuggling shape: a second request hidden in a body
    // that Content-Length says is 4 bytes long and chunked framing says is
    // empty; then TE.CL, the headers the other way round.
    let cl_te = b"POST /count HTTP/1.1\r\nhost: app\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
        0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n";
    let te_cl = b"POST /count HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n\
        0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n";
    for (name, smuggled) in [("CL.TE", &cl_te[..]), ("TE.CL", &te_cl[..])] {
        let (status, closed, text) = one_write(o.listen, smuggled).await;
        assert_eq!(status, 400, "{name}: {text}");
        assert!(closed, "{name}: the connection must close after an ambiguous request");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{name}: the hidden request was answered: {text}");
    }
    assert_eq!(app.count(), 0, "nothing reaches the app");
    assert_eq!(o.metric("outrider_refused_requests_total{reason=\"ambiguous_length\"}").await, Some(2.0));
    o.wait_log("the refusal's log line", |l| l.contains("ambiguous_length") && l.contains("refused a request head")).await;

    // A chunked request on its own is served as before.
    let chunked = b"POST /count HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
    let (status, _, text) = one_write(o.listen, chunked).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(app.count(), 1);
}

/// A request claiming to have come over HTTPS from 203.0.113.1.
const SPOOFED: &[u8] = b"GET /who HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\
    x-forwarded-proto: https\r\nx-forwarded-for: 203.0.113.1\r\nx-forwarded-host: bank.example\r\n\
    x-forwarded-port: 443\r\nforwarded: for=203.0.113.1;proto=https\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_clients_forwarding_headers_are_replaced_unless_it_is_a_trusted_proxy() {
    let app = App::start().await;
    let o = outrider(&app.url()).start().await;
    let (status, _, _) = one_write(o.listen, SPOOFED).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "http", "plain HTTP, whatever the client says");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
    assert_eq!(seen.headers["x-forwarded-port"], o.listen.port().to_string().as_str());
    assert!(!seen.headers.contains_key("forwarded"));

    // The same request from a trusted front proxy (loopback here).
    let trusted = outrider(&app.url()).env("OUTRIDER_TRUSTED_PROXIES", "127.0.0.0/8").env("OUTRIDER_FORWARDED", "true").start().await;
    let (status, _, _) = one_write(trusted.listen, SPOOFED).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https", "the front proxy terminated TLS; its word stands");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.1, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], "bank.example");
    assert_eq!(seen.headers["x-forwarded-port"], "443");
    assert_eq!(seen.headers["forwarded"], "for=203.0.113.1;proto=https, for=127.0.0.1;proto=http;host=\"shop.example\"");
    let line = trusted.wait_log("the access line", |l| l.contains("\"path\":\"/who\"")).await;
    assert!(line.contains("\"client\":\"203.0.113.1\""), "the access log names the client behind the proxy: {line}");
}
