//! The drain: one owner for how outrider stops serving.
//!
//! The sequence ([`Shutdown`]) owns the write side of everything below and
//! is the only thing that moves it; the rest of the process holds read
//! sides:
//!
//! * [`Phase`], through a [`Watch`]: each listener stops accepting at
//!   [`Phase::Close`], each connection drains itself as the phase moves and
//!   is closed at [`Phase::Cut`], the admin listener's `/readyz` fails from
//!   [`Phase::Drain`] on, the hold layer lets held requests go then, and
//!   upgraded tunnels close at the cut.
//! * The connection tracker, also in the [`Watch`]: every connection task
//!   and every tunnel is spawned on it, so the sequence knows when the
//!   drain is done and how many it cut.
//! * The triggers: OS signals come in as an injected [`SignalStream`]
//!   (tests send their own), `POST /drain` through a [`Trigger`].
//!
//! See [`Shutdown::run`] for the sequence itself.

mod sequence;

pub use sequence::{App, DrainPlan, Shutdown, SignalStream, os_signals};

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Where the process is in its shutdown sequence. Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation.
    Serve,
    /// Readiness fails; keep accepting, but close each connection after its
    /// current request.
    Drain,
    /// Stop accepting; open connections finish what they have in flight.
    Close,
    /// The drain timeout: every connection still open is closed now.
    Cut,
}

/// The read side of the drain: what a listener, a connection, a tunnel or
/// a probe needs to follow it. Cheap to clone (once per connection, never
/// per request).
#[derive(Clone)]
pub struct Watch {
    phase: watch::Receiver<Phase>,
    /// `phase >= Drain`, readable without the watch's lock: every HTTP/1
    /// response looks at it. Process-lifetime, so readers hold no count.
    draining: &'static AtomicBool,
    connections: TaskTracker,
}

impl Watch {
    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether the drain has started; one relaxed load.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The flag behind [`Self::is_draining`], for code that keeps it per
    /// connection rather than a whole `Watch`.
    pub fn draining_flag(&self) -> &'static AtomicBool {
        self.draining
    }

    /// Resolves once the phase is at least `target`. If the sequence is
    /// gone the process is exiting: that counts as reached.
    pub async fn reached(&mut self, target: Phase) {
        let _ = self.phase.wait_for(|p| *p >= target).await;
    }

    /// The phase alone, for a connection task to keep.
    pub fn phases(&self) -> Phases {
        Phases(self.phase.clone())
    }

    /// Where connection tasks and tunnels are spawned, so the drain waits
    /// for them and the cut can count them.
    pub fn connections(&self) -> &TaskTracker {
        &self.connections
    }

    /// A watch no drain ever moves, with a tracker of its own: for the
    /// admin listener, whose probes must keep answering (with 503) until
    /// the process exits.
    pub fn detached() -> Self {
        let (tx, phase) = watch::channel(Phase::Serve);
        // The sender must outlive every receiver, or `reached` would fire;
        // a detached watch lives as long as the process.
        std::mem::forget(tx);
        Self { phase, draining: Box::leak(Box::new(AtomicBool::new(false))), connections: TaskTracker::new() }
    }
}

/// Only the phase: what each connection task keeps. A task is as large as
/// everything it holds across an await, for every open connection; the
/// whole [`Watch`] there took 10 000 idle connections from 53 to 57 MiB
/// (4.6 to 5.0 KiB each: an allocator size class up).
pub struct Phases(watch::Receiver<Phase>);

impl Phases {
    /// As [`Watch::reached`].
    pub async fn reached(&mut self, target: Phase) {
        let _ = self.0.wait_for(|p| *p >= target).await;
    }
}

/// The write side, held by the sequence only.
struct Drain {
    phase: watch::Sender<Phase>,
    draining: &'static AtomicBool,
    connections: TaskTracker,
}

impl Drain {
    fn new() -> (Self, Watch) {
        let (tx, phase) = watch::channel(Phase::Serve);
        let draining: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let connections = TaskTracker::new();
        (Self { phase: tx, draining, connections: connections.clone() }, Watch { phase, draining, connections })
    }

    /// Moves the phase forward (never back) and, from `Drain` on, sets the
    /// flag before any watcher wakes.
    fn advance(&self, to: Phase) {
        if to >= Phase::Drain {
            self.draining.store(true, Ordering::Relaxed);
        }
        if to >= Phase::Close {
            self.connections.close();
        }
        self.phase.send_if_modified(|phase| {
            let moved = to > *phase;
            if moved {
                *phase = to;
            }
            moved
        });
    }
}

/// The `/drain` endpoint's handle on the sequence (and a test's).
#[derive(Clone)]
pub struct Trigger {
    request: std::sync::Arc<watch::Sender<bool>>,
    drained: watch::Receiver<bool>,
}

impl Trigger {
    /// Asks for a drain; joins the one already asked for if there is one.
    /// True for the call that asked first.
    pub fn request(&self) -> bool {
        self.request.send_if_modified(|requested| !std::mem::replace(requested, true))
    }

    /// Resolves once in-flight requests are done (or were cut).
    pub async fn drained(&mut self) {
        let _ = self.drained.wait_for(|d| *d).await;
    }
}

/// A drain moved by hand: the test handle, for in-process tests of what
/// follows the drain (the hold layer, tunnels, connections).
pub struct Manual(Drain);

impl Manual {
    pub fn new() -> (Self, Watch) {
        let (drain, watch) = Drain::new();
        (Self(drain), watch)
    }

    /// Moves the phase forward to `to`, as the sequence would.
    pub fn advance(&self, to: Phase) {
        self.0.advance(to);
    }
}
