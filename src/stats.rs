//! Process-wide counters. Cheap atomics read by tests and, later, by metrics exporters.

use std::sync::atomic::{AtomicU64, Ordering};

use tenantwall_protocol::Compressor;

/// Counters shared by all connections of one server.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    /// Connections closed at accept by a connection limit.
    pub connections_refused: AtomicU64,
    /// Connections held unread at accept because their source repeatedly broke the protocol before authenticating.
    pub connections_held: AtomicU64,
    pub commands: AtomicU64,
    pub denied: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub backend_errors: AtomicU64,
    compressed_requests: [AtomicU64; 4],
}

impl Stats {
    pub fn count_compressed(&self, compressor: Compressor) {
        self.compressed_requests[usize::from(compressor.id())].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests that arrived compressed with `compressor`.
    pub fn compressed(&self, compressor: Compressor) -> u64 {
        self.compressed_requests[usize::from(compressor.id())].load(Ordering::Relaxed)
    }

    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
