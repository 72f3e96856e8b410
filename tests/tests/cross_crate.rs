//! Hooks of this binary and of the linked plugin crate are registered together, sorted by (priority,
//! module path, name), and all called for one event; the link check names a missing hook and the fix.

use hooks_core::dispatch::Dispatcher;
use hooks_core::event::{EventId, MessageReceived, SessionId, SessionKey};
use hooks_core::prelude::*;
use hooks_core::registry::Registry;
use hooks_test_plugin::{calls_for, record};

#[hook(message_received, priority = -50)]
fn local_early(ev: &MessageReceived) {
    record(ev.key.chat_id(), "local_early");
}

// Same priority (0) as the plugin's `plugin_tie`: the module path decides (`cross_crate` sorts before
// `hooks_test_plugin`), then the name (`a_local_tie` before `local_tie`).
#[hook(message_received)]
async fn local_tie(ev: &MessageReceived) {
    record(ev.key.chat_id(), "local_tie");
}

#[hook(message_received)]
fn a_local_tie(ev: &MessageReceived) {
    record(ev.key.chat_id(), "a_local_tie");
}

#[hook(message_received, priority = 10)]
async fn local_late(ev: &MessageReceived, ctx: &HookContext) -> Result<(), HookError> {
    assert_eq!(ctx.hook_name(), "local_late");
    record(ev.key.chat_id(), "local_late");
    Ok(())
}

const EXPECTED_ORDER: [&str; 7] =
    ["plugin_first", "local_early", "a_local_tie", "local_tie", "plugin_tie", "plugin_middle", "local_late"];

fn message(chat: &str) -> MessageReceived {
    MessageReceived::new(
        EventId::new_random(),
        SessionId::new_random(),
        SessionKey::chat("test", chat),
        "user",
        jiff::Timestamp::UNIX_EPOCH,
        "hello",
    )
}

#[test]
fn registry_sorts_hooks_of_both_crates_by_priority_module_and_name() {
    let hooks = Registry::global().hooks::<MessageReceived>();
    let names: Vec<_> = hooks.iter().map(|h| h.meta().name()).collect();
    assert_eq!(names, EXPECTED_ORDER);
    let crates: Vec<_> = hooks.iter().map(|h| h.meta().crate_name()).collect();
    assert_eq!(
        crates,
        [
            "hooks_test_plugin",
            "cross_crate",
            "cross_crate",
            "cross_crate",
            "hooks_test_plugin",
            "hooks_test_plugin",
            "cross_crate"
        ]
    );
    let priorities: Vec<_> = hooks.iter().map(|h| h.meta().priority()).collect();
    assert_eq!(priorities, [-100, -50, 0, 0, 0, 5, 10]);
}

#[tokio::test]
async fn every_hook_of_both_crates_is_called_in_registry_order() {
    let dispatcher = Dispatcher::from_inventory();
    let delivery = dispatcher.deliver(&message("order")).await;
    assert_eq!((delivery.handlers, delivery.failed), (7, 0));
    assert_eq!(calls_for("order"), EXPECTED_ORDER);
    let calls: Vec<_> = dispatcher.stats().iter().filter(|s| s.event == "message_received").map(|s| s.calls).collect();
    assert_eq!(calls, [1; 7]);
}

#[test]
fn require_accepts_linked_hooks_of_both_crates() {
    let registry = Registry::global();
    registry
        .require(&[
            "hooks_test_plugin::plugin_first",
            "hooks_test_plugin::plugin_memory_flush",
            "hooks_test_plugin::plugin_tie",
            "cross_crate::local_early",
        ])
        .unwrap();
}

#[test]
fn require_names_a_missing_hook_and_the_use_remedy() {
    let error = Registry::global().require(&["hooks_test_plugin::plugin_first", "memory_plugin::flush"]).unwrap_err();
    assert_eq!(error.missing, ["memory_plugin::flush"]);
    let message = error.to_string();
    assert!(message.contains("memory_plugin::flush"), "{message}");
    assert!(message.contains("`use memory_plugin as _;`"), "{message}");
}

#[test]
fn describe_lists_every_hook_on_one_line() {
    let registry = hooks_core::registry::Registry::from_inventory();
    let line = registry.describe();
    assert!(!line.contains('\n'));
    assert_eq!(line.split("; ").count(), registry.len());
    for meta in registry.metas() {
        assert!(
            line.contains(&format!("{}: {} (priority {}", meta.event(), meta.qualified_name(), meta.priority())),
            "{line}"
        );
    }
}
