//! The webhook's Prometheus metrics: how many reviews ended how, and how
//! long they took. Two families; the server's own are outrider's, not here.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};

use super::review::Verdict;

/// `outrider_webhook_admissions_total{outcome}` and
/// `outrider_webhook_admission_duration_seconds`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    admissions: IntCounterVec,
    duration: Histogram,
}

/// The `outcome` of a body that was not an AdmissionReview (answered 400).
pub const MALFORMED: &str = "malformed";

impl Metrics {
    /// # Errors
    /// Only if the two families' definitions are invalid (a programming
    /// error, caught by the tests).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let admissions =
            IntCounterVec::new(Opts::new("outrider_webhook_admissions_total", "AdmissionReviews answered, by outcome."), &["outcome"])?;
        // The fixture's pod (an 8.5 KB review) took 4.5 ms per review in an
        // unoptimised build on a loaded 2-core machine; release builds are
        // faster. The upper buckets are for a starved node, still well
        // below the API server's 5 s timeout.
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "outrider_webhook_admission_duration_seconds",
                "Time from the whole request body read to the response ready, per AdmissionReview.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        // Every outcome is exported from the start, at zero, so a rate()
        // over it has a series before the first event.
        for label in Verdict::ALL.map(Verdict::label).into_iter().chain([MALFORMED]) {
            admissions.with_label_values(&[label]);
        }
        Ok(Self { registry, admissions, duration })
    }

    pub fn count(&self, outcome: &str) {
        self.admissions.with_label_values(&[outcome]).inc();
    }

    pub fn observe(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// The text exposition format (0.0.4).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2048);
        // Encoding into a Vec cannot fail on I/O.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_exported_at_zero_then_counted() {
        let m = Metrics::new().unwrap();
        m.count("injected");
        m.observe(0.0007);
        let text = String::from_utf8(m.encode()).unwrap();
        for outcome in ["already_injected", "skipped", "ignored", "error", "malformed"] {
            assert!(text.contains(&format!("outrider_webhook_admissions_total{{outcome=\"{outcome}\"}} 0\n")), "{text}");
        }
        assert!(text.contains("outrider_webhook_admissions_total{outcome=\"injected\"} 1\n"), "{text}");
        assert!(text.contains("outrider_webhook_admission_duration_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("outrider_webhook_admission_duration_seconds_count 1\n"), "{text}");
    }
}
