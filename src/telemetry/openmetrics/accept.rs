//! Which exposition a scraper asked for with its `Accept` header.
//!
//! OpenMetrics only when the client names `application/openmetrics-text`
//! (any `version`) with a q-value above zero and at least that of the
//! text format (`text/plain`, else `text/*`, else `*/*`). Everything else,
//! a missing header, `*/*` alone (curl) or a header that does not parse,
//! gets the classic text format 0.0.4, as before.
//!
//! Prometheus with exemplar storage on sends
//! `application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2`.

/// True if the `Accept` header values prefer OpenMetrics.
pub fn wants_openmetrics<'a>(accept: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut openmetrics: Option<f32> = None;
    let (mut plain, mut text_any, mut any): (Option<f32>, Option<f32>, Option<f32>) = (None, None, None);
    for value in accept {
        let Ok(value) = std::str::from_utf8(value) else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let Some(q) = quality(parts) else { continue };
            let best = if media.eq_ignore_ascii_case("application/openmetrics-text") {
                &mut openmetrics
            } else if media.eq_ignore_ascii_case("text/plain") {
                &mut plain
            } else if media.eq_ignore_ascii_case("text/*") {
                &mut text_any
            } else if media == "*/*" {
                &mut any
            } else {
                continue;
            };
            *best = Some(best.map_or(q, |b| b.max(q)));
        }
    }
    // The most specific range that matches the text format decides its q.
    let text = plain.or(text_any).or(any).unwrap_or(0.0);
    openmetrics.is_some_and(|q| q > 0.0 && q >= text)
}

/// The range's q-value (1 when absent); `None` when it does not parse,
/// which drops the range.
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> Option<f32> {
    for param in params {
        let Some((name, value)) = param.split_once('=') else { continue };
        if name.trim().eq_ignore_ascii_case("q") {
            return value.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q));
        }
    }
    Some(1.0)
}

#[cfg(test)]
mod tests {
    use super::wants_openmetrics;

    fn wants(values: &[&str]) -> bool {
        wants_openmetrics(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn prometheus_default_header_gets_openmetrics() {
        assert!(wants(&[
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        ]));
        // Prometheus 2.30 by default.
        assert!(wants(&["application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"]));
        // Text asked for first.
        assert!(!wants(&[
            "application/openmetrics-text;version=1.0.0;q=0.3,text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=0.0.1;q=0.2,*/*;q=0.1"
        ]));
    }

    #[test]
    fn the_text_format_stays_the_default() {
        assert!(!wants(&[]), "no header");
        assert!(!wants(&["text/plain"]));
        assert!(!wants(&["text/plain; version=0.0.4"]));
        assert!(!wants(&["*/*"]), "curl");
        assert!(!wants(&["application/json"]));
        assert!(!wants(&["\u{7f}garbage;;;q=x"]));
    }

    #[test]
    fn openmetrics_when_named_and_not_refused() {
        assert!(wants(&["application/openmetrics-text"]));
        assert!(wants(&["Application/OpenMetrics-Text; version=1.0.0"]));
        assert!(wants(&["application/openmetrics-text; version=0.0.1; q=0.9, text/plain; q=0.8"]));
        assert!(wants(&["text/plain;q=0.5", "application/openmetrics-text"]), "several header lines");
        assert!(wants(&["application/openmetrics-text, text/plain"]), "a tie goes to OpenMetrics");
        assert!(!wants(&["application/openmetrics-text;q=0"]));
        assert!(!wants(&["application/openmetrics-text;q=0, */*"]));
        assert!(!wants(&["application/openmetrics-text;q=0.2, text/*;q=0.4"]));
        assert!(!wants(&["application/openmetrics-text;q=2"]), "an invalid q drops the range");
    }
}
