//! A bounded, fair pool of connections to one backend.
//!
//! Commands are checked out onto a pooled connection for one exchange (the request and every reply to it) and
//! given back afterwards, so thousands of client connections share a few backend connections. MongoDB binds
//! sessions, transactions and cursors to lsids and cursor ids, not to connections, and the proxy strips exhaust
//! and answers every fire-and-forget write itself, so nothing outlives one exchange on a connection.
//!
//! Each connection remembers the worker thread it was opened on ([`crate::workers::shard`]), whose event loop
//! its socket is registered with. A checkout takes an idle connection of its own worker first, then opens a new
//! one while below the bound, and only then takes another worker's idle one (which works, at the price of that
//! worker being woken for each reply). Below the bound, a proxy with several workers may so hold more
//! connections than one with a single worker would; never more than the bound. A connection given back to
//! waiting commands goes to the tenant whose turn it is, as below, and within that tenant's queue to an early
//! command on the connection's own worker when there is one ([`Queue::pop`]), the first passed over at most
//! twice in a row.
//!
//! When every connection is busy, waiting commands queue per tenant and are served round-robin across tenants,
//! not first come first served: a tenant with a thousand commands queued delays another tenant's next command by
//! one exchange per waiting tenant, not by a thousand.
//!
//! This module must never hand one connection to two commands at once, never take back a connection whose
//! exchange did not finish (a reply may still be on its way: such a connection is closed, see [`Pooled`]), and
//! never let the connections open, idle or busy or being opened, exceed the bound. It knows nothing of the wire
//! protocol: the connection type and how to open one are the caller's.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

/// Why no connection could be checked out.
#[derive(Debug)]
pub enum CheckoutError<E> {
    /// Every connection stayed busy for the whole wait.
    Timeout { waited: Duration, max: usize },
    /// Opening a new connection failed.
    Connect(E),
}

/// A bounded, fair pool of `C`.
pub struct Pool<C: Send + 'static> {
    state: Mutex<State<C>>,
    max: AtomicUsize,
    /// Told the number of open connections whenever it changes (a metrics gauge).
    on_open: Box<dyn Fn(usize) + Send + Sync>,
}

struct State<C: Send + 'static> {
    /// Connections nobody uses, with the worker each was opened on; most recently returned last (reused first,
    /// so the others can age out).
    idle: Vec<(usize, C)>,
    /// Idle, checked out, or being opened.
    open: usize,
    /// Commands waiting for a connection, per tenant, in arrival order.
    waiting: HashMap<Arc<str>, Queue<C>>,
    /// Tenants with waiting commands, in the order they will be served.
    turn: VecDeque<Arc<str>>,
}

/// One tenant's waiting commands, each with the worker it waits on.
struct Queue<C: Send + 'static> {
    waiters: VecDeque<(usize, oneshot::Sender<Grant<C>>)>,
    /// How often the first waiter has been passed over for one on the worker of the connection handed out.
    head_passed: usize,
}

/// How far into a tenant's queue a waiter on the connection's own worker is looked for.
const SAME_WORKER_WINDOW: usize = 4;
/// How often the first waiter of a tenant may be passed over for one on the connection's own worker.
const MAX_PASSED: usize = 2;

impl<C: Send + 'static> Queue<C> {
    /// The next waiter of this tenant: the first, or, for a connection of worker `shard`, an early one waiting
    /// on that worker, so that its replies need not wake another thread; the first is passed over at most
    /// [`MAX_PASSED`] times in a row, so nobody waits on for it.
    fn pop(&mut self, shard: Option<usize>) -> Option<oneshot::Sender<Grant<C>>> {
        let (first, _) = self.waiters.front()?;
        let at = match shard {
            Some(shard) if *first != shard && self.head_passed < MAX_PASSED => {
                self.waiters.iter().take(SAME_WORKER_WINDOW).position(|(s, _)| *s == shard).unwrap_or(0)
            }
            _ => 0,
        };
        self.head_passed = if at == 0 { 0 } else { self.head_passed + 1 };
        self.waiters.remove(at).map(|(_, tx)| tx)
    }
}

impl<C: Send + 'static> State<C> {
    /// The next waiter, round-robin across tenants: a waiter of the tenant whose turn it is (its first, or for a
    /// connection of worker `shard` an early one on that worker, [`Queue::pop`]), and that tenant goes to the
    /// back of the line if it has more.
    fn next_waiter(&mut self, shard: Option<usize>) -> Option<oneshot::Sender<Grant<C>>> {
        while let Some(tenant) = self.turn.pop_front() {
            let Some(queue) = self.waiting.get_mut(&tenant) else { continue };
            let next = queue.pop(shard);
            if queue.waiters.is_empty() {
                self.waiting.remove(&tenant);
            } else {
                self.turn.push_back(tenant);
            }
            if next.is_some() {
                return next;
            }
        }
        None
    }

    /// The idle connection of worker `here` returned last.
    fn own_idle(&mut self, here: usize) -> Option<(usize, C)> {
        let at = self.idle.iter().rposition(|(shard, _)| *shard == here)?;
        Some(self.idle.remove(at))
    }

    fn enqueue(&mut self, tenant: &str, waiter: oneshot::Sender<Grant<C>>) {
        let waiter = (crate::workers::shard(), waiter);
        match self.waiting.get_mut(tenant) {
            Some(queue) => queue.waiters.push_back(waiter),
            None => {
                let tenant: Arc<str> = Arc::from(tenant);
                self.waiting.insert(tenant.clone(), Queue { waiters: VecDeque::from([waiter]), head_passed: 0 });
                self.turn.push_back(tenant);
            }
        }
    }
}

/// What a waiter is handed: a connection another command gave back, or the right to open one.
enum Grant<C: Send + 'static> {
    Conn(Pooled<C>),
    Slot(Slot<C>),
}

impl<C: Send + 'static> Pool<C> {
    /// A pool of at most `max` connections (at least 1); `on_open` hears the number of open connections.
    pub fn new(max: usize, on_open: impl Fn(usize) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State { idle: Vec::new(), open: 0, waiting: HashMap::new(), turn: VecDeque::new() }),
            max: AtomicUsize::new(max.max(1)),
            on_open: Box::new(on_open),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bound on open connections.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Connections open now: idle, checked out, or being opened.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Commands waiting now, for tests.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.values().map(|q| q.waiters.len()).sum()
    }

    /// Changes the bound (a policy reload). Raising it lets waiters open connections at once; lowering it
    /// closes idle connections beyond it now and busy ones as they come back.
    pub fn set_max(self: &Arc<Self>, max: usize) {
        let max = max.max(1);
        self.max.store(max, Ordering::Relaxed);
        let mut surplus = Vec::new();
        let mut grants = Vec::new();
        {
            let mut state = self.lock();
            while state.open > max {
                let Some((_, conn)) = state.idle.pop() else { break };
                state.open -= 1;
                surplus.push(conn);
            }
            while state.open < max {
                let Some(waiter) = state.next_waiter(None) else { break };
                state.open += 1;
                grants.push(waiter);
            }
            (self.on_open)(state.open);
        }
        drop(surplus);
        for waiter in grants {
            self.grant(waiter, Grant::Slot(Slot { pool: Some(self.clone()) }));
        }
    }

    /// A connection for one exchange, waiting at most `wait` when all are busy. `connect` opens a new one when
    /// the pool is below its bound; an idle connection is reused otherwise (the caller checks it is still
    /// alive: [`Pooled::is_fresh`]).
    pub async fn checkout<E, F, Fut>(
        self: &Arc<Self>,
        tenant: &str,
        wait: Duration,
        connect: F,
    ) -> Result<Pooled<C>, CheckoutError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        enum First<C: Send + 'static> {
            Idle((usize, C)),
            Open,
            Wait(oneshot::Receiver<Grant<C>>),
        }
        let here = crate::workers::shard();
        let first = {
            let mut state = self.lock();
            if let Some(own) = state.own_idle(here) {
                First::Idle(own)
            } else if state.open < self.max() {
                state.open += 1;
                (self.on_open)(state.open);
                First::Open
            } else if let Some(other) = state.idle.pop() {
                First::Idle(other)
            } else {
                let (tx, rx) = oneshot::channel();
                state.enqueue(tenant, tx);
                First::Wait(rx)
            }
        };
        let waiter = match first {
            First::Idle((shard, conn)) => {
                return Ok(Pooled { conn: Some(conn), shard, pool: self.clone(), fresh: false })
            }
            First::Open => return Slot { pool: Some(self.clone()) }.open(connect).await,
            First::Wait(waiter) => waiter,
        };
        let mut waiter = waiter;
        let grant = match tokio::time::timeout(wait, &mut waiter).await {
            Ok(Ok(grant)) => grant,
            // The sender was dropped without a grant: only when the pool itself is gone.
            Ok(Err(_)) => return Err(CheckoutError::Timeout { waited: wait, max: self.max() }),
            Err(_) => {
                // A grant sent just as the wait ran out is used rather than lost.
                waiter.close();
                match waiter.try_recv() {
                    Ok(grant) => grant,
                    Err(_) => return Err(CheckoutError::Timeout { waited: wait, max: self.max() }),
                }
            }
        };
        match grant {
            Grant::Conn(conn) => Ok(conn),
            Grant::Slot(slot) => slot.open(connect).await,
        }
    }

    /// An idle connection opened on this worker, when there is one: what [`Self::checkout`] takes first, taken
    /// without building its future. The caller checks it is still alive, as for `checkout`.
    pub fn try_idle(self: &Arc<Self>) -> Option<Pooled<C>> {
        let (shard, conn) = self.lock().own_idle(crate::workers::shard())?;
        Some(Pooled { conn: Some(conn), shard, pool: self.clone(), fresh: false })
    }

    /// Hands `grant` to `waiter`, or, when the waiter gave up meanwhile, to the next one; with nobody left
    /// waiting a connection goes idle and a slot is given back.
    fn grant(self: &Arc<Self>, waiter: oneshot::Sender<Grant<C>>, grant: Grant<C>) {
        let shard = match &grant {
            Grant::Conn(pooled) => Some(pooled.shard),
            Grant::Slot(_) => None,
        };
        let mut next = Some(waiter);
        let mut grant = grant;
        while let Some(waiter) = next.take() {
            match waiter.send(grant) {
                Ok(()) => return,
                Err(back) => grant = back,
            }
            next = self.lock().next_waiter(shard);
        }
        match grant {
            Grant::Conn(mut pooled) => {
                if let Some(conn) = pooled.conn.take() {
                    self.give_back(pooled.shard, conn);
                }
            }
            // Dropping the slot gives it back (or to a waiter that arrived meanwhile).
            Grant::Slot(slot) => drop(slot),
        }
    }

    /// A connection (opened on worker `shard`) whose exchange finished: to the next waiter, or idle.
    fn give_back(self: &Arc<Self>, shard: usize, conn: C) {
        let waiter = {
            let mut state = self.lock();
            if state.open > self.max() {
                // The bound was lowered: this one goes.
                state.open -= 1;
                (self.on_open)(state.open);
                drop(state);
                drop(conn);
                return;
            }
            match state.next_waiter(Some(shard)) {
                Some(waiter) => waiter,
                None => {
                    state.idle.push((shard, conn));
                    return;
                }
            }
        };
        self.grant(waiter, Grant::Conn(Pooled { conn: Some(conn), shard, pool: self.clone(), fresh: false }));
    }

    /// A connection or slot that is gone: its place goes to the next waiter, or the count drops.
    fn forget_one(self: &Arc<Self>) {
        let waiter = {
            let mut state = self.lock();
            if state.open > self.max() {
                state.open -= 1;
                (self.on_open)(state.open);
                return;
            }
            match state.next_waiter(None) {
                Some(waiter) => waiter,
                None => {
                    state.open = state.open.saturating_sub(1);
                    (self.on_open)(state.open);
                    return;
                }
            }
        };
        self.grant(waiter, Grant::Slot(Slot { pool: Some(self.clone()) }));
    }
}

/// The right to open one connection, counted in the pool's bound. Dropped unused, it is given back.
struct Slot<C: Send + 'static> {
    pool: Option<Arc<Pool<C>>>,
}

impl<C: Send + 'static> Slot<C> {
    async fn open<E, F, Fut>(mut self, connect: F) -> Result<Pooled<C>, CheckoutError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        // On failure (or cancellation) the slot is dropped, which gives it back.
        let conn = connect().await.map_err(CheckoutError::Connect)?;
        match self.pool.take() {
            Some(pool) => Ok(Pooled { conn: Some(conn), shard: crate::workers::shard(), pool, fresh: true }),
            // Unreachable: a slot always has its pool until it is opened or dropped.
            None => Err(CheckoutError::Timeout { waited: Duration::ZERO, max: 0 }),
        }
    }
}

impl<C: Send + 'static> Drop for Slot<C> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.forget_one();
        }
    }
}

/// A checked-out connection. [`release`](Self::release) it once its exchange is complete; dropped otherwise (an
/// error, a timeout, a client that went away mid-command), it is closed, because a reply may still arrive on it.
pub struct Pooled<C: Send + 'static> {
    conn: Option<C>,
    /// The worker it was opened on.
    shard: usize,
    pool: Arc<Pool<C>>,
    fresh: bool,
}

impl<C: Send + 'static> Pooled<C> {
    /// Opened for this checkout, rather than reused from the idle list.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The connection, for the exchange.
    pub fn get(&mut self) -> Option<&mut C> {
        self.conn.as_mut()
    }

    /// Gives the connection back for the next command: its exchange is complete.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(self.shard, conn);
        }
    }
}

impl<C: Send + 'static> Drop for Pooled<C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn);
            self.pool.forget_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn counting(max: usize) -> (Arc<Pool<u32>>, Arc<AtomicU32>) {
        let opened = Arc::new(AtomicU32::new(0));
        (Pool::new(max, |_| {}), opened)
    }

    async fn open(pool: &Arc<Pool<u32>>, tenant: &str, opened: &Arc<AtomicU32>) -> Pooled<u32> {
        let next = opened.fetch_add(1, Ordering::Relaxed);
        pool.checkout(tenant, Duration::from_secs(5), || async move { Ok::<_, ()>(next) }).await.unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_and_never_exceed_the_bound() {
        let (pool, opened) = counting(2);
        let a = open(&pool, "acme", &opened).await;
        let b = open(&pool, "acme", &opened).await;
        assert!(a.is_fresh() && b.is_fresh());
        assert_eq!(pool.open(), 2);
        a.release();
        let c = open(&pool, "acme", &opened).await;
        assert!(!c.is_fresh(), "the idle connection is reused");
        assert_eq!(opened.load(Ordering::Relaxed), 3, "the third connect closure was never run");
        assert_eq!(pool.open(), 2);
        drop((b, c));
        assert_eq!(pool.open(), 0, "connections dropped mid-exchange are closed, not kept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_times_out_the_waiter() {
        let (pool, opened) = counting(1);
        let _busy = open(&pool, "acme", &opened).await;
        let outcome = pool.checkout("globex", Duration::from_millis(50), || async { Ok::<u32, ()>(9) }).await;
        assert!(matches!(outcome, Err(CheckoutError::Timeout { max: 1, .. })));
        assert_eq!(pool.open(), 1);
    }

    #[tokio::test]
    async fn a_failed_connect_gives_its_slot_back() {
        let (pool, _) = counting(1);
        let failed = pool.checkout("acme", Duration::from_secs(1), || async { Err::<u32, _>("refused") }).await;
        assert!(matches!(failed, Err(CheckoutError::Connect("refused"))));
        assert_eq!(pool.open(), 0);
        let ok = pool.checkout("acme", Duration::from_secs(1), || async { Ok::<u32, ()>(1) }).await;
        assert!(ok.is_ok(), "the slot was given back");
    }

    /// Waiters are served round-robin across tenants: acme queued three commands before globex queued one, and
    /// globex is served second, not fourth.
    #[tokio::test]
    async fn waiters_are_served_round_robin_across_tenants() {
        let (pool, opened) = counting(1);
        let busy = open(&pool, "acme", &opened).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, tenant) in ["acme", "acme", "acme", "globex"].into_iter().enumerate() {
            let waiting = pool.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let conn =
                    waiting.checkout(tenant, Duration::from_secs(5), || async { Ok::<u32, ()>(99) }).await.unwrap();
                order.lock().unwrap().push(format!("{tenant}{i}"));
                tokio::task::yield_now().await;
                conn.release();
            }));
            // Let each one queue before the next, so arrival order is known.
            while pool.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        busy.release();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["acme0", "globex3", "acme1", "acme2"]);
        assert_eq!(pool.open(), 1);
    }

    /// A connection dropped mid-exchange passes its place to a waiter, which opens a new connection.
    #[tokio::test]
    async fn a_discarded_connection_lets_a_waiter_open_a_new_one() {
        let (pool, opened) = counting(1);
        let broken = open(&pool, "acme", &opened).await;
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.checkout("globex", Duration::from_secs(5), || async { Ok::<u32, ()>(7) }).await.map(|c| c.fresh)
            })
        };
        while pool.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        drop(broken);
        assert!(waiter.await.unwrap().unwrap(), "the waiter opened a fresh connection");
        assert_eq!(pool.open(), 0);
    }

    #[tokio::test]
    async fn raising_the_bound_serves_waiters_and_lowering_it_closes_idle_ones() {
        let (pool, opened) = counting(1);
        let busy = open(&pool, "acme", &opened).await;
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.checkout("globex", Duration::from_secs(5), || async { Ok::<u32, ()>(7) })
                    .await
                    .map(|c| c.release())
            })
        };
        while pool.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        pool.set_max(2);
        waiter.await.unwrap().unwrap();
        busy.release();
        assert_eq!(pool.open(), 2);
        pool.set_max(1);
        assert_eq!(pool.open(), 1, "the surplus idle connection is closed");
    }

    /// Runs `job` on worker `index`, and returns its output once the job and everything it held are dropped.
    fn run_on<T: Send + 'static>(
        workers: &crate::workers::Workers,
        index: usize,
        job: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        workers.worker(index).unwrap().handle().spawn(async move { tx.send(job.await).unwrap() });
        rx.recv().unwrap()
    }

    /// Checks a connection out on worker `index` and gives it back at once: (its number, whether it was opened
    /// for this checkout).
    fn on_worker(workers: &crate::workers::Workers, index: usize, pool: &Arc<Pool<u32>>, next: u32) -> (u32, bool) {
        let pool = pool.clone();
        run_on(workers, index, async move {
            let mut conn =
                pool.checkout("acme", Duration::from_secs(1), || async move { Ok::<_, ()>(next) }).await.unwrap();
            let seen = (*conn.get().unwrap(), conn.is_fresh());
            conn.release();
            seen
        })
    }

    #[test]
    fn a_worker_reuses_its_own_connections_opens_below_the_bound_and_borrows_only_at_it() {
        let workers = crate::workers::Workers::start(2).unwrap();
        let pool: Arc<Pool<u32>> = Pool::new(2, |_| {});
        assert_eq!(on_worker(&workers, 0, &pool, 10), (10, true));
        // Worker 1 does not take worker 0's idle connection while it may open its own.
        assert_eq!(on_worker(&workers, 1, &pool, 11), (11, true));
        assert_eq!(pool.open(), 2);
        // Each worker gets its own back, though the other's was returned last.
        assert_eq!(on_worker(&workers, 0, &pool, 12), (10, false));
        assert_eq!(on_worker(&workers, 1, &pool, 13), (11, false));
        assert_eq!(on_worker(&workers, 0, &pool, 14), (10, false));
        // At the bound, another worker's idle connection is used rather than waiting.
        let pool: Arc<Pool<u32>> = Pool::new(1, |_| {});
        assert_eq!(on_worker(&workers, 0, &pool, 20), (20, true));
        assert_eq!(on_worker(&workers, 1, &pool, 21), (20, false));
        assert_eq!(pool.open(), 1);
        // The borrowed connection still belongs to worker 0: given back, it is worker 0's again, while worker 1
        // would borrow it again.
        assert_eq!(on_worker(&workers, 0, &pool, 22), (20, false));
    }

    /// What [`Pool::try_idle`] takes on worker `index`, given back at once.
    fn try_on_worker(workers: &crate::workers::Workers, index: usize, pool: &Arc<Pool<u32>>) -> Option<u32> {
        let pool = pool.clone();
        run_on(workers, index, async move {
            pool.try_idle().map(|mut conn| {
                assert!(!conn.is_fresh());
                let number = *conn.get().unwrap();
                conn.release();
                number
            })
        })
    }

    #[test]
    fn taking_at_once_takes_only_an_idle_connection_of_the_worker_itself() {
        let workers = crate::workers::Workers::start(2).unwrap();
        let pool: Arc<Pool<u32>> = Pool::new(2, |_| {});
        assert_eq!(try_on_worker(&workers, 0, &pool), None, "nothing idle: it opens nothing");
        assert_eq!(pool.open(), 0);
        assert_eq!(on_worker(&workers, 0, &pool, 10), (10, true));
        // Worker 1 neither borrows worker 0's idle connection nor opens one: that is the checkout's to decide.
        assert_eq!(try_on_worker(&workers, 1, &pool), None);
        assert_eq!(pool.open(), 1);
        assert_eq!(try_on_worker(&workers, 0, &pool), Some(10));
        assert_eq!(try_on_worker(&workers, 0, &pool), Some(10), "given back, it is idle again");
        // A connection taken and dropped mid-exchange is closed, not kept.
        let taken = pool.clone();
        assert!(run_on(&workers, 0, async move { taken.try_idle().is_some() }));
        assert_eq!(pool.open(), 0);
        assert_eq!(try_on_worker(&workers, 0, &pool), None);
    }

    #[test]
    fn a_connection_given_back_goes_to_an_early_waiter_on_its_own_worker_without_starving_the_first() {
        let workers = crate::workers::Workers::start(2).unwrap();
        let pool: Arc<Pool<u32>> = Pool::new(1, |_| {});
        let order = Arc::new(Mutex::new(Vec::new()));
        // Worker 0 opens the only connection and holds it.
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = pool.clone();
        workers.worker(0).unwrap().handle().spawn(async move {
            let conn = holder.checkout("acme", Duration::from_secs(5), || async { Ok::<_, ()>(1) }).await.unwrap();
            held_tx.send(()).unwrap();
            let _ = release_rx.await;
            conn.release();
        });
        held_rx.recv().unwrap();
        // Six commands of one tenant queue, in this order, on these workers.
        for (label, worker) in [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 0), ("f", 0)] {
            let (waiting, order) = (pool.clone(), order.clone());
            let queued = pool.waiting() + 1;
            workers.worker(worker).unwrap().handle().spawn(async move {
                let conn = waiting.checkout("acme", Duration::from_secs(5), || async { Ok::<_, ()>(2) }).await.unwrap();
                order.lock().unwrap().push(label);
                conn.release();
            });
            while pool.waiting() < queued {
                std::thread::yield_now();
            }
        }
        release_tx.send(()).unwrap();
        while order.lock().unwrap().len() < 6 {
            std::thread::yield_now();
        }
        // The connection is worker 0's: b and d, waiting there, go before a, which is passed over twice and no
        // more; then e and f before c, likewise.
        assert_eq!(*order.lock().unwrap(), ["b", "d", "a", "e", "f", "c"]);
    }
}
