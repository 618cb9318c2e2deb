//! One pod (a Pod, or a workload's pod template): outrider in, outrider
//! out. Edits the manifest as a JSON tree, so fields this build does not
//! know (newer Kubernetes, other tools' additions) pass through untouched
//! and in the user's order; what is added is built typed (`sidecar`).

use k8s_openapi::{
    api::core::v1::{Container, ContainerPort, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::{Map, Value, json};

use super::{
    options::{ADMIN_PORT_NAME, INIT, InjectError, LISTEN_PORT_NAME, Options, SIDECAR, Sidecar, VOLUME, annotation},
    original::{Grace, HostPort, Original, PortName},
    settings::{self, PortRef, Settings},
    sidecar::{self, Plan},
};

/// What the caller knows about the object around the pod template.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    /// `Deployment`, `Pod`...
    pub kind: &'a str,
    pub name: Option<&'a str>,
    /// The workload's own annotations (for a Pod: none besides the pod's).
    pub annotations: Option<&'a Map<String, Value>>,
}

/// What traffic must be moved to reach outrider: the Services selecting
/// `labels` whose target is the app's port.
#[derive(Debug, Clone)]
pub struct Takeover {
    pub labels: Map<String, Value>,
    pub app_port: u16,
    pub app_port_name: Option<String>,
    pub listen_port: u16,
}

#[derive(Debug)]
pub enum Injected {
    Done { notes: Vec<String>, takeover: Takeover },
    Skipped { reason: String },
}

/// Job-like kinds, whose pods must end: a classic sidecar never does.
fn runs_to_completion(kind: &str) -> bool {
    matches!(kind, "Job" | "CronJob")
}

/// Did inject put outrider in this pod? Its annotation says so.
pub fn is_injected(template: &Value) -> bool {
    template.pointer("/metadata/annotations").and_then(Value::as_object).is_some_and(|a| a.contains_key(annotation::INJECTED))
}

/// A container of outrider's reserved names that inject did not add: a
/// hand-written sidecar (deploy/kubernetes), which inject must not
/// replace, nor uninject take out.
fn hand_written(template: &Value) -> bool {
    let named = |list: &str| {
        template
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| matches!(c.get("name").and_then(Value::as_str), Some(SIDECAR | INIT))))
    };
    !is_injected(template) && (named("containers") || named("initContainers"))
}

/// Adds outrider to the pod template (first taking out an earlier
/// injection, so injecting twice changes nothing and a new `--image` or
/// annotation takes effect).
///
/// # Errors
/// An annotation, the pod spec or the app's ports do not allow it.
pub fn inject(template: &mut Value, workload: &Workload<'_>, opts: &Options) -> Result<Injected, InjectError> {
    if hand_written(template) {
        return Ok(Injected::Skipped {
            reason: format!("it already has a container named {SIDECAR} that inject did not add: left as written"),
        });
    }
    let mut work = template.clone();
    uninject(&mut work)?;
    let settings = settings::read(&[workload.annotations, work.pointer("/metadata/annotations").and_then(Value::as_object)])?;
    if settings.disabled {
        return Ok(Injected::Skipped { reason: format!("{}: disabled", annotation::INJECT) });
    }
    if work.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Injected::Skipped { reason: "hostNetwork: outrider's ports would be the node's".to_owned() });
    }
    if opts.sidecar == Sidecar::Classic && runs_to_completion(workload.kind) {
        return Ok(Injected::Skipped {
            reason: "a classic sidecar would keep the Job's pod running forever (use a native sidecar, Kubernetes >= 1.29)".to_owned(),
        });
    }
    let outcome = edit(&mut work, workload, &settings, opts)?;
    *template = work;
    Ok(outcome)
}

fn edit(pod: &mut Value, workload: &Workload<'_>, settings: &Settings, opts: &Options) -> Result<Injected, InjectError> {
    let containers: Vec<Container> = typed(pod.pointer("/spec/containers").cloned().unwrap_or(Value::Null), "spec.containers")?;
    let init: Vec<Container> = typed(pod.pointer("/spec/initContainers").cloned().unwrap_or_else(|| json!([])), "spec.initContainers")?;
    if containers.is_empty() {
        return Err(InjectError::Pod("the pod has no containers".to_owned()));
    }
    let app_index = choose_app(&containers, settings, pod)?;
    let app = &containers[app_index];
    let (app_port, app_port_name) = upstream_port(app, settings)?;
    refuse_tls(app, app_port, app_port_name.as_deref())?;
    check_ports(&containers, &init, settings, app_port)?;

    let mut original = Original { container: app.name.clone(), ..Original::default() };
    let mut notes = Vec::new();
    let listen_port_name = app_port_name.clone().unwrap_or_else(|| LISTEN_PORT_NAME.to_owned());
    let app_json = pod
        .pointer_mut(&format!("/spec/containers/{app_index}"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| malformed("spec.containers", "not a list of objects"))?;
    // As written: a moved probe is restored with its port name.
    let readiness_as_written = app_json.get("readinessProbe").cloned();

    // A hostPort on the app's port (node-IP:port) moves with the traffic.
    let mut host_port = None;
    for port in app_json.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        if port.get("containerPort").and_then(Value::as_i64) == Some(i64::from(app_port))
            && let Some(p) = port.as_object_mut()
            && let Some(hp) = p.shift_remove("hostPort")
        {
            host_port = hp.as_i64().and_then(|h| i32::try_from(h).ok());
            original.host_port = Some(HostPort { port: i32::from(app_port), host_port: hp });
        }
    }
    if let Some(hp) = host_port {
        notes.push(format!("hostPort {hp} moved to outrider's port"));
    }

    // The port keeps its number and gives its name to outrider's port, so
    // a Service targeting the name reaches outrider.
    if let Some(name) = &app_port_name {
        for port in app_json.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
            if port.get("name").and_then(Value::as_str) == Some(name)
                && let Some(p) = port.as_object_mut()
            {
                p.shift_remove("name");
            }
        }
        original.port_name = Some(PortName { port: i32::from(app_port), name: name.clone() });
        for place in HANDLERS {
            let at = format!("/{}/port", place.replace('.', "/"));
            if let Some(port) = pointer(app_json, &at)
                && port.as_str() == Some(name)
            {
                original.handler_ports.insert((*place).to_owned(), port.clone());
                if let Some(slot) = pointer_mut(app_json, &at) {
                    *slot = json!(app_port);
                }
            }
        }
    }

    // The app's readiness becomes outrider's app health check.
    let (health, moved) = inherit_readiness(app.readiness_probe.as_ref(), app_port, app_port_name.as_deref(), &mut notes);
    if moved {
        app_json.shift_remove("readinessProbe");
        original.readiness_probe = readiness_as_written;
        // Its port name, if rewritten above, comes back with the probe.
        original.handler_ports.retain(|k, _| !k.starts_with("readinessProbe."));
    }

    // The drain hook. An app's own exec hook runs after the drain; any
    // other kind of hook cannot be chained, and is kept.
    let own_exec = app_json.get("lifecycle").and_then(|l| l.get("preStop")).and_then(|h| {
        let only_exec = h.as_object().is_some_and(|h| h.len() == 1);
        let command: Option<Vec<String>> = h.pointer("/exec/command").and_then(|c| serde_json::from_value(c.clone()).ok());
        command.filter(|c| only_exec && !c.is_empty())
    });
    match app_json.get_mut("lifecycle").and_then(Value::as_object_mut) {
        Some(lifecycle) if lifecycle.contains_key("preStop") => match own_exec {
            Some(command) => {
                original.wrapped_pre_stop = lifecycle.insert("preStop".to_owned(), to_json(&sidecar::pre_stop(settings.admin_port, &command)));
                notes.push(format!("container {}: its own preStop command now runs once outrider has drained", app.name));
            }
            None => notes.push(format!(
                "container {} already has a preStop hook that is not a command, kept: the drain does not hold the app (see docs/kubernetes.md)",
                app.name
            )),
        },
        Some(lifecycle) => {
            lifecycle.insert("preStop".to_owned(), to_json(&sidecar::pre_stop(settings.admin_port, &[])));
            original.pre_stop = true;
        }
        None => {
            app_json.insert("lifecycle".to_owned(), to_json(&sidecar::lifecycle(settings.admin_port)));
            original.pre_stop = true;
            original.created.push("lifecycle".to_owned());
        }
    }

    if !app_json.contains_key("volumeMounts") {
        original.created.push("volumeMounts".to_owned());
    }
    push(app_json, "volumeMounts", to_json(&sidecar::app_mount()));

    let plan = Plan {
        image: settings.image.clone().unwrap_or_else(|| opts.image.clone()),
        mode: opts.sidecar,
        listen_port: settings.listen_port,
        listen_port_name,
        host_port,
        admin_port: settings.admin_port,
        upstream_port: app_port,
        health,
        drain_delay: settings.drain_delay.clone(),
        drain_timeout: settings.drain_timeout.clone(),
        app_stop_timeout: settings.app_stop_timeout.clone(),
        service_name: service_name(pod, workload, &app.name),
        otlp_endpoint: settings.otlp_endpoint.clone(),
    };
    let spec = pod.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| malformed("spec", "not an object"))?;
    if !spec.contains_key("initContainers") {
        original.created.push("initContainers".to_owned());
    }
    push(spec, "initContainers", to_json(&sidecar::init_container(&plan)));
    match opts.sidecar {
        Sidecar::Native => push(spec, "initContainers", to_json(&sidecar::sidecar(&plan))),
        // Last, so the app stays the default container of `kubectl logs`.
        Sidecar::Classic => push(spec, "containers", to_json(&sidecar::sidecar(&plan))),
    }
    if !spec.contains_key("volumes") {
        original.created.push("volumes".to_owned());
    }
    push(spec, "volumes", to_json(&sidecar::volume()));

    // The grace period must cover the drain and the app's stop.
    let needed = i64::try_from(settings.shutdown.as_secs()).unwrap_or(i64::MAX).saturating_add(5);
    let grace = spec.get("terminationGracePeriodSeconds").and_then(Value::as_i64);
    if grace.unwrap_or(30) < needed {
        notes.push(format!(
            "terminationGracePeriodSeconds {} -> {needed}: drain timeout + app stop timeout ({}s) + 5s",
            grace.map_or_else(|| "30 (default)".to_owned(), |g| g.to_string()),
            settings.shutdown.as_secs()
        ));
        original.grace = Some(Grace { was: grace });
        spec.insert("terminationGracePeriodSeconds".to_owned(), json!(needed));
    }

    if pod.get("metadata").is_none() {
        original.created.push("metadata".to_owned());
    }
    let meta = object_entry(pod, "metadata")?;
    if !meta.contains_key("annotations") {
        original.created.push("annotations".to_owned());
    }
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    let annotations = annotations.as_object_mut().ok_or_else(|| malformed("metadata.annotations", "not a map"))?;
    annotations.insert(annotation::INJECTED.to_owned(), json!(env!("CARGO_PKG_VERSION")));
    annotations.insert(annotation::ORIGINAL.to_owned(), json!(original.to_annotation()));
    let labels = meta.get("labels").and_then(Value::as_object).cloned().unwrap_or_default();

    notes.insert(
        0,
        format!(
            "{} sidecar: outrider listens on :{}{}, the app keeps :{app_port}; admin :{}",
            if opts.sidecar == Sidecar::Native { "native" } else { "classic" },
            settings.listen_port,
            app_port_name.as_ref().map_or_else(String::new, |n| format!(" (takes over the port name {n:?})")),
            settings.admin_port
        ),
    );
    Ok(Injected::Done { notes, takeover: Takeover { labels, app_port, app_port_name, listen_port: settings.listen_port } })
}

/// The handlers of a container that can name a port.
const HANDLERS: &[&str] = &[
    "livenessProbe.httpGet",
    "livenessProbe.tcpSocket",
    "readinessProbe.httpGet",
    "readinessProbe.tcpSocket",
    "startupProbe.httpGet",
    "startupProbe.tcpSocket",
    "lifecycle.postStart.httpGet",
    "lifecycle.postStart.tcpSocket",
    "lifecycle.preStop.httpGet",
    "lifecycle.preStop.tcpSocket",
];

/// Takes outrider out, restoring what the `outrider.dev/original`
/// annotation recorded. Returns whether anything changed.
///
/// # Errors
/// The annotation is damaged.
pub fn uninject(pod: &mut Value) -> Result<bool, InjectError> {
    if !is_injected(pod) {
        return Ok(false);
    }
    let original = match pod.pointer("/metadata/annotations").and_then(|a| a.get(annotation::ORIGINAL)).and_then(Value::as_str) {
        Some(s) => Original::from_annotation(s)
            .map_err(|e| InjectError::Annotation { key: annotation::ORIGINAL, reason: format!("not what inject wrote: {e}") })?,
        None => Original::default(),
    };
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        for (list, ours) in [("initContainers", &[SIDECAR, INIT][..]), ("containers", &[SIDECAR][..])] {
            remove_named(spec, list, ours, original.created(list));
        }
        remove_named(spec, "volumes", &[VOLUME], original.created("volumes"));
        if let Some(grace) = &original.grace {
            match grace.was {
                Some(g) => spec.insert("terminationGracePeriodSeconds".to_owned(), json!(g)),
                None => spec.shift_remove("terminationGracePeriodSeconds"),
            };
        }
        let app = spec
            .get_mut("containers")
            .and_then(Value::as_array_mut)
            .and_then(|cs| cs.iter_mut().find(|c| c.get("name").and_then(Value::as_str) == Some(original.container.as_str())))
            .and_then(Value::as_object_mut);
        if let Some(app) = app {
            restore_app(app, &original);
        }
    }
    let mut drop_metadata = false;
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.shift_remove(annotation::INJECTED);
            annotations.shift_remove(annotation::ORIGINAL);
            if annotations.is_empty() && original.created("annotations") {
                meta.shift_remove("annotations");
            }
        }
        drop_metadata = meta.is_empty() && original.created("metadata");
    }
    if drop_metadata && let Some(obj) = pod.as_object_mut() {
        obj.shift_remove("metadata");
    }
    Ok(true)
}

fn restore_app(app: &mut Map<String, Value>, original: &Original) {
    remove_named(app, "volumeMounts", &[VOLUME], original.created("volumeMounts"));
    if let Some(lifecycle) = app.get_mut("lifecycle").and_then(Value::as_object_mut) {
        if let Some(hook) = &original.wrapped_pre_stop {
            lifecycle.insert("preStop".to_owned(), hook.clone());
        } else if original.pre_stop {
            lifecycle.shift_remove("preStop");
            if lifecycle.is_empty() && original.created("lifecycle") {
                app.shift_remove("lifecycle");
            }
        }
    }
    if let Some(probe) = &original.readiness_probe {
        app.insert("readinessProbe".to_owned(), probe.clone());
    }
    for (place, port) in &original.handler_ports {
        if let Some(slot) = pointer_mut(app, &format!("/{}/port", place.replace('.', "/"))) {
            *slot = port.clone();
        }
    }
    if let Some(HostPort { port, host_port }) = &original.host_port {
        let ports = app.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten();
        if let Some(p) =
            ports.filter(|p| p.get("containerPort").and_then(Value::as_i64) == Some(i64::from(*port))).find_map(Value::as_object_mut)
        {
            p.insert("hostPort".to_owned(), host_port.clone());
        }
    }
    if let Some(PortName { port, name }) = &original.port_name {
        let ports = app.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten();
        if let Some(p) =
            ports.filter(|p| p.get("containerPort").and_then(Value::as_i64) == Some(i64::from(*port))).find_map(Value::as_object_mut)
        {
            // Back in its place: `name` first, as kubectl and most people write it.
            let rest = std::mem::take(p);
            p.insert("name".to_owned(), json!(name));
            p.extend(rest.into_iter().filter(|(k, _)| k != "name"));
        }
    }
}

/// Removes the entries named `names` from the list `key`; removes the list
/// too when inject created it and it is now empty.
fn remove_named(obj: &mut Map<String, Value>, key: &str, names: &[&str], created: bool) {
    if let Some(list) = obj.get_mut(key).and_then(Value::as_array_mut) {
        list.retain(|c| !c.get("name").and_then(Value::as_str).is_some_and(|n| names.contains(&n)));
        if list.is_empty() && created {
            obj.shift_remove(key);
        }
    }
}

/// The app: the annotated container, else kubectl's default container, else
/// the first.
fn choose_app(containers: &[Container], settings: &Settings, pod: &Value) -> Result<usize, InjectError> {
    let default = pod.pointer("/metadata/annotations").and_then(|a| a.get(annotation::DEFAULT_CONTAINER)).and_then(Value::as_str);
    let (wanted, source) = match (&settings.container, default) {
        (Some(c), _) => (Some(c.as_str()), annotation::CONTAINER),
        (None, Some(c)) => (Some(c), annotation::DEFAULT_CONTAINER),
        (None, None) => (None, ""),
    };
    match wanted {
        None => Ok(0),
        Some(name) => containers.iter().position(|c| c.name == name).ok_or_else(|| InjectError::Annotation {
            key: if source == annotation::CONTAINER { annotation::CONTAINER } else { annotation::DEFAULT_CONTAINER },
            reason: format!("no container named {name:?}"),
        }),
    }
}

fn is_tcp(p: &ContainerPort) -> bool {
    p.protocol.as_deref().is_none_or(|proto| proto == "TCP")
}

/// The app port outrider fronts, and the name it had.
fn upstream_port(app: &Container, settings: &Settings) -> Result<(u16, Option<String>), InjectError> {
    let ports = app.ports.as_deref().unwrap_or_default();
    let number = |p: &ContainerPort| {
        u16::try_from(p.container_port).map_err(|_| malformed("containerPort", &format!("{} is not a port", p.container_port)))
    };
    let chosen = match &settings.upstream_port {
        Some(PortRef::Number(n)) => {
            let named = ports.iter().find(|p| p.container_port == i32::from(*n) && is_tcp(p)).and_then(|p| p.name.clone());
            return Ok((*n, named));
        }
        Some(PortRef::Name(name)) => ports.iter().find(|p| p.name.as_deref() == Some(name)).ok_or_else(|| InjectError::Annotation {
            key: annotation::UPSTREAM_PORT,
            reason: format!("container {} has no port named {name:?}", app.name),
        })?,
        None => {
            let tcp = || ports.iter().filter(|p| is_tcp(p));
            let preferred = tcp().find(|p| p.name.as_deref().is_some_and(plaintext_name));
            let not_tls = || tcp().find(|p| !p.name.as_deref().is_some_and(|n| n.starts_with("https")));
            preferred.or_else(not_tls).or_else(|| tcp().next()).ok_or_else(|| {
                InjectError::Pod(format!(
                    "container {} declares no TCP port: set {} to the port the app serves on",
                    app.name,
                    annotation::UPSTREAM_PORT
                ))
            })?
        }
    };
    Ok((number(chosen)?, chosen.name.clone()))
}

/// A port name that says HTTP, h2c or gRPC in plaintext.
fn plaintext_name(n: &str) -> bool {
    matches!(n, "http" | "grpc" | "web" | "h2c" | "http2") || n.starts_with("http-") || n.starts_with("grpc-")
}

/// Does a handler's `port` (a number, a numeric string, or a port name)
/// mean the app's port `port`, whose name is `name`?
fn names_port(p: &IntOrString, port: u16, name: Option<&str>) -> bool {
    match p {
        IntOrString::Int(n) => *n == i32::from(port),
        IntOrString::String(s) => Some(s.as_str()) == name || s.parse::<u16>().ok() == Some(port),
    }
}

/// outrider speaks plaintext to the app on loopback: an app port that
/// serves TLS (its name says so, or a probe of it uses HTTPS) would get
/// plaintext requests and break, so it is refused with what to do instead.
fn refuse_tls(app: &Container, port: u16, name: Option<&str>) -> Result<(), InjectError> {
    let ours = |p: &IntOrString| names_port(p, port, name);
    let probes = [&app.readiness_probe, &app.liveness_probe, &app.startup_probe];
    let https_probe =
        probes.into_iter().flatten().filter_map(|p| p.http_get.as_ref()).any(|g| ours(&g.port) && g.scheme.as_deref() == Some("HTTPS"));
    let https_name = name.is_some_and(|n| n.starts_with("https"));
    if https_probe || https_name {
        return Err(InjectError::Pod(format!(
            "container {} serves TLS on port {port} ({}), and outrider speaks plaintext to the app: set {} to a plaintext port, or {}: disabled",
            app.name,
            if https_probe { "its probe's scheme is HTTPS" } else { "its port name says https" },
            annotation::UPSTREAM_PORT,
            annotation::INJECT
        )));
    }
    Ok(())
}

/// outrider's two ports must be free in the whole pod.
fn check_ports(containers: &[Container], init: &[Container], settings: &Settings, app_port: u16) -> Result<(), InjectError> {
    for (port, key) in [(settings.listen_port, annotation::LISTEN_PORT), (settings.admin_port, annotation::ADMIN_PORT)] {
        if port == app_port {
            return Err(InjectError::Pod(format!("the app serves on {port}, which outrider would listen on: set {key}")));
        }
        for c in containers.iter().chain(init) {
            if c.ports.iter().flatten().any(|p| p.container_port == i32::from(port)) {
                return Err(InjectError::Pod(format!("container {} uses port {port}, which outrider would listen on: set {key}", c.name)));
            }
        }
    }
    for c in containers.iter().chain(init) {
        if let Some(name) =
            c.ports.iter().flatten().filter_map(|p| p.name.as_deref()).find(|n| *n == ADMIN_PORT_NAME || *n == LISTEN_PORT_NAME)
        {
            return Err(InjectError::Pod(format!("container {} has a port named {name:?}, a name outrider reserves", c.name)));
        }
    }
    Ok(())
}

/// `OUTRIDER_APP_HEALTH*` from the app's readiness probe, and whether the
/// probe moves to outrider. A probe outrider cannot run (exec, another
/// port, HTTPS) stays on the app, and outrider checks that the port accepts.
fn inherit_readiness(probe: Option<&Probe>, port: u16, name: Option<&str>, notes: &mut Vec<String>) -> (Vec<(&'static str, String)>, bool) {
    let ours = |p: &IntOrString| names_port(p, port, name);
    let Some(probe) = probe else {
        return (vec![("OUTRIDER_APP_HEALTH", "tcp".to_owned())], false);
    };
    // outrider's check sends no custom header, and waits at most 5 min: a
    // probe that needs more stays on the app.
    let within_reach = probe.timeout_seconds.unwrap_or(1) <= 300;
    let check = if let Some(get) = &probe.http_get {
        let https = get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let headers = get.http_headers.as_ref().is_some_and(|h| !h.is_empty()) || get.host.is_some();
        (ours(&get.port) && !https && !headers && within_reach)
            .then(|| get.path.as_deref().filter(|p| p.starts_with('/')).unwrap_or("/").to_owned())
    } else if let Some(tcp) = &probe.tcp_socket {
        ours(&tcp.port).then(|| "tcp".to_owned())
    } else if let Some(grpc) = &probe.grpc {
        (grpc.port == i32::from(port) && within_reach)
            .then(|| grpc.service.as_deref().filter(|s| !s.is_empty()).map_or_else(|| "grpc".to_owned(), |s| format!("grpc:{s}")))
    } else {
        None
    };
    let Some(check) = check else {
        notes.push(
            "the app's readiness probe is not one outrider can run (exec, another port, HTTPS, or custom headers): kept on the app; outrider checks that the port accepts"
                .to_owned(),
        );
        return (vec![("OUTRIDER_APP_HEALTH", "tcp".to_owned())], false);
    };
    let period = probe.period_seconds.unwrap_or(10).max(1);
    let failures = probe.failure_threshold.unwrap_or(3).clamp(1, 1000);
    let successes = probe.success_threshold.unwrap_or(1).clamp(1, 1000);
    let timeout = probe.timeout_seconds.unwrap_or(1).max(1);
    notes.push(format!("readiness: the app's probe moved to outrider (OUTRIDER_APP_HEALTH={check}, every {period}s, {failures} failures)"));
    (
        vec![
            ("OUTRIDER_APP_HEALTH", check),
            ("OUTRIDER_APP_HEALTH_INTERVAL", format!("{period}s")),
            ("OUTRIDER_APP_HEALTH_FAILURES", failures.to_string()),
            ("OUTRIDER_APP_HEALTH_SUCCESSES", successes.to_string()),
            ("OUTRIDER_APP_HEALTH_TIMEOUT", format!("{timeout}s")),
        ],
        true,
    )
}

/// `OTEL_SERVICE_NAME`: what the workload calls itself.
fn service_name(pod: &Value, workload: &Workload<'_>, container: &str) -> String {
    let label = |k: &str| pod.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str).filter(|s| !s.is_empty());
    label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .or(workload.name)
        .or_else(|| pod.pointer("/metadata/name").and_then(Value::as_str))
        .unwrap_or(container)
        .to_owned()
}

fn typed<T: serde::de::DeserializeOwned>(v: Value, field: &str) -> Result<T, InjectError> {
    serde_json::from_value(v).map_err(|e| malformed(field, &e.to_string()))
}

/// A typed object as JSON, `name` first as people write it (k8s-openapi
/// serialises fields in alphabetical order).
fn to_json<T: serde::Serialize>(v: &T) -> Value {
    let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
    name_first(&mut v);
    v
}

fn name_first(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(name) = map.shift_remove("name") {
                let rest = std::mem::take(map);
                map.insert("name".to_owned(), name);
                map.extend(rest);
            }
            map.values_mut().for_each(name_first);
        }
        Value::Array(items) => items.iter_mut().for_each(name_first),
        _ => {}
    }
}

fn malformed(field: &str, reason: &str) -> InjectError {
    InjectError::Malformed { field: field.to_owned(), reason: reason.to_owned() }
}

fn push(obj: &mut Map<String, Value>, key: &str, v: Value) {
    match obj.get_mut(key).and_then(Value::as_array_mut) {
        Some(list) => list.push(v),
        None => {
            obj.insert(key.to_owned(), Value::Array(vec![v]));
        }
    }
}

fn object_entry<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, InjectError> {
    let obj = v.as_object_mut().ok_or_else(|| malformed("pod", "not an object"))?;
    obj.entry(key).or_insert_with(|| json!({})).as_object_mut().ok_or_else(|| malformed(key, "not an object"))
}

fn pointer<'a>(obj: &'a Map<String, Value>, pointer: &str) -> Option<&'a Value> {
    let mut parts = pointer.trim_start_matches('/').splitn(2, '/');
    let first = obj.get(parts.next()?)?;
    match parts.next() {
        None => Some(first),
        Some(rest) => first.pointer(&format!("/{rest}")),
    }
}

fn pointer_mut<'a>(obj: &'a mut Map<String, Value>, pointer: &str) -> Option<&'a mut Value> {
    let mut parts = pointer.trim_start_matches('/').splitn(2, '/');
    let first = obj.get_mut(parts.next()?)?;
    match parts.next() {
        None => Some(first),
        Some(rest) => first.pointer_mut(&format!("/{rest}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment_template() -> Value {
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [{
                    "name": "web",
                    "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 4, "failureThreshold": 2},
                    "livenessProbe": {"tcpSocket": {"port": "http"}},
                }],
            },
        })
    }

    fn workload() -> Workload<'static> {
        Workload { kind: "Deployment", name: Some("web"), annotations: None }
    }

    fn inject_ok(t: &mut Value, opts: &Options) -> (Vec<String>, Takeover) {
        match inject(t, &workload(), opts).unwrap() {
            Injected::Done { notes, takeover } => (notes, takeover),
            Injected::Skipped { reason } => panic!("skipped: {reason}"),
        }
    }

    fn env(t: &Value, name: &str) -> Option<String> {
        let sidecar = t.pointer("/spec/initContainers").and_then(Value::as_array)?.iter().find(|c| c["name"] == SIDECAR)?;
        sidecar["env"].as_array()?.iter().find(|e| e["name"] == name).and_then(|e| e["value"].as_str()).map(str::to_owned)
    }

    #[test]
    fn a_named_port_moves_to_outrider_and_comes_back() {
        let input = deployment_template();
        let mut t = input.clone();
        let (_, takeover) = inject_ok(&mut t, &Options::default());
        assert_eq!((takeover.app_port, takeover.app_port_name.as_deref(), takeover.listen_port), (8080, Some("http"), 15080));
        let app = &t["spec"]["containers"][0];
        assert_eq!(app["ports"][0], json!({"containerPort": 8080}), "the app's port loses its name, keeps its number");
        assert_eq!(app["ports"][1]["name"], "metrics", "other ports are untouched");
        assert_eq!(app["livenessProbe"]["tcpSocket"]["port"], 8080, "a probe that named the port gets its number");
        assert!(app.get("readinessProbe").is_none(), "readiness moved to outrider");
        assert_eq!(app["lifecycle"]["preStop"]["exec"]["command"][1], "drain");
        let init = t["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init.iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), [INIT, SIDECAR]);
        assert_eq!(init[1]["restartPolicy"], "Always");
        assert_eq!(init[1]["ports"][0], json!({"name": "http", "containerPort": 15080, "protocol": "TCP"}));
        assert_eq!(env(&t, "OUTRIDER_APP_HEALTH").as_deref(), Some("/ready"));
        assert_eq!(env(&t, "OUTRIDER_APP_HEALTH_INTERVAL").as_deref(), Some("4s"));
        assert_eq!(env(&t, "OUTRIDER_APP_HEALTH_FAILURES").as_deref(), Some("2"));
        assert_eq!(env(&t, "OUTRIDER_UPSTREAM").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(t["spec"]["terminationGracePeriodSeconds"], 35);

        let mut twice = t.clone();
        inject_ok(&mut twice, &Options::default());
        assert_eq!(twice, t, "inject is idempotent");
        assert!(uninject(&mut t).unwrap());
        assert_eq!(t, input, "uninject restores the template exactly, key order included");
        assert!(!uninject(&mut t).unwrap(), "nothing left to take out");
    }

    #[test]
    fn a_numbered_port_a_tcp_probe_and_a_short_grace_period() {
        let input = json!({"spec": {
            "terminationGracePeriodSeconds": 10,
            "containers": [{"name": "db", "image": "db", "ports": [{"containerPort": 5000}],
                            "readinessProbe": {"tcpSocket": {"port": 5000}}}],
        }});
        let mut t = input.clone();
        let (notes, takeover) = inject_ok(&mut t, &Options { sidecar: Sidecar::Classic, ..Options::default() });
        assert_eq!(takeover.app_port_name, None);
        let sidecar = &t["spec"]["containers"][1];
        assert_eq!(sidecar["name"], SIDECAR, "classic: after the app, which stays kubectl's default container");
        assert!(sidecar.get("restartPolicy").is_none());
        assert_eq!(sidecar["ports"][0]["name"], LISTEN_PORT_NAME);
        assert_eq!(t["spec"]["terminationGracePeriodSeconds"], 35);
        assert!(notes.iter().any(|n| n.contains("terminationGracePeriodSeconds 10 -> 35")), "{notes:?}");
        uninject(&mut t).unwrap();
        assert_eq!(t, input);
    }

    #[test]
    fn what_outrider_cannot_take_over_stays_on_the_app() {
        let input = json!({"spec": {"containers": [{
            "name": "app", "image": "app", "ports": [{"name": "web", "containerPort": 80}],
            "readinessProbe": {"exec": {"command": ["check"]}},
            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}, "postStart": {"httpGet": {"port": "web", "path": "/warm"}}},
        }]}});
        let mut t = input.clone();
        let (notes, _) = inject_ok(&mut t, &Options::default());
        let app = &t["spec"]["containers"][0];
        assert_eq!(app["readinessProbe"], input["spec"]["containers"][0]["readinessProbe"], "an exec probe stays");
        assert_eq!(
            app["lifecycle"]["preStop"]["exec"]["command"],
            json!(["/outrider-hook/outrider", "drain", "--admin", "127.0.0.1:9901", "--", "sleep", "5"]),
            "the app's own hook runs after the drain"
        );
        assert_eq!(app["lifecycle"]["postStart"]["httpGet"]["port"], 80);
        assert_eq!(env(&t, "OUTRIDER_APP_HEALTH").as_deref(), Some("tcp"));
        assert!(notes.iter().any(|n| n.contains("now runs once outrider has drained")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("kept on the app")), "{notes:?}");
        uninject(&mut t).unwrap();
        assert_eq!(t, input);
    }

    #[test]
    fn a_plaintext_port_is_preferred_to_a_tls_one() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "a",
            "ports": [{"name": "https", "containerPort": 8443}, {"name": "metrics", "containerPort": 9090}, {"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(inject_ok(&mut t, &Options::default()).1.app_port, 8080);
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "a",
            "ports": [{"name": "https", "containerPort": 8443}, {"name": "admin", "containerPort": 9000}]}]}});
        assert_eq!(inject_ok(&mut t, &Options::default()).1.app_port, 9000);
    }

    #[test]
    fn grpc_probes_become_grpc_checks() {
        let mut t = json!({"spec": {"containers": [{"name": "g", "image": "g", "ports": [{"name": "grpc", "containerPort": 50051}],
            "readinessProbe": {"grpc": {"port": 50051, "service": "echo"}}}]}});
        inject_ok(&mut t, &Options::default());
        assert_eq!(env(&t, "OUTRIDER_APP_HEALTH").as_deref(), Some("grpc:echo"));
    }

    #[test]
    fn skips_say_why() {
        let skip =
            |t: &mut Value, kind: &str, opts: &Options| match inject(t, &Workload { kind, name: None, annotations: None }, opts).unwrap() {
                Injected::Skipped { reason } => reason,
                Injected::Done { .. } => panic!("injected"),
            };
        let mut t = deployment_template();
        t["metadata"]["annotations"] = json!({"outrider.dev/inject": "disabled"});
        assert!(skip(&mut t, "Deployment", &Options::default()).contains("disabled"));
        let mut t = deployment_template();
        t["spec"]["hostNetwork"] = json!(true);
        assert!(skip(&mut t, "Deployment", &Options::default()).contains("hostNetwork"));
        let mut t = deployment_template();
        assert!(skip(&mut t, "Job", &Options { sidecar: Sidecar::Classic, ..Options::default() }).contains("forever"));
        assert_eq!(t, deployment_template(), "a skipped template is left alone");
        let mut hand = deployment_template();
        hand["spec"]["initContainers"] = json!([{"name": "outrider", "image": "mine", "restartPolicy": "Always"}]);
        let before = hand.clone();
        assert!(skip(&mut hand, "Deployment", &Options::default()).contains("inject did not add"));
        assert!(!uninject(&mut hand).unwrap(), "uninject leaves a hand-written sidecar alone");
        assert_eq!(hand, before);
    }

    #[test]
    fn errors_name_what_to_change() {
        let err = |t: Value| inject(&mut t.clone(), &workload(), &Options::default()).unwrap_err().to_string();
        let no_port = json!({"spec": {"containers": [{"name": "a", "image": "a"}]}});
        assert!(err(no_port).contains("outrider.dev/upstream-port"));
        let clash = json!({"spec": {"containers": [{"name": "a", "image": "a", "ports": [{"containerPort": 80}]},
                                                   {"name": "b", "image": "b", "ports": [{"containerPort": 9901}]}]}});
        assert!(err(clash).contains("outrider.dev/admin-port"));
        let mut t = deployment_template();
        t["metadata"]["annotations"] = json!({"outrider.dev/container": "nope"});
        assert!(err(t).contains("no container named \"nope\""));
        let mut t = deployment_template();
        t["metadata"]["annotations"] = json!({"outrider.dev/upstream-port": "grpc"});
        assert!(err(t).contains("no port named \"grpc\""));
        let tls = json!({"spec": {"containers": [{"name": "s", "image": "s", "ports": [{"name": "https", "containerPort": 8443}]}]}});
        assert!(err(tls).contains("serves TLS on port 8443 (its port name says https)"));
        let tls = json!({"spec": {"containers": [{"name": "s", "image": "s", "ports": [{"containerPort": 8443}],
            "livenessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}}]}});
        assert!(err(tls).contains("its probe's scheme is HTTPS"));
        let not_containers = json!({"spec": {"containers": "web"}});
        assert!(err(not_containers).starts_with("spec.containers: "));
    }

    #[test]
    fn a_reinject_with_a_new_image_changes_only_the_image() {
        let mut a = deployment_template();
        inject_ok(&mut a, &Options::default());
        let mut b = a.clone();
        inject_ok(&mut b, &Options { image: "registry.local/outrider:2".into(), ..Options::default() });
        assert_eq!(b["spec"]["initContainers"][1]["image"], "registry.local/outrider:2");
        b["spec"]["initContainers"][0]["image"] = a["spec"]["initContainers"][0]["image"].clone();
        b["spec"]["initContainers"][1]["image"] = a["spec"]["initContainers"][1]["image"].clone();
        assert_eq!(a, b);
    }
}
