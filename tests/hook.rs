//! The commands an injected pod runs besides the proxy, black-box:
//! `outrider drain` (the app container's preStop hook) and `outrider
//! install-hook DIR` (the `outrider-init` container).

mod common;

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use common::*;

/// Runs `outrider ARGS` to completion off the async runtime.
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().expect("run outrider")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_once_outrider_has_drained() {
    let app = App::start().await;
    let outrider = outrider(&app.url()).start().await;
    wait_status(&outrider.admin_url("/readyz"), 200).await;

    let out = run(vec!["drain".into(), "--admin".into(), outrider.admin.to_string()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "outrider drain failed ({}):\n{stderr}", out.status);
    // Done means done: not ready any more, at once, without polling.
    let (status, _, _) = get(&outrider.admin_url("/readyz")).await.expect("/readyz");
    assert_eq!(status, 503, "/readyz after the drain returned");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn drain_without_outrider_fails_in_one_line() {
    let (addr, _socket) = refused_addr();
    let out = run(vec!["drain".into(), "--admin".into(), addr.to_string(), "--timeout".into(), "20s".into()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
}

#[tokio::test]
async fn install_hook_copies_the_executable() {
    let dir = std::env::temp_dir().join(format!("outrider-install-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Twice: the second replaces the first (a restarted init container).
    for _ in 0..2 {
        let out = run(vec!["install-hook".into(), dir.display().to_string()]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let installed = dir.join("outrider");
    assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(std::fs::read(&installed).unwrap() == std::fs::read(BIN).unwrap(), "a byte-for-byte copy");
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, ["outrider"], "no temporary file left behind");
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(version.status.success());
    std::fs::remove_dir_all(&dir).unwrap();

    let out = run(vec!["install-hook".into(), "/nonexistent/dir".into()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.lines().count() == 1 && stderr.contains("/nonexistent/dir"), "{stderr}");
}
