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

/// Subscribes a function to an event: `#[hook(session_end)]`. See the crate docs and `docs/hooks.md`.
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

    pub use futures::FutureExt;
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
