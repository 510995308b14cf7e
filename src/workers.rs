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
}
