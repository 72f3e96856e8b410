//! The dispatch benchmark's set-up, shared by `benches/dispatch.rs` and `benches/dispatch_mimalloc.rs`
//! (criterion) and `examples/dispatch_ops.rs` (callgrind), so that all measure the same dispatcher: N
//! no-op handlers, each calling an `#[inline(never)]` function, registered as `#[hook]` would register
//! them, and the two references it is measured against: the functions called directly (the limit) and
//! the same hook list walked by hand ([`walk`]).

use std::hint::black_box;

use futures::future::BoxFuture;
use hooks_core::dispatch::{DispatchConfig, Dispatcher, Isolation};
use hooks_core::event::{EventId, MessageReceived, SessionId, SessionKey};
use hooks_core::registry::{Event, Handler, Hook, Registry};
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

/// The second reference: the dispatcher's hook list walked by a hand-written `async fn`, each handler
/// called (or awaited) in turn with one context made once per event, and the failures counted, as a
/// [`Delivery`](hooks_core::dispatch::Delivery) counts them. Nothing else: no statistics, no
/// per-handler context, no isolation, no logging. It is what any delivery that returns a future and
/// reads its handlers from a registry costs at least, so the distance from it to `deliver` is the
/// dispatcher's own bookkeeping, and the distance from the direct calls to it is the price of the
/// shape (a future per delivery, an indirect call per handler, the `#[hook]` shim).
pub(crate) async fn walk(dispatcher: &Dispatcher, ev: &MessageReceived) -> usize {
    let ctx = HookContext::new("", ev.event_id(), ev.session_id(), dispatcher.state());
    let mut failed = 0;
    for hook in dispatcher.registry().hooks::<MessageReceived>() {
        let result = match hook.handler() {
            Handler::Sync(f) => f(ev, &ctx),
            Handler::Async(f) => f(ev, &ctx).await,
        };
        failed += usize::from(result.is_err());
    }
    failed
}
