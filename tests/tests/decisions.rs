//! The `Command` combination rule: rewrites apply in order (each handler sees the command as rewritten
//! so far), the first deny wins and later handlers are not asked, a failing handler counts as allow.

use std::sync::Mutex;

use hooks_core::dispatch::{Dispatcher, Verdict};
use hooks_core::event::{EventId, SessionKey};
use hooks_core::prelude::*;

/// `(chat id, hook)` of every call, so that tests running in parallel read only their own chat.
static CALLS: Mutex<Vec<(String, &'static str)>> = Mutex::new(Vec::new());

fn record(cmd: &Command, hook: &'static str) {
    CALLS.lock().unwrap_or_else(|e| e.into_inner()).push((cmd.key.chat_id().to_owned(), hook));
}

fn calls_for(chat: &str) -> Vec<&'static str> {
    CALLS.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(c, _)| c == chat).map(|(_, h)| *h).collect()
}

/// `/r …` is short for `/reset …`.
#[hook(command, priority = -20)]
fn alias(cmd: &Command) -> CommandDecision {
    record(cmd, "alias");
    if cmd.name() == "r" {
        let rest = cmd.text.trim_start().strip_prefix("/r").unwrap_or_default();
        return CommandDecision::Rewrite { text: format!("/reset{rest}") };
    }
    CommandDecision::Allow
}

/// Tags resets; it sees `/reset` only if `alias`'s rewrite was applied before it.
#[hook(command, priority = -10)]
async fn tag(cmd: &Command) -> CommandDecision {
    record(cmd, "tag");
    if cmd.name() == "reset" {
        return CommandDecision::Rewrite { text: format!("{} [tagged]", cmd.text) };
    }
    CommandDecision::Allow
}

#[hook(command)]
fn flaky(cmd: &Command) -> Result<CommandDecision, HookError> {
    record(cmd, "flaky");
    match cmd.name() {
        "fail" => Err(HookError::msg("flaky failed")),
        "panic" => panic!("flaky panicked"),
        _ => Ok(CommandDecision::Allow),
    }
}

#[hook(command, priority = 10)]
fn deny_reset_in_ops(cmd: &Command) -> CommandDecision {
    record(cmd, "deny_reset_in_ops");
    if cmd.key.chat_id() == "ops" && cmd.name() == "reset" {
        return CommandDecision::Deny { message: "no resets in ops".into() };
    }
    CommandDecision::Allow
}

#[hook(command, priority = 20)]
async fn after_deny(cmd: &Command) {
    record(cmd, "after_deny");
}

const ALL: [&str; 5] = ["alias", "tag", "flaky", "deny_reset_in_ops", "after_deny"];

fn cmd(chat: &str, text: &str) -> Command {
    Command::new(EventId::new_random(), None, SessionKey::chat("test", chat), "user", jiff::Timestamp::UNIX_EPOCH, text)
}

#[tokio::test]
async fn rewrites_apply_in_registry_order() {
    let verdict = Dispatcher::from_inventory().decide(cmd("rewrites", "/r now")).await;
    let Verdict::Allowed { command, failed } = verdict else { panic!("expected Allowed, got {verdict:?}") };
    assert_eq!(command.text, "/reset now [tagged]");
    assert_eq!(failed, 0);
    assert_eq!(calls_for("rewrites"), ALL);
}

#[tokio::test]
async fn first_deny_wins_and_later_handlers_are_not_called() {
    let verdict = Dispatcher::from_inventory().decide(cmd("ops", "/r")).await;
    let Verdict::Denied { command, hook, message } = verdict else { panic!("expected Denied, got {verdict:?}") };
    assert_eq!((hook, message.as_str()), ("deny_reset_in_ops", "no resets in ops"));
    assert_eq!(command.text, "/reset [tagged]");
    assert_eq!(calls_for("ops"), ["alias", "tag", "flaky", "deny_reset_in_ops"]);
}

#[tokio::test]
async fn failing_decision_handler_counts_as_allow_and_is_counted() {
    let dispatcher = Dispatcher::from_inventory();
    let verdict = dispatcher.decide(cmd("failing", "/fail")).await;
    let Verdict::Allowed { command, failed } = verdict else { panic!("expected Allowed, got {verdict:?}") };
    assert_eq!((command.text.as_str(), failed), ("/fail", 1));

    let verdict = dispatcher.decide(cmd("failing", "/panic")).await;
    assert!(matches!(verdict, Verdict::Allowed { failed: 1, .. }), "{verdict:?}");

    assert_eq!(calls_for("failing"), [ALL, ALL].concat());
    let flaky = dispatcher.stats().into_iter().find(|s| s.name == "flaky").unwrap();
    assert_eq!((flaky.calls, flaky.errors, flaky.panics), (2, 1, 1));
}
