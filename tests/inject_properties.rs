//! Property test of `outrider inject` through the library
//! (`outrider::inject::stream`): arbitrary valid Deployments (1-3
//! containers, 0-3 ports each, named or not, TCP or UDP, readiness /
//! liveness / startup probes of every kind on port names or numbers, init
//! containers, grace periods, lifecycle hooks, labels) never panic, inject
//! or fail with a message that names the cause, are idempotent, uninject
//! back to the input, keep the pod coherent (unique names, every probe's
//! named port resolvable) and, all together at the end, pass
//! `kubernetes-validate --strict` for Kubernetes 1.29 and 1.37.

mod common;

use std::{
    collections::{BTreeSet, HashSet},
    path::Path,
    sync::Mutex,
};

use outrider::inject::{self, Mode, Options, Outcome, Sidecar};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde_json::{Map, Value, json};

use common::kubernetes::{documents, validate};

/// Cases per run: each is three in-process injections (well under a
/// millisecond each), and the generated pods are small, so the schema
/// validation of all of them at the end dominates (a few seconds).
const CASES: u32 = 128;

// Pools the ports are drawn from without replacement, so numbers and names
// are unique in the pod, as Kubernetes requires. Neither outrider's listen
// port (15080) nor its admin port (9901) is among the numbers; the name
// `admin` is, to see what inject does when the app already uses it.
const PORT_NUMBERS: [u16; 10] = [80, 3000, 5000, 7000, 8000, 8080, 8443, 9000, 9090, 50051];
const PORT_NAMES: [&str; 10] = ["http", "grpc", "web", "metrics", "api", "health", "debug", "admin", "h2c", "status"];
const CONTAINER_NAMES: [&str; 5] = ["app", "web", "worker", "api-server", "cache-warmer"];
const UNDECLARED_PORT: u16 = 8081;

#[derive(Debug, Clone, Copy)]
enum ProbeKind {
    Http,
    Tcp,
    Grpc,
    Exec,
}

#[derive(Debug, Clone)]
struct ProbeSpec {
    kind: ProbeKind,
    by_name: bool,
    pick: usize,
    path: &'static str,
    grpc_service: Option<&'static str>,
    period: Option<u8>,
    timeout: Option<u8>,
    failure: Option<u8>,
    success: Option<u8>,
}

#[derive(Debug, Clone)]
struct PortSpec {
    named: bool,
    /// None: unset (TCP), else TCP or UDP spelled out.
    protocol: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct ContainerSpec {
    ports: Vec<PortSpec>,
    readiness: Option<ProbeSpec>,
    liveness: Option<ProbeSpec>,
    startup: Option<ProbeSpec>,
    /// 0: none, 1: postStart, 2: preStop, 3: both.
    lifecycle: u8,
}

#[derive(Debug, Clone)]
struct DeploymentSpec {
    name: String,
    containers: Vec<ContainerSpec>,
    container_names: Vec<&'static str>,
    numbers: Vec<u16>,
    names: Vec<&'static str>,
    init_container: bool,
    grace: Option<u16>,
    /// 0: no name label, 1: app.kubernetes.io/name, 2: app.
    label: u8,
    classic: bool,
}

fn probe() -> impl Strategy<Value = ProbeSpec> {
    (
        prop_oneof![Just(ProbeKind::Http), Just(ProbeKind::Tcp), Just(ProbeKind::Grpc), Just(ProbeKind::Exec)],
        any::<bool>(),
        0usize..8,
        prop::sample::select(vec!["/", "/healthz", "/ready", "/api/v1/health"]),
        prop::option::of(prop::sample::select(vec!["", "grpc.health.v1.Health", "shop.v1.Catalog"])),
        (prop::option::of(1u8..30), prop::option::of(1u8..10), prop::option::of(1u8..10), prop::option::of(1u8..4)),
    )
        .prop_map(|(kind, by_name, pick, path, grpc_service, (period, timeout, failure, success))| ProbeSpec {
            kind,
            by_name,
            pick,
            path,
            grpc_service,
            period,
            timeout,
            failure,
            success,
        })
}

fn port() -> impl Strategy<Value = PortSpec> {
    (any::<bool>(), prop::option::of(prop::sample::select(vec!["TCP", "TCP", "UDP"])))
        .prop_map(|(named, protocol)| PortSpec { named, protocol })
}

fn container() -> impl Strategy<Value = ContainerSpec> {
    (prop::collection::vec(port(), 0..=3), prop::option::of(probe()), prop::option::of(probe()), prop::option::of(probe()), 0u8..4)
        .prop_map(|(ports, readiness, liveness, startup, lifecycle)| ContainerSpec { ports, readiness, liveness, startup, lifecycle })
}

fn deployment() -> impl Strategy<Value = DeploymentSpec> {
    (
        "[a-z]([a-z0-9-]{0,20}[a-z0-9])?",
        prop::collection::vec(container(), 1..=3),
        Just(CONTAINER_NAMES.to_vec()).prop_shuffle(),
        Just(PORT_NUMBERS.to_vec()).prop_shuffle(),
        Just(PORT_NAMES.to_vec()).prop_shuffle(),
        any::<bool>(),
        prop::option::of(prop_oneof![0u16..35, 35u16..120]),
        0u8..3,
        prop::bool::weighted(0.25),
    )
        .prop_map(|(name, containers, container_names, numbers, names, init_container, grace, label, classic)| DeploymentSpec {
            name,
            containers,
            container_names,
            numbers,
            names,
            init_container,
            grace,
            label,
            classic,
        })
}

/// One container port as generated: number, name, protocol.
#[derive(Debug, Clone)]
struct Port {
    number: u16,
    name: Option<&'static str>,
    tcp: bool,
}

fn probe_json(spec: &ProbeSpec, ports: &[Port], liveness_or_startup: bool) -> Value {
    let named: Vec<&Port> = ports.iter().filter(|p| p.name.is_some()).collect();
    // A named port only where the container has one (grpc probes take
    // numbers only); a number from the container's ports, or one it does
    // not declare (allowed: the probe just connects to it).
    let port: Value = if spec.by_name && !named.is_empty() && !matches!(spec.kind, ProbeKind::Grpc) {
        json!(named[spec.pick % named.len()].name.unwrap())
    } else if !ports.is_empty() && spec.pick < 6 {
        json!(ports[spec.pick % ports.len()].number)
    } else {
        json!(UNDECLARED_PORT)
    };
    let mut probe = match spec.kind {
        ProbeKind::Http => json!({"httpGet": {"path": spec.path, "port": port}}),
        ProbeKind::Tcp => json!({"tcpSocket": {"port": port}}),
        ProbeKind::Grpc => {
            let number = port.as_u64().map_or_else(|| json!(UNDECLARED_PORT), |n| json!(n));
            match spec.grpc_service {
                Some(service) => json!({"grpc": {"port": number, "service": service}}),
                None => json!({"grpc": {"port": number}}),
            }
        }
        ProbeKind::Exec => json!({"exec": {"command": ["/bin/check", "--quiet"]}}),
    };
    let fields = probe.as_object_mut().unwrap();
    if let Some(p) = spec.period {
        fields.insert("periodSeconds".into(), json!(p));
    }
    if let Some(t) = spec.timeout {
        fields.insert("timeoutSeconds".into(), json!(t));
    }
    if let Some(f) = spec.failure {
        fields.insert("failureThreshold".into(), json!(f));
    }
    // Liveness and startup probes must have successThreshold 1.
    if let Some(s) = spec.success {
        fields.insert("successThreshold".into(), json!(if liveness_or_startup { 1 } else { s }));
    }
    probe
}

/// The Deployment as JSON, and the ports of its first (the app) container.
fn build(spec: &DeploymentSpec) -> (Value, Vec<Port>) {
    let mut next = 0;
    let mut app_ports = Vec::new();
    let mut containers = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let ports: Vec<Port> = c
            .ports
            .iter()
            .map(|p| {
                let port = Port { number: spec.numbers[next], name: p.named.then_some(spec.names[next]), tcp: p.protocol != Some("UDP") };
                next += 1;
                port
            })
            .collect();
        let mut container = Map::new();
        container.insert("name".into(), json!(spec.container_names[i]));
        container.insert("image".into(), json!(format!("registry.example.com/{}:1.0", spec.container_names[i])));
        if !ports.is_empty() {
            let list: Vec<Value> = c
                .ports
                .iter()
                .zip(&ports)
                .map(|(p, port)| {
                    let mut m = Map::new();
                    if let Some(name) = port.name {
                        m.insert("name".into(), json!(name));
                    }
                    m.insert("containerPort".into(), json!(port.number));
                    if let Some(proto) = p.protocol {
                        m.insert("protocol".into(), json!(proto));
                    }
                    Value::Object(m)
                })
                .collect();
            container.insert("ports".into(), Value::Array(list));
        }
        if let Some(p) = &c.readiness {
            container.insert("readinessProbe".into(), probe_json(p, &ports, false));
        }
        if let Some(p) = &c.liveness {
            container.insert("livenessProbe".into(), probe_json(p, &ports, true));
        }
        if let Some(p) = &c.startup {
            container.insert("startupProbe".into(), probe_json(p, &ports, true));
        }
        let mut lifecycle = Map::new();
        if c.lifecycle & 1 != 0 {
            lifecycle.insert("postStart".into(), json!({"exec": {"command": ["/bin/warm-up"]}}));
        }
        if c.lifecycle & 2 != 0 {
            lifecycle.insert("preStop".into(), json!({"exec": {"command": ["/bin/sh", "-c", "sleep 5"]}}));
        }
        if !lifecycle.is_empty() {
            container.insert("lifecycle".into(), Value::Object(lifecycle));
        }
        if i == 0 {
            app_ports = ports;
        }
        containers.push(Value::Object(container));
    }
    let mut labels = Map::new();
    labels.insert("app.kubernetes.io/instance".into(), json!("prop"));
    match spec.label {
        1 => {
            labels.insert("app.kubernetes.io/name".into(), json!(format!("{}-svc", spec.name)));
        }
        2 => {
            labels.insert("app".into(), json!(format!("{}-app", spec.name)));
        }
        _ => {}
    }
    let mut pod = Map::new();
    if let Some(g) = spec.grace {
        pod.insert("terminationGracePeriodSeconds".into(), json!(g));
    }
    if spec.init_container {
        pod.insert(
            "initContainers".into(),
            json!([{"name": "migrate", "image": "registry.example.com/migrate:1.0", "command": ["/migrate", "up"]}]),
        );
    }
    pod.insert("containers".into(), Value::Array(containers));
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "prop"}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    });
    (deployment, app_ports)
}

/// Every port name in the pod is unique and a valid IANA_SVC_NAME length;
/// every probe's named port exists in its own container; container names
/// are unique. What kubectl apply would reject, beyond the schema.
fn check_coherent(pod: &Value) -> Result<(), String> {
    let all: Vec<&Value> = ["initContainers", "containers"].iter().filter_map(|k| pod[*k].as_array()).flatten().collect();
    let mut containers = HashSet::new();
    let mut port_names = HashSet::new();
    for c in &all {
        let name = c["name"].as_str().ok_or("a container without a name")?;
        if !containers.insert(name) {
            return Err(format!("two containers named {name}"));
        }
        let own: BTreeSet<&str> = c["ports"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
        for n in &own {
            if n.len() > 15 || !port_names.insert(*n) {
                return Err(format!("port name {n} repeated or too long"));
            }
        }
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            for kind in ["httpGet", "tcpSocket"] {
                if let Some(port) = c[probe][kind]["port"].as_str()
                    && !own.contains(port)
                {
                    return Err(format!("{name}.{probe} targets port {port:?}, which {name} does not declare"));
                }
            }
        }
        if let Some(port) = c["lifecycle"]["preStop"]["httpGet"]["port"].as_str()
            && !own.contains(port)
        {
            return Err(format!("{name}.lifecycle.preStop targets port {port:?}, which {name} does not declare"));
        }
    }
    Ok(())
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str().map(str::to_owned)
}

/// A pod of the Deployment as the API server shows it to an admission
/// webhook: named by `generateName` (ReplicaSet name + `-`), labelled with
/// the ReplicaSet's `pod-template-hash`.
fn replica_pod(deployment: &Value, name: &str) -> Value {
    let template = &deployment["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    labels["pod-template-hash"] = json!("5d8f7c9b4");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": format!("{name}-5d8f7c9b4-"), "namespace": "default", "labels": labels},
        "spec": template["spec"],
    })
}

/// Every injected output, validated all together at the end.
static OUTPUTS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The errors, shown at the end (what the generator made refusable).
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn check(spec: &DeploymentSpec) -> Result<(), TestCaseError> {
    let (input, app_ports) = build(spec);
    let yaml = serde_yaml_ng::to_string(&input).unwrap();
    let opts = Options { sidecar: if spec.classic { Sidecar::Classic } else { Sidecar::Native }, ..Options::default() };
    let result = inject::stream(&yaml, &opts, Mode::Inject);

    let app_has_tcp_port = app_ports.iter().any(|p| p.tcp);
    // A port of the pod already named `admin`, the name of outrider's
    // admin port: inject may refuse it (naming it) rather than clash.
    let uses_admin = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| input["spec"]["template"]["spec"][*k].as_array())
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .any(|p| p["name"] == "admin");
    let out = match result {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'), "an error is one line: {msg:?}");
            prop_assert!(msg.contains(&spec.name), "the error must name the workload {}: {msg}", spec.name);
            if !app_has_tcp_port {
                prop_assert!(msg.contains("outrider.dev/upstream-port"), "no TCP port: the error must name the annotation: {msg}");
                ERRORS.lock().unwrap().push(msg);
                return Ok(());
            }
            prop_assert!(uses_admin && msg.contains("admin"), "this Deployment must inject, got: {msg}\n{yaml}");
            ERRORS.lock().unwrap().push(msg);
            return Ok(());
        }
        Ok(out) => out,
    };
    prop_assert!(app_has_tcp_port, "an app without a TCP port cannot be injected, yet it was:\n{yaml}\n--- output\n{}", out.yaml);

    let docs = documents(&out.yaml);
    prop_assert_eq!(docs.len(), 1);
    let pod = &docs[0]["spec"]["template"]["spec"];
    check_coherent(pod).map_err(|e| TestCaseError::fail(format!("{e}\n--- input\n{yaml}--- output\n{}", out.yaml)))?;

    // outrider is where it belongs and forwards to one of the app's TCP ports.
    let list = if spec.classic { "containers" } else { "initContainers" };
    let outrider = pod[list].as_array().unwrap().iter().find(|c| c["name"] == "outrider").cloned().unwrap_or_default();
    prop_assert_eq!(&outrider["name"], "outrider", "{}", out.yaml);
    if !spec.classic {
        prop_assert_eq!(&outrider["restartPolicy"], "Always");
    }
    let upstream = env(&outrider, "OUTRIDER_UPSTREAM").unwrap_or_default();
    prop_assert!(
        app_ports.iter().any(|p| p.tcp && upstream == format!("http://127.0.0.1:{}", p.number)),
        "OUTRIDER_UPSTREAM {upstream:?} is not one of the app's TCP ports {app_ports:?}"
    );
    let app = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == spec.container_names[0]).unwrap();
    prop_assert!(app["lifecycle"]["preStop"].is_object(), "the app has a preStop hook (drain or its own)");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    prop_assert!(grace >= 35 && grace >= u64::from(spec.grace.unwrap_or(0)), "grace {grace} s");

    // Idempotent, and the webhook's path (one Pod) gives the same pod spec.
    let again = inject::stream(&out.yaml, &opts, Mode::Inject).map_err(|e| TestCaseError::fail(format!("re-inject: {e}")))?;
    prop_assert!(again.yaml == out.yaml, "inject∘inject != inject:\n{}\n--- once\n{}", again.yaml, out.yaml);
    let back = inject::stream(&out.yaml, &opts, Mode::Uninject).map_err(|e| TestCaseError::fail(format!("uninject: {e}")))?;
    prop_assert_eq!(documents(&back.yaml), vec![input.clone()], "uninject(inject(x)) != x");

    // The pod the webhook sees for this Deployment gets the same spec.
    let mut single = replica_pod(&input, &spec.name);
    let outcome = inject::pod(&mut single, &opts).map_err(|e| TestCaseError::fail(format!("inject::pod: {e}")))?;
    prop_assert!(matches!(outcome, Outcome::Injected { .. }), "{outcome:?}");
    prop_assert_eq!(&single["spec"], pod, "inject::pod and inject::stream disagree");

    OUTPUTS.lock().unwrap().push(out.yaml);
    Ok(())
}

#[test]
fn arbitrary_deployments_inject_idempotently_and_validate() {
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&deployment(), |spec| check(&spec)) {
        panic!("{e}");
    }
    let outputs = std::mem::take(&mut *OUTPUTS.lock().unwrap());
    let errors = std::mem::take(&mut *ERRORS.lock().unwrap());
    eprintln!("{} injected, {} refused; the first refusals:", outputs.len(), errors.len());
    for e in errors.iter().take(5) {
        eprintln!("  {e}");
    }
    assert!(outputs.len() >= CASES as usize / 2, "only {} of {CASES} generated Deployments injected", outputs.len());
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("inject-properties-{}.yaml", std::process::id()));
    std::fs::write(&file, outputs.join("---\n")).unwrap();
    validate(&format!("{} injected Deployments", outputs.len()), std::slice::from_ref(&file));
    let _ = std::fs::remove_file(&file);
}

/// The generator makes valid Deployments (so the property speaks of valid
/// input only): a sample of them passes the schema too.
#[test]
fn generated_deployments_are_valid() {
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    let inputs = Mutex::new(Vec::new());
    runner
        .run(&deployment(), |spec| {
            let (input, _) = build(&spec);
            check_coherent(&input["spec"]["template"]["spec"]).map_err(TestCaseError::fail)?;
            inputs.lock().unwrap().push(serde_yaml_ng::to_string(&input).unwrap());
            Ok(())
        })
        .unwrap();
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("inject-properties-inputs-{}.yaml", std::process::id()));
    std::fs::write(&file, inputs.into_inner().unwrap().join("---\n")).unwrap();
    validate("64 generated Deployments", std::slice::from_ref(&file));
    let _ = std::fs::remove_file(&file);
}

/// The webhook sees a Deployment's pod before it has a name: only
/// `generateName` (`<replicaset>-`, the ReplicaSet being `<deployment>-<pod-
/// template-hash>`). Without an `app.kubernetes.io/name` or `app` label,
/// OTEL_SERVICE_NAME must still be the workload's name, not one that changes
/// with every rollout (the hash) or every pod.
#[test]
fn webhook_pods_are_named_after_their_workload() {
    let (deployment, _) = build(&DeploymentSpec {
        name: "catalog".into(),
        containers: vec![ContainerSpec {
            ports: vec![PortSpec { named: true, protocol: None }],
            readiness: None,
            liveness: None,
            startup: None,
            lifecycle: 0,
        }],
        container_names: CONTAINER_NAMES.to_vec(),
        numbers: PORT_NUMBERS.to_vec(),
        names: PORT_NAMES.to_vec(),
        init_container: false,
        grace: None,
        label: 0,
        classic: false,
    });
    let mut pod = replica_pod(&deployment, "catalog");
    inject::pod(&mut pod, &Options::default()).unwrap();
    let outrider = pod["spec"]["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "outrider").unwrap();
    assert_eq!(env(outrider, "OTEL_SERVICE_NAME").as_deref(), Some("catalog"));
}
