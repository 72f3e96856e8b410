//! Dispatch cost: one event to N = 1, 10, 100 no-op handlers, sync and async, with and without
//! isolation, against the limit: a hand-written sequence of direct calls (or awaits) of the same
//! functions. The system allocator; `benches/dispatch_mimalloc.rs` runs the async cases with mimalloc.
//!
//! Run: `cargo bench -p hooks-core --bench dispatch`. Results and goals: docs/benchmarks.md.

#[path = "support/dispatch_setup.rs"]
mod setup;

#[path = "support/dispatch_bench.rs"]
mod body;

use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    body::bench(c, &[false, true], "");
}

criterion_group!(benches, bench);
criterion_main!(benches);
