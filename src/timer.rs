//! A timer a connection keeps from one wait to the next, armed lazily: [`LazyTimer`].
//!
//! This module owns only the timer. It must never report an instant as passed before it is, nor let a wait run
//! past it: the timer may fire early (it is armed for an earlier wait), never late (beyond the millisecond to
//! which tokio rounds every timer).
//!
//! Why kept rather than made for each wait: registering a timer with tokio's wheel and removing it again costs a
//! lock and a wheel update each. A connection waits for the same kind of thing over and over (its commands'
//! replies, or their turn at the tenant's in-flight cap), each time for the same length, so each deadline is
//! later than the last. The timer is left armed at an earlier wait's deadline, and when it fires before the
//! current wait is due it is armed again at that wait's deadline. It is armed anew at once only for a wait due
//! earlier than it would fire. A connection that stops waiting is woken once when the timer fires, and finds
//! nothing to do.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A timer armed at or before the deadline of the wait in progress.
pub struct LazyTimer {
    /// Boxed so that it stays where it is (a timer's registration is pinned) while its owner moves.
    sleep: Pin<Box<Sleep>>,
    /// When `sleep` fires.
    at: Instant,
}

impl LazyTimer {
    /// A timer for a first wait due at `at`.
    pub fn new(at: Instant) -> Self {
        Self { sleep: Box::pin(tokio::time::sleep_until(at)), at }
    }

    /// Makes the timer fire at or before `deadline`: armed again only when it would fire after it, or has fired
    /// already.
    pub fn arm(&mut self, deadline: Instant) {
        if self.at > deadline || self.sleep.is_elapsed() {
            self.reset(deadline);
        }
    }

    fn reset(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.at = at;
    }

    /// Ready once `deadline` has passed, to poll beside the wait. When the timer fires before the deadline (it
    /// was armed for an earlier wait), it is armed again at the deadline and the wait goes on.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.reset(deadline);
        }
    }

    /// When the timer fires as armed now.
    #[cfg(test)]
    pub fn armed_at(&self) -> Instant {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn after(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    /// Polls `timer` beside nothing until it tells `deadline` passed; when that was.
    async fn expiry(timer: &mut LazyTimer, deadline: Instant) -> Instant {
        std::future::poll_fn(|cx| timer.poll_until(cx, deadline)).await;
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_fires_for_each_wait_at_its_own_deadline_never_later_and_never_before() {
        let first = after(1_000);
        let mut timer = LazyTimer::new(first);
        // A later wait is due later: the timer is left where it is, fires early, and waits on.
        tokio::time::advance(Duration::from_millis(10)).await;
        let later = after(5_000);
        timer.arm(later);
        assert_eq!(timer.armed_at(), first);
        assert_eq!(expiry(&mut timer, later).await, later);
        // A wait due sooner than the timer would fire is armed for at once.
        let far = after(60_000);
        timer.arm(far);
        let soon = after(100);
        timer.arm(soon);
        assert_eq!(timer.armed_at(), soon);
        assert_eq!(expiry(&mut timer, soon).await, soon);
        // A timer that fired (its owner was idle past it) is armed again for the next wait.
        tokio::time::advance(Duration::from_secs(120)).await;
        let next = after(2_000);
        timer.arm(next);
        assert_eq!(expiry(&mut timer, next).await, next);
        // A timer never polled is not registered, so past its instant it has not "fired": the first poll fires
        // it and it is armed again, at the wait's deadline.
        let mut timer = LazyTimer::new(after(10));
        tokio::time::advance(Duration::from_secs(1)).await;
        let next = after(2_000);
        timer.arm(next);
        assert_eq!(expiry(&mut timer, next).await, next);
    }
}
