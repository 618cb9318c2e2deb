//! Configuration from arbitrary environment variables, TOML text and flags.
//!
//! Invariant: `Config::load_from` never panics, and a configuration that
//! loads prints (`to_toml`, what `--print-config` shows) a TOML text that
//! loads again into a configuration printing the same text. The admin
//! token is the one exception: it is printed redacted, so it is left out of
//! the reload and its line out of the comparison.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outrider::config::{Config, Overrides, SETTINGS};

/// Values each kind of setting accepts, and some it refuses, for the
/// fuzzer to start from and mutate.
const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "65536",
    "1099511627776",
    "250ms",
    "1m30s",
    "24h",
    "25h",
    "true",
    "off",
    "0.0.0.0:8080",
    "[::1]:1",
    "http://127.0.0.1:8081",
    "https://app",
    "http://app:0080/",
    "unix:/run/a.sock",
    "unix:////run/a.sock",
    "http2",
    "json",
    "info,outrider::proxy=debug",
    "a[span{field=value}]=trace",
    "tcp",
    "/status?x=1",
    "/users/{id},/orders/{id}/items",
    "x-client-subject",
    "/etc/ssl/certs/ca-certificates.crt",
    "0123456789abcdef0",
    "app",
];

#[derive(Arbitrary, Debug)]
enum Name {
    /// A setting's variable, as written or in another case, or padded.
    Setting(u8, u8),
    /// What Kubernetes injects, `OUTRIDER_CONFIG`, and near misses.
    Special(u8),
    Raw(String),
}

const SPECIAL: &[&str] = &[
    "OUTRIDER_CONFIG",
    "OUTRIDER_SERVICE_HOST",
    "OUTRIDER_SERVICE_PORT_HTTP",
    "OUTRIDER_PORT",
    "OUTRIDER_PORT_8080_TCP_ADDR",
    "OUTRIDER_PORT__TCP",
    "OUTRIDER_REQUST_TIMEOUT",
    "outrider_listen",
    " OUTRIDER_LOG ",
    "OUTRIDER_",
    "PATH",
];

#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    /// A known value with arbitrary text around it.
    Around(String, u8, String),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum TomlValue {
    Str(Text),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<i64>),
    Table(u8),
    /// Written after `key = ` as it is, valid TOML or not.
    Verbatim(String),
}

#[derive(Arbitrary, Debug)]
enum TomlInput {
    Lines(Vec<(Name, TomlValue)>),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    vars: Vec<(Name, Text)>,
    toml: Option<TomlInput>,
    /// `--flag=value`: the index among the settings that have a flag.
    flags: Vec<(u8, Text)>,
}

fn name(n: &Name) -> String {
    match n {
        Name::Setting(i, case) => {
            let var = SETTINGS[usize::from(*i) % SETTINGS.len()].var();
            match case % 4 {
                0 | 1 => var,
                2 => var.to_ascii_lowercase(),
                _ => format!(" {var}\t"),
            }
        }
        Name::Special(i) => SPECIAL[usize::from(*i) % SPECIAL.len()].to_owned(),
        Name::Raw(s) => s.clone(),
    }
}

fn key(n: &Name) -> String {
    match n {
        Name::Setting(i, _) => SETTINGS[usize::from(*i) % SETTINGS.len()].key.to_owned(),
        other => name(other).trim().trim_start_matches("OUTRIDER_").to_ascii_lowercase(),
    }
}

fn text(t: &Text) -> String {
    match t {
        Text::Known(i) => VALUES[usize::from(*i) % VALUES.len()].to_owned(),
        Text::Around(before, i, after) => format!("{before}{}{after}", VALUES[usize::from(*i) % VALUES.len()]),
        Text::Raw(s) => s.clone(),
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() && c != '\t' => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out + "\""
}

fn toml(input: &TomlInput) -> String {
    let lines = match input {
        TomlInput::Raw(s) => return s.clone(),
        TomlInput::Lines(lines) => lines,
    };
    let mut out = String::new();
    for (k, value) in lines {
        let value = match value {
            TomlValue::Str(t) => quote(&text(t)),
            TomlValue::Int(i) => i.to_string(),
            TomlValue::Float(f) => format!("{f:?}"),
            TomlValue::Bool(b) => b.to_string(),
            TomlValue::Array(a) => format!("{a:?}"),
            TomlValue::Table(i) => format!("{{ x = {i} }}"),
            TomlValue::Verbatim(v) => v.clone(),
        };
        out += &format!("{} = {value}\n", key(k));
    }
    out
}

fn overrides(flags: &[(u8, Text)]) -> Overrides {
    use clap::{Args, FromArgMatches};
    let with_flag: Vec<_> = SETTINGS.iter().filter(|s| s.flag.is_some()).collect();
    let args = flags.iter().map(|(i, value)| {
        let s = with_flag[usize::from(*i) % with_flag.len()];
        format!("--{}={}", s.key.replace('_', "-"), text(value))
    });
    // Built once: clap's command is costly to make, not to clone.
    static COMMAND: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
    let cmd = COMMAND.get_or_init(|| Overrides::augment_args(clap::Command::new("outrider"))).clone();
    // A repeated flag is a usage error, before any configuration.
    cmd.try_get_matches_from(std::iter::once("outrider".to_owned()).chain(args))
        .ok()
        .and_then(|m| Overrides::from_arg_matches(&m).ok())
        .unwrap_or_default()
}

/// `to_toml` without the admin token's line, which is redacted.
fn without_token(printed: &str) -> String {
    printed.lines().filter(|l| !l.starts_with("admin_token = ")).map(|l| format!("{l}\n")).collect()
}

fuzz_target!(|input: Input| {
    let vars: Vec<(String, String)> = input.vars.iter().map(|(n, t)| (name(n), text(t))).collect();
    let toml = input.toml.as_ref().map(toml);
    let Ok(config) = Config::load_from(vars, toml.as_deref(), &overrides(&input.flags)) else { return };
    let printed = without_token(&config.to_toml());
    let again = match Config::load_from(Vec::new(), Some(&printed), &Overrides::default()) {
        Ok(again) => again,
        Err(e) => panic!("printed configuration does not load: {e}\n{printed}"),
    };
    assert_eq!(without_token(&again.to_toml()), printed);
});
