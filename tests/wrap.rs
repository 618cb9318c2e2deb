//! Wrap mode: outrider as the app's parent (and often PID 1).

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use nix::sys::signal::Signal;

fn unused_upstream() -> String {
    "http://127.0.0.1:1".to_owned()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("outrider-{name}-{}-{}", std::process::id(), rand_suffix()))
}

/// Shell that waits until `gate` exists: the app goes on only once the test
/// says so (and never before outrider has started).
fn until(gate: &std::path::Path) -> String {
    format!("until [ -e {} ]; do sleep 0.02; done", gate.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_of_the_app_is_propagated() {
    let gate = temp_path("exit-gate");
    let proxy = outrider(&unused_upstream()).args(["--", "sh", "-c", &format!("{}; exit 7", until(&gate))]).start().await;
    std::fs::write(&gate, "").unwrap();
    assert_eq!(proxy.wait().await.code(), Some(7));
    let _ = std::fs::remove_file(gate);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_killed_by_sigkill_gives_137() {
    let gate = temp_path("kill-gate");
    let proxy = outrider(&unused_upstream()).args(["--", "sh", "-c", &format!("{}; kill -9 $$", until(&gate))]).start().await;
    std::fs::write(&gate, "").unwrap();
    assert_eq!(proxy.wait().await.code(), Some(137));
    let _ = std::fs::remove_file(gate);
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
    trapping_app_with(traps, outrider(&unused_upstream())).await
}

async fn trapping_app_with(traps: &str, spawn: Spawn) -> (Outrider, std::path::PathBuf) {
    let ready = temp_path("trap");
    let script = format!("{traps}; touch {}; while :; do sleep 0.05; done", ready.display());
    let proxy = spawn.args(["--", "sh", "-c", &script]).start().await;
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
    const DRAIN_DELAY: Duration = Duration::from_millis(500);
    let termed = temp_path("termed");
    let traps = format!("trap 'date +%s.%N > {}; exit 0' TERM", termed.display());
    let (proxy, ready) = trapping_app_with(&traps, outrider(&unused_upstream()).env("OUTRIDER_DRAIN_DELAY", "500ms")).await;
    let signalled_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    proxy.signal(Signal::SIGTERM);
    let logs = proxy.logs.clone();
    assert_eq!(proxy.wait().await.code(), Some(0));
    // The app heard of it only once the drain was over: not before the
    // drain delay, and after outrider logged the drain's end.
    let termed_at: f64 = std::fs::read_to_string(&termed).expect("the app's TERM trap did not run").trim().parse().unwrap();
    assert!(
        termed_at >= signalled_at + DRAIN_DELAY.as_secs_f64(),
        "the app got SIGTERM {:.3} s after outrider, inside the drain delay",
        termed_at - signalled_at
    );
    let logs = logs.lock().unwrap().clone();
    let position = |what: &str| logs.iter().position(|l| l.contains(what)).unwrap_or_else(|| panic!("no log line {what:?}"));
    assert!(position("all connections drained") < position("sending SIGTERM to app"), "the app was stopped before the drain ended");
    let _ = std::fs::remove_file(ready);
    let _ = std::fs::remove_file(termed);
}

#[tokio::test(flavor = "multi_thread")]
async fn orphaned_grandchildren_are_reaped() {
    // The app starts a background child and leaves it behind (the middle
    // shell exits at once), so it is re-parented to outrider, the child
    // subreaper. The child exits when told to: a zombie unless outrider
    // reaps it. The app itself runs on until told to exit.
    let (pidfile, orphan_gate, app_gate) = (temp_path("orphan-pid"), temp_path("orphan-gate"), temp_path("app-gate"));
    let script = format!("sh -c '({}) & echo $! > {}'; {}; exit 3", until(&orphan_gate), pidfile.display(), until(&app_gate));
    let proxy = outrider(&unused_upstream()).args(["--", "sh", "-c", &script]).start().await;
    let outrider_pid = proxy.pid();
    let orphan: i32 = eventually("the orphan's pid", || {
        let pid = std::fs::read_to_string(&pidfile).ok().filter(|s| s.ends_with('\n')).and_then(|s| s.trim().parse().ok());
        async move { pid }
    })
    .await;
    wait_until("the orphan to be re-parented to outrider", || parent_of(orphan) == Some(outrider_pid)).await;

    // While the app still runs, the orphan exits and is reaped: gone, not
    // a zombie (a reused pid would not be outrider's child).
    std::fs::write(&orphan_gate, "").unwrap();
    wait_until("outrider to reap the exited orphan", || parent_of(orphan) != Some(outrider_pid)).await;
    let zombies = zombie_children(outrider_pid);
    assert!(zombies.is_empty(), "unreaped zombies under outrider: {zombies:?}");
    std::fs::write(&app_gate, "").unwrap();
    assert_eq!(proxy.wait().await.code(), Some(3));
    for f in [pidfile, orphan_gate, app_gate] {
        let _ = std::fs::remove_file(f);
    }
}

/// The parent of `pid` (zombies included), or `None` once it is gone.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
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
