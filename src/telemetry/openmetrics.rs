//! The OpenMetrics 1.0 text exposition of the registry's metric families,
//! with exemplars on histogram buckets.
//!
//! prometheus 0.14 has neither an OpenMetrics encoder nor exemplars, so
//! this writes the format from the families `Registry::gather` returns.
//! The `prometheus-client` crate has both, but every metric would have to
//! move to it, and its histogram with exemplars takes a lock on each
//! observation; outrider keeps its registry and records exemplars in
//! lock-free slots of its own ([`super::exemplar`]).
//!
//! Differences from the text format 0.0.4 that matter to a scraper:
//! a counter's family is named without `_total` (its sample keeps it),
//! `# UNIT` names the unit of families that end in one, label values and
//! help texts escape `"` too, and `# EOF` ends the exposition.

pub mod accept;

use std::fmt::Write as _;

use prometheus::proto::{Metric, MetricFamily, MetricType};

use super::{exemplar::Slot, propagation};

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Units outrider's (and the process collector's) metric names end in.
const UNITS: [&str; 2] = ["seconds", "bytes"];

/// Encodes `families`. For each histogram series, `exemplars` may return
/// one slot per bucket (in order, the `+Inf` bucket last); each slot that
/// holds an exemplar adds it to its bucket's line.
pub fn encode<'a>(families: &[MetricFamily], mut exemplars: impl FnMut(&MetricFamily, &Metric) -> Option<&'a [Slot]>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for family in families {
        let kind = family.get_field_type();
        let name = family.name();
        let base = match kind {
            MetricType::COUNTER => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let type_name = match kind {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "unknown",
        };
        let _ = writeln!(out, "# TYPE {base} {type_name}");
        if let Some(unit) = UNITS.iter().find(|u| base.strip_suffix(*u).is_some_and(|rest| rest.ends_with('_'))) {
            let _ = writeln!(out, "# UNIT {base} {unit}");
        }
        if !family.help().is_empty() {
            out.push_str("# HELP ");
            out.push_str(base);
            out.push(' ');
            escape_into(&mut out, family.help());
            out.push('\n');
        }
        for metric in family.get_metric() {
            match kind {
                MetricType::COUNTER => sample(&mut out, base, "_total", metric, None, Value::Float(metric.get_counter().value())),
                MetricType::GAUGE => sample(&mut out, base, "", metric, None, Value::Float(metric.get_gauge().value())),
                MetricType::UNTYPED => sample(&mut out, base, "", metric, None, Value::Float(metric.untyped.get_or_default().value())),
                MetricType::SUMMARY => {
                    let summary = metric.get_summary();
                    for q in summary.get_quantile() {
                        let quantile = q.quantile().to_string();
                        sample(&mut out, base, "", metric, Some(("quantile", &quantile)), Value::Float(q.value()));
                    }
                    sample(&mut out, base, "_count", metric, None, Value::Count(summary.sample_count()));
                    sample(&mut out, base, "_sum", metric, None, Value::Float(summary.sample_sum()));
                }
                MetricType::HISTOGRAM => {
                    let histogram = metric.get_histogram();
                    let slots = exemplars(family, metric).unwrap_or_default();
                    let buckets = histogram.get_bucket();
                    let mut inf_seen = false;
                    for (i, bucket) in buckets.iter().enumerate() {
                        let bound = bucket.upper_bound();
                        inf_seen |= bound == f64::INFINITY;
                        // As the text encoder writes it, so that a series
                        // keeps its `le` whichever format is scraped.
                        let le = if bound == f64::INFINITY { "+Inf".to_owned() } else { bound.to_string() };
                        sample(&mut out, base, "_bucket", metric, Some(("le", &le)), Value::Count(bucket.cumulative_count()));
                        exemplar(&mut out, slots.get(i));
                    }
                    if !inf_seen {
                        sample(&mut out, base, "_bucket", metric, Some(("le", "+Inf")), Value::Count(histogram.get_sample_count()));
                        exemplar(&mut out, slots.get(buckets.len()));
                    }
                    sample(&mut out, base, "_count", metric, None, Value::Count(histogram.get_sample_count()));
                    sample(&mut out, base, "_sum", metric, None, Value::Float(histogram.get_sample_sum()));
                }
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

enum Value {
    Float(f64),
    Count(u64),
}

/// Writes one sample line, without its final newline when an exemplar may
/// follow (histogram buckets): [`exemplar`] ends those.
fn sample(out: &mut String, base: &str, suffix: &str, metric: &Metric, extra: Option<(&str, &str)>, value: Value) {
    out.push_str(base);
    out.push_str(suffix);
    let labels = metric.get_label();
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let pairs = labels.iter().map(|l| (l.name(), l.value())).chain(extra);
        for (i, (name, value)) in pairs.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(name);
            out.push_str("=\"");
            escape_into(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Float(v) => float_into(out, v),
        Value::Count(n) => {
            let _ = write!(out, "{n}");
        }
    }
    if metric.timestamp_ms() != 0 {
        out.push(' ');
        timestamp_into(out, metric.timestamp_ms());
    }
    if suffix != "_bucket" {
        out.push('\n');
    }
}

/// Ends a bucket's line, with its exemplar if there is one:
/// ` # {trace_id="…",span_id="…"} 0.0031 1700000000.123`. The label set is
/// 63 characters, under OpenMetrics' limit of 128.
fn exemplar(out: &mut String, slot: Option<&Slot>) {
    if let Some(e) = slot.and_then(Slot::read) {
        out.push_str(" # {trace_id=\"");
        hex_into(out, &e.trace_id);
        out.push_str("\",span_id=\"");
        hex_into(out, &e.span_id);
        out.push_str("\"} ");
        float_into(out, e.value);
        out.push(' ');
        timestamp_into(out, i64::try_from(e.timestamp_ms).unwrap_or(i64::MAX));
    }
    out.push('\n');
}

/// `+Inf`, `-Inf` and `NaN` as OpenMetrics spells them; other values in
/// Rust's shortest exact decimal form.
fn float_into(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Seconds since the epoch, with the milliseconds.
fn timestamp_into(out: &mut String, ms: i64) {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:03}", ms / 1000, ms % 1000);
}

/// Lowercase hex of an id (at most 16 bytes), as trace headers write it.
fn hex_into(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 32];
    let hex = &mut buf[..2 * bytes.len().min(16)];
    propagation::hex_into(&bytes[..hex.len() / 2], hex);
    out.push_str(std::str::from_utf8(hex).unwrap_or_default());
}

/// A label value or help text: `\`, `"` and newline escaped.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, core::Collector};

    use super::super::exemplar::Exemplar;
    use super::*;

    fn registry() -> Registry {
        let r = Registry::new();
        let c = IntCounterVec::new(Opts::new("demo_requests_total", "Requests \"seen\", with a \\ and\na newline."), &["path"]).unwrap();
        c.with_label_values(&["a\"b\\c\nd"]).inc_by(3);
        r.register(Box::new(c)).unwrap();
        let g = IntGauge::new("demo_in_flight", "In flight.").unwrap();
        g.set(-2);
        r.register(Box::new(g)).unwrap();
        let b = IntCounter::new("demo_body_bytes_total", "Bytes.").unwrap();
        b.inc_by(10);
        r.register(Box::new(b)).unwrap();
        r
    }

    #[test]
    fn counters_gauges_units_and_escaping() {
        let text = encode(&registry().gather(), |_, _| None);
        let expected = "\
# TYPE demo_body_bytes counter
# UNIT demo_body_bytes bytes
# HELP demo_body_bytes Bytes.
demo_body_bytes_total 10
# TYPE demo_in_flight gauge
# HELP demo_in_flight In flight.
demo_in_flight -2
# TYPE demo_requests counter
# HELP demo_requests Requests \\\"seen\\\", with a \\\\ and\\na newline.
demo_requests_total{path=\"a\\\"b\\\\c\\nd\"} 3
# EOF
";
        assert_eq!(text, expected);
    }

    #[test]
    fn histograms_have_buckets_count_sum_and_their_exemplars() {
        let h = Histogram::with_opts(HistogramOpts::new("demo_duration_seconds", "Duration.").buckets(vec![0.005, 0.5])).unwrap();
        h.observe(0.0031);
        h.observe(0.2);
        h.observe(7.0);
        let slots: Vec<Slot> = (0..3).map(|_| Slot::default()).collect();
        let e = Exemplar {
            trace_id: [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36],
            span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            value: 0.0031,
            timestamp_ms: 1_700_000_000_123,
        };
        slots[0].record(&e);
        slots[2].record(&Exemplar { value: 7.0, timestamp_ms: 1_700_000_000_005, ..e });
        let text = encode(&h.collect(), |family, _| (family.name() == "demo_duration_seconds").then_some(&slots[..]));
        let expected = "\
# TYPE demo_duration_seconds histogram
# UNIT demo_duration_seconds seconds
# HELP demo_duration_seconds Duration.
demo_duration_seconds_bucket{le=\"0.005\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 0.0031 1700000000.123
demo_duration_seconds_bucket{le=\"0.5\"} 2
demo_duration_seconds_bucket{le=\"+Inf\"} 3 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 7 1700000000.005
demo_duration_seconds_count 3
demo_duration_seconds_sum 7.2031
# EOF
";
        assert_eq!(text, expected);
        let label_set = "trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"";
        assert!(label_set.chars().count() <= 128);
    }

    /// Types outrider's registry does not use today, written all the same.
    #[test]
    fn summaries_and_untyped() {
        use prometheus::proto::{LabelPair, Quantile, Summary, Untyped};
        let mut summary = Summary::default();
        summary.set_sample_count(4);
        summary.set_sample_sum(2.5);
        let mut q = Quantile::default();
        q.set_quantile(0.5);
        q.set_value(0.25);
        summary.set_quantile(vec![q]);
        let mut label = LabelPair::default();
        label.set_name("job".into());
        label.set_value("a".into());
        let mut m = Metric::from_label(vec![label]);
        m.set_summary(summary);
        let mut sf = MetricFamily::default();
        sf.set_name("demo_wait_seconds".into());
        sf.set_field_type(MetricType::SUMMARY);
        sf.set_metric(vec![m]);
        let mut untyped = Untyped::default();
        untyped.set_value(f64::NAN);
        let mut m = Metric { untyped: Some(untyped).into(), ..Default::default() };
        m.set_timestamp_ms(1_700_000_000_042);
        let mut uf = MetricFamily::default();
        uf.set_name("demo_thing".into());
        uf.set_field_type(MetricType::UNTYPED);
        uf.set_metric(vec![m]);
        let expected = "\
# TYPE demo_wait_seconds summary
# UNIT demo_wait_seconds seconds
demo_wait_seconds{job=\"a\",quantile=\"0.5\"} 0.25
demo_wait_seconds_count{job=\"a\"} 4
demo_wait_seconds_sum{job=\"a\"} 2.5
# TYPE demo_thing unknown
demo_thing NaN 1700000000.042
# EOF
";
        assert_eq!(encode(&[sf, uf], |_, _| None), expected);
    }

    #[test]
    fn eof_is_last_and_only_once() {
        let text = encode(&registry().gather(), |_, _| None);
        assert!(text.ends_with("\n# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
        assert_eq!(encode(&[], |_, _| None), "# EOF\n");
    }

    #[test]
    fn special_floats() {
        let mut out = String::new();
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1.0, 0.0005, 1e21] {
            float_into(&mut out, v);
            out.push(' ');
        }
        assert_eq!(out, "+Inf -Inf NaN 1 0.0005 1000000000000000000000 ");
    }
}
