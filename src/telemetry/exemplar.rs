//! The latest exemplar of one histogram bucket: the trace and span of a
//! sampled request that fell in it, its duration and when it ended.
//!
//! Written on the request path, read by the scrape, and neither ever waits:
//! a seqlock made of atomics. A writer claims the slot by moving its
//! sequence number from even to odd with one compare-and-swap; a writer
//! that finds it odd, or loses the race, skips (the slot then holds the
//! other request's exemplar, just as recent). It stores the words and makes
//! the number even again. A reader keeps what it read only if the number
//! was even and unchanged around its reads, so it can never return one
//! request's trace id with another's span id, or halves of two trace ids: a
//! torn id would link the latency to the wrong trace, which is worse than
//! no link.
//!
//! Cost of a write: one load, one compare-and-swap, five relaxed stores and
//! one release store (on x86 the fences compile to nothing). No lock, no
//! allocation, no system call. The timestamp comes from the [`WallClock`],
//! not a clock read of its own.

use std::{
    sync::atomic::{AtomicU64, Ordering, fence},
    time::{Instant, SystemTime},
};

/// One exemplar, as it is exposed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The observed value (a duration in seconds).
    pub value: f64,
    /// Wall-clock time it was recorded, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A reader that keeps meeting writes gives up after this many tries: the
/// scrape then goes without this one exemplar rather than spin.
const READ_ATTEMPTS: usize = 8;

/// Storage for one bucket's latest exemplar.
#[derive(Debug, Default)]
pub struct Slot {
    /// Even: stable (0: never written); odd: a write is under way.
    seq: AtomicU64,
    words: [AtomicU64; 5],
}

impl Slot {
    /// Stores `exemplar`, unless another request is storing one right now
    /// (then it is skipped, and false returned).
    pub fn record(&self, exemplar: &Exemplar) -> bool {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 || self.seq.compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return false;
        }
        // The words below cannot be seen before the odd number: a reader
        // that reads any of them sees the number change.
        fence(Ordering::Release);
        for (word, value) in self.words.iter().zip(to_words(exemplar)) {
            word.store(value, Ordering::Relaxed);
        }
        self.seq.store(seq + 2, Ordering::Release);
        true
    }

    /// The latest exemplar, whole; `None` if there is none yet (or writes
    /// kept overlapping the read).
    pub fn read(&self) -> Option<Exemplar> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.seq.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let words = self.words.each_ref().map(|w| w.load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(from_words(words));
            }
        }
        None
    }
}

/// Wall-clock milliseconds for an `Instant` the request path has already
/// read (the one its duration ends at), instead of a wall-clock read per
/// exemplar: that read measured 35–38 ns, twice the whole slot write
/// (15–20 ns with its bucket search), here. The offset between the two
/// clocks is taken again at every scrape, so NTP's slewing of the wall
/// clock (at most 500 ppm: 7.5 ms over a 15 s scrape interval) or a step
/// reaches the timestamps by the next scrape.
#[derive(Debug)]
pub struct WallClock {
    base: Instant,
    /// Wall-clock milliseconds at `base`.
    offset_ms: AtomicU64,
}

impl WallClock {
    pub fn new() -> Self {
        let clock = Self { base: Instant::now(), offset_ms: AtomicU64::new(0) };
        clock.resync();
        clock
    }

    /// Takes the offset between the wall clock and the monotonic one again.
    pub fn resync(&self) {
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let wall = wall.saturating_sub(self.base.elapsed());
        self.offset_ms.store(u64::try_from(wall.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Milliseconds since the Unix epoch at `at`.
    pub fn millis(&self, at: Instant) -> u64 {
        let since = u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.load(Ordering::Relaxed).saturating_add(since)
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

fn to_words(e: &Exemplar) -> [u64; 5] {
    let trace_id = u128::from_be_bytes(e.trace_id);
    [(trace_id >> 64) as u64, trace_id as u64, u64::from_be_bytes(e.span_id), e.value.to_bits(), e.timestamp_ms]
}

fn from_words([high, low, span, value, timestamp_ms]: [u64; 5]) -> Exemplar {
    let trace_id = ((u128::from(high) << 64) | u128::from(low)).to_be_bytes();
    Exemplar { trace_id, span_id: span.to_be_bytes(), value: f64::from_bits(value), timestamp_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_slot_has_none_and_a_written_one_the_latest() {
        let slot = Slot::default();
        assert_eq!(slot.read(), None);
        let first = Exemplar { trace_id: [1; 16], span_id: [2; 8], value: 0.25, timestamp_ms: 1_700_000_000_123 };
        assert!(slot.record(&first));
        assert_eq!(slot.read(), Some(first));
        let second = Exemplar { trace_id: *b"0123456789abcdef", span_id: *b"ABCDEFGH", value: 3.5, timestamp_ms: 1_700_000_001_000 };
        assert!(slot.record(&second));
        assert_eq!(slot.read(), Some(second));
    }

    #[test]
    fn the_wall_clock_follows_the_monotonic_one() {
        let clock = WallClock::new();
        let wall = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
        let before = wall(SystemTime::now());
        let now = clock.millis(Instant::now());
        let after = wall(SystemTime::now());
        // Milliseconds truncated twice: one either side at most.
        assert!(before.saturating_sub(1) <= now && now <= after + 1, "{before} <= {now} <= {after}");
        let later = Instant::now() + std::time::Duration::from_secs(5);
        assert!((clock.millis(later) - now).abs_diff(5000) <= 1);
    }

    /// Writers on several threads each store exemplars whose every byte
    /// and value say which write they came from; a reader racing them must
    /// only ever see whole ones.
    #[test]
    fn concurrent_writes_never_read_torn() {
        let slot = Slot::default();
        let whole = |b: u8| Exemplar { trace_id: [b; 16], span_id: [b; 8], value: f64::from(b), timestamp_ms: u64::from(b) };
        slot.record(&whole(0));
        let stop = std::sync::atomic::AtomicBool::new(false);
        /// Stops the writers however the reader ends, a failed assertion
        /// included (the scope would otherwise wait for them forever).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            for t in 0u8..3 {
                let (slot, stop) = (&slot, &stop);
                s.spawn(move || {
                    let mut i: u8 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        slot.record(&whole(t.wrapping_mul(80).wrapping_add(i % 80)));
                        i = i.wrapping_add(1);
                        // Requests end now and then, not back to back: a
                        // reader on a busy machine still gets its turns.
                        std::thread::yield_now();
                    }
                });
            }
            let _stop = Stop(&stop);
            let (mut seen, mut distinct) = (0, std::collections::BTreeSet::new());
            for _ in 0..100_000_000 {
                if let Some(e) = slot.read() {
                    let b = e.trace_id[0];
                    assert_eq!(e, whole(b), "torn");
                    distinct.insert(b);
                    seen += 1;
                    if seen >= 100_000 && distinct.len() > 10 {
                        break;
                    }
                }
            }
            assert!(distinct.len() > 10, "the reader met too few writes to test anything: {seen} reads, {} values", distinct.len());
        });
    }
}
