//! The async cases of `benches/dispatch.rs` with mimalloc as the global allocator, as
//! `gateway-example` runs. Each call of an async handler allocates its boxed future and frees it
//! (the one allocation a dispatch makes); with glibc's `malloc` that pair is ~140 instructions, with
//! mimalloc's ~55. Sync handlers allocate nothing, so they are not repeated here.
//!
//! Run: `cargo bench -p hooks-core --bench dispatch_mimalloc` (groups `dispatch_async_mimalloc`).
//! Results: docs/benchmarks.md.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/dispatch_setup.rs"]
mod setup;

#[path = "support/dispatch_bench.rs"]
mod body;

use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    body::bench(c, &[true], "_mimalloc");
}

criterion_group!(benches, bench);
criterion_main!(benches);
