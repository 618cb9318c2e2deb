//! The request path in-process: the proxy built from its options, called
//! through an in-memory connection (a hyper server on one end of a duplex,
//! calling the proxy's per-connection service with `oneshot`), in front of
//! a real app on loopback. No binary, no signals; each test states what a
//! client sees and what the app saw.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::connect::Connect;
use super::*;
use crate::{body::Counted, drain::Manual, health::Health, trust::TrustedProxies};

/// What the test app saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    heads: Mutex<Vec<http::request::Parts>>,
}

/// An HTTP/1 app on loopback: answers `ok` after `delay`, and records each
/// request head and connection.
async fn app(delay: Duration) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the app");
    let addr = listener.local_addr().expect("the app's address");
    let seen = Arc::new(Seen::default());
    let app_seen = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            app_seen.connections.fetch_add(1, Ordering::SeqCst);
            let seen = app_seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        seen.heads.lock().expect("not poisoned").push(parts);
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("ok {}", body.len())))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, seen)
}

/// An address nothing listens on.
async fn nothing_listening() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

fn options(app: SocketAddr) -> ProxyOptions {
    ProxyOptions {
        client: ClientOptions {
            target: Target::Tcp(app.to_string().into()),
            protocol: super::Protocol::Auto,
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 8,
            buffer: None,
            tls: None,
        },
        request_timeout: None,
        via: false,
        scheme: "http",
        max_inflight: 0,
        max_body_bytes: 0,
        client_cert_header: None,
        trusted_proxies: TrustedProxies::default(),
        forwarded: false,
        tunnel_idle_timeout: None,
        request_body_idle_timeout: None,
        response_body_idle_timeout: None,
        tunnel_idle_closed: None,
    }
}

fn build(options: &ProxyOptions) -> Proxy {
    let (_drain, watch) = Manual::new();
    let c = &options.client;
    let hold = Hold::new(Connect::new(c.target.clone(), c.connect_timeout, None), c.buffer, Health::new(1, 1), watch.clone());
    Proxy::new(options, hold, watch)
}

const CLIENT: &str = "192.0.2.7:40000";

/// A client connection to `proxy` over an in-memory pipe: a hyper server
/// on the far end calls the proxy's per-connection service with `oneshot`.
async fn connect<B>(proxy: Proxy) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let conn = ConnInfo {
        remote: CLIENT.parse().expect("an address"),
        local: "127.0.0.1:8080".parse().expect("an address"),
        tls: false,
        client_subject: None,
    };
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            proxy.service(conn.clone()).oneshot(req.map(|body| Counted::new(body, None)))
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server_io), service).await;
    });
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io)).await.expect("handshake");
    tokio::spawn(connection);
    sender
}

/// Sends `req` through `proxy`; the status, headers and whole body that
/// come back.
async fn send(proxy: Proxy, req: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let response = connect(proxy).await.send_request(req).await.expect("a response");
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.map(|b| b.to_bytes()).unwrap_or_default())
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "shop.example").body(Full::default()).expect("a request")
}

#[tokio::test]
async fn forwards_and_rewrites_the_head() {
    let (addr, seen) = app(Duration::ZERO).await;
    let proxy = build(&options(addr));
    let req = Request::post("/orders?id=1")
        .header("host", "shop.example")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop-by-hop, named by Connection")
        .header("x-forwarded-for", "203.0.113.1")
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("a request");
    let (response, body) = send(proxy, req).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(body, "ok 5", "the body streamed through whole");
    let heads = seen.heads.lock().expect("not poisoned");
    let head = &heads[0];
    assert_eq!(head.uri, "/orders?id=1");
    assert_eq!(head.headers["host"], "shop.example", "Host is kept as the client sent it");
    assert!(!head.headers.contains_key("x-secret"), "a header named by Connection is hop-by-hop");
    assert_eq!(head.headers["x-forwarded-for"], "192.0.2.7", "an untrusted client's own X-Forwarded-For is replaced");
    assert_eq!(head.headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn an_app_that_refuses_gets_502() {
    let proxy = build(&options(nothing_listening().await));
    let (response, body) = send(proxy, get("/")).await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert!(std::str::from_utf8(&body).is_ok_and(|b| b.contains("refused")), "{body:?}");
}

#[tokio::test]
async fn the_request_timeout_answers_504() {
    let (addr, seen) = app(Duration::from_secs(3600)).await;
    let proxy = build(&ProxyOptions { request_timeout: Some(Duration::from_millis(200)), ..options(addr) });
    let (response, body) = send(proxy, get("/slow")).await;
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(std::str::from_utf8(&body).is_ok_and(|b| b.contains("did not answer in time")), "{body:?}");
    assert_eq!(seen.heads.lock().expect("not poisoned").len(), 1, "the app got the request before the timeout");
}

#[tokio::test]
async fn connect_is_refused_with_405_before_reaching_the_app() {
    let (addr, seen) = app(Duration::ZERO).await;
    let proxy = build(&options(addr));
    let req = Request::builder().method(Method::CONNECT).uri("shop.example:443").body(Full::default()).expect("a request");
    let (response, _) = send(proxy, req).await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_gets_413_and_a_streamed_one_is_cut() {
    let (addr, seen) = app(Duration::ZERO).await;
    let proxy = build(&ProxyOptions { max_body_bytes: 4, ..options(addr) });
    let req = Request::post("/upload").header("host", "a").body(Full::new(Bytes::from_static(b"12345"))).expect("a request");
    let (response, _) = send(proxy, req).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0, "refused on Content-Length alone");
    let req = Request::post("/upload").header("host", "a").body(Full::new(Bytes::from_static(b"1234"))).expect("a request");
    let (response, body) = send(proxy, req).await;
    assert_eq!((response.status, &body[..]), (StatusCode::OK, &b"ok 4"[..]), "at the limit is allowed");
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_gets_413() {
    let (addr, _seen) = app(Duration::ZERO).await;
    let proxy = build(&ProxyOptions { max_body_bytes: 4, ..options(addr) });
    // No length: sent chunked, so only the stream can tell it is too big.
    let frames = ["123", "45"].map(|chunk| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(chunk.as_bytes()))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post("/upload").header("host", "a").body(body).expect("a request");
    let response = connect(proxy).await.send_request(req).await.expect("a response");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn in_flight_requests_past_the_limit_are_shed_with_503() {
    let (addr, _seen) = app(Duration::from_secs(3600)).await;
    let proxy = build(&ProxyOptions { max_inflight: 1, ..options(addr) });
    let first = tokio::spawn(send(proxy, get("/slow")));
    // The first request holds the only slot once the app has it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while proxy.bounds.inflight.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the first request never got in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (response, _) = send(proxy, get("/")).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers.contains_key("retry-after"));
    first.abort();
}

#[tokio::test]
async fn the_pool_reuses_one_connection_for_sequential_requests() {
    let (addr, seen) = app(Duration::ZERO).await;
    let proxy = build(&options(addr));
    for _ in 0..5 {
        let (response, _) = send(proxy, get("/")).await;
        assert_eq!(response.status, StatusCode::OK);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "each request after the first reused the pooled connection");
}

#[tokio::test]
async fn with_no_idle_connections_allowed_each_request_connects() {
    let (addr, seen) = app(Duration::ZERO).await;
    let mut options = options(addr);
    options.client.pool_max_idle = 0;
    let proxy = build(&options);
    for _ in 0..3 {
        send(proxy, get("/")).await;
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}
