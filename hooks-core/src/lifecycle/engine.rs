//! The sans-IO session engine.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;

use compact_str::CompactString;
use hashbrown::{DefaultHashBuilder, HashMap};
use jiff::Timestamp;

use super::command::parse_reset_command;
use super::policy::Policy;
use crate::event::{
    AnyEvent, CloseReason, SessionEnd, SessionId, SessionKey, SessionStart, StartCause, Transcript, TranscriptEntry,
};
use crate::store::RecoveredSession;

/// How the engine makes session ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionIds {
    /// `1, 2, 3, …` in opening order ([`SessionId::from_u128`]): the same input always gives the same
    /// ids. For replay and tests.
    Sequential,
    /// Random time-ordered UUID v7 ([`SessionId::new_random`]): for live traffic, where ids must not
    /// collide across restarts and gateway instances.
    #[default]
    Random,
}

/// A session that a message (step 1 or 2 of the routing rules) closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The session that closed.
    pub session_id: SessionId,
    /// Why: [`CloseReason::AutoReset`], [`CloseReason::UserNew`] or [`CloseReason::UserReset`].
    pub reason: CloseReason,
}

/// Where [`Engine::message`] routed a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Routed {
    /// The session the message counts toward (its key's open session after routing).
    pub session_id: SessionId,
    /// `Some` if the text is a reset command (`/new` → [`CloseReason::UserNew`], `/reset` →
    /// [`CloseReason::UserReset`]), whether or not there was a session for it to close.
    pub command: Option<CloseReason>,
    /// Whether the message opened `session_id` (a `SessionStart` was emitted).
    pub opened: bool,
    /// The session this message closed, if any (auto-reset or reset command). `None` for a command on a
    /// key with no open session: no `SessionEnd` is emitted then.
    pub closed: Option<Closed>,
    /// The time the message was processed at: its own time, or the engine's clock if that was later
    /// (UTC).
    pub at: Timestamp,
    /// The session's message count including this message.
    pub message_count: u64,
}

/// Counters since the engine was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sessions opened.
    pub opened: u64,
    /// Sessions closed, indexed like [`CloseReason::ALL`]; see [`closed`](Self::closed).
    pub closed_by_reason: [u64; 6],
    /// Messages routed.
    pub messages: u64,
}

impl EngineStats {
    /// Sessions closed with `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed_by_reason[reason_index(reason)]
    }

    /// Sessions closed, over all reasons.
    pub fn closed_total(&self) -> u64 {
        self.closed_by_reason.iter().sum()
    }
}

fn reason_index(reason: CloseReason) -> usize {
    CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or_default()
}

/// An open session.
#[derive(Debug)]
struct Session {
    id: SessionId,
    /// Opening order: ties between closes at one instant go in this order.
    seq: u64,
    user_id: CompactString,
    started_at: Timestamp,
    /// Idle deadline (last message + idle timeout), nanoseconds since the Unix epoch.
    deadline: i128,
    /// When expiry closes it (the deadline, or the first sweep instant at or after it): its entry in
    /// [`Engine::deadlines`] is `(due, seq)`.
    due: i128,
    message_count: u64,
    transcript: VecDeque<TranscriptEntry>,
    /// Whether messages were dropped from the transcript.
    truncated: bool,
}

/// The session lifecycle as a state machine with no I/O and no clock of its own.
///
/// Feed it messages ([`message`](Self::message)), the passing of time ([`advance`](Self::advance)) and
/// the end ([`shutdown`](Self::shutdown)); it appends the [`SessionStart`]s and [`SessionEnd`]s that
/// happened to an output vector, in the order of the replay contract, and tells when it next needs to be
/// woken ([`next_deadline`](Self::next_deadline)). The live runtime feeds it the wall clock and sleeps
/// until that deadline; replay feeds it the records' timestamps and never sleeps.
///
/// The engine's clock starts at the first time it is given and never moves back: an earlier time is
/// processed at the clock's time. Closes due at the same instant happen in the order the sessions
/// opened.
///
/// Open sessions are a [`hashbrown::HashMap`] by key, with the hasher `S` (a per-process random seed by
/// default; tests inject others). Expiry deadlines are a `BTreeMap` kept exact on every message, so a
/// message costs one hash lookup and `O(log n)`, an expiry `O(log n)`; only the daily reset and
/// shutdown, which close every session, visit them all.
///
/// ```
/// use hooks_core::event::{AnyEvent, CloseReason, SessionKey};
/// use hooks_core::lifecycle::{Engine, Policy, SessionIds};
///
/// let mut engine = Engine::new(Policy::default(), SessionIds::Sequential);
/// let key = SessionKey::chat("telegram", "42");
/// let mut out = Vec::new();
/// let t0: jiff::Timestamp = "2024-05-01T10:00:00Z".parse()?;
/// engine.message(&key, "7", "hello", t0, &mut out);
/// // 30 minutes of silence later the session has closed at its idle deadline.
/// engine.advance("2024-05-01T11:00:00Z".parse()?, &mut out);
/// let AnyEvent::SessionEnd(end) = &out[1] else { panic!() };
/// assert_eq!(end.reason, CloseReason::IdleExpiry);
/// assert_eq!(end.ended_at, "2024-05-01T10:30:00Z".parse()?);
/// # Ok::<(), jiff::Error>(())
/// ```
pub struct Engine<S = DefaultHashBuilder> {
    policy: Policy,
    /// The idle timeout and the sweep interval (`None` for exact timers), in nanoseconds.
    idle: i128,
    sweep: Option<i128>,
    ids: SessionIds,
    /// Sessions opened so far: the last `seq` given.
    seq: u64,
    /// The clock, `None` before the first input.
    now: Option<Timestamp>,
    /// The next daily reset, in nanoseconds since the Unix epoch.
    next_reset: Option<i128>,
    sessions: HashMap<SessionKey, Session, S>,
    /// Every open session's expiry, `(due, seq)`: the earliest first, ties in opening order.
    deadlines: BTreeMap<(i128, u64), SessionKey>,
    stats: EngineStats,
}

impl<S: BuildHasher> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("policy", &self.policy)
            .field("now", &self.now)
            .field("open_sessions", &self.sessions.len())
            .field("next_deadline", &self.next_deadline())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A timestamp from nanoseconds; out-of-range values (only reachable with absurd idle timeouts) clamp.
fn ts(nanos: i128) -> Timestamp {
    Timestamp::from_nanosecond(nanos).unwrap_or(if nanos < 0 { Timestamp::MIN } else { Timestamp::MAX })
}

impl Engine {
    /// An engine with no sessions and no clock yet.
    pub fn new(policy: Policy, ids: SessionIds) -> Self {
        Self::with_hasher(policy, ids, DefaultHashBuilder::default())
    }
}

impl<S: BuildHasher> Engine<S> {
    /// An engine whose session map hashes keys with `hasher`. The output never depends on the hasher;
    /// tests use this to check that with fixed seeds and with hashers that collide.
    pub fn with_hasher(policy: Policy, ids: SessionIds, hasher: S) -> Self {
        let idle = policy.idle_timeout.as_nanos() as i128;
        let sweep = policy.sweep_interval.map(|s| s.as_nanos() as i128).filter(|&s| s > 0);
        Self {
            policy,
            idle,
            sweep,
            ids,
            seq: 0,
            now: None,
            next_reset: None,
            sessions: HashMap::with_hasher(hasher),
            deadlines: BTreeMap::new(),
            stats: EngineStats::default(),
        }
    }

    /// The policy the engine applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Lets time pass to `at` (UTC): every close due at or before it happens, in time order (ties in
    /// opening order). An `at` before the clock changes nothing.
    pub fn advance(&mut self, at: Timestamp, out: &mut Vec<AnyEvent>) {
        let t = self.set_clock(at).as_nanosecond();
        self.run_until(t, out);
    }

    /// Routes a message from `user_id` for `key` at time `at` (UTC) per the replay contract: first every
    /// close due at or before `at` happens; then, if the key's session is past its idle deadline, it
    /// closes with `auto_reset`; if `text` is a reset command, the key's open session closes with
    /// `user_new`/`user_reset` and a new one opens; if the key has no open session, one opens. The
    /// message then counts toward the key's open session and moves its idle deadline.
    ///
    /// Returns where the message went; the events that happened are appended to `out`.
    pub fn message(
        &mut self,
        key: &SessionKey,
        user_id: &str,
        text: &str,
        at: Timestamp,
        out: &mut Vec<AnyEvent>,
    ) -> Routed {
        let at = self.set_clock(at);
        let t = at.as_nanosecond();
        self.run_until(t, out);
        let command = parse_reset_command(text);

        let mut closed = None;
        let mut cause = StartCause::Message;
        // Step 1: found past its deadline before a sweep closed it.
        if self.sessions.get(key).is_some_and(|s| t >= s.deadline) {
            closed = self.close(key, CloseReason::AutoReset, at, out);
            cause = StartCause::AutoReset;
        }
        // Step 2: a reset command closes what is open.
        if let Some(reason) = command
            && self.sessions.contains_key(key)
        {
            closed = self.close(key, reason, at, out);
            cause = StartCause::Command;
        }
        // Step 3: open one if none is.
        let opened = !self.sessions.contains_key(key);
        if opened {
            self.open(key.clone(), user_id, at, cause, closed.map(|c| c.session_id), out);
        }
        // Step 5: count the message and move the deadline.
        let (idle, sweep, limit) = (self.idle, self.sweep, self.policy.transcript_limit);
        let Some(session) = self.sessions.get_mut(key) else { unreachable!("the key's session is open") };
        session.message_count += 1;
        if limit > 0 {
            if session.transcript.len() >= limit {
                session.transcript.pop_front();
                session.truncated = true;
            }
            session.transcript.push_back(TranscriptEntry { at, user_id: user_id.into(), text: text.to_owned() });
        } else {
            session.truncated = true;
        }
        session.deadline = t + idle;
        let old_due = session.due;
        session.due = due_of(sweep, session.deadline);
        let (due, seq) = (session.due, session.seq);
        let routed =
            Routed { session_id: session.id, command, opened, closed, at, message_count: session.message_count };
        if due != old_due {
            let key = self.deadlines.remove(&(old_due, seq)).expect("an open session has a deadline");
            self.deadlines.insert((due, seq), key);
        }
        self.stats.messages += 1;
        routed
    }

    /// Ends: time passes to `at` (due closes happen first), then every open session closes with
    /// `shutdown` at the clock's time (`at`, or the clock if it is later), in opening order.
    ///
    /// The engine stays usable: a later message opens a new session (and a later command on a key whose
    /// session shutdown closed emits no second `SessionEnd`).
    pub fn shutdown(&mut self, at: Timestamp, out: &mut Vec<AnyEvent>) {
        let at = self.set_clock(at);
        self.run_until(at.as_nanosecond(), out);
        for key in self.open_keys_in_order() {
            self.close(&key, CloseReason::Shutdown, at, out);
        }
    }

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
            self.set_clock(last);
        }
        let limit = self.policy.transcript_limit;
        let mut restored = 0;
        for s in sessions {
            if self.sessions.contains_key(&s.key) {
                continue;
            }
            let mut transcript = VecDeque::from(s.transcript);
            transcript.drain(..transcript.len().saturating_sub(limit));
            let truncated = (transcript.len() as u64) < s.message_count;
            let deadline = s.last_message_at.as_nanosecond() + self.idle;
            self.insert(
                s.key,
                Session {
                    id: s.session_id,
                    seq: 0,
                    user_id: s.user_id.as_str().into(),
                    started_at: s.started_at,
                    deadline,
                    due: due_of(self.sweep, deadline),
                    message_count: s.message_count,
                    transcript,
                    truncated,
                },
            );
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

    /// When the engine next needs [`advance`](Self::advance) (UTC): the earliest idle deadline (or sweep
    /// instant) and, while a session is open, the next daily reset. `None` when nothing is pending.
    /// Calling `advance` earlier is harmless.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let timer = self.deadlines.first_key_value().map(|(&(due, _), _)| due);
        let reset = self.next_reset.filter(|_| !self.sessions.is_empty());
        [timer, reset].into_iter().flatten().min().map(ts)
    }

    /// The engine's clock: the latest time it was given (UTC), `None` before the first.
    pub fn now(&self) -> Option<Timestamp> {
        self.now
    }

    /// How many sessions are open.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The open session of `key`, if any.
    pub fn open_session(&self, key: &SessionKey) -> Option<SessionId> {
        self.sessions.get(key).map(|s| s.id)
    }

    /// The idle deadline (UTC) of `key`'s open session: its last message's time plus the idle timeout.
    pub fn idle_deadline(&self, key: &SessionKey) -> Option<Timestamp> {
        self.sessions.get(key).map(|s| ts(s.deadline))
    }

    /// Counters since the engine was made.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Sets the clock to `at` unless it is already later; returns the clock.
    fn set_clock(&mut self, at: Timestamp) -> Timestamp {
        match self.now {
            Some(now) if now >= at => now,
            Some(_) => *self.now.insert(at),
            None => {
                // No session can be open before the first input, so resets up to now close nothing.
                self.next_reset = self.next_reset_after(at.as_nanosecond());
                *self.now.insert(at)
            }
        }
    }

    fn next_reset_after(&self, t: i128) -> Option<i128> {
        self.policy.daily_reset.as_ref().and_then(|r| r.next_after_nanos(t))
    }

    /// Performs every close due at or before `now`, in time order.
    fn run_until(&mut self, now: i128, out: &mut Vec<AnyEvent>) {
        let reset = self.next_reset.filter(|&r| r <= now);
        // Idle closes strictly before a due daily reset happen first; at the reset instant every open
        // session closes at once, in opening order, whatever its own deadline says.
        while let Some(entry) = self.deadlines.first_entry() {
            let (due, _) = *entry.key();
            if reset.map_or(due > now, |r| due >= r) {
                break;
            }
            let key = entry.remove();
            self.close_removed(key, CloseReason::IdleExpiry, ts(due), out);
        }
        let Some(r) = reset else { return };
        let at = ts(r);
        for key in self.open_keys_in_order() {
            let idle = self.sessions[&key].deadline <= r;
            let reason = if idle { CloseReason::IdleExpiry } else { CloseReason::ScheduledReset };
            self.close(&key, reason, at, out);
        }
        // Every session is closed now, so later resets up to `now` would close nothing: skip to the first
        // one after `now` (a reset exactly at `now` precedes any message routed at `now`).
        self.next_reset = self.next_reset_after(now);
    }

    /// The keys of every open session, oldest first.
    fn open_keys_in_order(&self) -> Vec<SessionKey> {
        let mut open: Vec<(u64, &SessionKey)> = self.sessions.iter().map(|(k, s)| (s.seq, k)).collect();
        open.sort_unstable_by_key(|&(seq, _)| seq);
        open.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// Opens a session for `key` at `at` and emits its `SessionStart`.
    fn open(
        &mut self,
        key: SessionKey,
        user_id: &str,
        at: Timestamp,
        cause: StartCause,
        previous: Option<SessionId>,
        out: &mut Vec<AnyEvent>,
    ) {
        let id = match self.ids {
            SessionIds::Sequential => SessionId::from_u128(u128::from(self.seq + 1)),
            SessionIds::Random => SessionId::new_random(),
        };
        let user_id = CompactString::from(user_id);
        out.push(AnyEvent::SessionStart(SessionStart::new(id, key.clone(), user_id.clone(), at, cause, previous)));
        let deadline = at.as_nanosecond() + self.idle;
        self.insert(
            key,
            Session {
                id,
                seq: 0,
                user_id,
                started_at: at,
                deadline,
                due: due_of(self.sweep, deadline),
                message_count: 0,
                transcript: VecDeque::new(),
                truncated: false,
            },
        );
        self.stats.opened += 1;
    }

    /// Adds an open session (numbered in opening order) and its deadline.
    fn insert(&mut self, key: SessionKey, mut session: Session) {
        self.seq += 1;
        session.seq = self.seq;
        self.deadlines.insert((session.due, session.seq), key.clone());
        let previous = self.sessions.insert(key, session);
        debug_assert!(previous.is_none(), "a key has at most one open session");
    }

    /// Closes `key`'s open session at `at` with `reason`. The only way, with
    /// [`close_removed`](Self::close_removed), that a session leaves the open state.
    fn close(
        &mut self,
        key: &SessionKey,
        reason: CloseReason,
        at: Timestamp,
        out: &mut Vec<AnyEvent>,
    ) -> Option<Closed> {
        let session = self.sessions.get(key)?;
        let key = self.deadlines.remove(&(session.due, session.seq)).expect("an open session has a deadline");
        self.close_removed(key, reason, at, out)
    }

    /// Closes the open session of `key`, whose deadline entry is already gone, and emits its
    /// `SessionEnd`.
    fn close_removed(
        &mut self,
        key: SessionKey,
        reason: CloseReason,
        at: Timestamp,
        out: &mut Vec<AnyEvent>,
    ) -> Option<Closed> {
        let session = self.sessions.remove(&key)?;
        let transcript = Transcript::new(Vec::from(session.transcript), session.truncated);
        out.push(AnyEvent::SessionEnd(SessionEnd::new(
            session.id,
            key,
            session.user_id,
            reason,
            session.started_at,
            at,
            at,
            session.message_count,
            transcript,
        )));
        self.stats.closed_by_reason[reason_index(reason)] += 1;
        Some(Closed { session_id: session.id, reason })
    }
}

/// When a session with idle deadline `deadline` closes by expiry: the deadline itself, or with a sweep
/// interval the first sweep instant at or after it.
fn due_of(sweep: Option<i128>, deadline: i128) -> i128 {
    match sweep {
        None => deadline,
        Some(s) => {
            let rem = deadline.rem_euclid(s);
            if rem == 0 { deadline } else { deadline - rem + s }
        }
    }
}
