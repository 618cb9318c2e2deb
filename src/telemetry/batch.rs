//! outrider's batch span processor: a bounded queue between the requests
//! that end spans and the one task that exports them, with every span
//! accounted for.
//!
//! Why not the SDK's `BatchSpanProcessor`: when its queue is full it drops
//! spans and keeps the count to itself (one log line at shutdown), so
//! `outrider_spans_dropped_total{reason="queue_full"}` could not be exact;
//! it also needs a thread of its own that blocks on each export, where
//! outrider already has an export thread with a runtime (the HTTP client
//! needs one); and at shutdown whatever it could not send is not counted.
//!
//! The request path (`on_end`) does two atomic adds (the `ended` counter,
//! the queue's length) and a non-blocking send into a channel preallocated
//! to `OTEL_BSP_MAX_QUEUE_SIZE` slots (std's bounded channel is an array of
//! slots, 360 bytes each for a `SpanData`, as in the SDK's processor): no
//! lock, no allocation.
//! Only when the queue reaches a full batch does it wake the exporter, once
//! per batch.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{Span, SpanData, SpanProcessor},
};
use prometheus::IntCounter;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tracing::warn;

use super::otlp::{Delivery, OtlpExporter};

/// The `OTEL_BSP_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Spans waiting for export at most; beyond it they are dropped.
    pub max_queue_size: usize,
    /// The longest a span waits in the queue before its batch is sent.
    pub schedule_delay: Duration,
    /// Spans per export request at most, never more than the queue holds.
    pub max_export_batch_size: usize,
}

/// Where every span handed to the processor ends up counted.
#[derive(Clone)]
pub struct ExportCounters {
    /// Sampled spans handed to the queue (whether or not it had room).
    pub ended: IntCounter,
    /// Spans the collector accepted.
    pub exported: IntCounter,
    /// Dropped: the queue was full.
    pub queue_full: IntCounter,
    /// Dropped: refused by the collector in an accepted batch.
    pub rejected: IntCounter,
    /// Dropped: their batch failed, or was still unsent at exit.
    pub export_failed: IntCounter,
}

impl fmt::Debug for ExportCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExportCounters")
    }
}

/// What the requests and the exporter share.
#[derive(Debug, Default)]
struct Shared {
    /// Wakes the exporter when a batch is full.
    notify: Notify,
    /// Spans in the queue, give or take the ones being handed over: only
    /// for deciding when a batch is full.
    queued: AtomicUsize,
    /// A wake-up is pending: later spans need not send another.
    wake_sent: AtomicBool,
}

enum Control {
    Resource(Resource),
    Flush(SyncSender<()>),
    /// Export what is queued until `cutoff`, then answer how many spans
    /// were not exported.
    Shutdown {
        cutoff: std::time::Instant,
        reply: SyncSender<u64>,
    },
}

/// Time the exporter keeps, out of the exit's flush timeout, to count
/// what it could not send and answer before the caller stops waiting.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// How often at most the collector's explanation for rejected spans is
/// logged: a collector that rejects part of every batch must not fill the
/// log; the counter has the full story.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The span processor the tracer provider calls.
pub struct BatchProcessor {
    queue: SyncSender<SpanData>,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    counters: ExportCounters,
    max_export_batch_size: usize,
    /// How long `force_flush` waits: one batch's export timeout.
    flush_timeout: Duration,
}

impl fmt::Debug for BatchProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchProcessor").field("max_export_batch_size", &self.max_export_batch_size).finish_non_exhaustive()
    }
}

impl BatchProcessor {
    /// Starts the export task on `runtime` (the export thread's).
    pub fn start(exporter: OtlpExporter, config: BatchConfig, counters: ExportCounters, runtime: &tokio::runtime::Handle) -> Self {
        let config = BatchConfig {
            max_queue_size: config.max_queue_size.max(1),
            max_export_batch_size: config.max_export_batch_size.clamp(1, config.max_queue_size.max(1)),
            ..config
        };
        let (queue, spans) = sync_channel(config.max_queue_size);
        let (control, messages) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let flush_timeout = exporter.timeout();
        let worker = Worker {
            exporter,
            spans,
            shared: shared.clone(),
            control: messages,
            counters: counters.clone(),
            batch: Vec::with_capacity(config.max_export_batch_size),
            config,
            exit: None,
            unsent: 0,
            flushes: Vec::new(),
            rejections: RejectionLog::default(),
        };
        runtime.spawn(worker.run());
        Self { queue, shared, control, counters, max_export_batch_size: config.max_export_batch_size, flush_timeout }
    }
}

impl SpanProcessor for BatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    /// On the request path: no lock, no allocation, no wait.
    fn on_end(&self, span: SpanData) {
        // The SDK hands over recorded spans; only sampled ones are exported.
        if !span.span_context.is_sampled() {
            return;
        }
        self.counters.ended.inc();
        // Counted before the send, so that the exporter, which subtracts
        // what it takes, never sees fewer than are in the channel.
        let queued = self.shared.queued.fetch_add(1, Ordering::AcqRel) + 1;
        match self.queue.try_send(span) {
            Ok(()) => {
                if queued >= self.max_export_batch_size
                    && !self.shared.wake_sent.load(Ordering::Relaxed)
                    && !self.shared.wake_sent.swap(true, Ordering::AcqRel)
                {
                    self.shared.notify.notify_one();
                }
            }
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                match e {
                    TrySendError::Full(_) => self.counters.queue_full.inc(),
                    // The exporter has finished (after shutdown).
                    TrySendError::Disconnected(_) => self.counters.export_failed.inc(),
                }
            }
        }
    }

    /// Exports what is queued; waits at most one batch's export timeout.
    fn force_flush(&self) -> OTelSdkResult {
        let (reply, done) = sync_channel(1);
        self.control.send(Control::Flush(reply)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        done.recv_timeout(self.flush_timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => OTelSdkError::Timeout(self.flush_timeout),
            RecvTimeoutError::Disconnected => OTelSdkError::AlreadyShutdown,
        })
    }

    /// Exports what is queued, retries included, for at most `timeout`;
    /// what is still unsent then is counted `export_failed`. Blocking.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let (reply, done) = sync_channel(1);
        let cutoff = std::time::Instant::now() + timeout.saturating_sub(ANSWER_MARGIN.min(timeout / 10));
        self.control.send(Control::Shutdown { cutoff, reply }).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match done.recv_timeout(timeout) {
            Ok(0) => Ok(()),
            Ok(unsent) => Err(OTelSdkError::InternalFailure(format!(
                "{unsent} spans not exported before the flush timeout ({timeout:?}); counted as dropped (export_failed)"
            ))),
            Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(OTelSdkError::AlreadyShutdown),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any span: the
        // exporter has it before the first batch.
        let _ = self.control.send(Control::Resource(resource.clone()));
    }
}

/// The export task: one batch at a time, on the export thread.
struct Worker {
    exporter: OtlpExporter,
    spans: Receiver<SpanData>,
    shared: Arc<Shared>,
    control: mpsc::UnboundedReceiver<Control>,
    counters: ExportCounters,
    config: BatchConfig,
    /// The batch being exported; its capacity is kept between batches.
    batch: Vec<SpanData>,
    /// Set once shutdown has begun: the cut-off and where to answer.
    exit: Option<(Instant, SyncSender<u64>)>,
    /// Spans not exported since shutdown began.
    unsent: u64,
    flushes: Vec<SyncSender<()>>,
    rejections: RejectionLog,
}

impl Worker {
    async fn run(mut self) {
        let mut next = Instant::now() + self.config.schedule_delay;
        loop {
            if self.exit.is_some() {
                self.finish().await;
                return;
            }
            tokio::select! {
                biased;
                message = self.control.recv() => match message {
                    // The resource only changes what is sent; nothing to
                    // export for it (a round now would split a batch).
                    Some(Control::Resource(resource)) => {
                        self.exporter.set_resource(&resource);
                        continue;
                    }
                    Some(message) => self.take(message),
                    // The processor is gone without a shutdown.
                    None => return,
                },
                () = self.shared.notify.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
            self.export_queued().await;
            for flushed in self.flushes.drain(..) {
                let _ = flushed.send(());
            }
            next = Instant::now() + self.config.schedule_delay;
        }
    }

    /// A flush or shutdown request, while exporting or not.
    fn take(&mut self, message: Control) {
        match message {
            // Only sent before the first span.
            Control::Resource(resource) => self.exporter.set_resource(&resource),
            Control::Flush(reply) => self.flushes.push(reply),
            Control::Shutdown { cutoff, reply } => self.exit = Some((Instant::from_std(cutoff), reply)),
        }
    }

    /// Exports the spans queued now, batch by batch. Spans that arrive
    /// meanwhile wait for the next round, so that a steady stream cannot
    /// keep this loop from hearing a shutdown.
    async fn export_queued(&mut self) {
        let mut left = self.shared.queued.load(Ordering::Acquire);
        while left > 0 && self.exit.is_none() {
            let taken = self.fill(left.min(self.config.max_export_batch_size));
            if taken == 0 {
                break;
            }
            left = left.saturating_sub(taken);
            self.export_batch().await;
        }
    }

    /// Takes up to `max` spans from the queue into the batch.
    fn fill(&mut self, max: usize) -> usize {
        self.shared.wake_sent.store(false, Ordering::Release);
        while self.batch.len() < max {
            match self.spans.try_recv() {
                Ok(span) => self.batch.push(span),
                Err(_) => break,
            }
        }
        self.shared.queued.fetch_sub(self.batch.len(), Ordering::AcqRel);
        self.batch.len()
    }

    /// Exports the batch and counts its spans. A shutdown that arrives
    /// meanwhile cuts the export (retries included) off at its deadline.
    async fn export_batch(&mut self) {
        let spans = u64::try_from(self.batch.len()).unwrap_or(u64::MAX);
        let delivery = {
            let export = self.exporter.export(&self.batch, self.exit.as_ref().map(|exit| exit.0));
            tokio::pin!(export);
            loop {
                let cutoff = self.exit.as_ref().map(|exit| exit.0);
                tokio::select! {
                    biased;
                    delivery = &mut export => break Some(delivery),
                    Some(message) = self.control.recv(), if cutoff.is_none() => match message {
                        // Only sent before the first span; nothing to do mid-export.
                        Control::Resource(_) => {}
                        Control::Flush(reply) => self.flushes.push(reply),
                        Control::Shutdown { cutoff, reply } => self.exit = Some((Instant::from_std(cutoff), reply)),
                    },
                    () = tokio::time::sleep_until(cutoff.unwrap_or_else(Instant::now)), if cutoff.is_some() => break None,
                }
            }
        };
        let exiting = self.exit.is_some();
        match delivery {
            Some(Delivery::Accepted { rejected, message }) => {
                let rejected = rejected.min(spans);
                self.counters.exported.inc_by(spans - rejected);
                if rejected > 0 {
                    self.counters.rejected.inc_by(rejected);
                    if let Some(unlogged) = self.rejections.allow(Instant::now(), rejected) {
                        warn!(
                            rejected,
                            spans,
                            // Not `message`: the JSON log line's own key.
                            detail = message,
                            rejected_unlogged = unlogged,
                            "the collector rejected spans of an accepted batch (partial_success); they are dropped"
                        );
                    }
                }
            }
            Some(Delivery::Failed { status, message, attempts }) => {
                self.counters.export_failed.inc_by(spans);
                if exiting {
                    self.unsent += spans;
                }
                warn!(spans, status, detail = message, attempts, "span export failed; spans dropped");
            }
            None => {
                self.counters.export_failed.inc_by(spans);
                self.unsent += spans;
                warn!(spans, "span export cut off by the exit's flush timeout; spans dropped");
            }
        }
        self.batch.clear();
    }

    /// At shutdown: exports what is queued until the cut-off, counts what
    /// is left, and answers.
    async fn finish(&mut self) {
        let Some(cutoff) = self.exit.as_ref().map(|exit| exit.0) else { return };
        while Instant::now() < cutoff && self.fill(self.config.max_export_batch_size) > 0 {
            self.export_batch().await;
        }
        let mut left = 0u64;
        while self.spans.try_recv().is_ok() {
            left += 1;
        }
        self.counters.export_failed.inc_by(left);
        self.unsent += left;
        for flushed in self.flushes.drain(..) {
            let _ = flushed.send(());
        }
        if let Some((_, reply)) = self.exit.take() {
            let _ = reply.send(self.unsent);
        }
    }
}

/// Rate limit for the rejected-spans warning: the first, then at most one
/// per [`REJECTION_LOG_INTERVAL`], each saying how many went unlogged.
#[derive(Debug, Default)]
struct RejectionLog {
    next: Option<Instant>,
    unlogged: u64,
}

impl RejectionLog {
    /// `Some(rejected spans not logged since the last line)` if this one
    /// may be logged.
    fn allow(&mut self, now: Instant, rejected: u64) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.unlogged += rejected;
            return None;
        }
        self.next = Some(now + REJECTION_LOG_INTERVAL);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rejection_warnings_are_rate_limited() {
        let mut log = RejectionLog::default();
        let start = Instant::now();
        assert_eq!(log.allow(start, 3), Some(0));
        assert_eq!(log.allow(start + Duration::from_secs(1), 4), None);
        assert_eq!(log.allow(start + Duration::from_secs(59), 5), None);
        assert_eq!(log.allow(start + Duration::from_secs(60), 1), Some(9));
        assert_eq!(log.allow(start + Duration::from_secs(61), 1), None);
    }
}
