//! The metrics hook: counters of sessions, closes by reason, messages, commands and agent turns, read
//! by `GET /metrics` and the replay summary.

use std::sync::atomic::{AtomicU64, Ordering};

use hooks_core::prelude::*;

/// Counters fed by the metrics hooks; put one in the dispatcher state.
#[derive(Debug, Default)]
pub struct Metrics {
    sessions_opened: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    late_closes: AtomicU64,
    messages: AtomicU64,
    commands: AtomicU64,
    agent_turns: AtomicU64,
    agent_errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions closed, per reason, in [`CloseReason::ALL`] order.
    pub closed: Vec<(CloseReason, u64)>,
    /// Closes detected after they were due (the gateway was down).
    pub late_closes: u64,
    /// Messages routed.
    pub messages: u64,
    /// Commands seen.
    pub commands: u64,
    /// Agent turns finished.
    pub agent_turns: u64,
    /// Agent turns that ended in an error.
    pub agent_errors: u64,
}

impl MetricsSnapshot {
    /// Sessions closed over all reasons.
    pub fn sessions_closed(&self) -> u64 {
        self.closed.iter().map(|(_, n)| n).sum()
    }
}

impl Metrics {
    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            sessions_opened: load(&self.sessions_opened),
            closed: CloseReason::ALL.iter().zip(&self.closed).map(|(r, n)| (*r, load(n))).collect(),
            late_closes: load(&self.late_closes),
            messages: load(&self.messages),
            commands: load(&self.commands),
            agent_turns: load(&self.agent_turns),
            agent_errors: load(&self.agent_errors),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[hook(session_start, priority = 90)]
fn count_session_start(_ev: &SessionStart, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>() {
        bump(&m.sessions_opened);
    }
}

#[hook(session_end, priority = 90)]
fn count_session_end(ev: &SessionEnd, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>() {
        let i = CloseReason::ALL.iter().position(|r| *r == ev.reason).expect("every reason is in ALL");
        bump(&m.closed[i]);
        if ev.detected_late() {
            bump(&m.late_closes);
        }
    }
}

#[hook(message_received, priority = 90)]
fn count_message(_ev: &MessageReceived, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>() {
        bump(&m.messages);
    }
}

#[hook(command, priority = 90)]
fn count_command(_ev: &Command, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>() {
        bump(&m.commands);
    }
}

#[hook(agent_turn_end, priority = 90)]
fn count_turn(ev: &AgentTurnEnd, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>() {
        bump(&m.agent_turns);
        if matches!(ev.outcome, hooks_core::event::TurnOutcome::Error { .. }) {
            bump(&m.agent_errors);
        }
    }
}
