//! A handler that panics, errors or hangs is contained: the others still run, and each failure is
//! counted in `Dispatcher::stats()`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hooks_core::State;
use hooks_core::dispatch::{DispatchConfig, Dispatcher, HandlerStats};
use hooks_core::event::{AgentTurnEnd, AgentTurnStart, EventId, SessionId, SessionKey, TurnOutcome};
use hooks_core::prelude::*;
use hooks_core::registry::Registry;

static SURVIVOR_SYNC: AtomicUsize = AtomicUsize::new(0);
static SURVIVOR_ASYNC: AtomicUsize = AtomicUsize::new(0);
static FAST_SYNC: AtomicUsize = AtomicUsize::new(0);

#[hook(agent_turn_end, priority = -10)]
fn panics(_ev: &AgentTurnEnd) {
    panic!("this hook always panics");
}

#[hook(agent_turn_end, priority = -5)]
async fn errors(_ev: &AgentTurnEnd) -> Result<(), HookError> {
    Err(HookError::msg("this hook always fails"))
}

#[hook(agent_turn_end, timeout = "2s")]
async fn hangs(_ev: &AgentTurnEnd) {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[hook(agent_turn_end, priority = 10)]
fn survivor_sync(_ev: &AgentTurnEnd) {
    SURVIVOR_SYNC.fetch_add(1, Ordering::SeqCst);
}

#[hook(agent_turn_end, priority = 20)]
async fn survivor_async(_ev: &AgentTurnEnd) {
    tokio::time::sleep(Duration::from_millis(10)).await;
    SURVIVOR_ASYNC.fetch_add(1, Ordering::SeqCst);
}

#[hook(agent_turn_start, timeout = "5ms")]
fn slow_sync(_ev: &AgentTurnStart) {
    std::thread::sleep(Duration::from_millis(50));
}

#[hook(agent_turn_start, priority = 1)]
fn fast_sync(_ev: &AgentTurnStart) {
    FAST_SYNC.fetch_add(1, Ordering::SeqCst);
}

fn stats_of(dispatcher: &Dispatcher, name: &str) -> HandlerStats {
    dispatcher.stats().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no stats for {name}"))
}

fn key() -> SessionKey {
    SessionKey::chat("test", "isolation")
}

#[tokio::test(start_paused = true)]
async fn panicking_erroring_and_hanging_handlers_are_contained_and_counted() {
    let dispatcher = Dispatcher::from_inventory();
    let ev = AgentTurnEnd::new(
        EventId::new_random(),
        SessionId::new_random(),
        key(),
        jiff::Timestamp::UNIX_EPOCH,
        jiff::Timestamp::UNIX_EPOCH,
        TurnOutcome::Reply { text: "hi".into() },
    );
    let started = tokio::time::Instant::now();
    let delivery = dispatcher.deliver(&ev).await;

    assert_eq!((delivery.handlers, delivery.failed), (5, 3));
    assert_eq!(SURVIVOR_SYNC.load(Ordering::SeqCst), 1);
    assert_eq!(SURVIVOR_ASYNC.load(Ordering::SeqCst), 1);
    // The hang is cut at the hook's own timeout (2 s), not at the dispatcher's default (10 s).
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    let counts = |name| {
        let s = stats_of(&dispatcher, name);
        (s.calls, s.errors, s.panics, s.timeouts)
    };
    assert_eq!(counts("panics"), (1, 0, 1, 0));
    assert_eq!(counts("errors"), (1, 1, 0, 0));
    assert_eq!(counts("hangs"), (1, 0, 0, 1));
    assert_eq!(counts("survivor_sync"), (1, 0, 0, 0));
    assert_eq!(counts("survivor_async"), (1, 0, 0, 0));
}

#[tokio::test]
async fn sync_handler_overrunning_its_timeout_is_counted_as_a_timeout() {
    let registry = Registry::from_inventory();
    let dispatcher = Dispatcher::with_config(registry, State::new(), DispatchConfig::default());
    let ev =
        AgentTurnStart::new(EventId::new_random(), SessionId::new_random(), key(), jiff::Timestamp::UNIX_EPOCH, "q");
    let delivery = dispatcher.deliver(&ev).await;

    assert_eq!((delivery.handlers, delivery.failed), (2, 1));
    let slow = stats_of(&dispatcher, "slow_sync");
    assert_eq!((slow.calls, slow.timeouts, slow.errors, slow.panics), (1, 1, 0, 0));
    assert!(slow.total_nanos >= 50_000_000, "{slow:?}");
    let fast = stats_of(&dispatcher, "fast_sync");
    assert_eq!((fast.calls, fast.timeouts), (1, 0));
    assert_eq!(FAST_SYNC.load(Ordering::SeqCst), 1);
}
