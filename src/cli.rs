//! The command line: flags, `--version`, the `wait-ready` subcommand, and
//! the runtime the process runs on.

use std::process::ExitCode;

use clap::Parser;

use crate::{
    admin,
    config::{Config, Overrides},
};

/// Exit code for a configuration or usage error.
pub const EX_CONFIG: u8 = 2;

/// `outrider --version`: the release and the commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BUILD_GIT_COMMIT"), ")");

/// A sidecar reverse proxy that gives a legacy HTTP app tracing, metrics,
/// probes and a lossless shutdown. Every flag has an OUTRIDER_* variable;
/// see docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "outrider", version = VERSION, about, long_about = None)]
pub struct Cli {
    // `--listen`, `--upstream`...: the settings that declare a flag.
    #[command(flatten)]
    pub flags: Overrides,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The app to start and supervise; omit to front an app started elsewhere.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `outrider wait-ready [--timeout DURATION] [--admin ADDR]`: exits 0 once
/// outrider's `/readyz` answers 200 (the linkerd-await use case).
#[derive(Debug, Parser)]
#[command(name = "outrider wait-ready", bin_name = "outrider wait-ready")]
struct WaitReady {
    /// Give up after this long (exit 1).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Admin address; default: OUTRIDER_ADMIN_LISTEN with 0.0.0.0 read as 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
}

/// Parses a subcommand's arguments (`args` starts with its name); on a
/// usage error, `--help` or `--version`, prints and returns the exit code
/// instead.
///
/// # Errors
/// The exit code to end the process with.
pub fn parse_subcommand<T: Parser>(args: impl IntoIterator<Item = String>) -> Result<T, ExitCode> {
    T::try_parse_from(args).map_err(usage)
}

/// clap's message printed; exit 2 for a usage error, 0 for `--help` and
/// `--version`.
fn usage(e: clap::Error) -> ExitCode {
    let _ = e.print();
    ExitCode::from(if e.use_stderr() { EX_CONFIG } else { 0 })
}

pub fn wait_ready(args: impl Iterator<Item = String>) -> ExitCode {
    let cli: WaitReady = match parse_subcommand(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let addr = match cli.admin {
        Some(addr) => addr,
        None => match Config::load(&Overrides::default()) {
            Ok(config) => {
                let mut addr = config.admin_listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
                }
                addr
            }
            Err(e) => {
                eprintln!("outrider: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
    };
    let ready = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(admin::wait_ready(addr, cli.timeout)),
        Err(e) => {
            eprintln!("outrider: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if ready {
        ExitCode::SUCCESS
    } else {
        eprintln!("outrider: {addr}/readyz not ready after {}", humantime::format_duration(cli.timeout));
        ExitCode::FAILURE
    }
}

impl Cli {
    /// Parses the process's arguments; on a usage error (or `--help`,
    /// `--version`) prints and returns the exit code instead.
    ///
    /// # Errors
    /// The exit code to end the process with.
    pub fn parse_args() -> Result<Self, ExitCode> {
        Self::try_parse().map_err(usage)
    }

    /// The flags that override configuration.
    pub fn overrides(&self) -> Overrides {
        self.flags.clone()
    }
}

/// One worker per CPU this process may use: std reads the affinity mask and
/// the cgroup CPU quota, so a sidecar limited to one CPU gets a
/// single-threaded runtime, which skips the work-stealing machinery.
///
/// # Errors
/// The runtime cannot be built.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cpus).enable_all().build()
    }
}
