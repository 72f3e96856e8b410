//! Typed, exactly-once session hooks for chat and AI-agent gateways.
//!
//! A gateway (a bot bridging Telegram, Slack, IRC or a web chat to an agent) keeps one *session* per
//! conversation. Plugins subscribe to its events with `#[hook]`; a misspelled event or a wrong
//! signature is a compile error, and every session that opens ends with exactly one [`SessionEnd`]
//! carrying its [`CloseReason`].
//!
//! ```
//! use hooks_core::prelude::*;
//!
//! #[hook(session_end)]
//! async fn remember(ev: &SessionEnd) {
//!     println!("{} ended ({}) after {} messages", ev.session_id, ev.reason, ev.message_count);
//! }
//!
//! #[hook(command, priority = -10)]
//! fn no_reset_in_ops(cmd: &Command) -> CommandDecision {
//!     if cmd.key.chat_id() == "ops" && cmd.name() == "reset" {
//!         CommandDecision::Deny { message: "resets are disabled here".into() }
//!     } else {
//!         CommandDecision::Allow
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! Hooks are collected at link time: [`registry::Registry::global`] lists them, the
//! [`dispatch::Dispatcher`] delivers events to them in isolation (errors, panics and timeouts are
//! contained and counted), and the session lifecycle decides when sessions open and close.
//!
//! Hooks in another crate are linked only if the binary names that crate: add `use plugin_crate as _;`
//! and check at startup with [`registry::Registry::require`].
//!
//! [`SessionEnd`]: event::SessionEnd
//! [`CloseReason`]: event::CloseReason

pub mod context;
pub mod dispatch;
pub mod event;
pub mod lifecycle;
#[doc(hidden)]
pub mod macro_support;
pub mod registry;
pub mod runtime;
pub mod store;

pub use context::{HookContext, HookError, State};
pub use registry::Event;

/// Subscribes a function to an event: `#[hook(event, priority = N, timeout = "5s", name = "…", crate = path)]`.
///
/// ```
/// use hooks_core::prelude::*;
///
/// #[hook(session_end, priority = -5, timeout = "2s")]
/// async fn remember(ev: &SessionEnd, ctx: &HookContext) -> Result<(), HookError> {
///     tracing::info!(hook = ctx.hook_name(), session = %ev.session_id, reason = %ev.reason, "session ended");
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// The function is registered at link time; [`registry::Registry::global`] lists it and the
/// [`dispatch::Dispatcher`] calls it.
///
/// - **Event**: the snake_case name of one event of [`registry::EVENT_NAMES`] (`session_end` for
///   [`SessionEnd`](event::SessionEnd)).
/// - **Signature**: `async fn` or plain `fn`, taking `&Event` or `(&Event, &HookContext)`, returning `()`,
///   `Result<(), E>` with `E: Into<HookError>`, or, for `command` only, a
///   [`CommandDecision`](event::CommandDecision) (bare or in a `Result`). Lifetime parameters are fine;
///   type or const generics, `impl Trait`, `self`, `unsafe`, `const` and `extern` functions are not. The
///   future of an `async fn` must be `Send`.
/// - **Options**: `priority` (an `i32` literal, default 0, ascending order), `timeout` (`"500ms"`,
///   `"5s"`, `"2m"`, `"1h"`, `"1d"`, `"1m30s"`: the forms the CLI's durations take, both parsed by
///   `humantime`; parsed at compile time; default: the dispatcher's),
///   `name` (default: the function's name), `crate` (the path to hooks-core if it is renamed; `crate`
///   inside hooks-core).
///
/// Every mistake is a compile error under the offending token, with the accepted signature:
///
/// ```compile_fail
/// use hooks_core::prelude::*;
///
/// #[hook(sesion_end)] // error: unknown event `sesion_end` / help: did you mean `session_end`?
/// async fn remember(ev: &SessionEnd) {}
/// # fn main() {}
/// ```
///
/// Hooks in another crate are linked only if the binary names that crate (`use plugin as _;`); check
/// with [`registry::Registry::require`]. The guide, with every compile error explained, is
/// `docs/hooks.md`.
pub use hooks_macros::hook;

/// `use hooks_core::prelude::*;` brings the `hook` attribute, every event type, [`CloseReason`],
/// [`HookContext`] and [`HookError`] into scope.
///
/// [`CloseReason`]: crate::event::CloseReason
pub mod prelude {
    pub use crate::context::{HookContext, HookError};
    pub use crate::event::{
        AgentTurnEnd, AgentTurnStart, CloseReason, Command, CommandDecision, GatewayShutdown, GatewayStartup,
        MessageReceived, SessionEnd, SessionStart, StartCause,
    };
    pub use hooks_macros::hook;
}

/// Not public API, used by code that `#[hook]` generates. It may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use core::option::Option::{None, Some};
    pub use core::result::Result;
    pub use core::time::Duration;
    pub use std::boxed::Box;

    pub use futures::future::BoxFuture;
    pub use inventory;

    pub use crate::context::{HookContext, HookError};
    pub use crate::event::{
        AgentTurnEnd, AgentTurnStart, Command, CommandDecision, GatewayShutdown, GatewayStartup, MessageReceived,
        SessionEnd, SessionStart,
    };
    pub use crate::macro_support::{ContextArg, EventArg};
    pub use crate::registry::{Event, Handler, HandlerKind, Hook, HookMeta, HookOutput};
}
