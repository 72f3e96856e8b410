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
//! Costs: an index from session key to a slab slot (one cache line per lookup) and a deadline queue
//! (a sorted FIFO ring for deadlines queued in order, nearly all of them, and a binary heap for the
//! rest). A message costs one index lookup and `O(1)`, plus `O(log n)` if it moved the earliest
//! deadline and the re-queued one falls behind newer ones (it then goes to the heap); an expiry costs
//! `O(1)` from the ring, `O(log n)` from the heap. Nothing scans all sessions except the daily reset
//! and shutdown, which close them all.

mod command;
mod engine;
mod policy;
mod timers;

pub use command::{parse_reset_command, strip_command_slash};
pub use engine::{Closed, Engine, EngineStats, Routed, SessionIds};
pub use policy::{DailyReset, Policy, PolicyError};
