//! `Dispatcher::deliver_any_detailed`, which an outbox uses to record delivery per handler: every
//! handler's outcome in registry order, handlers named in `skip` not called, and the same answers
//! whether a hook list is all plain `fn`s (the sequential fast path) or mixes in async handlers, and
//! whether an async handler finishes on its first poll or later, after the handlers behind it.

use std::sync::atomic::{AtomicUsize, Ordering};

use hooks_core::dispatch::Dispatcher;
use hooks_core::event::{
    AgentTurnEnd, AgentTurnStart, AnyEvent, EventId, MessageReceived, SessionId, SessionKey, TurnOutcome,
};
use hooks_core::prelude::*;

static SYNC_CALLS: [AtomicUsize; 3] = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];
static MIXED_CALLS: [AtomicUsize; 3] = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];
static PENDING_CALLS: [AtomicUsize; 3] = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];

#[hook(message_received, priority = -30)]
fn sync_first(_ev: &MessageReceived) {
    SYNC_CALLS[0].fetch_add(1, Ordering::SeqCst);
}

#[hook(message_received, priority = -20)]
fn sync_fails(_ev: &MessageReceived) -> Result<(), HookError> {
    SYNC_CALLS[1].fetch_add(1, Ordering::SeqCst);
    Err(HookError::msg("no disk"))
}

#[hook(message_received, priority = -10)]
fn sync_last(_ev: &MessageReceived) {
    SYNC_CALLS[2].fetch_add(1, Ordering::SeqCst);
}

#[hook(agent_turn_start, priority = -30)]
fn mixed_first(_ev: &AgentTurnStart) {
    MIXED_CALLS[0].fetch_add(1, Ordering::SeqCst);
}

#[hook(agent_turn_start, priority = -20)]
async fn mixed_fails(_ev: &AgentTurnStart) -> Result<(), HookError> {
    MIXED_CALLS[1].fetch_add(1, Ordering::SeqCst);
    Err(HookError::msg("no disk"))
}

#[hook(agent_turn_start, priority = -10)]
fn mixed_last(_ev: &AgentTurnStart) {
    MIXED_CALLS[2].fetch_add(1, Ordering::SeqCst);
}

#[hook(agent_turn_end, priority = -30)]
fn pending_first(_ev: &AgentTurnEnd) {
    PENDING_CALLS[0].fetch_add(1, Ordering::SeqCst);
}

/// Fails after an await: pending on its first poll, so its outcome comes after `pending_last` ran.
#[hook(agent_turn_end, priority = -20)]
async fn pending_fails(_ev: &AgentTurnEnd) -> Result<(), HookError> {
    PENDING_CALLS[1].fetch_add(1, Ordering::SeqCst);
    tokio::task::yield_now().await;
    Err(HookError::msg("no disk"))
}

#[hook(agent_turn_end, priority = -10)]
fn pending_last(_ev: &AgentTurnEnd) {
    PENDING_CALLS[2].fetch_add(1, Ordering::SeqCst);
}

fn key() -> SessionKey {
    SessionKey::chat("test", "detailed")
}

/// Each outcome as (the hook's name without its module path, its error).
fn outcomes(list: &[hooks_core::dispatch::HandlerOutcome]) -> Vec<(String, Option<String>)> {
    list.iter().map(|o| (o.hook.rsplit("::").next().unwrap().to_owned(), o.error.clone())).collect()
}

async fn check(dispatcher: &Dispatcher, event: AnyEvent, names: [&str; 3], calls: &[AtomicUsize; 3]) {
    let all = dispatcher.deliver_any_detailed(&event, 1, &[]).await;
    let expected = vec![
        (names[0].to_owned(), None),
        (names[1].to_owned(), Some("error: no disk".to_owned())),
        (names[2].to_owned(), None),
    ];
    assert_eq!(outcomes(&all), expected);
    assert!(all.iter().all(|o| o.hook.contains("::")), "qualified names: {all:?}");
    let counts = || calls.iter().map(|c| c.load(Ordering::SeqCst)).collect::<Vec<_>>();
    assert_eq!(counts(), [1, 1, 1]);

    // A second attempt that skips the handlers which succeeded calls only the failed one.
    let skip: Vec<String> = [&all[0], &all[2]].iter().map(|o| o.hook.to_string()).collect();
    let retry = dispatcher.deliver_any_detailed(&event, 2, &skip).await;
    assert_eq!(outcomes(&retry), vec![expected[1].clone()]);
    assert_eq!(counts(), [1, 2, 1]);
    let stats = |name: &str| dispatcher.stats().into_iter().find(|s| s.name == name).unwrap();
    assert_eq!((stats(names[0]).calls, stats(names[1]).calls, stats(names[1]).errors), (1, 2, 2));
}

#[tokio::test]
async fn every_handler_is_reported_in_order_and_skipped_ones_are_not_called() {
    let dispatcher = Dispatcher::from_inventory();
    let at = jiff::Timestamp::UNIX_EPOCH;
    let message = MessageReceived::new(EventId::from_u128(1), SessionId::from_u128(2), key(), "alice", at, "hi");
    check(&dispatcher, AnyEvent::MessageReceived(message), ["sync_first", "sync_fails", "sync_last"], &SYNC_CALLS)
        .await;
    let turn = AgentTurnStart::new(EventId::from_u128(3), SessionId::from_u128(2), key(), at, "q");
    check(&dispatcher, AnyEvent::AgentTurnStart(turn), ["mixed_first", "mixed_fails", "mixed_last"], &MIXED_CALLS)
        .await;
    let reply = TurnOutcome::Reply { text: "a".into() };
    let end = AgentTurnEnd::new(EventId::from_u128(4), SessionId::from_u128(2), key(), at, at, reply);
    let names = ["pending_first", "pending_fails", "pending_last"];
    check(&dispatcher, AnyEvent::AgentTurnEnd(end), names, &PENDING_CALLS).await;
}
