//! gRPC calls through outrider as its telemetry reports them, black-box: a
//! real tonic app (the standard health service), a tonic client, spans at a
//! real OTLP receiver, `/metrics` in both formats and the access log.
//!
//! The health service gives every case without a service of our own:
//! `Check` of a known service answers OK (status in the trailers), of an
//! unknown one NOT_FOUND (a trailers-only answer: the status in the
//! headers), an unknown service UNIMPLEMENTED (a server error, with HTTP
//! 200), and `Watch` is a server stream that the client can cancel.

mod common;

use std::net::SocketAddr;

use common::{exposition::*, otlp::*, *};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tonic::{Code, transport::Channel};
use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, HealthCheckResponse, health_check_response, health_client::HealthClient},
};

/// The service the app reports as serving.
const SHOP: &str = "outrider.test.Shop";
const CHECK: &str = "grpc.health.v1.Health/Check";
const WATCH: &str = "grpc.health.v1.Health/Watch";
const RPC_DURATION: &str = "rpc_server_duration_seconds";
const HTTP_DURATION: &str = "http_server_request_duration_seconds";

/// A tonic app serving `grpc.health.v1.Health` over h2c on loopback.
struct GrpcApp {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcApp {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status(SHOP, ServingStatus::Serving).await;
        let task = tokio::spawn(async move {
            let _reporter = reporter;
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(tokio_stream_from(listener)).await;
        });
        Self { addr, task }
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// outrider in front of `upstream`, exporting to `receiver`.
fn traced(upstream: SocketAddr, receiver: &Receiver) -> Spawn {
    outrider(&format!("http://{upstream}"))
        // Until the per-request default (`auto`) sends gRPC to the app over
        // HTTP/2 by itself.
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.addr))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OUTRIDER_ACCESS_LOG", "true")
}

async fn channel(proxy: &Outrider) -> Channel {
    Channel::from_shared(format!("http://{}", proxy.listen)).unwrap().connect().await.unwrap()
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.to_owned() }
}

fn status_of(span: &Exported) -> i32 {
    span.span.status.as_ref().map_or(StatusCode::Unset as i32, |s| s.code)
}

/// Labels of the request histogram for a gRPC call over h2c that got HTTP
/// 200, with this `error_type`.
fn http_labels(error_type: &str) -> String {
    format!(
        r#"error_type="{error_type}",http_request_method="POST",http_response_status_code="200",network_protocol_version="2",url_scheme="http""#
    )
}

fn rpc_labels(code: &str) -> String {
    format!(r#"rpc_grpc_status_code="{code}",rpc_system="grpc""#)
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_get_rpc_spans_status_metrics_and_access_lines() {
    let receiver = Receiver::grpc().await;
    let app = GrpcApp::start().await;
    let proxy = traced(app.addr, &receiver).start().await;
    let channel = channel(&proxy).await;
    let mut health = HealthClient::new(channel.clone());

    // OK, its status in the trailers.
    let serving = health.check(check(SHOP)).await.unwrap().into_inner();
    assert_eq!(serving.status(), health_check_response::ServingStatus::Serving);
    // NOT_FOUND, trailers-only: the status in the response headers.
    assert_eq!(health.check(check("no.such.Service")).await.unwrap_err().code(), Code::NotFound);
    // UNIMPLEMENTED, a server error, still with HTTP 200.
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    let unimplemented = raw.unary(tonic::Request::new(check(SHOP)), PathAndQuery::from_static("/no.such.Service/Call"), codec).await;
    assert_eq!(unimplemented.unwrap_err().code(), Code::Unimplemented);
    // A server stream the client leaves after its first message: no status.
    let mut stream = health.watch(check(SHOP)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status(), health_check_response::ServingStatus::Serving);
    drop(stream);

    let has = |s: &Exported, key: &str, value: &str| s.attr(key).as_deref() == Some(value);
    let ok = receiver.wait_for("the OK call's span", |s| s.span.name == CHECK && has(s, "rpc.grpc.status_code", "0")).await;
    assert_eq!(ok.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(ok.attr("rpc.service").as_deref(), Some("grpc.health.v1.Health"));
    assert_eq!(ok.attr("rpc.method").as_deref(), Some("Check"));
    // The HTTP attributes stay.
    assert_eq!(ok.attr("http.request.method").as_deref(), Some("POST"));
    assert_eq!(ok.attr("url.path").as_deref(), Some("/grpc.health.v1.Health/Check"));
    assert_eq!(ok.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(ok.attr("network.protocol.version").as_deref(), Some("2"));
    assert_eq!(ok.attr("error.type"), None);
    assert_eq!(status_of(&ok), StatusCode::Unset as i32);

    // NOT_FOUND is the caller's error, as an HTTP 404 is: not the server's.
    let not_found = receiver.wait_for("the NOT_FOUND call's span", |s| s.span.name == CHECK && has(s, "rpc.grpc.status_code", "5")).await;
    assert_eq!(not_found.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(not_found.attr("error.type"), None);
    assert_eq!(status_of(&not_found), StatusCode::Unset as i32);

    let failed = receiver.wait_for("the UNIMPLEMENTED call's span", |s| s.span.name == "no.such.Service/Call").await;
    assert_eq!(failed.attr("rpc.service").as_deref(), Some("no.such.Service"));
    assert_eq!(failed.attr("rpc.method").as_deref(), Some("Call"));
    assert_eq!(failed.attr("rpc.grpc.status_code").as_deref(), Some("12"));
    assert_eq!(failed.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(failed.attr("error.type").as_deref(), Some("UNIMPLEMENTED"));
    assert_eq!(status_of(&failed), StatusCode::Error as i32, "a gRPC server error with HTTP 200 is an error");

    let watch = receiver.wait_for("the cancelled stream's span", |s| s.span.name == WATCH).await;
    assert_eq!(watch.attr("rpc.method").as_deref(), Some("Watch"));
    assert_eq!(watch.attr("rpc.grpc.status_code"), None, "the stream ended without a status");
    assert_eq!(watch.attr("error.type").as_deref(), Some("response_body_aborted"));
    assert_eq!(status_of(&watch), StatusCode::Error as i32);

    // Metrics: the calls by gRPC status in their own family, and how each
    // ended in the request histogram.
    let text = scrape(&proxy).await;
    let count = |name: &str, labels: &str| sample(&text, &format!("{name}_count"), labels);
    for (code, n) in [("0", 1.0), ("5", 1.0), ("12", 1.0), ("", 1.0)] {
        assert_eq!(count(RPC_DURATION, &rpc_labels(code)), n, "rpc_grpc_status_code={code:?}:\n{text}");
    }
    assert_eq!(text.matches("rpc_server_duration_seconds_count{").count(), 4, "{text}");
    assert_eq!(count(HTTP_DURATION, &http_labels("")), 2.0, "OK and NOT_FOUND did not fail:\n{text}");
    assert_eq!(count(HTTP_DURATION, &http_labels("UNIMPLEMENTED")), 1.0, "{text}");
    assert_eq!(count(HTTP_DURATION, &http_labels("response_body_aborted")), 1.0, "{text}");
    assert!(!text.contains("no.such.Service") && !text.contains("Health"), "a client-chosen name became a label");
    promtool_check(&text);

    // OpenMetrics: the family's buckets carry the calls' traces.
    let om = scrape_openmetrics(&proxy).await;
    let found = exemplars(&om, RPC_DURATION);
    let spans = receiver.spans();
    assert!(found.iter().any(|e| e.trace_id == ok.trace_id() && e.span_id == ok.span_id()), "the OK call's exemplar:\n{om}");
    for e in &found {
        let span = spans.iter().find(|s| s.trace_id() == e.trace_id).unwrap_or_else(|| panic!("{e:?} names no exported trace"));
        assert_eq!(span.span_id(), e.span_id);
        assert_eq!(label(&e.series, "rpc_grpc_status_code").unwrap_or(""), span.attr("rpc.grpc.status_code").unwrap_or_default());
        assert!(e.bucket.0 < e.value && e.value <= e.bucket.1, "{e:?}");
    }
    assert_eq!(series_of(&openmetrics_as_text(&om)), series_of(&scrape(&proxy).await));
    openmetrics_check(&om);
    promtool_check(&openmetrics_as_text(&om));

    // The access line of each call has its gRPC status.
    let line = access_line(&proxy, "/grpc.health.v1.Health/Check", Some(0)).await;
    assert!(line.contains("\"status\":200") && line.contains(&ok.trace_id()), "{line}");
    access_line(&proxy, "/grpc.health.v1.Health/Check", Some(5)).await;
    access_line(&proxy, "/no.such.Service/Call", Some(12)).await;
    let line = access_line(&proxy, "/grpc.health.v1.Health/Watch", None).await;
    assert!(!line.contains("grpc_status"), "no status, none logged: {line}");
}

/// The access line of a call to `path`, with `grpc_status` when given.
async fn access_line(proxy: &Outrider, path: &str, grpc_status: Option<u8>) -> String {
    let path = format!("\"path\":\"{path}\"");
    let status = grpc_status.map(|s| format!("\"grpc_status\":{s},"));
    proxy
        .wait_log(&format!("the access line of {path} {status:?}"), |l| {
            l.contains("\"outrider::access\"") && l.contains(&path) && status.as_ref().is_none_or(|s| l.contains(s))
        })
        .await
}

/// The app is down: outrider answers the gRPC call itself, UNAVAILABLE in
/// the headers of an HTTP 200 (trailers-only), and reports it as such
/// while its own error kind (`connect`) still says why.
#[tokio::test(flavor = "multi_thread")]
async fn outriders_own_grpc_answer_is_reported_with_its_status() {
    let receiver = Receiver::grpc().await;
    let (down, _down_guard) = refused_addr();
    let proxy = traced(down, &receiver).env("OUTRIDER_BUFFER_TIMEOUT", "0").start().await;
    let mut health = HealthClient::new(channel(&proxy).await);
    assert_eq!(health.check(check(SHOP)).await.unwrap_err().code(), Code::Unavailable);

    let span = receiver.wait_for("the failed call's span", |s| s.span.name == CHECK).await;
    assert_eq!(span.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(span.attr("rpc.grpc.status_code").as_deref(), Some("14"));
    assert_eq!(span.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(span.attr("error.type").as_deref(), Some("connect"), "outrider's own error kind says why");
    assert_eq!(status_of(&span), StatusCode::Error as i32);

    let text = scrape(&proxy).await;
    assert_eq!(sample(&text, &format!("{RPC_DURATION}_count"), &rpc_labels("14")), 1.0, "{text}");
    assert_eq!(sample(&text, &format!("{HTTP_DURATION}_count"), &http_labels("connect")), 1.0, "{text}");
    assert_eq!(sample(&text, "outrider_upstream_errors_total", r#"kind="connect""#), 1.0, "{text}");
    promtool_check(&text);
    let line = access_line(&proxy, "/grpc.health.v1.Health/Check", Some(14)).await;
    assert!(line.contains("\"error\":\"connect\""), "{line}");
    // The failure line says what the client got: HTTP 200 alone would mislead.
    let failure = proxy.wait_log("the upstream failure line", |l| l.contains("upstream request failed")).await;
    let failure: serde_json::Value = serde_json::from_str(&failure).expect("a JSON line");
    assert_eq!((failure["status"].as_u64(), failure["grpc_status"].as_u64()), (Some(200), Some(14)), "{failure}");
}
