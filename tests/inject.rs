//! `outrider inject`, black-box: the real binary on the manifests under
//! tests/fixtures/inject/, one input per workload kind.
//!
//! * Golden files: `<name>.injected.yaml` (and `<name>.classic.injected.yaml`
//!   for `--classic`) hold the expected stdout. `UPDATE_GOLDEN=1 cargo test
//!   --test inject` rewrites them; read the diff before committing it.
//! * Injecting an output again changes nothing; `--uninject` gives back the
//!   input (as data: comments inside re-serialised documents are lost).
//! * The design's decisions checked on the parsed outputs, so a golden
//!   regenerated from a wrong output still fails.
//! * Every input and golden output passes `kubernetes-validate --strict`
//!   for Kubernetes 1.29 and 1.37.

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use common::kubernetes::{documents, validate};

const BIN: &str = env!("CARGO_BIN_EXE_outrider");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(format!("{name}.yaml"))
}

fn golden_path(name: &str, classic: bool) -> PathBuf {
    fixtures().join(if classic { format!("{name}.classic.injected.yaml") } else { format!("{name}.injected.yaml") })
}

/// The inputs: every fixture that is not a golden output.
fn inputs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && !n.ends_with(".injected.yaml"))
        .map(|n| n.trim_end_matches(".yaml").to_owned())
        .collect();
    names.sort();
    names
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!("ok={}\n--- stderr\n{}--- stdout\n{}", self.ok, self.stderr, self.stdout)
    }

    fn success(self, what: &str) -> Self {
        assert!(self.ok, "{what} failed:\n{}", self.describe());
        self
    }

    /// A failure that explains itself in exactly one line on stderr, and
    /// writes nothing on stdout (so `| kubectl apply -f -` applies nothing).
    fn one_line_error(self, what: &str) -> String {
        assert!(!self.ok, "{what} should fail:\n{}", self.describe());
        assert!(self.stdout.is_empty(), "{what}: a failed run printed YAML:\n{}", self.describe());
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: expected one error line:\n{}", self.describe());
        lines[0].to_owned()
    }
}

fn outrider(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outrider");
    if let Some(input) = stdin {
        // A writer thread: a large output must not block on a full pipe
        // while the input is still being written.
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = child.wait_with_output().expect("wait for outrider");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// `outrider inject` of a YAML text through stdin.
fn inject(input: &str, extra: &[&str]) -> Run {
    let mut args = vec!["inject"];
    args.extend_from_slice(extra);
    outrider(&args, Some(input))
}

fn classic_args(classic: bool) -> &'static [&'static str] {
    if classic { &["--classic"] } else { &[] }
}

/// Compares `actual` with the golden file, or rewrites it under
/// UPDATE_GOLDEN=1.
fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
        eprintln!("rewrote {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 cargo test --test inject writes it)", path.display()));
    if expected != actual {
        let line =
            expected.lines().zip(actual.lines()).position(|(e, a)| e != a).unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the output at line {} (UPDATE_GOLDEN=1 rewrites it):\nexpected: {:?}\nactual:   {:?}\n--- whole output\n{actual}",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line),
        );
    }
}

/// What one golden case checks: the output is the golden file, injecting
/// it again changes nothing, `--uninject` gives back the input's data.
fn golden_case(name: &str, classic: bool) -> String {
    let input = std::fs::read_to_string(fixture(name)).unwrap();
    let path = fixture(name);
    let mut args = vec!["inject", "-f", path.to_str().unwrap()];
    args.extend_from_slice(classic_args(classic));
    let first = outrider(&args, None).success(&format!("inject {name}"));
    golden(&golden_path(name, classic), &first.stdout);

    let again = inject(&first.stdout, classic_args(classic)).success(&format!("inject {name} again"));
    assert!(again.stdout == first.stdout, "{name}: injecting the output again changed it:\n{}", again.stdout);

    let back = inject(&first.stdout, &["--uninject"]).success(&format!("uninject {name}"));
    assert_eq!(documents(&back.stdout), documents(&input), "{name}: --uninject did not restore the input");
    first.stdout
}

macro_rules! golden_tests {
    ($($test:ident: $name:literal, $classic:literal;)*) => {
        $(
            #[test]
            fn $test() {
                golden_case($name, $classic);
            }
        )*
        /// Every input fixture has its golden test (a new fixture without
        /// one would silently check nothing).
        const GOLDEN_CASES: &[(&str, bool)] = &[$(($name, $classic)),*];
    };
}

golden_tests! {
    golden_deployment: "deployment", false;
    golden_deployment_classic: "deployment", true;
    golden_statefulset: "statefulset", false;
    golden_daemonset: "daemonset", false;
    golden_replicaset: "replicaset", false;
    golden_replicationcontroller: "replicationcontroller", false;
    golden_job: "job", false;
    golden_cronjob: "cronjob", false;
    golden_pod: "pod", false;
    golden_pod_classic: "pod", true;
    golden_list: "list", false;
    golden_annotations: "annotations", false;
}

#[test]
fn every_fixture_has_a_golden_test_and_every_golden_a_fixture() {
    for name in inputs() {
        assert!(GOLDEN_CASES.iter().any(|(n, _)| *n == name), "tests/fixtures/inject/{name}.yaml has no golden test");
    }
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if file.ends_with(".injected.yaml") {
            assert!(
                GOLDEN_CASES.iter().any(|(n, c)| golden_path(n, *c).file_name().unwrap().to_string_lossy() == file),
                "{file} belongs to no golden test: a stale golden file"
            );
        }
    }
}

#[test]
fn inputs_and_golden_outputs_validate_for_kubernetes_1_29_and_1_37() {
    let mut files: Vec<PathBuf> = inputs().iter().map(|n| fixture(n)).collect();
    for (name, classic) in GOLDEN_CASES {
        let path = golden_path(name, *classic);
        assert!(path.exists(), "{} is missing (UPDATE_GOLDEN=1 writes it)", path.display());
        files.push(path);
    }
    validate("the inject fixtures and golden outputs", &files);
}

// ===== what the design says, read from the parsed outputs =====

fn injected_docs(name: &str, classic: bool) -> Vec<Value> {
    let path = fixture(name);
    let mut args = vec!["inject", "-f", path.to_str().unwrap()];
    args.extend_from_slice(classic_args(classic));
    documents(&outrider(&args, None).success(&format!("inject {name}")).stdout)
}

fn doc<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name} in {docs:#?}"))
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().and_then(|l| l.iter().find(|c| c["name"] == name)).unwrap_or_else(|| panic!("no entry named {name} in {list:#}"))
}

fn env(container: &Value, name: &str) -> Value {
    container["env"].as_array().and_then(|l| l.iter().find(|e| e["name"] == name)).cloned().unwrap_or(Value::Null)
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env(container, name)["value"].as_str().map(str::to_owned)
}

/// The effective app health check (outrider's default is `tcp`).
fn app_health(outrider: &Value) -> String {
    env_value(outrider, "OUTRIDER_APP_HEALTH").unwrap_or_else(|| "tcp".to_owned())
}

const DRAIN_HOOK: [&str; 4] = ["/outrider-hook/outrider", "drain", "--admin", "127.0.0.1:9901"];

/// What every injected pod spec has, whatever the workload: returns
/// (outrider, outrider-init, app container) after checking the common shape.
fn check_pod(spec: &Value, app: &str, classic: bool, image: &str) -> (Value, Value, Value) {
    let inits = spec["initContainers"].as_array().expect("initContainers");
    let init = named(&spec["initContainers"], "outrider-init").clone();
    assert_eq!(init["image"], image);
    assert_eq!(init["args"], json!(["install-hook", "/outrider-hook"]));
    assert_eq!(named(&init["volumeMounts"], "outrider-bin")["mountPath"], "/outrider-hook");
    assert!(init.get("restartPolicy").is_none(), "outrider-init must run to completion: {init:#}");
    let outrider = if classic {
        assert!(!inits.iter().any(|c| c["name"] == "outrider"), "classic: no outrider init container");
        let containers = spec["containers"].as_array().unwrap();
        let at = containers.iter().position(|c| c["name"] == "outrider").expect("classic: outrider in containers");
        assert!(containers[at].get("restartPolicy").is_none(), "a regular container has no restartPolicy");
        containers[at].clone()
    } else {
        assert!(!spec["containers"].as_array().unwrap().iter().any(|c| c["name"] == "outrider"));
        let at = inits.iter().position(|c| c["name"] == "outrider").expect("native: outrider init container");
        let hook = inits.iter().position(|c| c["name"] == "outrider-init").unwrap();
        assert!(hook < at, "outrider-init must come before the outrider sidecar: {inits:#?}");
        assert_eq!(inits[at]["restartPolicy"], "Always", "native sidecar");
        inits[at].clone()
    };
    assert_eq!(outrider["image"], image);
    let admin = outrider["ports"].as_array().unwrap().iter().find(|p| p["containerPort"] == 9901).expect("admin port 9901");
    // The design named it `admin`; `outrider-admin` cannot clash with an
    // app port of that name.
    assert!(admin["name"] == "admin" || admin["name"] == "outrider-admin", "{admin}");
    assert_eq!(env_value(&outrider, "OUTRIDER_ADMIN_LISTEN").as_deref(), Some("0.0.0.0:9901"));
    assert_eq!(env_value(&outrider, "OUTRIDER_LOG_FORMAT").as_deref(), Some("json"));
    assert_eq!(
        env(&outrider, "OUTRIDER_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"],
        json!({"name": "outrider-admin-token", "key": "token", "optional": true}),
        "the admin token comes from a Secret, never a literal"
    );
    for (var, path) in [("K8S_POD_NAME", "metadata.name"), ("K8S_NAMESPACE_NAME", "metadata.namespace"), ("K8S_NODE_NAME", "spec.nodeName")]
    {
        assert_eq!(env(&outrider, var)["valueFrom"]["fieldRef"]["fieldPath"], path, "{var}");
    }
    assert_eq!(outrider["startupProbe"]["httpGet"]["path"], "/livez", "a /startupz startup probe on a native sidecar deadlocks");
    assert_eq!(outrider["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(outrider["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let port = &outrider[probe]["httpGet"]["port"];
        assert!(*port == 9901 || *port == "admin", "{probe} must hit the admin port: {port}");
    }
    let app = named(&spec["containers"], app).clone();
    let mount = named(&app["volumeMounts"], "outrider-bin");
    assert_eq!(mount["mountPath"], "/outrider-hook");
    assert_eq!(mount["readOnly"], true);
    assert!(app.get("readinessProbe").is_none() || outrider_keeps_app_probe(&app), "the app's readiness probe moves to outrider: {app:#}");
    let volume = named(&spec["volumes"], "outrider-bin");
    assert_eq!(volume["emptyDir"]["sizeLimit"], "32Mi");
    (outrider, init, app)
}

/// An exec readiness probe stays on the app (outrider cannot run it).
fn outrider_keeps_app_probe(app: &Value) -> bool {
    app["readinessProbe"].get("exec").is_some()
}

fn listen_port(outrider: &Value) -> u64 {
    let listen = env_value(outrider, "OUTRIDER_LISTEN").expect("OUTRIDER_LISTEN");
    assert_eq!(listen, "0.0.0.0:15080", "the default listen address");
    15080
}

fn grace(spec: &Value) -> i64 {
    spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)
}

fn annotations(meta: &Value) -> &serde_json::Map<String, Value> {
    meta["annotations"].as_object().expect("annotations")
}

#[test]
fn deployment_takes_over_the_named_port_the_probes_and_the_services() {
    for classic in [false, true] {
        let docs = injected_docs("deployment", classic);
        let deployment = doc(&docs, "Deployment", "catalog");
        let template = &deployment["spec"]["template"];
        let spec = &template["spec"];
        let (outrider, _, app) = check_pod(spec, "catalog", classic, outrider::inject::DEFAULT_IMAGE);
        let listen = listen_port(&outrider);

        // outrider's listener takes over the name `http`; the app keeps 8080
        // without a name, and its other port as it was.
        let http = named(&outrider["ports"], "http");
        assert_eq!(http["containerPort"], listen);
        let app_ports = app["ports"].as_array().unwrap();
        let app_http = app_ports.iter().find(|p| p["containerPort"] == 8080).expect("the app keeps port 8080");
        assert!(app_http.get("name").is_none(), "the app's port loses its name: {app_http}");
        assert_eq!(named(&app["ports"], "metrics")["containerPort"], 9100);

        // The readiness probe moved to outrider with its timings; the
        // liveness probe stays, on the port's number now.
        assert_eq!(env_value(&outrider, "OUTRIDER_UPSTREAM").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(app_health(&outrider), "/healthz");
        // The app's probe timings drive outrider's own check of the app.
        assert_eq!(env_value(&outrider, "OUTRIDER_APP_HEALTH_INTERVAL").as_deref(), Some("5s"));
        assert_eq!(env_value(&outrider, "OUTRIDER_APP_HEALTH_FAILURES").as_deref(), Some("3"));
        assert_eq!(env_value(&outrider, "OUTRIDER_APP_HEALTH_SUCCESSES").as_deref(), Some("1"));
        assert_eq!(app["livenessProbe"]["httpGet"], json!({"path": "/healthz", "port": 8080}));
        assert!(app.get("readinessProbe").is_none());

        // The drain hook joins the postStart hook the app had.
        assert_eq!(app["lifecycle"]["preStop"]["exec"]["command"], json!(DRAIN_HOOK));
        assert!(app["lifecycle"]["postStart"]["exec"].is_object(), "postStart kept: {app:#}");
        assert_eq!(grace(spec), 35, "20 s drain + 10 s app stop + 5 s margin");
        assert_eq!(env_value(&outrider, "OTEL_SERVICE_NAME").as_deref(), Some("catalog"));
        let notes = annotations(&template["metadata"]);
        if classic && spec["containers"][0]["name"] == "outrider" {
            // First in the list (as the design has it), outrider would be
            // what `kubectl logs/exec` pick unless the pod names the app.
            assert_eq!(notes.get("kubectl.kubernetes.io/default-container"), Some(&json!("catalog")));
        }
        assert_eq!(notes["outrider.dev/injected"], env!("CARGO_PKG_VERSION"));
        assert!(notes.contains_key("outrider.dev/original"), "{notes:?}");

        // Both Services in the stream select the pods and target the app
        // port (by name, by number): both now reach outrider. By number:
        // moved to outrider's number (recorded for uninject). By name: the
        // name now belongs to outrider; in native mode the Service gets the
        // number too, as Kubernetes < 1.33 does not resolve the named ports
        // of init containers.
        for svc in ["catalog", "catalog-internal"] {
            let service = doc(&docs, "Service", svc);
            let target = &service["spec"]["ports"][0]["targetPort"];
            match target.as_str() {
                Some(name) if classic => assert_eq!(named(&outrider["ports"], name)["containerPort"], listen, "{svc}"),
                _ => {
                    assert_eq!(*target, listen, "{svc}: {service:#}");
                    assert!(annotations(&service["metadata"]).contains_key("outrider.dev/original-target-ports"), "{svc}");
                }
            }
        }
        let internal = doc(&docs, "Service", "catalog-internal");
        assert_eq!(named(&internal["spec"]["ports"], "metrics")["targetPort"], 9100, "other ports untouched");
        assert_eq!(doc(&docs, "ConfigMap", "catalog-config")["data"]["CATALOG_PAGE_SIZE"], "50");
    }
}

#[test]
fn statefulset_numbered_port_tcp_probe_and_a_raised_grace_period() {
    let docs = injected_docs("statefulset", false);
    let spec = &doc(&docs, "StatefulSet", "ledger")["spec"]["template"]["spec"];
    let (outrider, _, app) = check_pod(spec, "ledger", false, outrider::inject::DEFAULT_IMAGE);
    assert_eq!(env_value(&outrider, "OUTRIDER_UPSTREAM").as_deref(), Some("http://127.0.0.1:7000"));
    assert_eq!(app_health(&outrider), "tcp");
    assert_eq!(env_value(&outrider, "OUTRIDER_APP_HEALTH_INTERVAL").as_deref(), Some("3s"));
    assert_eq!(env_value(&outrider, "OUTRIDER_APP_HEALTH_FAILURES").as_deref(), Some("2"));
    assert_eq!(app["ports"], json!([{"containerPort": 7000, "protocol": "TCP"}]));
    assert_eq!(app["livenessProbe"]["tcpSocket"]["port"], 7000);
    assert_eq!(grace(spec), 35, "10 s is raised to 35 s");
    assert_eq!(env_value(&outrider, "OTEL_SERVICE_NAME").as_deref(), Some("ledger"), "label app");
}

#[test]
fn daemonset_grpc_readiness_probe_becomes_a_grpc_health_check() {
    let docs = injected_docs("daemonset", false);
    let spec = &doc(&docs, "DaemonSet", "node-agent")["spec"]["template"]["spec"];
    let (outrider, _, _) = check_pod(spec, "agent", false, outrider::inject::DEFAULT_IMAGE);
    assert_eq!(env_value(&outrider, "OUTRIDER_UPSTREAM").as_deref(), Some("http://127.0.0.1:50051"));
    assert_eq!(app_health(&outrider), "grpc:agent.v1.Agent");
    assert_eq!(named(&outrider["ports"], "grpc")["containerPort"], 15080);
    assert_eq!(spec["tolerations"][0]["key"], "node-role.kubernetes.io/control-plane");
}

#[test]
fn job_cronjob_replicaset_and_replicationcontroller_are_injected_natively() {
    let docs = injected_docs("job", false);
    check_pod(&doc(&docs, "Job", "catalog-import")["spec"]["template"]["spec"], "import", false, outrider::inject::DEFAULT_IMAGE);
    let docs = injected_docs("cronjob", false);
    let spec = &doc(&docs, "CronJob", "nightly-report")["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let (outrider, _, _) = check_pod(spec, "report", false, outrider::inject::DEFAULT_IMAGE);
    assert_eq!(app_health(&outrider), "/status");
    let docs = injected_docs("replicaset", false);
    let spec = &doc(&docs, "ReplicaSet", "frontend")["spec"]["template"]["spec"];
    let (outrider, _, _) = check_pod(spec, "nginx", false, outrider::inject::DEFAULT_IMAGE);
    assert_eq!(env_value(&outrider, "OUTRIDER_UPSTREAM").as_deref(), Some("http://127.0.0.1:80"));
    assert_eq!(named(&outrider["ports"], "web")["containerPort"], 15080);
    assert_eq!(env_value(&outrider, "OTEL_SERVICE_NAME").as_deref(), Some("frontend"));
    let docs = injected_docs("replicationcontroller", false);
    let spec = &doc(&docs, "ReplicationController", "guestbook")["spec"]["template"]["spec"];
    let (outrider, _, _) = check_pod(spec, "php-redis", false, outrider::inject::DEFAULT_IMAGE);
    assert_eq!(named(&outrider["ports"], "http-web")["containerPort"], 15080, "a name starting with http");
    assert_eq!(app_health(&outrider), "/healthz.php");
    assert_eq!(env_value(&outrider, "OUTRIDER_APP_HEALTH_FAILURES").as_deref(), Some("5"));
}

#[test]
fn jobs_are_skipped_in_classic_mode_with_a_note() {
    for (name, kind) in [("job", "a Job"), ("cronjob", "a CronJob")] {
        let input = std::fs::read_to_string(fixture(name)).unwrap();
        let run = inject(&input, &["--classic"]).success(name);
        assert_eq!(documents(&run.stdout), documents(&input), "{kind} is left alone with --classic");
        assert!(!run.stderr.trim().is_empty(), "{kind}: the skip must be explained on stderr");
    }
}

#[test]
fn pod_runs_its_own_pre_stop_command_after_the_drain_and_says_so() {
    for classic in [false, true] {
        let path = fixture("pod");
        let mut args = vec!["inject", "-f", path.to_str().unwrap()];
        args.extend_from_slice(classic_args(classic));
        let run = outrider(&args, None).success("inject pod");
        let docs = documents(&run.stdout);
        let spec = &doc(&docs, "Pod", "legacy-billing")["spec"];
        let (outrider, _, app) = check_pod(spec, "billing", classic, outrider::inject::DEFAULT_IMAGE);
        assert_eq!(
            app["lifecycle"]["preStop"]["exec"]["command"],
            json!(["/outrider-hook/outrider", "drain", "--admin", "127.0.0.1:9901", "--", "/usr/local/bin/billing", "flush-queue"]),
            "the app's own command runs once outrider has drained"
        );
        assert_eq!(app_health(&outrider), "tcp", "no readiness probe: outrider checks the port");
        assert!(run.stderr.contains("preStop command now runs once outrider has drained"), "a note must say so:\n{}", run.stderr);
        assert_eq!(grace(spec), 35);
    }
}

#[test]
fn annotations_override_image_upstream_drain_and_tracing_and_disabled_is_left_alone() {
    let docs = injected_docs("annotations", false);
    let spec = &doc(&docs, "Deployment", "checkout")["spec"]["template"]["spec"];
    let image = "registry.example.com/platform/outrider:0.1.0-patched";
    let (outrider, _, app) = check_pod(spec, "checkout", false, image);
    assert_eq!(env_value(&outrider, "OUTRIDER_UPSTREAM").as_deref(), Some("http://127.0.0.1:8000"));
    assert_eq!(named(&outrider["ports"], "api")["containerPort"], 15080, "outrider takes the upstream port's name");
    assert_eq!(named(&app["ports"], "http")["containerPort"], 8080, "the app's other port keeps its name");
    assert_eq!(app_health(&outrider), "/ready");
    assert_eq!(env_value(&outrider, "OUTRIDER_DRAIN_TIMEOUT").as_deref(), Some("45s"), "the workload's annotation");
    assert_eq!(grace(spec), 60, "45 s drain + 10 s app stop + 5 s margin");
    assert_eq!(env_value(&outrider, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(), Some("http://otel-collector.observability:4317"));

    let input = documents(&std::fs::read_to_string(fixture("annotations")).unwrap());
    assert_eq!(doc(&docs, "Deployment", "payments-gateway"), doc(&input, "Deployment", "payments-gateway"));
}

#[test]
fn image_flag_sets_the_image_and_upgrades_an_injected_workload() {
    let input = std::fs::read_to_string(fixture("deployment")).unwrap();
    let image = "registry.local/outrider:next";
    let fresh = inject(&input, &["--image", image]).success("inject --image");
    let docs = documents(&fresh.stdout);
    check_pod(&doc(&docs, "Deployment", "catalog")["spec"]["template"]["spec"], "catalog", false, image);
    let old = inject(&input, &[]).success("inject");
    let upgraded = inject(&old.stdout, &["--image", image]).success("re-inject --image");
    assert!(upgraded.stdout == fresh.stdout, "re-injecting with --image must equal injecting with it:\n{}", upgraded.stdout);
}

// ===== the stream =====

#[test]
fn stdin_with_and_without_dash() {
    let input = std::fs::read_to_string(fixture("deployment")).unwrap();
    let expected = std::fs::read_to_string(golden_path("deployment", false)).unwrap_or_default();
    let from_file = outrider(&["inject", "-f", fixture("deployment").to_str().unwrap()], None).success("inject -f FILE");
    for args in [&["inject", "-f", "-"][..], &["inject"][..]] {
        let run = outrider(args, Some(&input)).success(&format!("{args:?}"));
        assert!(run.stdout == from_file.stdout, "{args:?} differs from -f FILE:\n{}", run.stdout);
        if std::env::var_os("UPDATE_GOLDEN").is_none() {
            assert!(run.stdout == expected, "{args:?} differs from the golden output");
        }
    }
}

/// The YAML documents of a stream as text, split on `---` lines.
fn raw_documents(yaml: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in yaml.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            docs.last_mut().unwrap().push_str(line);
        }
    }
    docs
}

#[test]
fn documents_without_pod_templates_are_copied_byte_for_byte() {
    let input = std::fs::read_to_string(fixture("deployment")).unwrap();
    let config_map = raw_documents(&input).into_iter().find(|d| d.contains("kind: ConfigMap")).unwrap();
    assert!(config_map.contains("# items per page"), "the fixture's ConfigMap has comments");
    let run = inject(&input, &[]).success("inject deployment");
    assert!(
        raw_documents(&run.stdout).contains(&config_map),
        "the ConfigMap (with its comments) must come out byte for byte:\n{config_map}\n--- output\n{}",
        run.stdout
    );
    // Leading comments of re-serialised documents are kept.
    for comment in ["# The catalog service of a shop", "# Targets the app's port by NAME", "# Targets the app's port by NUMBER."] {
        assert!(run.stdout.contains(comment), "lost the leading comment {comment:?}:\n{}", run.stdout);
    }

    // A stream with no pod template at all: the output is the input, to
    // the byte, whatever its quoting, comments, anchors and odd spacing.
    let untouched = "\
# Application settings.
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings   # trailing comment
data:
  a: 'single quoted'
  b: \"double\"
  c: |
    literal block
      indented
  list: [1, 2,   3]
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData:
  token: &t not-a-real-token
  again: *t
---
# A Service selecting nothing in this stream.
apiVersion: v1
kind: Service
metadata:
  name: elsewhere
spec:
  selector: {app: elsewhere}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w
spec:
  template: {spec: {containers: [{name: c, image: x}]}}
";
    for args in [&[][..], &["--classic"][..], &["--uninject"][..]] {
        let run = inject(untouched, args).success("inject a stream without pod templates");
        assert!(run.stdout == untouched, "{args:?}: changed a stream without pod templates:\n{}", run.stdout);
    }
}

#[test]
fn notes_on_stderr_name_the_service_rewrite() {
    let input = std::fs::read_to_string(fixture("deployment")).unwrap();
    let run = inject(&input, &[]).success("inject deployment");
    assert!(!run.stderr.is_empty(), "no notes on stderr");
    for service in ["catalog", "catalog-internal"] {
        assert!(
            run.stderr.lines().any(|l| l.contains(&format!("service/{service}:")) && l.contains("targetPort")),
            "the notes must say Service {service} was rewritten:\n{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("15080"), "the notes must say where the Services now point:\n{}", run.stderr);
    assert!(!run.stdout.contains("15080\n#"), "notes belong on stderr, not in the YAML");
}

#[test]
fn a_service_elsewhere_targeting_the_number_is_named_in_the_notes() {
    // The workload alone: its Services live in another stream. Those that
    // target the port number still reach the app directly.
    let input = std::fs::read_to_string(fixture("deployment")).unwrap();
    let workload = raw_documents(&input).into_iter().find(|d| d.contains("kind: Deployment")).unwrap();
    let run = inject(&workload, &[]).success("inject the Deployment alone");
    assert!(
        run.stderr.contains("8080") && run.stderr.contains("15080"),
        "the notes must say Services targeting 8080 by number must move to 15080:\n{}",
        run.stderr
    );
}

// ===== errors =====

fn deployment_with(name: &str, annotations: &str, ports: &str) -> String {
    format!(
        "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations: {annotations}
    spec:
      containers:
        - name: app
          image: registry.example.com/app:1
          ports: {ports}
"
    )
}

#[test]
fn an_invalid_annotation_is_one_line_naming_it_and_the_workload() {
    let ports = "[{name: http, containerPort: 8080}]";
    for (annotation, value) in [
        ("outrider.dev/drain-timeout", "soon"),
        ("outrider.dev/upstream-port", "no-such-port"),
        ("outrider.dev/upstream-port", "70000"),
        ("outrider.dev/listen-port", "0"),
        ("outrider.dev/admin-port", "http"),
        ("outrider.dev/inject", "maybe"),
    ] {
        let input = deployment_with("bad-annotation", &format!("{{{annotation}: \"{value}\"}}"), ports);
        let line = inject(&input, &[]).one_line_error(&format!("{annotation}={value}"));
        assert!(line.contains(annotation), "{annotation}={value}: the error must name the annotation: {line}");
        assert!(line.contains("bad-annotation"), "{annotation}={value}: the error must name the workload: {line}");
    }
}

#[test]
fn an_app_without_a_port_or_on_outriders_ports_is_an_error() {
    let line = inject(&deployment_with("portless", "{}", "[]"), &[]).one_line_error("no port");
    assert!(line.contains("portless") && line.contains("outrider.dev/upstream-port"), "{line}");
    for port in [9901, 15080] {
        let input = deployment_with("clash", "{}", &format!("[{{name: http, containerPort: {port}}}]"));
        let line = inject(&input, &[]).one_line_error(&format!("app on {port}"));
        assert!(line.contains("clash") && line.contains(&port.to_string()), "{line}");
    }
}

#[test]
fn not_yaml_is_one_line_naming_the_document() {
    let input = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\n---\n{}---\nkind: [unclosed\n  : : :\n",
        deployment_with("fine", "{}", "[{containerPort: 8080}]")
    );
    let line = inject(&input, &[]).one_line_error("not YAML");
    assert!(line.to_lowercase().contains("document 3"), "the error must name document 3: {line}");
}

#[test]
fn a_missing_file_is_one_line_naming_it() {
    let path = fixtures().join("no-such-file.yaml");
    let line = outrider(&["inject", "-f", path.to_str().unwrap()], None).one_line_error("missing file");
    assert!(line.contains("no-such-file.yaml"), "{line}");
}

#[test]
fn uninject_of_a_workload_never_injected_changes_nothing() {
    for name in inputs() {
        let input = std::fs::read_to_string(fixture(&name)).unwrap();
        let run = inject(&input, &["--uninject"]).success(&format!("uninject {name}"));
        assert_eq!(documents(&run.stdout), documents(&input), "{name}");
    }
}

// ===== cases found reviewing the golden outputs (an ignored one is a known defect of the core; run with --ignored) =====

/// An app that serves TLS on its port (port `https`, probe scheme HTTPS):
/// outrider would forward plaintext HTTP to it (`http://127.0.0.1:8443`)
/// and serve plaintext where clients expect TLS, breaking every request.
/// inject must refuse it (one line naming the workload and the
/// annotation to set) or skip it with a note, never inject it.
#[test]
fn a_tls_app_is_not_injected_with_a_plaintext_upstream() {
    let input = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: secure}
spec:
  selector: {matchLabels: {app: secure}}
  template:
    metadata: {labels: {app: secure}}
    spec:
      containers:
        - name: secure
          image: registry.example.com/secure:1
          ports: [{name: https, containerPort: 8443}]
          readinessProbe:
            httpGet: {path: /healthz, port: https, scheme: HTTPS}
";
    let run = inject(input, &[]);
    if run.ok {
        assert_eq!(documents(&run.stdout), documents(input), "a TLS app must be left alone:\n{}", run.stdout);
        assert!(run.stderr.contains("secure"), "{}", run.stderr);
    } else {
        let line = run.one_line_error("TLS app");
        assert!(line.contains("secure") && line.contains("outrider.dev/upstream-port"), "{line}");
    }
}

/// A readiness probe with `httpHeaders` (a virtual host's Host header) or
/// a `host`: outrider's check of the path would send neither, and fail
/// where the kubelet's probe passed, so the pod would never be Ready. The
/// probe stays on the app. (Its `timeoutSeconds` alone would move, as
/// `OUTRIDER_APP_HEALTH_TIMEOUT`.)
#[test]
fn a_readiness_probe_outrider_cannot_reproduce_stays_on_the_app() {
    for extra in ["httpHeaders: [{name: Host, value: shop.example.com}]", "host: 127.0.0.1"] {
        let input = format!(
            "\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: vhost}}
spec:
  selector: {{matchLabels: {{app: vhost}}}}
  template:
    metadata: {{labels: {{app: vhost}}}}
    spec:
      containers:
        - name: vhost
          image: registry.example.com/vhost:1
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe:
            httpGet: {{path: /healthz, port: http, {extra}}}
            timeoutSeconds: 5
"
        );
        let docs = documents(&inject(&input, &[]).success("inject").stdout);
        let app = named(&docs[0]["spec"]["template"]["spec"]["containers"], "vhost");
        assert!(app["readinessProbe"]["httpGet"].is_object(), "{extra}: the probe must stay on the app: {app:#}");
    }
}

/// A headless Service (`clusterIP: None`, a StatefulSet's governing
/// Service): clients resolve pod IPs and connect to the port they know
/// (the Service's `port`, 8080 here), so moving its targetPort to 15080
/// does not move them to outrider. The notes must say so.
#[test]
fn a_headless_service_gets_a_warning() {
    let input = std::fs::read_to_string(fixture("statefulset")).unwrap()
        + "---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: payments}
spec:
  clusterIP: None
  selector: {app: ledger}
  ports: [{name: api, port: 7000}]
";
    let run = inject(&input, &[]).success("inject");
    assert!(
        run.stderr.lines().any(|l| l.contains("service/ledger") && (l.contains("headless") || l.contains("clusterIP"))),
        "{}",
        run.stderr
    );
}

/// An error names its document once (it once read
/// `document 1: deployment/x (document 1): ...`).
#[test]
fn an_error_names_its_document_once() {
    let input = deployment_with("bad", "{outrider.dev/drain-timeout: soon}", "[{containerPort: 8080}]");
    let line = inject(&input, &[]).one_line_error("bad annotation");
    assert_eq!(line.matches("document 1").count(), 1, "{line}");
}

/// A node agent's port with a `hostPort` (node-IP:8126): that traffic
/// reaches the app directly, past outrider. inject must move the hostPort
/// to outrider's port, or at least say so.
#[test]
fn a_host_port_is_moved_to_outrider_or_named_in_the_notes() {
    let input = "\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
        - name: agent
          image: registry.example.com/agent:1
          ports: [{name: http, containerPort: 8126, hostPort: 8126}]
";
    let run = inject(input, &[]).success("inject");
    let docs = documents(&run.stdout);
    let spec = &docs[0]["spec"]["template"]["spec"];
    let outrider = named(&spec["initContainers"], "outrider");
    let moved = outrider["ports"].as_array().unwrap().iter().any(|p| p["hostPort"] == 8126);
    assert!(moved || run.stderr.contains("hostPort"), "{}", run.stderr);
}
