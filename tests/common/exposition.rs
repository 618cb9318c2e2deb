//! Reading `/metrics` as Prometheus does, in both formats, and checking
//! an exposition with the reference tools (promtool, the OpenMetrics
//! parser of the Python client) when they are installed.

use http::Request;

use super::{Outrider, client, full, get, send};

/// Reads one sample of `name` with exactly these labels from the text format.
pub fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() { format!("{name} ") } else { format!("{name}{{{labels}}} ") };
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.trim().parse().unwrap())
}

pub async fn scrape(proxy: &Outrider) -> String {
    let (status, headers, body) = get(&proxy.admin_url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    String::from_utf8(body.to_vec()).unwrap()
}

/// Runs `promtool check metrics` when it is installed; CI installs it and
/// sets CI=true, which makes its absence a failure there.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(_) if std::env::var("CI").is_err() => {
            eprintln!("promtool not installed: skipping the exposition-format check (CI runs it)");
            return;
        }
        Err(e) => panic!("promtool is required in CI: {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics failed:\n{report}");
}

/// What Prometheus sends when its exemplar storage is on.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// Scrapes `/metrics` as Prometheus does when it stores exemplars.
pub async fn scrape_openmetrics(proxy: &Outrider) -> String {
    let req = Request::get(proxy.admin_url("/metrics")).header("accept", PROMETHEUS_ACCEPT).body(full("")).unwrap();
    let (status, headers, body) = send(&client(), req).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    String::from_utf8(body.to_vec()).unwrap()
}

/// One sample line: its name, its labels (unescaped), and what follows
/// them (the value, and in OpenMetrics maybe an exemplar).
pub fn parse_sample(line: &str) -> (&str, Vec<(String, String)>, &str) {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(end);
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner.split_once("=\"").unwrap_or_else(|| panic!("bad labels: {line}"));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => panic!("bad escape: {line}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            labels.push((label.trim_start_matches(',').to_owned(), value));
            inner = &after[close + 1..];
        }
    }
    (name, labels, rest.trim_start())
}

/// An exemplar on a bucket of a histogram, with its bucket.
#[derive(Debug)]
pub struct BucketExemplar {
    /// The series' labels, `le` left out.
    pub series: Vec<(String, String)>,
    /// The bucket: (lower bound, exclusive; upper bound, inclusive).
    pub bucket: (f64, f64),
    pub trace_id: String,
    pub span_id: String,
    pub value: f64,
    pub timestamp: f64,
}

pub fn exemplars(openmetrics: &str, family: &str) -> Vec<BucketExemplar> {
    let mut found = Vec::new();
    let mut previous: Option<(Vec<(String, String)>, f64)> = None;
    let prefix = format!("{family}_bucket{{");
    for line in openmetrics.lines().filter(|l| l.starts_with(&prefix)) {
        let (_, mut series, rest) = parse_sample(line);
        let (_, le) = series.pop().filter(|(name, _)| name == "le").unwrap_or_else(|| panic!("le is not the last label: {line}"));
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
        let lower = match &previous {
            Some((s, bound)) if *s == series => *bound,
            _ => f64::NEG_INFINITY,
        };
        previous = Some((series.clone(), le));
        let Some((_, exemplar)) = rest.split_once(" # ") else { continue };
        let (_, ids, rest) = parse_sample(exemplar);
        let id = |name: &str| ids.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
        assert_eq!(ids.len(), 2, "{line}");
        let (value, timestamp) = rest.split_once(' ').unwrap_or_else(|| panic!("an exemplar without a timestamp: {line}"));
        found.push(BucketExemplar {
            series,
            bucket: (lower, le),
            trace_id: id("trace_id"),
            span_id: id("span_id"),
            value: value.parse().unwrap(),
            timestamp: timestamp.parse().unwrap(),
        });
    }
    found
}

/// The series names and labels of an exposition, values left out.
pub fn series_of(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, labels, _) = parse_sample(l);
            format!("{name}{labels:?}")
        })
        .collect()
}

/// The OpenMetrics exposition as text format 0.0.4, for promtool, which
/// reads only that: exemplars, `# UNIT` and `# EOF` left out, counter
/// families named with their `_total` again.
pub fn openmetrics_as_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut text = String::new();
    for line in openmetrics.lines().filter(|l| *l != "# EOF" && !l.starts_with("# UNIT ")) {
        let line = match ["# TYPE ", "# HELP "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?))) {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap();
                let total = if counters.contains(&name) { "_total" } else { "" };
                format!("{prefix}{name}{total} {}", tail.replace("\\\"", "\""))
            }
            None => line.split(" # {").next().unwrap().to_owned(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// Parses `text` with the OpenMetrics reference parser (the Python
/// client's: strict about `# EOF`, names, types, counters' `_total`,
/// buckets, exemplars and their length) when it is installed; CI installs
/// it and sets CI=true, which makes its absence a failure there.
pub fn openmetrics_check(text: &str) {
    use std::io::Write;
    const SCRIPT: &str = "import sys
try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError:
    sys.exit(3)
for family in text_string_to_metric_families(sys.stdin.read()):
    pass
";
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.code() == Some(3) {
        assert!(std::env::var("CI").is_err(), "the Python prometheus-client (OpenMetrics parser) is required in CI");
        eprintln!("prometheus-client for Python not installed: skipping the OpenMetrics parser check (CI runs it)");
        return;
    }
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the OpenMetrics parser refused the exposition:\n{report}\n{text}");
}

pub fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}
