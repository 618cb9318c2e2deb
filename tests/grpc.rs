//! gRPC end to end: a real tonic service (`common::grpc`) behind the real
//! outrider binary, called with a tonic client, every call compared with
//! the same call made to the app directly. Every outrider here runs on
//! the default settings for the protocol to the app: a gRPC-only app, a
//! mixed app and an HTTP/1-only app must all work with no setting.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{grpc::*, otlp_tls::Pki, *};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;
use tonic_types::StatusExt;

async fn grpc_app() -> (EchoApp, Outrider) {
    let app = EchoApp::grpc().await;
    let proxy = outrider(&app.url()).start().await;
    (app, proxy)
}

/// An authority no socket address could produce: if the app sees it, the
/// client's `:authority` came through unchanged.
const ORIGIN: &str = "http://echo.example:50051";
const AUTHORITY: &str = "echo.example:50051";

fn message(text: &str) -> EchoRequest {
    EchoRequest { text: text.into(), ..EchoRequest::default() }
}

/// The app directly, then outrider: the two places every call is made.
fn targets(app: &EchoApp, proxy: &Outrider) -> [(&'static str, String); 2] {
    [("direct", app.url()), ("through outrider", proxy.url(""))]
}

// ===== every kind of call: the same result through outrider as direct =====

#[tokio::test(flavor = "multi_thread")]
async fn unary_call_gives_the_same_reply_through_outrider_as_direct() {
    let (app, proxy) = grpc_app().await;
    let mut replies = Vec::new();
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, None, None).await;
        let mut request = tonic::Request::new(EchoRequest {
            payload: Bytes::from_static(b"\x00\x01 binary \xff"),
            text: "h\u{e9}llo".into(),
            ..EchoRequest::default()
        });
        request.metadata_mut().insert(METADATA_KEY, "from-the-client".parse().unwrap());
        let reply = client.echo(request).await.unwrap_or_else(|s| panic!("{target}: {s:?}")).into_inner();
        assert_eq!(reply.version, "HTTP/2.0", "{target}: gRPC reaches the app over HTTP/2");
        replies.push(reply.content());
    }
    assert_eq!(replies[0], replies[1]);
    assert_eq!(replies[1].3, "from-the-client", "request metadata reaches the app");
}

/// `OUTRIDER_UPSTREAM_PROTOCOL=http2` still forces HTTP/2 for everything,
/// for an h2c-only app whose clients are not all gRPC.
#[tokio::test(flavor = "multi_thread")]
async fn forcing_http2_still_serves_a_grpc_app() {
    let app = EchoApp::grpc().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_UPSTREAM_PROTOCOL", "http2").start().await;
    let mut client = connect(&proxy.url(""), Some(ORIGIN), None).await;
    let reply = client.echo(message("forced")).await.unwrap().into_inner();
    assert_eq!((reply.text.as_str(), reply.version.as_str()), ("forced", "HTTP/2.0"));
    assert_eq!(reply.authority, AUTHORITY, "the client's :authority is kept when forced too");
    let mut stream = client.countdown(EchoRequest { count: 2, ..message("tick") }).await.unwrap().into_inner();
    assert_eq!(next(&mut stream, "a tick").await.unwrap().seq, 0);
    assert_eq!(next(&mut stream, "a tick").await.unwrap().seq, 1);
    assert!(next(&mut stream, "the end").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_sees_the_authority_the_grpc_client_sent() {
    let (app, proxy) = grpc_app().await;
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, Some(ORIGIN), None).await;
        let reply = client.echo(message("who am I talking to")).await.unwrap().into_inner();
        assert_eq!(reply.authority, AUTHORITY, "{target}: the app sees the client's :authority");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_stream_gives_the_same_messages_through_outrider_as_direct() {
    let (app, proxy) = grpc_app().await;
    let mut streams = Vec::new();
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, None, None).await;
        let request =
            EchoRequest { count: 5, gap_ms: 10, text: "tick".into(), payload: Bytes::from_static(b"\x07"), ..EchoRequest::default() };
        let mut stream = client.countdown(request).await.unwrap_or_else(|s| panic!("{target}: {s:?}")).into_inner();
        let mut messages = Vec::new();
        while let Some(m) = next(&mut stream, "the next stream message").await {
            messages.push(m.content());
        }
        assert_eq!(messages.iter().map(|m| m.2).collect::<Vec<_>>(), [0, 1, 2, 3, 4], "{target}");
        streams.push(messages);
    }
    assert_eq!(streams[0], streams[1]);
}

/// Each message of a gated stream is sent only once the test has seen the
/// previous one: a proxy that held messages back would hang here (and fail
/// after `PATIENCE`), whatever the machine's speed.
#[tokio::test(flavor = "multi_thread")]
async fn server_stream_messages_arrive_one_by_one_as_the_app_sends_them() {
    let (app, proxy) = grpc_app().await;
    for (target, url) in targets(&app, &proxy) {
        let before = app.sent().len();
        let mut client = connect(&url, None, None).await;
        let request = EchoRequest { count: 3, gated: true, ..EchoRequest::default() };
        let mut stream = client.countdown(request).await.unwrap().into_inner();
        for seq in 0..3u32 {
            let m = next(&mut stream, &format!("{target}: message {seq}")).await.expect("a message");
            assert_eq!(m.seq, seq);
            assert_eq!(app.sent().len() - before, seq as usize + 1, "{target}: message {seq} arrived before message {} was sent", seq + 1);
            if seq < 2 {
                app.release();
            }
        }
        assert!(next(&mut stream, "the end of the stream").await.is_none());
        assert!(stream.trailers().await.is_ok(), "{target}: the stream ends with status OK");
    }
}

/// The issue's own wording: the first message of a slow server stream
/// arrives before the last one is sent. Asserted on the order the app
/// recorded, not on a clock: 4 messages 700 ms apart leave over 2 s for
/// the first to arrive before the last exists.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_message_of_a_slow_server_stream_arrives_before_the_last_is_sent() {
    let (app, proxy) = grpc_app().await;
    let mut client = connect(&proxy.url(""), None, None).await;
    let mut stream = client.countdown(EchoRequest { count: 4, gap_ms: 700, ..EchoRequest::default() }).await.unwrap().into_inner();
    let first = next(&mut stream, "the first message").await.unwrap();
    assert_eq!(first.seq, 0);
    let sent = app.sent();
    assert!(!sent.contains(&3), "the first message arrived only after the last was sent: {sent:?}");
    let mut n = 1;
    while next(&mut stream, "the next message").await.is_some() {
        n += 1;
    }
    assert_eq!(n, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_stream_gives_the_same_result_through_outrider_as_direct() {
    let (app, proxy) = grpc_app().await;
    let mut results = Vec::new();
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, None, None).await;
        let parts = ["one,", "two,", "three"].map(|t| EchoRequest {
            text: t.into(),
            payload: Bytes::from(t.len().to_string()),
            ..EchoRequest::default()
        });
        let reply = client.sum(tonic::Request::new(futures_util::stream::iter(parts))).await.unwrap_or_else(|s| panic!("{target}: {s:?}"));
        let reply = reply.into_inner();
        assert_eq!((reply.text.as_str(), reply.seq), ("one,two,three", 3), "{target}");
        results.push(reply.content());
    }
    assert_eq!(results[0], results[1]);
}

/// Bidirectional ping-pong: each message is sent only after the answer to
/// the previous one came back, so any buffering on the way hangs the test.
#[tokio::test(flavor = "multi_thread")]
async fn bidirectional_stream_ping_pong_through_outrider_as_direct() {
    let (app, proxy) = grpc_app().await;
    let mut conversations = Vec::new();
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, None, None).await;
        let (tx, messages) = feed();
        tx.send(message("ping 0")).unwrap();
        let mut replies = client.chat(tonic::Request::new(messages)).await.unwrap_or_else(|s| panic!("{target}: {s:?}")).into_inner();
        let mut conversation = Vec::new();
        for round in 0..5u32 {
            let reply = next(&mut replies, &format!("{target}: the answer to ping {round}")).await.expect("an answer");
            assert_eq!((reply.seq, reply.text.as_str()), (round, format!("ping {round}").as_str()), "{target}");
            conversation.push(reply.content());
            if round < 4 {
                tx.send(message(&format!("ping {}", round + 1))).unwrap();
            }
        }
        drop(tx);
        assert!(next(&mut replies, "the end of the conversation").await.is_none(), "{target}");
        assert!(replies.trailers().await.is_ok(), "{target}: the call ends with status OK");
        conversations.push(conversation);
    }
    assert_eq!(conversations[0], conversations[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4_mib_message_passes_both_ways() {
    const SIZE: usize = 4 << 20;
    let payload: Bytes = pattern(SIZE).flat_map(|b| b.to_vec()).collect::<Vec<u8>>().into();
    let (app, proxy) = grpc_app().await;
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, None, None).await;
        let reply = client
            .echo(EchoRequest { payload: payload.clone(), ..EchoRequest::default() })
            .await
            .unwrap_or_else(|s| panic!("{target}: {s:?}"))
            .into_inner();
        assert_eq!(reply.payload.len(), SIZE, "{target}");
        assert!(reply.payload == payload, "{target}: the 4 MiB message came back intact");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_with_details_in_trailers_decodes_the_same_through_outrider() {
    let (app, proxy) = grpc_app().await;
    let mut errors = Vec::new();
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, None, None).await;
        let status = client.fail(message("")).await.expect_err("Fail fails");
        let decoded = status.check_error_details().unwrap_or_else(|e| panic!("{target}: undecodable details: {e}"));
        let violations = &decoded.bad_request().expect("a BadRequest").field_violations;
        assert_eq!((violations[0].field.as_str(), violations[0].description.as_str()), ("name", "must not be empty"), "{target}");
        assert_eq!(decoded.retry_info().expect("a RetryInfo").retry_delay, Some(Duration::from_secs(3)), "{target}");
        errors.push((status.code(), status.message().to_owned(), details(&status)));
    }
    assert_eq!(errors[0], errors[1]);
    assert_eq!(errors[1].0, Code::InvalidArgument);
    assert_eq!(errors[1].1, failure().message());
}

// ===== cancellation and failures =====

/// A call dropped by the client (a unary call, a server stream, a
/// bidirectional stream cancelled mid-way) reaches the app: its handler
/// is dropped unfinished. Direct first, which shows the app notices.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_cancel_reaches_the_app() {
    let (app, proxy) = grpc_app().await;
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, None, None).await;

        let (started, cancelled) = (app.started(), app.cancelled());
        let mut caller = client.clone();
        let call = tokio::spawn(async move { caller.slow(EchoRequest { gap_ms: 120_000, ..EchoRequest::default() }).await });
        wait_until(&format!("{target}: the slow handler to start"), || app.started() > started).await;
        call.abort();
        wait_until(&format!("{target}: the dropped unary call to reach the app"), || app.cancelled() > cancelled).await;

        let cancelled = app.cancelled();
        let mut stream = client.countdown(EchoRequest { count: 3, gated: true, ..EchoRequest::default() }).await.unwrap().into_inner();
        next(&mut stream, "the first message").await.expect("a message");
        drop(stream);
        wait_until(&format!("{target}: the dropped server stream to reach the app"), || app.cancelled() > cancelled).await;

        let cancelled = app.cancelled();
        let (tx, messages) = feed();
        tx.send(message("ping")).unwrap();
        let mut request = tonic::Request::new(messages);
        let cancel = request.cancellation_handle();
        let mut replies = client.chat(request).await.unwrap().into_inner();
        next(&mut replies, "the first answer").await.expect("an answer");
        cancel.cancel();
        drop(replies);
        wait_until(&format!("{target}: the cancelled bidirectional stream to reach the app"), || app.cancelled() > cancelled).await;
        // The request stream stayed open: only the cancel ended the call.
        drop(tx);
    }
}

/// The raw answer outrider gives a gRPC request it cannot forward: HTTP 200,
/// `application/grpc`, the status in the headers and no body
/// (trailers-only), as a gRPC client of any language expects.
async fn grpc_error_from_outrider(proxy: &Outrider) -> (u16, http::HeaderMap, Bytes) {
    let request = Request::post(proxy.url("/outrider.test.Echo/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, h2c_client().request(request)).await.expect("an answer in time").unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let mut headers = parts.headers;
    if let Some(trailers) = collected.trailers() {
        headers.extend(trailers.clone());
    }
    (parts.status.as_u16(), headers, collected.to_bytes())
}

fn assert_trailers_only(what: &str, (status, headers, body): &(u16, http::HeaderMap, Bytes), code: Code) {
    assert_eq!(*status, 200, "{what}: a gRPC answer is HTTP 200 ({headers:?})");
    assert!(headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")), "{what}: {headers:?}");
    assert_eq!(headers.get("grpc-status").map(|v| v.to_str().unwrap().to_owned()), Some((code as i32).to_string()), "{what}: {headers:?}");
    assert!(headers.contains_key("grpc-message"), "{what}: a grpc-message says why ({headers:?})");
    assert!(body.is_empty(), "{what}: trailers-only, no body");
}

async fn free_port() -> std::net::SocketAddr {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn app_down_is_unavailable() {
    // Nothing listening, requests not held: refused at once.
    let nowhere = free_port().await;
    let proxy = outrider(&format!("http://{nowhere}")).env("OUTRIDER_BUFFER_MAX", "0").start().await;
    let status = connect(&proxy.url(""), None, None).await.echo(message("anyone?")).await.expect_err("nobody answers");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_trailers_only("app down", &grpc_error_from_outrider(&proxy).await, Code::Unavailable);

    // Nothing listening, requests held until the buffer timeout.
    let held = outrider(&format!("http://{nowhere}")).env("OUTRIDER_BUFFER_TIMEOUT", "1s").start().await;
    let status = connect(&held.url(""), None, None).await.echo(message("anyone?")).await.expect_err("nobody answers");
    assert_eq!(status.code(), Code::Unavailable, "held too long: {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_stops_is_unavailable() {
    let app = EchoApp::grpc().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_BUFFER_MAX", "0").start().await;
    let mut client = connect(&proxy.url(""), None, None).await;
    client.echo(message("still there?")).await.expect("the app answers while up");
    app.stop();
    let status = client.echo(message("still there?")).await.expect_err("the app is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// The slow handler ignores deadlines, as a legacy app may: the client's
/// `grpc-timeout` must bound outrider's wait, and outrider must let the
/// app's handler go. The client is a plain h2c one (tonic's `Channel`
/// enforces the timeout itself and would race outrider's answer).
#[tokio::test(flavor = "multi_thread")]
async fn a_missed_grpc_deadline_is_deadline_exceeded_and_the_app_is_let_go() {
    let (app, proxy) = grpc_app().await;
    let mut client = raw_client(&proxy.url(""));
    let mut request = tonic::Request::new(EchoRequest { gap_ms: 120_000, ..EchoRequest::default() });
    request.set_timeout(Duration::from_secs(1));
    let status = tokio::time::timeout(PATIENCE, client.slow(request))
        .await
        .expect("outrider answered once the client's 1 s deadline passed")
        .expect_err("the deadline is missed");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    wait_until("the app's handler to be dropped", || app.cancelled() >= 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outriders_own_request_timeout_is_deadline_exceeded() {
    let app = EchoApp::grpc().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_REQUEST_TIMEOUT", "1s").start().await;
    let mut client = raw_client(&proxy.url(""));
    let status = tokio::time::timeout(PATIENCE, client.slow(EchoRequest { gap_ms: 120_000, ..EchoRequest::default() }))
        .await
        .expect("outrider answered once its 1 s request timeout passed")
        .expect_err("the app is too slow");
    wait_until("the app's handler to be dropped", || app.cancelled() >= 1).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

/// A client stream that goes quiet before the app has answered is cut by
/// `OUTRIDER_REQUEST_BODY_IDLE_TIMEOUT`: DEADLINE_EXCEEDED to the client,
/// and the app's handler is let go.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_stream_that_stalls_before_the_answer_is_deadline_exceeded() {
    let app = EchoApp::grpc().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_REQUEST_BODY_IDLE_TIMEOUT", "1s").start().await;
    let mut client = raw_client(&proxy.url(""));
    let (tx, messages) = feed();
    tx.send(message("and then nothing")).unwrap();
    let status = tokio::time::timeout(PATIENCE, client.sum(tonic::Request::new(messages)))
        .await
        .expect("outrider answered once the stream had been quiet for 1 s")
        .expect_err("the stream stalled");
    wait_until("the app's handler to be dropped", || app.cancelled() >= 1).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(tx);
}

/// A message over `OUTRIDER_MAX_BODY_BYTES` is RESOURCE_EXHAUSTED to a
/// gRPC client (413 to others), not an HTTP status it cannot read.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_too_large_is_resource_exhausted() {
    let app = EchoApp::grpc().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_MAX_BODY_BYTES", "1024").start().await;
    let mut client = connect(&proxy.url(""), None, None).await;
    let large = EchoRequest { payload: Bytes::from(vec![7u8; 4096]), ..EchoRequest::default() };
    let status = client.echo(large).await.expect_err("a 4 KiB message over a 1 KiB limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let small = client.echo(message("small")).await.expect("a message under the limit passes");
    assert_eq!(small.into_inner().text, "small");
}

/// A call shed by `OUTRIDER_MAX_INFLIGHT` is RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread")]
async fn a_shed_call_is_resource_exhausted() {
    let app = EchoApp::grpc().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_MAX_INFLIGHT", "1").start().await;
    let mut client = connect(&proxy.url(""), None, None).await;
    let mut caller = client.clone();
    let slow = tokio::spawn(async move { caller.slow(EchoRequest { gap_ms: 120_000, ..EchoRequest::default() }).await });
    wait_until("the slow call to hold the only slot", || app.started() >= 1).await;
    let status = client.echo(message("one too many")).await.expect_err("shed");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    slow.abort();
}

// ===== a mixed app (gRPC + HTTP + WebSocket on one port), default settings =====

async fn mixed_app() -> (EchoApp, Outrider) {
    let app = EchoApp::mixed().await;
    let proxy = outrider(&app.url()).start().await;
    (app, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_app_with_default_settings_serves_grpc() {
    let (app, proxy) = mixed_app().await;
    let mut results = Vec::new();
    for (target, url) in targets(&app, &proxy) {
        let mut client = connect(&url, Some(ORIGIN), None).await;
        let reply = client.echo(message("mixed")).await.unwrap_or_else(|s| panic!("{target}: {s:?}")).into_inner();
        assert_eq!(reply.authority, AUTHORITY, "{target}: the app sees the client's :authority");
        assert_eq!(reply.version, "HTTP/2.0", "{target}");

        let mut stream = client.countdown(EchoRequest { count: 3, ..message("tick") }).await.unwrap().into_inner();
        let mut ticks = Vec::new();
        while let Some(m) = next(&mut stream, "a tick").await {
            ticks.push(m.content());
        }

        let (tx, messages) = feed();
        tx.send(message("ping")).unwrap();
        let mut replies = client.chat(tonic::Request::new(messages)).await.unwrap().into_inner();
        let pong = next(&mut replies, "the answer to ping").await.unwrap();
        tx.send(message("ping again")).unwrap();
        let pong_again = next(&mut replies, "the second answer").await.unwrap();
        drop(tx);
        assert!(next(&mut replies, "the end").await.is_none());

        let error = client.fail(message("")).await.expect_err("Fail fails");
        results.push((reply.content(), ticks, pong.content(), pong_again.content(), error.code(), details(&error)));
    }
    assert_eq!(results[0], results[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_app_with_default_settings_serves_http1() {
    let (_app, proxy) = mixed_app().await;
    let (status, _, body) =
        send(&client(), Request::get(proxy.url("/hello")).header("host", "web.example:8000").body(full("")).unwrap()).await.unwrap();
    assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, "web.example:8000 HTTP/1.1"), "the app sees the client's Host");
}

/// An h2c GET with an authority of its own, on a connection opened by hand
/// (a pooled client would resolve the authority instead of outrider's address).
async fn h2c_get(addr: std::net::SocketAddr, authority: &str, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("http://{authority}{path}")).body(full("")).unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request)).await.expect("an answer in time").unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP/2 client's plain request goes to the app as HTTP/1.1 (with its
/// `:authority` as `Host`): the default keeps non-gRPC traffic on the
/// protocol every app speaks.
#[tokio::test(flavor = "multi_thread")]
async fn mixed_app_with_default_settings_serves_h2c_requests() {
    let (_app, proxy) = mixed_app().await;
    assert_eq!(h2c_get(proxy.listen, "web.example:8000", "/hello").await, (200, "web.example:8000 HTTP/1.1".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_app_with_default_settings_serves_websockets() {
    let (_app, proxy) = mixed_app().await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.listen)).await.unwrap();
    assert_eq!(response.status(), 101);
    for text in ["first", "second"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(PATIENCE, ws.next()).await.expect("an echo in time").unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.close(None).await.unwrap();
}

// ===== an HTTP/1-only app, default settings =====

#[tokio::test(flavor = "multi_thread")]
async fn an_http1_app_reached_by_an_h2c_client_gets_http1() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;
    let h2c = h2c_client();
    let (status, _, body) = send(&h2c, Request::get(proxy.url("/plain")).body(full("")).unwrap()).await.unwrap();
    assert_eq!((status, body.as_ref()), (200, b"hello from app".as_ref()));
    let seen = app.last();
    assert_eq!(seen.version, Version::HTTP_11, "outrider speaks HTTP/1.1 to the app");
    assert_eq!(seen.headers["host"], proxy.listen.to_string(), "the client's :authority becomes the Host");

    let (status, _, body) = send(&h2c, Request::post(proxy.url("/echo")).body(pattern_body(256 << 10)).unwrap()).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.iter().copied().eq(pattern(256 << 10).flat_map(|b| b.to_vec())), "a streamed body both ways");
    assert_eq!(app.last().version, Version::HTTP_11);
}

// ===== TLS =====

#[tokio::test(flavor = "multi_thread")]
async fn tls_from_the_client_with_alpn_h2_reaches_a_grpc_app() {
    let pki = Pki::new("grpc-listener");
    let app = EchoApp::grpc().await;
    let proxy = outrider(&app.url())
        .env("OUTRIDER_TLS_CERT", &pki.path("server.crt"))
        .env("OUTRIDER_TLS_KEY", &pki.path("server.key"))
        .start()
        .await;
    let mut direct = connect(&app.url(), None, None).await;
    let mut through = connect(&format!("https://localhost:{}", proxy.listen.port()), None, Some(&pki)).await;

    let request = || EchoRequest { payload: Bytes::from_static(b"over tls"), ..message("tls") };
    let (a, b) = (direct.echo(request()).await.unwrap().into_inner(), through.echo(request()).await.unwrap().into_inner());
    assert_eq!(a.content(), b.content());
    assert_eq!(b.version, "HTTP/2.0");

    let mut ticks = through.countdown(EchoRequest { count: 3, ..message("tick") }).await.unwrap().into_inner();
    for seq in 0..3 {
        assert_eq!(next(&mut ticks, "a tick").await.unwrap().seq, seq);
    }
    assert!(next(&mut ticks, "the end").await.is_none());

    let (a, b) = (direct.fail(message("")).await.unwrap_err(), through.fail(message("")).await.unwrap_err());
    assert_eq!((a.code(), details(&a)), (b.code(), details(&b)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_speaking_h2_serves_grpc() {
    let pki = Pki::new("grpc-upstream");
    let app = EchoApp::grpc_tls(&pki).await;
    let proxy = outrider(&app.url()).env("OUTRIDER_UPSTREAM_CA", &pki.path("ca.pem")).start().await;
    let mut direct = connect(&app.url(), None, Some(&pki)).await;
    let mut through = connect(&proxy.url(""), None, None).await;

    let request = || EchoRequest { payload: Bytes::from_static(b"to a tls app"), ..message("https upstream") };
    let (a, b) = (direct.echo(request()).await.unwrap().into_inner(), through.echo(request()).await.unwrap().into_inner());
    assert_eq!(a.content(), b.content());
    assert_eq!(b.version, "HTTP/2.0", "the app answered over h2");

    let (tx, messages) = feed();
    tx.send(message("ping")).unwrap();
    let mut replies = through.chat(tonic::Request::new(messages)).await.unwrap().into_inner();
    assert_eq!(next(&mut replies, "the answer").await.unwrap().text, "ping");
    tx.send(message("pong")).unwrap();
    assert_eq!(next(&mut replies, "the second answer").await.unwrap().text, "pong");
    drop(tx);
    assert!(next(&mut replies, "the end").await.is_none());

    let (a, b) = (direct.fail(message("")).await.unwrap_err(), through.fail(message("")).await.unwrap_err());
    assert_eq!((a.code(), details(&a)), (b.code(), details(&b)));
}
