//! The proxy's worker threads: one single-threaded runtime per core, each serving whole client connections.
//!
//! A client connection is handed to one worker when it is accepted and stays there: its socket, the backend
//! connections it opens and every timer it sets are registered with that worker's own event loop, so a command
//! and its reply are handled on one thread without waking another. tokio's work-stealing runtime, which served
//! connections before, let any idle worker be woken to steal a ready task, and moved connections between
//! threads: on the load harness that cost a third more CPU per command than one worker did (`benches/load.rs`).
//! A byte relay such as HAProxy is built the same way, one event loop per thread with connections bound to it.
//!
//! Backend connections are pooled across workers ([`crate::pool`]); the pool prefers one opened on the calling
//! worker ([`shard`]), because a connection registered with another worker's event loop would have that worker
//! woken for each of its replies. Any connection still works from any worker: the preference is for speed only.
//!
//! This module owns the worker threads and the choice of worker for a new connection (the one serving the
//! fewest). It must never run anything but connection work on the workers: accepting, signals, the admin
//! listener and health checks stay on the control runtime, so that a busy worker cannot delay them.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread is; [`NOT_A_WORKER`] on every other thread.
    static SHARD: Cell<usize> = const { Cell::new(NOT_A_WORKER) };
}

/// What [`shard`] says on the control runtime and on any thread that is not a worker (the tests' runtimes, which
/// serve connections themselves): connections opened there are theirs.
pub const NOT_A_WORKER: usize = usize::MAX;

/// The worker the calling thread is ([`NOT_A_WORKER`] elsewhere): which of the pool's idle connections are its
/// own.
pub fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// The running workers. Dropping this stops them (their connections end with their runtimes).
pub struct Workers {
    workers: Vec<Worker>,
    _stop: Vec<oneshot::Sender<()>>,
}

/// One worker: where to spawn on it, and how many connections it serves.
#[derive(Clone)]
pub struct Worker {
    handle: Handle,
    connections: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` workers (at least one), each a thread running its own single-threaded runtime.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Vec::new();
        let mut stop = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("tenantwall-worker-{index}")).spawn(move || {
                SHARD.with(|s| s.set(index));
                // Serves whatever is spawned on it until told to stop (or the sender is dropped).
                let _ = runtime.block_on(stop_rx);
            })?;
            workers.push(Worker { handle, connections: Arc::new(AtomicUsize::new(0)) });
            stop.push(stop_tx);
        }
        Ok(Self { workers, _stop: stop })
    }

    /// Worker `index`, for tests that must run something on a given one.
    #[cfg(test)]
    pub(crate) fn worker(&self, index: usize) -> Option<&Worker> {
        self.workers.get(index)
    }

    /// The worker serving the fewest connections, for a new one.
    pub fn pick(&self) -> &Worker {
        let load = |w: &&Worker| w.connections.load(Ordering::Relaxed);
        // `start` made at least one.
        self.workers.iter().min_by_key(load).unwrap_or_else(|| &self.workers[0])
    }
}

impl Worker {
    /// Where to spawn the connection's task.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Counts one connection on this worker until the returned guard is dropped (by the connection's task, when
    /// it ends or is aborted).
    pub fn serving(&self) -> Serving {
        self.connections.fetch_add(1, Ordering::Relaxed);
        Serving(self.connections.clone())
    }
}

/// One connection counted on a worker ([`Worker::serving`]).
pub struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A queue of waiters in arrival order, each with the worker it waits on, from which something freed on one worker
/// (a pooled connection, a tenant's in-flight slot) is handed to the next waiter ([`WorkerQueue::pop`]).
pub struct WorkerQueue<T> {
    waiters: VecDeque<(usize, T)>,
    /// How often in a row the first waiter has been passed over for one on the freeing worker.
    head_passed: usize,
}

/// How far into a [`WorkerQueue`] a waiter on the freeing worker is looked for.
const SAME_WORKER_WINDOW: usize = 4;
/// How often in a row the first waiter of a [`WorkerQueue`] may be passed over.
const MAX_PASSED: usize = 2;

impl<T> Default for WorkerQueue<T> {
    fn default() -> Self {
        Self { waiters: VecDeque::new(), head_passed: 0 }
    }
}

impl<T> WorkerQueue<T> {
    /// Queues `waiter`, waiting on the calling thread's worker ([`shard`]).
    pub fn push(&mut self, waiter: T) {
        self.push_on(shard(), waiter);
    }

    fn push_on(&mut self, worker: usize, waiter: T) {
        self.waiters.push_back((worker, waiter));
    }

    /// The next waiter, for something freed on worker `freed_on` (`None`: anywhere): the first, or an early one
    /// (among the first [`SAME_WORKER_WINDOW`]) waiting on that worker, so that it runs on without the freeing
    /// thread waking another one; the first is passed over at most [`MAX_PASSED`] times in a row, so nobody
    /// waits long for that preference: any waiter is served within three times the hand-outs it would wait for
    /// in strict arrival order. Off the workers (the tests' runtimes, the control runtime) every waiter and every
    /// hand-out is [`NOT_A_WORKER`]'s, and the order is strictly the arrival order.
    pub fn pop(&mut self, freed_on: Option<usize>) -> Option<T> {
        let (first, _) = self.waiters.front()?;
        let at = match freed_on {
            Some(here) if *first != here && self.head_passed < MAX_PASSED => {
                self.waiters.iter().take(SAME_WORKER_WINDOW).position(|(s, _)| *s == here).unwrap_or(0)
            }
            _ => 0,
        };
        self.head_passed = if at == 0 { 0 } else { self.head_passed + 1 };
        self.waiters.remove(at).map(|(_, waiter)| waiter)
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Room held for waiters, for tests of the memory a queue keeps.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.waiters.capacity()
    }

    /// Keeps the waiters `keep` says yes to, in their order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.waiters.retain(|(_, waiter)| keep(waiter));
    }

    /// Gives back the memory of an empty queue beyond `kept` waiters.
    pub fn shrink_when_empty(&mut self, kept: usize) {
        if self.waiters.is_empty() && self.waiters.capacity() > kept {
            self.waiters.shrink_to(kept);
        }
    }
}

/// The number of workers for `run`: `TOKIO_WORKER_THREADS` when set to a positive number (the knob this proxy
/// always had), else one per core.
pub fn default_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_goes_to_the_least_busy_worker_and_each_worker_knows_its_shard() {
        let workers = Workers::start(3).unwrap();
        assert!(workers.worker(2).is_some() && workers.worker(3).is_none());
        let first = workers.pick().serving();
        let second = workers.pick().serving();
        let third = workers.pick().serving();
        let loads: Vec<usize> = workers.workers.iter().map(|w| w.connections.load(Ordering::Relaxed)).collect();
        assert_eq!(loads, [1, 1, 1]);
        drop(second);
        let loads: Vec<usize> = workers.workers.iter().map(|w| w.connections.load(Ordering::Relaxed)).collect();
        assert_eq!(loads, [1, 0, 1]);
        // The freed worker is picked next, and its tasks run on a thread that reports its index.
        let worker = workers.pick();
        assert!(Arc::ptr_eq(&worker.connections, &workers.worker(1).unwrap().connections));
        let (tx, rx) = std::sync::mpsc::channel();
        for (index, w) in workers.workers.iter().enumerate() {
            let tx = tx.clone();
            w.handle()
                .spawn(async move { tx.send((index, shard(), std::thread::current().name().map(str::to_owned))) });
        }
        let mut seen: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        seen.sort();
        for (index, shard, name) in seen {
            assert_eq!(index, shard);
            assert_eq!(name.as_deref(), Some(format!("tenantwall-worker-{index}").as_str()));
        }
        assert_eq!(super::shard(), NOT_A_WORKER);
        drop((first, third));
    }

    #[test]
    fn a_queue_prefers_early_waiters_on_the_freeing_worker_and_passes_the_first_over_at_most_twice() {
        let queued = |workers: &[usize]| {
            let mut queue = WorkerQueue::default();
            for (n, &worker) in workers.iter().enumerate() {
                queue.push_on(worker, n);
            }
            queue
        };
        let mut queue = queued(&[1, 0, 0, 1, 0]);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop(Some(0))).collect();
        // 1 and 2 wait on worker 0 and go before 0, which is then served; 4 goes before 3 the same way.
        assert_eq!(order, [1, 2, 0, 4, 3]);
        // Beyond the first four, a waiter on the freeing worker is not looked for.
        let mut queue = queued(&[1, 1, 1, 1, 0]);
        assert_eq!(queue.pop(Some(0)), Some(0));
        // Without a freeing worker, or off the workers, the order is the arrival order.
        let mut queue = queued(&[1, 0, 0, 1, 0]);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop(None)).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        let mut queue = queued(&[NOT_A_WORKER; 3]);
        assert_eq!(queue.pop(Some(NOT_A_WORKER)), Some(0));
        assert!(!queue.is_empty() && queue.len() == 2);
    }
}
