//! What the dispatcher's clock readings are charged to: an async handler's timeout counts from the
//! handler's start, its first poll included; in a delivery of plain and async handlers, each handler's
//! time is its own (readings are chained, one handler's end being the next one's start).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hooks_core::dispatch::{DispatchConfig, Dispatcher, Isolation};
use hooks_core::event::{EventId, GatewayStartup, MessageReceived, SessionId, SessionKey};
use hooks_core::registry::{Hook, Registry};
use hooks_core::{HookContext, HookError, State};

const FIRST_POLL: Duration = Duration::from_millis(600);
const TIMEOUT: Duration = Duration::from_secs(1);

/// Blocks its first poll (as a hook doing blocking work before its first await would), then never
/// finishes.
fn blocks_then_hangs<'a>(_ev: &'a GatewayStartup, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(async {
        std::thread::sleep(FIRST_POLL);
        std::future::pending::<()>().await;
        Ok(())
    })
}

#[tokio::test]
async fn the_timeout_of_an_async_handler_includes_its_first_poll() {
    let registry = Registry::empty().with(Hook::<GatewayStartup>::from_async("blocks_then_hangs", blocks_then_hangs));
    let config = DispatchConfig { default_timeout: Some(TIMEOUT), isolation: Isolation::Contained };
    let dispatcher = Dispatcher::with_config(registry, State::new(), config);

    let started = Instant::now();
    let delivery = dispatcher.deliver(&GatewayStartup::new(jiff::Timestamp::UNIX_EPOCH, 1)).await;
    let took = started.elapsed();

    assert_eq!((delivery.handlers, delivery.failed), (1, 1));
    let stats = dispatcher.stats().into_iter().find(|s| s.name == "blocks_then_hangs").unwrap();
    assert_eq!((stats.calls, stats.timeouts), (1, 1));
    assert!(took >= TIMEOUT, "cancelled before its timeout: {took:?}");
    // Counted from the end of the first poll instead, it would end at 1.6 s or later; the margin
    // below that is for a slow machine's timer.
    assert!(took < TIMEOUT + FIRST_POLL * 3 / 4, "the first poll was not counted: {took:?}");
    assert!(stats.total_nanos >= TIMEOUT.as_nanos() as u64, "{stats:?}");
}

const SLOW: Duration = Duration::from_millis(30);

fn ready<'a>(_ev: &'a MessageReceived, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(async { Ok(()) })
}

fn slow(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    std::thread::sleep(SLOW);
    Ok(())
}

fn fails(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    Err(HookError::msg("no"))
}

fn fast(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    Ok(())
}

#[tokio::test]
async fn in_a_mixed_delivery_each_handler_is_charged_its_own_time() {
    // Registry order is name order at equal priority: a_ready, b_slow, c_fails, d_fast.
    let registry = Registry::empty()
        .with(Hook::<MessageReceived>::from_async("a_ready", ready))
        .with(Hook::from_sync("b_slow", slow))
        .with(Hook::from_sync("c_fails", fails))
        .with(Hook::from_sync("d_fast", fast));
    let dispatcher = Dispatcher::with_config(registry, State::new(), DispatchConfig::default());
    let ev = MessageReceived::new(
        EventId::from_u128(1),
        SessionId::from_u128(1),
        SessionKey::chat("test", "timing"),
        "u",
        jiff::Timestamp::UNIX_EPOCH,
        "hi",
    );
    let delivery = dispatcher.deliver(&ev).await;
    assert_eq!((delivery.handlers, delivery.failed), (4, 1));

    let nanos = |name: &str| dispatcher.stats().into_iter().find(|s| s.name == name).unwrap().total_nanos;
    assert!(nanos("b_slow") >= SLOW.as_nanos() as u64, "{}", nanos("b_slow"));
    for quick in ["a_ready", "c_fails", "d_fast"] {
        assert!(nanos(quick) < SLOW.as_nanos() as u64 / 2, "{quick}: {} ns", nanos(quick));
    }
}
