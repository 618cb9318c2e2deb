//! A future polled only when it was the one that woke its task.
//!
//! `select!` polls every branch on every wake-up. A connection's task wakes
//! a few times per request for its sockets, and each time a watch or a
//! cancellation token (each a lock and a version check; the phase watch
//! alone was about 1.8 % of a request's instructions) or the idle timer
//! would be polled for nothing: the phase changes twice in the process's
//! life, the timer fires at most once a second while the connection is
//! busy.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

pin_project_lite::pin_project! {
    /// Polls the inner future only when it was the one that woke the task
    /// (and on the first poll).
    pub struct Gated<F> {
        #[pin]
        inner: F,
        gate: Arc<Gate>,
    }
}

struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Gated<F> {
    pub fn new(inner: F) -> Self {
        Self { inner, gate: Arc::new(Gate { woken: AtomicBool::new(true), task: AtomicWaker::new() }) }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the check: a wake-up in between is not lost.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(this.gate.clone());
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}
