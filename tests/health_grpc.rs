//! `/readyz` behind the gRPC health check (`OUTRIDER_APP_HEALTH=grpc`,
//! `grpc:<service>`) against real tonic servers, and the HTTP path check
//! against apps that speak only h2c or only HTTP/1.1.

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic_health::{ServingStatus, server::HealthReporter};

/// A tonic server with the standard health service, and the metadata of
/// the last health request it saw.
struct GrpcApp {
    addr: SocketAddr,
    reporter: HealthReporter,
    seen: Arc<Mutex<Option<tonic::metadata::MetadataMap>>>,
    task: JoinHandle<()>,
}

impl GrpcApp {
    async fn start(tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        let seen = Arc::new(Mutex::new(None));
        let sink = seen.clone();
        let health = tonic::service::interceptor::InterceptedService::new(health, move |request: tonic::Request<()>| {
            *sink.lock().unwrap() = Some(request.metadata().clone());
            Ok(request)
        });
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        let router = server.add_service(health);
        let task = tokio::spawn(async move {
            router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)).await.unwrap();
        });
        Self { addr, reporter, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn set(&self, service: &str, status: ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/readyz`: status and body.
async fn readyz(proxy: &Outrider) -> (u16, String) {
    let (status, _, body) = get(&proxy.admin_url("/readyz")).await.expect("/readyz answers");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `/readyz` until it answers `status` with exactly `body`.
async fn wait_readyz(proxy: &Outrider, status: u16, body: &str) {
    eventually(&format!("/readyz to answer {status} {body:?}"), || async move {
        let seen = readyz(proxy).await;
        (seen == (status, body.to_owned())).then_some(())
    })
    .await;
}

/// Outrider checking `app` often, declaring it unhealthy after two failures.
fn checking(app: &str, health: &str) -> Spawn {
    outrider(app).env("OUTRIDER_APP_HEALTH", health).env("OUTRIDER_APP_HEALTH_INTERVAL", "100ms").env("OUTRIDER_APP_HEALTH_FAILURES", "2")
}

#[tokio::test]
async fn grpc_readiness_follows_the_serving_status() {
    let app = GrpcApp::start(None).await;
    let proxy = checking(&app.url(), "grpc").start().await;
    wait_readyz(&proxy, 200, "ready\n").await;

    let metadata = app.seen.lock().unwrap().clone().expect("the app saw a health check");
    // OUTRIDER_UPSTREAM_CONNECT_TIMEOUT is 1s, the check's bound.
    assert_eq!(metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()), Some("1000m"));
    assert!(metadata.get("user-agent").and_then(|v| v.to_str().ok()).is_some_and(|ua| ua.starts_with("outrider-health/")));

    app.set("", ServingStatus::NotServing).await;
    wait_readyz(&proxy, 503, "app not ready: grpc health: NOT_SERVING\n").await;
    let (_, _, verbose) = get(&proxy.admin_url("/readyz?verbose")).await.unwrap();
    let verbose = String::from_utf8_lossy(&verbose);
    assert!(verbose.contains("[-] app: grpc health: NOT_SERVING"), "{verbose}");
    proxy.wait_log("the verdict's change", |l| l.contains("app is unhealthy") && l.contains("NOT_SERVING")).await;

    app.set("", ServingStatus::Serving).await;
    wait_readyz(&proxy, 200, "ready\n").await;
}

#[tokio::test]
async fn grpc_checks_a_named_service_and_names_an_unknown_one() {
    let app = GrpcApp::start(None).await;
    app.set("shop.v1.Cart", ServingStatus::Serving).await;
    // The whole server's status is not the named service's.
    app.set("", ServingStatus::NotServing).await;
    let cart = checking(&app.url(), "grpc:shop.v1.Cart").start().await;
    wait_readyz(&cart, 200, "ready\n").await;
    app.set("shop.v1.Cart", ServingStatus::NotServing).await;
    wait_readyz(&cart, 503, "app not ready: grpc health: NOT_SERVING\n").await;

    let unknown = checking(&app.url(), "grpc:shop.v1.Nope").start().await;
    wait_readyz(&unknown, 503, "app not ready: grpc health: service \"shop.v1.Nope\" unknown\n").await;
}

#[tokio::test]
async fn an_app_without_the_health_service_is_not_ready_and_says_why() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A gRPC server that serves nothing: every method is UNIMPLEMENTED.
    let router = tonic::transport::Server::builder().add_routes(tonic::service::Routes::default());
    let server = tokio::spawn(async move {
        router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)).await.unwrap();
    });
    let proxy = checking(&format!("http://{addr}"), "grpc").start().await;
    wait_readyz(&proxy, 503, "app not ready: grpc health: status 12 (UNIMPLEMENTED)\n").await;
    server.abort();
}

#[tokio::test]
async fn grpc_check_over_tls_offers_h2() {
    let pki = common::otlp_tls::Pki::new("health-grpc");
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(pki.path("server.crt")).unwrap(),
        std::fs::read(pki.path("server.key")).unwrap(),
    );
    // tonic's TLS offers ALPN `h2` only: an `http/1.1` offer fails the handshake.
    let app = GrpcApp::start(Some(tonic::transport::ServerTlsConfig::new().identity(identity))).await;
    let proxy =
        checking(&format!("https://localhost:{}", app.addr.port()), "grpc").env("OUTRIDER_UPSTREAM_CA", &pki.path("ca.pem")).start().await;
    wait_readyz(&proxy, 200, "ready\n").await;
    app.set("", ServingStatus::NotServing).await;
    wait_readyz(&proxy, 503, "app not ready: grpc health: NOT_SERVING\n").await;
}

/// A hyper server speaking only HTTP/2 (h2c) or only HTTP/1.1 on
/// `listener`: `/healthz` answers 200, anything else 500.
fn serve_only(listener: TcpListener, h2: bool) -> JoinHandle<()> {
    serve_only_over(listener, h2, None)
}

/// [`serve_only`], over TLS when `tls` is given.
fn serve_only_over(listener: TcpListener, h2: bool, tls: Option<tokio_rustls::TlsAcceptor>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_one(TokioIo::new(stream), h2).await,
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve_one(TokioIo::new(stream), h2).await;
                        }
                    }
                }
            });
        }
    })
}

async fn serve_one<I>(io: I, h2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
        let status = if request.uri().path() == "/healthz" { 200 } else { 500 };
        Ok::<_, Infallible>(Response::builder().status(status).body(full("")).unwrap())
    });
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    }
}

#[tokio::test]
async fn http_path_check_learns_an_h2c_only_app_and_relearns_http1() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h2c = serve_only(listener, true);
    let proxy = checking(&format!("http://{addr}"), "/healthz").start().await;
    wait_readyz(&proxy, 200, "ready\n").await;
    proxy.wait_log("the protocol learnt", |l| l.contains("answers in the other protocol") && l.contains("HTTP/2")).await;

    // The app is redeployed as HTTP/1.1 only on the same port: the check
    // gets no answer in HTTP/2 and learns HTTP/1.1 back.
    h2c.abort();
    let _ = h2c.await;
    let http1 = serve_only(TcpListener::bind(addr).await.unwrap(), false);
    proxy.wait_log("HTTP/1.1 learnt back", |l| l.contains("answers in the other protocol") && l.contains("HTTP/1.1")).await;
    wait_readyz(&proxy, 200, "ready\n").await;
    http1.abort();
}

#[tokio::test]
async fn http_path_check_judges_the_h2c_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = serve_only(listener, true);
    let broken = checking(&format!("http://{addr}"), "/broken").start().await;
    wait_readyz(&broken, 503, "app not ready: health check /broken returned 500\n").await;
    // Declared HTTP/2: h2c from the first check, nothing to learn.
    let declared = checking(&format!("http://{addr}"), "/healthz").env("OUTRIDER_UPSTREAM_PROTOCOL", "http2").start().await;
    wait_readyz(&declared, 200, "ready\n").await;
    assert!(!declared.logs().iter().any(|l| l.contains("answers in the other protocol")), "an HTTP/1.1 attempt was made");
    app.abort();
}

#[tokio::test]
async fn http_path_check_learns_an_h2_only_tls_app() {
    let pki = common::otlp_tls::Pki::new("health-h2");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // ALPN `h2` only: the HTTP/1.1 attempt's `http/1.1` offer is refused in
    // the handshake, and the HTTP/2 one is answered.
    let app = serve_only_over(listener, true, Some(tokio_rustls::TlsAcceptor::from(pki.server_config(false, &[b"h2"]))));
    let proxy = checking(&format!("https://localhost:{port}"), "/healthz").env("OUTRIDER_UPSTREAM_CA", &pki.path("ca.pem")).start().await;
    wait_readyz(&proxy, 200, "ready\n").await;
    proxy.wait_log("the protocol learnt", |l| l.contains("answers in the other protocol") && l.contains("HTTP/2")).await;
    app.abort();
}

#[test]
fn bad_grpc_settings_exit_2_in_one_line_naming_the_variable() {
    for value in ["grpc: bad name", "grpc:", "grpc:a\u{1}b", "grpcx"] {
        let out = outrider("http://127.0.0.1:1").env("OUTRIDER_APP_HEALTH", value).args(["--print-config"]).command().output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("OUTRIDER_APP_HEALTH={value:?}")), "{stderr}");
    }
    let out = outrider("http://127.0.0.1:1")
        .env("OUTRIDER_APP_HEALTH", " grpc:shop.v1.Cart ")
        .args(["--print-config"])
        .command()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("app_health = \"grpc:shop.v1.Cart\"\n"));
}
