//! How long the backend has to answer a forwarded command, and the one timer a connection keeps for it.
//!
//! This module owns the deadline of each forwarded command ([`BackendDeadline`]) and the connection's timer
//! ([`BackendTimer`]). It must never let an operation run past its command's deadline, nor report a deadline as
//! passed before it is: the timer may fire early (it is armed for an earlier command), never late (beyond the
//! millisecond to which tokio rounds every timer).
//!
//! Why one timer kept across commands rather than one per command: registering a timer with tokio's wheel and
//! removing it again costs a lock and a wheel update each, on every command that waits for its reply (nearly
//! all). Commands on one connection follow each other closely, and with the same time allowed each deadline
//! is later than the last; so the timer is left armed at an earlier command's deadline, and when it fires
//! before the command in flight is due it is armed again at that command's deadline. It is armed anew at once
//! only for a command due earlier than it would fire (a shorter `maxTimeMS`). A connection that goes idle is
//! woken once when the timer fires, and finds nothing to do.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tenantwall_protocol::fields::Fields;
use tokio::time::{Instant, Sleep};

use crate::config::Limits;
use crate::error::ProxyError;

/// Extra time a command with `maxTimeMS` gets before the proxy gives up on the backend: the server counts only
/// its own execution, and its MaxTimeMSExpired should win whenever it comes.
const MAX_TIME_GRACE: Duration = Duration::from_secs(1);

/// When the backend must have answered a forwarded command.
pub(super) struct BackendDeadline {
    pub(super) at: Instant,
    /// Whether the deadline comes from the command's `maxTimeMS`.
    max_time: bool,
    allowed: Duration,
}

impl BackendDeadline {
    /// `limits.backend_timeout_ms`, or the command's own `maxTimeMS` (as forwarded, so after the tenant's cap)
    /// plus a grace period.
    pub(super) fn for_command(limits: &Limits, body: Fields<'_>) -> Self {
        let (allowed, max_time) = match max_time_ms(body) {
            Some(ms) => (Duration::from_millis(ms).saturating_add(MAX_TIME_GRACE), true),
            None => (limits.backend_timeout(), false),
        };
        Self { at: Instant::now() + allowed, max_time, allowed }
    }

    /// The error of an operation still unfinished at the deadline.
    pub(super) fn expired(&self) -> ProxyError {
        ProxyError::BackendTimeout {
            max_time: self.max_time,
            detail: format!("no reply from the backend within {} ms", self.allowed.as_millis()),
        }
    }
}

/// A positive `maxTimeMS`, whichever numeric type carries it (0 means no limit, as on the server).
fn max_time_ms(body: Fields<'_>) -> Option<u64> {
    use bson::RawBsonRef;
    let ms = match crate::engine::raw::get(body, "maxTimeMS").ok().flatten()? {
        RawBsonRef::Int32(v) => u64::try_from(v).ok()?,
        RawBsonRef::Int64(v) => u64::try_from(v).ok()?,
        // Saturating float-to-int conversion; NaN becomes 0 and is ignored.
        RawBsonRef::Double(v) if v >= 0.0 => v as u64,
        _ => return None,
    };
    (ms > 0).then_some(ms)
}

/// The connection's timer for backend deadlines: armed at or before the deadline of the command in flight.
pub(super) struct BackendTimer {
    /// Boxed so that it stays where it is (a timer's registration is pinned) while the connection moves.
    sleep: Pin<Box<Sleep>>,
    /// When `sleep` fires.
    at: Instant,
}

impl BackendTimer {
    /// A timer for a first command due at `at`.
    pub(super) fn new(at: Instant) -> Self {
        Self { sleep: Box::pin(tokio::time::sleep_until(at)), at }
    }

    /// Makes the timer fire at or before `deadline`: armed again only when it would fire after it, or has
    /// fired already.
    pub(super) fn arm(&mut self, deadline: &BackendDeadline) {
        if self.at > deadline.at || self.sleep.is_elapsed() {
            self.reset(deadline.at);
        }
    }

    fn reset(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.at = at;
    }

    /// Ready with the deadline's error once it has passed, to poll beside an operation (the connection's
    /// `within!`). When the timer fires before the deadline (it was armed for an earlier command), it is armed
    /// again at the deadline and the wait goes on: the operation beside it is never dropped for that.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: &BackendDeadline) -> Poll<ProxyError> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= deadline.at {
                return Poll::Ready(deadline.expired());
            }
            self.reset(deadline.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline(in_ms: u64) -> BackendDeadline {
        let allowed = Duration::from_millis(in_ms);
        BackendDeadline { at: Instant::now() + allowed, max_time: false, allowed }
    }

    /// Polls `timer` beside nothing until it tells the deadline passed; when that was.
    async fn expiry(timer: &mut BackendTimer, deadline: &BackendDeadline) -> Instant {
        std::future::poll_fn(|cx| timer.poll_expired(cx, deadline)).await;
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_fires_for_each_command_at_its_own_deadline_never_later_and_never_before() {
        let first = deadline(1_000);
        let mut timer = BackendTimer::new(first.at);
        // A later command is due later: the timer is left where it is, fires early, and waits on.
        tokio::time::advance(Duration::from_millis(10)).await;
        let later = deadline(5_000);
        timer.arm(&later);
        assert_eq!(timer.at, first.at);
        assert_eq!(expiry(&mut timer, &later).await, later.at);
        // A command due sooner than the timer would fire is armed for at once.
        let far = deadline(60_000);
        timer.arm(&far);
        let soon = deadline(100);
        timer.arm(&soon);
        assert_eq!(timer.at, soon.at);
        assert_eq!(expiry(&mut timer, &soon).await, soon.at);
        // A timer that fired (the connection was idle past it) is armed again for the next command.
        tokio::time::advance(Duration::from_secs(120)).await;
        let next = deadline(2_000);
        timer.arm(&next);
        assert_eq!(expiry(&mut timer, &next).await, next.at);
        // A timer never polled is not registered, so past its instant it has not "fired": the first poll
        // fires it and it is armed again, at the command's deadline.
        let mut timer = BackendTimer::new(deadline(10).at);
        tokio::time::advance(Duration::from_secs(1)).await;
        let next = deadline(2_000);
        timer.arm(&next);
        assert_eq!(expiry(&mut timer, &next).await, next.at);
    }
}
