//! The cursor ownership table: what one cursor-opening command and one getMore cost it, at an empty table and
//! at 100,000 open cursors.
//!
//! The table replaced a `HashMap` swept in full (under its one lock) on every new cursor once it held 4,096
//! records; the load exercise measured the proxy's CPU per cursor-opening find at 40 µs with no open cursors and
//! 915 µs with 100,000. Each case here records a cursor, checks ownership as a getMore does, and releases it.
//!
//! Run: `cargo bench --bench cursors` (add `-- --quick` for a fast pass).
//!
//! Results (2026-11-27, 2-core x86_64 VM shared with two other builds, `-- --warm-up-time 1 --measurement-time 3`,
//! criterion median):
//!
//! | open cursors | record + owned + release |
//! |--------------|--------------------------|
//! | 0            | 0.74 µs                  |
//! | 100,000      | 0.61 µs                  |
//!
//! Flat, as an LRU should be (the difference is noise from the shared machine); the table no longer grows with
//! the number of open cursors, where the swept map cost 875 µs more per cursor-opening find at 100,000.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tenantwall::session::Cursors;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("cursor table: record + owned + release");
    for open in [0usize, 100_000] {
        let cursors = Cursors::new(200_000, 200_000);
        for id in 0..open {
            // Spread over tenants and backends like a shared proxy's table.
            cursors.record(["one", "two"][id % 2], id as i64 + 1, &format!("tenant{}", id % 100), Default::default());
        }
        let mut next = 1_000_000_000i64;
        group.bench_function(format!("{open} open cursors"), |b| {
            b.iter(|| {
                next += 1;
                cursors.record("one", next, "tenant7", Default::default());
                assert!(black_box(cursors.owned("one", next, "tenant7")));
                cursors.release("one", next);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
