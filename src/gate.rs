//! The per-tenant gate every forwarded command passes: holds for tenant moves, and an optional cap on commands in
//! flight.
//!
//! A command of a tenant enters the gate before the policy decides it, and leaves when its reply is written
//! (the [`InFlight`] guard). While the tenant is held, new commands wait at the gate; [`Gate::hold`] returns once
//! the commands already past it have finished, so the mover sees the tenant's data at rest. The commands that
//! waited are then decided with the policy in force when they pass, which is the new placement once the move
//! switched it. A hold is bounded: at its deadline it ends by itself, whether or not anyone releases it, so a mover
//! that dies never leaves a tenant held.
//!
//! Commands that cannot enter (the tenant held, or at its in-flight cap) queue in arrival order, and each slot
//! there is room for is handed to the first of them: when a command leaves, when the command that brings a
//! reload's higher cap arrives, when a hold ends (released, given up, or at its deadline). A command that arrives
//! while others wait queues behind them instead of taking the slot they were woken for, so none of them is
//! refused at the end of its wait while later commands go through.
//!
//! What it owns: per-tenant gate state only (deadline, in-flight count, the queue of waiting commands). What it
//! must never do: hold one tenant's commands for another tenant's move, wait without a bound, or hold commands the
//! proxy answers itself (the caller only sends forwarded commands through it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bson::{rawdoc, RawDocumentBuf};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::names::NameMap;
use crate::timer::LazyTimer;

/// Longest a hold may last, whatever a caller asks for.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

#[derive(Default)]
struct State {
    /// The hold in force: its id and deadline.
    hold: Option<(u64, Instant)>,
    /// When the hold in force began, for the held time reported at release.
    held_since: Option<Instant>,
    in_flight: usize,
    /// Holds begun so far: a command that waited while this changed waited across a hold, even if it never saw
    /// the hold in force (it slept at the cap through all of it).
    holds_begun: u64,
    /// The in-flight cap, as the latest command to arrive was given it (the policy in force): every command
    /// waiting at the cap measures against the same one, so a slot freed is never left to a waiter whose
    /// older, tighter cap keeps it out while another could enter.
    cap: Option<usize>,
    /// Commands waiting to enter (at a hold or at the cap), in arrival order. A slot is handed to the first one
    /// when it frees, its `in_flight` counted for it, so that nobody arriving meanwhile can take it.
    queue: VecDeque<oneshot::Sender<Admitted>>,
    /// Commands that left the queue without a slot (refused, or their connection closed) since it was last swept:
    /// their senders stay in it, closed, until a slot passes them over or a sweep removes them.
    left_queue: usize,
}

/// Capacity a queue keeps once it is empty again: a burst's queue is not held for the life of the tenant.
const QUEUE_KEPT: usize = 64;

/// What a queued command is told when a slot is handed to it: the holds begun by then, to say whether it waited
/// across one.
struct Admitted {
    holds_begun: u64,
}

/// A command's place in the queue. Dropped before the command entered (refused at the end of its wait, or its
/// connection closed while it waited) it leaves the queue, and a slot already handed to it goes to the next.
struct Place {
    gate: Arc<TenantGate>,
    told: Option<oneshot::Receiver<Admitted>>,
}

impl Place {
    /// What the queue told this command, if anything yet: a slot (the command has entered), or `Err` if the
    /// queue let go of it without one (it never does, but the command would then be refused, not let in). Either
    /// way the place is given up.
    fn entered(&mut self) -> Option<Result<Admitted, ()>> {
        let told = match self.told.as_mut()?.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Ok(told) => Ok(told),
            Err(oneshot::error::TryRecvError::Closed) => Err(()),
        };
        self.told = None;
        Some(told)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let Some(mut told) = self.told.take() else { return };
        let mut state = self.gate.lock();
        let handed = told.try_recv().is_ok();
        drop(told);
        if handed {
            state.in_flight = state.in_flight.saturating_sub(1);
            state.admit_queued();
        } else {
            // Its sender stays in the queue, closed. Swept out once those who left are half the queue, so that a
            // queue held up (by a long hold, or a slow command at the head) does not grow with every connection
            // that closes behind it; each sweep is paid for by as many departures as it reads.
            state.left_queue += 1;
            if state.left_queue * 2 > state.queue.len() {
                state.queue.retain(|waiter| !waiter.is_closed());
                state.left_queue = 0;
                state.keep_queue_small();
            }
        }
        let held = state.hold.is_some();
        drop(state);
        // A mover may be waiting for the slot just given back.
        if handed && held {
            self.gate.left.notify_waiters();
        }
    }
}

impl State {
    /// The hold in force at `now`; an expired hold is ended here (it ends by itself, nobody has to release it),
    /// and the commands waiting on `changed` ([`TenantGate::changed`]) are woken as a release wakes them. (Waking
    /// under the state's lock is safe: nothing holds a `Notify`'s own lock while taking this one.)
    fn live_hold(&mut self, now: Instant, changed: &Notify) -> Option<(u64, Instant)> {
        match self.hold {
            Some((_, deadline)) if deadline <= now => {
                tracing::warn!("tenant hold reached its deadline and ended by itself");
                self.hold = None;
                self.held_since = None;
                self.admit_queued();
                changed.notify_waiters();
                None
            }
            other => other,
        }
    }

    /// Whether a command may enter now: no hold, and below the cap.
    fn has_room(&self) -> bool {
        self.hold.is_none() && self.cap.is_none_or(|cap| self.in_flight < cap)
    }

    /// Hands the slots there is room for to the queued commands, first come first: called whenever room may have
    /// appeared (a command left, the cap was raised, a hold ended). A command that went away while queued (its
    /// connection closed) is passed over, and its slot goes to the next.
    fn admit_queued(&mut self) {
        while self.has_room() {
            let Some(waiter) = self.queue.pop_front() else {
                self.keep_queue_small();
                return;
            };
            self.in_flight += 1;
            if waiter.send(Admitted { holds_begun: self.holds_begun }).is_err() {
                self.in_flight -= 1;
            }
        }
    }

    /// Gives back the memory of an empty queue beyond [`QUEUE_KEPT`].
    fn keep_queue_small(&mut self) {
        if self.queue.is_empty() {
            self.left_queue = 0;
            if self.queue.capacity() > QUEUE_KEPT {
                self.queue.shrink_to(QUEUE_KEPT);
            }
        }
    }
}

#[derive(Default)]
struct TenantGate {
    state: Mutex<State>,
    /// Woken (all waiters) whenever a hold begins or ends: queued commands that have seen a hold then look at how
    /// long to wait (until the hold's deadline, or their own), and a mover whose hold was released or replaced
    /// stops waiting. A slot itself is told through the queued command's own channel.
    changed: Notify,
    /// Woken (all waiters) when a command leaves while a hold is in force: the mover waits here for the tenant's
    /// commands to finish. Not `changed`: the commands queued at the hold have nothing to do with it.
    left: Notify,
}

impl TenantGate {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere mid-update; the counters are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every tenant's gate, shared by all connections of a server.
#[derive(Default)]
pub struct Gate {
    tenants: Mutex<NameMap<String, Arc<TenantGate>>>,
    next_hold: AtomicU64,
}

/// One tenant's gate, as a connection keeps it from one command to the next: entering through it skips the lookup
/// in the server's map of gates (its lock and a hash of the tenant id). A tenant's gate is never replaced or
/// removed from that map, so a kept one is the one every other connection of the tenant enters.
pub struct TenantEntry {
    tenant: String,
    gate: Arc<TenantGate>,
}

impl TenantEntry {
    /// Whether this is `tenant`'s gate.
    pub fn is_for(&self, tenant: &str) -> bool {
        self.tenant == tenant
    }

    /// [`Self::enter`] when that passes at once (nearly every command: no hold, below the cap), without building
    /// its future; `None` when the command has to wait, which `enter` then does.
    pub fn try_enter(&self, cap: Option<usize>) -> Option<InFlight> {
        let mut state = self.gate.lock();
        Self::room(&mut state, cap).then(|| InFlight { gate: self.gate.clone(), waited: false })
    }

    /// Takes a place in flight under `cap` when there is one now.
    fn room(state: &mut State, cap: Option<usize>) -> bool {
        state.cap = cap;
        // Room that a raised cap made goes to the commands already queued, first.
        state.admit_queued();
        // No hold, below the cap, nobody queued (there is no room while anyone is): the command passes without
        // registering for a wake-up or reading the clock.
        if !state.has_room() {
            return false;
        }
        state.in_flight += 1;
        true
    }

    /// Lets a command of this entry's tenant in: at once unless the tenant is held or at its cap. A held tenant's
    /// command waits until the hold ends (released, or at its deadline). A command beyond `cap` waits up to
    /// `cap_wait` for one of the tenant's commands to finish, and is otherwise refused with the returned reply.
    /// The waits are timed on `timer`, the connection's own, kept from one wait to the next (made here at the
    /// first): see [`crate::timer`].
    pub async fn enter(
        &self,
        cap: Option<usize>,
        cap_wait: Duration,
        timer: &mut Option<LazyTimer>,
    ) -> Result<InFlight, RawDocumentBuf> {
        let (gate, tenant) = (&self.gate, self.tenant.as_str());
        let (holds_before, mut waited, told) = {
            let mut state = gate.lock();
            if Self::room(&mut state, cap) {
                drop(state);
                return Ok(InFlight { gate: gate.clone(), waited: false });
            }
            let (queued, told) = oneshot::channel();
            state.queue.push_back(queued);
            (state.holds_begun, state.hold.is_some(), told)
        };
        let mut place = Place { gate: gate.clone(), told: Some(told) };
        // One clock read serves the cap's deadline and the first look at the state; each wake reads it again.
        let mut now = Instant::now();
        let cap_deadline = now + cap_wait;
        // Whether this command listens for holds beginning and ending (`changed`): only once it has seen the
        // tenant held. A command queued at the cap alone needs no word of a hold: the slot it waits for is handed
        // to it when the hold ends (released, or at its deadline by the hold's own timer, see `Gate::hold`), and
        // should its own deadline come first it looks again, finds the hold, and waits for that. Not listening
        // spares the common wait (at the cap) two passes through the `Notify`'s lock.
        let mut watch_holds = false;
        loop {
            // Registered before the state is read, so that a hold ending between the read and the wait is not
            // missed.
            let changed = gate.changed.notified();
            tokio::pin!(changed);
            if watch_holds {
                changed.as_mut().enable();
            }
            let deadline = {
                let mut state = gate.lock();
                let hold = state.live_hold(now, &gate.changed);
                match place.entered() {
                    Some(Ok(told)) => {
                        return Ok(InFlight { gate: gate.clone(), waited: waited || told.holds_begun != holds_before })
                    }
                    Some(Err(())) => return Err(cap_refusal(tenant)),
                    None => {}
                }
                match hold {
                    // Until the hold ends (released, or at this deadline); then the queue moves on.
                    Some((_, deadline)) => {
                        waited = true;
                        if !watch_holds {
                            // Registered first, then the state is read again.
                            watch_holds = true;
                            continue;
                        }
                        deadline
                    }
                    None if now >= cap_deadline => {
                        drop(state);
                        // Dropping its place takes the command out of the queue.
                        drop(place);
                        return Err(cap_refusal(tenant));
                    }
                    None => cap_deadline,
                }
            };
            let Some(told) = place.told.as_mut() else { return Err(cap_refusal(tenant)) };
            let kept = timer.get_or_insert_with(|| LazyTimer::new(deadline));
            kept.arm(deadline);
            let woken = tokio::select! {
                biased;
                told = told => Ok(Some(told)),
                () = &mut changed, if watch_holds => Ok(None),
                // Outside the task's cooperative budget, as `Timeout` polls its own timer.
                () = tokio::task::unconstrained(std::future::poll_fn(|cx| kept.poll_until(cx, deadline))) => Err(()),
            };
            match woken {
                Ok(Some(Ok(told))) => {
                    place.told = None;
                    return Ok(InFlight { gate: gate.clone(), waited: waited || told.holds_begun != holds_before });
                }
                // The queue let go of this command without a slot: it never does, but the command would be
                // refused, not let in (and its receiver, complete, is not read again).
                Ok(Some(Err(_))) => {
                    place.told = None;
                    return Err(cap_refusal(tenant));
                }
                // A hold began or ended, or a deadline passed: the state is looked at again above.
                Ok(None) | Err(()) => now = Instant::now(),
            }
        }
    }
}

/// A command of a tenant in flight; dropping it lets the gate know the command is done.
pub struct InFlight {
    gate: Arc<TenantGate>,
    /// Whether the command waited at a hold on its way in (it must then be decided with the current policy).
    pub waited: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        // The freed slot goes to the first queued command, if any.
        state.admit_queued();
        let held = state.hold.is_some();
        drop(state);
        if held {
            self.gate.left.notify_waiters();
        }
    }
}

/// A hold in force, as [`Gate::hold`] grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub id: u64,
    /// Time the hold waited for commands already in flight.
    pub drained_in: Duration,
    /// The hold ends by itself this long after it was granted.
    pub max: Duration,
}

/// Why a hold was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("{in_flight} command(s) of the tenant were still in flight when the hold's bound was reached")]
    NotDrained { in_flight: usize },
    #[error("the hold was released or replaced before the tenant's commands in flight finished")]
    Ended,
}

impl Gate {
    fn tenant(&self, tenant: &str) -> Arc<TenantGate> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        // Every forwarded command passes here: no allocation once the tenant has its gate.
        if let Some(gate) = tenants.get(tenant) {
            return gate.clone();
        }
        tenants.entry(tenant.to_owned()).or_default().clone()
    }

    /// The tenant's gate if it has one: queries never add entries (an admin request names any id).
    fn existing(&self, tenant: &str) -> Option<Arc<TenantGate>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner()).get(tenant).cloned()
    }

    /// [`TenantEntry::enter`] through the map, as a connection's first command does.
    #[cfg(test)]
    pub async fn enter(
        &self,
        tenant: &str,
        cap: Option<usize>,
        cap_wait: Duration,
    ) -> Result<InFlight, RawDocumentBuf> {
        self.entry(tenant).enter(cap, cap_wait, &mut None).await
    }

    /// `tenant`'s gate, to keep ([`TenantEntry`]).
    pub fn entry(&self, tenant: &str) -> TenantEntry {
        TenantEntry { tenant: tenant.to_owned(), gate: self.tenant(tenant) }
    }

    /// Holds `tenant`: its new commands wait at the gate from now on, for at most `max` (capped at
    /// [`MAX_HOLD`]). Returns once its commands in flight have finished; when they have not by the deadline, the
    /// hold is ended and an error returned. Holding a held tenant again starts a new hold (a re-run mover).
    pub async fn hold(&self, tenant: &str, max: Duration) -> Result<Hold, HoldError> {
        let max = max.min(MAX_HOLD);
        let gate = self.tenant(tenant);
        let started = Instant::now();
        let deadline = started + max;
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut state = gate.lock();
            state.hold = Some((id, deadline));
            state.held_since = Some(started);
            state.holds_begun += 1;
        }
        // A hold ends by itself at its deadline, and someone must be awake then to end it: the commands queued
        // at the cap do not listen for holds (see `TenantEntry::enter`), and the mover may be gone. So the hold
        // keeps its own timer, which ends it then unless it was released or replaced before.
        let expiring = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let mut state = expiring.lock();
            if state.hold.is_some_and(|(held, _)| held == id) {
                state.live_hold(Instant::now(), &expiring.changed);
            }
        });
        // Commands that listen for holds (those that saw one) look again; a hold this one replaced stops waiting
        // for the tenant to drain.
        gate.changed.notify_waiters();
        loop {
            let changed = gate.changed.notified();
            let left = gate.left.notified();
            tokio::pin!(changed, left);
            changed.as_mut().enable();
            left.as_mut().enable();
            let in_flight = {
                let mut state = gate.lock();
                if state.hold.is_none_or(|(held, _)| held != id) {
                    // Released, or replaced by a newer hold, while this one waited: it is not in force.
                    return Err(HoldError::Ended);
                }
                if state.in_flight == 0 {
                    return Ok(Hold { id, drained_in: started.elapsed(), max });
                }
                if Instant::now() >= deadline {
                    let in_flight = state.in_flight;
                    if state.hold.is_some_and(|(held, _)| held == id) {
                        state.hold = None;
                        state.held_since = None;
                        state.admit_queued();
                    }
                    drop(state);
                    gate.changed.notify_waiters();
                    return Err(HoldError::NotDrained { in_flight });
                }
                state.in_flight
            };
            tracing::debug!(tenant, in_flight, "hold waiting for commands in flight");
            let either = async {
                tokio::select! {
                    () = &mut changed => {}
                    () = &mut left => {}
                }
            };
            let _ = tokio::time::timeout_at(deadline, either).await;
        }
    }

    /// Whether hold `id` of `tenant` is still in force with at least `margin` left.
    pub fn is_held(&self, tenant: &str, id: u64, margin: Duration) -> bool {
        let Some(gate) = self.existing(tenant) else { return false };
        let now = Instant::now();
        let mut state = gate.lock();
        state.live_hold(now, &gate.changed).is_some_and(|(held, deadline)| held == id && deadline >= now + margin)
    }

    /// Ends the tenant's hold (when `id` is given, only that hold); the waiting commands go on. Returns how long
    /// the tenant was held, or `None` when no such hold was in force.
    pub fn release(&self, tenant: &str, id: Option<u64>) -> Option<Duration> {
        let gate = self.existing(tenant)?;
        let now = Instant::now();
        let mut state = gate.lock();
        let (held, _) = state.live_hold(now, &gate.changed)?;
        if id.is_some_and(|id| id != held) {
            return None;
        }
        let since = state.held_since.take();
        state.hold = None;
        state.admit_queued();
        drop(state);
        gate.changed.notify_waiters();
        Some(since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s)))
    }

    /// Commands of `tenant` past the gate now.
    pub fn in_flight(&self, tenant: &str) -> usize {
        self.existing(tenant).map_or(0, |gate| gate.lock().in_flight)
    }
}

/// The answer to a statement of a multi-statement transaction (`autocommit: false`, not the one that starts it)
/// that waited at a hold across a policy switch: the transaction began on the old placement, whose writes the move
/// did not copy (they were not committed), so it must not go on. `NoSuchTransaction` with the
/// `TransientTransactionError` label makes drivers run the whole transaction again, on the new placement.
pub fn interrupted_transaction(body: &bson::RawDocument) -> Option<RawDocumentBuf> {
    let in_transaction = matches!(body.get("autocommit"), Ok(Some(bson::RawBsonRef::Boolean(false))));
    let starts = matches!(body.get("startTransaction"), Ok(Some(bson::RawBsonRef::Boolean(true))));
    if !in_transaction || starts {
        return None;
    }
    let mut labels = bson::RawArrayBuf::new();
    labels.push("TransientTransactionError");
    Some(rawdoc! {
        "ok": 0.0,
        "errmsg": "the transaction was interrupted by a move of the tenant's data; retry it",
        "code": 251,
        "codeName": "NoSuchTransaction",
        "errorLabels": labels,
    })
}

/// The reply to a command refused at the tenant's in-flight cap: an overload, so drivers back off and retry.
fn cap_refusal(tenant: &str) -> RawDocumentBuf {
    crate::ratelimit::overloaded(&format!("tenant {tenant} has too many commands in flight; retry later"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_CAP: Duration = Duration::from_secs(1);

    /// A mover holding acme, in a task of its own.
    fn spawn_hold(gate: &Arc<Gate>, max: Duration) -> tokio::task::JoinHandle<Result<Hold, HoldError>> {
        let gate = gate.clone();
        tokio::spawn(async move { gate.hold("acme", max).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_tenant_waits_and_others_do_not() {
        let gate = Arc::new(Gate::default());
        let hold = gate.hold("acme", Duration::from_secs(30)).await.unwrap();
        assert_eq!(hold.drained_in, Duration::ZERO);
        // Another tenant passes at once.
        let other = gate.enter("globex", None, NO_CAP).await.unwrap();
        assert!(!other.waited);
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter("acme", None, NO_CAP).await.map(|g| g.waited) }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "a held tenant's command waits");
        assert_eq!(gate.in_flight("acme"), 0);
        let held = gate.release("acme", Some(hold.id)).unwrap();
        assert_eq!(held, Duration::from_secs(5));
        assert_eq!(waiting.await.unwrap(), Ok(true));
        assert_eq!(gate.release("acme", None), None, "nothing left to release");
    }

    #[tokio::test(start_paused = true)]
    async fn hold_waits_for_commands_in_flight() {
        let gate = Arc::new(Gate::default());
        let first = gate.enter("acme", None, NO_CAP).await.unwrap();
        let holding = spawn_hold(&gate, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!holding.is_finished(), "the hold waits for the command in flight");
        drop(first);
        let hold = holding.await.unwrap().unwrap();
        assert_eq!(hold.drained_in, Duration::from_secs(2));
        assert!(gate.is_held("acme", hold.id, Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_ends_by_itself_at_its_bound() {
        let gate = Arc::new(Gate::default());
        let hold = gate.hold("acme", Duration::from_secs(3)).await.unwrap();
        let started = Instant::now();
        let entered = gate.enter("acme", None, NO_CAP).await.unwrap();
        assert!(entered.waited);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(!gate.is_held("acme", hold.id, Duration::ZERO));
        assert_eq!(gate.release("acme", Some(hold.id)), None, "an expired hold is not released again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_that_cannot_drain_is_ended() {
        let gate = Arc::new(Gate::default());
        let _stuck = gate.enter("acme", None, NO_CAP).await.unwrap();
        let error = gate.hold("acme", Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(error, HoldError::NotDrained { in_flight: 1 });
        // Not held any more: new commands pass.
        assert!(!gate.enter("acme", None, NO_CAP).await.unwrap().waited);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_hold_is_not_released_by_an_older_id() {
        let gate = Gate::default();
        let old = gate.hold("acme", Duration::from_secs(30)).await.unwrap();
        let new = gate.hold("acme", Duration::from_secs(30)).await.unwrap();
        assert_eq!(gate.release("acme", Some(old.id)), None);
        assert!(gate.is_held("acme", new.id, Duration::ZERO));
        assert!(gate.release("acme", Some(new.id)).is_some());
    }

    #[test]
    fn only_statements_inside_a_running_transaction_are_interrupted() {
        let commit = bson::rawdoc! { "commitTransaction": 1, "txnNumber": 3_i64, "autocommit": false, "$db": "admin" };
        let refused = interrupted_transaction(&commit).unwrap();
        assert_eq!(refused.get_i32("code").unwrap(), 251);
        let start = bson::rawdoc! { "insert": "o", "autocommit": false, "startTransaction": true, "$db": "app" };
        assert!(interrupted_transaction(&start).is_none(), "a new transaction starts on the new placement");
        assert!(interrupted_transaction(&bson::rawdoc! { "insert": "o", "$db": "app" }).is_none());
    }

    /// A gate with acme at a cap of one: the command in flight, and the list [`waiter`]s note their entry in.
    async fn at_a_cap_of_one() -> (Arc<Gate>, Arc<Mutex<Vec<usize>>>, InFlight) {
        let gate = Arc::new(Gate::default());
        let first = gate.enter("acme", Some(1), NO_CAP).await.unwrap();
        (gate, Arc::new(Mutex::new(Vec::new())), first)
    }

    /// Spawns a command of acme waiting at a cap of one; its result says whether it entered, and it holds the
    /// slot until `leave` is told.
    fn waiter(
        gate: &Arc<Gate>,
        entered: &Arc<Mutex<Vec<usize>>>,
        n: usize,
    ) -> (tokio::task::JoinHandle<bool>, tokio::sync::oneshot::Sender<()>) {
        let (leave, left) = tokio::sync::oneshot::channel::<()>();
        let (gate, entered) = (gate.clone(), entered.clone());
        let task = tokio::spawn(async move {
            let Ok(_slot) = gate.enter("acme", Some(1), Duration::from_secs(60)).await else { return false };
            entered.lock().unwrap().push(n);
            let _ = left.await;
            true
        });
        (task, leave)
    }

    #[tokio::test(start_paused = true)]
    async fn commands_at_the_cap_enter_one_per_freed_slot_in_the_order_they_came() {
        let (gate, entered, first) = at_a_cap_of_one().await;
        let (mut tasks, mut leaves) = (Vec::new(), Vec::new());
        for n in 1..=5 {
            let (task, leave) = waiter(&gate, &entered, n);
            tasks.push(task);
            leaves.push(leave);
            // Each registers before the next comes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(entered.lock().unwrap().is_empty());
        drop(first);
        for (n, leave) in (1..=5).zip(leaves) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(*entered.lock().unwrap(), (1..=n).collect::<Vec<_>>(), "one enters per freed slot, in order");
            assert_eq!(gate.in_flight("acme"), 1);
            let _ = leave.send(());
        }
        for task in tasks {
            assert!(task.await.unwrap());
        }
        assert_eq!(gate.in_flight("acme"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_arriving_as_a_slot_frees_does_not_pass_the_commands_waiting() {
        let (gate, entered, first) = at_a_cap_of_one().await;
        let (waiting, leave) = waiter(&gate, &entered, 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The slot frees, and before the waiting command runs again another command of the tenant arrives (on a
        // busy proxy, a connection whose frame is already read runs first): it queues behind the one waiting.
        drop(first);
        let newcomer = gate.enter("acme", Some(1), Duration::from_millis(100)).await;
        assert!(newcomer.is_err(), "a command arriving after one waiting at the cap took its slot");
        assert_eq!(*entered.lock().unwrap(), vec![1]);
        assert_eq!(gate.in_flight("acme"), 1);
        let _ = leave.send(());
        assert!(waiting.await.unwrap());
        // Nobody waits now: the next command enters at once.
        assert!(gate.enter("acme", Some(1), Duration::ZERO).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_commands_pass_before_a_command_that_comes_when_the_cap_is_raised() {
        let (gate, entered, first) = at_a_cap_of_one().await;
        let (waiting, leave) = waiter(&gate, &entered, 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        // A reload raised the cap to 2: the slot it adds goes to the command already waiting, so the command that
        // brought the new cap waits for the next one.
        let raised = gate.enter("acme", Some(2), Duration::from_millis(100)).await;
        assert!(raised.is_err(), "the command that came with the raised cap passed the one waiting");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*entered.lock().unwrap(), vec![1]);
        assert_eq!(gate.in_flight("acme"), 2);
        drop(first);
        let _ = leave.send(());
        assert!(waiting.await.unwrap());
        assert_eq!(gate.in_flight("acme"), 0);
    }

    /// Many commands at a cap of three, some refused at the end of a short wait, some dropped while they wait (a
    /// closed connection), a reload changing the cap and a hold in the middle: never more than the cap inside,
    /// and at the end no slot lost and nobody left queued.
    #[tokio::test(start_paused = true)]
    async fn no_slot_is_lost_or_doubled_whatever_the_waiting_commands_do() {
        let gate = Arc::new(Gate::default());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut seed = 7_u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            seed >> 33
        };
        let mut tasks = Vec::new();
        for n in 0..200_u64 {
            let (command_gate, inside, most) = (gate.clone(), inside.clone(), most.clone());
            let cap = if (80..120).contains(&n) { 2 } else { 3 };
            let wait = Duration::from_millis(if next() % 4 == 0 { 5 } else { 10_000 });
            let busy = Duration::from_millis(next() % 20);
            let task = tokio::spawn(async move {
                let Ok(_slot) = command_gate.enter("acme", Some(cap), wait).await else { return };
                // Counted out when the task ends, however it ends (an aborted task never reaches its last line).
                struct Inside(Arc<std::sync::atomic::AtomicUsize>);
                impl Drop for Inside {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                let _inside = Inside(inside);
                most.fetch_max(now.max(command_gate.in_flight("acme")), Ordering::SeqCst);
                tokio::time::sleep(busy).await;
            });
            tasks.push((task, next() % 5 == 0));
            tokio::time::sleep(Duration::from_millis(next() % 3)).await;
            if n == 100 {
                let hold = gate.hold("acme", Duration::from_secs(5)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                gate.release("acme", Some(hold.id)).unwrap();
            }
            // Some commands' connections close while they wait (or after they entered).
            for (task, abort) in &tasks {
                if *abort && next() % 3 == 0 {
                    task.abort();
                }
            }
        }
        for (task, _) in tasks {
            let _ = task.await;
        }
        assert!(most.load(Ordering::SeqCst) <= 3, "{} commands inside at once", most.load(Ordering::SeqCst));
        assert_eq!(gate.in_flight("acme"), 0, "a slot was lost");
        assert!(gate.existing("acme").unwrap().lock().queue.is_empty(), "a command was left queued");
        // And the gate still works.
        assert!(gate.enter("acme", Some(3), Duration::ZERO).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_on_a_connection_s_kept_timer_each_end_at_their_own_deadline() {
        let (gate, _entered, first) = at_a_cap_of_one().await;
        let entry = gate.entry("acme");
        let mut timer = None;
        // Each wait at the full cap is refused at its own deadline, whether the kept timer was armed later (a
        // shorter wait), earlier (a longer one, after it fired), or not yet at all.
        for wait_ms in [100, 1_000, 50, 50, 2_000] {
            let started = Instant::now();
            assert!(entry.enter(Some(1), Duration::from_millis(wait_ms), &mut timer).await.is_err());
            assert_eq!(started.elapsed(), Duration::from_millis(wait_ms), "a wait of {wait_ms} ms");
        }
        // A wait that is handed its slot leaves the timer armed at its deadline. The next wait, due later, sees it
        // fire early and waits on to its own deadline; one due earlier is armed for at once.
        let freeing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(first);
        });
        let slot = entry.enter(Some(1), Duration::from_millis(100), &mut timer).await.unwrap();
        freeing.await.unwrap();
        for wait_ms in [100, 30] {
            let started = Instant::now();
            assert!(entry.enter(Some(1), Duration::from_millis(wait_ms), &mut timer).await.is_err());
            assert_eq!(started.elapsed(), Duration::from_millis(wait_ms), "a wait of {wait_ms} ms");
        }
        drop(slot);
        assert_eq!(gate.in_flight("acme"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_at_the_cap_enters_when_a_hold_ends_by_itself() {
        let (gate, entered, first) = at_a_cap_of_one().await;
        let (waiting, leave) = waiter(&gate, &entered, 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        // A mover holds the tenant (it drains once the first command leaves), then dies: nobody releases the hold,
        // and no other command arrives to notice that it ended.
        let holding = spawn_hold(&gate, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(first);
        holding.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(4_990)).await;
        assert!(entered.lock().unwrap().is_empty(), "entered a held tenant");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*entered.lock().unwrap(), vec![1], "the command slept past the end of the hold");
        let _ = leave.send(());
        assert!(waiting.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn commands_queued_at_a_hold_that_gives_up_enter_at_once() {
        let gate = Arc::new(Gate::default());
        let _stuck = gate.enter("acme", Some(2), NO_CAP).await.unwrap();
        let started = Instant::now();
        let holding = spawn_hold(&gate, Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let entered = Arc::new(Mutex::new(Vec::new()));
        let waiting = tokio::spawn({
            let (gate, entered) = (gate.clone(), entered.clone());
            async move {
                let slot = gate.enter("acme", Some(2), Duration::from_secs(60)).await;
                entered.lock().unwrap().push(Instant::now());
                slot.map(|s| s.waited)
            }
        });
        // The stuck command keeps the tenant from draining: at its bound (2 s) the mover gives up, the hold ends,
        // and the command waiting enters under the cap of two.
        assert_eq!(holding.await.unwrap(), Err(HoldError::NotDrained { in_flight: 1 }));
        assert_eq!(waiting.await.unwrap(), Ok(true));
        let at = entered.lock().unwrap()[0] - started;
        assert!(at < Duration::from_millis(2_010), "entered {at:?} after the hold began, which lasted 2 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_held_then_left_at_the_cap_is_refused_at_its_own_deadline() {
        let gate = Arc::new(Gate::default());
        let hold = gate.hold("acme", Duration::from_secs(600)).await.unwrap();
        let (entered, started) = (Arc::new(Mutex::new(Vec::new())), Instant::now());
        let (first, _keep) = waiter(&gate, &entered, 1);
        let second = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter("acme", Some(1), Duration::from_secs(10)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The release lets the first in; the second is then at the cap, which it may wait for 10 s from its
        // arrival, not until the 600 s hold's deadline.
        gate.release("acme", Some(hold.id)).unwrap();
        assert!(!second.await.unwrap(), "entered beside the first under a cap of one");
        let waited = Instant::now() - started;
        assert!(waited <= Duration::from_secs(11), "refused after {waited:?}");
        assert_eq!(*entered.lock().unwrap(), vec![1]);
        first.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_given_back_by_a_command_that_went_away_lets_a_hold_drain() {
        let (gate, _, first) = at_a_cap_of_one().await;
        let mut queued = Box::pin(gate.enter("acme", Some(1), Duration::from_secs(60)));
        assert!(tokio::time::timeout(Duration::ZERO, &mut queued).await.is_err(), "queued behind the first");
        // The slot the first frees is handed to the queued command, which has not run yet...
        drop(first);
        assert_eq!(gate.in_flight("acme"), 1);
        let holding = spawn_hold(&gate, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!holding.is_finished());
        // ...when its connection closes: the slot comes back, and the mover waiting for it goes on.
        drop(queued);
        let hold = holding.await.unwrap().unwrap();
        assert_eq!(hold.drained_in, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_closing_behind_a_waiting_command_do_not_grow_the_queue() {
        let (gate, _, first) = at_a_cap_of_one().await;
        let mut head = Box::pin(gate.enter("acme", Some(1), Duration::from_secs(600)));
        assert!(tokio::time::timeout(Duration::ZERO, &mut head).await.is_err());
        let queue = || gate.existing("acme").unwrap().lock().queue.len();
        for _ in 0..10_000 {
            let mut gone = Box::pin(gate.enter("acme", Some(1), Duration::from_secs(600)));
            assert!(tokio::time::timeout(Duration::ZERO, &mut gone).await.is_err());
        }
        assert!(queue() <= 8, "{} places kept for 10,000 commands that went away", queue());
        drop(first);
        let slot = head.await.unwrap();
        drop(slot);
        assert_eq!(queue(), 0);
        let capacity = gate.existing("acme").unwrap().lock().queue.capacity();
        assert!(capacity <= QUEUE_KEPT, "an empty queue keeps room for {capacity}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_handed_to_a_command_that_went_away_goes_to_the_next() {
        let (gate, entered, first) = at_a_cap_of_one().await;
        let (gone, _keep) = waiter(&gate, &entered, 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (next, leave_next) = waiter(&gate, &entered, 2);
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The slot is handed to the first waiter, whose connection closes before it runs.
        drop(first);
        gone.abort();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*entered.lock().unwrap(), vec![2], "the freed slot was lost with the command that went away");
        let _ = leave_next.send(());
        assert!(next.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_at_the_cap_when_a_hold_begins_waits_for_the_hold_too() {
        let (gate, entered, first) = at_a_cap_of_one().await;
        let (task, leave) = waiter(&gate, &entered, 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let holding = spawn_hold(&gate, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(first);
        let hold = holding.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(entered.lock().unwrap().is_empty(), "entered a held tenant");
        gate.release("acme", Some(hold.id)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*entered.lock().unwrap(), vec![1]);
        let _ = leave.send(());
        assert!(task.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_that_slept_at_the_cap_through_a_whole_hold_has_waited() {
        let gate = Arc::new(Gate::default());
        let cap = Some(2);
        let (a, b) = (gate.enter("acme", cap, NO_CAP).await.unwrap(), gate.enter("acme", cap, NO_CAP).await.unwrap());
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let gate = gate.clone();
            waiters.push(tokio::spawn(async move {
                let slot = gate.enter("acme", cap, Duration::from_secs(60)).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
                slot.waited
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let holding = spawn_hold(&gate, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop((a, b));
        let hold = holding.await.unwrap().unwrap();
        gate.release("acme", Some(hold.id)).unwrap();
        // Two enter at the release; the third only when one of them leaves, after the hold is over. It too was
        // waiting while the hold was in force, and must be decided as such.
        for waiter in waiters {
            assert!(waiter.await.unwrap(), "a command that waited across a hold did not say so");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_released_before_the_tenant_drained_ends_at_once() {
        let gate = Arc::new(Gate::default());
        let _stuck = gate.enter("acme", None, NO_CAP).await.unwrap();
        let holding = spawn_hold(&gate, Duration::from_secs(300));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        assert!(gate.release("acme", None).is_some());
        assert_eq!(holding.await.unwrap(), Err(HoldError::Ended));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?} for a hold no longer in force",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn commands_waiting_at_the_cap_measure_against_the_cap_now_in_force() {
        let gate = Arc::new(Gate::default());
        let first = gate.enter("acme", Some(1), NO_CAP).await.unwrap();
        let tight = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter("acme", Some(1), Duration::from_secs(60)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        // A reload raised the cap to 2: the next command enters beside the first.
        let _loose = gate.enter("acme", Some(2), NO_CAP).await.unwrap();
        drop(first);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(tight.is_finished(), "the freed slot was left unused under the cap now in force");
        assert!(tight.await.unwrap());
        assert_eq!(gate.in_flight("acme"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn entering_at_once_passes_exactly_where_entering_would_not_wait() {
        let gate = Arc::new(Gate::default());
        let entry = gate.entry("acme");
        let first = entry.try_enter(Some(2)).expect("room under the cap");
        assert!(!first.waited);
        let second = entry.try_enter(Some(2)).expect("room for a second");
        assert_eq!(gate.in_flight("acme"), 2);
        assert!(entry.try_enter(Some(2)).is_none(), "at the cap");
        assert_eq!(gate.in_flight("acme"), 2, "a command refused at once takes no place");
        // A command queued at the cap keeps its turn: one trying at once does not pass it when a slot frees.
        let queued = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter("acme", Some(2), Duration::from_secs(10)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        assert!(entry.try_enter(Some(2)).is_none(), "the freed slot is the queued command's");
        assert!(queued.await.unwrap());
        drop(second);
        // A raised cap lets it in; a held tenant's command never passes at once.
        let _third = entry.try_enter(Some(3)).expect("below the raised cap");
        let hold = gate.hold("acme", Duration::from_secs(30));
        tokio::pin!(hold);
        assert!(futures_poll_once(hold.as_mut()).await.is_none(), "the hold drains the command in flight");
        assert!(entry.try_enter(None).is_none(), "held");
        assert_eq!(gate.in_flight("acme"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn entering_at_once_does_not_pass_a_queued_command_when_the_cap_is_raised() {
        let gate = Arc::new(Gate::default());
        let entry = gate.entry("acme");
        let _a = entry.try_enter(Some(2)).unwrap();
        let _b = entry.try_enter(Some(2)).unwrap();
        let queued = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter("acme", Some(2), Duration::from_secs(10)).await.map(std::mem::forget).is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(entry.try_enter(Some(3)).is_none(), "the raised cap's slot is the queued command's");
        assert!(queued.await.unwrap());
        assert_eq!(gate.in_flight("acme"), 3);
    }

    /// Polls `future` once: its output if it is ready.
    async fn futures_poll_once<F: std::future::Future>(mut future: std::pin::Pin<&mut F>) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match future.as_mut().poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_cap_waits_then_refuses() {
        let gate = Arc::new(Gate::default());
        let first = gate.enter("acme", Some(1), NO_CAP).await.unwrap();
        let refused = gate.enter("acme", Some(1), Duration::from_millis(500)).await.err().unwrap();
        assert_eq!(refused.get_i32("code").unwrap(), 462);
        // Another tenant is not counted against acme's cap.
        let _other = gate.enter("globex", Some(1), NO_CAP).await.unwrap();
        let second = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter("acme", Some(1), Duration::from_secs(10)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        assert!(second.await.unwrap(), "a slot freed within the wait admits the command");
    }
}
