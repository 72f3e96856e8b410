//! The metrics hook: counters of sessions, closes by reason, messages, commands and agent turns, read
//! by `GET /metrics` and the replay summary.

use std::sync::atomic::{AtomicU64, Ordering};

use hooks_core::prelude::*;
use thread_local::ThreadLocal;

/// Counters fed by the metrics hooks; put one in the dispatcher state.
///
/// Every thread that delivers events counts in a row of its own, and a [snapshot](Self::snapshot)
/// sums the rows. A row has one writer, so a count is a plain load and store: a shared `fetch_add`
/// would be a locked instruction per event, ~13 ns each on the VM of docs/benchmarks.md, which is more
/// than the rest of the hook.
#[derive(Debug, Default)]
pub struct Metrics {
    rows: ThreadLocal<Row>,
}

/// One thread's counts.
#[derive(Debug, Default)]
struct Row {
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
    /// The counters now: the sum over the threads' rows. A count that another thread is making at
    /// this moment may or may not be in it.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let sum =
            |field: &dyn Fn(&Row) -> &AtomicU64| self.rows.iter().map(|row| field(row).load(Ordering::Relaxed)).sum();
        MetricsSnapshot {
            sessions_opened: sum(&|r| &r.sessions_opened),
            closed: CloseReason::ALL.iter().enumerate().map(|(i, reason)| (*reason, sum(&|r| &r.closed[i]))).collect(),
            late_closes: sum(&|r| &r.late_closes),
            messages: sum(&|r| &r.messages),
            commands: sum(&|r| &r.commands),
            agent_turns: sum(&|r| &r.agent_turns),
            agent_errors: sum(&|r| &r.agent_errors),
        }
    }

    /// This thread's row.
    fn row(&self) -> &Row {
        self.rows.get_or_default()
    }
}

/// Adds one to a counter of this thread's row: only this thread writes it, so a relaxed load and
/// store lose nothing, and readers see each count whole.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

#[hook(session_start, priority = 90)]
fn count_session_start(_ev: &SessionStart, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>().map(Metrics::row) {
        bump(&m.sessions_opened);
    }
}

#[hook(session_end, priority = 90)]
fn count_session_end(ev: &SessionEnd, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>().map(Metrics::row) {
        let i = CloseReason::ALL.iter().position(|r| *r == ev.reason).expect("every reason is in ALL");
        bump(&m.closed[i]);
        if ev.detected_late() {
            bump(&m.late_closes);
        }
    }
}

#[hook(message_received, priority = 90)]
fn count_message(_ev: &MessageReceived, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>().map(Metrics::row) {
        bump(&m.messages);
    }
}

#[hook(command, priority = 90)]
fn count_command(_ev: &Command, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>().map(Metrics::row) {
        bump(&m.commands);
    }
}

#[hook(agent_turn_end, priority = 90)]
fn count_turn(ev: &AgentTurnEnd, ctx: &HookContext) {
    if let Some(m) = ctx.state::<Metrics>().map(Metrics::row) {
        bump(&m.agent_turns);
        if matches!(ev.outcome, hooks_core::event::TurnOutcome::Error { .. }) {
            bump(&m.agent_errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts from many threads at once all arrive: each thread has its own row. (With a shared row
    /// written by load and store, concurrent counts would be lost.)
    #[test]
    fn counts_from_many_threads_sum_exactly() {
        let metrics = Metrics::default();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let metrics = &metrics;
                scope.spawn(move || {
                    for _ in 0..20_000 {
                        bump(&metrics.row().messages);
                    }
                    for _ in 0..t {
                        bump(&metrics.row().closed[1]);
                    }
                });
            }
        });
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.messages, 160_000);
        assert_eq!(snapshot.closed[1], (CloseReason::ALL[1], 28));
        assert_eq!(snapshot.sessions_closed(), 28);
    }
}
