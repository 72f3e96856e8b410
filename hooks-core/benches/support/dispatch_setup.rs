//! The dispatch benchmark's set-up, shared by `benches/dispatch.rs` and `benches/dispatch_mimalloc.rs`
//! (criterion) and `examples/dispatch_ops.rs` (callgrind), so that all measure the same dispatcher: N
//! no-op handlers, each calling an `#[inline(never)]` function, registered as `#[hook]` would register
//! them.

use std::hint::black_box;

use futures::future::BoxFuture;
use hooks_core::dispatch::{DispatchConfig, Dispatcher, Isolation};
use hooks_core::event::{EventId, MessageReceived, SessionId, SessionKey};
use hooks_core::registry::{Hook, Registry};
use hooks_core::{HookContext, HookError, State};

#[inline(never)]
pub(crate) fn noop(ev: &MessageReceived) {
    black_box(ev);
}

#[inline(never)]
pub(crate) async fn noop_async(ev: &MessageReceived) {
    black_box(ev);
}

/// What `#[hook(message_received)] pub fn noop(ev: &MessageReceived)` generates, written out.
fn sync_shim(ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    noop(ev);
    Ok(())
}

fn async_shim<'a>(ev: &'a MessageReceived, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(async move {
        noop_async(ev).await;
        Ok(())
    })
}

pub(crate) fn dispatcher(n: usize, is_async: bool, isolation: Isolation) -> Dispatcher {
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

pub(crate) fn event() -> MessageReceived {
    MessageReceived::new(
        EventId::from_u128(1),
        SessionId::from_u128(1),
        SessionKey::chat("bench", "chat"),
        "user",
        jiff::Timestamp::UNIX_EPOCH,
        "hello",
    )
}
