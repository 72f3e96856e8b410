//! The session lifecycle: a state machine with no I/O that decides when sessions open and close.
//!
//! Like a protocol engine that takes datagrams and the current time and hands back what to send and
//! when to wake it, the [`Engine`] takes messages and the current time and hands back the
//! [`SessionStart`](crate::event::SessionStart)s and [`SessionEnd`](crate::event::SessionEnd)s that
//! happened and its [next deadline](Engine::next_deadline). It never reads a clock, never sleeps and
//! never calls a handler: the runtime drives it with the wall clock, replay drives
//! it with recorded timestamps.
//!
//! The rules it applies are the session policy of the design's replay contract, summarised in
//! `docs/lifecycle.md`: idle expiry (exact, or at sweep instants), the daily reset, the reset commands
//! `/new` and `/reset`, auto-reset and shutdown.
//!
//! Costs: open sessions are a hash map by session key and their expiry deadlines an ordered map, kept
//! exact on every message. A message costs one hash lookup and `O(log n)`; an expiry `O(log n)`.
//! Nothing visits all sessions except the daily reset and shutdown, which close them all.

mod command;
mod engine;
mod policy;

pub use command::{parse_reset_command, strip_command_slash};
pub use engine::{Closed, Engine, EngineStats, Routed, SessionIds};
pub use policy::{DailyReset, Policy, PolicyError};
