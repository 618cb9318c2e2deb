//! Who may call `/drain` on the admin port: a loopback peer always; anyone
//! else only with `Authorization: Bearer $OUTRIDER_ADMIN_TOKEN`, and 403
//! otherwise. Against the real binary, with the admin listener on
//! 0.0.0.0 and a client socket bound to one of this host's non-loopback
//! addresses, so that outrider sees a remote peer without any network set-up.
//!
//! A refused call must not start the drain. Besides readiness, each test
//! proves it through the one drain a process can have: the call allowed at
//! the end is the first to ask for it (only the first caller is logged as
//! "drain requested through the admin endpoint"), which it would not be had
//! a refused call asked before.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::*;
use http::Request;
use http_body_util::BodyExt;

/// At least 16 characters, as the configuration requires.
const TOKEN: &str = "s3cret-admin-token-0123456789";

/// This host's IPv4 addresses outside 127.0.0.0/8, from the kernel's local
/// routing table: every address listed there as `/32 host LOCAL` can be
/// bound and connected to from this host, whatever its link's state.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let lines: Vec<&str> = trie.lines().collect();
    lines.windows(2).find_map(|w| {
        if w[1].trim() != "/32 host LOCAL" {
            return None;
        }
        let ip: Ipv4Addr = w[0].trim().strip_prefix("|-- ")?.parse().ok()?;
        (!ip.is_loopback()).then_some(ip)
    })
}

/// The address a "remote" client connects from; `None` (and a printed
/// `SKIPPED`) only where the host truly has no other address. CI must
/// have one, so there the absence fails the test instead.
fn remote_source() -> Option<IpAddr> {
    let ip = non_loopback_ipv4();
    if ip.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but this host has no non-loopback IPv4 address to call /drain from");
        eprintln!("SKIPPED: this host has no non-loopback IPv4 address, so a remote /drain caller cannot be simulated");
    }
    ip.map(IpAddr::V4)
}

/// An outrider whose admin listener accepts on every address.
async fn start(app: &App, token: Option<&str>) -> Outrider {
    let mut spawn = outrider(&app.url()).env("OUTRIDER_ADMIN_LISTEN", "0.0.0.0:0");
    if let Some(token) = token {
        spawn = spawn.env("OUTRIDER_ADMIN_TOKEN", token);
    }
    let proxy = spawn.start().await;
    wait_status(&proxy.admin_url("/readyz"), 200).await;
    proxy
}

/// One request to `/drain` on the admin port at `to`'s port and `from`'s
/// address, from a socket bound to `from`: status and body.
async fn call_drain(from: IpAddr, to: SocketAddr, method: &str, authorization: Option<&str>) -> (u16, String) {
    let socket = match from {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("a socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind the client to its source address");
    let stream = socket.connect(SocketAddr::new(from, to.port())).await.expect("connect to the admin port");
    assert_eq!(stream.local_addr().expect("local address").ip(), from);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri("/drain").header("host", "outrider");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = sender.send_request(request.body(full("")).expect("a request")).await.expect("a response from /drain");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Not draining: ready, `outrider_draining 0`, and traffic served with
/// keep-alive (a draining outrider closes every HTTP/1 connection after
/// its response).
async fn assert_not_draining(proxy: &Outrider, after: &str) {
    let (status, _, body) = get(&proxy.admin_url("/readyz")).await.expect("/readyz");
    assert_eq!((status, &body[..]), (200, &b"ready\n"[..]), "not ready after {after}");
    assert_eq!(proxy.metric("outrider_draining").await, Some(0.0), "draining after {after}");
    let (status, headers, body) = get(&proxy.url("/still-served")).await.expect("a proxied request");
    assert_eq!((status, &body[..]), (200, &b"hello from app"[..]), "traffic not served after {after}");
    assert!(headers.get("connection").is_none_or(|v| v != "close"), "keep-alive turned off after {after}: {headers:?}");
}

/// The drain started and is the one `peer_ip` asked for first.
async fn assert_drained_by(proxy: &Outrider, peer_ip: IpAddr) {
    let (status, _, body) = get(&proxy.admin_url("/readyz")).await.expect("/readyz");
    assert_eq!((status, &body[..]), (503, &b"draining\n"[..]));
    assert_eq!(proxy.metric("outrider_draining").await, Some(1.0));
    let started = proxy.wait_log("the drain's start", |l| l.contains("drain started")).await;
    assert!(started.contains(r#""trigger":"/drain""#), "{started}");
    let requested: Vec<String> = proxy.logs().into_iter().filter(|l| l.contains("drain requested through the admin endpoint")).collect();
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert!(requested[0].contains(&format!(r#""peer":"{peer_ip}:"#)), "the drain was first asked for by someone else: {requested:?}");
}

/// Without a token: a remote caller is refused and nothing drains; a
/// loopback caller (here with `GET`, as the kubelet's `httpGet` hook
/// calls) drains.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_only_loopback_may_drain() {
    let Some(remote) = remote_source() else { return };
    let app = App::start().await;
    let proxy = start(&app, None).await;

    for method in ["POST", "GET"] {
        let (status, body) = call_drain(remote, proxy.admin, method, None).await;
        assert_eq!((status, body.as_str()), (403, "forbidden: /drain needs a loopback caller or the admin token\n"), "{method}");
        // Without a token configured, no token is right.
        let (status, _) = call_drain(remote, proxy.admin, method, Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, 403, "{method} with a bearer token nobody configured");
    }
    proxy.wait_log("the refusal's log line", |l| l.contains("refused /drain") && l.contains(&format!(r#""peer":"{remote}:"#))).await;
    assert_not_draining(&proxy, "a refused remote /drain").await;

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (status, body) = call_drain(loopback, proxy.admin, "GET", None).await;
    assert_eq!((status, body.as_str()), (200, "drained\n"));
    assert_drained_by(&proxy, loopback).await;
}

/// With a token: a remote caller with none, a wrong one, or the right one
/// in another scheme is refused; the right bearer token drains; the token
/// never reaches the log, nor does a wrong one.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_a_remote_caller_needs_exactly_it() {
    let Some(remote) = remote_source() else { return };
    let app = App::start().await;
    let proxy = start(&app, Some(TOKEN)).await;

    let wrong_same_length = format!("{}X", &TOKEN[..TOKEN.len() - 1]);
    let refused = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Bearer {wrong_same_length}")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}extra")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
    ];
    for authorization in &refused {
        let (status, body) = call_drain(remote, proxy.admin, "POST", authorization.as_deref()).await;
        assert_eq!(
            (status, body.as_str()),
            (403, "forbidden: /drain needs a loopback caller or the admin token\n"),
            "Authorization: {authorization:?}"
        );
    }
    assert_not_draining(&proxy, "refused remote /drain calls").await;

    // The scheme in any case, with any number of spaces (RFC 9110 §11.1,
    // RFC 6750 §2.1).
    let (status, body) = call_drain(remote, proxy.admin, "POST", Some(&format!("bearer  {TOKEN}"))).await;
    assert_eq!((status, body.as_str()), (200, "drained\n"));
    assert_drained_by(&proxy, remote).await;

    let logs = proxy.logs().join("\n");
    assert!(!logs.contains(TOKEN), "the admin token is in the log:\n{logs}");
    assert!(!logs.contains(&wrong_same_length), "a guessed token is in the log:\n{logs}");
    assert!(!logs.contains(&TOKEN[..TOKEN.len() - 1]), "most of the token is in the log:\n{logs}");
}

/// `/drain` takes `POST` and `GET` only, from anyone: other methods get
/// 405 and do not drain, even from loopback.
#[tokio::test(flavor = "multi_thread")]
async fn other_methods_are_refused_and_do_not_drain() {
    let app = App::start().await;
    let proxy = start(&app, Some(TOKEN)).await;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let (status, body) = call_drain(loopback, proxy.admin, method, Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!((status, body.as_str()), (405, "use POST /drain\n"), "{method}");
    }
    assert_not_draining(&proxy, "/drain with other methods").await;

    // A loopback caller needs no token even when one is set.
    let (status, body) = call_drain(loopback, proxy.admin, "POST", None).await;
    assert_eq!((status, body.as_str()), (200, "drained\n"));
    assert_drained_by(&proxy, loopback).await;
}

/// The preStop hook of an injected app container (docs/kubernetes.md):
/// `outrider install-hook DIR` copies the binary, and that copy's
/// `outrider drain` drains over loopback with no token, answering only once
/// the drain is over. Without outrider to ask, it fails with one line.
#[tokio::test(flavor = "multi_thread")]
async fn the_injected_pre_stop_hook_drains_over_loopback() {
    let dir = std::env::temp_dir().join(format!("outrider-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = tokio::process::Command::new(BIN).args(["install-hook"]).arg(&dir).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hook = dir.join("outrider");
    let version = tokio::process::Command::new(&hook).arg("--version").output().await.unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("outrider "), "the installed copy runs");

    let (refused, _keep) = refused_addr();
    let out = tokio::process::Command::new(&hook).args(["drain", "--admin", &refused.to_string()]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("outrider drain: cannot reach outrider's admin listener") && stderr.lines().count() == 1, "{stderr}");

    // The app's own preStop command, chained after the drain, runs even
    // when the drain could not be asked for, and its status is the hook's.
    let out = tokio::process::Command::new(&hook)
        .args(["drain", "--admin", &refused.to_string(), "--", "sh", "-c", "echo flushed >&2; exit 7"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).ends_with("flushed\n"));

    let app = App::start().await;
    let proxy = start(&app, Some(TOKEN)).await;
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, proxy.admin.port()));
    let out = tokio::process::Command::new(&hook).args(["drain", "--admin", &admin.to_string()]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_drained_by(&proxy, IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
