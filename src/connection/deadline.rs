//! How long the backend has to answer a forwarded command.
//!
//! This module owns the deadline of each forwarded command ([`BackendDeadline`]). It must never let an operation
//! run past its command's deadline. The connection waits for it on a timer kept across commands
//! ([`crate::timer::LazyTimer`]), armed anew at once only for a command due earlier than the timer would fire (a
//! shorter `maxTimeMS`).

use std::task::{Context, Poll};
use std::time::Duration;

use tenantwall_protocol::fields::Fields;
use tokio::time::Instant;

use crate::config::Limits;
use crate::error::ProxyError;
use crate::timer::LazyTimer;

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

/// Ready with `deadline`'s error once it has passed, to poll beside an operation (the connection's `within!`) on
/// the connection's kept timer. The operation beside it is never dropped for the timer firing early.
pub(super) fn poll_expired(
    timer: &mut LazyTimer,
    cx: &mut Context<'_>,
    deadline: &BackendDeadline,
) -> Poll<ProxyError> {
    std::task::ready!(timer.poll_until(cx, deadline.at));
    Poll::Ready(deadline.expired())
}
