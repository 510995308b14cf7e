//! Admission control: which sockets may hold a connection, and how often a source or a user may fail to
//! authenticate.
//!
//! At accept, a connection takes a slot of its source address (`limits.max_connections_per_ip`) and, until it
//! has a tenant, one of the `limits.max_unauthenticated_connections` slots and one of its source's
//! `limits.max_unauthenticated_connections_per_ip`, so reconnecting pre-authentication sockets can neither fill
//! the server nor, from one address, take every pre-authentication slot from the clients of other addresses. SCRAM failures are counted per source address and per user name within
//! `limits.auth_failure_window_secs`: after a few, each new attempt waits longer, and after
//! `limits.auth_failures_before_refusal` attempts are refused without running SCRAM. Floods are logged once per
//! window, never once per event. State is bounded: counters live in fixed-size LRU tables.
//!
//! Protocol violations before authentication (a frame refused as oversized, malformed, stalled or a compression
//! bomb) are counted per source address in the same way. After a few, the source's next connections are held at
//! accept, unread, for a delay that doubles with each further violation, before they are served. A client that
//! is refused from its first bytes would otherwise reconnect at once, thousands of times a second, and the
//! accepting, admitting and closing alone would take a core from the tenants being served; held, its
//! connections cost an idle task each, and their number is bounded by the per-source caps.
//!
//! What it must never do: log a password or a SASL payload, or let one tenant's failures lock out a source or a
//! user it did not name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::config::Limits;

/// Failures per source or user that cost nothing extra (typos, a rotated password).
const FREE_FAILURES: u32 = 3;
/// Delay after the first failure beyond the free ones; doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest delay before an attempt is answered.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Sources and users whose failures are remembered; the least recently failing are forgotten first.
const TRACKED: usize = 65_536;
/// One log line per window for refused connections.
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromSource,
    TooManyUnauthenticated,
    TooManyUnauthenticatedFromSource,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::TooManyConnections => "limits.max_connections reached",
            Self::TooManyFromSource => "limits.max_connections_per_ip reached for this source",
            Self::TooManyUnauthenticated => "limits.max_unauthenticated_connections reached",
            Self::TooManyUnauthenticatedFromSource => {
                "limits.max_unauthenticated_connections_per_ip reached for this source"
            }
        }
    }
}

/// What a connection holds while it is open. Dropping it gives the slots back.
pub struct Admitted {
    _source: SourceSlot,
    /// Held until the connection has a tenant.
    pub unauthenticated: Option<Unauthenticated>,
}

/// An unauthenticated connection's slots, overall and for its source.
pub struct Unauthenticated {
    _permit: OwnedSemaphorePermit,
    _source: SourceSlot,
}

/// One connection counted against its source address; dropping it uncounts it.
struct SourceSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl SourceSlot {
    /// Counts one more connection from `ip`, unless it already has `max`.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut table = lock(counts);
        let n = table.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                table.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot { counts: counts.clone(), ip })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere mid-update of plain counters; they stay usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connection slots and authentication throttling of one server.
pub struct Admission {
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    unauthenticated_per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    unauthenticated: Arc<Semaphore>,
    pub auth: AuthThrottle,
    refusals: RateLimitedLog,
    /// Frames refused as malformed or oversized: one hostile client can send thousands a second.
    frames: RateLimitedLog,
    /// Protocol violations before authentication, per source address.
    violations: Mutex<LruCache<IpAddr, Failures>>,
}

impl Admission {
    /// Sized from `limits` at start.
    pub fn new(limits: &Limits) -> Self {
        Self {
            per_source: Arc::default(),
            unauthenticated_per_source: Arc::default(),
            unauthenticated: Arc::new(Semaphore::new(
                limits.max_unauthenticated_connections.min(Semaphore::MAX_PERMITS),
            )),
            auth: AuthThrottle::default(),
            refusals: RateLimitedLog::new(LOG_WINDOW),
            frames: RateLimitedLog::new(LOG_WINDOW),
            violations: Mutex::new(LruCache::new(NonZeroUsize::new(TRACKED).unwrap_or(NonZeroUsize::MIN))),
        }
    }

    /// Records a protocol violation by an unauthenticated connection from `ip`.
    pub fn violation(&self, ip: IpAddr, limits: &Limits) {
        if count_failure(&mut lock(&self.violations), ip, limits) {
            warn!(
                client.addr = %ip,
                window_secs = limits.auth_failure_window_secs,
                "repeated protocol violations before authentication from this source; holding its new connections"
            );
        }
    }

    /// How long a new connection from `ip` is held, unread, before it is served: `None` for a source without
    /// repeated violations. Past `auth_failures_before_refusal` the hold stays at its longest rather than
    /// becoming a refusal: a refused client would reconnect at once, which is the churn the hold prevents.
    pub fn hold_for(&self, ip: IpAddr, limits: &Limits) -> Option<Duration> {
        let verdict = verdict_for(lock(&self.violations).peek(&ip), limits, Instant::now());
        match verdict {
            Verdict::Allow => None,
            Verdict::Delay(d) => Some(d),
            Verdict::Refuse => Some(MAX_DELAY),
        }
    }

    /// Admits a connection from `ip`, or says why not. `tenant_known` for a listener bound to a tenant: such a
    /// connection never holds an unauthenticated slot.
    pub fn admit(&self, ip: IpAddr, limits: &Limits, tenant_known: bool) -> Result<Admitted, Refusal> {
        let source =
            SourceSlot::take(&self.per_source, ip, limits.max_connections_per_ip).ok_or(Refusal::TooManyFromSource)?;
        if tenant_known {
            return Ok(Admitted { _source: source, unauthenticated: None });
        }
        let from_source =
            SourceSlot::take(&self.unauthenticated_per_source, ip, limits.max_unauthenticated_connections_per_ip)
                .ok_or(Refusal::TooManyUnauthenticatedFromSource)?;
        let permit = self.unauthenticated.clone().try_acquire_owned().map_err(|_| Refusal::TooManyUnauthenticated)?;
        Ok(Admitted {
            _source: source,
            unauthenticated: Some(Unauthenticated { _permit: permit, _source: from_source }),
        })
    }

    /// Logs a refused connection, at most once per window (with how many went unlogged before it).
    pub fn log_refusal(&self, ip: IpAddr, why: Refusal) {
        if let Some(suppressed) = self.refusals.allow() {
            warn!(client.addr = %ip, reason = why.as_str(), suppressed, "refusing new connections");
        }
    }

    /// Logs a refused frame (malformed, oversized, a protocol error that closes the connection), at most once per
    /// window with how many went unlogged before it; every one is counted in the protocol error statistics.
    pub fn log_refused_frame(&self, ip: IpAddr, opcode: &dyn std::fmt::Display, error: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.frames.allow() {
            warn!(client.addr = %ip, %opcode, %error, suppressed, "refusing frame");
        }
    }

    /// Connections currently open from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        lock(&self.per_source).get(&ip).copied().unwrap_or(0)
    }
}

/// Lets one event through per window and counts the rest.
pub struct RateLimitedLog {
    window: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    pub fn new(window: Duration) -> Self {
        Self { window, state: Mutex::new((None, 0)) }
    }

    /// `Some(suppressed)` when this event should be logged: the first of a window, with the number of events
    /// suppressed since the last logged one.
    pub fn allow(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        match state.0 {
            Some(start) if now.duration_since(start) < self.window => {
                state.1 = state.1.saturating_add(1);
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// What to do with an authentication attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer only after this long.
    Delay(Duration),
    /// Answer AuthenticationFailed without running SCRAM.
    Refuse,
}

#[derive(Debug)]
struct Failures {
    count: u32,
    since: Instant,
    logged: bool,
}

/// SCRAM failure counters per source address and per user name.
pub struct AuthThrottle {
    sources: Mutex<LruCache<IpAddr, Failures>>,
    users: Mutex<LruCache<String, Failures>>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        let cap = NonZeroUsize::new(TRACKED).unwrap_or(NonZeroUsize::MIN);
        Self { sources: Mutex::new(LruCache::new(cap)), users: Mutex::new(LruCache::new(cap)) }
    }
}

fn verdict_for(failures: Option<&Failures>, limits: &Limits, now: Instant) -> Verdict {
    let Some(f) = failures.filter(|f| now.duration_since(f.since) < limits.auth_failure_window()) else {
        return Verdict::Allow;
    };
    if f.count >= limits.auth_failures_before_refusal {
        return Verdict::Refuse;
    }
    match f.count.checked_sub(FREE_FAILURES) {
        None => Verdict::Allow,
        Some(extra) => {
            let factor = 1u32.checked_shl(extra).unwrap_or(u32::MAX);
            Verdict::Delay(FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY))
        }
    }
}

fn stricter(a: Verdict, b: Verdict) -> Verdict {
    match (a, b) {
        (Verdict::Refuse, _) | (_, Verdict::Refuse) => Verdict::Refuse,
        (Verdict::Delay(x), Verdict::Delay(y)) => Verdict::Delay(x.max(y)),
        (Verdict::Delay(x), _) | (_, Verdict::Delay(x)) => Verdict::Delay(x),
        _ => Verdict::Allow,
    }
}

/// Counts one failure; true when this failure starts throttling the key (log it, once per window).
fn count_failure<K: std::hash::Hash + Eq>(table: &mut LruCache<K, Failures>, key: K, limits: &Limits) -> bool {
    let now = Instant::now();
    let entry = table.get_or_insert_mut(key, || Failures { count: 0, since: now, logged: false });
    if now.duration_since(entry.since) >= limits.auth_failure_window() {
        *entry = Failures { count: 0, since: now, logged: false };
    }
    entry.count = entry.count.saturating_add(1);
    if entry.count > FREE_FAILURES && !entry.logged {
        entry.logged = true;
        return true;
    }
    false
}

impl AuthThrottle {
    /// The verdict for an attempt from `ip` as `user` (when the user name could be read).
    pub fn check(&self, ip: IpAddr, user: Option<&str>, limits: &Limits) -> Verdict {
        let now = Instant::now();
        let by_source = verdict_for(lock(&self.sources).peek(&ip), limits, now);
        let by_user = match user {
            Some(user) => verdict_for(lock(&self.users).peek(user), limits, now),
            None => Verdict::Allow,
        };
        stricter(by_source, by_user)
    }

    /// Records a failed attempt.
    pub fn failed(&self, ip: IpAddr, user: Option<&str>, limits: &Limits) {
        if count_failure(&mut lock(&self.sources), ip, limits) {
            warn!(client.addr = %ip, window_secs = limits.auth_failure_window_secs, "repeated authentication failures from this source; throttling");
        }
        if let Some(user) = user {
            if count_failure(&mut lock(&self.users), user.to_owned(), limits) {
                warn!(
                    user,
                    window_secs = limits.auth_failure_window_secs,
                    "repeated authentication failures for this user; throttling"
                );
            }
        }
    }

    /// A user proved its password: its own failures are forgotten (the source's stay until the window ends).
    pub fn succeeded(&self, user: &str) {
        lock(&self.users).pop(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections_per_ip: 2,
            max_unauthenticated_connections: 3,
            max_unauthenticated_connections_per_ip: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn sources_and_unauthenticated_connections_have_their_own_caps() {
        let limits = limits();
        let admission = Admission::new(&limits);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = admission.admit(a, &limits, false).unwrap();
        let _second = admission.admit(a, &limits, false).unwrap();
        assert_eq!(admission.admit(a, &limits, false).err(), Some(Refusal::TooManyFromSource));
        let mut third = admission.admit(b, &limits, false).unwrap();
        assert_eq!(admission.admit(b, &limits, false).err(), Some(Refusal::TooManyUnauthenticated));
        // The refused attempt did not keep a source slot.
        assert_eq!(admission.connections_from(b), 1);
        // A listener bound to a tenant needs no unauthenticated slot.
        let _bound = admission.admit(b, &limits, true).unwrap();
        // Authenticating frees the unauthenticated slot, closing frees the source slot.
        third.unauthenticated = None;
        drop(first);
        assert_eq!(admission.connections_from(a), 1);
        let _fourth = admission.admit(a, &limits, false).unwrap();
    }

    #[test]
    fn one_source_cannot_take_every_unauthenticated_slot() {
        let limits = Limits { max_connections_per_ip: 10, ..limits() };
        let admission = Admission::new(&limits);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut first = admission.admit(a, &limits, false).unwrap();
        let _second = admission.admit(a, &limits, false).unwrap();
        assert_eq!(admission.admit(a, &limits, false).err(), Some(Refusal::TooManyUnauthenticatedFromSource));
        // Bound listeners and other sources still get in.
        let _bound = admission.admit(a, &limits, true).unwrap();
        let _other = admission.admit(b, &limits, false).unwrap();
        // Once one of a's connections authenticates, a may start another.
        first.unauthenticated = None;
        let _third = admission.admit(a, &limits, false).unwrap();
        assert_eq!(admission.connections_from(a), 4);
    }

    #[test]
    fn failures_first_cost_time_then_are_refused_per_source_and_per_user() {
        let limits = Limits { auth_failures_before_refusal: 6, ..Limits::default() };
        let throttle = AuthThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut delays = Vec::new();
        for _ in 0..6 {
            delays.push(throttle.check(ip, Some("app"), &limits));
            throttle.failed(ip, Some("app"), &limits);
        }
        assert_eq!(&delays[..4], &[Verdict::Allow, Verdict::Allow, Verdict::Allow, Verdict::Delay(FIRST_DELAY)]);
        assert_eq!(delays[5], Verdict::Delay(FIRST_DELAY * 4));
        assert_eq!(throttle.check(ip, Some("someone-else"), &limits), Verdict::Refuse);
        assert_eq!(throttle.check(other, Some("app"), &limits), Verdict::Refuse);
        assert_eq!(throttle.check(other, Some("someone-else"), &limits), Verdict::Allow);
        throttle.succeeded("app");
        assert_eq!(throttle.check(other, Some("app"), &limits), Verdict::Allow);
    }

    #[test]
    fn violations_hold_the_sources_new_connections_longer_each_time() {
        let limits = Limits { auth_failures_before_refusal: 6, ..Limits::default() };
        let admission = Admission::new(&limits);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut holds = Vec::new();
        for _ in 0..10 {
            holds.push(admission.hold_for(ip, &limits));
            admission.violation(ip, &limits);
        }
        assert_eq!(&holds[..4], &[None, None, None, Some(FIRST_DELAY)]);
        assert_eq!(holds[5], Some(FIRST_DELAY * 4));
        // Never a refusal at accept: the longest hold, however many violations.
        assert_eq!(holds[9], Some(MAX_DELAY));
        assert_eq!(admission.hold_for(other, &limits), None);
        // Authentication failures and violations are counted apart.
        assert_eq!(admission.auth.check(ip, None, &limits), Verdict::Allow);
        // The count ends with its window.
        let limits = Limits { auth_failure_window_secs: 0, ..limits };
        assert_eq!(admission.hold_for(ip, &limits), None);
    }

    #[test]
    fn refusals_are_logged_once_per_window() {
        let log = RateLimitedLog::new(Duration::from_secs(3600));
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), None);
        assert_eq!(log.allow(), None);
        let log = RateLimitedLog::new(Duration::ZERO);
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), Some(0));
    }
}
