//! The OTLP exporter's transport, black-box: TLS to the collector (a
//! private CA, client certificates, files rotated under a running
//! outrider), gzip on both wires, scheme-less gRPC endpoints, and the
//! configuration errors, against real TLS receivers.

mod common;

use common::{otlp::*, otlp_tls::*, *};

const FAILED: &str = "outrider_spans_dropped_total{reason=\"export_failed\"}";
/// An API key in `OTEL_EXPORTER_OTLP_HEADERS`: it must never be logged.
const SECRET: &str = "k3y-never-logged";

fn traced(app: &App, endpoint: &str, protocol: &str) -> Spawn {
    outrider(&app.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_EXPORTER_OTLP_HEADERS", &format!("api-key={SECRET}"))
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "3000")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "legacy-shop")
}

/// Sends `GET path` through outrider and waits for its span at `receiver`.
async fn span_arrives(proxy: &Outrider, receiver: &Receiver, path: &str) -> Exported {
    assert_eq!(get(&proxy.url(path)).await.unwrap().0, 200);
    receiver.wait_for(&format!("the span of {path}"), |s| s.attr("url.path").as_deref() == Some(path)).await
}

/// Sends requests until an export has failed, then checks that none of
/// them reached `receiver` and that the failure was logged as a warning.
async fn exports_fail(proxy: &Outrider, receiver: &Receiver, path: &str) {
    let before = proxy.metric(FAILED).await.unwrap_or(0.0);
    eventually("an export to fail", || async move {
        assert_eq!(get(&proxy.url(path)).await.unwrap().0, 200);
        proxy.metric(FAILED).await.filter(|n| *n > before)
    })
    .await;
    assert!(receiver.spans().iter().all(|s| s.attr("url.path").as_deref() != Some(path)), "a span of {path} arrived");
    proxy.wait_log("the export failure, as a warning", |l| l.contains("\"level\":\"WARN\"") && l.contains("export")).await;
}

fn no_secret_logged(proxy: &Outrider) {
    for line in proxy.logs() {
        assert!(!line.contains(SECRET), "an export header's value was logged: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_tls_verified_with_a_private_ca() {
    let pki = Pki::new("grpc");
    let receiver = grpc_tls(&pki, false).await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("https://127.0.0.1:{}", receiver.addr.port()), "grpc")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.path("ca.pem"))
        .start()
        .await;
    let span = span_arrives(&proxy, &receiver, "/over-tls").await;
    assert_eq!(find(&span.resource, "service.name").as_deref(), Some("legacy-shop"));
    assert_eq!(proxy.metric(FAILED).await, Some(0.0));
    assert_eq!(receiver.refused(), 0);
    assert!(receiver.api_keys().iter().all(|k| k == SECRET) && !receiver.api_keys().is_empty());
    no_secret_logged(&proxy);
}

/// A managed backend: an `https://` endpoint and an API key, nothing
/// else. Its CA is among the system's: here the test CA stands in for the
/// distribution's bundle, through `SSL_CERT_FILE` as a non-Debian base
/// image would set it.
#[tokio::test(flavor = "multi_thread")]
async fn a_managed_backend_needs_only_an_https_endpoint_and_a_key() {
    let pki = Pki::new("managed");
    let app = App::start().await;
    for (receiver, protocol) in [(grpc_tls(&pki, false).await, "grpc"), (http_tls(&pki, false).await, "http/protobuf")] {
        let proxy = traced(&app, &format!("https://localhost:{}", receiver.addr.port()), protocol)
            .env("SSL_CERT_FILE", &pki.path("ca.pem"))
            .env("SSL_CERT_DIR", &pki.path("no-such-dir"))
            .start()
            .await;
        span_arrives(&proxy, &receiver, "/managed").await;
        assert_eq!(receiver.api_keys().last().map(String::as_str), Some(SECRET), "{protocol}: the API key arrives");
        no_secret_logged(&proxy);
    }
}

/// A system with no CA certificates at all (a bare `FROM scratch` image):
/// the bundled Mozilla roots verify the collector, which a private CA's
/// certificate then does not satisfy.
#[tokio::test(flavor = "multi_thread")]
async fn without_system_roots_the_bundled_ones_are_used() {
    let pki = Pki::new("bundled");
    let receiver = grpc_tls(&pki, false).await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("https://127.0.0.1:{}", receiver.addr.port()), "grpc")
        .env("SSL_CERT_FILE", &pki.path("no-such-bundle.pem"))
        .env("SSL_CERT_DIR", &pki.path("no-such-dir"))
        .start()
        .await;
    proxy.wait_log("the fallback logged", |l| l.contains("bundled Mozilla roots")).await;
    exports_fail(&proxy, &receiver, "/bundled").await;
    proxy.wait_log("the reason", |l| l.contains("UnknownIssuer")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_over_tls_verified_with_the_traces_ca_which_wins_over_the_general_one() {
    let pki = Pki::new("http");
    let receiver = http_tls(&pki, false).await;
    let app = App::start().await;
    // The general CA does not verify the receiver: only the traces-only
    // one, which takes precedence, does.
    let proxy = traced(&app, &format!("https://localhost:{}", receiver.addr.port()), "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.path("other-ca.pem"))
        .env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &pki.path("ca.pem"))
        .start()
        .await;
    span_arrives(&proxy, &receiver, "/over-https").await;
    assert_eq!(proxy.metric(FAILED).await, Some(0.0));
    no_secret_logged(&proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_requires_a_client_certificate() {
    let pki = Pki::new("mtls");
    let receiver = grpc_tls(&pki, true).await;
    let app = App::start().await;
    let endpoint = format!("https://127.0.0.1:{}", receiver.addr.port());
    let with_cert = traced(&app, &endpoint, "grpc")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.path("ca.pem"))
        .env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &pki.path("client.crt"))
        .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", &pki.path("client.key"))
        .start()
        .await;
    span_arrives(&with_cert, &receiver, "/with-cert").await;
    assert_eq!(with_cert.metric(FAILED).await, Some(0.0));

    let without = traced(&app, &endpoint, "grpc").env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.path("ca.pem")).start().await;
    exports_fail(&without, &receiver, "/without-cert").await;
    assert!(receiver.refused() > 0, "the receiver refused the handshake");
    no_secret_logged(&with_cert);
    no_secret_logged(&without);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_over_http_from_the_traces_variables() {
    let pki = Pki::new("mtls-http");
    let receiver = http_tls(&pki, true).await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("https://127.0.0.1:{}", receiver.addr.port()), "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &pki.path("ca.pem"))
        .env("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", &pki.path("client.crt"))
        .env("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &pki.path("client.key"))
        .start()
        .await;
    span_arrives(&proxy, &receiver, "/with-cert").await;
    assert_eq!(receiver.refused(), 0);
}

/// Spans arrive whole through a receiver that requires compression: the
/// receiver decodes every batch, and several spans make a real batch.
async fn compressed_export(receiver: Receiver, protocol: &str, variable: &str) {
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), protocol).env(variable, "gzip").start().await;
    for i in 0..20 {
        assert_eq!(get(&proxy.url(&format!("/gzip/{i}?q=1"))).await.unwrap().0, 200);
    }
    for i in 0..20 {
        let path = format!("/gzip/{i}");
        let span = receiver.wait_for(&format!("the span of {path}"), |s| s.attr("url.path").as_deref() == Some(path.as_str())).await;
        assert_eq!(span.span.name, "GET");
        assert_eq!(span.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(find(&span.resource, "service.name").as_deref(), Some("legacy-shop"));
    }
    // The collector's answers (gzip-compressed on gRPC) were understood.
    assert_eq!(proxy.metric(FAILED).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_over_http_protobuf() {
    compressed_export(http_gzip().await, "http/protobuf", "OTEL_EXPORTER_OTLP_COMPRESSION").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_over_grpc_both_ways() {
    compressed_export(grpc_gzip().await, "grpc", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheme_less_grpc_endpoint_is_tls_unless_insecure() {
    let app = App::start().await;
    let plain = Receiver::grpc().await;
    let insecure =
        traced(&app, &format!("127.0.0.1:{}", plain.addr.port()), "grpc").env("OTEL_EXPORTER_OTLP_INSECURE", "true").start().await;
    span_arrives(&insecure, &plain, "/insecure").await;
    // TLS variables on a plaintext endpoint are ignored, and said to be.
    let pki = Pki::new("schemeless");
    let ignored =
        traced(&app, &format!("http://{}", plain.addr), "grpc").env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.path("ca.pem")).start().await;
    span_arrives(&ignored, &plain, "/tls-ignored").await;
    ignored.wait_log("the ignored variables named", |l| l.contains("ignored") && l.contains("OTEL_EXPORTER_OTLP_CERTIFICATE")).await;

    // Without it, TLS: to a TLS receiver it works...
    let secure = grpc_tls(&pki, false).await;
    let proxy = traced(&app, &format!("localhost:{}", secure.addr.port()), "grpc")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.path("ca.pem"))
        .start()
        .await;
    span_arrives(&proxy, &secure, "/tls-by-default").await;
    // ... and to a plaintext one it fails, as does an explicit false.
    let refused = traced(&app, &format!("127.0.0.1:{}", plain.addr.port()), "grpc")
        .env("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "false")
        .env("OTEL_EXPORTER_OTLP_INSECURE", "true")
        .start()
        .await;
    exports_fail(&refused, &plain, "/tls-to-plaintext").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_ca_file_is_used_without_a_restart() {
    let pki = Pki::new("rotate");
    let receiver = grpc_tls(&pki, false).await;
    let app = App::start().await;
    // The mounted CA starts as one that does not verify the receiver.
    let mounted = pki.dir.join("mounted-ca.pem");
    std::fs::copy(pki.dir.join("other-ca.pem"), &mounted).unwrap();
    let proxy = traced(&app, &format!("https://127.0.0.1:{}", receiver.addr.port()), "grpc")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &mounted.display().to_string())
        .start()
        .await;
    exports_fail(&proxy, &receiver, "/wrong-ca").await;

    // A broken file is reported and ignored.
    replace_file(&mounted, b"not a certificate");
    assert_eq!(get(&proxy.url("/broken-ca")).await.unwrap().0, 200);
    proxy.wait_log("the broken CA file rejected", |l| l.contains("\"level\":\"WARN\"") && l.contains("rejected")).await;

    // The right CA, renamed over the file: spans arrive, same process.
    let pid = proxy.pid();
    replace_file(&mounted, &std::fs::read(pki.dir.join("ca.pem")).unwrap());
    eventually("a span to arrive once the CA is rotated", || async {
        assert_eq!(get(&proxy.url("/right-ca")).await.unwrap().0, 200);
        receiver.spans().into_iter().find(|s| s.attr("url.path").as_deref() == Some("/right-ca"))
    })
    .await;
    proxy.wait_log("the reload logged", |l| l.contains("collector TLS files reloaded")).await;

    // Broken again: the working CA stays in use.
    replace_file(&mounted, b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n");
    assert_eq!(get(&proxy.url("/kept-ca")).await.unwrap().0, 200);
    receiver.wait_for("a span with the kept CA", |s| s.attr("url.path").as_deref() == Some("/kept-ca")).await;
    assert_eq!(proxy.pid(), pid);
    assert!(proxy.child_running());
}

/// outrider refuses to start: exit 2, one line naming `var`.
async fn refuses(endpoint: &str, env: &[(&str, String)], var: &str) {
    let mut spawn = outrider("http://127.0.0.1:1").env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    for (k, v) in env {
        spawn = spawn.env(k, v);
    }
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::from(spawn.command()).stdin(std::process::Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{var}: outrider started instead of refusing"))
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{var} ({env:?}): {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected for {var}: {stderr}");
    assert!(lines[0].contains(var), "{var} not named: {stderr}");
    assert!(!lines[0].contains("PRIVATE KEY"), "key material in the error: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_and_compression_settings_are_configuration_errors() {
    let pki = Pki::new("config");
    let https = "https://127.0.0.1:4317";
    let p = |name: &str| pki.path(name);
    // (endpoint, variables, the variable the error must name)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (https, vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", p("missing.pem"))], "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        (https, vec![("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", p("client.key"))], "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"),
        (https, vec![("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", p("client.crt"))], "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        (https, vec![("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", p("client.key"))], "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"),
        (
            https,
            vec![("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", p("client.crt")), ("OTEL_EXPORTER_OTLP_CLIENT_KEY", p("missing.key"))],
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ),
        (
            https,
            vec![("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", p("client.crt")), ("OTEL_EXPORTER_OTLP_CLIENT_KEY", p("stranger.key"))],
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ),
        ("http://127.0.0.1:4317", vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd".into())], "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ("http://127.0.0.1:4317", vec![("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "br".into())], "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"),
        ("127.0.0.1:4317", vec![("OTEL_EXPORTER_OTLP_INSECURE", "yes".into())], "OTEL_EXPORTER_OTLP_INSECURE"),
        // TLS set up from the system's roots, then a later variable fails:
        // still one line (nothing about the roots is logged before).
        (https, vec![("OTEL_EXPORTER_OTLP_TIMEOUT", "soon".into())], "OTEL_EXPORTER_OTLP_TIMEOUT"),
        (
            "http://127.0.0.1:4317",
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", p("ca.pem")), ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon".into())],
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        (
            "127.0.0.1:4318",
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()), ("OTEL_EXPORTER_OTLP_INSECURE", "true".into())],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ];
    for (endpoint, env, var) in &cases {
        refuses(endpoint, env, var).await;
    }
}
