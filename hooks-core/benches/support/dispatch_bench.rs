//! The dispatch benchmark's body, shared by `benches/dispatch.rs` (the system allocator) and
//! `benches/dispatch_mimalloc.rs` (mimalloc, as `gateway-example` runs): one event to N = 1, 10, 100
//! no-op handlers, with and without isolation, against the limit, a hand-written sequence of direct
//! calls (or awaits) of the same functions, and against the hook list walked by hand
//! ([`walk`](crate::setup::walk), label `walk`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion};
use hooks_core::dispatch::Isolation;

use crate::setup::{dispatcher, event, noop, noop_async, walk};

const NS: [usize; 3] = [1, 10, 100];

/// Benchmarks sync handlers (`false` in `kinds`) and/or async ones (`true`), in groups named
/// `dispatch_sync{suffix}` and `dispatch_async{suffix}`.
pub(crate) fn bench(c: &mut Criterion, kinds: &[bool], suffix: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ev = event();
    for &is_async in kinds {
        let kind = if is_async { "async" } else { "sync" };
        let mut group = c.benchmark_group(format!("dispatch_{kind}{suffix}"));
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
            let off = Arc::new(dispatcher(n, is_async, Isolation::Off));
            group.bench_with_input(BenchmarkId::new("walk", n), &n, |b, _| {
                b.to_async(&rt).iter(|| walk(&off, black_box(&ev)));
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
