//! gateway-example: a chat gateway built on hooks-core.
//!
//! - `replay INPUT --events-out EVENTS`: recorded traffic (chat records or Telegram Updates, JSON
//!   Lines) through the session lifecycle, on the records' own clock;
//! - `serve`: the same on live HTTP traffic (a Telegram webhook and a generic message endpoint);
//! - `hooks`: every hook linked into this binary.
//!
//! The gateway has no session logic of its own: the lifecycle engine of hooks-core decides when
//! sessions open and close, and the dispatcher delivers the events. Hooks come from this crate
//! ([`hooks::audit`], [`hooks::metrics`]) and from the plugin crate `gateway_plugin_memory`, linked by
//! naming it below.

// rustc links a crate only if the binary names it: without this line the plugin's hooks would be
// missing, and the link check at startup would say so.
use gateway_plugin_memory as _;

pub mod agent;
pub mod cli;
pub mod config;
pub mod durable;
pub mod hooks;
pub mod input;
pub mod jsonl;
pub mod replay;
pub mod serve;
pub mod updates;
