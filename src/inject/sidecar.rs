//! The containers and the volume inject adds, built as typed Kubernetes
//! objects so a misspelt field is a compile error rather than a manifest
//! the API server refuses.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Lifecycle,
        LifecycleHandler, ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
        VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};

use super::options::{ADMIN_PORT_NAME, INIT, MOUNT, SIDECAR, Sidecar, VOLUME};

/// The Secret whose `token` key, when it exists, becomes
/// `OUTRIDER_ADMIN_TOKEN`: /drain from outside the pod (an operator) then
/// needs it. The pod's own preStop hook calls /drain from loopback and
/// needs no token, so the Secret is optional and no value is ever written
/// into a manifest.
pub const ADMIN_TOKEN_SECRET: &str = "outrider-admin-token";

/// What the sidecar is told; all decided by the caller.
#[derive(Debug, Clone)]
pub struct Plan {
    pub image: String,
    pub mode: Sidecar,
    pub listen_port: u16,
    /// The name the public port takes over from the app's port.
    pub listen_port_name: String,
    /// The app port's `hostPort`, moved to outrider's port.
    pub host_port: Option<i32>,
    pub admin_port: u16,
    pub upstream_port: u16,
    /// `OUTRIDER_APP_HEALTH*` inherited from the app's readiness probe.
    pub health: Vec<(&'static str, String)>,
    pub drain_delay: Option<String>,
    pub drain_timeout: Option<String>,
    pub app_stop_timeout: Option<String>,
    pub service_name: String,
    pub otlp_endpoint: Option<String>,
}

/// The init container that copies outrider's static binary into the
/// shared volume, where the app container's preStop hook runs it. A
/// separate, short-lived container rather than the sidecar itself, so the
/// binary is in place before the app starts in both sidecar modes.
pub fn init_container(plan: &Plan) -> Container {
    Container {
        name: INIT.to_owned(),
        image: Some(plan.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(vec!["install-hook".to_owned(), MOUNT.to_owned()]),
        volume_mounts: Some(vec![VolumeMount { name: VOLUME.to_owned(), mount_path: MOUNT.to_owned(), ..VolumeMount::default() }]),
        resources: Some(resources("10m", "16Mi", Some("100m"), "32Mi")),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// The sidecar.
pub fn sidecar(plan: &Plan) -> Container {
    let port = |name: &str, n: u16, host_port: Option<i32>| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(n),
        host_port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let admin_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(plan.admin_port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let mut env = vec![
        value("OUTRIDER_LISTEN", format!("0.0.0.0:{}", plan.listen_port)),
        value("OUTRIDER_UPSTREAM", format!("http://127.0.0.1:{}", plan.upstream_port)),
        value("OUTRIDER_ADMIN_LISTEN", format!("0.0.0.0:{}", plan.admin_port)),
    ];
    env.extend(plan.health.iter().map(|(k, v)| value(k, v.clone())));
    env.push(value("OUTRIDER_LOG_FORMAT", "json".to_owned()));
    for (k, v) in [
        ("OUTRIDER_DRAIN_DELAY", &plan.drain_delay),
        ("OUTRIDER_DRAIN_TIMEOUT", &plan.drain_timeout),
        ("OUTRIDER_APP_STOP_TIMEOUT", &plan.app_stop_timeout),
    ] {
        if let Some(v) = v {
            env.push(value(k, v.clone()));
        }
    }
    env.push(EnvVar {
        name: "OUTRIDER_ADMIN_TOKEN".to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: ADMIN_TOKEN_SECRET.to_owned(), key: "token".to_owned(), optional: Some(true) }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    env.push(value("OTEL_SERVICE_NAME", plan.service_name.clone()));
    if let Some(endpoint) = &plan.otlp_endpoint {
        env.push(value("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
    }
    for (k, path) in [("K8S_POD_NAME", "metadata.name"), ("K8S_NAMESPACE_NAME", "metadata.namespace"), ("K8S_NODE_NAME", "spec.nodeName")] {
        env.push(EnvVar {
            name: k.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: path.to_owned(), ..ObjectFieldSelector::default() }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    Container {
        name: SIDECAR.to_owned(),
        image: Some(plan.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        restart_policy: (plan.mode == Sidecar::Native).then(|| "Always".to_owned()),
        ports: Some(vec![port(&plan.listen_port_name, plan.listen_port, plan.host_port), port(ADMIN_PORT_NAME, plan.admin_port, None)]),
        env: Some(env),
        // Started once the admin listener answers. Not /startupz: a native
        // sidecar's startup probe holds back the app container, and
        // /startupz waits for the app, so the pod would never start.
        startup_probe: Some(admin_probe("/livez", 1, 30)),
        liveness_probe: Some(admin_probe("/livez", 10, 3)),
        // The app's health, already checked with the app probe's period
        // and thresholds inside outrider, and the drain: probed often, so
        // the kubelet adds little to the app probe's own delay (at most 4 s).
        readiness_probe: Some(admin_probe("/readyz", 2, 2)),
        // No CPU limit: a throttled proxy adds latency to every request of
        // a busy app. The memory limit leaves room for 10 000 connections
        // (54 MiB measured, docs/performance.md) and held requests.
        resources: Some(resources("10m", "32Mi", None, "128Mi")),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// The app container's preStop hook: `outrider drain` from inside the pod,
/// so from loopback, which /drain trusts without a token. It holds the app
/// until outrider has drained (readiness failed, endpoints propagated,
/// in-flight requests done); only then does the kubelet send SIGTERM.
/// `then`: the app's own exec hook, run once the drain is over.
pub fn pre_stop(admin_port: u16, then: &[String]) -> LifecycleHandler {
    let mut command = vec![format!("{MOUNT}/outrider"), "drain".to_owned(), "--admin".to_owned(), format!("127.0.0.1:{admin_port}")];
    if !then.is_empty() {
        command.push("--".to_owned());
        command.extend_from_slice(then);
    }
    LifecycleHandler { exec: Some(ExecAction { command: Some(command) }), ..LifecycleHandler::default() }
}

/// An empty `lifecycle` for an app container that had none.
pub fn lifecycle(admin_port: u16) -> Lifecycle {
    Lifecycle { pre_stop: Some(pre_stop(admin_port, &[])), ..Lifecycle::default() }
}

/// The app container's read-only view of the binary.
pub fn app_mount() -> VolumeMount {
    VolumeMount { name: VOLUME.to_owned(), mount_path: MOUNT.to_owned(), read_only: Some(true), ..VolumeMount::default() }
}

/// The volume: outrider's static binary is about 9 MiB.
pub fn volume() -> Volume {
    Volume {
        name: VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity("32Mi".to_owned())), ..EmptyDirVolumeSource::default() }),
        ..Volume::default()
    }
}

fn value(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value), ..EnvVar::default() }
}

fn resources(cpu: &str, memory: &str, cpu_limit: Option<&str>, memory_limit: &str) -> ResourceRequirements {
    let q = |cpu: Option<&str>, memory: &str| {
        let mut q = BTreeMap::from([("memory".to_owned(), Quantity(memory.to_owned()))]);
        if let Some(cpu) = cpu {
            q.insert("cpu".to_owned(), Quantity(cpu.to_owned()));
        }
        q
    };
    ResourceRequirements {
        requests: Some(q(Some(cpu), memory)),
        limits: Some(q(cpu_limit, memory_limit)),
        ..ResourceRequirements::default()
    }
}

/// The Pod Security Standards' "restricted" profile: outrider needs no
/// privilege, and a namespace enforcing the profile must not refuse the pod
/// because of it.
fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
        ..SecurityContext::default()
    }
}
