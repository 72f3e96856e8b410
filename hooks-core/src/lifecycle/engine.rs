//! The sans-IO session engine.

use std::collections::VecDeque;
use std::fmt;

use compact_str::CompactString;
use hashbrown::DefaultHashBuilder;
use jiff::Timestamp;

use super::command::parse_reset_command;
use super::policy::Policy;
use super::timers::{Timer, Timers};
use crate::event::{
    AnyEvent, CloseReason, SessionEnd, SessionId, SessionKey, SessionStart, StartCause, Transcript, TranscriptEntry,
};

// The key → slot index: one cache line per lookup.
mod index;
// How the engine stores keys: packed, inline in the session's record.
mod packed;
// `Engine::restore`, kept apart so the engine proper reads as the replay contract.
mod restore;

use index::Index;
use packed::{PackedKey, hash_key};

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
    match reason {
        CloseReason::UserNew => 0,
        CloseReason::UserReset => 1,
        CloseReason::IdleExpiry => 2,
        CloseReason::ScheduledReset => 3,
        CloseReason::AutoReset => 4,
        CloseReason::Shutdown => 5,
    }
}

/// How many deadline-ring entries an expiry reads ahead at once, every that many expiries
/// ([`Engine::look_ahead`]).
const LOOK_AHEAD: usize = 4;

/// The part of a slot that a message to an open session reads and writes (with transcripts off):
/// the key to compare, the deadline and count to update, the id to answer with. 128 bytes, aligned so a
/// record fills exactly two adjacent cache lines of one page; at 10^6 sessions a message to a cold key
/// then costs one record fetch after the hash table's, not four lines spread over two pages.
#[repr(align(128))]
struct Hot {
    /// Idle deadline (last message + idle timeout), nanoseconds since the Unix epoch.
    deadline: i128,
    id: SessionId,
    message_count: u64,
    /// Opening order; also the generation that tells a live timer entry from a stale one. `0` for a
    /// vacant slot (sequence numbers start at 1).
    seq: u64,
    key: PackedKey,
}

const _: () = assert!(std::mem::size_of::<Hot>() == 128);

impl Hot {
    const VACANT: Hot =
        Hot { deadline: 0, id: SessionId::from_u128(0), message_count: 0, seq: 0, key: PackedKey::VACANT };
}

/// The rest of an open session, read when it opens or closes (and for its transcript).
#[derive(Default)]
struct Cold {
    user_id: CompactString,
    started_at: Timestamp,
    transcript: VecDeque<TranscriptEntry>,
    /// Whether messages were dropped from the transcript. With a transcript limit of 0 a session that
    /// counted a message is truncated whatever this says (so the message path need not touch this).
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
pub struct Engine {
    policy: Policy,
    idle: i128,
    sweep: Option<i128>,
    ids: SessionIds,
    seq: u64,
    /// The clock in nanoseconds and as a timestamp (kept both ways: converting back from an `i128`
    /// costs a 128-bit division on every message).
    now: Option<(i128, Timestamp)>,
    next_reset: Option<i128>,
    /// The slab, split in two parallel vectors indexed by slot: what every message touches, and the rest.
    hot: Vec<Hot>,
    cold: Vec<Cold>,
    free: Vec<u32>,
    index: Index,
    hasher: DefaultHashBuilder,
    timers: Timers,
    stats: EngineStats,
    /// Entries that fell due so far (wrapping): spaces the look-aheads ([`look_ahead`](Self::look_ahead)).
    ring_pops: u32,
    /// What the look-aheads read, folded together so that the reads stay; never used otherwise.
    looked_ahead: u64,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("policy", &self.policy)
            .field("now", &self.now())
            .field("open_sessions", &self.open_sessions())
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
            hot: Vec::new(),
            cold: Vec::new(),
            free: Vec::new(),
            index: Index::default(),
            hasher: DefaultHashBuilder::default(),
            timers: Timers::default(),
            stats: EngineStats::default(),
            ring_pops: 0,
            looked_ahead: 0,
        }
    }

    /// The policy it applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Time passes to `now` (UTC; an earlier time than the clock's is ignored, the clock never moves back):
    /// every close due at or before `now` happens, in time order, and its `SessionEnd` is appended to
    /// `out`.
    pub fn advance(&mut self, now: Timestamp, out: &mut Vec<AnyEvent>) {
        let (now, _) = self.set_clock(now);
        self.run_until(now, out);
        self.settle_top();
    }

    /// A message for `key` from `user_id` with `text`, at `at` (UTC).
    ///
    /// First time passes to `at` ([`advance`](Self::advance)); then the message is routed:
    /// 1. if the key's open session is at or past its idle deadline (possible only with a sweep
    ///    interval), it closes at the message's time with `auto_reset`;
    /// 2. if the text is a reset command ([`parse_reset_command`](super::parse_reset_command)) and the key
    ///    still has an open session, that session closes with `user_new` or `user_reset` and a new one
    ///    opens with cause `command`;
    /// 3. otherwise, if the key has no open session, one opens with cause `auto_reset` if step 1 closed
    ///    one, else `message`;
    /// 4. a session opened here names the session this message closed as its `previous_session_id`;
    /// 5. the message counts toward the open session and moves its idle deadline to its time plus the
    ///    idle timeout.
    ///
    /// Events go to `out`: due closes in time order, then a `SessionEnd` before its successor's
    /// `SessionStart`. `user_id` becomes the session's user if the message opens it.
    pub fn message(
        &mut self,
        key: &SessionKey,
        user_id: &str,
        text: &str,
        at: Timestamp,
        out: &mut Vec<AnyEvent>,
    ) -> Routed {
        let (t, t_ts) = self.set_clock(at);
        self.run_until(t, out);
        let command = parse_reset_command(text);
        let (hash, mut slot) = self.lookup(key);
        let mut closed = None;
        let mut cause = StartCause::Message;

        if let Some(s) = slot
            && t >= self.hot[s as usize].deadline
        {
            closed = self.close_slot(s, Some(hash), CloseReason::AutoReset, t, t_ts, out);
            slot = None;
            cause = StartCause::AutoReset;
        }
        if let (Some(reason), Some(s)) = (command, slot) {
            closed = self.close_slot(s, Some(hash), reason, t, t_ts, out);
            slot = None;
            cause = StartCause::Command;
        }
        let opened = slot.is_none();
        let s = match slot {
            Some(s) => s,
            None => {
                let previous = closed.map(|c| c.session_id);
                self.open(key, hash, user_id, (t, t_ts), cause, previous, out)
            }
        };

        let limit = self.policy.transcript_limit;
        if limit > 0 {
            let sess = &mut self.cold[s as usize];
            if sess.transcript.len() >= limit {
                sess.transcript.pop_front();
                sess.truncated = true;
            }
            sess.transcript.push_back(TranscriptEntry {
                at: t_ts,
                user_id: CompactString::new(user_id),
                text: text.to_owned(),
            });
        }
        let sess = &mut self.hot[s as usize];
        sess.message_count += 1;
        sess.deadline = t + self.idle;
        let routed =
            Routed { session_id: sess.id, command, opened, closed, at: t_ts, message_count: sess.message_count };
        let seq = sess.seq;
        let deadline = sess.deadline;
        if opened {
            let due = self.due_of(deadline);
            self.timers.push(Timer { due, seq, slot: s, hash: hash as u32 });
        }
        self.stats.messages += 1;
        if closed.is_some() {
            self.shed_stale_timers();
        }
        self.settle_top();
        routed
    }

    /// Ends: time passes to `at` (due closes happen first), then every open session closes with
    /// `shutdown` at the clock's time (`at`, or the clock if it is later), in opening order.
    ///
    /// The engine stays usable: a later message opens a new session (and a later command on a key whose
    /// session shutdown closed emits no second `SessionEnd`).
    pub fn shutdown(&mut self, at: Timestamp, out: &mut Vec<AnyEvent>) {
        let (t, t_ts) = self.set_clock(at);
        self.run_until(t, out);
        for slot in self.open_slots_in_order() {
            self.close_slot(slot, None, CloseReason::Shutdown, t, t_ts, out);
        }
        self.timers.clear();
    }

    /// When the engine next needs [`advance`](Self::advance) (UTC): the earliest idle deadline (or sweep
    /// instant) and, while a session is open, the next daily reset. `None` when nothing is pending.
    /// Calling `advance` earlier is harmless.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let timer = self.timers.peek().map(|t| t.due);
        let reset = if self.index.is_empty() { None } else { self.next_reset };
        match (timer, reset) {
            (Some(a), Some(b)) => Some(ts(a.min(b))),
            (a, b) => a.or(b).map(ts),
        }
    }

    /// The engine's clock: the latest time it was given (UTC), `None` before the first.
    pub fn now(&self) -> Option<Timestamp> {
        self.now.map(|(_, t)| t)
    }

    /// How many sessions are open.
    pub fn open_sessions(&self) -> usize {
        self.index.len()
    }

    /// The open session of `key`, if any.
    pub fn open_session(&self, key: &SessionKey) -> Option<SessionId> {
        let slot = self.lookup(key).1?;
        Some(self.hot[slot as usize].id)
    }

    /// The idle deadline (UTC) of `key`'s open session: its last message's time plus the idle timeout.
    pub fn idle_deadline(&self, key: &SessionKey) -> Option<Timestamp> {
        let slot = self.lookup(key).1?;
        Some(ts(self.hot[slot as usize].deadline))
    }

    /// Counters since the engine was made.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Heap bytes the engine holds for its sessions and timers, transcripts and out-of-line key strings
    /// excluded (those are measured by the benchmark's counting allocator).
    pub fn allocated_bytes(&self) -> usize {
        self.hot.capacity() * std::mem::size_of::<Hot>()
            + self.cold.capacity() * std::mem::size_of::<Cold>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.index.allocation_size()
            + self.timers.allocated_bytes()
    }

    /// Sets the clock to `at` unless it is already later; returns the clock.
    fn set_clock(&mut self, at: Timestamp) -> (i128, Timestamp) {
        let t = at.as_nanosecond();
        match self.now {
            Some(now) if now.0 >= t => now,
            Some(_) => {
                self.now = Some((t, at));
                (t, at)
            }
            None => {
                self.now = Some((t, at));
                // No session can be open before the first input, so resets up to now close nothing.
                self.next_reset = self.policy.daily_reset.as_ref().and_then(|r| r.next_after_nanos(t));
                (t, at)
            }
        }
    }

    /// When a session with idle deadline `deadline` closes by expiry: the deadline itself, or with a
    /// sweep interval the first sweep instant at or after it.
    fn due_of(&self, deadline: i128) -> i128 {
        match self.sweep {
            None => deadline,
            Some(s) => {
                let rem = deadline.rem_euclid(s);
                if rem == 0 { deadline } else { deadline - rem + s }
            }
        }
    }

    /// Performs every close due at or before `now`, in time order.
    #[inline]
    fn run_until(&mut self, now: i128, out: &mut Vec<AnyEvent>) {
        // The common case, checked here so that it costs no call: nothing is due.
        let timer_due = self.timers.peek().is_some_and(|top| top.due <= now);
        if timer_due || self.next_reset.is_some_and(|r| r <= now) {
            self.run_until_due(now, out);
        }
    }

    #[inline(never)]
    fn run_until_due(&mut self, now: i128, out: &mut Vec<AnyEvent>) {
        let reset = self.next_reset.filter(|&r| r <= now);
        // Idle closes strictly before a due daily reset happen first; at the reset instant every open
        // session closes at once, in opening order, whatever its own timer says.
        while let Some(top) = self.timers.peek() {
            let beyond = match reset {
                Some(r) => top.due >= r,
                None => top.due > now,
            };
            if beyond {
                break;
            }
            self.timers.pop();
            self.look_ahead();
            let Some(sess) = self.live(&top) else { continue };
            let due = self.due_of(sess.deadline);
            if due > top.due {
                // A message moved the deadline after this entry was queued.
                self.timers.push(Timer { due, ..top });
                continue;
            }
            self.close_slot(top.slot, Some(u64::from(top.hash)), CloseReason::IdleExpiry, top.due, ts(top.due), out);
        }
        let Some(r) = reset else { return };
        let r_ts = ts(r);
        for slot in self.open_slots_in_order() {
            let idle = self.hot[slot as usize].deadline <= r;
            let reason = if idle { CloseReason::IdleExpiry } else { CloseReason::ScheduledReset };
            self.close_slot(slot, None, reason, r, r_ts, out);
        }
        self.timers.clear();
        // Every session is closed now, so later resets up to `now` would close nothing: skip to the first
        // one after `now` (a reset exactly at `now` precedes any message routed at `now`).
        self.next_reset = self.policy.daily_reset.as_ref().and_then(|d| d.next_after_nanos(now));
    }

    /// Drops stale entries from the top of the timer queue and re-queues a live one whose deadline moved,
    /// so that the top is exact for [`next_deadline`](Self::next_deadline).
    #[inline]
    fn settle_top(&mut self) {
        // The common case, checked here so that it costs no call: the top is live and exact.
        let Some(top) = self.timers.peek() else { return };
        if self.live(&top).is_none_or(|s| self.due_of(s.deadline) != top.due) {
            self.settle_top_slow();
        }
    }

    #[inline(never)]
    fn settle_top_slow(&mut self) {
        while let Some(top) = self.timers.peek() {
            match self.live(&top).map(|s| s.deadline) {
                None => {
                    self.timers.pop();
                }
                Some(deadline) => {
                    let due = self.due_of(deadline);
                    if due == top.due {
                        return;
                    }
                    self.timers.pop();
                    self.timers.push(Timer { due, ..top });
                }
            }
        }
    }

    /// Sessions closed by messages leave their timer entry behind until it reaches the top; if such
    /// entries pile up (many resets within one idle timeout), drop them all at once, `O(n)` amortized
    /// over at least as many closes.
    fn shed_stale_timers(&mut self) {
        if self.timers.len() > 2 * self.index.len() + 1024 {
            let hot = &self.hot;
            self.timers.retain(|t| hot.get(t.slot as usize).is_some_and(|s| s.seq == t.seq));
        }
    }

    /// Every [`LOOK_AHEAD`]-th entry that falls due, reads the index groups and the hot records of the
    /// next `LOOK_AHEAD` entries of the deadline ring, all at once: their cache misses overlap, one
    /// memory latency for four, and the expiries that follow find what they touch in cache. Safe Rust
    /// has no prefetch instruction (`_mm_prefetch` needs `unsafe`, `core::hint::prefetch_read` is
    /// unstable), so these are plain reads, kept by folding them into `looked_ahead`; one read ahead at
    /// a time would gain nothing, as a load that misses holds the processor up like the expiry's own
    /// would. A read for an entry that turns out stale is wasted, nothing more.
    #[inline]
    fn look_ahead(&mut self) {
        self.ring_pops = self.ring_pops.wrapping_add(1);
        if self.ring_pops.is_multiple_of(LOOK_AHEAD as u32) {
            self.look_ahead_now();
        }
    }

    #[inline(never)]
    fn look_ahead_now(&mut self) {
        let mut read = 0;
        for next in self.timers.ring_ahead(LOOK_AHEAD) {
            read ^= self.index.touch(next.hash) ^ self.hot.get(next.slot as usize).map_or(0, |h| h.seq);
        }
        self.looked_ahead ^= read;
    }

    /// The session a timer entry belongs to, if it is still open.
    fn live(&self, timer: &Timer) -> Option<&Hot> {
        // A vacant slot has sequence number 0, which no timer carries.
        self.hot.get(timer.slot as usize).filter(|s| s.seq == timer.seq)
    }

    /// The hash of `key` and the slot of its open session, if any. The key is hashed and compared part
    /// by part, never packed.
    #[inline]
    fn lookup(&self, key: &SessionKey) -> (u64, Option<u32>) {
        let hash = hash_key(&self.hasher, key);
        let hot = &self.hot;
        (hash, self.index.find(hash, |s| hot[s as usize].key.matches(key)))
    }

    /// The slots of every open session, oldest first.
    fn open_slots_in_order(&self) -> Vec<u32> {
        let mut open: Vec<(u64, u32)> = self.index.iter().map(|s| (self.hot[s as usize].seq, s)).collect();
        open.sort_unstable();
        open.into_iter().map(|(_, s)| s).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        key: &SessionKey,
        hash: u64,
        user_id: &str,
        (t, started_at): (i128, Timestamp),
        cause: StartCause,
        previous: Option<SessionId>,
        out: &mut Vec<AnyEvent>,
    ) -> u32 {
        self.seq += 1;
        let seq = self.seq;
        let id = match self.ids {
            SessionIds::Sequential => SessionId::from_u128(u128::from(seq)),
            SessionIds::Random => SessionId::new_random(),
        };
        let user_id = CompactString::new(user_id);
        out.push(AnyEvent::SessionStart(SessionStart::new(
            id,
            key.clone(),
            user_id.clone(),
            started_at,
            cause,
            previous,
        )));
        let hot = Hot { deadline: t + self.idle, id, message_count: 0, seq, key: PackedKey::of(key) };
        let cold = Cold { user_id, started_at, transcript: VecDeque::new(), truncated: false };
        let slot = self.place(hash, hot, cold);
        self.stats.opened += 1;
        slot
    }

    /// Puts a session (whose packed key hashes to `hash`) in a free slot and indexes it; returns the
    /// slot.
    fn place(&mut self, hash: u64, hot: Hot, cold: Cold) -> u32 {
        debug_assert!(hot.seq != 0);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.hot[slot as usize] = hot;
                self.cold[slot as usize] = cold;
                slot
            }
            None => {
                self.hot.push(hot);
                self.cold.push(cold);
                u32::try_from(self.hot.len() - 1).expect("fewer than 2^32 open sessions")
            }
        };
        let (records, hasher) = (&self.hot, &self.hasher);
        self.index.insert(hash, slot, |s| records[s as usize].key.hash(hasher));
        slot
    }

    /// Closes the session in `slot` at `at` with `reason` and emits its `SessionEnd`. The only place a
    /// session leaves the open state. `hash` is its key's hash if the caller knows it (at least its low
    /// 32 bits: all the index needs to remove it); otherwise the key is hashed.
    fn close_slot(
        &mut self,
        slot: u32,
        hash: Option<u64>,
        reason: CloseReason,
        at: i128,
        ended_at: Timestamp,
        out: &mut Vec<AnyEvent>,
    ) -> Option<Closed> {
        let record = self.hot.get_mut(slot as usize).filter(|s| s.seq != 0)?;
        let Hot { id, message_count, key, .. } = std::mem::replace(record, Hot::VACANT);
        let key = key.unpack();
        self.index.remove(hash.unwrap_or_else(|| hash_key(&self.hasher, &key)), slot);
        let sess = std::mem::take(&mut self.cold[slot as usize]);
        self.free.push(slot);
        debug_assert_eq!(ended_at.as_nanosecond(), at);
        let truncated = sess.truncated || (self.policy.transcript_limit == 0 && message_count > 0);
        let entries: Vec<TranscriptEntry> = sess.transcript.into();
        out.push(AnyEvent::SessionEnd(SessionEnd::new(
            id,
            key,
            sess.user_id,
            reason,
            sess.started_at,
            ended_at,
            ended_at,
            message_count,
            Transcript::new(entries, truncated),
        )));
        self.stats.closed_by_reason[reason_index(reason)] += 1;
        Some(Closed { session_id: id, reason })
    }
}
