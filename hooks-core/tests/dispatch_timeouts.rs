//! An async handler's timeout counts from the handler's start, its first poll included: the dispatcher
//! times a first poll on its own clock and reads tokio's clock only for a handler still pending after
//! it, so the first poll's time must be taken off the deadline, not added to it.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hooks_core::dispatch::{DispatchConfig, Dispatcher, Isolation};
use hooks_core::event::GatewayStartup;
use hooks_core::registry::{Hook, Registry};
use hooks_core::{HookContext, HookError, State};

const FIRST_POLL: Duration = Duration::from_millis(600);
const TIMEOUT: Duration = Duration::from_secs(1);

/// Blocks its first poll (as a hook doing blocking work before its first await would), then never
/// finishes.
fn blocks_then_hangs<'a>(_ev: &'a GatewayStartup, _ctx: HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
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
