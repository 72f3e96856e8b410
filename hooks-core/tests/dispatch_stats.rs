//! `Dispatcher::stats` stays exact when many threads deliver at once, when threads come and go, and
//! when an async handler's task moves between worker threads: the dispatcher counts per thread (a
//! plain load and store, no locked add) and sums the threads' counts, so each count must have exactly
//! one writer at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use hooks_core::dispatch::{DispatchConfig, Dispatcher, HandlerStats, Isolation};
use hooks_core::event::{EventId, GatewayStartup, MessageReceived, SessionId, SessionKey};
use hooks_core::registry::{Hook, Registry};
use hooks_core::{HookContext, HookError, State};

/// Calls of each handler, as the handlers themselves count them (a locked add: the reference).
#[derive(Debug, Default)]
struct Calls {
    sync: AtomicU64,
    yielding: AtomicU64,
}

fn calls(ctx: &HookContext<'_>) -> &'static Calls {
    // Leaked once per test so that the handlers (plain `fn`s) can reach it through the state.
    ctx.state::<&'static Calls>().expect("Calls in the state")
}

fn count_sync(_ev: &MessageReceived, ctx: &HookContext<'_>) -> Result<(), HookError> {
    calls(ctx).sync.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn count_start(_ev: &GatewayStartup, ctx: &HookContext<'_>) -> Result<(), HookError> {
    calls(ctx).sync.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Pending on its first poll, so the dispatcher finishes it after an await, possibly on another worker.
fn yielding<'a>(_ev: &'a GatewayStartup, ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    let ctx = *ctx; // lent for the call only: the future keeps a copy
    Box::pin(async move {
        tokio::task::yield_now().await;
        calls(&ctx).yielding.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
}

fn dispatcher(isolation: Isolation) -> (Arc<Dispatcher>, &'static Calls) {
    let calls: &'static Calls = Box::leak(Box::default());
    let registry = Registry::empty()
        .with(Hook::<MessageReceived>::from_sync("count_sync", count_sync))
        .with(Hook::<GatewayStartup>::from_sync("count_start", count_start))
        .with(Hook::<GatewayStartup>::from_async("yielding", yielding));
    let config = DispatchConfig { isolation, ..DispatchConfig::default() };
    (Arc::new(Dispatcher::with_config(registry, State::new().with(calls), config)), calls)
}

fn message(i: u64) -> MessageReceived {
    let key = SessionKey::chat("test", "stats");
    MessageReceived::new(
        EventId::from_u128(i.into()),
        SessionId::from_u128(1),
        key,
        "u",
        jiff::Timestamp::UNIX_EPOCH,
        "hi",
    )
}

fn startup(i: u64) -> GatewayStartup {
    GatewayStartup::new(jiff::Timestamp::UNIX_EPOCH, i.try_into().unwrap())
}

fn stats_of(dispatcher: &Dispatcher, name: &str) -> HandlerStats {
    dispatcher.stats().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no stats for {name}"))
}

const THREADS: u64 = 8;
const PER_THREAD: u64 = 20_000;

#[test]
fn calls_are_exact_when_many_threads_deliver_at_once() {
    for isolation in [Isolation::Off, Isolation::Contained] {
        let (dispatcher, calls) = dispatcher(isolation);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                let dispatcher = &dispatcher;
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    rt.block_on(async {
                        for i in 0..PER_THREAD {
                            dispatcher.deliver(&message(i)).await;
                        }
                    });
                });
            }
        });
        let stats = stats_of(&dispatcher, "count_sync");
        assert_eq!(calls.sync.load(Ordering::Relaxed), THREADS * PER_THREAD);
        assert_eq!(stats.calls, THREADS * PER_THREAD, "{isolation:?}");
        assert_eq!(stats.errors + stats.panics + stats.timeouts, 0);
        // Time is measured only with isolation.
        assert_eq!(stats.total_nanos > 0, isolation == Isolation::Contained, "{isolation:?}: {stats:?}");
    }
}

#[test]
fn calls_are_exact_when_threads_come_and_go() {
    // Threads that exit hand their counts on to later threads: nothing is lost, nothing doubled.
    let (dispatcher, _) = dispatcher(Isolation::Contained);
    for round in 0..20u64 {
        std::thread::scope(|scope| {
            for _ in 0..(round % 4 + 1) {
                let dispatcher = &dispatcher;
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    rt.block_on(async {
                        for i in 0..500 {
                            dispatcher.deliver(&message(i)).await;
                        }
                    });
                });
            }
        });
    }
    let threads: u64 = (0..20u64).map(|round| round % 4 + 1).sum();
    assert_eq!(stats_of(&dispatcher, "count_sync").calls, threads * 500);
}

#[test]
fn counts_stay_exact_when_async_handlers_finish_on_other_workers() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let (dispatcher, calls) = dispatcher(Isolation::Contained);
    rt.block_on(async {
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let dispatcher = Arc::clone(&dispatcher);
                tokio::spawn(async move {
                    for i in 0..2_000 {
                        let report = dispatcher.deliver(&startup(t * 1_000 + i)).await;
                        assert_eq!((report.handlers, report.failed), (2, 0));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let total = 16 * 2_000;
    assert_eq!(calls.yielding.load(Ordering::Relaxed), total);
    assert_eq!(calls.sync.load(Ordering::Relaxed), total);
    for name in ["count_start", "yielding"] {
        let stats = stats_of(&dispatcher, name);
        assert_eq!(stats.calls, total, "{name}");
        assert!(stats.total_nanos > 0, "{name}: {stats:?}");
    }
}
