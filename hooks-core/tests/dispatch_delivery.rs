//! The dispatcher's delivery path, one handler kind and failure at a time: a delivery is lazy and runs
//! once, a panic without isolation reaches the caller, dropping a delivery cancels its pending
//! handlers, and an async handler that panics or never wakes is contained.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hooks_core::dispatch::{Delivery, DispatchConfig, Dispatcher, Isolation};
use hooks_core::registry::{Hook, Registry};
use hooks_core::{HookContext, HookError, State};

use std::sync::atomic::AtomicUsize;

use futures::future::BoxFuture;

use hooks_core::event::{EventId, MessageReceived, SessionId, SessionKey};

fn message() -> MessageReceived {
    let key = SessionKey::chat("test", "dispatch");
    MessageReceived::new(EventId::from_u128(7), SessionId::from_u128(3), key, "user", jiff::Timestamp::UNIX_EPOCH, "hi")
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

fn counts(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// An async handler whose future never completes and never arranges to be woken.
fn never_wakes<'a>(_ev: &'a MessageReceived, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(std::future::pending())
}

/// Plain handlers that count their calls, one per test (the tests run in parallel).
static BEHIND_WAITER: AtomicUsize = AtomicUsize::new(0);
static BEHIND_PANIC: AtomicUsize = AtomicUsize::new(0);

fn behind_waiter(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    BEHIND_WAITER.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

fn behind_panic(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    BEHIND_PANIC.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

fn is_send<T: Send>(_: &T) {}

/// `deliver`'s future is lazy (the doc says so), `Send`, and panics on a poll after it resolved
/// instead of delivering the event twice.
#[tokio::test]
async fn a_delivery_runs_when_first_polled_and_only_once() {
    let dispatcher = Dispatcher::new(Registry::empty().with(Hook::from_sync("counts", counts)));
    let ev = message();
    let before = CALLS.load(Ordering::SeqCst);
    let delivery = dispatcher.deliver(&ev);
    is_send(&delivery);
    assert_eq!(CALLS.load(Ordering::SeqCst), before, "nothing runs before the first poll");
    let mut delivery: Pin<&mut _> = std::pin::pin!(delivery);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert_eq!(delivery.as_mut().poll(&mut cx), Poll::Ready(Delivery { handlers: 1, failed: 0 }));
    assert_eq!(CALLS.load(Ordering::SeqCst), before + 1);
    let again = catch_unwind(AssertUnwindSafe(|| delivery.as_mut().poll(&mut cx)));
    assert!(again.is_err(), "a second poll after the delivery resolved must panic");
    assert_eq!(CALLS.load(Ordering::SeqCst), before + 1, "and must not call the handler again");
    assert_eq!(dispatcher.stats()[0].calls, 1);
}

static PANICS_CALLS: AtomicUsize = AtomicUsize::new(0);

fn panics(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    PANICS_CALLS.fetch_add(1, Ordering::SeqCst);
    panic!("a handler without isolation panics");
}

/// Without isolation a handler's panic reaches the caller through the delivery's poll; polling
/// that delivery again panics as well, and does not deliver the event a second time.
#[test]
fn a_delivery_whose_poll_panicked_does_not_deliver_again() {
    let registry = Registry::empty().with(Hook::from_sync("panics", panics));
    let config = DispatchConfig { isolation: Isolation::Off, ..DispatchConfig::default() };
    let dispatcher = Dispatcher::with_config(registry, State::new(), config);
    let ev = message();
    let mut delivery = std::pin::pin!(dispatcher.deliver(&ev));
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let first = catch_unwind(AssertUnwindSafe(|| delivery.as_mut().poll(&mut cx)));
    assert!(first.is_err(), "the handler's panic propagates without isolation");
    let again = catch_unwind(AssertUnwindSafe(|| delivery.as_mut().poll(&mut cx)));
    assert!(again.is_err(), "a poll after a panicked one must panic");
    assert_eq!(PANICS_CALLS.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(dispatcher.stats()[0].calls, 1, "one delivery counted");
}

/// Sets its flag when dropped: tells whether a handler's future was dropped.
struct DropFlag(&'static std::sync::atomic::AtomicBool);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

static WAITER_DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Pending until its event's sender wakes it: here, never.
fn waits<'a>(_ev: &'a MessageReceived, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(async move {
        let _flag = DropFlag(&WAITER_DROPPED);
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Dropping a delivery with a handler still pending drops that handler's future (it is
/// cancelled), counts it as a call only, and leaves the dispatcher able to deliver again.
#[tokio::test(start_paused = true)]
async fn dropping_a_delivery_cancels_its_pending_handlers() {
    let registry =
        Registry::empty().with(Hook::from_async("waits", waits)).with(Hook::from_sync("behind_waiter", behind_waiter));
    let dispatcher = Dispatcher::new(registry);
    let ev = message();
    let before = BEHIND_WAITER.load(Ordering::SeqCst);
    let cut = tokio::time::timeout(Duration::from_millis(10), dispatcher.deliver(&ev)).await;
    assert!(cut.is_err(), "the waiting handler keeps the delivery pending");
    assert!(WAITER_DROPPED.load(Ordering::SeqCst), "its future was dropped with the delivery");
    assert_eq!(BEHIND_WAITER.load(Ordering::SeqCst), before + 1, "the plain handler behind it ran");
    let waits = dispatcher.stats().into_iter().find(|s| s.name == "waits").expect("stats");
    assert_eq!((waits.calls, waits.timeouts, waits.errors), (1, 0, 0));
    // The next delivery is whole again: it too is cut, and counts a second call.
    WAITER_DROPPED.store(false, Ordering::SeqCst);
    assert!(tokio::time::timeout(Duration::from_millis(10), dispatcher.deliver(&ev)).await.is_err());
    assert!(WAITER_DROPPED.load(Ordering::SeqCst));
    assert_eq!(BEHIND_WAITER.load(Ordering::SeqCst), before + 2);
}

/// Panics in its first poll, before any await.
fn panics_first<'a>(_ev: &'a MessageReceived, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(async move { panic!("an async handler panics on its first poll") })
}

/// With isolation, an async handler that panics on its first poll is one failure among the
/// handlers; the ones after it still run.
#[tokio::test]
async fn an_async_handler_panicking_on_its_first_poll_is_contained() {
    let registry = Registry::empty()
        .with(Hook::from_async("panics_first", panics_first))
        .with(Hook::from_sync("behind_panic", behind_panic));
    let dispatcher = Dispatcher::new(registry);
    let before = BEHIND_PANIC.load(Ordering::SeqCst);
    let delivery = dispatcher.deliver(&message()).await;
    assert_eq!(delivery, Delivery { handlers: 2, failed: 1 });
    assert_eq!(BEHIND_PANIC.load(Ordering::SeqCst), before + 1);
    let stats = dispatcher.stats().into_iter().find(|s| s.name == "panics_first").expect("stats");
    assert_eq!((stats.calls, stats.panics), (1, 1));
}

/// An async handler's timeout runs from its start: one that never wakes the task is still
/// cancelled when its timeout passes.
#[tokio::test(start_paused = true)]
async fn a_handler_that_never_wakes_is_cancelled_at_its_timeout() {
    let registry = Registry::empty().with(Hook::from_async("never_wakes", never_wakes));
    let config = DispatchConfig { default_timeout: Some(Duration::from_millis(50)), ..DispatchConfig::default() };
    let dispatcher = Dispatcher::with_config(registry, State::new(), config);
    let started = tokio::time::Instant::now();
    let ev = message();
    let delivery = tokio::time::timeout(Duration::from_secs(1), dispatcher.deliver(&ev))
        .await
        .expect("the delivery must end at the handler's 50 ms timeout");
    assert_eq!(delivery, Delivery { handlers: 1, failed: 1 });
    assert_eq!(started.elapsed(), Duration::from_millis(50), "cancelled at its timeout, on paused time");
    let stats = &dispatcher.stats()[0];
    assert_eq!((stats.calls, stats.timeouts), (1, 1));
}
