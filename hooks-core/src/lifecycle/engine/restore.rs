//! Resuming an engine after a restart: the sessions a durable store kept open go back into the engine,
//! and those that fell due while the gateway was down close at once, with their real reason and due
//! time, marked as detected late. Still no I/O: the caller reads the store and passes the sessions in.

use std::collections::VecDeque;

use compact_str::CompactString;
use jiff::Timestamp;

use super::{Cold, Engine, Hot, PackedKey, Timer};
use crate::event::AnyEvent;
use crate::store::RecoveredSession;

impl Engine {
    /// Puts back the sessions that were open when the last process stopped (oldest first, as
    /// [`Store::recover`](crate::store::Store::recover) returns them), then lets time pass to `now`
    /// (UTC), like [`advance`](Self::advance): every session that fell due while the gateway was down
    /// closes with its real reason (`idle_expiry`, or `scheduled_reset`/`idle_expiry` at a daily reset
    /// that passed) at its real due time, and its `SessionEnd` has `detected_at = now` ("detected
    /// late"). Those `SessionEnd`s are appended to `out`. Returns how many sessions were restored.
    ///
    /// A restored session keeps its id, key, user, start time, message count and the most recent
    /// messages of its transcript (up to the policy's transcript limit); its idle deadline is its last
    /// message's time plus the idle timeout of this engine's policy. A session whose key is already open
    /// in this engine is skipped (call this first, on a fresh engine).
    ///
    /// ```
    /// use hooks_core::event::{AnyEvent, CloseReason, SessionId, SessionKey};
    /// use hooks_core::lifecycle::{Engine, Policy, SessionIds};
    /// use hooks_core::store::RecoveredSession;
    ///
    /// let down_at: jiff::Timestamp = "2024-05-01T10:00:00Z".parse()?;
    /// let open = RecoveredSession {
    ///     session_id: SessionId::from_u128(7),
    ///     key: SessionKey::chat("web", "42"),
    ///     user_id: "alice".into(),
    ///     started_at: down_at,
    ///     last_message_at: down_at,
    ///     message_count: 1,
    ///     transcript: Vec::new(),
    /// };
    /// let mut engine = Engine::new(Policy::default(), SessionIds::Random);
    /// let mut out = Vec::new();
    /// // The gateway comes back two hours later: the session expired at 10:30 while it was down.
    /// engine.restore([open], "2024-05-01T12:00:00Z".parse()?, &mut out);
    /// let AnyEvent::SessionEnd(end) = &out[0] else { panic!() };
    /// assert_eq!(end.reason, CloseReason::IdleExpiry);
    /// assert_eq!(end.ended_at, "2024-05-01T10:30:00Z".parse()?);
    /// assert!(end.detected_late());
    /// # Ok::<(), jiff::Error>(())
    /// ```
    pub fn restore(
        &mut self,
        sessions: impl IntoIterator<Item = RecoveredSession>,
        now: Timestamp,
        out: &mut Vec<AnyEvent>,
    ) -> usize {
        let sessions: Vec<RecoveredSession> = sessions.into_iter().collect();
        // The clock starts at the latest activity the store knew of, so a daily reset between then and
        // `now` (which the gateway missed) still happens.
        if let Some(last) = sessions.iter().map(|s| s.last_message_at.max(s.started_at)).max() {
            let _ = self.set_clock(last);
        }
        let limit = self.policy.transcript_limit;
        let mut restored = 0;
        for s in sessions {
            let (hash, open) = self.lookup(&s.key);
            if open.is_some() {
                continue;
            }
            self.seq += 1;
            let seq = self.seq;
            let mut transcript: VecDeque<_> = s.transcript.into();
            let kept = transcript.len().min(limit);
            let dropped = transcript.len() - kept;
            transcript.drain(..dropped);
            let truncated = (transcript.len() as u64) < s.message_count;
            let deadline = s.last_message_at.as_nanosecond() + self.idle;
            let hot =
                Hot { deadline, id: s.session_id, message_count: s.message_count, seq, key: PackedKey::of(&s.key) };
            let cold =
                Cold { user_id: CompactString::new(&s.user_id), started_at: s.started_at, transcript, truncated };
            let slot = self.place(hash, hot, cold);
            let due = self.due_of(deadline);
            self.timers.push(Timer { due, seq, slot, hash: hash as u32 });
            restored += 1;
        }
        let first_new = out.len();
        self.advance(now, out);
        for event in &mut out[first_new..] {
            if let AnyEvent::SessionEnd(end) = event
                && end.ended_at < now
            {
                end.detected_at = now;
            }
        }
        restored
    }
}
