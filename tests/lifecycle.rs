//! Probes, buffering while the app is away, and the SIGTERM drain, against
//! a real legacy app process (tests/fixtures/legacy_app.py).

mod common;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use common::*;
use http::Request;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/legacy_app.py");

/// A port for an app that outrider starts itself (wrap mode), so chosen
/// before the app binds it. Not from `bind(0)`: that port is in the
/// kernel's ephemeral range, where another test's `bind(0)` can be handed
/// it before the app binds (a CI run once saw the app fail with "address in
/// use" and another test's server answer 404 in its place). Below 32768 no
/// `bind(0)` goes; a counter from a per-process start keeps this process's
/// picks apart, and each is checked free.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = 20_000 + std::process::id() % 10_000;
    loop {
        let port = 20_000 + (start + NEXT.fetch_add(1, SeqCst)) % 12_000;
        if let Ok(port) = u16::try_from(port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// Wrap-mode arguments for the stand-in app on `port`, logging to `log`,
/// that starts listening only once the test creates `gate`.
fn gated_app(port: u16, log: &std::path::Path, gate: &std::path::Path) -> Vec<String> {
    let mut args: Vec<String> = ["--", "python3", FIXTURE, "--port"].map(String::from).into();
    args.push(port.to_string());
    args.extend(["--log".into(), log.to_string_lossy().into_owned(), "--start-when".into(), gate.to_string_lossy().into_owned()]);
    args
}

fn temp_file(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("outrider-{name}-{}-{nanos}", std::process::id()))
}

/// One line of the app's event log.
#[derive(Debug)]
struct Event {
    kind: String,
    at: f64,
}

fn app_events(log: &PathBuf) -> Vec<Event> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Event { kind: f.next()?.to_owned(), at: f.next()?.parse().ok()? })
        })
        .collect()
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A tiny deterministic PRNG, so load patterns repeat run to run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn status_of(url: &str) -> u16 {
    get(url).await.map(|r| r.0).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_nothing_and_stops_the_app_last() {
    const DRAIN_DELAY: Duration = Duration::from_secs(2);
    let port = free_port();
    let log = temp_file("drain-app.log");
    let proxy = outrider(&format!("http://127.0.0.1:{port}"))
        .env("OUTRIDER_DRAIN_DELAY", "2s")
        .env("OUTRIDER_DRAIN_TIMEOUT", "15s")
        .args(["--", "python3", FIXTURE, "--port", &port.to_string(), "--log", log.to_str().unwrap(), "--term-exit", "0"])
        .start()
        .await;
    let readyz = proxy.admin_url("/readyz");
    wait_status(&readyz, 200).await;

    // When /readyz was first seen failing; requests begun after it are
    // counted per kind of client.
    let readyz_failed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let keep_alive_ok_after_readyz_failed = Arc::new(AtomicUsize::new(0));
    let new_conn_ok_after_readyz_failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();

    // Keep-alive clients: a shared pooled client, as a service mesh peer.
    let keep_alive = client();
    for w in 0..12u64 {
        let (keep_alive, stop, failures, ok, after, failed_at, url) = (
            keep_alive.clone(),
            stop.clone(),
            failures.clone(),
            ok.clone(),
            keep_alive_ok_after_readyz_failed.clone(),
            readyz_failed_at.clone(),
            proxy.url(""),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
            while !stop.load(SeqCst) {
                // Mostly quick requests, one in ten up to a second long.
                let ms = if rng.next().is_multiple_of(10) { 200 + rng.next() % 800 } else { rng.next() % 10 };
                let started = Instant::now();
                let req = Request::get(format!("{url}/sleep?ms={ms}")).body(full("")).unwrap();
                match send(&keep_alive, req).await {
                    Ok((200, _, body)) if body == "legacy" => {
                        ok.fetch_add(1, SeqCst);
                        if failed_at.lock().unwrap().is_some_and(|t| started > t) {
                            after.fetch_add(1, SeqCst);
                        }
                    }
                    other => failures.lock().unwrap().push(format!("keep-alive: {other:?}")),
                }
            }
        }));
    }
    // New-connection clients: one TCP connection per request.
    for w in 0..4u64 {
        let (stop, failures, ok, after, failed_at, addr) =
            (stop.clone(), failures.clone(), ok.clone(), new_conn_ok_after_readyz_failed.clone(), readyz_failed_at.clone(), proxy.listen);
        workers.push(tokio::spawn(async move {
            let mut rng = XorShift(0xD1B5_4A32_D192_ED03 ^ (w + 1));
            while !stop.load(SeqCst) {
                let ms = rng.next() % 20;
                let started = Instant::now();
                let response = raw(addr, format!("GET /sleep?ms={ms} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await;
                if response.starts_with("HTTP/1.1 200") && response.ends_with("legacy") {
                    ok.fetch_add(1, SeqCst);
                    if failed_at.lock().unwrap().is_some_and(|t| started > t) {
                        after.fetch_add(1, SeqCst);
                    }
                } else {
                    failures.lock().unwrap().push(format!("new connection: {response:?}"));
                }
            }
        }));
    }

    wait_until("100 responses under load before SIGTERM", || ok.load(SeqCst) >= 100).await;
    proxy.signal(Signal::SIGTERM);

    // Readiness fails while traffic is still flowing: requests begun after
    // /readyz was seen failing, on kept-alive and on new connections, are
    // still served (the listener stays open for the drain delay). Had
    // readiness failed only as the listener closed, no new connection
    // begun after it would have been answered.
    wait_status(&proxy.admin_url("/readyz"), 503).await;
    *readyz_failed_at.lock().unwrap() = Some(Instant::now());
    wait_until("requests begun after /readyz failed to be served, on kept-alive and new connections", || {
        keep_alive_ok_after_readyz_failed.load(SeqCst) >= 8 && new_conn_ok_after_readyz_failed.load(SeqCst) >= 8
    })
    .await;

    // Then the clients stop, as they do once endpoint removal has reached
    // them, well before the listener closes at the end of the drain delay.
    stop.store(true, SeqCst);
    for w in workers {
        tokio::time::timeout(PATIENCE, w).await.expect("a client's request never ended").unwrap();
    }
    let last_response_at = now_unix();
    let code = proxy.wait().await;

    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} failed requests, first: {:?}", failures.len(), failures.first());
    assert_eq!(code.code(), Some(0), "outrider's exit code is the app's");

    let events = app_events(&log);
    let sigterm = events.iter().find(|e| e.kind == "sigterm").expect("the app never got SIGTERM");
    let last_end = events.iter().filter(|e| e.kind == "end").map(|e| e.at).fold(0.0, f64::max);
    let begins = events.iter().filter(|e| e.kind == "begin").count();
    let ends = events.iter().filter(|e| e.kind == "end").count();
    assert!(sigterm.at > last_end, "the app got SIGTERM {:.3}s before its last response", last_end - sigterm.at);
    // Stopped soon after the drain delay, not at the 15 s drain timeout.
    assert!(
        sigterm.at <= last_response_at + DRAIN_DELAY.as_secs_f64() + 5.0,
        "the app got SIGTERM {:.3}s after the last response",
        sigterm.at - last_response_at
    );
    assert_eq!(begins, ends, "the app began {begins} requests but finished {ends}");
    assert_eq!(ends, ok.load(SeqCst), "every response the clients got was one the app finished");
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_sent_before_the_app_listens_are_held_not_failed() {
    let port = free_port();
    let log = temp_file("late-app.log");
    // The app listens only once the test creates this file.
    let gate = temp_file("late-app.gate");
    let proxy = outrider(&format!("http://127.0.0.1:{port}"))
        // Once the app has started it is checked every 30 s; until then
        // every 100 ms, which is what must flip the probes promptly.
        .env("OUTRIDER_APP_HEALTH_INTERVAL", "30s")
        .args(gated_app(port, &log, &gate))
        .start()
        .await;
    let startupz = proxy.admin_url("/startupz");
    assert_eq!(status_of(&startupz).await, 503);
    let (status, _, body) = get(&proxy.admin_url("/readyz")).await.unwrap();
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).starts_with("app not ready: connect refused"), "{body:?}");

    // Requests while the app certainly does not listen: all held.
    let mut requests = Vec::new();
    for i in 0..10u64 {
        let url = proxy.url(&format!("/sleep?ms={i}"));
        requests.push(tokio::spawn(async move { get(&url).await.map(|r| r.0) }));
    }
    proxy.wait_metric("outrider_buffered_requests", |held| held == 10.0).await;
    // The probes do not pass before the app listens.
    assert_eq!(status_of(&startupz).await, 503, "/startupz passed while the app was not listening");

    // Let it start, and keep sending while it does.
    std::fs::write(&gate, "").unwrap();
    for i in 10..20u64 {
        let url = proxy.url(&format!("/sleep?ms={i}"));
        requests.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i - 10) * 25)).await;
            get(&url).await.map(|r| r.0)
        }));
    }
    // The probes flip once the app is up, well before the 30 s check
    // interval would have noticed it.
    wait_status(&startupz, 200).await;
    assert_eq!(status_of(&proxy.admin_url("/readyz")).await, 200);
    let started = app_events(&log).iter().find(|e| e.kind == "start").map(|e| e.at).expect("app start not logged");
    let lag = now_unix() - started;
    assert!(lag < 10.0, "/startupz passed {lag:.3}s after the app started listening");

    for r in requests {
        let status = tokio::time::timeout(PATIENCE, r).await.expect("a request sent during start-up was never answered").unwrap();
        assert_eq!(status.unwrap(), 200, "a request sent during start-up failed");
    }
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(gate);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_app_restarted_within_the_buffer_timeout_costs_no_request() {
    let port = free_port();
    let log = temp_file("crash-app.log");
    // A restart loop stands in for a supervisor inside the app's container;
    // it restarts the app once the test creates `gate`, so the requests
    // below are certainly sent while the app is down.
    let gate = temp_file("crash-app.gate");
    let script = format!(
        "while :; do python3 {FIXTURE} --port {port} --log {log}; until [ -e {gate} ]; do sleep 0.02; done; rm -f {gate}; done",
        log = log.display(),
        gate = gate.display()
    );
    let proxy = outrider(&format!("http://127.0.0.1:{port}")).args(["--", "sh", "-c", &script]).start().await;
    let readyz = proxy.admin_url("/readyz");
    wait_status(&readyz, 200).await;
    assert_eq!(get(&proxy.url("/")).await.unwrap().0, 200);

    // Kill the app between requests, as a crash would.
    let pid = find_app_pid(port).expect("app pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    eventually("the app's port to close", || async move { std::net::TcpStream::connect(("127.0.0.1", port)).is_err().then_some(()) }).await;

    // While it is down, requests are held and then served by the new app.
    let mut requests = Vec::new();
    for i in 0..10 {
        let url = proxy.url(&format!("/after-crash/{i}"));
        requests.push(tokio::spawn(async move { get(&url).await.map(|r| r.0) }));
    }
    proxy.wait_metric("outrider_buffered_requests", |held| held == 10.0).await;
    std::fs::write(&gate, "").unwrap();
    for r in requests {
        let status = tokio::time::timeout(PATIENCE, r).await.expect("a request held during the restart was never answered").unwrap();
        assert_eq!(status.unwrap(), 200, "a request during the restart failed");
    }
    let starts = app_events(&log).iter().filter(|e| e.kind == "start").count();
    assert_eq!(starts, 2, "the app should have been started twice");
    let _ = std::fs::remove_file(log);
}

/// The PID of the python process listening on `port`, from its cmdline.
fn find_app_pid(port: u16) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let program = cmdline.split_whitespace().next()?;
        (program.ends_with("python3") && cmdline.contains("legacy_app.py") && cmdline.contains(&format!("--port {port} "))).then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_buffer_is_bounded_in_count_time_and_memory() {
    // A request that is held waits this long; one that is refused, or
    // failed fast, is answered well before.
    const BUFFER_TIMEOUT: Duration = Duration::from_secs(3);
    let port = free_port();
    let proxy =
        outrider(&format!("http://127.0.0.1:{port}")).env("OUTRIDER_BUFFER_MAX", "4").env("OUTRIDER_BUFFER_TIMEOUT", "3s").start().await;
    let rss_before = proxy.peak_rss_kib();

    // Four requests fill the buffer and wait...
    let t0 = Instant::now();
    let held: Vec<_> = (0..4)
        .map(|_| {
            let url = proxy.url("/held");
            tokio::spawn(async move { (get(&url).await.unwrap(), Instant::now()) })
        })
        .collect();
    proxy.wait_metric("outrider_buffered_requests", |n| n == 4.0).await;
    // ...and everything past the bound is refused, not held: answered
    // before a hold could have ended.
    for _ in 0..200 {
        let started = Instant::now();
        let (status, headers, _) = get(&proxy.url("/excess")).await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(headers["retry-after"], "1");
        let took = started.elapsed();
        assert!(took < BUFFER_TIMEOUT, "a request past the buffer's bound took {took:?}: held, not refused");
    }
    let mut last_answer = t0;
    for h in held {
        let ((status, headers, body), answered) =
            tokio::time::timeout(PATIENCE, h).await.expect("a held request was never answered").unwrap();
        assert_eq!(status, 503, "{body:?}");
        assert_eq!(headers["retry-after"], "1");
        last_answer = last_answer.max(answered);
    }
    let waited = last_answer - t0;
    assert!(waited >= BUFFER_TIMEOUT && waited < BUFFER_TIMEOUT + Duration::from_secs(5), "held for {waited:?}");

    // Having given up once, outrider fails fast until the app is back...
    let started = Instant::now();
    assert_eq!(get(&proxy.url("/")).await.unwrap().0, 503);
    let took = started.elapsed();
    assert!(took < BUFFER_TIMEOUT, "fail-fast took {took:?}: the request was held again");
    proxy.wait_log("the fail-fast log line", |l| l.contains("failing fast until it does")).await;
    let grown = proxy.peak_rss_kib().saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB for 204 refused requests");

    // ...and serves again as soon as it is.
    let app = App::serve(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap()).await;
    let url = proxy.url("/back");
    eventually("the app to be used again", || {
        let url = url.clone();
        async move { (status_of(&url).await == 200).then_some(()) }
    })
    .await;
    assert!(app.count() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_endpoint_blocks_until_in_flight_requests_finish() {
    let app = App::start().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_DRAIN_DELAY", "300ms").env("OUTRIDER_DRAIN_TIMEOUT", "30s").start().await;
    let readyz = proxy.admin_url("/readyz");
    wait_status(&readyz, 200).await;
    let slow_url = proxy.url("/slow/1500");
    let slow_sent = Instant::now();
    let slow = tokio::spawn(async move { get(&slow_url).await.unwrap().0 });
    eventually("the slow request to reach the app", || {
        let n = app.count();
        async move { (n >= 1).then_some(()) }
    })
    .await;

    let (status, _, body) = send(&client(), Request::post(proxy.admin_url("/drain")).body(full("")).unwrap()).await.unwrap();
    let drained_at = Instant::now();
    assert_eq!((status, &body[..]), (200, &b"drained\n"[..]));
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request was cut");
    // The app answers the slow request 1.5 s after it was sent, so a /drain
    // that waited for it cannot answer sooner; one that did not would have
    // answered after the 300 ms drain delay. (Comparing the instants at
    // which the two client tasks saw their answers raced: the spawned task
    // can be scheduled after the /drain answer it preceded on the wire.)
    assert!(
        drained_at.duration_since(slow_sent) >= Duration::from_millis(1500),
        "/drain answered {:?} after the in-flight request was sent, before it can have finished",
        drained_at.duration_since(slow_sent)
    );
    assert_eq!(status_of(&readyz).await, 503);

    // Pod mode: still alive (a native sidecar must not exit on its own),
    // until its own SIGTERM, which then ends it promptly: it does not
    // drain again, up to the 30 s drain timeout.
    assert!(proxy.child_running());
    let signalled = Instant::now();
    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(10), "exit took {:?} after SIGTERM", signalled.elapsed());
}

/// A request still running at `OUTRIDER_DRAIN_TIMEOUT` is cut: its
/// connection closes at the deadline, the app gets SIGTERM only after that,
/// and outrider exits within drain timeout + app stop timeout + a margin.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_timeout_cuts_the_connections_still_open() {
    const DRAIN_TIMEOUT: Duration = Duration::from_millis(1500);
    const APP_STOP_TIMEOUT: Duration = Duration::from_secs(5);
    let port = free_port();
    let log = temp_file("cut-app.log");
    let proxy = outrider(&format!("http://127.0.0.1:{port}"))
        .env("OUTRIDER_DRAIN_DELAY", "500ms")
        .env("OUTRIDER_DRAIN_TIMEOUT", "1500ms")
        .env("OUTRIDER_APP_STOP_TIMEOUT", "5s")
        .args(["--", "python3", FIXTURE, "--port", &port.to_string(), "--log", log.to_str().unwrap()])
        .start()
        .await;
    wait_status(&proxy.admin_url("/readyz"), 200).await;

    // A request the app takes 60 s to answer, far past the drain timeout.
    let mut stream = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    stream.write_all(b"GET /sleep?ms=60000 HTTP/1.1\r\nHost: legacy\r\n\r\n").await.unwrap();
    eventually("the app to receive the slow request", || {
        let begun = app_events(&log).iter().any(|e| e.kind == "begin");
        async move { begun.then_some(()) }
    })
    .await;

    let signalled = Instant::now();
    let signalled_at = now_unix();
    proxy.signal(Signal::SIGTERM);
    let mut buf = [0u8; 512];
    let read =
        tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("the connection was still open long after the drain timeout");
    let closed_after = signalled.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the connection closed, got {:?}",
        read.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    assert!(closed_after >= DRAIN_TIMEOUT, "cut after {closed_after:?}, before the {DRAIN_TIMEOUT:?} drain timeout");

    let logs = proxy.logs.clone();
    assert_eq!(proxy.wait().await.code(), Some(0));
    let exited_after = signalled.elapsed();
    assert!(exited_after < DRAIN_TIMEOUT + APP_STOP_TIMEOUT + Duration::from_secs(5), "outrider exited {exited_after:?} after SIGTERM");
    // The app heard of the shutdown only once the drain was over, and the
    // cut was logged with its count.
    let sigterm = app_events(&log).into_iter().find(|e| e.kind == "sigterm").expect("the app never got SIGTERM");
    assert!(
        sigterm.at >= signalled_at + DRAIN_TIMEOUT.as_secs_f64(),
        "the app got SIGTERM {:.3} s after outrider's, before the drain timeout",
        sigterm.at - signalled_at
    );
    eventually("a log line counting the cut connection", || {
        let found = logs.lock().unwrap().iter().any(|l| l.contains("drain timeout reached") && l.contains(r#""remaining":1"#));
        async move { found.then_some(()) }
    })
    .await;
    let _ = std::fs::remove_file(log);
}

/// Pod mode, drained through `/drain`: at the drain timeout an HTTP/2
/// stream still waiting for the app and an open WebSocket are cut too, and
/// `/drain` answers once they are.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_timeout_cuts_http2_streams_and_websockets_too() {
    use futures_util::StreamExt;
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
    let app = App::start().await;
    let proxy = outrider(&app.url()).env("OUTRIDER_DRAIN_DELAY", "250ms").env("OUTRIDER_DRAIN_TIMEOUT", "1s").start().await;
    wait_status(&proxy.admin_url("/readyz"), 200).await;

    let slow_url = proxy.url("/slow/60000");
    let slow = tokio::spawn(async move { h2c_client().request(Request::get(slow_url).body(full("")).unwrap()).await.map(|r| r.status()) });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.listen)).await.unwrap();
    eventually("the slow HTTP/2 request to reach the app", || {
        let n = app.count();
        async move { (n >= 2).then_some(()) }
    })
    .await;

    let started = Instant::now();
    let (status, _, _) = send(&client(), Request::post(proxy.admin_url("/drain")).body(full("")).unwrap()).await.unwrap();
    assert_eq!(status, 200);
    assert!(started.elapsed() >= DRAIN_TIMEOUT, "/drain answered after {:?}, before the drain timeout", started.elapsed());

    let slow = tokio::time::timeout(PATIENCE, slow).await.expect("the HTTP/2 stream outlived the cut").unwrap();
    assert!(slow.is_err(), "the HTTP/2 stream got an answer instead of a cut: {slow:?}");
    let next = tokio::time::timeout(PATIENCE, ws.next()).await.expect("the WebSocket outlived the cut");
    assert!(
        matches!(next, None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))),
        "the WebSocket is still open: {next:?}"
    );
    proxy.wait_log("the cut counted in the log", |l| l.contains("drain timeout reached") && l.contains(r#""remaining":2"#)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_skips_the_drain() {
    let port = free_port();
    let log = temp_file("fast-app.log");
    // The drain it skips would take 30 s at least.
    let proxy = outrider(&format!("http://127.0.0.1:{port}"))
        .env("OUTRIDER_DRAIN_DELAY", "30s")
        .env("OUTRIDER_DRAIN_TIMEOUT", "60s")
        .args(["--", "python3", FIXTURE, "--port", &port.to_string(), "--log", log.to_str().unwrap(), "--term-exit", "9"])
        .start()
        .await;
    let readyz = proxy.admin_url("/readyz");
    wait_status(&readyz, 200).await;
    proxy.signal(Signal::SIGTERM);
    wait_status(&readyz, 503).await;
    let t = Instant::now();
    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(9));
    assert!(t.elapsed() < Duration::from_secs(10), "fast shutdown took {:?}", t.elapsed());
    assert!(app_events(&log).iter().any(|e| e.kind == "sigterm"));
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_ready_exits_0_once_ready_and_1_on_timeout() {
    let port = free_port();
    let log = temp_file("wait-app.log");
    // The app listens only once the test creates this file.
    let gate = temp_file("wait-app.gate");
    let proxy = outrider(&format!("http://127.0.0.1:{port}")).args(gated_app(port, &log, &gate)).start().await;
    let admin = proxy.admin.to_string();
    let early = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || std::process::Command::new(BIN).args(["wait-ready", "--admin", &admin, "--timeout", "200ms"]).status().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(early.code(), Some(1), "ready while the app was not listening");
    let waiting = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN).args(["wait-ready", "--admin", &admin, "--timeout", "20s"]).status().unwrap()
    });
    std::fs::write(&gate, "").unwrap();
    let status = tokio::time::timeout(PATIENCE, waiting).await.expect("wait-ready outlived its own timeout").unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(app_events(&log).iter().any(|e| e.kind == "start"), "wait-ready returned before the app started");
    assert_eq!(status_of(&proxy.admin_url("/readyz")).await, 200);
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(gate);
}

/// Idle keep-alive connections are parked (hyper's buffers freed) but still
/// drain like any other: one that sends a request during the drain gets its
/// answer with `Connection: close` and is then closed; one that stays idle
/// is closed when the listener closes, after the drain delay.
#[tokio::test(flavor = "multi_thread")]
async fn parked_connections_drain_like_any_other() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DRAIN_DELAY: Duration = Duration::from_secs(1);
    let app = App::start().await;
    let proxy = outrider(&app.url())
        .env("OUTRIDER_LOG", "info,outrider::server=trace")
        .env("OUTRIDER_DRAIN_DELAY", "1s")
        // Far off: an idle connection must close with the listener, not
        // at the cut.
        .env("OUTRIDER_DRAIN_TIMEOUT", "30s")
        .start()
        .await;
    // One keep-alive exchange each, then idle until both have parked.
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut conn).await, (200, "hello from app".to_string()));
        conns.push(conn);
    }
    let parks = || proxy.logs().iter().filter(|l| l.contains("idle; parking")).count();
    eventually("both connections park", || async { (parks() >= 2).then_some(()) }).await;

    let signalled = Instant::now();
    proxy.signal(Signal::SIGTERM);
    wait_status(&proxy.admin_url("/readyz"), 503).await;

    // A parked connection used during the drain: answered, told to go, closed.
    let mut busy = conns.remove(0);
    busy.write_all(b"GET /during HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, busy.read_to_end(&mut answer)).await.expect("closed after its answer").unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(app.last().uri, "/during");

    // A parked connection left idle: closed once the listener closes.
    let mut idle = conns.remove(0);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "an idle parked connection is closed without a response: {read:?}");
    let closed_after = signalled.elapsed();
    assert!(closed_after >= DRAIN_DELAY, "closed {closed_after:?} after SIGTERM, inside the {DRAIN_DELAY:?} drain delay");
    assert!(closed_after < Duration::from_secs(10), "closed {closed_after:?} after SIGTERM: with the cut, not with the listener");
    assert!(proxy.wait().await.success());
}

// ===== HTTP/2 frames, written and read by hand =====

const H2_DATA: u8 = 0x0;
const H2_HEADERS: u8 = 0x1;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;
const H2_END_STREAM: u8 = 0x1;
const H2_ACK: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;

/// One frame as read off the wire.
#[derive(Debug)]
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl H2Frame {
    /// A GOAWAY's last stream id and error code.
    fn goaway(&self) -> Option<(u32, u32)> {
        let p = self.payload.get(..8).filter(|_| self.kind == H2_GOAWAY)?;
        let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        Some((word(&p[..4]) & 0x7fff_ffff, word(&p[4..8])))
    }
}

/// A header block of literal fields with indexed names (RFC 7541 §6.2.2),
/// after `indexed`, fields of the static table sent whole (§6.1).
fn hpack(indexed: &[u8], literals: &[(u8, &str)]) -> Vec<u8> {
    let mut block: Vec<u8> = indexed.iter().map(|i| 0x80 | i).collect();
    for (name, value) in literals {
        assert!(*name < 16 && value.len() < 127);
        block.push(*name);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// An HTTP/2 client that writes its frames by hand (so it can do what a
/// client library would refuse to, such as open a stream after a GOAWAY)
/// and answers SETTINGS and PING as a client must.
struct RawH2 {
    stream: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl RawH2 {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut h2 = Self { stream, read: Vec::new() };
        h2.send(H2_SETTINGS, 0, 0, &[]).await;
        h2
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame, or `None` once the server has closed the connection.
    async fn next(&mut self) -> Option<H2Frame> {
        loop {
            if self.read.len() >= 9 {
                let len = usize::from(self.read[0]) << 16 | usize::from(self.read[1]) << 8 | usize::from(self.read[2]);
                if self.read.len() >= 9 + len {
                    let head: Vec<u8> = self.read.drain(..9).collect();
                    let frame = H2Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                        payload: self.read.drain(..len).collect(),
                    };
                    if frame.flags & H2_ACK == 0 && frame.kind == H2_SETTINGS {
                        self.send(H2_SETTINGS, H2_ACK, 0, &[]).await;
                    }
                    if frame.flags & H2_ACK == 0 && frame.kind == H2_PING {
                        self.send(H2_PING, H2_ACK, 0, &frame.payload).await;
                    }
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await.expect("a frame, or the connection's end, in time") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// HTTP/2 on SIGTERM: the connection gets a GOAWAY as the drain starts,
/// while the listener still accepts (not when it closes); the stream in
/// flight (a request whose body the client finishes only after the GOAWAY)
/// completes; a stream opened after the final GOAWAY is not served; and
/// the connection then ends cleanly, long before the drain timeout.
#[tokio::test(flavor = "multi_thread")]
async fn http2_gets_a_goaway_when_the_drain_starts_and_its_open_stream_completes() {
    let app = App::start().await;
    // A drain delay and timeout far longer than the test: whatever ends
    // the connection is the GOAWAY, not the listener closing or the cut.
    let proxy = outrider(&app.url()).env("OUTRIDER_DRAIN_DELAY", "60s").env("OUTRIDER_DRAIN_TIMEOUT", "120s").start().await;
    wait_status(&proxy.admin_url("/readyz"), 200).await;

    // Stream 1: a POST whose body is left unfinished, so it stays in
    // flight, at outrider and at the app, until the test ends it.
    let mut h2 = RawH2::connect(proxy.listen).await;
    let headers = hpack(&[3, 6], &[(4, "/count"), (1, "h2.test")]); // :method POST, :scheme http, :path, :authority
    h2.send(H2_HEADERS, H2_END_HEADERS, 1, &headers).await;
    h2.send(H2_DATA, 0, 1, b"hello ").await;
    wait_until("the stream's request at the app", || app.seen.lock().unwrap().iter().any(|s| s.uri == "/count")).await;

    proxy.signal(Signal::SIGTERM);
    // GOAWAY, NO_ERROR: first "no new streams" (last stream id 2^31-1),
    // then, once the client has answered a PING, the last stream that will
    // be served. Nothing of stream 1's response can have come yet.
    let mut goaways = Vec::new();
    loop {
        let frame = h2.next().await.expect("the connection closed before its final GOAWAY");
        assert!(!(frame.stream == 1 && matches!(frame.kind, H2_HEADERS | H2_DATA | H2_RST_STREAM)), "stream 1 answered early: {frame:?}");
        if let Some(goaway) = frame.goaway() {
            goaways.push(goaway);
            if goaway.0 != 0x7fff_ffff {
                break;
            }
        }
    }
    eprintln!("GOAWAY frames (last stream id, error code): {goaways:?}");
    assert!(goaways.iter().all(|&(_, code)| code == 0), "a GOAWAY with an error: {goaways:?}");
    assert_eq!(goaways.last(), Some(&(1, 0)), "the final GOAWAY must keep stream 1 and only it");

    // The GOAWAY came as the drain began: the listener still accepts, and
    // serves new connections without keep-alive.
    let (status, _, _) = get(&proxy.admin_url("/readyz")).await.unwrap();
    assert_eq!(status, 503);
    let fresh = raw(proxy.listen, b"GET /fresh HTTP/1.1\r\nHost: t\r\n\r\n").await.to_lowercase();
    assert!(fresh.starts_with("http/1.1 200") && fresh.contains("connection: close"), "{fresh}");

    // Stream 3, opened after the GOAWAY, is not served; written before
    // stream 1 ends, so the connection is certainly still open to read it.
    let headers = hpack(&[2, 6], &[(4, "/after-goaway"), (1, "h2.test")]); // :method GET, :scheme http, :path, :authority
    h2.send(H2_HEADERS, H2_END_HEADERS | H2_END_STREAM, 3, &headers).await;
    // Stream 1 ends its body now, after the GOAWAY, and gets its answer.
    h2.send(H2_DATA, H2_END_STREAM, 1, b"world").await;

    let (mut status_block, mut body, mut ended, mut stream3) = (None, Vec::new(), false, Vec::new());
    while let Some(frame) = h2.next().await {
        match (frame.stream, frame.kind) {
            (1, H2_HEADERS) => status_block = Some(frame.payload.clone()),
            (1, H2_DATA) => body.extend_from_slice(&frame.payload),
            (1, H2_RST_STREAM) => panic!("stream 1 was reset: {frame:?}"),
            (3, _) => stream3.push(frame.kind),
            _ => {}
        }
        if frame.stream == 1 && frame.flags & H2_END_STREAM != 0 && matches!(frame.kind, H2_HEADERS | H2_DATA) {
            ended = true;
        }
        if let Some(goaway) = frame.goaway() {
            assert_eq!(goaway, (1, 0), "a later GOAWAY changed its terms");
        }
    }
    // `:status 200` is entry 8 of HPACK's static table.
    assert_eq!(status_block.as_deref().and_then(<[u8]>::first), Some(&0x88), "stream 1's response is not a 200");
    assert!(ended, "stream 1's response did not end before the connection closed");
    assert_eq!(String::from_utf8_lossy(&body), "11", "the app did not get the whole body of stream 1");
    assert!(!stream3.contains(&H2_HEADERS) && !stream3.contains(&H2_DATA), "stream 3 was answered: frame types {stream3:?}");
    eprintln!("frames on stream 3 (opened after the GOAWAY): {stream3:?}");
    assert!(app.seen.lock().unwrap().iter().all(|s| s.uri != "/after-goaway"), "the stream opened after the GOAWAY reached the app");

    // The connection ended by itself, well inside the drain delay: still
    // draining, nothing cut.
    assert!(proxy.child_running());
    assert_eq!(proxy.metric("outrider_drain_cut_connections_total").await, Some(0.0));
}
