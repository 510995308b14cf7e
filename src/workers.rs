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
//! A new connection goes to the worker with the fewest *working* connections: those that have carried a forwarded
//! command ([`working_here`]), ties broken at random. Counting every open connection instead put all the work on
//! one worker: a driver opens a monitoring connection before its first application connection, and the monitoring
//! one only ever sends `hello`, which the proxy answers itself. With two workers, monitor and application
//! connections then alternated between them, so every application connection of a fleet of clients (or of an app
//! with one client per tenant) landed on the same worker while the other served only heartbeats: on the load
//! harness one core idled while the relay's one busy worker held everyone up (`benches/load.rs`, seventeenth
//! round). Any fixed rotation can fall into step with a client's pattern of connections the same way, which is why
//! ties are broken at random: when nothing is working yet (a burst of connections at start-up), placement is
//! random and so even on average, and from then on each connection that starts working steers the next.
//!
//! This module owns the worker threads and the choice of worker for a new connection. It must never run anything
//! but connection work on the workers: accepting, signals, the admin listener and health checks stay on the
//! control runtime, so that a busy worker cannot delay them.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::gauge::Gauge;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread is; [`NOT_A_WORKER`] on every other thread.
    static SHARD: Cell<usize> = const { Cell::new(NOT_A_WORKER) };
    /// The working connections of the worker this thread is ([`working_here`]); `None` on every other thread.
    static WORKING: RefCell<Option<Gauge>> = const { RefCell::new(None) };
}

/// What [`shard`] says on the control runtime and on any thread that is not a worker (the tests' runtimes, which
/// serve connections themselves): connections opened there are theirs.
pub const NOT_A_WORKER: usize = usize::MAX;

/// The worker the calling thread is ([`NOT_A_WORKER`] elsewhere): which of the pool's idle connections are its
/// own.
pub fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// Counts the calling connection among its worker's working connections until the returned guard is dropped (the
/// connection keeps it until it closes). Called by a connection at its first forwarded command, on the worker that
/// serves it; `None` on a thread that is not a worker (the tests' runtimes), where there is no placement to steer.
pub fn working_here() -> Option<Working> {
    let working = WORKING.with(|w| w.borrow().clone())?;
    working.inc();
    Some(Working(working))
}

/// One working connection counted on its worker ([`working_here`]).
pub struct Working(Gauge);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The running workers. Dropping this stops them (their connections end with their runtimes).
pub struct Workers {
    workers: Vec<Worker>,
    /// Draws for breaking ties between equally loaded workers ([`Workers::pick`]): a counter whose successive
    /// values are mixed into well spread numbers, from a random start.
    draws: AtomicU64,
    _stop: Vec<oneshot::Sender<()>>,
}

/// One worker: where to spawn on it, and how many of its connections are working.
#[derive(Clone)]
pub struct Worker {
    handle: Handle,
    /// Also the `tenantwall_worker_working_connections` series of the worker, when started by a server
    /// ([`Workers::start_counted`]).
    working: Gauge,
}

impl Workers {
    /// Starts `count` workers (at least one), each a thread running its own single-threaded runtime.
    pub fn start(count: usize) -> std::io::Result<Self> {
        Self::start_counted(count, |_| Gauge::default())
    }

    /// [`Self::start`], each worker counting its working connections on `gauge(index)` (a metric's series).
    pub fn start_counted(count: usize, gauge: impl Fn(usize) -> Gauge) -> std::io::Result<Self> {
        let mut workers = Vec::new();
        let mut stop = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let working = gauge(index);
            let counted = working.clone();
            std::thread::Builder::new().name(format!("tenantwall-worker-{index}")).spawn(move || {
                SHARD.with(|s| s.set(index));
                WORKING.with(|w| *w.borrow_mut() = Some(counted));
                // Serves whatever is spawned on it until told to stop (or the sender is dropped).
                let _ = runtime.block_on(stop_rx);
            })?;
            workers.push(Worker { handle, working });
            stop.push(stop_tx);
        }
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Ok(Self { workers, draws: AtomicU64::new(seed), _stop: stop })
    }

    /// Worker `index`, for tests that must run something on a given one.
    #[cfg(test)]
    pub(crate) fn worker(&self, index: usize) -> Option<&Worker> {
        self.workers.get(index)
    }

    /// The worker for a new connection: one of those with the fewest working connections, chosen at random among
    /// them (see the module's documentation for why not the fewest connections, nor a fixed rotation).
    pub fn pick(&self) -> &Worker {
        let loads: Vec<i64> = self.workers.iter().map(|w| w.working.get()).collect();
        let least = loads.iter().copied().min().unwrap_or(0);
        let tied = loads.iter().filter(|&&load| load == least).count().max(1);
        let nth = (self.draw() % tied as u64) as usize;
        let index = loads.iter().enumerate().filter(|(_, &load)| load == least).nth(nth).map_or(0, |(i, _)| i);
        // `start` made at least one.
        &self.workers[index]
    }

    /// The next draw: splitmix64's mixing of a counter that steps by the golden ratio, so that successive draws
    /// are spread evenly whatever the start.
    fn draw(&self) -> u64 {
        let mut z = self.draws.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Worker {
    /// Where to spawn the connection's task.
    pub fn handle(&self) -> &Handle {
        &self.handle
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

    /// A connection placed by `pick` starts working there: [`working_here`] on the worker's own thread, as a
    /// connection's first forwarded command does. Returns the worker's index and the guard.
    fn place_working(workers: &Workers) -> (usize, Working) {
        let worker = workers.pick();
        let index = workers.workers.iter().position(|w| same(w, worker)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        worker.handle().spawn(async move { tx.send(working_here()) });
        (index, rx.recv().unwrap().expect("a worker's thread counts its working connections"))
    }

    fn loads(workers: &Workers) -> Vec<i64> {
        workers.workers.iter().map(|w| w.working.get()).collect()
    }

    fn same(a: &Worker, b: &Worker) -> bool {
        std::ptr::eq(a, b)
    }

    #[test]
    fn a_new_connection_goes_to_a_worker_with_the_fewest_working_connections_and_each_knows_its_shard() {
        let workers = Workers::start(3).unwrap();
        assert!(workers.worker(2).is_some() && workers.worker(3).is_none());
        let (a, first) = place_working(&workers);
        let (b, second) = place_working(&workers);
        let (c, third) = place_working(&workers);
        let mut placed = [a, b, c];
        placed.sort();
        assert_eq!(placed, [0, 1, 2], "each new working connection went to a worker with none");
        assert_eq!(loads(&workers), [1, 1, 1]);
        drop(second);
        let mut expected = [1, 1, 1];
        expected[b] = 0;
        assert_eq!(loads(&workers), expected);
        // The worker that lost its working connection is the only one with the fewest: every draw picks it.
        for _ in 0..20 {
            assert!(same(workers.pick(), workers.worker(b).unwrap()));
        }
        // Tasks run on a thread that reports its index; other threads count nothing.
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
        assert!(working_here().is_none());
        drop((first, third));
        assert_eq!(loads(&workers), [0, 0, 0]);
    }

    /// The pattern that put all the work on one worker: each client opens a monitoring connection (it only sends
    /// `hello`, answered by the proxy, so it never works) and then an application connection. Placing by open
    /// connections sent every application connection to the same worker of two.
    #[test]
    fn a_driver_s_monitoring_connections_do_not_push_every_application_connection_onto_one_worker() {
        for seed in [0, 1, 0xDEAD_BEEF, u64::MAX] {
            let workers = Workers::start(2).unwrap();
            workers.draws.store(seed, Ordering::Relaxed);
            let mut kept = Vec::new();
            for _ in 0..64 {
                let _monitor = workers.pick();
                kept.push(place_working(&workers).1);
            }
            let loads = loads(&workers);
            assert!(loads[0].abs_diff(loads[1]) <= 1, "application connections per worker {loads:?} (seed {seed})");
        }
    }

    /// Connections that arrive before any of them works (a burst at start-up) are spread at random, not all
    /// given to the first worker, nor in a fixed rotation a client's own pattern could fall into step with.
    #[test]
    fn connections_that_arrive_before_any_works_are_spread_over_the_workers() {
        let workers = Workers::start(2).unwrap();
        for seed in [0, 7, 0xDEAD_BEEF] {
            workers.draws.store(seed, Ordering::Relaxed);
            let mut on = [0usize; 2];
            let mut in_step = [0usize; 2];
            for n in 0..128 {
                let worker = workers.pick();
                let index = usize::from(!same(worker, workers.worker(0).unwrap()));
                on[index] += 1;
                // Every other connection, as a client that opens two at a time would: a fixed rotation gives
                // them all to one worker.
                if n % 2 == 1 {
                    in_step[index] += 1;
                }
            }
            assert!(on.iter().all(|&n| (40..=88).contains(&n)), "placed {on:?} (seed {seed})");
            assert!(
                in_step.iter().all(|&n| (16..=48).contains(&n)),
                "every other one placed {in_step:?} (seed {seed})"
            );
        }
    }
}
