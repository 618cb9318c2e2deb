//! Traces and metrics, checked at a real OTLP receiver (gRPC and
//! HTTP/protobuf, built on opentelemetry-proto) and a real `/metrics` scrape.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{exposition::*, otlp::*, *};
use http::{Request, Response};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    trace::v1::{span::SpanKind, status::StatusCode},
};
use prost::Message;

/// OTLP over HTTP/protobuf on loopback, checking what the test below sets.
async fn http_receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Store::default();
    let sink = spans.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let sink = sink.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
            // OTEL_EXPORTER_OTLP_HEADERS, percent-decoded (set by the test below).
            assert_eq!(req.headers()["x-api-key"], "s3cr=t");
            assert!(req.headers()["user-agent"].to_str().unwrap().starts_with("outrider/"));
            let body = req.into_body().collect().await.unwrap().to_bytes();
            store(&sink, ExportTraceServiceRequest::decode(body).unwrap());
            let out = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
            Ok::<_, std::convert::Infallible>(
                Response::builder().header("content-type", "application/x-protobuf").body(full(Bytes::from(out))).unwrap(),
            )
        }
    });
    Receiver { addr, spans, task: serve_each(listener, service) }
}

fn traced(app: &App, endpoint: &str, protocol: &str) -> Spawn {
    outrider(&app.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "legacy-shop")
        .env("K8S_POD_NAME", "shop-7d9f-abcde")
}

/// The request histogram.
const DURATION: &str = "http_server_request_duration_seconds";

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread")]
async fn a_traced_request_gives_one_server_span_that_continues_the_callers_trace() {
    let receiver = Receiver::grpc().await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), "grpc").start().await;

    let (status, _, _) = send(
        &client(),
        Request::get(proxy.url("/orders/42?secret=1"))
            .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
            .header("tracestate", "vendor=abc")
            .header("baggage", "tenant=acme")
            .header("user-agent", "itest/1.0")
            .body(full(""))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);

    let span = receiver.wait_for("the server span", |s| s.trace_id() == CALLER_TRACE).await;
    assert_eq!(span.span.kind, SpanKind::Server as i32);
    assert_eq!(span.parent_id(), CALLER_SPAN, "the span is a child of the caller's span");
    assert_eq!(span.span.name, "GET");
    assert_eq!(span.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(span.attr("url.path").as_deref(), Some("/orders/42"));
    assert_eq!(span.attr("url.query"), None, "the query string is not recorded by default");
    assert_eq!(span.attr("url.scheme").as_deref(), Some("http"));
    assert_eq!(span.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(span.attr("server.port"), Some(proxy.listen.port().to_string()));
    assert_eq!(span.attr("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(span.attr("network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(span.attr("user_agent.original").as_deref(), Some("itest/1.0"));
    assert_eq!(span.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(span.span.status.as_ref().map_or(0, |s| s.code), StatusCode::Unset as i32);
    assert_eq!(find(&span.resource, "service.name").as_deref(), Some("legacy-shop"));
    assert_eq!(find(&span.resource, "k8s.pod.name").as_deref(), Some("shop-7d9f-abcde"));

    // The app received outrider's span as its parent, in the same trace.
    let seen = app.last();
    let traceparent = seen.headers["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(traceparent, format!("00-{CALLER_TRACE}-{}-01", span.span_id()));
    assert_eq!(seen.headers["tracestate"], "vendor=abc");
    assert_eq!(seen.headers["baggage"], "tenant=acme");

    // The access log line carries the same ids.
    let access = proxy.wait_log("the access log line", |l| l.contains("\"outrider::access\"") && l.contains("/orders/42")).await;
    assert!(access.contains(CALLER_TRACE) && access.contains(&span.span_id()), "{access}");

    // Exactly one span for the request: the access line is written after
    // the span ended, so everything exported from now on is all there is.
    export_settled(&proxy, &receiver).await;
    assert_eq!(receiver.spans().iter().filter(|s| s.trace_id() == CALLER_TRACE).count(), 1);
}

/// Waits until every sampled span that has ended so far has been exported
/// and received, and nothing else was: the exporter's counters on
/// `/metrics` (`outrider_spans_ended_total` counts before the span ends,
/// `outrider_spans_exported_total` after the collector accepted it) agree
/// with each other and with the receiver.
async fn export_settled(proxy: &Outrider, receiver: &Receiver) {
    eventually("the exporter to have sent every ended span to the receiver", || async {
        let text = scrape(proxy).await;
        let ended = sample(&text, "outrider_spans_ended_total", "");
        let exported = sample(&text, "outrider_spans_exported_total", "");
        for reason in ["queue_full", "rejected", "export_failed"] {
            let dropped = sample(&text, "outrider_spans_dropped_total", &format!("reason=\"{reason}\""));
            assert_eq!(dropped, 0.0, "spans dropped: {reason}");
        }
        assert!(exported <= ended, "{exported} spans exported but only {ended} ended: a span outside the request path");
        (ended > 0.0 && exported == ended && receiver.spans().len() as f64 == exported).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_protobuf_export_a_root_span_and_errors_marked() {
    let receiver = http_receiver().await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cr%3Dt")
        .env("OUTRIDER_ROUTES", "/slow/{ms}")
        .env("OUTRIDER_REQUEST_TIMEOUT", "200ms")
        .env("OUTRIDER_TRACE_RESPONSE", "true")
        .start()
        .await;

    let (status, headers, _) = get(&proxy.url("/plain")).await.unwrap();
    assert_eq!(status, 200);
    let traceresponse = headers["traceresponse"].to_str().unwrap().to_owned();
    let root = receiver.wait_for("the root span", |s| s.attr("url.path").as_deref() == Some("/plain")).await;
    assert!(root.span.parent_span_id.is_empty(), "no caller context: a root span");
    assert_eq!(traceresponse, format!("00-{}-{}-01", root.trace_id(), root.span_id()));
    assert_eq!(app.last().headers["traceparent"].to_str().unwrap(), traceresponse);

    // A proxy error: 504, span status Error, error.type, route-named span.
    let (status, _, _) = get(&proxy.url("/slow/5000")).await.unwrap();
    assert_eq!(status, 504);
    let failed = receiver.wait_for("the failed span", |s| s.attr("url.path").as_deref() == Some("/slow/5000")).await;
    assert_eq!(failed.span.name, "GET /slow/{ms}");
    assert_eq!(failed.attr("http.route").as_deref(), Some("/slow/{ms}"));
    assert_eq!(failed.attr("http.response.status_code").as_deref(), Some("504"));
    assert_eq!(failed.attr("error.type").as_deref(), Some("timeout"));
    assert_eq!(failed.span.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_caller_yields_no_exported_span() {
    let receiver = Receiver::grpc().await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), "grpc").start().await;
    let unsampled = "11111111111111111111111111111111";
    let req =
        Request::get(proxy.url("/unsampled")).header("traceparent", format!("00-{unsampled}-2222222222222222-00")).body(full("")).unwrap();
    assert_eq!(send(&client(), req).await.unwrap().0, 200);
    let forwarded = app.last().headers["traceparent"].to_str().unwrap().to_owned();
    assert!(forwarded.starts_with(&format!("00-{unsampled}-")) && forwarded.ends_with("-00"), "{forwarded}");
    // Its span, if any, has ended once its access line is out.
    proxy.wait_log("the unsampled request's access line", |l| l.contains("\"outrider::access\"") && l.contains("/unsampled")).await;

    // A sampled request afterwards proves the exporter works and has run:
    // spans are exported in the order they end, so anything queued before
    // this one has reached the receiver by the time it has.
    assert_eq!(get(&proxy.url("/sampled")).await.unwrap().0, 200);
    receiver.wait_for("the sampled span", |s| s.attr("url.path").as_deref() == Some("/sampled")).await;
    export_settled(&proxy, &receiver).await;
    assert!(receiver.spans().iter().all(|s| s.trace_id() != unsampled), "an unsampled request was exported");
}

/// A collector that accepts connections and never answers: an export to
/// it takes its whole timeout. Returns its address and how many
/// connections it has accepted.
async fn black_hole() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted, task)
}

/// A collector that refuses connections (its exports are retried for the
/// whole 30 s export timeout), and one that swallows them (its exports
/// hang as long): neither slows requests down, and the exit waits for
/// neither, by far.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_collector_neither_slows_requests_nor_blocks_the_exit() {
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);
    let (refused, _refused_guard) = refused_addr();
    let app = App::start().await;
    let app = &app;
    let cases = ["grpc", "http/protobuf"].into_iter().flat_map(|protocol| [(protocol, false), (protocol, true)]);
    futures_util::future::join_all(cases.map(|(protocol, hangs)| async move {
        let hole = if hangs { Some(black_hole().await) } else { None };
        let collector = hole.as_ref().map_or(refused, |h| h.0);
        let case = format!("{protocol}, collector {}", if hangs { "not answering" } else { "refusing" });
        let proxy = traced(app, &format!("http://{collector}"), protocol)
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", &EXPORT_TIMEOUT.as_millis().to_string())
            .start()
            .await;
        let client = client();
        let started = Instant::now();
        for i in 0..200 {
            let (status, _, _) = send(&client, Request::get(proxy.url(&format!("/r/{i}"))).body(full("")).unwrap()).await.unwrap();
            assert_eq!(status, 200);
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{case}: 200 requests took {took:?}");
        // An export is under way (and stuck, for the black hole) when the
        // exit begins.
        match &hole {
            Some((_, accepted, _)) => {
                wait_until("an export to reach the collector", || accepted.load(std::sync::atomic::Ordering::SeqCst) > 0).await
            }
            None => {
                proxy.wait_log("an export to be retried", |l| l.contains("span export attempt failed; retrying")).await;
            }
        }
        let t = Instant::now();
        proxy.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(proxy.wait().await.code(), Some(0));
        assert!(t.elapsed() < Duration::from_secs(10), "{case}: exit took {:?}", t.elapsed());
        if let Some((_, _, task)) = hole {
            task.abort();
        }
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_the_requests_sent_and_pass_promtool() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;
    let labels_ok =
        r#"error_type="",http_request_method="GET",http_response_status_code="200",network_protocol_version="1.1",url_scheme="http""#;
    let labels_post =
        r#"error_type="",http_request_method="POST",http_response_status_code="200",network_protocol_version="1.1",url_scheme="http""#;
    let labels_other =
        r#"error_type="",http_request_method="_OTHER",http_response_status_code="200",network_protocol_version="1.1",url_scheme="http""#;
    let before = scrape(&proxy).await;

    let client = client();
    let mut client_time = Duration::ZERO;
    for i in 0..7 {
        let t = Instant::now();
        assert_eq!(send(&client, Request::get(proxy.url(&format!("/m/{i}"))).body(full("")).unwrap()).await.unwrap().0, 200);
        client_time += t.elapsed();
    }
    for _ in 0..3 {
        assert_eq!(send(&client, Request::post(proxy.url("/echo")).body(full("12345")).unwrap()).await.unwrap().0, 200);
    }
    assert_eq!(send(&client, Request::builder().method("BREW").uri(proxy.url("/pot")).body(full("")).unwrap()).await.unwrap().0, 200);

    let after = scrape(&proxy).await;
    let count = "http_server_request_duration_seconds_count";
    let sum = "http_server_request_duration_seconds_sum";
    assert_eq!(sample(&after, count, labels_ok) - sample(&before, count, labels_ok), 7.0);
    assert_eq!(sample(&after, count, labels_post) - sample(&before, count, labels_post), 3.0);
    assert_eq!(sample(&after, count, labels_other) - sample(&before, count, labels_other), 1.0, "unknown methods collapse to _OTHER");
    let sum_delta = sample(&after, sum, labels_ok) - sample(&before, sum, labels_ok);
    assert!(sum_delta > 0.0 && sum_delta <= client_time.as_secs_f64(), "sum moved by {sum_delta}, clients waited {client_time:?}");
    let upstream = "outrider_upstream_request_duration_seconds_count";
    assert_eq!(sample(&after, upstream, "") - sample(&before, upstream, ""), 11.0);
    let bytes_in = "outrider_request_body_bytes_total";
    assert_eq!(sample(&after, bytes_in, "") - sample(&before, bytes_in, ""), 15.0);
    assert_eq!(sample(&after, "http_server_active_requests", ""), 0.0);
    assert!(after.contains("outrider_build_info{commit="), "{after}");
    assert!(after.contains("process_resident_memory_bytes"));
    assert_eq!(sample(&after, "outrider_app_ready", ""), 1.0);
    assert_eq!(sample(&after, "outrider_draining", ""), 0.0);
    // At least the listeners and the health check; read at scrape time.
    assert!(sample(&after, "outrider_runtime_tasks", "") >= 2.0, "{after}");
    assert!(!after.contains("/m/"), "a raw path leaked into a label");

    // Upstream failures are counted by kind.
    let (down, _down_guard) = refused_addr();
    let broken = outrider(&format!("http://{down}")).env("OUTRIDER_BUFFER_TIMEOUT", "0").start().await;
    for _ in 0..2 {
        assert_eq!(get(&broken.url("/")).await.unwrap().0, 502);
    }
    let text = scrape(&broken).await;
    assert_eq!(sample(&text, "outrider_upstream_errors_total", r#"kind="connect""#), 2.0);
    assert_eq!(
        sample(
            &text,
            count,
            r#"error_type="connect",http_request_method="GET",http_response_status_code="502",network_protocol_version="1.1",url_scheme="http""#
        ),
        2.0,
        "a dead app's 502 has outrider's error kind: {text}"
    );

    promtool_check(&after);
    promtool_check(&text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_before_the_response_is_recorded_as_499() {
    use tokio::io::AsyncWriteExt;
    let app = App::start().await;
    let proxy = outrider(&app.url()).start().await;
    let mut stream = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    // The app would answer only after a minute: the client is certainly
    // gone first.
    stream.write_all(b"GET /slow/60000 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    eventually("the request to reach the app", || {
        let n = app.count();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    drop(stream);
    let labels = r#"error_type="client_closed",http_request_method="GET",http_response_status_code="499",network_protocol_version="1.1",url_scheme="http""#;
    eventually("the 499 to be counted", || {
        let proxy = &proxy;
        async move { (sample(&scrape(proxy).await, "http_server_request_duration_seconds_count", labels) == 1.0).then_some(()) }
    })
    .await;
    assert_eq!(sample(&scrape(&proxy).await, "http_server_active_requests", ""), 0.0);
    proxy.wait_log("the access line", |l| l.contains("\"status\":499") && l.contains("client_closed")).await;
}

/// A Zipkin-instrumented caller (B3, single header or multi) continues its
/// trace through outrider: the exported span is its child, and the app gets
/// outrider's span in both B3 formats.
#[tokio::test(flavor = "multi_thread")]
async fn a_b3_callers_trace_continues_through_outrider_to_the_app() {
    let receiver = Receiver::grpc().await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), "grpc").env("OTEL_PROPAGATORS", "b3,b3multi").start().await;
    assert!(proxy.logs().iter().any(|l| l.contains("outrider started") && l.contains("b3,b3multi")));

    // Single header, 128-bit trace id; then the X-B3-* headers with a
    // 64-bit one, as older Zipkin tracers send.
    let single = "80f198ee56343ba864fe8b2a57d3eff7";
    let req = Request::get(proxy.url("/b3")).header("b3", format!("{single}-e457b5a2e4d86bd1-1")).body(full("")).unwrap();
    assert_eq!(send(&client(), req).await.unwrap().0, 200);
    let span = receiver.wait_for("the span of the b3 caller", |s| s.trace_id() == single).await;
    assert_eq!(span.parent_id(), "e457b5a2e4d86bd1");
    let seen = app.last();
    assert_eq!(seen.headers["b3"], format!("{single}-{}-1", span.span_id()).as_str());
    assert_eq!(seen.headers["x-b3-traceid"], single);
    assert_eq!(seen.headers["x-b3-spanid"], span.span_id().as_str());
    assert_eq!(seen.headers["x-b3-sampled"], "1");
    assert!(!seen.headers.contains_key("traceparent"), "tracecontext is not configured, so not written");

    let req = Request::get(proxy.url("/b3multi"))
        .header("x-b3-traceid", "463ac35c9f6413ad")
        .header("x-b3-spanid", "a2fb4a1d1a96d312")
        .header("x-b3-parentspanid", "0020000000000001")
        .header("x-b3-sampled", "1")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client(), req).await.unwrap().0, 200);
    let multi = "0000000000000000463ac35c9f6413ad";
    let span = receiver.wait_for("the span of the b3multi caller", |s| s.trace_id() == multi).await;
    assert_eq!(span.parent_id(), "a2fb4a1d1a96d312");
    let seen = app.last();
    assert_eq!(seen.headers["x-b3-traceid"], multi);
    assert_eq!(seen.headers["x-b3-spanid"], span.span_id().as_str());
    assert!(!seen.headers.contains_key("x-b3-parentspanid"), "the caller's parent is not outrider's span's parent");

    // A B3 caller that said "not sampled" is respected.
    let req = Request::get(proxy.url("/b3-unsampled"))
        .header("b3", "11111111111111111111111111111111-e457b5a2e4d86bd1-0")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client(), req).await.unwrap().0, 200);
    assert!(app.last().headers["b3"].to_str().unwrap().ends_with("-0"));
    assert_eq!(get(&proxy.url("/after")).await.unwrap().0, 200);
    receiver.wait_for("the span after", |s| s.attr("url.path").as_deref() == Some("/after")).await;
    export_settled(&proxy, &receiver).await;
    assert!(receiver.spans().iter().all(|s| s.attr("url.path").as_deref() != Some("/b3-unsampled")));
}

/// `OTEL_PROPAGATORS=none`: a caller's context is ignored (every span a new
/// root) and outrider writes no trace header; the caller's reach the app as
/// sent.
#[tokio::test(flavor = "multi_thread")]
async fn with_no_propagators_every_request_starts_a_fresh_trace() {
    let receiver = Receiver::grpc().await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), "grpc").env("OTEL_PROPAGATORS", "none").start().await;
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let req = Request::get(proxy.url("/fresh")).header("traceparent", &caller).header("b3", format!("{CALLER_TRACE}-{CALLER_SPAN}-1"));
    assert_eq!(send(&client(), req.body(full("")).unwrap()).await.unwrap().0, 200);
    let span = receiver.wait_for("the span", |s| s.attr("url.path").as_deref() == Some("/fresh")).await;
    assert_ne!(span.trace_id(), CALLER_TRACE);
    assert!(span.span.parent_span_id.is_empty(), "a root span");
    let seen = app.last();
    assert_eq!(seen.headers["traceparent"], caller.as_str(), "passed through untouched");
    assert_eq!(seen.headers["b3"], format!("{CALLER_TRACE}-{CALLER_SPAN}-1").as_str());
}

/// `OTEL_TRACES_EXPORTER=none` turns export off even with an endpoint set;
/// traces still reach the app and the logs.
#[tokio::test(flavor = "multi_thread")]
async fn the_none_exporter_exports_nothing_but_still_propagates() {
    let receiver = Receiver::grpc().await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), "grpc").env("OTEL_TRACES_EXPORTER", "none").start().await;
    assert!(proxy.logs().iter().any(|l| l.contains("outrider started") && l.contains("OTEL_TRACES_EXPORTER=none")));
    let req = Request::get(proxy.url("/quiet")).header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"));
    assert_eq!(send(&client(), req.body(full("")).unwrap()).await.unwrap().0, 200);
    assert!(app.last().headers["traceparent"].to_str().unwrap().starts_with(&format!("00-{CALLER_TRACE}-")));
    let access = proxy.wait_log("the access line", |l| l.contains("\"outrider::access\"") && l.contains("/quiet")).await;
    assert!(access.contains(CALLER_TRACE), "{access}");
    // The span ended before its access line was written; with an exporter
    // it would have entered the export queue by now, and been counted.
    assert_eq!(proxy.metric("outrider_spans_ended_total").await, Some(0.0), "no export queue");
    assert_eq!(proxy.metric("outrider_spans_exported_total").await, Some(0.0));
    assert!(receiver.spans().is_empty());
}

/// Prometheus's default `Accept` gets OpenMetrics, whose request histogram
/// carries exemplars: each names a trace the collector received, the span
/// of the request it stands for, in the bucket of its own value. The
/// semconv labels `url_scheme` and `error_type` say how each request ended.
/// Both expositions pass their parsers.
#[tokio::test(flavor = "multi_thread")]
async fn openmetrics_exemplars_link_latency_to_exported_traces() {
    let receiver = Receiver::grpc().await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), "grpc").env("OUTRIDER_REQUEST_TIMEOUT", "300ms").start().await;
    let client = client();
    for i in 0..6 {
        assert_eq!(send(&client, Request::get(proxy.url(&format!("/x/{i}"))).body(full("")).unwrap()).await.unwrap().0, 200);
    }
    for ms in [30, 120] {
        assert_eq!(send(&client, Request::get(proxy.url(&format!("/slow/{ms}"))).body(full("")).unwrap()).await.unwrap().0, 200);
    }
    assert_eq!(send(&client, Request::get(proxy.url("/slow/5000")).body(full("")).unwrap()).await.unwrap().0, 504);
    // Unsampled by its caller: its span is not exported, so it must not be
    // an exemplar, though it is the latest request in its bucket.
    let unsampled = "11111111111111111111111111111111";
    let req = Request::get(proxy.url("/x/unsampled")).header("traceparent", format!("00-{unsampled}-2222222222222222-00")).body(full(""));
    assert_eq!(send(&client, req.unwrap()).await.unwrap().0, 200);
    let timed_out = receiver.wait_for("the 504's span", |s| s.attr("url.path").as_deref() == Some("/slow/5000")).await;
    export_settled(&proxy, &receiver).await;

    let om = scrape_openmetrics(&proxy).await;
    let spans = receiver.spans();
    let found = exemplars(&om, DURATION);
    assert!(!found.is_empty(), "no exemplar on the request histogram:\n{om}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for e in &found {
        let span =
            spans.iter().find(|s| s.trace_id() == e.trace_id).unwrap_or_else(|| panic!("{e:?} names a trace the collector never got"));
        assert_eq!(span.span_id(), e.span_id, "{e:?}");
        assert!(e.bucket.0 < e.value && e.value <= e.bucket.1, "the exemplar's value is outside its bucket: {e:?}");
        assert!((now - 600.0..=now + 1.0).contains(&e.timestamp), "not a recent wall-clock time: {e:?}");
        assert_eq!(label(&e.series, "url_scheme"), Some("http"), "{e:?}");
    }
    assert!(found.iter().all(|e| e.trace_id != unsampled), "an unsampled request became an exemplar");
    let ok: Vec<_> = found.iter().filter(|e| label(&e.series, "http_response_status_code") == Some("200")).collect();
    assert!(!ok.is_empty() && ok.iter().all(|e| label(&e.series, "error_type") == Some("")), "{found:?}");
    let failed: Vec<_> = found.iter().filter(|e| label(&e.series, "error_type") == Some("timeout")).collect();
    assert_eq!(failed.len(), 1, "one exemplar for the one 504: {found:?}");
    assert_eq!(
        (failed[0].trace_id.as_str(), label(&failed[0].series, "http_response_status_code")),
        (timed_out.trace_id().as_str(), Some("504"))
    );
    assert!(failed[0].value >= 0.3, "the 504 came after the 300 ms request timeout: {:?}", failed[0]);

    // The same series in both formats, and both pass their checkers.
    let text = scrape(&proxy).await;
    assert!(!text.contains("trace_id"), "the text format cannot carry exemplars");
    assert_eq!(series_of(&openmetrics_as_text(&om)), series_of(&text));
    openmetrics_check(&om);
    promtool_check(&openmetrics_as_text(&om));
    promtool_check(&text);

    // A dead app: 502, with outrider's error kind.
    let (down, _down_guard) = refused_addr();
    let broken = traced(&App::start().await, &format!("http://{}", receiver.addr), "grpc")
        .env("OUTRIDER_UPSTREAM", &format!("http://{down}"))
        .env("OUTRIDER_BUFFER_TIMEOUT", "0")
        .start()
        .await;
    assert_eq!(get(&broken.url("/")).await.unwrap().0, 502);
    let dead = receiver.wait_for("the 502's span", |s| s.attr("http.response.status_code").as_deref() == Some("502")).await;
    let om = scrape_openmetrics(&broken).await;
    let labels = r#"error_type="connect",http_request_method="GET",http_response_status_code="502",network_protocol_version="1.1",url_scheme="http""#;
    assert_eq!(sample(&om, "http_server_request_duration_seconds_count", labels), 1.0, "{om}");
    let found = exemplars(&om, DURATION);
    assert_eq!(found.len(), 1, "{om}");
    assert_eq!((found[0].trace_id.as_str(), label(&found[0].series, "error_type")), (dead.trace_id().as_str(), Some("connect")));
    openmetrics_check(&om);
}

/// Requests whose spans are not sampled leave no exemplar.
#[tokio::test(flavor = "multi_thread")]
async fn unsampled_requests_leave_no_exemplar() {
    let receiver = Receiver::grpc().await;
    let app = App::start().await;
    let proxy = traced(&app, &format!("http://{}", receiver.addr), "grpc").env("OTEL_TRACES_SAMPLER", "always_off").start().await;
    for i in 0..5 {
        assert_eq!(get(&proxy.url(&format!("/n/{i}"))).await.unwrap().0, 200);
    }
    let labels =
        r#"error_type="",http_request_method="GET",http_response_status_code="200",network_protocol_version="1.1",url_scheme="http""#;
    let om = eventually("the requests to be counted", || {
        let proxy = &proxy;
        async move {
            let om = scrape_openmetrics(proxy).await;
            (sample(&om, "http_server_request_duration_seconds_count", labels) == 5.0).then_some(om)
        }
    })
    .await;
    assert!(exemplars(&om, DURATION).is_empty() && !om.contains(" # {"), "{om}");
    openmetrics_check(&om);
}

/// Every family `/metrics` serves has its row in the metric table of
/// docs/observability.md, naming each of its labels, and every row is
/// served: the table cannot fall behind the code.
#[tokio::test(flavor = "multi_thread")]
async fn the_docs_metric_table_lists_every_served_family_and_label() {
    use std::collections::{BTreeMap, BTreeSet};
    let app = App::start().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_ROUTES", "/r/{id}").start().await;
    // The request histograms have series once a request was recorded: the
    // gRPC one once a gRPC call was, whatever the app made of it (this
    // app is no gRPC server; the call ends with or without a status).
    assert_eq!(get(&proxy.url("/r/1")).await.unwrap().0, 200);
    let call = Request::post(proxy.url("/r/2")).header("content-type", "application/grpc").body(full("")).unwrap();
    send(&client(), call).await.unwrap();
    let text = eventually("the requests to be recorded", || {
        let proxy = &proxy;
        async move {
            Some(scrape(proxy).await)
                .filter(|t| t.contains("http_server_request_duration_seconds_count{") && t.contains("rpc_server_duration_seconds_count{"))
        }
    })
    .await;

    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            served.entry(rest.split(' ').next().unwrap().to_owned()).or_default();
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, labels, _) = parse_sample(line);
            let family = served.keys().filter(|f| name.starts_with(f.as_str())).max_by_key(|f| f.len()).unwrap().clone();
            served.get_mut(&family).unwrap().extend(labels.into_iter().map(|(n, _)| n).filter(|n| n != "le" && n != "quantile"));
        }
    }

    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/observability.md")).unwrap();
    let section = doc.split_once("\n## Metrics\n").unwrap().1;
    let section = section.split("\n#").next().unwrap();
    let rows: Vec<(String, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[3].to_owned())
        })
        .collect();
    assert!(rows.len() > 10, "no metric table found in docs/observability.md's Metrics section");
    let row = |family: &str| {
        rows.iter().find(|(name, _)| name == family || name.strip_suffix('*').is_some_and(|prefix| family.starts_with(prefix)))
    };
    for (family, labels) in &served {
        let (name, documented) =
            row(family).unwrap_or_else(|| panic!("{family} is served but missing from docs/observability.md's metric table"));
        if !name.ends_with('*') {
            for label in labels {
                assert!(
                    documented.contains(&format!("`{label}`")),
                    "docs/observability.md: the row of {family} does not name its label `{label}`"
                );
            }
        }
    }
    for (name, _) in rows.iter().filter(|(name, _)| !name.ends_with('*')) {
        assert!(served.contains_key(name), "docs/observability.md lists {name}, which /metrics does not serve");
    }
}
