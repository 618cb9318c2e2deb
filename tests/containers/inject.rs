//! The example of docs/kubernetes.md, tests/fixtures/inject/deployment.yaml,
//! injected by `outrider inject --classic` and played with `podman kube
//! play`: the pod starts (outrider-init installs the hook binary, outrider
//! serves in front of the app), a request to outrider's port reaches the
//! app, and the app container's preStop command drains outrider.
//!
//! Classic, not native: podman 4.3 runs every init container to completion
//! before the others, so a native sidecar (an init container with
//! `restartPolicy: Always`) never lets the app start there. The preStop hook
//! is run by hand (`podman exec`), as podman ignores lifecycle hooks.

use std::{net::IpAddr, path::Path};

use super::{KubePlayed, SERIAL, TOKEN, base64, podman, setup, until_ready};
use crate::common::{BIN, get, wait_status};

/// The stand-in for the example's app image: the demo app (busybox httpd)
/// on the example's port 8080, with the /healthz its probes ask for.
fn catalog_image(app: &str) -> String {
    let dir = podman::TempDir::new("catalog-image");
    let healthz = dir.path().join("healthz");
    std::fs::write(&healthz, "ok\n").expect("write healthz");
    podman::build(
        "localhost/outrider-test-catalog:test",
        &format!("FROM {app}\nENV APP_LISTEN=0.0.0.0:8080\nCOPY healthz /www/healthz\n"),
        &[healthz],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_docs_example_serves_and_drains_in_a_pod() {
    let Some(images) = setup() else { return };
    let has_yaml = std::process::Command::new("python3").args(["-c", "import yaml"]).output().is_ok_and(|o| o.status.success());
    if !has_yaml {
        assert!(std::env::var_os("CI").is_none(), "CI is set but python3 has no yaml module (.ci/run installs yamllint, which brings it)");
        eprintln!("SKIPPED: no python3 yaml module, so the injected example was not played");
        return;
    }
    let _serial = SERIAL.lock().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("tests/fixtures/inject/deployment.yaml");
    let injected = std::process::Command::new(BIN).args(["inject", "--classic", "-f"]).arg(&example).output().expect("outrider inject");
    assert!(injected.status.success(), "outrider inject: {}", String::from_utf8_lossy(&injected.stderr));
    let injected = String::from_utf8(injected.stdout).expect("UTF-8 YAML");

    let dir = podman::TempDir::new("inject-play");
    let manifest = dir.path().join("injected.yaml");
    std::fs::write(&manifest, &injected).expect("write injected");
    // The ConfigMap the app's envFrom names, given to podman on its own
    // (kube_play.py keeps only the Deployment).
    let config_map = injected.split("\n---\n").find(|d| d.contains("kind: ConfigMap")).expect("the example's ConfigMap");
    let config_map_file = dir.path().join("configmap.yaml");
    std::fs::write(&config_map_file, config_map).expect("write configmap");

    let name = format!("outrider-test-inject-{}", podman::unique());
    let secret = format!("{name}-token");
    let catalog = catalog_image(&images.app);
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/containers/kube_play.py"))
        .arg(&manifest)
        .args([&name, &secret])
        .arg(format!("registry.example.com/shop/catalog:2.4.1={catalog}"))
        .arg(format!("{}={}", outrider::inject::DEFAULT_IMAGE, images.outrider))
        .output()
        .expect("python3");
    assert!(out.status.success(), "kube_play.py: {}", String::from_utf8_lossy(&out.stderr));
    let played = dir.path().join("played.yaml");
    std::fs::write(&played, &out.stdout).expect("write the played manifest");
    let secret_file = dir.path().join("secret.json");
    std::fs::write(&secret_file, format!(r#"{{"token":"{}"}}"#, base64(TOKEN.as_bytes()))).expect("write secret");
    podman::podman(&["secret", "create", &secret, secret_file.to_str().expect("utf-8 path")]).await;
    let pod = format!("{name}-pod-0");
    let _cleanup = KubePlayed { name: name.clone(), secret: secret.clone() };

    podman::podman_in(
        dir.path(),
        &["kube", "play", "--quiet", "--configmap", config_map_file.to_str().expect("utf-8 path"), played.to_str().expect("utf-8 path")],
    )
    .await;
    let infra = podman::podman(&["pod", "inspect", &pod, "--format", "{{.InfraContainerID}}"]).await;
    let ip: IpAddr = podman::podman(&["inspect", &infra, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"])
        .await
        .parse()
        .expect("the played pod's IP");

    // outrider is ready only once it has seen the app's /healthz (the
    // readiness probe it inherited), so this also proves the upstream.
    until_ready(ip).await;
    let (status, _, body) = get(&format!("http://{ip}:15080/")).await.expect("request to outrider's port");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("legacy app"), "{}", String::from_utf8_lossy(&body));

    // The app container's preStop hook, as the kubelet would run it: the
    // binary outrider-init installed in the shared volume.
    let app = format!("{pod}-catalog");
    let hook = podman::podman_output(&["exec", &app, "/outrider-hook/outrider", "drain", "--admin", "127.0.0.1:9901"]).await;
    assert!(
        hook.status.success(),
        "the preStop drain failed ({}):\n{}{}",
        hook.status,
        String::from_utf8_lossy(&hook.stdout),
        String::from_utf8_lossy(&hook.stderr)
    );
    wait_status(&format!("http://{ip}:9901/readyz"), 503).await;
}
