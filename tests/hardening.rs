//! Bad input gets a clear answer and never a panic, and the proxy keeps
//! serving other clients meanwhile. A data-driven table, run against the
//! real binary, plus TLS (h2 over TLS, hot reload, mTLS) with certificates
//! generated here.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a row expects back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status line, then the connection may close.
    Status(u16),
    /// The connection is closed, with no response or with this status.
    ClosedOr(Option<u16>),
}

struct Row {
    name: &'static str,
    request: Vec<u8>,
    expect: Expect,
}

fn row(name: &'static str, request: impl Into<Vec<u8>>, expect: Expect) -> Row {
    Row { name, request: request.into(), expect }
}

/// Sends `request` and returns the status (0 if none) and whether the
/// connection was closed within the patience.
async fn exchange(addr: std::net::SocketAddr, request: &[u8], patience: Duration) -> (u16, bool, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(patience, stream.read_to_end(&mut out)).await.is_ok();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, closed, text)
}

/// Sends `request` and returns the status of the first response (0 if the
/// connection closed first) as soon as its status line is in, without
/// waiting for the connection to end (a refused CONNECT, say, may stay
/// open until the idle timeout).
async fn first_status(addr: std::net::SocketAddr, request: &[u8], patience: Duration) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(patience, async {
        while !out.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => out.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_table() {
    // Configured below; the default (10 s) is longer than any wait here, so
    // a connection closed in time was closed by this setting.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
    let patience = HEADER_TIMEOUT + Duration::from_secs(5);
    let app = App::start().await;
    let proxy = outrider(&app.url())
        .env("OUTRIDER_HEADER_READ_TIMEOUT", "1s")
        .env("OUTRIDER_MAX_BODY_BYTES", "1000")
        .env("OUTRIDER_MAX_HEADER_BYTES", "16384")
        .start()
        .await;
    let big_header = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let big_chunked = {
        let mut r = b"POST /count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for _ in 0..4 {
            r.extend_from_slice(b"200\r\n");
            r.extend_from_slice(&[b'x'; 512]);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    };
    let table = vec![
        row("malformed request line", "GARBAGE\r\n\r\n", Expect::Status(400)),
        row("request line with no version", "GET / HTTP/9.9\r\nHost: t\r\n\r\n", Expect::Status(400)),
        row("control byte in a header value", "GET / HTTP/1.1\r\nHost: t\r\nX-Bad: a\x01b\r\n\r\n", Expect::Status(400)),
        row("space in a header name", "GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n", Expect::Status(400)),
        row(
            "duplicate Content-Length, different values",
            "POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            Expect::Status(400),
        ),
        row(
            "Transfer-Encoding other than chunked",
            "POST /count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            Expect::Status(400),
        ),
        row("oversized headers", big_header, Expect::Status(431)),
        row(
            "declared body over the limit",
            "POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
            Expect::Status(413),
        ),
        row("chunked body growing over the limit", big_chunked, Expect::Status(413)),
        row(
            "bad chunk size",
            "POST /count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            Expect::Status(400),
        ),
        row("HTTP/0.9 request", "GET /\r\n\r\n", Expect::Status(400)),
        row("CONNECT", "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n", Expect::Status(405)),
        row("slowloris: a head that never ends", "GET / HTTP/1.1\r\nHost: t\r\nX-Slow: 1\r\n", Expect::ClosedOr(Some(408))),
    ];

    // Another client, served all along while the table runs.
    let bystander_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bystander_ok = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let bystander = {
        let (stop, ok, url) = (bystander_stop.clone(), bystander_ok.clone(), proxy.url("/bystander"));
        tokio::spawn(async move {
            let mut failed = Vec::new();
            let client = client();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match send(&client, Request::get(&url).body(full("")).unwrap()).await {
                    Ok((200, _, _)) => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failed
        })
    };

    let mut slow_heads = 0.0;
    for Row { name, request, expect } in &table {
        let started = Instant::now();
        match expect {
            Expect::Status(want) => {
                let (status, text) = first_status(proxy.listen, request, patience).await;
                assert_eq!(status, *want, "{name}: got {text:?}");
            }
            Expect::ClosedOr(want) => {
                let served_before = bystander_ok.load(std::sync::atomic::Ordering::SeqCst);
                let (status, closed, text) = exchange(proxy.listen, request, patience).await;
                // The bystander was served while this connection hung on.
                let served = bystander_ok.load(std::sync::atomic::Ordering::SeqCst) - served_before;
                assert!(served > 0, "{name}: the bystander got no response in the {:?} this connection was open", started.elapsed());
                assert!(closed, "{name}: connection still open after {:?}", started.elapsed());
                assert!(status == 0 || Some(status) == *want, "{name}: got {text:?}");
                // Closed by the header read timeout, not before it, and
                // counted as such.
                assert!(started.elapsed() >= HEADER_TIMEOUT, "{name}: closed after {:?}, before the header timeout", started.elapsed());
                let series = "outrider_connection_timeouts_total{cause=\"request_head\"}";
                slow_heads += 1.0;
                proxy.wait_metric(series, |n| n >= slow_heads).await;
            }
        }
        // Meanwhile, everyone else is served.
        assert_eq!(get(&proxy.url("/after")).await.unwrap().0, 200, "{name}: the proxy stopped serving");
    }

    // Request smuggling: Content-Length with Transfer-Encoding is refused
    // (tests/forwarding.rs has the details).
    let (status, _, text) = exchange(
        proxy.listen,
        b"POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, 400, "{text}");

    // Absolute-form target: the authority in the URI becomes Host, and the
    // request still goes to the one configured app.
    let (status, _, _) =
        exchange(proxy.listen, b"GET http://other.example/abs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", Duration::from_secs(5))
            .await;
    assert_eq!(status, 200);
    assert_eq!(last_seen(&app, "/abs").headers["host"], "other.example");

    // An idle keep-alive connection is closed after the header timeout too
    // (counted from its response, which is later than `started`).
    let mut stream = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(patience, stream.read_to_end(&mut out)).await.expect("idle keep-alive connection never closed").unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() >= HEADER_TIMEOUT, "closed too early: {:?}", started.elapsed());

    bystander_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = tokio::time::timeout(PATIENCE, bystander).await.expect("a bystander request hung").unwrap();
    assert!(failed.is_empty(), "the bystander failed meanwhile: {failed:?}");

    let logs = proxy.logs().join("\n");
    assert!(!logs.contains("panicked"), "outrider panicked:\n{logs}");
}

/// The last request the app saw for `uri` (other clients run meanwhile).
fn last_seen(app: &App, uri: &str) -> Seen {
    app.seen.lock().unwrap().iter().rev().find(|s| s.uri == uri).cloned().unwrap_or_else(|| panic!("the app never saw {uri}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn load_shedding_answers_503_past_max_inflight() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_MAX_INFLIGHT", "2").start().await;
    // Two uploads in flight until the test ends them.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(HeldUpload::start(proxy.listen).await);
    }
    wait_until("two requests at the app", || app.count() >= 2).await;
    let (status, headers, _) = get(&proxy.url("/shed")).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    for upload in held {
        assert_eq!(upload.finish().await, (200, "5".to_owned()));
    }
    assert_eq!(get(&proxy.url("/after")).await.unwrap().0, 200, "slots are released when responses end");
    let metrics = String::from_utf8(get(&proxy.admin_url("/metrics")).await.unwrap().2.to_vec()).unwrap();
    assert!(metrics.contains("outrider_load_shed_total 1"), "{metrics}");
}

/// `OUTRIDER_MAX_CONNECTIONS`: with that many connections open (one idle
/// after a keep-alive exchange, one mid-request), the next one is not
/// accepted: the kernel completes its handshake, but its request gets no
/// answer while they are held, and it is served as soon as one closes.
#[tokio::test(flavor = "multi_thread")]
async fn past_max_connections_a_connection_waits_until_one_closes() {
    // A lower bound: how long the connection past the cap must go
    // unanswered. Any answer at all within it fails the test.
    const UNANSWERED_FOR: Duration = Duration::from_secs(2);
    let app = App::start().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_MAX_CONNECTIONS", "2").start().await;

    let mut idle = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut idle).await, (200, "hello from app".to_owned()));
    let upload = HeldUpload::start(proxy.listen).await;
    wait_until("the held upload at the app", || app.seen.lock().unwrap().iter().any(|s| s.uri == "/count")).await;
    assert_eq!(proxy.metric("outrider_connections_active").await, Some(2.0));

    let mut third = tokio::net::TcpStream::connect(proxy.listen).await.expect("the kernel completes the handshake");
    third.write_all(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(UNANSWERED_FOR, third.read(&mut byte)).await;
    assert!(early.is_err(), "the connection past the cap was answered (or closed) while two were held: {early:?}");
    assert_eq!(proxy.metric("outrider_connections_total").await, Some(2.0), "a third connection was accepted");
    assert!(app.seen.lock().unwrap().iter().all(|s| s.uri != "/third"), "the request past the cap reached the app");

    // The idle one leaves: the waiting connection is accepted and served.
    drop(idle);
    assert_eq!(read_response(&mut third).await, (200, "hello from app".to_owned()));
    assert_eq!(proxy.metric("outrider_connections_total").await, Some(3.0));
    // The one mid-request was never disturbed.
    assert_eq!(upload.finish().await, (200, "5".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_reset_flood_leaves_no_work_behind_and_others_are_served() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;

    // A bystander, served all along.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bystander = {
        let (stop, url) = (stop.clone(), proxy.url("/bystander"));
        tokio::spawn(async move {
            let mut failed = Vec::new();
            let mut ok = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match get(&url).await {
                    Ok((200, _, _)) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed)
        })
    };

    // Open streams and reset them at once, as in CVE-2023-44487. Depending
    // on timing, h2 either cuts the connection (GOAWAY once too many resets
    // are pending) or hyper cancels each request as its reset arrives.
    let stream = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(stream).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..3000 {
        let Ok(ready) = h2.clone().ready().await else { break };
        h2 = ready;
        // Far longer than the wait below: a request left running would
        // still be in flight when it gives up.
        let request = Request::get(format!("http://{}/slow/60000", proxy.listen)).body(()).unwrap();
        let Ok((response, _)) = h2.send_request(request, true) else { break };
        drop(response);
        sent += 1;
    }
    drop(h2);
    let _ = tokio::time::timeout(PATIENCE, driver).await.expect("the flooding connection never ended");
    eprintln!("flood: {sent} streams opened and reset");

    // Every reset request was cancelled: nothing is left in flight.
    let metrics_url = proxy.admin_url("/metrics");
    eventually("cancelled requests to be released", || {
        let url = metrics_url.clone();
        async move {
            let text = String::from_utf8(get(&url).await.ok()?.2.to_vec()).ok()?;
            text.lines().any(|l| l == "http_server_active_requests 0").then_some(())
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = tokio::time::timeout(PATIENCE, bystander).await.expect("a bystander request hung").unwrap();
    assert!(failed.is_empty(), "the bystander failed during the flood: {failed:?}");
    assert!(ok > 0);
    assert_eq!(get(&proxy.url("/after")).await.unwrap().0, 200);
}

// ===== TLS =====

struct Pki {
    dir: std::path::PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("outrider-tls-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca }
    }

    /// Issues a leaf; returns (cert PEM, key PEM).
    fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_server(&self, cn: &str) {
        let (cert, key) = self.issue(cn, &["localhost", "127.0.0.1"]);
        // Write then rename, as a Secret update swaps the files at once.
        for (name, data) in [("tls.crt", cert), ("tls.key", key)] {
            let tmp = self.dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, data).unwrap();
            std::fs::rename(&tmp, self.dir.join(name)).unwrap();
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn client_config(&self, client: Option<(String, String)>, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                use rustls_pki_types::pem::PemObject;
                let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(addr).await?;
    connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), stream).await
}

/// One HTTP/1.1 request over an established TLS stream.
async fn h1_over(stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>, path: &str) -> Result<(u16, bytes::Bytes), hyper::Error> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(Request::get(path).header("host", "localhost").body(full("")).unwrap()).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

fn peer_cn(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    parsed.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_h2_and_http1_and_hot_reload_without_dropping_connections() {
    let pki = Pki::new("reload");
    pki.write_server("server-one");
    let app = App::start().await;
    let proxy = outrider(&app.url())
        .env("OUTRIDER_TLS_CERT", &pki.path("tls.crt"))
        .env("OUTRIDER_TLS_KEY", &pki.path("tls.key"))
        .env("OUTRIDER_TLS_RELOAD_INTERVAL", "100ms")
        .start()
        .await;

    // h2 over TLS, negotiated by ALPN.
    let stream = tls_connect(proxy.listen, pki.client_config(None, &[b"h2"])).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(peer_cn(&stream), "server-one");
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = h2.send_request(Request::get("https://localhost/h2").body(full("")).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.last().headers["x-forwarded-proto"], "https");

    // HTTP/1.1 over TLS on a connection kept open across the reload.
    let kept = tls_connect(proxy.listen, pki.client_config(None, &[b"http/1.1"])).await.unwrap();
    let (mut kept_sender, kept_conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(kept)).await.unwrap();
    tokio::spawn(kept_conn);
    let r = kept_sender.send_request(Request::get("/before").header("host", "localhost").body(full("")).unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.into_body().collect().await;

    // Rotate: new handshakes see the new certificate.
    pki.write_server("server-two");
    eventually("the new certificate", || {
        let config = pki.client_config(None, &[b"http/1.1"]);
        async move {
            let stream = tls_connect(proxy.listen, config).await.ok()?;
            (peer_cn(&stream) == "server-two").then_some(())
        }
    })
    .await;

    // A broken pair is rejected; the current one stays in service. (The
    // rotation above may have logged a rejection of a half-swapped pair,
    // "do not match"; only the broken file gives "no certificate found".)
    std::fs::write(pki.dir.join("tls.crt"), "not a certificate").unwrap();
    proxy
        .wait_log("the broken certificate's rejection", |l| {
            l.contains("new TLS certificate rejected") && l.contains("no certificate found")
        })
        .await;
    let stream = tls_connect(proxy.listen, pki.client_config(None, &[b"http/1.1"])).await.unwrap();
    assert_eq!(peer_cn(&stream), "server-two");
    assert_eq!(h1_over(stream, "/still").await.unwrap().0, 200);

    // The connection opened before the rotation still works.
    let r = kept_sender.send_request(Request::get("/after").header("host", "localhost").body(full("")).unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);

    // Not TLS at all, and a garbage handshake: closed, nothing else hurt.
    let (status, closed, _) = exchange(proxy.listen, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", Duration::from_secs(5)).await;
    assert!(closed && status == 0, "plain HTTP on the TLS port must be refused");
    let (_, closed, _) = exchange(proxy.listen, &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3], Duration::from_secs(5)).await;
    assert!(closed);
    let stream = tls_connect(proxy.listen, pki.client_config(None, &[b"http/1.1"])).await.unwrap();
    assert_eq!(h1_over(stream, "/fine").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_accepts_the_right_ca_rejects_others_and_the_subject_header_cannot_be_forged() {
    let pki = Pki::new("mtls");
    pki.write_server("server");
    let stranger = Pki::new("stranger");
    let app = App::start().await;
    let proxy = outrider(&app.url())
        .env("OUTRIDER_TLS_CERT", &pki.path("tls.crt"))
        .env("OUTRIDER_TLS_KEY", &pki.path("tls.key"))
        .env("OUTRIDER_TLS_CLIENT_CA", &pki.path("ca.pem"))
        .env("OUTRIDER_TLS_CLIENT_CERT_HEADER", "x-client-subject")
        .start()
        .await;

    // A client certificate from the trusted CA: accepted, subject passed on,
    // and a forged copy of the header is replaced.
    let stream = tls_connect(proxy.listen, pki.client_config(Some(pki.issue("client-a", &["client-a"])), &[b"http/1.1"])).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let r = sender
        .send_request(Request::get("/who").header("host", "localhost").header("x-client-subject", "CN=admin").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let subjects: Vec<_> = app.last().headers.get_all("x-client-subject").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(subjects, vec!["CN=client-a".to_owned()]);

    // A certificate from another CA, and no certificate at all: refused.
    for client in [Some(stranger.issue("mallory", &["mallory"])), None] {
        let refused = match tls_connect(proxy.listen, pki.client_config(client, &[b"http/1.1"])).await {
            Err(_) => true,
            // TLS 1.3 reports the server's refusal on first use.
            Ok(stream) => h1_over(stream, "/sneak").await.is_err(),
        };
        assert!(refused, "a client without a trusted certificate got through");
    }
    assert!(app.seen.lock().unwrap().iter().all(|s| s.uri != "/sneak"));
}

#[tokio::test(flavor = "multi_thread")]
async fn https_to_the_app_is_verified_against_the_configured_ca() {
    let pki = Pki::new("upstream");
    let stranger = Pki::new("upstream-stranger");
    let (cert, key) = pki.issue("app", &["localhost"]);
    let server_config = {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { break };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("over tls")))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });

    let trusted = outrider(&format!("https://localhost:{port}")).env("OUTRIDER_UPSTREAM_CA", &pki.path("ca.pem")).start().await;
    let (status, _, body) = get(&trusted.url("/")).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"over tls"[..]));

    let untrusted = outrider(&format!("https://localhost:{port}"))
        .env("OUTRIDER_UPSTREAM_CA", &stranger.path("ca.pem"))
        .env("OUTRIDER_BUFFER_TIMEOUT", "0")
        .start()
        .await;
    assert_eq!(get(&untrusted.url("/")).await.unwrap().0, 502, "an app with an unverifiable certificate was trusted");
    server.abort();
}
