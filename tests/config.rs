//! Configuration: precedence, `--print-config`, and bad values exiting 2.

mod common;

use common::*;

fn run(spawn: Spawn) -> (i32, String, String) {
    let out = spawn.command().output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_values_exit_2_naming_the_variable() {
    for (var, value) in [
        ("OUTRIDER_LISTEN", "not-an-address"),
        ("OUTRIDER_UPSTREAM", "ftp://example"),
        ("OUTRIDER_REQUEST_TIMEOUT", "30"),
        ("OUTRIDER_UPSTREAM_CONNECT_TIMEOUT", "0"),
        ("OUTRIDER_LOG_FORMAT", "xml"),
        ("OUTRIDER_LOG", "a=b=c"),
        ("OUTRIDER_MAX_HEADER_BYTES", "12"),
        ("OUTRIDER_UPSTREAM_PROTOCOL", "http3"),
        ("OUTRIDER_VIA", "maybe"),
        // Past any sensible wait, and past what the clock arithmetic holds.
        ("OUTRIDER_DRAIN_TIMEOUT", "1000000000y"),
        ("OUTRIDER_REQUEST_TIMEOUT", "25h"),
    ] {
        let (code, stdout, stderr) = run(outrider("http://127.0.0.1:1").env(var, value).args(["--print-config"]));
        assert_eq!(code, 2, "{var}={value}: {stderr}");
        assert!(stdout.is_empty());
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected for {var}: {stderr}");
        assert!(lines[0].contains(&format!("{var}={value:?}")), "{var} not named: {stderr}");
    }
}

#[test]
fn missing_config_file_is_named() {
    let (code, _, stderr) = run(outrider("http://127.0.0.1:1").env("OUTRIDER_CONFIG", "/nonexistent/outrider.toml"));
    assert_eq!(code, 2);
    assert!(stderr.contains("OUTRIDER_CONFIG"), "{stderr}");
}

#[test]
fn precedence_is_defaults_then_file_then_env_then_flags() {
    let dir = std::env::temp_dir().join(format!("outrider-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outrider.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7001\"\nupstream = \"http://127.0.0.1:7002\"\nlog = \"warn\"\nmax_header_bytes = 32768\nvia = true\n",
    )
    .unwrap();

    let base = || {
        let mut s = outrider("http://unused:1").env("OUTRIDER_CONFIG", file.to_str().unwrap());
        // Let the file speak for these three.
        for k in ["OUTRIDER_LISTEN", "OUTRIDER_UPSTREAM", "OUTRIDER_LOG"] {
            s = s.env(k, "");
        }
        s
    };
    // Empty env values are still values; drop them so the file wins.
    let strip = |s: Spawn| {
        let mut cmd = s.command();
        for k in ["OUTRIDER_LISTEN", "OUTRIDER_UPSTREAM", "OUTRIDER_LOG"] {
            cmd.env_remove(k);
        }
        cmd
    };
    let out = strip(base().args(["--print-config"])).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("listen = \"127.0.0.1:7001\""), "file beats defaults:\n{text}");
    assert!(text.contains("max_header_bytes = \"32768\""), "numbers in the file are accepted:\n{text}");
    assert!(text.contains("via = \"true\""), "{text}");
    assert!(text.contains("request_timeout = \"1m\""), "defaults fill the rest:\n{text}");

    let mut cmd = strip(base().args(["--print-config"]));
    cmd.env("OUTRIDER_LISTEN", "127.0.0.1:7003");
    let text = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    assert!(text.contains("listen = \"127.0.0.1:7003\""), "env beats file:\n{text}");

    let mut cmd = strip(base().args(["--listen", "127.0.0.1:7004", "--print-config"]));
    cmd.env("OUTRIDER_LISTEN", "127.0.0.1:7003");
    let text = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    assert!(text.contains("listen = \"127.0.0.1:7004\""), "flags beat env:\n{text}");

    // A bad value in the file is reported with where it came from.
    std::fs::write(&file, "request_timeout = \"soon\"\n").unwrap();
    let out = strip(base()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("OUTRIDER_REQUEST_TIMEOUT=\"soon\"") && stderr.contains("outrider.toml"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kubernetes_service_variables_do_not_break_start_up() {
    // A Service named `outrider` makes the kubelet inject these.
    let (code, _, stderr) = run(outrider("http://127.0.0.1:1")
        .env("OUTRIDER_PORT", "tcp://10.0.0.1:8080")
        .env("OUTRIDER_SERVICE_HOST", "10.0.0.1")
        .env("OUTRIDER_PORT_8080_TCP", "tcp://10.0.0.1:8080")
        .env("OUTRIDER_PORT_8080_TCP_PROTO", "tcp")
        .env("OUTRIDER_PORT_8080_TCP_PORT", "8080")
        .env("OUTRIDER_PORT_8080_TCP_ADDR", "10.0.0.1")
        .env("OUTRIDER_SERVICE_PORT", "8080")
        .env("OUTRIDER_SERVICE_PORT_HTTP", "8080")
        .args(["--print-config"]));
    assert_eq!(code, 0, "{stderr}");
}

/// A misspelt variable or file key is refused, not ignored, with the name
/// it was probably meant to be.
#[test]
fn unknown_settings_exit_2_with_a_suggestion() {
    let (code, stdout, stderr) = run(outrider("http://127.0.0.1:1").env("OUTRIDER_REQUST_TIMEOUT", "5s").args(["--print-config"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unknown variable OUTRIDER_REQUST_TIMEOUT") && stderr.contains("did you mean OUTRIDER_REQUEST_TIMEOUT?"),
        "{stderr}"
    );

    let (code, _, stderr) = run(outrider("http://127.0.0.1:1").env("OUTRIDER_SOMETHING_ELSE_ENTIRELY", "1").args(["--print-config"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown variable OUTRIDER_SOMETHING_ELSE_ENTIRELY") && !stderr.contains("did you mean"), "{stderr}");

    let dir = std::env::temp_dir().join(format!("outrider-unknown-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outrider.toml");
    std::fs::write(&file, "request_timout = \"5s\"\n").unwrap();
    let (code, _, stderr) = run(outrider("http://127.0.0.1:1").env("OUTRIDER_CONFIG", file.to_str().unwrap()).args(["--print-config"]));
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown key `request_timout`") && stderr.contains("did you mean `request_timeout`?"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = run(outrider("http://127.0.0.1:1").args(["--no-such-flag"]));
    assert_eq!(code, 2, "{stderr}");
}

/// The OTLP exporter's variables are checked at start-up, not at the first
/// export: a bad one stops outrider with exit 2 and names itself.
#[test]
fn bad_export_settings_exit_2_naming_the_variable() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_INSECURE", "yes"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "no-value"),
        // Read by the SDK itself, which would fall back in silence.
        ("OTEL_TRACES_SAMPLER", "bogus"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_PROPAGATORS", "tracecontext,b3single"),
        ("OTEL_PROPAGATORS", "none,b3"),
        ("OTEL_PROPAGATORS", "jaeger"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "lots"),
    ] {
        let mut spawn = outrider("http://127.0.0.1:1").env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        spawn = spawn.env(var, value).env("OUTRIDER_LISTEN", "127.0.0.1:0").env("OUTRIDER_ADMIN_LISTEN", "127.0.0.1:0");
        let mut child = spawn.command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{var}={value}: outrider started instead of refusing");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{var}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected for {var}: {stderr}");
        assert!(lines[0].contains(&format!("{var}={value:?}")), "{var} not named: {stderr}");
    }
}

#[test]
fn the_build_scripts_stamps_are_not_outrider_variables() {
    // `cargo run` and `cargo test` put a build script's `rustc-env` values
    // into the program's environment, where outrider refuses an unknown
    // `OUTRIDER_*`: the README's `cargo run` once failed on its own
    // commit stamp that way.
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/build.rs")).expect("build.rs");
    let names: Vec<&str> = script.split("cargo:rustc-env=").skip(1).filter_map(|rest| rest.split('=').next()).collect();
    assert!(!names.is_empty(), "no rustc-env stamp found in build.rs");
    for name in names {
        assert!(!name.starts_with("OUTRIDER_"), "build.rs exports {name} into `cargo run`'s environment");
    }
}
