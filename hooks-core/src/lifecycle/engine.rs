//! The sans-IO session engine.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;

use compact_str::CompactString;
use hashbrown::{DefaultHashBuilder, HashTable};
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
    key: SessionKey,
    id: SessionId,
    /// Opening order: ties between closes at one instant go in this order.
    seq: u64,
    user_id: CompactString,
    started_at: Timestamp,
    /// Idle deadline (last message + idle timeout), nanoseconds since the Unix epoch. Its entry in
    /// [`Engine::deadlines`] is `(due_of(sweep, deadline), seq)`.
    deadline: i128,
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
/// Open sessions are a [`hashbrown::HashTable`] found by the hash of their key, with the hasher `S` (a
/// per-process random seed by default; tests inject others). Expiry deadlines are a `BTreeMap` kept
/// exact on every message, so a message costs one hash lookup and `O(log n)`, an expiry `O(log n)`; only
/// the daily reset and shutdown, which close every session, visit them all.
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
    /// Sessions opened or restored so far: the last `seq` given.
    seq: u64,
    /// The clock, `None` before the first input.
    now: Option<Timestamp>,
    /// The next daily reset, in nanoseconds since the Unix epoch.
    next_reset: Option<i128>,
    hasher: S,
    /// Open sessions, by the hash of their key. Boxed: a table holds up to twice as many buckets as
    /// entries, and a bucket is then a pointer rather than a whole session.
    sessions: HashTable<Box<Session>>,
    /// Every open session's expiry, `(due, seq)`, to the hash of its key: the earliest first, ties in
    /// opening order.
    deadlines: BTreeMap<(i128, u64), u64>,
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
            hasher,
            sessions: HashTable::new(),
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
        let hash = self.hasher.hash_one(key);

        let mut closed = None;
        let mut cause = StartCause::Message;
        // Step 1: found past its deadline before a sweep closed it.
        if self.find(hash, key).is_some_and(|s| t >= s.deadline) {
            closed = self.close_key(hash, key, CloseReason::AutoReset, at, out);
            cause = StartCause::AutoReset;
        }
        // Step 2: a reset command closes what is open.
        if let Some(reason) = command
            && self.find(hash, key).is_some()
        {
            closed = self.close_key(hash, key, reason, at, out);
            cause = StartCause::Command;
        }
        // Step 3: open one if none is.
        let opened = self.find(hash, key).is_none();
        if opened {
            self.open(key.clone(), user_id, at, cause, closed.map(|c| c.session_id), out);
        }
        // Step 5: count the message and move the deadline.
        let (idle, sweep, limit) = (self.idle, self.sweep, self.policy.transcript_limit);
        let Some(session) = self.sessions.find_mut(hash, |s| s.key == *key) else {
            unreachable!("the key's session is open")
        };
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
        let old_due = due_of(sweep, session.deadline);
        session.deadline = t + idle;
        let (due, seq) = (due_of(sweep, session.deadline), session.seq);
        let routed =
            Routed { session_id: session.id, command, opened, closed, at, message_count: session.message_count };
        if due != old_due {
            self.deadlines.remove(&(old_due, seq));
            self.deadlines.insert((due, seq), hash);
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
        for (entry, hash) in self.open_in_order() {
            self.close(entry, hash, |_| CloseReason::Shutdown, at, out);
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
            if self.find(self.hasher.hash_one(&s.key), &s.key).is_some() {
                continue;
            }
            let mut transcript = VecDeque::from(s.transcript);
            transcript.drain(..transcript.len().saturating_sub(limit));
            let truncated = (transcript.len() as u64) < s.message_count;
            let deadline = s.last_message_at.as_nanosecond() + self.idle;
            self.seq += 1;
            self.insert(Session {
                key: s.key,
                id: s.session_id,
                seq: self.seq,
                user_id: s.user_id.as_str().into(),
                started_at: s.started_at,
                deadline,
                message_count: s.message_count,
                transcript,
                truncated,
            });
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
        self.find(self.hasher.hash_one(key), key).map(|s| s.id)
    }

    /// The idle deadline (UTC) of `key`'s open session: its last message's time plus the idle timeout.
    pub fn idle_deadline(&self, key: &SessionKey) -> Option<Timestamp> {
        self.find(self.hasher.hash_one(key), key).map(|s| ts(s.deadline))
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
        while let Some((&(due, seq), &hash)) = self.deadlines.first_key_value() {
            if reset.map_or(due > now, |r| due >= r) {
                break;
            }
            self.close((due, seq), hash, |_| CloseReason::IdleExpiry, ts(due), out);
        }
        let Some(r) = reset else { return };
        let at = ts(r);
        let reason = |s: &Session| if s.deadline <= r { CloseReason::IdleExpiry } else { CloseReason::ScheduledReset };
        for (entry, hash) in self.open_in_order() {
            self.close(entry, hash, reason, at, out);
        }
        // Every session is closed now, so later resets up to `now` would close nothing: skip to the first
        // one after `now` (a reset exactly at `now` precedes any message routed at `now`).
        self.next_reset = self.next_reset_after(now);
    }

    /// Every open session's deadline entry and key hash, oldest first.
    fn open_in_order(&self) -> Vec<((i128, u64), u64)> {
        let mut open: Vec<_> = self.deadlines.iter().map(|(&entry, &hash)| (entry, hash)).collect();
        open.sort_unstable_by_key(|&((_, seq), _)| seq);
        open
    }

    /// `key`'s open session; `hash` is the key's.
    fn find(&self, hash: u64, key: &SessionKey) -> Option<&Session> {
        self.sessions.find(hash, |s| s.key == *key).map(|s| &**s)
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
        self.seq += 1;
        let id = match self.ids {
            SessionIds::Sequential => SessionId::from_u128(u128::from(self.seq)),
            SessionIds::Random => SessionId::new_random(),
        };
        let user_id = CompactString::from(user_id);
        out.push(AnyEvent::SessionStart(SessionStart::new(id, key.clone(), user_id.clone(), at, cause, previous)));
        self.insert(Session {
            key,
            id,
            seq: self.seq,
            user_id,
            started_at: at,
            deadline: at.as_nanosecond() + self.idle,
            message_count: 0,
            transcript: VecDeque::new(),
            truncated: false,
        });
        self.stats.opened += 1;
    }

    /// Adds an open session and its deadline.
    fn insert(&mut self, session: Session) {
        let hash = self.hasher.hash_one(&session.key);
        debug_assert!(self.find(hash, &session.key).is_none(), "a key has at most one open session");
        self.deadlines.insert((due_of(self.sweep, session.deadline), session.seq), hash);
        let hasher = &self.hasher;
        self.sessions.insert_unique(hash, Box::new(session), |s| hasher.hash_one(&s.key));
    }

    /// Closes `key`'s open session at `at` with `reason`, if it has one; `hash` is the key's.
    fn close_key(
        &mut self,
        hash: u64,
        key: &SessionKey,
        reason: CloseReason,
        at: Timestamp,
        out: &mut Vec<AnyEvent>,
    ) -> Option<Closed> {
        let session = self.find(hash, key)?;
        let entry = (due_of(self.sweep, session.deadline), session.seq);
        Some(self.close(entry, hash, |_| reason, at, out))
    }

    /// Closes the open session whose deadline entry is `entry` (its key hashing to `hash`) at `at`, with
    /// the reason `reason` gives for it, and emits its `SessionEnd`. The only place a session leaves the
    /// open state.
    fn close(
        &mut self,
        entry: (i128, u64),
        hash: u64,
        reason: impl FnOnce(&Session) -> CloseReason,
        at: Timestamp,
        out: &mut Vec<AnyEvent>,
    ) -> Closed {
        self.deadlines.remove(&entry);
        let Ok(found) = self.sessions.find_entry(hash, |s| s.seq == entry.1) else {
            unreachable!("every deadline entry belongs to an open session")
        };
        let session = found.remove().0;
        let reason = reason(&session);
        let Session { key, id, user_id, started_at, message_count, transcript, truncated, .. } = *session;
        let transcript = Transcript::new(Vec::from(transcript), truncated);
        out.push(AnyEvent::SessionEnd(SessionEnd::new(
            id,
            key,
            user_id,
            reason,
            started_at,
            at,
            at,
            message_count,
            transcript,
        )));
        self.stats.closed_by_reason[reason_index(reason)] += 1;
        Closed { session_id: id, reason }
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
