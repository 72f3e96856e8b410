//! A plugin crate for the cross-crate tests: hooks defined here are linked into a test binary only if
//! that binary names this crate (`use hooks_test_plugin as _;`).
//!
//! Every hook records its name in [`LOG`] so that tests can check which hooks ran and in what order.
//! The crate depends on hooks-core under another name, so its hooks use `crate = plugin_hooks_core`.

use std::sync::Mutex;

use plugin_hooks_core::event::{MessageReceived, SessionEnd};
use plugin_hooks_core::{HookContext, HookError, hook};

/// Every call of this crate's hooks (and of the test binaries' own hooks that call [`record`]), as
/// `(chat id, hook name)`, in call order.
pub static LOG: Mutex<Vec<(String, &'static str)>> = Mutex::new(Vec::new());

/// Appends a call to [`LOG`].
pub fn record(chat_id: &str, hook: &'static str) {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).push((chat_id.to_owned(), hook));
}

/// The hooks recorded for `chat_id`, in call order.
pub fn calls_for(chat_id: &str) -> Vec<&'static str> {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(c, _)| c == chat_id).map(|(_, h)| *h).collect()
}

/// Runs first of all `message_received` hooks in the test binaries (priority -100).
#[hook(message_received, priority = -100, crate = plugin_hooks_core)]
fn plugin_first(ev: &MessageReceived) {
    record(ev.key.chat_id(), "plugin_first");
}

/// Runs between the test binary's hooks (priority 5), asynchronously.
#[hook(message_received, priority = 5, crate = plugin_hooks_core)]
async fn plugin_middle(ev: &MessageReceived, ctx: &HookContext) -> Result<(), HookError> {
    assert_eq!(ctx.hook_name(), "plugin_middle");
    record(ev.key.chat_id(), "plugin_middle");
    Ok(())
}

/// Has the same priority as a hook of the tests (0); its module path `hooks_test_plugin` sorts it after
/// hooks of a binary whose crate name sorts before it.
#[hook(message_received, name = "plugin_tie", crate = plugin_hooks_core)]
fn tie(ev: &MessageReceived) {
    record(ev.key.chat_id(), "plugin_tie");
}

/// A `session_end` hook, so the link check has something to find.
#[hook(session_end, crate = plugin_hooks_core)]
async fn plugin_memory_flush(_ev: &SessionEnd) {}
