//! `outrider [flags] [-- COMMAND ARGS...]`: parses, loads the
//! configuration, sets up logging and the runtime, runs, and maps the
//! outcome to an exit code. Everything else lives in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use outrider::{
    cli::{self, Cli, EX_CONFIG},
    config::Config,
    run, telemetry,
};
use tracing::error;

/// jemalloc rather than the C library's allocator, measured in
/// docs/performance.md ("The allocator"). musl's allocator (the image's
/// libc until it moved to static glibc) maps and unmaps memory as
/// connections come and go: a fifth fewer requests per second and 30 %
/// more kernel time per request. glibc's keeps the memory of a burst of
/// connections for good (55 MiB after 10 000 closed where 9 MiB is in
/// use); jemalloc's background thread returns it within seconds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Subcommands; everything else is the proxy's command line.
    match std::env::args().nth(1).as_deref() {
        Some("wait-ready") => return cli::wait_ready(std::env::args().skip(1)),
        Some("inject") => return outrider::inject::command(std::env::args().skip(1)),
        Some("drain") => return outrider::hook::drain(std::env::args().skip(1)),
        Some("install-hook") => return outrider::hook::install_hook(std::env::args().skip(1)),
        Some("webhook") => return outrider::webhook::command(std::env::args().skip(1)),
        _ => {}
    }
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let config = match Config::load(&cli.overrides()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("outrider: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let _log_guard = match telemetry::init_logging(&config.log, config.log_format) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("outrider: cannot set up logging: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let runtime = match cli::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        run::run(config, cli.command).await.unwrap_or_else(|e| {
            match e {
                // One line on stderr, like every other configuration error.
                run::StartError::Config(_) => eprintln!("outrider: {e}"),
                _ => error!("{e}"),
            }
            e.exit_code()
        })
    });
    // Connection tasks may still hold sockets; do not wait for them.
    runtime.shutdown_background();
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}
