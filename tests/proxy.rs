//! The request path, end to end: real outrider binary, real app on loopback.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn get_and_post_round_trip_with_headers_and_body_intact() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;

    let (status, headers, body) = send(
        &client(),
        Request::get(proxy.url("/some/path?q=1&r=%20x"))
            .header("x-custom", "value-1")
            .header("user-agent", "itest")
            .body(full(""))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "hello from app");
    assert_eq!(headers["x-app"], "yes", "response headers from the app pass through");
    let seen = app.last();
    assert_eq!(seen.uri, "/some/path?q=1&r=%20x", "path and query are forwarded verbatim");
    assert_eq!(seen.headers["x-custom"], "value-1");
    assert_eq!(seen.headers["user-agent"], "itest");
    assert_eq!(seen.headers["host"], proxy.listen.to_string(), "Host is preserved");

    let payload = Bytes::from_static(b"{\"name\":\"outrider\",\"bytes\":\"\x00\x01\xff\"}");
    let (status, _, body) =
        send(&client(), Request::post(proxy.url("/echo")).header("content-type", "application/json").body(full(payload.clone())).unwrap())
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, payload);
    assert_eq!(app.last().method, "POST");
    assert_eq!(app.last().headers["content-type"], "application/json");
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_32_mib_both_ways_in_bounded_memory() {
    const SIZE: usize = 32 << 20;
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;
    let rss_before = proxy.peak_rss_kib();

    // Upload: streamed from the client, counted by the app.
    let (status, _, body) = send(&client(), Request::post(proxy.url("/count")).body(pattern_body(SIZE)).unwrap()).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, SIZE.to_string());
    assert_eq!(app.last().headers.get("transfer-encoding").map(|v| v.to_str().unwrap()), Some("chunked"), "a chunked upload stays chunked");

    // Download: streamed by the app, checked byte for byte here.
    let response = client().request(Request::get(proxy.url(&format!("/bytes/{SIZE}"))).body(full("")).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut expected = pattern(SIZE).flat_map(|b| b.to_vec());
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            for byte in data.iter() {
                assert_eq!(Some(*byte), expected.next(), "byte {received} differs");
                received += 1;
            }
        }
    }
    assert_eq!(received, SIZE);

    // A proxy that buffered either body would have grown by at least 32 MiB.
    let grown = proxy.peak_rss_kib().saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "peak RSS grew by {grown} KiB while streaming 2 x 32 MiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn strips_hop_by_hop_headers_and_replaces_an_untrusted_clients_forwarded_headers() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;
    let response = raw(
        proxy.listen,
        b"GET /h HTTP/1.1\r\nHost: shop.example\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nTE: gzip\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-End: kept\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = app.last();
    for hop in ["x-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(!seen.headers.contains_key(hop), "{hop} reached the app: {:?}", seen.headers);
    }
    assert_ne!(seen.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close, X-Hop"));
    assert_eq!(seen.headers["x-end"], "kept");
    assert_eq!(seen.headers["host"], "shop.example");
    // The client is not a trusted proxy: what it claimed is replaced
    // (tests/forwarding.rs has the trusted case).
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_echoes_through_the_proxy() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.listen)).await.unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        let text = format!("ping {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();
    assert_eq!(app.last().headers["upgrade"], "websocket");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_client_reaches_http1_app() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;
    let response = h2c_client().request(Request::post(proxy.url("/echo")).body(full("over h2")).unwrap()).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "over h2");
    let seen = app.last();
    assert_eq!(seen.version, Version::HTTP_11, "HTTP/1.1 to the app by default");
    assert_eq!(seen.headers["host"], proxy.listen.to_string(), "the :authority becomes Host");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_to_the_app_when_configured() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_UPSTREAM_PROTOCOL", "http2").start().await;
    let (status, _, body) = get(&proxy.url("/x")).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"hello from app"[..]));
    assert_eq!(app.last().version, Version::HTTP_2);
}

/// Over HTTP/2 the error that cuts a request body does not come back with
/// the failed exchange: outrider must still answer 413 for its own limit,
/// not a 502 that blames the app.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_413_over_http2_to_the_app_too() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_UPSTREAM_PROTOCOL", "http2").env("OUTRIDER_MAX_BODY_BYTES", "1024").start().await;
    // Chunked, so the limit is met while streaming rather than by Content-Length.
    let (status, _, body) = send(&client(), Request::post(proxy.url("/count")).body(pattern_body(64 * 1024)).unwrap()).await.unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let line = proxy.wait_log("the upstream failure line", |l| l.contains("upstream request failed")).await;
    assert!(line.contains("payload_too_large"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trailers_and_expect_continue_pass_through() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;

    let response = raw(proxy.listen, b"GET /trailers HTTP/1.1\r\nHost: t\r\nTE: trailers\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{response}");
    assert!(response.contains("part1,"), "{response}");
    assert!(response.to_ascii_lowercase().contains("x-checksum: abc123"), "trailer lost: {response}");

    // Expect: 100-continue: the client waits for the interim response before
    // sending its body, as curl does.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    stream
        .write_all(b"POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"), "{}", String::from_utf8_lossy(&buf[..n]));
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await.unwrap().unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("200 OK") && rest.ends_with("5"), "{rest}");
}

#[tokio::test(flavor = "multi_thread")]
async fn app_down_gives_502_with_a_reason() {
    // Nothing listens there, and nothing can while the guard lives.
    let (down, _guard) = refused_addr();
    let port = down.port();
    // With buffering off, a refused connection is answered at once, not
    // retried until the (long) connect timeout runs out.
    let proxy = outrider(&format!("http://127.0.0.1:{port}"))
        .env("OUTRIDER_BUFFER_TIMEOUT", "0")
        .env("OUTRIDER_UPSTREAM_CONNECT_TIMEOUT", "30s")
        .start()
        .await;
    let started = Instant::now();
    let (status, headers, body) = get(&proxy.url("/")).await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(String::from_utf8_lossy(&body).contains("refused"), "{body:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "502 after {:?}", started.elapsed());
    proxy
        .wait_log("the upstream failure log line", |l| l.contains("upstream request failed") && l.contains("\"error.kind\":\"connect\""))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_app_gives_504_after_the_request_timeout() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_REQUEST_TIMEOUT", "300ms").start().await;
    let started = Instant::now();
    // The app would answer after a minute; the 504 comes at the timeout.
    let (status, _, body) = get(&proxy.url("/slow/60000")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(String::from_utf8_lossy(&body).contains("did not answer in time"), "{body:?}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "took {took:?}");
    // A fast request on the same proxy is unaffected.
    assert_eq!(get(&proxy.url("/slow/10")).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_upstream() {
    let dir = std::env::temp_dir().join(format!("outrider-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { break };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full(format!("unix {}", req.uri().path()))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    let proxy = outrider(&format!("unix:{}", path.display())).start().await;
    let (status, _, body) = get(&proxy.url("/over/uds")).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"unix /over/uds"[..]));
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connections_to_the_app_are_pooled() {
    use std::sync::atomic::Ordering::SeqCst;
    let app = App::start().await;
    // No health check connection during the requests below.
    let proxy = outrider(&app.url()).env("OUTRIDER_APP_HEALTH_INTERVAL", "60s").start().await;
    // Ready: the first check has been made; the next is a minute away.
    wait_status(&proxy.admin_url("/readyz"), 200).await;
    let client = client();
    let accepted_before = app.accepted.load(SeqCst);
    for _ in 0..20 {
        assert_eq!(send(&client, Request::get(proxy.url("/")).body(full("")).unwrap()).await.unwrap().0, 200);
    }
    // Connections the app accepted: one per request without pooling (also
    // when each is closed after its response, which the socket count below
    // would not see).
    let opened = app.accepted.load(SeqCst) - accepted_before;
    assert!((1..=2).contains(&opened), "{opened} connections opened to the app for 20 sequential requests");
    // And none piles up: count the sockets towards the app in the kernel's own table.
    let conns = established_to(app.addr.port());
    assert!(conns <= 2, "{conns} connections to the app for 20 sequential requests");
}

/// An app whose keep-alive timeout is short (200 ms) and that closes idle
/// connections without warning: pooled connections die while idle. No
/// client request may fail for it, and the sockets the app closed must not
/// linger half-closed on outrider's side.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_closing_idle_keep_alive_connections_costs_no_request() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const APP_KEEP_ALIVE: Duration = Duration::from_millis(200);
    // Connections the app has closed (all of them, in the end: it closes
    // every connection that idles).
    let closed = Arc::new(AtomicUsize::new(0));
    let app_closed = closed.clone();
    let (port, accepted) = raw_app(move |mut stream, counter| {
        let closed = app_closed.clone();
        async move {
            counter.fetch_add(1, SeqCst);
            let mut chunk = [0u8; 1024];
            'conn: loop {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    // Idle (or slow) for its keep-alive timeout: close.
                    match tokio::time::timeout(APP_KEEP_ALIVE, stream.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
                        _ => break 'conn,
                    }
                }
                if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                    break;
                }
            }
            drop(stream);
            closed.fetch_add(1, SeqCst);
        }
    })
    .await;
    let proxy = outrider(&format!("http://127.0.0.1:{port}")).env("OUTRIDER_UPSTREAM_POOL_IDLE_TIMEOUT", "1s").start().await;
    let client = client();
    // Well inside the app's timeout (the connection is reused) and past
    // it (the app has closed it; outrider must notice, not fail). Right at
    // the timeout a request can cross the app's close on the wire, which
    // no proxy can tell from a failure; not tested here. A pause can only
    // come out longer than asked, so "past" holds on any machine and
    // "inside" has 200 ms to spare.
    let past = APP_KEEP_ALIVE.as_millis() as u64 + 100;
    for pause_ms in [0u64, 5, past, 0, past, 5, 0, past] {
        let (status, _, body) = send(&client, Request::get(proxy.url("/")).body(full("")).unwrap()).await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"ok"[..]), "after a {pause_ms} ms pause");
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
    let opened = accepted.load(SeqCst);
    assert!((2..8).contains(&opened), "{opened} app connections for 8 requests: pooling or close detection is off");
    // Connections the app closed are dropped by the pool's sweep, not kept
    // half-closed until the next request: once the app has closed every
    // connection, outrider holds none of them half-closed.
    wait_until("the app to close its idle connections", || closed.load(SeqCst) == accepted.load(SeqCst)).await;
    eventually("closed app connections released", || async { (close_wait_to(port) == 0).then_some(()) }).await;
}

/// The keep-alive race: the app closes a connection that has idled (its
/// keep-alive timeout) just as the next request reaches it, so the request
/// gets no answer. An idempotent request without a body is sent again on a
/// new connection; a POST is not (it may have taken effect) and gets 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_get_that_crosses_the_apps_keep_alive_close_is_sent_again_a_post_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (port, accepted) = raw_app(|mut stream, counter| async move {
        let mut chunk = [0u8; 4096];
        let mut idle_since = Instant::now();
        // Connections that carried a request (outrider's health
        // checks open others).
        let mut first = true;
        loop {
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            if std::mem::take(&mut first) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            // Idle past its keep-alive timeout: this request crossed
            // the close. Read, then close without an answer.
            if idle_since.elapsed() >= Duration::from_millis(400) {
                return;
            }
            if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                return;
            }
            idle_since = Instant::now();
        }
    })
    .await;
    let proxy = outrider(&format!("http://127.0.0.1:{port}")).start().await;
    let client = client();
    let opened = || accepted.load(std::sync::atomic::Ordering::SeqCst);
    let (status, _, _) = send(&client, Request::get(proxy.url("/first")).body(full("")).unwrap()).await.unwrap();
    assert_eq!((status, opened()), (200, 1));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, body) = send(&client, Request::get(proxy.url("/again")).body(full("")).unwrap()).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"ok"[..]), "the GET was not sent again");
    assert_eq!(opened(), 2, "the GET should have been sent again on one new connection");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _) = send(&client, Request::post(proxy.url("/once")).body(full("x")).unwrap()).await.unwrap();
    assert_eq!(status, 502, "a POST must not be sent twice");
    assert_eq!(opened(), 2, "the POST was sent again");
}

/// A hand-written app on loopback: `serve` runs for each accepted
/// connection, with a counter it may bump. Returns the port and the counter.
async fn raw_app<F, Fut>(serve: F) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let shared = counter.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, shared.clone()));
        }
    });
    (port, counter)
}

/// Established TCP connections whose peer port is `port`, from /proc.
fn established_to(port: u16) -> usize {
    sockets_to(port, "01")
}

/// Sockets in CLOSE_WAIT (the peer closed, we have not) towards `port`.
fn close_wait_to(port: u16) -> usize {
    sockets_to(port, "08")
}

/// Sockets towards `port` in the kernel's TCP `state` (hex, as /proc shows it).
fn sockets_to(port: u16, state: &str) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[3] == state && cols[2].ends_with(&format!(":{port:04X}"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_upload_cancels_the_request_at_the_app() {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::AsyncWriteExt;
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;
    for (head, part) in [
        (&b"POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"[..], &[7u8; 5000][..]),
        (&b"POST /count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"[..], &b"1000\r\n0123456789"[..]),
    ] {
        let before = app.count();
        let mut stream = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
        stream.write_all(head).await.unwrap();
        stream.write_all(part).await.unwrap();
        eventually("the app to receive the request", || {
            let n = app.count();
            async move { (n > before).then_some(()) }
        })
        .await;
        drop(stream);
    }
    eventually("the app to see both bodies cut", || {
        let n = app.aborted.load(SeqCst);
        async move { (n == 2).then_some(()) }
    })
    .await;
    assert_eq!(app.completed.load(SeqCst), 0, "a truncated body reached the app as complete");
    // The proxy is unharmed.
    assert_eq!(get(&proxy.url("/")).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_one_cpu_the_single_threaded_runtime_serves_h1_h2_and_upgrades() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).one_cpu().start().await;
    let (status, _, body) = send(&client(), Request::post(proxy.url("/echo")).body(pattern_body(1 << 20)).unwrap()).await.unwrap();
    assert_eq!((status, body.len()), (200, 1 << 20));
    let response = h2c_client().request(Request::get(proxy.url("/")).body(full("")).unwrap()).await.unwrap();
    assert_eq!((response.version(), response.status().as_u16()), (Version::HTTP_2, 200));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.listen)).await.unwrap();
    ws.send(Message::text("one cpu")).await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "one cpu");
}

/// A keep-alive connection that sits idle gives hyper's buffers back
/// ("parks") and goes on serving: a request head cut in two around the
/// park, a request after a long pause, and an upgrade all work on the same
/// connection, and the idle bound still closes it in the end.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_parks_and_keeps_serving() {
    use tokio::io::AsyncWriteExt;
    let app = App::start().await;
    let proxy =
        outrider(&app.url()).env("OUTRIDER_LOG", "info,outrider::server=trace").env("OUTRIDER_HEADER_READ_TIMEOUT", "2s").start().await;
    let parks = || proxy.logs().iter().filter(|l| l.contains("idle; parking")).count();
    let mut conn = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    conn.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut conn).await, (200, "hello from app".to_string()));

    // Half a head now: hyper has read it when the connection parks, and
    // must find it again afterwards.
    conn.write_all(b"GET /b HTTP/1.1\r\nHo").await.unwrap();
    eventually("the connection parks", || async { (parks() >= 1).then_some(()) }).await;
    conn.write_all(b"st: t\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut conn).await, (200, "hello from app".to_string()));
    assert_eq!(app.last().uri, "/b");

    // Parked again, then upgraded.
    eventually("the connection parks again", || async { (parks() >= 2).then_some(()) }).await;
    let (mut ws, response) = tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.listen), conn).await.unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("after a park")).await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "after a park");
    ws.close(None).await.unwrap();

    // A parked connection is still closed by the idle bound (2 s here),
    // counted from its response (after `idle_from`). The default bound is
    // 10 s: closed within 2 + 5 s, it was this setting that closed it.
    const IDLE_BOUND: Duration = Duration::from_secs(2);
    let mut conn = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    let idle_from = Instant::now();
    conn.write_all(b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut conn).await.0, 200);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(IDLE_BOUND + Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "an idle connection is closed, without a response: {read:?}");
    let idle = idle_from.elapsed();
    assert!(idle >= IDLE_BOUND, "closed after {idle:?}, before the 2 s idle bound");
}
