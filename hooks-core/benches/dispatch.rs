//! Dispatch cost: one event to N = 1, 10, 100 no-op handlers, sync and async, with and without
//! isolation, against the limit: a hand-written sequence of direct calls (or awaits) of the same
//! functions.
//!
//! Run: `cargo bench -p hooks-core --bench dispatch`. Results and goals: docs/benchmarks.md.

#[path = "support/dispatch_setup.rs"]
mod setup;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hooks_core::dispatch::Isolation;
use setup::{dispatcher, event, noop, noop_async};

const NS: [usize; 3] = [1, 10, 100];

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ev = event();
    for is_async in [false, true] {
        let kind = if is_async { "async" } else { "sync" };
        let mut group = c.benchmark_group(format!("dispatch_{kind}"));
        for n in NS {
            group.bench_with_input(BenchmarkId::new("direct", n), &n, |b, &n| {
                b.to_async(&rt).iter(|| async {
                    for _ in 0..n {
                        if is_async {
                            noop_async(black_box(&ev)).await;
                        } else {
                            noop(black_box(&ev));
                        }
                    }
                });
            });
            for (label, isolation) in [("no_isolation", Isolation::Off), ("isolated", Isolation::Contained)] {
                let d = Arc::new(dispatcher(n, is_async, isolation));
                group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                    b.to_async(&rt).iter(|| d.deliver(black_box(&ev)));
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
