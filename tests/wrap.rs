//! Wrap mode: outrider as the app's parent (and often PID 1).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

fn unused_upstream() -> String {
    "http://127.0.0.1:1".to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_of_the_app_is_propagated() {
    let proxy = outrider(&unused_upstream()).args(["--", "sh", "-c", "sleep 0.3; exit 7"]).start().await;
    assert_eq!(proxy.wait().await.code(), Some(7));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_killed_by_sigkill_gives_137() {
    let proxy = outrider(&unused_upstream()).args(["--", "sh", "-c", "sleep 0.3; kill -9 $$"]).start().await;
    assert_eq!(proxy.wait().await.code(), Some(137));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_command_gives_127() {
    let out = outrider(&unused_upstream()).args(["--", "/nonexistent/legacy-app"]).command().output().unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/legacy-app"));
}

/// Starts a shell app that traps the given signals, and waits until the
/// traps are installed (the script touches a file).
async fn trapping_app(traps: &str) -> (Outrider, std::path::PathBuf) {
    let ready = std::env::temp_dir().join(format!("outrider-trap-{}-{}", std::process::id(), rand_suffix()));
    let script = format!("{traps}; touch {}; while :; do sleep 0.05; done", ready.display());
    let proxy = outrider(&unused_upstream()).args(["--", "sh", "-c", &script]).start().await;
    let check = ready.clone();
    eventually("the app's traps", || {
        let exists = check.exists();
        async move { exists.then_some(()) }
    })
    .await;
    (proxy, ready)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_friends_are_forwarded() {
    for (signal, code) in [(Signal::SIGHUP, 41), (Signal::SIGUSR1, 42), (Signal::SIGUSR2, 43), (Signal::SIGQUIT, 44)] {
        let traps = "trap 'exit 41' HUP; trap 'exit 42' USR1; trap 'exit 43' USR2; trap 'exit 44' QUIT";
        let (proxy, ready) = trapping_app(traps).await;
        proxy.signal(signal);
        assert_eq!(proxy.wait().await.code(), Some(code), "{signal}");
        let _ = std::fs::remove_file(ready);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_reaches_the_app_after_the_drain_and_its_code_is_kept() {
    let (proxy, ready) = trapping_app("trap 'exit 0' TERM").await;
    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
    let _ = std::fs::remove_file(ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn orphaned_grandchildren_are_reaped() {
    // The app starts a background child and exits from under it only after
    // that child has been orphaned and died: a zombie unless we reap it.
    let proxy = outrider(&unused_upstream()).args(["--", "sh", "-c", "sh -c 'sleep 0.2 &' ; sleep 1.5; exit 3"]).start().await;
    let pid = proxy.pid();
    // While the app still runs, the orphan has died; nothing may linger.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let zombies = zombie_children(pid);
    assert!(zombies.is_empty(), "unreaped zombies under outrider: {zombies:?}");
    assert_eq!(proxy.wait().await.code(), Some(3));
}

/// Zombie processes whose parent is `ppid`.
fn zombie_children(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the parenthesised command name: state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == ppid.to_string() {
            out.push(pid);
        }
    }
    out
}
