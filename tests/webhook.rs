//! `outrider webhook`, the real binary, over real HTTPS: an AdmissionReview
//! as an API server sends it (tests/fixtures/webhook/, see its README), the
//! JSON Patch it answers with applied to the pod, and the result compared
//! with what `outrider inject` makes of the same pod.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use common::{BIN, PATIENCE, eventually, full};
use http::Request;
use http_body_util::BodyExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhook/admission-review-pod.json");

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap()
}

/// A CA, and server certificates for localhost signed by it.
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("outrider-webhook-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "webhook test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let pki = Self { dir, ca };
        pki.write_server("webhook-one");
        pki
    }

    /// Writes `tls.crt`/`tls.key` with common name `cn`, each by rename, as
    /// a Secret update swaps them.
    fn write_server(&self, cn: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        for (name, data) in [("tls.crt", cert.pem()), ("tls.key", key.serialize_pem())] {
            let tmp = self.dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, data).unwrap();
            std::fs::rename(&tmp, self.dir.join(name)).unwrap();
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `outrider webhook`, killed when dropped.
struct Webhook {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    tls: Arc<rustls::ClientConfig>,
}

impl Webhook {
    async fn start(pki: &Pki, extra: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("OUTRIDER_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert", &pki.path("tls.crt"), "--tls-key", &pki.path("tls.key")])
            .args(["--tls-reload-interval", "100ms"])
            .args(if extra.contains(&"--drain-delay") { &[][..] } else { &["--drain-delay", "0s"][..] })
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (sink, stderr) = (logs.clone(), child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[webhook] {line}");
                if line.contains("webhook serving") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let started = tokio::task::spawn_blocking(move || rx.recv_timeout(PATIENCE)).await.unwrap().expect("the webhook did not start");
        let v: Value = serde_json::from_str(&started).unwrap();
        let addr = v["listen"].as_str().unwrap().parse().unwrap();
        let webhook = Self { child, addr, logs, tls: pki.client_config() };
        eventually("/readyz over HTTPS", || async { (webhook.get("/readyz").await.ok()?.0 == 200).then_some(()) }).await;
        webhook
    }

    async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), stream).await
    }

    /// One request on a new HTTPS connection.
    async fn send(
        &self,
        req: Request<common::TestBody>,
    ) -> Result<(u16, http::HeaderMap, Bytes), Box<dyn std::error::Error + Send + Sync>> {
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let response = sender.send_request(req).await?;
        let (parts, body) = response.into_parts();
        Ok((parts.status.as_u16(), parts.headers, body.collect().await?.to_bytes()))
    }

    async fn get(&self, path: &str) -> Result<(u16, http::HeaderMap, Bytes), Box<dyn std::error::Error + Send + Sync>> {
        self.send(Request::get(path).header("host", "localhost").body(full("")).unwrap()).await
    }

    async fn post(&self, path: &str, body: impl Into<Bytes>) -> (u16, Bytes) {
        let req = Request::post(path).header("host", "localhost").header("content-type", "application/json").body(full(body)).unwrap();
        let (status, _, body) = self.send(req).await.unwrap();
        (status, body)
    }

    /// POSTs a review to /inject and returns the `response` of the answer.
    async fn review(&self, review: &Value) -> Value {
        let (status, body) = self.post("/inject", serde_json::to_vec(review).unwrap()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"], "the response must carry the request's uid");
        assert_eq!(response["allowed"], true, "the webhook never denies");
        response
    }

    fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON Patch of a response: JSON's `[]byte`, which a Go client writes
/// as base64 and kube-core as an array of numbers; the API server reads both.
fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let bytes = match response.get("patch")? {
        Value::String(_) => serde_json::from_value::<k8s_openapi::ByteString>(response["patch"].clone()).unwrap().0,
        other => serde_json::from_value::<Vec<u8>>(other.clone()).unwrap(),
    };
    assert_eq!(response["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn warnings_of(response: &Value) -> Vec<String> {
    response.get("warnings").map(|w| serde_json::from_value(w.clone()).unwrap()).unwrap_or_default()
}

/// `outrider inject -f POD.yaml` on the pod, written as YAML: its stdout
/// as JSON, and its stderr (the notes).
fn inject_cli(pod: &Value, flags: &[&str]) -> (Value, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let path = std::env::temp_dir().join(format!("outrider-webhook-pod-{}-{nanos}.yaml", std::process::id()));
    std::fs::write(&path, serde_yaml_ng::to_string(pod).unwrap()).unwrap();
    let out = Command::new(BIN).args(["inject", "-f"]).arg(&path).args(flags).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "outrider inject failed: {stderr}");
    let injected: Value = serde_yaml_ng::from_str(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    (injected, stderr)
}

/// The fixture with its pod replaced by `pod`.
fn review_of(pod: &Value) -> Value {
    let mut review = fixture();
    review["request"]["object"] = pod.clone();
    review
}

#[tokio::test(flavor = "multi_thread")]
async fn the_patch_turns_the_captured_pod_into_what_inject_makes_of_it() {
    let pki = Pki::new("roundtrip");
    let webhook = Webhook::start(&pki, &[]).await;
    let review = fixture();
    let pod = review["request"]["object"].clone();

    let response = webhook.review(&review).await;
    let patch = patch_of(&response).unwrap_or_else(|| panic!("no patch for the fixture's pod: {response}"));
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let (expected, _) = inject_cli(&pod, &[]);
    assert_eq!(patched, expected, "the webhook's pod and `outrider inject`'s differ");

    let line = eventually("the admission's log line", || {
        let line = webhook.logs().into_iter().find(|l| l.contains("pod admitted"));
        async move { line }
    })
    .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&line["outcome"], &line["namespace"], &line["generate_name"], &line["uid"]),
        (&json!("injected"), &json!("shop"), &json!("web-7d4b9c6f5d-"), &review["request"]["uid"])
    );

    // The API server calls again after a later webhook changed the pod
    // (reinvocationPolicy IfNeeded), or the pod came from a manifest
    // injected with `outrider inject`: nothing to add.
    let again = webhook.review(&review_of(&patched)).await;
    let ops = patch_of(&again).map_or(0, |p| p.0.len());
    assert_eq!(ops, 0, "an injected pod must get no patch: {again}");
    let (_, _, metrics) = webhook.get("/metrics").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("outrider_webhook_admissions_total{outcome=\"injected\"} 1\n"), "{metrics}");
    assert!(metrics.contains("outrider_webhook_admissions_total{outcome=\"already_injected\"} 1\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_injected_is_allowed_unchanged() {
    let pki = Pki::new("unchanged");
    let webhook = Webhook::start(&pki, &[]).await;

    // An UPDATE of a pod, a CREATE of something else, a DELETE (no object).
    let mut update = fixture();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let mut deployment = fixture();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["resource"] = json!({"group": "apps", "version": "v1", "resource": "deployments"});
    let mut delete = fixture();
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["oldObject"] = delete["request"]["object"].take();
    for review in [update, deployment, delete] {
        let response = webhook.review(&review).await;
        assert!(response.get("patch").is_none(), "{response}");
        assert!(warnings_of(&response).is_empty(), "{response}");
    }

    // Opted out: allowed, no patch, and nothing to warn about.
    let mut pod = fixture()["request"]["object"].clone();
    pod["metadata"]["annotations"] = json!({"outrider.dev/inject": "disabled"});
    let response = webhook.review(&review_of(&pod)).await;
    assert!(response.get("patch").is_none(), "{response}");
    assert!(warnings_of(&response).is_empty(), "an opted-out pod is not an error: {response}");
}

#[tokio::test(flavor = "multi_thread")]
async fn notes_become_warnings() {
    let pki = Pki::new("warnings");
    let webhook = Webhook::start(&pki, &[]).await;
    // The app already has a preStop hook: inject keeps it, and says the
    // drain will not hold the app.
    let mut pod = fixture()["request"]["object"].clone();
    pod["spec"]["containers"][0]["lifecycle"] = json!({"preStop": {"exec": {"command": ["sleep", "5"]}}});
    let response = webhook.review(&review_of(&pod)).await;
    assert!(response.get("patch").is_some(), "{response}");
    let warnings = warnings_of(&response);
    assert!(!warnings.is_empty(), "inject's notes must reach kubectl as warnings: {response}");
    let (_, notes) = inject_cli(&pod, &[]);
    for warning in &warnings {
        let note = warning.strip_prefix("outrider: ").unwrap_or_else(|| panic!("{warning:?} does not say it is outrider's"));
        // The webhook sees no Service, so it always says what becomes of
        // them, as `inject` does for pods no Service of its input selects.
        let note = note.strip_prefix("Services: ").unwrap_or(note);
        assert!(notes.contains(note), "warning {note:?} is not among `outrider inject`'s notes:\n{notes}");
    }
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("outrider: Services: ") && w.contains("still reaches the app directly: set its targetPort to 15080")),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_errors_probes_and_metrics() {
    let pki = Pki::new("http");
    let webhook = Webhook::start(&pki, &[]).await;

    let (status, body) = webhook.post("/inject", "{\"apiVersion\": ").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).starts_with("malformed AdmissionReview: not JSON"), "{body:?}");
    let (status, body) = webhook.post("/inject", r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("expected apiVersion admission.k8s.io/v1"), "{body:?}");
    let (status, body) = webhook.post("/inject", r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("without a request"), "{body:?}");

    // Over the limit: refused from the Content-Length, before any of the
    // body is sent.
    let mut stream = webhook.connect().await.unwrap();
    let head = format!("POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", outrider::webhook::BODY_LIMIT + 1);
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 64];
    let n = tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read(&mut stream, &mut answer)).await.unwrap().unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 413 "), "{:?}", String::from_utf8_lossy(&answer[..n]));
    // Without a Content-Length, the body is counted as it comes.
    let req = Request::post("/inject")
        .header("host", "localhost")
        .body(common::TestBody::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            (0..9).map(|_| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(Bytes::from(vec![b' '; 1 << 20])))),
        ))))
        .unwrap();
    assert_eq!(webhook.send(req).await.unwrap().0, 413);

    assert_eq!(webhook.get("/inject").await.unwrap().0, 405);
    assert_eq!(webhook.post("/healthz", "").await.0, 405);
    assert_eq!(webhook.get("/nope").await.unwrap().0, 404);
    assert_eq!(webhook.get("/healthz").await.unwrap().0, 200);
    let (status, headers, metrics) = webhook.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("outrider_webhook_admissions_total{outcome=\"malformed\"} 3\n"), "{metrics}");
    assert!(metrics.contains("outrider_webhook_admission_duration_seconds_bucket{le=\"+Inf\"}"), "{metrics}");

    // Plain HTTP on the HTTPS port gets nothing.
    let mut plain = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut buf)).await;
    assert!(read.is_ok() && !buf.starts_with(b"HTTP/"), "plain HTTP must not be answered");
}

#[tokio::test(flavor = "multi_thread")]
async fn reviews_over_http2() {
    let pki = Pki::new("h2");
    let webhook = Webhook::start(&pki, &[]).await;
    let mut config = (*pki.client_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    let stream = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), stream).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    // Two reviews on one connection, as the API server reuses it.
    for _ in 0..2 {
        let body = serde_json::to_vec(&fixture()).unwrap();
        let req = Request::post("https://localhost/inject").header("content-type", "application/json").body(full(body)).unwrap();
        let response = h2.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let answer: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert!(patch_of(&answer["response"]).is_some_and(|p| !p.0.is_empty()), "{answer}");
    }
}

fn peer_cn(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    parsed.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_served_to_new_connections() {
    let pki = Pki::new("rotation");
    let webhook = Webhook::start(&pki, &[]).await;
    assert_eq!(peer_cn(&webhook.connect().await.unwrap()), "webhook-one");

    pki.write_server("webhook-two");
    eventually("the rotated certificate", || async { (peer_cn(&webhook.connect().await.ok()?) == "webhook-two").then_some(()) }).await;
    assert_eq!(webhook.get("/healthz").await.unwrap().0, 200);

    // A broken pair is refused; the current one stays.
    std::fs::write(pki.dir.join("tls.crt"), "not a certificate").unwrap();
    eventually("the broken certificate's rejection", || {
        let seen = webhook.logs().iter().any(|l| l.contains("new TLS certificate rejected") && l.contains("no certificate found"));
        async move { seen.then_some(()) }
    })
    .await;
    assert_eq!(peer_cn(&webhook.connect().await.unwrap()), "webhook-two");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_fails_readiness_keeps_serving_finishes_in_flight_then_exits_zero() {
    let pki = Pki::new("shutdown");
    let mut webhook = Webhook::start(&pki, &["--drain-delay", "10m"]).await;
    webhook.signal(Signal::SIGTERM);
    eventually("/readyz to fail", || async { (webhook.get("/readyz").await.ok()?.0 == 503).then_some(()) }).await;
    // Still accepting and answering reviews while the endpoint goes away.
    let mut update = fixture();
    update["request"]["operation"] = json!("UPDATE");
    webhook.review(&update).await;
    // A review in flight when the listener closes: half its body sent. The
    // `100 Continue` (sent when the webhook starts reading the body) says
    // the request has reached it.
    let body = serde_json::to_vec(&update).unwrap();
    let mut in_flight = webhook.connect().await.unwrap();
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut in_flight, head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read_exact(&mut in_flight, &mut interim)).await.unwrap().unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut in_flight, &body[..body.len() / 2]).await.unwrap();
    tokio::io::AsyncWriteExt::flush(&mut in_flight).await.unwrap();
    // A second signal ends the delay: the listener closes.
    webhook.signal(Signal::SIGINT);
    eventually("the listener to close", || async { webhook.connect().await.is_err().then_some(()) }).await;
    // The review in flight still gets its answer.
    tokio::io::AsyncWriteExt::write_all(&mut in_flight, &body[body.len() / 2..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read_to_end(&mut in_flight, &mut answer)).await.unwrap().unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\"allowed\":true"), "{answer}");
    let status = eventually("the webhook to exit", || {
        let status = webhook.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");
    assert!(webhook.logs().iter().any(|l| l.contains("webhook stopped")));
}

#[test]
fn bad_configuration_is_one_line_naming_the_flag_or_variable_exit_2() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("OUTRIDER_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd.arg("webhook").args(args).envs(env.iter().copied()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&[], &[]);
    assert_eq!((code, err.as_str()), (Some(2), "outrider webhook: --tls-cert (or OUTRIDER_WEBHOOK_TLS_CERT) is required\n"));
    let (code, err) = run(&["--tls-cert", "c", "--tls-key", "k"], &[("OUTRIDER_WEBHOOK_LISTEN", "8443")]);
    assert_eq!(code, Some(2));
    assert!(err.starts_with("outrider webhook: invalid OUTRIDER_WEBHOOK_LISTEN=\"8443\": ") && err.lines().count() == 1, "{err}");
    let (code, err) = run(&["--tls-cert", "c", "--tls-key", "k", "--bogus"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--bogus") && err.lines().count() == 1, "{err}");
    let (code, err) = run(&["--tls-cert", "/nonexistent/tls.crt", "--tls-key", "/nonexistent/tls.key", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--tls-cert/--tls-key: cannot read /nonexistent/tls.crt"), "{err}");
    let (code, out) = run(&["--help"], &[]);
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_and_image_flags_reach_the_patch() {
    let pki = Pki::new("flags");
    let webhook = Webhook::start(&pki, &["--classic", "--image", "registry.example/outrider:test"]).await;
    let review = fixture();
    let response = webhook.review(&review).await;
    let patch = patch_of(&response).unwrap_or_else(|| panic!("no patch: {response}"));
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let (expected, _) = inject_cli(&review["request"]["object"], &["--classic", "--image", "registry.example/outrider:test"]);
    assert_eq!(pod, expected, "the webhook's pod and `outrider inject --classic --image ...`'s differ");
    // Classic: outrider is a regular container, not an init container.
    let outrider = pod["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "outrider").expect("no outrider container");
    assert_eq!(outrider["image"], "registry.example/outrider:test");
    assert!(pod["spec"]["initContainers"].as_array().unwrap().iter().all(|c| c["name"] != "outrider"), "{pod}");
}
