//! Schema validation of Kubernetes manifests with `kubernetes-validate
//! --strict`, as .ci/validate-deploy.sh does it: against 1.29 (the oldest
//! Kubernetes with native sidecars on by default) and the newest version
//! whose schemas the tool bundles. CI installs the tool and sets CI, which
//! makes its absence a failure; elsewhere the caller skips with a note.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use serde::Deserialize;

/// Oldest and newest Kubernetes the manifests are validated against.
pub const VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// Whether `python3 -m kubernetes_validate` can run. Panics in CI when it
/// cannot; elsewhere prints why the caller skips.
pub fn validator_available(what: &str) -> bool {
    let ok = Command::new("python3").args(["-c", "import kubernetes_validate"]).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var("CI").is_err(), "CI must install kubernetes-validate (see .ci/run)");
        eprintln!("kubernetes-validate not installed: skipping the schema validation of {what} (CI runs it)");
    }
    ok
}

/// The documents of a YAML stream as JSON values (null documents dropped).
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Validates every resource of `files` with `kubernetes-validate --strict`,
/// one process per Kubernetes version. A `v1 List` has no schema: its items
/// are validated one by one (what kubectl does with a List client-side).
/// Any WARN/ERROR/FATAL line fails, as does a resource the tool did not
/// report as passed. Returns false when the tool is missing outside CI.
pub fn validate(what: &str, files: &[PathBuf]) -> bool {
    if !validator_available(what) {
        return false;
    }
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "kubernetes-validate-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut args = Vec::new();
    let mut resources = 0;
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let docs = documents(&text);
        let has_list = docs.iter().any(|d| d["kind"] == "List");
        let flat: Vec<serde_json::Value> = docs
            .into_iter()
            .flat_map(|d| if d["kind"] == "List" { d["items"].as_array().cloned().unwrap_or_default() } else { vec![d] })
            .collect();
        resources += flat.len();
        if has_list {
            let expanded = flat.iter().map(|d| serde_yaml_ng::to_string(d).unwrap()).collect::<Vec<_>>().join("---\n");
            let name = file.file_name().unwrap().to_string_lossy();
            let path = scratch.join(format!("{i}-{name}"));
            std::fs::write(&path, expanded).unwrap();
            args.push(path);
        } else {
            args.push(file.clone());
        }
    }
    for version in VERSIONS {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(&args)
            .output()
            .expect("python3 -m kubernetes_validate");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let bad: Vec<&str> = report.lines().filter(|l| l.starts_with("WARN") || l.starts_with("ERROR") || l.starts_with("FATAL")).collect();
        assert!(out.status.success() && bad.is_empty(), "kubernetes-validate --strict -k {version} {what}:\n{report}");
        let passed = report.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed ")).count();
        assert_eq!(passed, resources, "kubernetes-validate -k {version} {what}: not every resource passed:\n{report}");
        eprintln!("kubernetes-validate --strict -k {version}: {passed} resources of {what} passed");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    true
}
