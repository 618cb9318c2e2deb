//! outrider where it lives: its real image, in real podman pods and
//! containers, stopped the way the kubelet stops them.
//!
//! * pod mode: app and outrider containers sharing one network namespace,
//!   reached from the host at the pod's IP; probes, metrics, a trace at a
//!   real OTLP receiver; the image's own properties;
//! * the kubelet's stop sequence for a native sidecar, and the classic
//!   sidecar's order (both containers TERMed at once);
//! * wrap mode: outrider as PID 1 of the app's container;
//! * `outrider inject`'s output for the docs example, played as a pod
//!   (inject.rs);
//! * a rolling restart behind a load balancer: the bare app against the
//!   same app behind outrider.
//!
//! Needs podman (with runc), busybox-static and haproxy. Without podman the
//! tests say so and pass, unless `CI` is set: there they must run.

#[path = "../common/mod.rs"]
mod common;
mod inject;
mod lb;
mod load;
mod podman;

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use common::{otlp::Receiver, *};
use http::Request;
use lb::Haproxy;
use load::{Load, Report};
use podman::{Container, Images, Pod};

/// The kubelet's `terminationGracePeriodSeconds` in these tests.
const GRACE: Duration = Duration::from_secs(30);
/// How long endpoint removal takes to reach the load balancer.
const ENDPOINT_LAG: Duration = Duration::from_secs(1);
/// outrider's drain delay in these tests: longer than the lag, shorter than
/// the 5 s default to keep the tests quick.
const DRAIN_DELAY: &str = "3s";
/// The admin token, for `/drain` from outside the pod: fresh each run,
/// never a literal.
static TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let random = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), std::process::id());
    format!("{random:016x}{:016x}", random.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15)
});
/// The load: fast static files and a CGI that takes 200 ms, so that some
/// requests are always in flight.
const PATHS: [&str; 2] = ["/", "/cgi-bin/slow?0.2"];
const WORKERS: usize = 4;

/// One container test at a time: they measure timing and share 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The images, or `None` (after saying why) where there is no podman.
fn setup() -> Option<&'static Images> {
    if !podman::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but podman is not usable: the container tests must run there (apt-get install podman runc busybox-static haproxy)"
        );
        eprintln!(
            "SKIPPED: podman is not usable here, so the container tests did not run (apt-get install podman runc busybox-static haproxy)"
        );
        return None;
    }
    Some(podman::images())
}

/// The app container of a pod: busybox httpd on the pod's loopback.
async fn app(pod: &Pod, images: &Images) -> String {
    pod.run("app", &images.app, &[]).await
}

/// The outrider container of a pod, with `env` on top of the test defaults.
async fn sidecar(pod: &Pod, images: &Images, env: &[(&str, &str)]) -> String {
    let mut all = vec![
        ("OUTRIDER_UPSTREAM", "http://127.0.0.1:8081"),
        ("OUTRIDER_APP_HEALTH", "/"),
        ("OUTRIDER_DRAIN_DELAY", DRAIN_DELAY),
        ("OUTRIDER_ADMIN_TOKEN", TOKEN.as_str()),
    ];
    all.extend_from_slice(env);
    pod.run("outrider", &images.outrider, &all).await
}

async fn until_ready(ip: IpAddr) {
    wait_status(&format!("http://{ip}:9901/readyz"), 200).await;
}

/// Where the manifests mount outrider's binary in the app container: the
/// pod's `outrider-bin` emptyDir, which `outrider-init` fills.
const HOOK_DIR: &str = "/outrider-hook";

/// The app container laid out as deploy/kubernetes lays it out for its
/// preStop hook: an `outrider-init` init container copies outrider's binary
/// into the pod's `outrider-bin` emptyDir (`install-hook`), which the app
/// mounts read-only at [`HOOK_DIR`].
async fn hooked_app(pod: &Pod, images: &Images) -> String {
    let volume = pod.empty_dir("outrider-bin");
    pod.run_init("outrider-init", &images.outrider, &[&format!("--volume={volume}:{HOOK_DIR}")], &["install-hook", HOOK_DIR]).await;
    pod.run_with("app", &images.app, &[], &[&format!("--volume={volume}:{HOOK_DIR}:ro")]).await
}

/// The app container's preStop hook of deploy/kubernetes/app-*-sidecar.yaml.
fn hook_command() -> [String; 4] {
    [format!("{HOOK_DIR}/outrider"), "drain".into(), "--admin".into(), "127.0.0.1:9901".into()]
}

/// Runs an exec preStop hook in `container`, as the kubelet does (podman
/// ignores hooks): `outrider drain` asks for the drain over the pod's
/// loopback, without a token, and returns once it is over.
async fn pre_stop_hook(container: &str, command: &[String]) {
    let mut args = vec!["exec", container];
    args.extend(command.iter().map(String::as_str));
    let out = podman::podman_output(&args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "preStop {command:?} in {container} failed ({}): {stderr}", out.status);
    assert!(stderr.contains("drained"), "preStop {command:?} in {container}: {stderr}");
}

/// `/drain` from outside the pod (the node, another pod): outrider wants
/// the admin token then. Returns the status.
async fn remote_drain(ip: IpAddr, token: Option<&str>) -> u16 {
    let mut request = Request::get(format!("http://{ip}:9901/drain"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let (status, _, _) = send(&client(), request.body(full("")).expect("request")).await.expect("/drain");
    status
}

/// When the app got SIGTERM, by its own log (see deploy/demo-app/app.sh).
async fn app_sigterm_uptime(container: &str) -> f64 {
    let logs = podman::logs(container).await;
    logs.lines()
        .find_map(|l| l.strip_prefix("app: SIGTERM at "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("{container} never logged its SIGTERM:\n{logs}"))
}

fn describe(report: &Report) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for f in &report.failures {
        *kinds.entry(f.what.clone()).or_default() += 1;
    }
    format!("{} of {} requests failed {kinds:?}", report.failures.len(), report.total())
}

// ===== 1. pod mode and 5. the image =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_mode_probes_metrics_and_a_trace() {
    let Some(images) = setup() else { return };
    let _serial = SERIAL.lock().await;
    let pod = Pod::create("pod").await;
    let app = app(&pod, images).await;
    // The receiver listens on the host's side of the podman bridge: the pod
    // reaches it there, nothing outside the host can, no port is published.
    let receiver = Receiver::grpc_on(SocketAddr::new(podman::bridge_gateway().await, 0)).await;
    let endpoint = format!("http://{}", receiver.addr);
    let outrider = sidecar(
        &pod,
        images,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "legacy-app"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("K8S_POD_NAME", &pod.name),
        ],
    )
    .await;
    let ip = pod.ip().await;
    until_ready(ip).await;

    // A traced request through the pod's IP to the app on its loopback.
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = Request::get(format!("http://{ip}:8080/cgi-bin/slow?0.05"))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .body(full(""))
        .expect("request");
    let (status, headers, body) = send(&client(), request).await.expect("request through the pod");
    assert_eq!(status, 200, "{headers:?} {body:?}");
    assert!(String::from_utf8_lossy(&body).contains("slow hello"), "{body:?}");

    let span = receiver.wait_for("the request's span at the receiver", |s| s.trace_id() == TRACE).await;
    assert_eq!(span.attr("url.path").as_deref(), Some("/cgi-bin/slow"));
    assert_eq!(span.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(otlp::find(&span.resource, "service.name").as_deref(), Some("legacy-app"));
    assert_eq!(otlp::find(&span.resource, "k8s.pod.name").as_deref(), Some(pod.name.as_str()));

    let (status, _, metrics) = get(&format!("http://{ip}:9901/metrics")).await.expect("/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l.starts_with("http_server_request_duration_seconds_count{")
            && l.contains(r#"http_response_status_code="200""#)
            && l.contains(r#"error_type="""#)
            && l.contains(r#"url_scheme="http""#)
            && l.ends_with(" 1")),
        "the request is not in /metrics:\n{metrics}"
    );
    assert!(metrics.contains("outrider_spans_exported_total"), "{metrics}");

    // Logs in a container are JSON, one object a line, and the request's
    // line carries its trace id.
    let logs = podman::logs(&outrider).await;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    assert!(logs.lines().any(|l| l.contains(TRACE)), "no log line carries the trace id:\n{logs}");

    // Both run as Kubernetes' restricted profile asks.
    for container in [&app, &outrider] {
        assert_restricted(container).await;
    }
}

/// The container's PID 1 runs as uid 65532, with no capabilities, on a
/// read-only root file system.
async fn assert_restricted(container: &str) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", podman::host_pid(container).await)).expect("status");
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::split_whitespace).and_then(|mut f| f.next());
    assert_eq!(field("Uid:"), Some("65532"), "{container} runs as root");
    assert_eq!(field("CapEff:"), Some("0000000000000000"), "{container} has capabilities");
    let read_only = podman::podman(&["inspect", container, "--format", "{{.HostConfig.ReadonlyRootfs}}"]).await;
    assert_eq!(read_only, "true", "{container} has a writable root file system");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_is_small_unprivileged_and_names_its_commit() {
    let Some(images) = setup() else { return };
    let _serial = SERIAL.lock().await;
    let size: u64 = podman::podman(&["image", "inspect", &images.outrider, "--format", "{{.Size}}"]).await.parse().expect("size");
    eprintln!("image {}: {:.1} MB", images.outrider, size as f64 / 1e6);
    assert!(size <= 15_000_000, "the image is {size} bytes, over the 15 MB goal");
    let user = podman::podman(&["image", "inspect", &images.outrider, "--format", "{{.Config.User}}"]).await;
    assert_eq!(user, "65532:65532");
    let version = podman::podman(&["run", "--rm", "--read-only", "--cap-drop=all", &images.outrider, "--version"]).await;
    eprintln!("{version}");
    let head = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    // BINARY=path (deploy/image.sh) puts a binary built elsewhere in the
    // image: it names its own commit, not necessarily this checkout's.
    let prebuilt = std::env::var_os("BINARY").is_some();
    match head {
        Ok(out) if out.status.success() && !prebuilt => {
            let head = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert!(version.contains(&format!("(commit {head})")), "{version} does not name HEAD {head}");
        }
        _ => assert!(!version.contains("unknown"), "{version}"),
    }
    // One layer of exactly two files: no shell, no libc, nothing to exploit.
    let history = podman::podman(&["history", "--format", "{{.CreatedBy}}", &images.outrider]).await;
    assert!(!history.contains("RUN"), "the runtime stage runs nothing:\n{history}");
}

/// `podman kube play` of deploy/kubernetes/app-classic-sidecar.yaml: the
/// manifest users apply starts, with its init container, env, security
/// context and optional Secret, and serves; its preStop hook, run as
/// written in the app container, drains over loopback without the token.
/// A smoke test: podman 4.3 plays neither native sidecars nor preStop hooks
/// nor readiness probes (docs/kubernetes.md), and
/// tests/containers/kube_play.py lists what it changes before the play.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_play_starts_the_classic_sidecar_manifest() {
    let Some(images) = setup() else { return };
    let has_yaml = std::process::Command::new("python3").args(["-c", "import yaml"]).output().is_ok_and(|o| o.status.success());
    if !has_yaml {
        assert!(std::env::var_os("CI").is_none(), "CI is set but python3 has no yaml module (.ci/run installs yamllint, which brings it)");
        eprintln!("SKIPPED: no python3 yaml module, so the kube play smoke test did not run");
        return;
    }
    let _serial = SERIAL.lock().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let name = format!("outrider-test-kube-{}", podman::unique());
    let secret = format!("{name}-token");
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/containers/kube_play.py"))
        .arg(root.join("deploy/kubernetes/app-classic-sidecar.yaml"))
        .args([&name, &secret])
        .arg(format!("python:3.12-slim={}", images.python))
        .arg(format!("ghcr.io/outrider-proxy/outrider:0.1.0={}", images.outrider))
        .output()
        .expect("python3");
    assert!(out.status.success(), "kube_play.py: {}", String::from_utf8_lossy(&out.stderr));
    let dir = podman::TempDir::new("kube-play");
    let manifest = dir.path().join("manifest.yaml");
    std::fs::write(&manifest, &out.stdout).expect("write manifest");
    // podman reads a secretKeyRef from a podman secret holding a JSON map
    // of base64 values. A fresh token, never a literal.
    let encoded = base64(TOKEN.as_bytes());
    let secret_file = dir.path().join("secret.json");
    std::fs::write(&secret_file, format!(r#"{{"token":"{encoded}"}}"#)).expect("write secret");
    podman::podman(&["secret", "create", &secret, secret_file.to_str().expect("utf-8 path")]).await;
    let _cleanup = KubePlayed { name: name.clone(), secret: secret.clone() };
    // The hook exactly as the manifest writes it.
    let played: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).expect("kube_play.py's YAML");
    let app_container = played["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some("app")))
        .expect("the app container");
    let hook: Vec<String> = serde_yaml_ng::from_value(app_container["lifecycle"]["preStop"]["exec"]["command"].clone())
        .expect("the app's preStop is an exec hook");
    assert_eq!(hook, hook_command(), "the manifest's hook is not the one the other tests run");

    // Not in the manifest's directory: podman treats a directory named
    // like an image there as a build context.
    podman::podman_in(dir.path(), &["kube", "play", "--quiet", manifest.to_str().expect("utf-8 path")]).await;
    let pod = format!("{name}-pod-0");
    let infra = podman::podman(&["pod", "inspect", &pod, "--format", "{{.InfraContainerID}}"]).await;
    let ip: IpAddr = podman::podman(&["inspect", &infra, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"])
        .await
        .parse()
        .expect("the played pod's IP");
    until_ready(ip).await;
    let (status, _, body) = get(&format!("http://{ip}:8080/")).await.expect("request through the played pod");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("legacy app"));
    // From outside the pod, /drain needs the token, and a wrong one drains
    // nothing.
    assert_eq!(remote_drain(ip, Some("not-the-token-at-all")).await, 403);
    assert_eq!(get(&format!("http://{ip}:9901/readyz")).await.expect("/readyz").0, 200, "a refused /drain drained");
    // The app's preStop hook, from the copy outrider-init made: no token.
    pre_stop_hook(&format!("{pod}-app"), &hook).await;
    assert_eq!(get(&format!("http://{ip}:9901/readyz")).await.expect("/readyz").0, 503, "the hook returned before the drain");
    // The Secret reached outrider: its token is accepted from outside (the
    // drain is over, so /drain answers at once).
    assert_eq!(remote_drain(ip, Some(&TOKEN)).await, 200);
    for container in ["app", "outrider"] {
        assert_restricted(&format!("{pod}-{container}")).await;
    }
}

/// Standard base64 with padding, for the one secret above.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]) } else { '=' });
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648() {
    for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

/// Removes what a kube play of Deployment `name` created: its pod, the
/// volumes of its emptyDirs (kube_play.py names them `name-*`), the secret.
struct KubePlayed {
    name: String,
    secret: String,
}

impl Drop for KubePlayed {
    fn drop(&mut self) {
        podman::remove_pod(&format!("{}-pod-0", self.name));
        podman::remove_volumes(&format!("{}-", self.name));
        podman::remove_secret(&self.secret);
    }
}

// ===== 2. the kubelet's stop sequence =====

/// A native sidecar (Kubernetes >= 1.29) laid out and stopped as
/// deploy/kubernetes/app-native-sidecar.yaml and the kubelet do: the pod
/// leaves the endpoints (here: the load stops sending new requests
/// `ENDPOINT_LAG` later) while the app container's preStop hook runs
/// `outrider drain` from the hook volume; the app gets SIGTERM when the
/// hook returns, outrider only after the app exited; SIGKILL at the grace
/// deadline for anything left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sidecar_stop_sequence_loses_nothing() {
    let Some(images) = setup() else { return };
    let _serial = SERIAL.lock().await;
    let pod = Pod::create("native").await;
    let app = hooked_app(&pod, images).await;
    let outrider = sidecar(&pod, images, &[]).await;
    let ip = pod.ip().await;
    until_ready(ip).await;

    // From outside the pod (where a kubelet httpGet hook would come from),
    // /drain without the token, or with a wrong one, is refused and drains
    // nothing: why the hook runs in the pod.
    assert_eq!(remote_drain(ip, None).await, 403);
    assert_eq!(remote_drain(ip, Some("wrong-token")).await, 403);
    assert_eq!(get(&format!("http://{ip}:9901/readyz")).await.expect("/readyz").0, 200, "a refused /drain drained");

    let load = Load::start(SocketAddr::new(ip, 8080), &PATHS, WORKERS);
    load.until_ok(20).await;

    // The pod is deleted.
    let started = Instant::now();
    let removal = load.stop_after(ENDPOINT_LAG);
    pre_stop_hook(&app, &hook_command()).await;
    let (app_code, _) = podman::stop(&app, GRACE.saturating_sub(started.elapsed())).await;
    let (outrider_code, _) = podman::stop(&outrider, GRACE.saturating_sub(started.elapsed())).await;
    let took = started.elapsed();
    removal.await.expect("endpoint removal");
    let report = load.finish().await;

    eprintln!("native sidecar stop: {}; pod stopped {took:.1?} after deletion (grace {GRACE:?})", describe(&report));
    assert!(report.failures.is_empty(), "{}: {:?}", describe(&report), &report.failures[..report.failures.len().min(10)]);
    assert!(report.ok >= 20);
    assert_eq!(app_code, 0, "the app did not exit cleanly:\n{}", podman::logs(&app).await);
    assert_eq!(outrider_code, 0, "outrider did not exit cleanly:\n{}", podman::logs(&outrider).await);
    assert!(took < GRACE / 2, "the stop took {took:?}, too close to the {GRACE:?} deadline");
    let sigterm = app_sigterm_uptime(&app).await;
    assert!(
        report.last_ok_uptime <= sigterm,
        "the app got SIGTERM at {sigterm} s, before the last proxied response at {} s",
        report.last_ok_uptime
    );
}

/// A classic sidecar without a preStop hook: the kubelet TERMs both
/// containers at once, the app dies at once, mid-drain, while the pod is
/// still in the endpoints. outrider must answer those requests at once
/// (503) rather than hold them for an app that is gone for good; they are
/// lost either way, which is what this order costs (docs/kubernetes.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_sidecar_order_answers_at_once_when_the_app_is_gone() {
    let Some(images) = setup() else { return };
    let _serial = SERIAL.lock().await;
    const BUFFER_TIMEOUT: Duration = Duration::from_secs(30);
    let pod = Pod::create("classic").await;
    let app = app(&pod, images).await;
    let outrider = sidecar(&pod, images, &[("OUTRIDER_BUFFER_TIMEOUT", "30s")]).await;
    let ip = pod.ip().await;
    until_ready(ip).await;
    let load = Load::start(SocketAddr::new(ip, 8080), &PATHS, WORKERS);
    load.until_ok(20).await;

    let removal = load.stop_after(ENDPOINT_LAG);
    let ((app_code, _), (outrider_code, outrider_took)) = tokio::join!(podman::stop(&app, GRACE), podman::stop(&outrider, GRACE));
    removal.await.expect("endpoint removal");
    let report = load.finish().await;

    eprintln!("classic sidecar, both TERMed at once, no preStop: {}; outrider stopped in {outrider_took:.1?}", describe(&report));
    assert_eq!(app_code, 0);
    assert_eq!(outrider_code, 0, "{}", podman::logs(&outrider).await);
    // The premise: the app vanished while traffic still came.
    assert!(!report.failures.is_empty(), "no request arrived after the app was gone");
    let slowest = report.failures.iter().max_by_key(|f| f.took).expect("failures");
    assert!(
        slowest.took < BUFFER_TIMEOUT / 3,
        "a request was held {:?} for an app that was gone (buffer timeout {BUFFER_TIMEOUT:?}): {slowest:?}",
        slowest.took
    );
    // Each got an answer: 503 if it found the app gone, 502 if the app
    // died with it before answering, or a cut body if the app died in the
    // middle of its answer (the head was already on its way). None was
    // left hanging or refused.
    let unexpected: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !matches!(f.status, Some(502 | 503)) && !f.what.starts_with("error reading a body"))
        .take(10)
        .collect();
    assert!(unexpected.is_empty(), "{}: {unexpected:?}", describe(&report));
    assert!(outrider_took < GRACE / 2, "outrider took {outrider_took:?} to stop");
}

// ===== 3. wrap mode =====

/// outrider as PID 1 of the app's own container: it reaps orphans, drains
/// and stops the app on `podman stop`, and exits with the app's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_mode_as_pid_1() {
    let Some(images) = setup() else { return };
    let _serial = SERIAL.lock().await;
    let container =
        Container::run("wrap", &images.wrap, &[("APP_ORPHANS", "5"), ("APP_ON_TERM", "7"), ("OUTRIDER_DRAIN_DELAY", "1s")]).await;
    let ip = container.ip().await;
    until_ready(ip).await;
    let (status, _, body) = get(&format!("http://{ip}:8080/")).await.expect("request through wrap mode");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("legacy app"));

    let pid1 = podman::podman(&["exec", &container.name, "cat", "/proc/1/comm"]).await;
    assert_eq!(pid1, "outrider");
    // The app left five `sleep 3` orphans: PID 1 adopts them, and once
    // they end, none may be left as a zombie.
    let processes = || async {
        let stats = podman::podman(&["exec", &container.name, "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null"]).await;
        stats.lines().filter_map(Process::parse).collect::<Vec<_>>()
    };
    eventually("the app's orphans, adopted by PID 1", || async {
        processes().await.iter().any(|p| p.comm == "sleep" && p.ppid == 1).then_some(())
    })
    .await;
    eventually("the orphans to be reaped", || async {
        let left: Vec<Process> = processes().await.into_iter().filter(|p| p.comm == "sleep" || p.state == 'Z').collect();
        left.is_empty().then_some(())
    })
    .await;

    let (code, took) = podman::stop(&container.name, GRACE).await;
    assert_eq!(code, 7, "not the app's exit code:\n{}", podman::logs(&container.name).await);
    assert!(took < GRACE / 2, "podman stop took {took:?}");
    let logs = podman::logs(&container.name).await;
    assert!(logs.contains("app: SIGTERM"), "the app never got SIGTERM:\n{logs}");
}

/// One line of `/proc/PID/stat`.
#[derive(Debug)]
struct Process {
    comm: String,
    state: char,
    ppid: u32,
}

impl Process {
    /// `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    fn parse(line: &str) -> Option<Self> {
        let (head, tail) = line.rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1.to_owned();
        let mut fields = tail.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some(Self { comm, state, ppid })
    }
}

/// An app that ignores SIGTERM is killed after OUTRIDER_APP_STOP_TIMEOUT,
/// long before the runtime's own deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_mode_kills_an_app_that_ignores_sigterm() {
    let Some(images) = setup() else { return };
    let _serial = SERIAL.lock().await;
    let container = Container::run(
        "wrap-stubborn",
        &images.wrap,
        &[("APP_ON_TERM", "ignore"), ("OUTRIDER_DRAIN_DELAY", "1s"), ("OUTRIDER_APP_STOP_TIMEOUT", "2s")],
    )
    .await;
    until_ready(container.ip().await).await;
    let (code, took) = podman::stop(&container.name, GRACE).await;
    let logs = podman::logs(&container.name).await;
    assert_eq!(code, 128 + 9, "expected the app's SIGKILL as the exit code:\n{logs}");
    assert!(logs.contains("app: SIGTERM"), "{logs}");
    assert!(logs.contains("sending SIGKILL"), "{logs}");
    assert!(took < GRACE / 2, "podman stop took {took:?}: the runtime's deadline did the killing");
}

// ===== 4. a rolling restart =====

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fronted {
    /// The app alone, listening on the pod's port 8080.
    Bare,
    /// The app behind outrider as a native sidecar.
    Outrider,
}

/// A replica: a pod and how the kubelet stops it.
struct Replica {
    pod: Pod,
    app: String,
    outrider: Option<String>,
    ip: IpAddr,
}

impl Replica {
    async fn start(images: &Images, fronted: Fronted) -> Self {
        let pod = Pod::create("replica").await;
        let (app, outrider) = match fronted {
            Fronted::Bare => (pod.run("app", &images.app, &[("APP_LISTEN", "0.0.0.0:8080")]).await, None),
            Fronted::Outrider => (hooked_app(&pod, images).await, Some(sidecar(&pod, images, &[]).await)),
        };
        let ip = pod.ip().await;
        Self { pod, app, outrider, ip }
    }

    /// The kubelet's stop: preStop, then the app, then the sidecar.
    async fn stop(self) {
        let started = Instant::now();
        if self.outrider.is_some() {
            pre_stop_hook(&self.app, &hook_command()).await;
        }
        let (code, _) = podman::stop(&self.app, GRACE.saturating_sub(started.elapsed())).await;
        assert_eq!(code, 0);
        if let Some(outrider) = &self.outrider {
            let (code, _) = podman::stop(outrider, GRACE.saturating_sub(started.elapsed())).await;
            assert_eq!(code, 0);
        }
        drop(self.pod);
    }
}

/// Two replicas behind the load balancer, each replaced once, one at a
/// time (maxSurge 1, maxUnavailable 0), under a steady load.
async fn rolling_restart(images: &Images, fronted: Fronted) -> Report {
    let lb = match fronted {
        Fronted::Bare => Haproxy::start(8080, "/").await,
        Fronted::Outrider => Haproxy::start(9901, "/readyz").await,
    };
    let mut slots = Vec::new();
    for slot in 1..=2 {
        let replica = Replica::start(images, fronted).await;
        lb.add(slot, replica.ip).await;
        lb.until_up(slot).await;
        slots.push((slot, replica));
    }
    let load = Load::start(lb.addr, &PATHS, WORKERS);
    load.until_ok(20).await;
    let mut free = 3;
    for _ in 0..2 {
        let (old_slot, old) = slots.remove(0);
        let new = Replica::start(images, fronted).await;
        lb.add(free, new.ip).await;
        lb.until_up(free).await;
        slots.push((free, new));
        old.stop().await;
        // The endpoints controller forgets the deleted pod.
        lb.remove(old_slot).await;
        free = old_slot;
        // Some traffic on the new set before the next step.
        let ok = load.ok();
        load.until_ok(ok + 10).await;
    }
    load.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_requests_only_without_outrider() {
    let Some(images) = setup() else { return };
    if !Haproxy::available() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but haproxy is missing (apt-get install haproxy)");
        eprintln!("SKIPPED: no haproxy, so the rolling restart did not run (apt-get install haproxy)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let bare = rolling_restart(images, Fronted::Bare).await;
    let bare_took = started.elapsed();
    let behind = rolling_restart(images, Fronted::Outrider).await;
    eprintln!("rolling restart, bare app: {} ({bare_took:.1?})", describe(&bare));
    eprintln!("rolling restart, behind outrider: {} ({:.1?})", describe(&behind), started.elapsed() - bare_took);
    // The premise: the same rollout does lose requests without outrider.
    assert!(!bare.failures.is_empty(), "the bare app lost nothing: the test shows nothing");
    assert!(behind.failures.is_empty(), "behind outrider: {}: {:?}", describe(&behind), &behind.failures[..behind.failures.len().min(10)]);
}
