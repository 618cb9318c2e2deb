//! The shutdown sequence.
//!
//! * SIGTERM (Kubernetes' way to start a graceful shutdown), SIGINT, and a
//!   call to the admin `/drain` endpoint start the drain: readiness fails at
//!   once; for `drain_delay` new connections are still accepted (endpoint
//!   removal is still propagating) but served without keep-alive; then the
//!   listener closes and in-flight requests may finish until
//!   `drain_timeout` after the signal. What is still open then is cut. Only
//!   then does the app get SIGTERM, and SIGKILL after `app_stop_timeout`.
//! * A second SIGTERM/SIGINT skips whatever wait is running and stops now.
//! * SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH go to the app as they are.
//! * The app exiting on its own ends outrider with the app's exit code.
//! * Pod mode: there is no child; an app found through a shared process
//!   namespace is stopped the same way. After a drain asked for through
//!   `/drain` (the app container's preStop hook), outrider keeps running,
//!   not ready, until its own SIGTERM: as a native sidecar it would
//!   otherwise be restarted by the kubelet.

use std::{future::Future, io, time::Duration};

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook_tokio::Signals;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Drain, Phase, Trigger, Watch};
use crate::supervisor::{External, Supervisor};

/// The app whose stop the drain ends with.
pub enum App {
    /// Pod mode, nothing to stop.
    None,
    /// Wrap mode: our child.
    Child(Supervisor),
    /// Pod mode with a shared process namespace.
    External(External),
}

impl App {
    fn child(&self) -> Option<&Supervisor> {
        match self {
            Self::Child(child) => Some(child),
            _ => None,
        }
    }
}

/// Timings of the drain.
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    /// Keep accepting for this long after the signal.
    pub delay: Duration,
    /// The whole drain, delay included, takes at most this long.
    pub timeout: Duration,
    /// Then give the app this long between SIGTERM and SIGKILL.
    pub app_stop_timeout: Duration,
}

/// The shutdown sequence: the only writer of the phase, the readiness
/// flip, the connection tracker's closing and the `/drain` answer.
pub struct Shutdown {
    /// The OS signals outrider handles, as raw numbers; a plain stream, so
    /// tests drive the sequence without real signals.
    signals: SignalStream,
    drain: Drain,
    plan: DrainPlan,
    /// Becomes true when `/drain` is called.
    drain_request: watch::Receiver<bool>,
    /// Set once in-flight requests are done, to answer `/drain`.
    drained: watch::Sender<bool>,
    /// Connections closed by the cut (`outrider_drain_cut_connections_total`).
    cut_connections: prometheus::IntCounter,
}

/// How long connection tasks get to end once cut: they only drop their
/// sockets, so this is a bound for a task that misbehaves, not a wait.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// How a wait ended.
enum Waited<T> {
    Done(T),
    /// A second SIGTERM/SIGINT: stop now.
    Interrupted,
}

/// Where signals come from: the OS's, or a test's.
pub type SignalStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = i32> + Send>>;

/// The OS signals the shutdown sequence handles. Register them before
/// spawning the app, so a signal that arrives during start-up is handled,
/// not fatal.
///
/// # Errors
/// The handlers cannot be installed.
pub fn os_signals() -> io::Result<SignalStream> {
    Ok(Box::pin(Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH])?))
}

impl Shutdown {
    /// The sequence, and the two handles on it the rest of the process
    /// gets: the [`Watch`] every listener, connection and tunnel follows,
    /// and the [`Trigger`] behind `/drain`.
    pub fn new(signals: SignalStream, plan: DrainPlan, cut_connections: prometheus::IntCounter) -> (Self, Watch, Trigger) {
        let (drain, watch) = Drain::new();
        let (request, drain_request) = watch::channel(false);
        let (drained, drained_rx) = watch::channel(false);
        let trigger = Trigger { request: std::sync::Arc::new(request), drained: drained_rx };
        (Self { signals, drain, plan, drain_request, drained, cut_connections }, watch, trigger)
    }

    /// Runs until outrider should exit, and returns the exit code: the
    /// app's own in wrap mode, 0 in pod mode after a drain.
    pub async fn run(mut self, app: App) -> i32 {
        let child = app.child();
        // Normal operation: wait for a reason to stop.
        let mut drain_request = self.drain_request.clone();
        let requested = async move {
            // A dropped sender means the admin server is gone: never fires.
            if drain_request.wait_for(|r| *r).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let by_request = match self.wait(child, race_app(requested, child)).await {
            Waited::Done(()) => match child.and_then(Supervisor::exit_code) {
                Some(code) => {
                    // The app is gone, so nothing more can be served.
                    info!(exit_code = code, "app exited on its own; stopping");
                    self.close_now();
                    return code;
                }
                None => true,
            },
            Waited::Interrupted => false,
        };
        let plan = self.plan;
        info!(
            trigger = if by_request { "/drain" } else { "signal" },
            drain_delay = ?plan.delay,
            drain_timeout = ?plan.timeout,
            app_stop_timeout = ?plan.app_stop_timeout,
            "drain started: readiness now fails; accepting new connections for drain_delay, \
             then waiting for in-flight requests, then stopping the app"
        );
        self.drain.advance(Phase::Drain);
        let deadline = tokio::time::Instant::now() + plan.timeout;

        // 1. Endpoint removal is propagating: keep serving.
        let delay = tokio::time::sleep(plan.delay);
        if let Waited::Interrupted = self.wait(child, race_app(delay, child)).await {
            return self.fast_stop(&app).await;
        }

        // 2. Stop accepting; let in-flight requests finish.
        self.drain.advance(Phase::Close);
        let connections = self.drain.connections.clone();
        let drained = tokio::time::timeout_at(deadline, connections.wait());
        match self.wait(child, drained).await {
            Waited::Done(Ok(())) => info!("all connections drained"),
            Waited::Done(Err(_)) => self.cut("drain timeout reached with connections still open; closing them").await,
            Waited::Interrupted => return self.fast_stop(&app).await,
        }
        self.drained.send_replace(true);

        // 3. Only now does the app hear about it.
        if by_request && matches!(app, App::None) {
            info!("drained; waiting for SIGTERM to exit");
            let _ = self.wait(None, std::future::pending::<()>()).await;
        }
        self.stop_app(&app).await
    }

    /// Waits for `fut`, forwarding pass-through signals to the app meanwhile.
    async fn wait<F: Future>(&mut self, app: Option<&Supervisor>, fut: F) -> Waited<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Waited::Done(out),
                signal = self.signals.next() => match signal {
                    Some(SIGTERM | SIGINT) => return Waited::Interrupted,
                    Some(raw) => match (app, Signal::try_from(raw)) {
                        (Some(app), Ok(signal)) => app.signal(signal),
                        (None, Ok(signal)) => info!(%signal, "ignoring signal: no app to forward it to"),
                        (_, Err(_)) => {}
                    },
                    // The signal stream never ends while we hold it.
                    None => return Waited::Interrupted,
                },
            }
        }
    }

    /// A second signal during the drain: close everything and stop the app.
    async fn fast_stop(&mut self, app: &App) -> i32 {
        warn!("shutdown signal during the drain: skipping the rest of it");
        self.close_now();
        self.cut("closing the connections still open").await;
        self.drained.send_replace(true);
        self.stop_app(app).await
    }

    /// Stops whatever app there is; returns the exit code to report.
    async fn stop_app(&mut self, app: &App) -> i32 {
        match app {
            App::Child(child) => self.stop_child(child).await,
            App::External(external) => {
                external.stop(self.plan.app_stop_timeout).await;
                0
            }
            App::None => 0,
        }
    }

    /// Closes every connection still open, and waits (briefly) for their
    /// tasks to end, so the app is stopped only after they are gone.
    async fn cut(&mut self, why: &'static str) {
        let connections = self.drain.connections.clone();
        let remaining = connections.len();
        if remaining > 0 {
            warn!(remaining, "{why}");
            self.cut_connections.inc_by(remaining as u64);
        }
        // Connections and tunnels watch the phase.
        self.drain.advance(Phase::Cut);
        // Both callers closed the tracker already (the listener is shut).
        if tokio::time::timeout(CUT_GRACE, connections.wait()).await.is_err() {
            warn!(remaining = connections.len(), "connection tasks still running after the cut");
        }
    }

    fn close_now(&self) {
        self.drain.advance(Phase::Close);
    }

    /// SIGTERM, then SIGKILL after the stop timeout (or a further signal).
    async fn stop_child(&mut self, app: &Supervisor) -> i32 {
        if let Some(code) = app.exit_code() {
            return code;
        }
        info!(pid = app.pid(), timeout = ?self.plan.app_stop_timeout, "sending SIGTERM to app");
        app.signal(Signal::SIGTERM);
        let stopped = tokio::time::timeout(self.plan.app_stop_timeout, app.exited());
        match self.wait(Some(app), stopped).await {
            Waited::Done(Ok(code)) => return code,
            Waited::Done(Err(_)) => warn!(pid = app.pid(), "app did not stop in time; sending SIGKILL"),
            Waited::Interrupted => warn!(pid = app.pid(), "another shutdown signal; sending SIGKILL to app"),
        }
        app.signal(Signal::SIGKILL);
        app.exited().await
    }
}

/// Resolves with the child's exit code, or never in pod mode.
async fn app_exit(app: Option<&Supervisor>) -> i32 {
    match app {
        Some(app) => app.exited().await,
        None => std::future::pending().await,
    }
}

/// Waits for `fut`, but stops early if the app exits: there is nothing
/// left to keep serving for.
async fn race_app<F: Future<Output = ()>>(fut: F, app: Option<&Supervisor>) {
    tokio::select! {
        () = fut => {}
        _ = app_exit(app) => {}
    }
}

#[cfg(test)]
mod tests {
    //! The shutdown sequence in-process, under paused time, with signals
    //! sent down a channel. Pod mode: there is no app to stop, so what is
    //! left to see is the phases, the tokens, the count of cut connections,
    //! and when `run` returns.

    use tokio::{task::JoinHandle, time::Instant};

    use super::*;

    const PLAN: DrainPlan =
        DrainPlan { delay: Duration::from_secs(5), timeout: Duration::from_secs(20), app_stop_timeout: Duration::from_secs(10) };

    /// Far past any deadline of the plan: under paused time a sequence that
    /// is stuck fails here instead of hanging the test.
    const STUCK: Duration = Duration::from_secs(24 * 3600);

    async fn finishes(run: JoinHandle<i32>) -> i32 {
        tokio::time::timeout(STUCK, run).await.expect("the sequence never ended").expect("the sequence panicked")
    }

    struct Harness {
        signals: tokio::sync::mpsc::UnboundedSender<i32>,
        watch: Watch,
        trigger: Trigger,
        cut_connections: prometheus::IntCounter,
        run: JoinHandle<i32>,
    }

    fn start() -> Harness {
        let (signals, rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|signal| (signal, rx)) });
        let cut_connections = prometheus::IntCounter::new("cut", "cut").expect("a valid counter");
        let (shutdown, watch, trigger) = Shutdown::new(Box::pin(stream), PLAN, cut_connections.clone());
        let run = tokio::spawn(shutdown.run(App::None));
        Harness { signals, watch, trigger, cut_connections, run }
    }

    impl Harness {
        fn signal(&self, signal: i32) {
            self.signals.send(signal).expect("the sequence is running");
        }

        /// A connection busy for `busy`, then done.
        fn connection_busy_for(&self, busy: Duration) {
            self.watch.connections().spawn(tokio::time::sleep(busy));
        }

        /// A connection that ends only when it is cut.
        fn connection_never_done(&self) {
            let mut watch = self.watch.clone();
            self.watch.connections().spawn(async move { watch.reached(Phase::Cut).await });
        }

        async fn phase_reaches(&mut self, phase: Phase) {
            tokio::time::timeout(STUCK, self.watch.reached(phase)).await.expect("the phase never came");
        }

        async fn drained(&mut self) {
            tokio::time::timeout(STUCK, self.trigger.drained()).await.expect("never drained");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_drains_in_steps() {
        let mut h = start();
        h.connection_busy_for(Duration::from_secs(8));
        let t0 = Instant::now();
        h.signal(SIGTERM);
        h.phase_reaches(Phase::Drain).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "readiness must fail at once");
        assert!(h.watch.is_draining(), "held requests must be let go at the start of the drain");
        h.phase_reaches(Phase::Close).await;
        assert_eq!(t0.elapsed(), PLAN.delay, "the listener closes after the drain delay");
        assert_eq!(finishes(h.run).await, 0);
        assert_eq!(t0.elapsed(), Duration::from_secs(8), "the drain ends when the last connection does");
        assert_eq!(h.watch.phase(), Phase::Close, "nothing was cut");
        assert_eq!(h.cut_connections.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_timeout_cuts_what_is_still_open() {
        let h = start();
        h.connection_never_done();
        h.connection_never_done();
        h.connection_busy_for(Duration::from_secs(3));
        let t0 = Instant::now();
        h.signal(SIGTERM);
        assert_eq!(finishes(h.run).await, 0);
        assert_eq!(t0.elapsed(), PLAN.timeout, "the cut comes at the drain timeout, counted from the signal");
        assert_eq!(h.watch.phase(), Phase::Cut);
        assert_eq!(h.cut_connections.get(), 2, "the two connections still open were cut");
        assert!(h.watch.connections().is_empty(), "run returned before the cut connections ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_skips_the_rest() {
        let mut h = start();
        h.connection_never_done();
        let t0 = Instant::now();
        h.signal(SIGTERM);
        h.phase_reaches(Phase::Drain).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.signal(SIGINT);
        assert_eq!(finishes(h.run).await, 0);
        assert_eq!(t0.elapsed(), Duration::from_secs(1), "the second signal must not wait for the delay or the timeout");
        assert_eq!(h.watch.phase(), Phase::Cut);
        assert_eq!(h.cut_connections.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_endpoint_drains_then_waits_for_sigterm() {
        let mut h = start();
        h.connection_busy_for(Duration::from_secs(2));
        let t0 = Instant::now();
        assert!(h.trigger.request(), "the first call asks");
        h.drained().await;
        assert_eq!(t0.elapsed(), PLAN.delay, "/drain answers once the delay passed and the connections are done");
        assert_eq!(h.watch.phase(), Phase::Close);
        // A native sidecar that exited would be restarted: it waits for its
        // own SIGTERM, however long that takes.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!h.run.is_finished(), "outrider exited after /drain without its SIGTERM");
        h.signal(SIGTERM);
        assert_eq!(finishes(h.run).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_endpoint_joins_a_drain_a_signal_started() {
        let mut h = start();
        let t0 = Instant::now();
        h.signal(SIGTERM);
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.trigger.request();
        h.drained().await;
        assert_eq!(t0.elapsed(), PLAN.delay, "the /drain call must not restart the delay");
        assert_eq!(finishes(h.run).await, 0);
        assert_eq!(t0.elapsed(), PLAN.delay, "a signal-started drain exits once drained");
    }
}
