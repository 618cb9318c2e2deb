//! Span export against collectors that misbehave: retried answers arrive
//! exactly once, final refusals are not retried, partial successes and
//! full queues are counted, and `outrider_spans_ended_total` always equals
//! exported plus dropped once export settles. Real receivers (hyper, tonic)
//! in `common::otlp_faulty`, the real binary, its real `/metrics`.

mod common;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{otlp_faulty::*, *};
use http::Request;

fn traced(app: &App, collector: std::net::SocketAddr, protocol: &str) -> Spawn {
    outrider(&app.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{collector}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_SERVICE_NAME", "retry-test")
}

/// `batch` spans make one batch, sent as soon as it is full (and not on
/// a timer that could split it).
fn one_batch_of(spawn: Spawn, batch: usize) -> Spawn {
    spawn.env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", &batch.to_string()).env("OTEL_BSP_SCHEDULE_DELAY", "86400000")
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Spans {
    ended: f64,
    exported: f64,
    queue_full: f64,
    rejected: f64,
    export_failed: f64,
}

impl Spans {
    fn dropped(&self) -> f64 {
        self.queue_full + self.rejected + self.export_failed
    }
}

async fn spans(proxy: &Outrider) -> Option<Spans> {
    let (status, _, body) = get(&proxy.admin_url("/metrics")).await.ok()?;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let read = |series: &str| {
        let prefix = format!("{series} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse::<f64>().unwrap())
    };
    let dropped = |reason: &str| read(&format!("outrider_spans_dropped_total{{reason=\"{reason}\"}}"));
    assert!(!text.contains("outrider_spans_export_failed_total"), "the old counter is gone");
    Some(Spans {
        ended: read("outrider_spans_ended_total")?,
        exported: read("outrider_spans_exported_total")?,
        // Every reason is present from the start, at 0.
        queue_full: dropped("queue_full").expect("queue_full series"),
        rejected: dropped("rejected").expect("rejected series"),
        export_failed: dropped("export_failed").expect("export_failed series"),
    })
}

/// Waits until `ended` spans have ended and every one of them is accounted
/// for (exported or dropped): nothing queued, nothing in flight.
async fn settled(proxy: &Outrider, ended: f64) -> Spans {
    eventually(&format!("{ended} ended spans to be exported or dropped"), || async {
        let s = spans(proxy).await?;
        assert!(s.exported + s.dropped() <= s.ended, "more spans accounted for than ended: {s:?}");
        (s.ended == ended && s.exported + s.dropped() == s.ended).then_some(s)
    })
    .await
}

/// `n` requests, one after another; every one answered 200.
async fn requests(proxy: &Outrider, n: usize) {
    let client = client();
    for i in 0..n {
        let (status, _, _) = send(&client, Request::get(proxy.url(&format!("/r/{i}"))).body(full("")).unwrap()).await.unwrap();
        assert_eq!(status, 200);
    }
}

/// Every request's span reached the receiver exactly once.
fn exactly_once(receiver: &Faulty, n: usize) {
    let accepted = receiver.accepted();
    let ids: HashSet<String> = accepted.iter().map(|s| s.span_id()).collect();
    assert_eq!(ids.len(), accepted.len(), "a span arrived twice");
    let mut paths: Vec<String> = accepted.iter().map(|s| s.attr("url.path").unwrap()).collect();
    paths.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("/r/{i}")).collect();
    expected.sort();
    assert_eq!(paths, expected);
}

/// No span was sent in two attempts: nothing was retried.
fn attempted_once_each(receiver: &Faulty, n: usize) {
    let attempts = receiver.attempts();
    let all: Vec<&String> = attempts.iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "a batch was sent again: {attempts:?}");
    assert_eq!(all.len(), n);
}

/// Waits for a warn line with all of `parts`.
async fn warned(proxy: &Outrider, what: &str, parts: &[&str]) -> String {
    proxy.wait_log(what, |l| l.contains("\"level\":\"WARN\"") && parts.iter().all(|p| l.contains(p))).await
}

/// 503 with `Retry-After: 1` to the first two attempts (HTTP), UNAVAILABLE
/// to the first two (gRPC): the batch is sent three times, the same spans
/// each time, and each span arrives once.
#[tokio::test(flavor = "multi_thread")]
async fn retryable_answers_are_retried_and_every_span_arrives_exactly_once() {
    const N: usize = 20;
    let app = App::start().await;
    let app = &app;
    let http = Faulty::http(script(|n| if n < 2 { Answer::Http { status: 503, retry_after: Some("1") } } else { Answer::Accept })).await;
    let grpc =
        Faulty::grpc(script(|n| if n < 2 { Answer::Grpc { code: tonic::Code::Unavailable, retry_delay: None } } else { Answer::Accept }))
            .await;
    futures_util::future::join_all([(&http, "http/protobuf", "HTTP 503"), (&grpc, "grpc", "gRPC UNAVAILABLE (14)")].map(
        |(receiver, protocol, status)| async move {
            let proxy = one_batch_of(traced(app, receiver.addr, protocol), N).start().await;
            requests(&proxy, N).await;
            let s = settled(&proxy, N as f64).await;
            assert_eq!(s, Spans { ended: N as f64, exported: N as f64, queue_full: 0.0, rejected: 0.0, export_failed: 0.0 }, "{protocol}");
            let attempts = receiver.attempts();
            assert_eq!(attempts.len(), 3, "{protocol}: {attempts:?}");
            assert!(attempts.iter().all(|a| *a == attempts[0] && a.len() == N), "{protocol}: the same batch each time");
            exactly_once(receiver, N);
            // Retries are logged at debug, with the answer that caused them.
            let retry = proxy.wait_log("a retry", |l| l.contains("span export attempt failed; retrying") && l.contains(status)).await;
            assert!(retry.contains("\"level\":\"DEBUG\""), "{retry}");
            assert!(!proxy.logs().iter().any(|l| l.contains("span export failed")), "{protocol}: no failure logged");
        },
    ))
    .await;
}

/// 400 (HTTP) and INVALID_ARGUMENT (gRPC) are final: one attempt per
/// batch, the spans counted `export_failed`, a warning per batch.
#[tokio::test(flavor = "multi_thread")]
async fn final_refusals_are_not_retried_and_are_counted() {
    const N: usize = 30;
    let app = App::start().await;
    let app = &app;
    let http = Faulty::http(script(|_| Answer::Http { status: 400, retry_after: Some("1") })).await;
    let grpc = Faulty::grpc(script(|_| Answer::Grpc { code: tonic::Code::InvalidArgument, retry_delay: None })).await;
    futures_util::future::join_all([(&http, "http/protobuf", "HTTP 400"), (&grpc, "grpc", "gRPC INVALID_ARGUMENT (3)")].map(
        |(receiver, protocol, status)| async move {
            let proxy = traced(app, receiver.addr, protocol)
                .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10")
                .env("OTEL_BSP_SCHEDULE_DELAY", "200")
                .start()
                .await;
            requests(&proxy, N).await;
            let s = settled(&proxy, N as f64).await;
            assert_eq!(s, Spans { ended: N as f64, exported: 0.0, queue_full: 0.0, rejected: 0.0, export_failed: N as f64 }, "{protocol}");
            attempted_once_each(receiver, N);
            let line = warned(&proxy, "the failed batch's warning", &["span export failed; spans dropped", status]).await;
            assert!(line.contains("\"attempts\":1") && line.contains("scripted"), "{line}");
            // One `message` key: the collector's text is a field of its own.
            let fields: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(fields["message"], "span export failed; spans dropped", "{line}");
            assert!(fields["detail"].as_str().is_some_and(|d| d.contains("scripted")), "{line}");
            // One warning per batch, no more.
            let warnings = proxy.logs().iter().filter(|l| l.contains("span export failed")).count();
            assert_eq!(warnings, receiver.attempts().len(), "{protocol}");
            assert!(!proxy.logs().iter().any(|l| l.contains("retrying")), "{protocol}: nothing retried");
        },
    ))
    .await;
}

/// RESOURCE_EXHAUSTED is retried only when the collector says when
/// (`google.rpc.RetryInfo` in `grpc-status-details-bin`).
#[tokio::test(flavor = "multi_thread")]
async fn resource_exhausted_is_retried_only_with_retry_info() {
    const N: usize = 10;
    let app = App::start().await;

    let plain = Faulty::grpc(script(|_| Answer::Grpc { code: tonic::Code::ResourceExhausted, retry_delay: None })).await;
    let told = Faulty::grpc(script(|n| {
        if n == 0 {
            Answer::Grpc { code: tonic::Code::ResourceExhausted, retry_delay: Some(Duration::from_millis(300)) }
        } else {
            Answer::Accept
        }
    }))
    .await;
    let (a, b) = tokio::join!(
        async {
            let proxy = one_batch_of(traced(&app, plain.addr, "grpc"), N).start().await;
            requests(&proxy, N).await;
            let s = settled(&proxy, N as f64).await;
            assert_eq!(s.export_failed, N as f64, "{s:?}");
            attempted_once_each(&plain, N);
            warned(&proxy, "the failure", &["span export failed", "RESOURCE_EXHAUSTED"]).await;
            s
        },
        async {
            let proxy = one_batch_of(traced(&app, told.addr, "grpc"), N).start().await;
            requests(&proxy, N).await;
            let s = settled(&proxy, N as f64).await;
            let attempts = told.attempts();
            assert_eq!(attempts.len(), 2, "{attempts:?}");
            assert_eq!(attempts[0], attempts[1]);
            exactly_once(&told, N);
            // The wait was the collector's, not the backoff's.
            proxy.wait_log("the retry", |l| l.contains("retrying") && l.contains("\"asked\":true") && l.contains("\"wait_ms\":300")).await;
            s
        }
    );
    assert_eq!(a.exported, 0.0);
    assert_eq!(b, Spans { ended: N as f64, exported: N as f64, queue_full: 0.0, rejected: 0.0, export_failed: 0.0 });
}

/// A partial success: the rejected spans are counted `rejected`, the rest
/// exported, and the collector's message logged.
#[tokio::test(flavor = "multi_thread")]
async fn partial_success_counts_rejected_spans_and_logs_the_collectors_message() {
    const N: usize = 20;
    const K: usize = 7;
    const MESSAGE: &str = "7 spans older than the retention window";
    let app = App::start().await;
    let app = &app;
    let http = Faulty::http(script(|_| Answer::Partial { rejected: K, message: MESSAGE })).await;
    let grpc = Faulty::grpc(script(|_| Answer::Partial { rejected: K, message: MESSAGE })).await;
    futures_util::future::join_all([(&http, "http/protobuf"), (&grpc, "grpc")].map(|(receiver, protocol)| async move {
        let proxy = one_batch_of(traced(app, receiver.addr, protocol), N).start().await;
        requests(&proxy, N).await;
        let s = settled(&proxy, N as f64).await;
        assert_eq!(
            s,
            Spans { ended: N as f64, exported: (N - K) as f64, queue_full: 0.0, rejected: K as f64, export_failed: 0.0 },
            "{protocol}"
        );
        assert_eq!(receiver.accepted().len(), N - K);
        let line = warned(&proxy, "the partial success warning", &["partial_success", MESSAGE]).await;
        assert!(line.contains(&format!("\"rejected\":{K}")), "{line}");
    }))
    .await;
}

/// The collector is down (its port bound, not listening: connections are
/// refused) for ten seconds under load, then comes up on the same port.
/// Requests never notice; memory stays bounded by the small queue; the
/// overflow is counted `queue_full`; and afterwards every span that ended
/// is accounted for, the receiver holding exactly the exported ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_down_for_ten_seconds_under_load() {
    const QUEUE: usize = 256;
    const DOWN: Duration = Duration::from_secs(10);
    const CONCURRENCY: usize = 8;
    // RSS growth allowed over the warmed-up baseline. What can grow: the
    // queue (256 spans, under 1 KiB each), one batch in flight, the export
    // client's buffers, and allocator slack from 8 busy connections. 20 MiB
    // is ten times that; an unbounded queue at ~300 spans/s would pass it
    // within seconds.
    const RSS_GROWTH: f64 = 20.0 * 1024.0 * 1024.0;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let collector = socket.local_addr().unwrap();
    let app = App::start().await;
    let proxy = traced(&app, collector, "grpc")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", &QUEUE.to_string())
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .start()
        .await;
    let proxy = &proxy;

    // Warm up (connections, allocator), then the baseline.
    let load = |until: Instant| async move {
        let sent = Arc::new(AtomicU64::new(0));
        futures_util::future::join_all((0..CONCURRENCY).map(|w| {
            let sent = sent.clone();
            async move {
                let client = client();
                let mut i = 0;
                while Instant::now() < until {
                    let req = Request::get(proxy.url(&format!("/load/{w}/{i}"))).body(full("")).unwrap();
                    assert_eq!(send(&client, req).await.unwrap().0, 200);
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }
        }))
        .await;
        sent.load(Ordering::Relaxed)
    };
    let rss = || async { proxy.metric("process_resident_memory_bytes").await.unwrap() };
    let warm = load(Instant::now() + Duration::from_secs(1)).await;
    let baseline = rss().await;

    let until = Instant::now() + DOWN;
    let peak = Arc::new(std::sync::Mutex::new(baseline));
    let sampler = {
        let peak = peak.clone();
        async move {
            while Instant::now() < until {
                let now = rss().await;
                {
                    let mut peak = peak.lock().unwrap();
                    *peak = peak.max(now);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let (sent, ()) = tokio::join!(load(until), sampler);
    let total = warm + sent;
    assert!(total > 500, "only {total} requests in {DOWN:?}");
    let peak = *peak.lock().unwrap();
    assert!(peak - baseline < RSS_GROWTH, "RSS grew from {baseline} to {peak} bytes with the collector down");
    let during = spans(proxy).await.unwrap();
    assert!(during.queue_full > 0.0, "the queue never overflowed: {during:?}");

    // The collector comes up on the same port.
    let receiver = Faulty::grpc_on(socket.listen(1024).unwrap(), script(|_| Answer::Accept));
    let s = settled(proxy, total as f64).await;
    assert_eq!(s.exported + s.queue_full + s.rejected + s.export_failed, s.ended, "{s:?}");
    assert_eq!(s.rejected, 0.0);
    // Once the receiver has everything that was exported (an answer
    // reaches outrider after the receiver stored the spans).
    let accepted = eventually("the receiver to hold the exported spans", || {
        let n = receiver.accepted().len();
        async move { (n as f64 >= s.exported).then_some(n) }
    })
    .await;
    assert_eq!(accepted as f64, s.exported, "{s:?}");
    let ids: HashSet<String> = receiver.accepted().iter().map(|e| e.span_id()).collect();
    assert_eq!(ids.len(), accepted, "a span arrived twice");
    assert!(s.exported > 0.0, "{s:?}");
    eprintln!("{total} requests; RSS baseline {baseline} B, peak {peak} B; {s:?}");
}

/// A collector that keeps answering UNAVAILABLE, with a 30 s export
/// timeout: SIGTERM ends the retries at the exit's flush timeout (3 s),
/// and the unsent spans are counted and named in the last warning.
#[tokio::test(flavor = "multi_thread")]
async fn retries_do_not_hold_the_exit_and_unsent_spans_are_counted() {
    const N: usize = 15;
    let app = App::start().await;
    let receiver = Faulty::grpc(script(|_| Answer::Grpc { code: tonic::Code::Unavailable, retry_delay: None })).await;
    let proxy =
        traced(&app, receiver.addr, "grpc").env("OTEL_EXPORTER_OTLP_TIMEOUT", "30000").env("OTEL_BSP_SCHEDULE_DELAY", "100").start().await;
    requests(&proxy, N).await;
    proxy.wait_log("a retry", |l| l.contains("span export attempt failed; retrying")).await;
    let t = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    // The drain (OUTRIDER_DRAIN_TIMEOUT, idle here) then the 3 s flush.
    let line = warned(&proxy, "the flush warning", &["telemetry flush incomplete"]).await;
    assert!(line.contains(&format!("{N} spans not exported")) && line.contains("export_failed"), "{line}");
    let logs = proxy.logs();
    assert_eq!(proxy.wait().await.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(8), "exit took {:?}", t.elapsed());
    assert!(receiver.accepted().is_empty());
    assert!(logs.iter().any(|l| l.contains("span export cut off") || l.contains("span export failed")), "the cut batch is logged");
}
