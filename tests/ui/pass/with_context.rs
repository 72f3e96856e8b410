//! The second argument: the hook's context, with the application state.
use hooks_core::dispatch::{DispatchConfig, Dispatcher};
use hooks_core::event::{EventId, SessionId, SessionKey};
use hooks_core::prelude::*;
use hooks_core::registry::Registry;
use hooks_core::State;

struct Greeting(&'static str);

#[hook(message_received, timeout = "500ms")]
async fn greet(ev: &MessageReceived, ctx: &HookContext) -> Result<(), HookError> {
    // Pending on its first poll: the handlers after it start before it goes on, and its context must
    // still be its own.
    tokio::task::yield_now().await;
    let greeting = ctx.state::<Greeting>().ok_or("no greeting")?;
    assert_eq!(greeting.0, "hello");
    assert_eq!(ctx.hook_name(), "greet");
    assert_eq!(ctx.timeout(), Some(std::time::Duration::from_millis(500)));
    assert_eq!(ctx.session_id(), Some(ev.session_id));
    Ok(())
}

#[hook(message_received)]
fn with_pattern(_: &MessageReceived, _: &HookContext) {}

// The context's lifetime may also be written out, anonymous or named; a bare `&HookContext` gets `'_`
// from the macro (an `async fn` could not leave it implicit).
#[hook(message_received)]
async fn anonymous_lifetime(_: &MessageReceived, ctx: &HookContext<'_>) {
    assert_eq!(ctx.attempt(), 1);
}

#[hook(message_received)]
fn named_lifetime<'a>(_: &'a MessageReceived, ctx: &'a HookContext<'a>) -> Result<(), HookError> {
    let greeting: &'a Greeting = ctx.state::<Greeting>().ok_or("no greeting")?;
    assert_eq!(greeting.0, "hello");
    Ok(())
}

#[hook(message_received)]
async fn named_lifetime_async<'a>(ev: &'a MessageReceived, ctx: &'a HookContext<'a>) {
    tokio::task::yield_now().await;
    assert_eq!((ctx.hook_name(), ctx.event_id()), ("named_lifetime_async", ev.event_id));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let state = State::new().with(Greeting("hello"));
    let dispatcher = Dispatcher::with_config(Registry::from_inventory(), state, DispatchConfig::default());
    let ev = MessageReceived::new(
        EventId::new_random(),
        SessionId::new_random(),
        SessionKey::chat("test", "1"),
        "u",
        jiff::Timestamp::UNIX_EPOCH,
        "hi",
    );
    let delivery = dispatcher.deliver(&ev).await;
    assert_eq!((delivery.handlers, delivery.failed), (5, 0));
}
