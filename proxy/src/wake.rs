//! [`OnWake`]: a future polled only after its own waker fired.
//!
//! A client connection's task waits on its hyper connection and, beside it, on the shutdown
//! phases and its timer. `select!` polls every branch each time the task is woken, which is
//! several times per request, and polling a pending `watch` wait takes the channel's shared
//! lock (shared with every other connection of every worker). Wrapped in [`OnWake`], a branch
//! costs two atomic operations when it was not the one that woke the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Set when the inner future's waker fires; wakes the task that polled the [`OnWake`].
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Polls `inner` on the first poll, after `inner`'s waker fired, and after [`OnWake::get_mut`];
/// otherwise answers `Pending` without touching it. Correct for any future: a pending future
/// has promised to wake its waker when it can make progress.
pub(crate) struct OnWake<F> {
    inner: F,
    flag: Arc<Flag>,
    waker: Waker,
}

impl<F> OnWake<F> {
    pub(crate) fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        OnWake { inner, flag, waker }
    }

    /// The inner future, e.g. to reset a timer; it is polled again on the next poll.
    pub(crate) fn get_mut(&mut self) -> &mut F {
        self.flag.woken.store(true, Ordering::Release);
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the flag is read: a wake in between is seen either way.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        Pin::new(&mut this.inner).poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Counts its polls; pending until `ready` is set (and its waker woken).
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polls_the_inner_future_only_after_its_waker_fired() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut wrapped = OnWake::new(Counted {
            polls: Arc::clone(&polls),
            ready: Arc::clone(&ready),
            waker: Arc::clone(&waker),
        });
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled without a wake");

        // The inner future becomes ready and wakes its waker: the task is woken and the next
        // poll reaches it.
        ready.store(true, Ordering::SeqCst);
        let task = tokio::spawn(wrapped);
        waker
            .lock()
            .unwrap()
            .take()
            .expect("waker registered")
            .wake();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woken task finished")
            .expect("task");
        assert!(polls.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_timer_is_polled_again() {
        let mut timer = OnWake::new(Box::pin(tokio::time::sleep(Duration::from_secs(3600))));
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        assert!(Pin::new(&mut timer).poll(&mut cx).is_pending());
        let soon = tokio::time::Instant::now() + Duration::from_secs(1);
        timer.get_mut().as_mut().reset(soon);
        tokio::time::timeout(Duration::from_secs(2), &mut timer)
            .await
            .expect("the reset deadline fired");
    }
}
