//! A multi-document YAML stream: which documents hold pod templates, and
//! which Services send traffic to them. Documents inject does not change
//! are copied byte for byte, comments included; a changed document is
//! written anew (serde_yaml_ng keeps no comments) after the comment lines
//! that led it.

use serde_json::{Map, Value, json};

use super::{
    options::{InjectError, Mode, Options, Sidecar, annotation},
    pod::{self, Injected, Takeover, Workload},
};

/// The result of a whole stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub yaml: String,
    /// One line each, for stderr (`outrider inject`) or admission warnings.
    pub notes: Vec<String>,
}

struct Doc<'a> {
    /// The `---` line, and the comment and blank lines before the content.
    lead: &'a str,
    /// Everything, as written.
    raw: &'a str,
    value: Option<Value>,
    changed: bool,
    /// The line the document starts on, for error messages.
    line: usize,
}

/// Pod templates, where a kind keeps one.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn is_list(kind: &str) -> bool {
    kind == "List" || kind.ends_with("List")
}

/// Runs over the stream.
///
/// # Errors
/// A document is not YAML, or a workload cannot be injected: the first
/// such, naming its document and workload.
pub fn run(input: &str, opts: &Options, mode: Mode) -> Result<Output, InjectError> {
    let mut docs = split(input);
    let mut notes = Vec::new();
    let mut takeovers: Vec<(Option<String>, String, Takeover)> = Vec::new();
    for (index, doc) in docs.iter_mut().enumerate() {
        let number = index + 1;
        let Some(value) = parse(doc, number)? else { continue };
        let mut value = value;
        let mut changed = false;
        visit(&mut value, &mut |obj: &mut Value| -> Result<(), InjectError> {
            let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
            let Some(at) = template_pointer(&kind) else { return Ok(()) };
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).map(str::to_owned);
            let id = format!("{}/{}", kind.to_lowercase(), name.as_deref().unwrap_or("?"));
            let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned);
            let annotations = if at.is_empty() { None } else { obj.pointer("/metadata/annotations").and_then(Value::as_object).cloned() };
            let Some(template) = obj.pointer_mut(at) else {
                return Err(InjectError::Document { document: number, reason: format!("{id}: no pod template at {at}") });
            };
            let context = |e: InjectError| InjectError::Document { document: number, reason: format!("{id}: {e}") };
            match mode {
                Mode::Uninject => {
                    if pod::uninject(template).map_err(context)? {
                        changed = true;
                        notes.push(format!("{id}: outrider removed"));
                    }
                }
                Mode::Inject => {
                    let workload = Workload { kind: &kind, name: name.as_deref(), annotations: annotations.as_ref() };
                    let before = template.clone();
                    match pod::inject(template, &workload, opts).map_err(context)? {
                        Injected::Done { notes: n, takeover } => {
                            notes.extend(n.into_iter().map(|n| format!("{id}: {n}")));
                            takeovers.push((namespace, id, takeover));
                        }
                        Injected::Skipped { reason } => {
                            // A skipped workload that was injected before is uninjected.
                            pod::uninject(template).map_err(context)?;
                            notes.push(format!("{id}: skipped: {reason}"));
                        }
                    }
                    changed |= *template != before;
                }
            }
            Ok(())
        })?;
        doc.value = Some(value);
        doc.changed = changed;
    }
    services(&mut docs, &takeovers, opts, mode, &mut notes);
    let mut yaml = String::with_capacity(input.len() * 2);
    for doc in &docs {
        match (&doc.value, doc.changed) {
            (Some(value), true) => {
                yaml.push_str(doc.lead);
                if !doc.lead.is_empty() && !doc.lead.ends_with('\n') {
                    yaml.push('\n');
                }
                let text = serde_yaml_ng::to_string(value).map_err(|e| InjectError::Document { document: 0, reason: e.to_string() })?;
                yaml.push_str(&text);
            }
            _ => yaml.push_str(doc.raw),
        }
    }
    Ok(Output { yaml, notes })
}

/// Calls `f` on the document, or on each item of a List.
fn visit(value: &mut Value, f: &mut dyn FnMut(&mut Value) -> Result<(), InjectError>) -> Result<(), InjectError> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    if is_list(kind) {
        for item in value.get_mut("items").and_then(Value::as_array_mut).into_iter().flatten() {
            visit(item, f)?;
        }
        Ok(())
    } else {
        f(value)
    }
}

/// The document as JSON when it is one inject may change (a workload, a
/// Service, a List); `None` leaves it as written.
fn parse(doc: &Doc<'_>, number: usize) -> Result<Option<Value>, InjectError> {
    let body = &doc.raw[doc.lead.len()..];
    if body.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "...") {
        return Ok(None);
    }
    let fail =
        |e: &dyn std::fmt::Display| InjectError::Document { document: number, reason: format!("(which starts at line {}) {e}", doc.line) };
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(body).map_err(|e| fail(&e))?;
    let kind = yaml.get("kind").and_then(serde_yaml_ng::Value::as_str).unwrap_or_default();
    if template_pointer(kind).is_none() && kind != "Service" && !is_list(kind) {
        return Ok(None);
    }
    serde_json::to_value(&yaml).map(Some).map_err(|e| fail(&e))
}

/// Splits at `---` lines; each document keeps its separator line.
fn split(input: &str) -> Vec<Doc<'_>> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in input.split_inclusive('\n') {
        let bare = line.trim_end();
        if offset > 0 && (bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t")) {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.push(input.len());
    let mut line = 1;
    starts
        .windows(2)
        .map(|w| {
            let raw = &input[w[0]..w[1]];
            let mut lead = 0;
            for (i, l) in raw.split_inclusive('\n').enumerate() {
                let t = l.trim();
                let separator = i == 0 && (t == "---" || t.starts_with("--- #"));
                if separator || t.is_empty() || t.starts_with('#') {
                    lead += l.len();
                } else {
                    break;
                }
            }
            let doc = Doc { lead: &raw[..lead], raw, value: None, changed: false, line };
            line += raw.matches('\n').count();
            doc
        })
        .collect()
}

/// Moves the Services that select an injected pod template, and whose
/// target is the app's port, to outrider's port (restoring earlier moves
/// first, so a re-inject changes nothing).
fn services(docs: &mut [Doc<'_>], takeovers: &[(Option<String>, String, Takeover)], opts: &Options, mode: Mode, notes: &mut Vec<String>) {
    let mut matched = vec![false; takeovers.len()];
    for doc in docs.iter_mut() {
        let Some(value) = doc.value.as_mut() else { continue };
        let mut changed = false;
        let _ = visit(value, &mut |obj: &mut Value| {
            if obj.get("kind").and_then(Value::as_str) != Some("Service") {
                return Ok(());
            }
            let before = obj.clone();
            restore_service(obj);
            if mode == Mode::Inject {
                for (i, (namespace, _, t)) in takeovers.iter().enumerate() {
                    if let Some(n) = move_service(obj, namespace.as_deref(), t, opts) {
                        matched[i] = true;
                        notes.extend(n);
                    }
                }
            }
            changed |= *obj != before;
            Ok(())
        });
        doc.changed |= changed;
    }
    for ((_, id, t), matched) in takeovers.iter().zip(matched) {
        if matched {
            continue;
        }
        notes.push(format!("{id}: no Service in the input selects these pods: {}", elsewhere(t, opts.sidecar)));
    }
}

/// What happens to Services inject does not see (all of them, for the
/// webhook): which reach outrider and which must be changed.
pub fn elsewhere(t: &Takeover, sidecar: Sidecar) -> String {
    let by_name = t.app_port_name.as_ref().map_or_else(String::new, |n| {
        let versions = if sidecar == Sidecar::Native { " on Kubernetes >= 1.33" } else { "" };
        format!("a Service that targets the port name {n:?} reaches outrider{versions}; ")
    });
    format!(
        "{by_name}one that targets port {} by number still reaches the app directly: set its targetPort to {}",
        t.app_port, t.listen_port
    )
}

fn selects(service: &Value, labels: &Map<String, Value>) -> bool {
    service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Points the Service's ports that reach the app at outrider; the notes
/// say which, `None` when the Service is not one of the pod's.
fn move_service(svc: &mut Value, namespace: Option<&str>, t: &Takeover, opts: &Options) -> Option<Vec<String>> {
    let svc_ns = svc.pointer("/metadata/namespace").and_then(Value::as_str);
    if matches!((svc_ns, namespace), (Some(a), Some(b)) if a != b) || !selects(svc, &t.labels) {
        return None;
    }
    let name = svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?").to_owned();
    let mut moved = Map::new();
    let mut notes = Vec::new();
    for (i, port) in svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut).into_iter().flatten().enumerate() {
        let Some(port) = port.as_object_mut() else { continue };
        let protocol_tcp = port.get("protocol").and_then(Value::as_str).is_none_or(|p| p == "TCP");
        let target = port.get("targetPort").or_else(|| port.get("port")).cloned().unwrap_or(Value::Null);
        let hits_app = match &target {
            Value::Number(n) => n.as_u64() == Some(u64::from(t.app_port)),
            Value::String(s) => Some(s) == t.app_port_name.as_ref() || s.parse::<u16>().ok() == Some(t.app_port),
            _ => false,
        };
        if !protocol_tcp || !hits_app {
            continue;
        }
        // By name, a classic sidecar's port is found on every version; a
        // native sidecar's only from Kubernetes 1.33, so move to the number.
        if target.is_string() && opts.sidecar == Sidecar::Classic && target.as_str().and_then(|s| s.parse::<u16>().ok()).is_none() {
            notes.push(format!("service/{name}: targetPort {target} now reaches outrider (the port name moved to it)"));
            continue;
        }
        moved.insert(i.to_string(), port.get("targetPort").cloned().unwrap_or(Value::Null));
        port.insert("targetPort".to_owned(), json!(t.listen_port));
        notes.push(format!("service/{name}: targetPort {target} -> {}", t.listen_port));
    }
    let headless = svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    if headless && !notes.is_empty() {
        notes.push(format!(
            "service/{name} is headless (clusterIP: None): a client that resolves it to pod IPs dials the port it knows, so one that dials {} still reaches the app directly: point it at {}",
            t.app_port, t.listen_port
        ));
    }
    if !moved.is_empty()
        && let Some(meta) = svc.as_object_mut().map(|o| o.entry("metadata").or_insert_with(|| json!({}))).and_then(Value::as_object_mut)
    {
        let created = !meta.contains_key("annotations");
        if let Some(a) = meta.entry("annotations").or_insert_with(|| json!({})).as_object_mut() {
            if created {
                moved.insert("annotations".to_owned(), json!("created"));
            }
            a.insert(annotation::ORIGINAL_TARGET_PORTS.to_owned(), json!(Value::Object(moved).to_string()));
        }
    }
    Some(notes)
}

/// Undoes `move_service`.
fn restore_service(svc: &mut Value) {
    let Some(record) = svc.pointer("/metadata/annotations").and_then(|a| a.get(annotation::ORIGINAL_TARGET_PORTS)).and_then(Value::as_str)
    else {
        return;
    };
    let Ok(Value::Object(record)) = serde_json::from_str::<Value>(record) else { return };
    for (i, was) in &record {
        let Ok(i) = i.parse::<usize>() else { continue };
        if let Some(port) = svc.pointer_mut(&format!("/spec/ports/{i}")).and_then(Value::as_object_mut) {
            match was {
                Value::Null => port.shift_remove("targetPort"),
                v => port.insert("targetPort".to_owned(), v.clone()),
            };
        }
    }
    if let Some(meta) = svc.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut)
    {
        a.shift_remove(annotation::ORIGINAL_TARGET_PORTS);
        if a.is_empty() && record.contains_key("annotations") {
            meta.shift_remove("annotations");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "# leading comment\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: web:1\n          ports: [{name: http, containerPort: 8080}]\n";
    const OTHER: &str = "---\n# kept as written\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}   # inline comment\ndata: {a: '1'}\n";

    fn service(ns: &str, target: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  selector: {{app: web}}\n  ports:\n    - {{name: a, port: 80, targetPort: {target}}}\n    - {{name: b, port: 9090}}\n"
        )
    }

    fn run_ok(input: &str, opts: &Options, mode: Mode) -> Output {
        run(input, opts, mode).unwrap()
    }

    #[test]
    fn other_documents_are_copied_byte_for_byte() {
        let input = format!("{APP}{OTHER}");
        let out = run_ok(&input, &Options::default(), Mode::Inject);
        assert!(out.yaml.starts_with("# leading comment\n"), "{}", out.yaml);
        assert!(out.yaml.ends_with(OTHER), "{}", out.yaml);
        let none = "apiVersion: v1\nkind: ConfigMap  # c\nmetadata: {name: c}\n";
        assert_eq!(run_ok(none, &Options::default(), Mode::Inject).yaml, none);
    }

    #[test]
    fn services_move_by_name_and_number_and_come_back() {
        for target in ["http", "8080"] {
            let input = format!("{APP}{}", service("shop", target));
            let out = run_ok(&input, &Options::default(), Mode::Inject);
            let docs: Vec<Value> = out.yaml.split("\n---\n").map(|d| serde_yaml_ng::from_str(d).unwrap()).collect();
            assert_eq!(docs[1].pointer("/spec/ports/0/targetPort"), Some(&json!(15080)), "{target}: {}", out.yaml);
            assert_eq!(docs[1].pointer("/spec/ports/1").and_then(|p| p.get("targetPort")), None, "port b does not reach the app");
            assert!(out.notes.iter().any(|n| n.starts_with("service/web: targetPort")), "{:?}", out.notes);
            assert_eq!(run_ok(&out.yaml, &Options::default(), Mode::Inject).yaml, out.yaml, "idempotent");
            let back = run_ok(&out.yaml, &Options::default(), Mode::Uninject).yaml;
            let parse = |s: &str| s.split("\n---\n").map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap()).collect::<Vec<_>>();
            assert_eq!(parse(&back), parse(&input), "{target}");
        }
    }

    #[test]
    fn classic_keeps_a_named_target_and_other_namespaces_are_left_alone() {
        let classic = Options { sidecar: Sidecar::Classic, ..Options::default() };
        let out = run_ok(&format!("{APP}{}", service("shop", "http")), &classic, Mode::Inject);
        assert!(out.yaml.contains("targetPort: http"), "{}", out.yaml);
        assert!(out.notes.iter().any(|n| n.contains("now reaches outrider (the port name moved to it)")), "{:?}", out.notes);
        let elsewhere = service("other", "8080");
        let out = run_ok(&format!("{APP}{elsewhere}"), &Options::default(), Mode::Inject);
        assert!(out.yaml.ends_with(&elsewhere), "{}", out.yaml);
        assert!(
            out.notes.iter().any(|n| n.contains("no Service in the input selects these pods") && n.contains("on Kubernetes >= 1.33")),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn a_headless_service_gets_a_note() {
        let headless = service("shop", "8080").replace("spec:\n", "spec:\n  clusterIP: None\n");
        let out = run_ok(&format!("{APP}{headless}"), &Options::default(), Mode::Inject);
        assert!(out.yaml.contains("targetPort: 15080"), "{}", out.yaml);
        assert!(out.notes.iter().any(|n| n.starts_with("service/web is headless") && n.contains("dials 8080")), "{:?}", out.notes);
    }

    #[test]
    fn lists_and_cronjobs_are_found() {
        let list = "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: batch/v1\n    kind: CronJob\n    metadata: {name: nightly}\n    spec:\n      schedule: '@daily'\n      jobTemplate:\n        spec:\n          template:\n            spec:\n              restartPolicy: OnFailure\n              containers: [{name: job, image: job, ports: [{containerPort: 80}]}]\n";
        let out = run_ok(list, &Options::default(), Mode::Inject);
        let v: Value = serde_yaml_ng::from_str(&out.yaml).unwrap();
        let init = v.pointer("/items/0/spec/jobTemplate/spec/template/spec/initContainers").and_then(Value::as_array).unwrap();
        assert_eq!(init.len(), 2, "{}", out.yaml);
        assert!(out.notes[0].starts_with("cronjob/nightly: native sidecar"), "{:?}", out.notes);
    }

    #[test]
    fn errors_name_the_document_and_the_workload() {
        let bad = format!(
            "{OTHER}---\n{}",
            APP.replace("metadata:\n  name: web\n", "metadata:\n  name: web\n  annotations: {outrider.dev/listen-port: nope}\n")
        );
        let err = run(&bad, &Options::default(), Mode::Inject).unwrap_err().to_string();
        assert!(
            err.starts_with("document 2: deployment/web: annotation outrider.dev/listen-port: \"nope\": expected a port number"),
            "{err}"
        );
        let err = run("kind: Deployment\nspec: [\n", &Options::default(), Mode::Inject).unwrap_err().to_string();
        assert!(err.starts_with("document 1: (which starts at line 1) "), "{err}");
    }
}
