//! `command` is a decision event: its hooks may return `CommandDecision`, bare or in a `Result`.
use hooks_core::dispatch::{Dispatcher, Verdict};
use hooks_core::event::{EventId, SessionKey};
use hooks_core::prelude::*;

#[hook(command, priority = -10)]
fn alias(cmd: &Command) -> CommandDecision {
    match cmd.name() {
        "n" => CommandDecision::Rewrite { text: "/new".into() },
        _ => CommandDecision::Allow,
    }
}

#[hook(command)]
async fn no_new_in_ops(cmd: &Command) -> Result<CommandDecision, HookError> {
    if cmd.key.chat_id() == "ops" && cmd.name() == "new" {
        return Ok(CommandDecision::Deny { message: "not here".into() });
    }
    Ok(CommandDecision::Allow)
}

#[hook(command)]
fn observe(_cmd: &Command) {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dispatcher = Dispatcher::from_inventory();
    let cmd = Command::new(EventId::new_random(), None, SessionKey::chat("t", "ops"), "u", jiff::Timestamp::UNIX_EPOCH, "/n");
    match dispatcher.decide(cmd).await {
        Verdict::Denied { hook, message, command } => {
            assert_eq!((hook, message.as_str(), command.text.as_str()), ("no_new_in_ops", "not here", "/new"));
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}
