//! The wrapped app: `outrider -- COMMAND ARGS...`.
//!
//! outrider is often PID 1 in the app's container, so it does what an init
//! does: reaps every zombie re-parented to it (as PID 1, or as a child
//! subreaper otherwise), passes signals on, and exits with the app's code.
//!
//! The child gets its own process group. A terminal's Ctrl-C then reaches
//! only outrider, which decides when the app hears it; otherwise the app
//! would die at once while outrider still drains traffic to it. Signals go
//! to that whole group (as dumb-init does by default), so an app started
//! through a shell script that does not `exec` still hears its SIGTERM.

use std::{
    io,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
};

use futures_util::StreamExt;
use nix::{
    errno::Errno,
    sys::{
        signal::{Signal, kill, killpg},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use signal_hook::consts::SIGCHLD;
use signal_hook_tokio::Signals;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Why the app could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no command given after --")]
    Empty,
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot watch for child exits: {0}")]
    Signals(#[source] io::Error),
}

impl SpawnError {
    /// The exit code a shell would use: 127 not found, 126 not executable.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            Self::Spawn { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => 126,
            _ => 1,
        }
    }
}

/// Makes this process adopt orphaned descendants, so they are reaped here
/// rather than left as zombies. PID 1 adopts them already.
pub fn become_subreaper() {
    if std::process::id() == 1 {
        return;
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(error = %e, "cannot become a child subreaper; orphaned grandchildren will not be reaped here");
    }
}

/// A running app.
pub struct Supervisor {
    pid: Pid,
    name: String,
    exit: watch::Receiver<Option<i32>>,
}

impl Supervisor {
    /// Starts `command` with the inherited environment and stdio.
    ///
    /// # Errors
    /// The command is empty, cannot be executed, or SIGCHLD cannot be watched.
    pub fn spawn(command: &[String]) -> Result<Self, SpawnError> {
        let (program, args) = command.split_first().ok_or(SpawnError::Empty)?;
        // Registered before the child exists, so no exit can be missed.
        let signals = Signals::new([SIGCHLD]).map_err(SpawnError::Signals)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|source| SpawnError::Spawn { command: program.clone(), source })?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        // The reaper owns the child's status from here; `std::process::Child`
        // neither waits nor kills on drop.
        drop(child);
        let name = std::path::Path::new(program).file_name().map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
        info!(pid = pid.as_raw(), command = %command.join(" "), "started app");
        let (tx, exit) = watch::channel(None);
        tokio::spawn(reap(signals, pid, tx));
        Ok(Self { pid, name, exit })
    }

    /// The app's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The app's executable name, e.g. for a default service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `signal` to the app. A no-op once it has exited.
    pub fn signal(&self, signal: Signal) {
        if self.exit.borrow().is_some() {
            return;
        }
        // The group id is the child's pid (`process_group(0)`); if the
        // group is gone but the child is not, signal the child alone.
        match killpg(self.pid, signal).or_else(|_| kill(self.pid, signal)) {
            Ok(()) => debug!(pid = self.pid.as_raw(), %signal, "forwarded signal to app's process group"),
            Err(e) => warn!(pid = self.pid.as_raw(), %signal, error = %e, "cannot signal app"),
        }
    }

    /// Resolves with the app's exit code (128+N if killed by signal N).
    pub async fn exited(&self) -> i32 {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(1),
            // The reaper never drops its sender before sending; if it did,
            // the app's fate is unknown: report failure rather than hang.
            Err(_) => 1,
        }
    }

    /// The exit code, if the app has exited.
    pub fn exit_code(&self) -> Option<i32> {
        *self.exit.borrow()
    }
}

/// Reaps every child that exits, recording the app's status when it goes.
async fn reap(mut signals: Signals, app: Pid, tx: watch::Sender<Option<i32>>) {
    // A SIGCHLD delivered between spawn and the first poll is queued by
    // signal-hook, but a drain up front costs nothing.
    reap_all(app, &tx);
    while signals.next().await.is_some() {
        reap_all(app, &tx);
    }
}

/// Collects every exited child without blocking.
fn reap_all(app: Pid, tx: &watch::Sender<Option<i32>>) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => {
                let code = match status {
                    WaitStatus::Exited(_, code) => Some(code),
                    WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
                    _ => None,
                };
                match (status.pid(), code) {
                    (Some(pid), Some(code)) if pid == app => {
                        info!(pid = pid.as_raw(), exit_code = code, "app exited");
                        let _ = tx.send(Some(code));
                    }
                    (Some(pid), Some(code)) => debug!(pid = pid.as_raw(), exit_code = code, "reaped orphan"),
                    _ => {}
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                warn!(error = %e, "waitpid failed");
                return;
            }
        }
    }
}

/// An app this process did not start, visible through a shared process
/// namespace (pod mode with `shareProcessNamespace: true`).
#[derive(Debug, Clone)]
pub enum External {
    /// Found by executable name (`/proc/PID/comm` or argv[0]'s file name).
    Name(String),
    /// PID read from a file the app writes.
    PidFile(std::path::PathBuf),
}

impl External {
    /// Finds the app's PID now; `None` if it is not running.
    pub fn find(&self) -> Option<i32> {
        match self {
            Self::PidFile(path) => std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|pid| alive(*pid)),
            Self::Name(name) => {
                let me = std::process::id();
                std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
                    let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                    if pid == me {
                        return None;
                    }
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
                    let argv0 = std::path::Path::new(std::ffi::OsStr::new(std::str::from_utf8(argv0).unwrap_or_default()));
                    let matches = comm.trim() == name || argv0.file_name().is_some_and(|f| f == name.as_str());
                    matches.then(|| i32::try_from(pid).ok()).flatten()
                })
            }
        }
    }

    /// SIGTERM, then SIGKILL after `timeout`. Returns once it is gone.
    pub async fn stop(&self, timeout: std::time::Duration) {
        let Some(pid) = self.find() else {
            info!(app = ?self, "app process not found; nothing to stop");
            return;
        };
        info!(pid, ?timeout, "sending SIGTERM to app process");
        if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
            warn!(pid, error = %e, "cannot signal app process");
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while alive(pid) {
            if tokio::time::Instant::now() >= deadline {
                warn!(pid, "app process did not stop in time; sending SIGKILL");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}
