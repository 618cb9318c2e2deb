//! `outrider webhook`'s flags, each with an `OUTRIDER_WEBHOOK_*` variable,
//! checked into [`Settings`]. A bad value is one line naming the flag or
//! the variable it came from, like every other configuration error.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, parser::ValueSource};

use crate::{
    cli::EX_CONFIG,
    inject::{self, Options, Sidecar},
};

/// A mutating admission webhook that adds outrider to the pods the
/// MutatingWebhookConfiguration sends it (deploy/kubernetes/webhook/).
#[derive(Debug, Parser)]
#[command(name = "outrider webhook", bin_name = "outrider webhook", version = crate::cli::VERSION)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, env = "OUTRIDER_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443", value_name = "ADDR")]
    listen: String,
    /// PEM certificate chain the API server verifies (the Service's DNS name).
    #[arg(long, env = "OUTRIDER_WEBHOOK_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "OUTRIDER_WEBHOOK_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// How often the certificate files are checked for a new pair.
    #[arg(long, env = "OUTRIDER_WEBHOOK_TLS_RELOAD_INTERVAL", default_value = "5s", value_name = "DURATION")]
    tls_reload_interval: String,
    /// The outrider image injected (the `outrider.dev/image` annotation overrides it per pod).
    #[arg(long, env = "OUTRIDER_WEBHOOK_IMAGE", default_value = inject::DEFAULT_IMAGE, value_name = "IMAGE")]
    image: String,
    /// Inject outrider as a regular container, for clusters before 1.29.
    #[arg(long, env = "OUTRIDER_WEBHOOK_CLASSIC")]
    classic: bool,
    /// After SIGTERM, how long to keep accepting connections (with /readyz
    /// failing) while the Service's endpoints forget this pod.
    #[arg(long, env = "OUTRIDER_WEBHOOK_DRAIN_DELAY", default_value = "5s", value_name = "DURATION")]
    drain_delay: String,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "OUTRIDER_LOG", default_value = "info", value_name = "FILTER")]
    log: String,
}

/// The checked configuration of the webhook server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_reload_interval: Duration,
    pub inject: Options,
    pub drain_delay: Duration,
    pub log: String,
}

/// Parses `args` (the first is `webhook`). On `--help` or `--version`, or
/// a usage error, prints and returns the exit code instead.
///
/// # Errors
/// The exit code to end the process with.
pub fn parse(args: impl Iterator<Item = String>) -> Result<Settings, ExitCode> {
    let matches = match Args::command().try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return Err(ExitCode::SUCCESS);
        }
        // clap's own message is several lines (usage, a hint); its first
        // line says what is wrong and names the argument.
        Err(e) => return Err(usage(e.render().to_string().lines().next().unwrap_or("bad arguments").trim_start_matches("error: "))),
    };
    let args = Args::from_arg_matches(&matches).map_err(|e| usage(e.to_string().lines().next().unwrap_or("bad arguments")))?;
    check(args, &|id| matches.value_source(id)).map_err(|e| usage(&e))
}

fn usage(message: &str) -> ExitCode {
    eprintln!("outrider webhook: {message}");
    ExitCode::from(EX_CONFIG)
}

/// Where a value came from, to name it as the user gave it.
type Source<'a> = &'a dyn Fn(&str) -> Option<ValueSource>;

fn check(args: Args, source: Source<'_>) -> Result<Settings, String> {
    let name = |id: &str, flag: &str, var: &str| match source(id) {
        Some(ValueSource::EnvVariable) => var.to_owned(),
        _ => flag.to_owned(),
    };
    let invalid = |id: &str, flag: &str, var: &str, value: &str, why: &dyn std::fmt::Display| {
        format!("invalid {}={value:?}: {why}", name(id, flag, var))
    };
    let listen =
        args.listen.parse::<SocketAddr>().map_err(|e| invalid("listen", "--listen", "OUTRIDER_WEBHOOK_LISTEN", &args.listen, &e))?;
    let duration =
        |id: &str, flag: &str, var: &str, value: &str| humantime::parse_duration(value).map_err(|e| invalid(id, flag, var, value, &e));
    let tls_reload_interval =
        duration("tls_reload_interval", "--tls-reload-interval", "OUTRIDER_WEBHOOK_TLS_RELOAD_INTERVAL", &args.tls_reload_interval)?;
    if tls_reload_interval.is_zero() {
        return Err(invalid(
            "tls_reload_interval",
            "--tls-reload-interval",
            "OUTRIDER_WEBHOOK_TLS_RELOAD_INTERVAL",
            &args.tls_reload_interval,
            &"must be more than zero",
        ));
    }
    let drain_delay = duration("drain_delay", "--drain-delay", "OUTRIDER_WEBHOOK_DRAIN_DELAY", &args.drain_delay)?;
    let tls_cert = args.tls_cert.ok_or("--tls-cert (or OUTRIDER_WEBHOOK_TLS_CERT) is required")?;
    let tls_key = args.tls_key.ok_or("--tls-key (or OUTRIDER_WEBHOOK_TLS_KEY) is required")?;
    // An image reference has no spaces; an empty one would inject a
    // container the kubelet cannot pull.
    if args.image.is_empty() || args.image.chars().any(char::is_whitespace) {
        return Err(invalid("image", "--image", "OUTRIDER_WEBHOOK_IMAGE", &args.image, &"not an image reference"));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&args.log) {
        return Err(invalid("log", "--log", "OUTRIDER_LOG", &args.log, &e));
    }
    let sidecar = if args.classic { Sidecar::Classic } else { Sidecar::Native };
    Ok(Settings {
        listen,
        tls_cert,
        tls_key,
        tls_reload_interval,
        inject: Options { image: args.image, sidecar },
        drain_delay,
        log: args.log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, String> {
        let matches =
            Args::command().try_get_matches_from(std::iter::once("webhook").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        let mut args = Args::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        // The environment is the process's, shared by parallel tests:
        // variables are simulated by setting the field and its source.
        let mut from_env = Vec::new();
        for (var, value) in env {
            let id = match *var {
                "OUTRIDER_WEBHOOK_LISTEN" => {
                    args.listen = (*value).to_owned();
                    "listen"
                }
                "OUTRIDER_WEBHOOK_DRAIN_DELAY" => {
                    args.drain_delay = (*value).to_owned();
                    "drain_delay"
                }
                other => panic!("no simulation for {other}"),
            };
            from_env.push(id);
        }
        check(args, &|id| if from_env.contains(&id) { Some(ValueSource::EnvVariable) } else { matches.value_source(id) })
    }

    #[test]
    fn defaults_and_flags() {
        let s = parse_with(&["--tls-cert", "c.pem", "--tls-key", "k.pem"], &[]).unwrap();
        assert_eq!(s.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(s.tls_reload_interval, Duration::from_secs(5));
        assert_eq!(s.inject.image, inject::DEFAULT_IMAGE);
        assert_eq!(s.inject.sidecar, Sidecar::Native);
        let s = parse_with(
            &[
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
                "--listen",
                "127.0.0.1:9443",
                "--classic",
                "--image",
                "r.example/o:1",
                "--drain-delay",
                "0s",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(s.inject.sidecar, Sidecar::Classic);
        assert_eq!(s.inject.image, "r.example/o:1");
        assert_eq!(s.drain_delay, Duration::ZERO);
    }

    #[test]
    fn errors_name_the_flag_or_the_variable() {
        let e = parse_with(&["--tls-cert", "c", "--tls-key", "k", "--listen", "nope"], &[]).unwrap_err();
        assert!(e.starts_with("invalid --listen=\"nope\": "), "{e}");
        let e = parse_with(&["--tls-cert", "c", "--tls-key", "k"], &[("OUTRIDER_WEBHOOK_LISTEN", "nope")]).unwrap_err();
        assert!(e.starts_with("invalid OUTRIDER_WEBHOOK_LISTEN=\"nope\": "), "{e}");
        let e = parse_with(&["--tls-cert", "c", "--tls-key", "k"], &[("OUTRIDER_WEBHOOK_DRAIN_DELAY", "soon")]).unwrap_err();
        assert!(e.starts_with("invalid OUTRIDER_WEBHOOK_DRAIN_DELAY=\"soon\": "), "{e}");
        let e = parse_with(&["--tls-key", "k"], &[]).unwrap_err();
        assert_eq!(e, "--tls-cert (or OUTRIDER_WEBHOOK_TLS_CERT) is required");
        let e = parse_with(&["--tls-cert", "c", "--tls-key", "k", "--tls-reload-interval", "0s"], &[]).unwrap_err();
        assert!(e.contains("--tls-reload-interval") && e.contains("more than zero"), "{e}");
        let e = parse_with(&["--tls-cert", "c", "--tls-key", "k", "--image", ""], &[]).unwrap_err();
        assert!(e.starts_with("invalid --image=\"\""), "{e}");
        let e = parse_with(&["--tls-cert", "c", "--tls-key", "k", "--log", "a=nonsense"], &[]).unwrap_err();
        assert!(e.starts_with("invalid --log="), "{e}");
        assert!(e.lines().count() == 1);
    }
}
