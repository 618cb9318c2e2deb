//! `outrider inject [-f FILE] [--image IMAGE] [--classic] [--uninject]`:
//! reads manifests, writes them injected to stdout, and says on stderr
//! what moved where and what is left to the user.

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use clap::Parser;

use super::options::{DEFAULT_IMAGE, Mode, Options, Sidecar};

/// Adds outrider to every pod template of Kubernetes manifests (Deployment,
/// StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, Pod, Lists) and points
/// the Services in the same input at it. Writes the result to stdout.
///
///   outrider inject -f app.yaml | kubectl apply -f -
#[derive(Debug, Parser)]
#[command(name = "outrider inject", bin_name = "outrider inject")]
struct Inject {
    /// The manifests; `-` or none: stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: Option<PathBuf>,
    /// outrider's image (a workload's `outrider.dev/image` annotation wins).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
    /// A regular container instead of a native sidecar (clusters before
    /// Kubernetes 1.29).
    #[arg(long)]
    classic: bool,
    /// Take outrider out instead, restoring what inject changed.
    #[arg(long)]
    uninject: bool,
    /// Print only the manifests, no notes on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// `outrider inject ...` (`args` starts with `inject`).
pub fn command(args: impl Iterator<Item = String>) -> ExitCode {
    let cli: Inject = match crate::cli::parse_subcommand(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let mut input = String::new();
    let read = match cli.file.as_deref() {
        None => std::io::stdin().read_to_string(&mut input).map(|_| ()),
        Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_string(&mut input).map(|_| ()),
        Some(p) => std::fs::read_to_string(p).map(|s| input = s),
    };
    let source = cli.file.as_ref().map_or_else(|| "stdin".to_owned(), |p| p.display().to_string());
    if let Err(e) = read {
        eprintln!("outrider inject: cannot read {source}: {e}");
        return ExitCode::FAILURE;
    }
    let opts = Options { image: cli.image, sidecar: if cli.classic { Sidecar::Classic } else { Sidecar::Native } };
    let mode = if cli.uninject { Mode::Uninject } else { Mode::Inject };
    let output = match super::stream(&input, &opts, mode) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("outrider inject: {source}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::io::stdout().lock().write_all(output.yaml.as_bytes()) {
        eprintln!("outrider inject: cannot write: {e}");
        return ExitCode::FAILURE;
    }
    if !cli.quiet {
        for note in &output.notes {
            eprintln!("outrider inject: {note}");
        }
    }
    ExitCode::SUCCESS
}
