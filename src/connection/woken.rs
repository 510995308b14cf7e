//! A future that is polled again only after it asked to be woken.
//!
//! A connection waits on the server's events (a reload, the drain) beside every frame it reads. Those waits are
//! `watch` receivers: polling one that has nothing new still locks its channel's waiter list to check the
//! waker, and the connection's loop polls them each time it runs, twice per command. [`Woken`] polls its future
//! with a waker of its own, which notes the wake-up before passing it to the task; until that happens, a poll
//! answers `Pending` at the cost of an uncontended lock (to keep the task's waker current) and one atomic swap.
//!
//! It must never drop a wake-up: the note is set before the task is woken, and cleared before the future is
//! polled, so a wake-up that comes during that poll leaves the note set for the next one. The task's waker is
//! refreshed whenever the caller's changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// `F`, polled only when its waker was used since its last poll (and on the first poll).
pub(super) struct Woken<F> {
    future: Pin<Box<F>>,
    note: Arc<Note>,
    /// The note as a waker, made once.
    waker: Waker,
}

/// What the inner future's waker does: note the wake-up, then wake the task that polled last.
struct Note {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Note {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> Woken<F> {
    pub(super) fn new(future: F) -> Self {
        let note = Arc::new(Note { woken: AtomicBool::new(true), task: Mutex::new(None) });
        let waker = Waker::from(note.clone());
        Self { future: Box::pin(future), note, waker }
    }

    /// Replaces the future (the next wait after one ended); it is polled at the next poll.
    pub(super) fn set(&mut self, future: F) {
        self.future.set(future);
        self.note.woken.store(true, Ordering::Release);
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut task = this.note.task.lock().unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if !this.note.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.future.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, and wakes through the waker of its last poll when told.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// Counts the wake-ups of the task.
    struct Task(AtomicUsize);
    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_future_is_polled_first_and_then_only_after_it_woke_the_task() {
        let (polls, ready, inner) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)), Arc::default());
        let mut woken = Woken::new(Probe { polls: polls.clone(), ready: ready.clone(), waker: Arc::clone(&inner) });
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "the first poll reaches the future");
        for _ in 0..5 {
            assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polls without a wake-up do not reach it");
        // The future's event: it wakes through the waker it was given, which wakes the task.
        ready.store(true, Ordering::SeqCst);
        inner.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was not woken");
        assert!(Pin::new(&mut woken).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_wake_up_reaches_the_task_that_polled_last_and_a_replaced_future_is_polled() {
        let (polls, ready, inner) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)), Arc::default());
        let probe =
            |polls: &Arc<AtomicUsize>| Probe { polls: polls.clone(), ready: ready.clone(), waker: Arc::clone(&inner) };
        let mut woken = Woken::new(probe(&polls));
        let (first, second) = (Arc::new(Task(AtomicUsize::new(0))), Arc::new(Task(AtomicUsize::new(0))));
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        assert!(Pin::new(&mut woken).poll(&mut Context::from_waker(&w1)).is_pending());
        // Polled again from another task before the event: that one is woken.
        assert!(Pin::new(&mut woken).poll(&mut Context::from_waker(&w2)).is_pending());
        inner.lock().unwrap().take().unwrap().wake();
        assert_eq!((first.0.load(Ordering::SeqCst), second.0.load(Ordering::SeqCst)), (0, 1));
        // A new future is polled at once, though nothing woke it.
        let fresh = Arc::new(AtomicUsize::new(0));
        assert!(Pin::new(&mut woken).poll(&mut Context::from_waker(&w2)).is_pending());
        woken.set(probe(&fresh));
        assert!(Pin::new(&mut woken).poll(&mut Context::from_waker(&w2)).is_pending());
        assert_eq!(fresh.load(Ordering::SeqCst), 1);
    }
}
