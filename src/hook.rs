//! The commands an injected pod runs besides the proxy (docs/kubernetes.md):
//!
//! * `outrider install-hook DIR`: the `outrider-init` container copies this
//!   static executable into a volume the app container mounts;
//! * `outrider drain [--admin ADDR]`: the app container's preStop hook runs
//!   that copy, which asks outrider for the drain over loopback (trusted
//!   without the admin token) and returns once it is done, so the kubelet
//!   sends the app SIGTERM only then.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::Parser;
use http::StatusCode;

/// `outrider drain`: start the drain and wait for its end.
#[derive(Debug, Parser)]
#[command(name = "outrider drain", bin_name = "outrider drain")]
struct Drain {
    /// outrider's admin address, from inside the pod.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Give up after this long (exit 1); the kubelet also ends a hook at the
    /// pod's grace period.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The app's own preStop command, run once the drain is over (or has
    /// failed): `outrider drain -- nginx -s quit`. Its exit status is ours.
    #[arg(last = true, value_name = "COMMAND")]
    then: Vec<String>,
}

/// `outrider install-hook DIR`: copy this executable to DIR/outrider.
#[derive(Debug, Parser)]
#[command(name = "outrider install-hook", bin_name = "outrider install-hook")]
struct InstallHook {
    /// The directory (a volume shared with the app container).
    dir: PathBuf,
}

/// `outrider drain ...` (`args` starts with `drain`).
pub fn drain(args: impl Iterator<Item = String>) -> ExitCode {
    let cli: Drain = match crate::cli::parse_subcommand(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider drain: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = cli.admin;
    // The timer is made inside the runtime: tokio's needs one to exist.
    let outcome = runtime.block_on(async move {
        tokio::time::timeout(cli.timeout, async move {
            let stream =
                tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot reach outrider's admin listener at {addr}: {e}"))?;
            crate::health::get_status(hyper_util::rt::TokioIo::new(stream), &addr.to_string(), "/drain")
                .await
                .map_err(|e| format!("{addr}/drain: {e}"))
        })
        .await
    });
    let drained = report(outcome, addr, cli.timeout);
    match cli.then.split_first() {
        None => drained,
        Some((program, args)) => match std::process::Command::new(program).args(args).status() {
            Ok(status) => status.code().and_then(|c| u8::try_from(c).ok()).map_or(ExitCode::FAILURE, ExitCode::from),
            Err(e) => {
                eprintln!("outrider drain: cannot run {program}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Says how the drain went, on stderr (the kubelet keeps a failed hook's
/// output in the pod's events).
fn report(outcome: Result<Result<StatusCode, String>, tokio::time::error::Elapsed>, addr: SocketAddr, timeout: Duration) -> ExitCode {
    match outcome {
        Ok(Ok(StatusCode::OK)) => {
            eprintln!("outrider drain: drained");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            eprintln!("outrider drain: {addr}/drain answered {status}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("outrider drain: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("outrider drain: not drained after {}", humantime::format_duration(timeout));
            ExitCode::FAILURE
        }
    }
}

/// `outrider install-hook DIR` (`args` starts with `install-hook`).
pub fn install_hook(args: impl Iterator<Item = String>) -> ExitCode {
    let cli: InstallHook = match crate::cli::parse_subcommand(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match install(&cli.dir) {
        Ok(path) => {
            eprintln!("outrider install-hook: installed {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("outrider install-hook: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the executable could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot find this executable: {0}")]
    Exe(#[source] std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Copies this executable to `dir/outrider`, through a temporary name and
/// a rename, so a hook never runs a half-written file.
///
/// # Errors
/// The executable cannot be read, or `dir` written.
pub fn install(dir: &Path) -> Result<PathBuf, InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let exe = std::env::current_exe().map_err(InstallError::Exe)?;
    let target = dir.join("outrider");
    let tmp = dir.join(".outrider.tmp");
    let write = |path: &Path, source| InstallError::Write { path: path.display().to_string(), source };
    std::fs::copy(&exe, &tmp).map_err(|e| write(&tmp, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(|e| write(&tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| write(&target, e))?;
    Ok(target)
}
