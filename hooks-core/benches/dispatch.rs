//! Dispatch cost: one event to N = 1, 10, 100 no-op handlers, sync and async, with and without
//! isolation, against the limit: a hand-written sequence of direct calls (or awaits) of the same
//! functions.
//!
//! Run: `cargo bench -p hooks-core --bench dispatch`. Results and goals: docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::future::BoxFuture;
use hooks_core::dispatch::{DispatchConfig, Dispatcher, Isolation};
use hooks_core::event::{EventId, MessageReceived, SessionId, SessionKey};
use hooks_core::registry::{Hook, Registry};
use hooks_core::{HookContext, HookError, State};

const NS: [usize; 3] = [1, 10, 100];

#[inline(never)]
fn noop(ev: &MessageReceived) {
    black_box(ev);
}

#[inline(never)]
async fn noop_async(ev: &MessageReceived) {
    black_box(ev);
}

/// What `#[hook(message_received)] fn noop(ev: &MessageReceived)` generates, written out.
fn sync_shim(ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    noop(ev);
    Ok(())
}

fn async_shim<'a>(ev: &'a MessageReceived, _ctx: &'a HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(async move {
        noop_async(ev).await;
        Ok(())
    })
}

fn dispatcher(n: usize, is_async: bool, isolation: Isolation) -> Dispatcher {
    let mut registry = Registry::empty();
    for _ in 0..n {
        registry = registry.with(if is_async {
            Hook::<MessageReceived>::from_async("noop", async_shim)
        } else {
            Hook::from_sync("noop", sync_shim)
        });
    }
    Dispatcher::with_config(registry, State::new(), DispatchConfig { isolation, ..DispatchConfig::default() })
}

fn event() -> MessageReceived {
    MessageReceived::new(
        EventId::from_u128(1),
        SessionId::from_u128(1),
        SessionKey::chat("bench", "chat"),
        "user",
        jiff::Timestamp::UNIX_EPOCH,
        "hello",
    )
}

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
