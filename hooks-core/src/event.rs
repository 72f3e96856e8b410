//! Typed event payloads, ids, session keys and [`CloseReason`].
//!
//! Every event is a plain struct with public fields and `#[non_exhaustive]`: handlers read every field,
//! nobody outside this crate writes a struct literal. The two session events, [`SessionStart`] and
//! [`SessionEnd`], have no public constructor at all: only the session lifecycle engine of this crate
//! creates them, which is how "exactly one `SessionEnd` per session" is kept by construction.
//!
//! ```compile_fail
//! # use hooks_core::prelude::*;
//! // A gateway cannot fake the end of a session: the struct is `#[non_exhaustive]`
//! // and has no public constructor.
//! let fake = SessionEnd { reason: CloseReason::UserNew, ..todo!() };
//! ```
//!
//! All times are [`jiff::Timestamp`]s: instants in UTC, serialized as RFC 3339.
//!
//! This module depends on nothing else in the crate.

use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `n` as a hyphenated lower-case UUID (8-4-4-4-12 hex digits), made sixteen bytes at a time with
/// vector operations (`wide::u8x16`: SSE2 on x86-64, NEON on aarch64, simd128 on wasm, scalar code
/// elsewhere): the high and the low nibble of every byte are split into two vectors, each nibble
/// becomes its digit (`'0' + n`, plus 39 above 9), the two vectors are interleaved into the 32 digits
/// in order, and five copies put them between the hyphens. Against the previous 512-byte pair table
/// (16 loads and 16 two-byte stores), a replay of the tiled corpora spends 106 fewer instructions per
/// record (callgrind, `dist` build; ~1.6 ids are written per record). Two tries at computing the
/// digits eight at a time in a `u64` with shifts and masks cost more than the table did (the first
/// about twice its instructions, the second +15 per record of a replay).
fn hyphenated(n: u128) -> [u8; 36] {
    use wide::bytemuck::cast;
    use wide::{u8x16, u16x8};
    let bytes = u8x16::from(n.to_be_bytes());
    let nibble = u8x16::splat(0x0f);
    // A 16-bit shift moves each byte's high nibble down; the mask drops what crossed from its neighbour.
    let high = cast::<u16x8, u8x16>(cast::<u8x16, u16x8>(bytes) >> 4) & nibble;
    let low = bytes & nibble;
    let digit = |v: u8x16| v + u8x16::splat(b'0') + (v.simd_gt(u8x16::splat(9)) & u8x16::splat(b'a' - b'0' - 10));
    let (high, low) = (digit(high), digit(low));
    // Byte i's two digits are `high[i]`, `low[i]`: interleaved, the digits of bytes 0-7, then 8-15.
    let first = u8x16::unpack_low(high, low).to_array();
    let second = u8x16::unpack_high(high, low).to_array();
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&first[..8]);
    out[9..13].copy_from_slice(&first[8..12]);
    out[14..18].copy_from_slice(&first[12..]);
    out[19..23].copy_from_slice(&second[..4]);
    out[24..].copy_from_slice(&second[4..]);
    out
}

/// The parts `SessionId` and `EventId` share: a UUID newtype with random (v7) and counter-made ids,
/// shown and serialized in the hyphenated form.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered random id (UUID v7), for live traffic.
            pub fn new_random() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id whose 128 bits are `n`; replay numbers ids `1, 2, 3, …` so its output is
            /// reproducible.
            pub const fn from_u128(n: u128) -> Self {
                Self(Uuid::from_u128(n))
            }

            /// The id as a UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// The id's 128 bits.
            pub const fn as_u128(&self) -> u128 {
                self.0.as_u128()
            }

            /// The hyphenated lower-case form (36 ASCII bytes), written without allocating or going
            /// through `fmt`: for hot paths that serialize many ids.
            pub fn hyphenated_bytes(&self) -> [u8; 36] {
                hyphenated(self.0.as_u128())
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }
    };
}

uuid_id! {
    /// The unique id of one session: a UUID.
    ///
    /// Ids made for live traffic are random (UUID v7, time ordered); replay makes them from a counter so
    /// that the same input gives the same output. Shown and serialized in the hyphenated UUID form.
    SessionId
}

uuid_id! {
    /// The stable id of one event: handlers use it to be idempotent.
    ///
    /// Emission is exactly once; delivery is at least once (a crash after commit and before delivery
    /// delivers again on restart), and a re-delivered event carries the same `EventId`. The id of a
    /// session's start and end events is derived from the session id ([`EventId::for_session`]), so it
    /// is the same whichever process computes it.
    EventId
}

impl EventId {
    /// The id of the event of kind `kind` that belongs to `session` (its start or its end).
    ///
    /// Deterministic: the same session and kind always give the same id, and different kinds of the
    /// same session give different ids. The bits are the session id mixed with the kind's tag by a
    /// bijective 128-bit mix, so two sessions never share an event id for one kind.
    pub const fn for_session(session: SessionId, kind: SessionEventKind) -> Self {
        let tag: u128 = match kind {
            SessionEventKind::Start => 0x5354_4152_5400_0000_0000_0000_0000_0001,
            SessionEventKind::End => 0x454e_4400_0000_0000_0000_0000_0000_0002,
        };
        // Multiplication by an odd constant and xor-shift are both invertible modulo 2^128, so the
        // map session -> id is a bijection for each kind.
        let mut x = session.as_u128() ^ tag;
        x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        x ^= x >> 64;
        Self(Uuid::from_u128(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_the_id_type() {
        assert_eq!(format!("{:?}", SessionId::from_u128(1)), "SessionId(00000000-0000-0000-0000-000000000001)");
        assert_eq!(format!("{:?}", EventId::from_u128(2)), "EventId(00000000-0000-0000-0000-000000000002)");
    }

    proptest::proptest! {
        #[test]
        fn hyphenated_bytes_of_any_id_match_the_uuid_display(n: u128) {
            let id = SessionId::from_u128(n);
            let bytes = id.hyphenated_bytes();
            proptest::prop_assert_eq!(std::str::from_utf8(&bytes).unwrap(), id.to_string());
        }
    }

    #[test]
    fn hyphenated_bytes_match_the_uuid_display() {
        for n in [0u128, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            let id = SessionId::from_u128(n);
            assert_eq!(std::str::from_utf8(&id.hyphenated_bytes()).unwrap(), id.to_string());
            let ev = EventId::from_u128(n);
            assert_eq!(std::str::from_utf8(&ev.hyphenated_bytes()).unwrap(), ev.to_string());
        }
    }
}

/// Which of a session's two events an [`EventId::for_session`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionEventKind {
    /// The session's [`SessionStart`].
    Start,
    /// The session's [`SessionEnd`].
    End,
}

/// What identifies a conversation: at most one session per key is open at any instant.
///
/// A key is a platform (`"telegram"`, `"slack"`, `"replay"`, …), a chat id, an optional thread id and
/// an optional user id. Which parts are filled is the gateway's *session scope*: scope `chat` keys by
/// (platform, chat id), scope `user` by (platform, chat id, user id). Ids are strings; platforms with
/// integer ids (Telegram) write them in decimal.
///
/// Short ids (up to 24 bytes) are stored inline, without a heap allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    platform: CompactString,
    chat_id: CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread_id: Option<CompactString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<CompactString>,
}

impl SessionKey {
    /// The key of a whole chat on `platform` (session scope `chat`).
    pub fn chat(platform: impl AsRef<str>, chat_id: impl AsRef<str>) -> Self {
        Self {
            platform: CompactString::new(platform),
            chat_id: CompactString::new(chat_id),
            thread_id: None,
            user_id: None,
        }
    }

    /// The key of one user in a chat on `platform` (session scope `user`).
    pub fn user(platform: impl AsRef<str>, chat_id: impl AsRef<str>, user_id: impl AsRef<str>) -> Self {
        Self::chat(platform, chat_id).with_user(user_id)
    }

    /// This key narrowed to one thread of the chat.
    #[must_use]
    pub fn with_thread(mut self, thread_id: impl AsRef<str>) -> Self {
        self.thread_id = Some(CompactString::new(thread_id));
        self
    }

    /// This key narrowed to one user of the chat.
    #[must_use]
    pub fn with_user(mut self, user_id: impl AsRef<str>) -> Self {
        self.user_id = Some(CompactString::new(user_id));
        self
    }

    /// The platform, e.g. `"telegram"`.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// The chat id on the platform.
    pub fn chat_id(&self) -> &str {
        &self.chat_id
    }

    /// The thread id, when the key is narrowed to a thread.
    pub fn thread_id(&self) -> Option<&str> {
        self.thread_id.as_deref()
    }

    /// The user id, when the key is narrowed to a user (session scope `user`).
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({self})")
    }
}

/// `platform:chat[#thread][@user]`, for logs.
impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform, self.chat_id)?;
        if let Some(thread) = &self.thread_id {
            write!(f, "#{thread}")?;
        }
        if let Some(user) = &self.user_id {
            write!(f, "@{user}")?;
        }
        Ok(())
    }
}

/// Why a session ended. Every [`SessionEnd`] carries exactly one; there is no default and no catch-all.
///
/// Serialized in snake_case (`"idle_expiry"`), the same names the CLI, the metrics and the events file
/// use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The user sent `/new`.
    UserNew,
    /// The user sent `/reset`.
    UserReset,
    /// No message arrived for the idle timeout: the session closed at its idle deadline (or, with a
    /// sweep interval, at the first sweep instant at or after it).
    IdleExpiry,
    /// The daily reset time passed while the session was open and not yet idle.
    ScheduledReset,
    /// A message arrived for a session already past its idle deadline before any timer closed it
    /// (possible only with a sweep interval); the message opens the successor.
    AutoReset,
    /// The gateway shut down (or a replay reached the end of its input) with the session open.
    Shutdown,
}

impl CloseReason {
    /// Every reason, in declaration order (for metrics and summaries).
    pub const ALL: [CloseReason; 6] = [
        CloseReason::UserNew,
        CloseReason::UserReset,
        CloseReason::IdleExpiry,
        CloseReason::ScheduledReset,
        CloseReason::AutoReset,
        CloseReason::Shutdown,
    ];

    /// The wire name, e.g. `"idle_expiry"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::UserNew => "user_new",
            CloseReason::UserReset => "user_reset",
            CloseReason::IdleExpiry => "idle_expiry",
            CloseReason::ScheduledReset => "scheduled_reset",
            CloseReason::AutoReset => "auto_reset",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What opened a session. Serialized in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartCause {
    /// A message arrived for a key with no open session.
    Message,
    /// A reset command (`/new`, `/reset`) closed the previous session and opened this one.
    Command,
    /// A message found its session past its idle deadline: that session closed with
    /// [`CloseReason::AutoReset`] and this one opened.
    AutoReset,
}

impl StartCause {
    /// The wire name, e.g. `"auto_reset"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StartCause::Message => "message",
            StartCause::Command => "command",
            StartCause::AutoReset => "auto_reset",
        }
    }
}

impl fmt::Display for StartCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a session's transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    /// When the message arrived (UTC).
    pub at: Timestamp,
    /// Who sent it.
    pub user_id: CompactString,
    /// What it said.
    pub text: String,
}

/// The messages of a closed session, oldest first, shared without copying.
///
/// The lifecycle keeps at most the configured number of most recent messages per session (see the
/// lifecycle's policy); [`Transcript::truncated`] says whether older ones were dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    entries: Arc<[TranscriptEntry]>,
    truncated: bool,
}

impl Transcript {
    /// A transcript of `entries` (oldest first); `truncated` says older messages were dropped.
    pub fn new(entries: impl Into<Arc<[TranscriptEntry]>>, truncated: bool) -> Self {
        Self { entries: entries.into(), truncated }
    }

    /// The messages, oldest first.
    pub fn entries(&self) -> &[TranscriptEntry] {
        &self.entries
    }

    /// Whether messages older than the first entry were dropped by the transcript limit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The number of messages kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message was kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The gateway started: emitted once, before any session event of this process.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct GatewayStartup {
    /// This event's id.
    pub event_id: EventId,
    /// When the gateway started (UTC).
    pub at: Timestamp,
    /// The number of hooks linked into the binary, over all events.
    pub hooks: usize,
}

impl GatewayStartup {
    /// The startup event at `at`, with `hooks` linked hooks.
    pub fn new(at: Timestamp, hooks: usize) -> Self {
        Self { event_id: EventId::new_random(), at, hooks }
    }
}

/// The gateway is stopping: emitted once, after every open session has ended with
/// [`CloseReason::Shutdown`] and those `SessionEnd`s were handed to the dispatcher.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct GatewayShutdown {
    /// This event's id.
    pub event_id: EventId,
    /// When shutdown began (UTC).
    pub at: Timestamp,
    /// How many sessions the shutdown closed.
    pub sessions_closed: u64,
}

impl GatewayShutdown {
    /// The shutdown event at `at`, after closing `sessions_closed` sessions.
    pub fn new(at: Timestamp, sessions_closed: u64) -> Self {
        Self { event_id: EventId::new_random(), at, sessions_closed }
    }
}

/// A session opened. Fires exactly once per session, before any other event of that session, and after
/// the `SessionEnd` of the session it succeeds.
///
/// Only the lifecycle engine of this crate creates it.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SessionStart {
    /// This event's id: [`EventId::for_session`]`(session_id, Start)`.
    pub event_id: EventId,
    /// The new session.
    pub session_id: SessionId,
    /// The conversation it belongs to.
    pub key: SessionKey,
    /// The sender of the message that opened it (the key's user in session scope `user`).
    pub user_id: CompactString,
    /// When it opened (UTC).
    pub started_at: Timestamp,
    /// What opened it.
    pub cause: StartCause,
    /// The session that the same message or command closed just before, if any.
    pub previous_session_id: Option<SessionId>,
}

impl SessionStart {
    /// Only the lifecycle engine opens sessions.
    pub(crate) fn new(
        session_id: SessionId,
        key: SessionKey,
        user_id: CompactString,
        started_at: Timestamp,
        cause: StartCause,
        previous_session_id: Option<SessionId>,
    ) -> Self {
        Self {
            event_id: EventId::for_session(session_id, SessionEventKind::Start),
            session_id,
            key,
            user_id,
            started_at,
            cause,
            previous_session_id,
        }
    }
}

/// A session ended. Fires exactly once per session, on every close path, with the reason.
///
/// Delivered to every handler before the `SessionStart` of the key's next session. Only the lifecycle
/// engine of this crate creates it: a gateway cannot end a session without going through the engine,
/// and the engine cannot end one twice.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SessionEnd {
    /// This event's id: [`EventId::for_session`]`(session_id, End)`.
    pub event_id: EventId,
    /// The session that ended.
    pub session_id: SessionId,
    /// The conversation it belonged to.
    pub key: SessionKey,
    /// The sender of the message that opened it (the key's user in session scope `user`).
    pub user_id: CompactString,
    /// Why it ended.
    pub reason: CloseReason,
    /// When it opened (UTC).
    pub started_at: Timestamp,
    /// When it ended (UTC): its due time for timer closes (idle deadline, sweep instant, daily reset
    /// instant), the message's time for command and auto-reset closes, the shutdown time for shutdown.
    pub ended_at: Timestamp,
    /// When the gateway noticed the end (UTC). Equal to `ended_at` unless the session fell due while the
    /// gateway was down and was closed on the next start ("never early, possibly late, never lost").
    pub detected_at: Timestamp,
    /// The number of messages routed to the session.
    pub message_count: u64,
    /// The session's messages (bounded by the lifecycle's transcript limit).
    #[serde(skip)]
    pub transcript: Transcript,
}

impl SessionEnd {
    /// Only the lifecycle engine closes sessions.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        session_id: SessionId,
        key: SessionKey,
        user_id: CompactString,
        reason: CloseReason,
        started_at: Timestamp,
        ended_at: Timestamp,
        detected_at: Timestamp,
        message_count: u64,
        transcript: Transcript,
    ) -> Self {
        Self {
            event_id: EventId::for_session(session_id, SessionEventKind::End),
            session_id,
            key,
            user_id,
            reason,
            started_at,
            ended_at,
            detected_at,
            message_count,
            transcript,
        }
    }

    /// Whether the end was noticed after it was due (the gateway was down at `ended_at`).
    pub fn detected_late(&self) -> bool {
        self.detected_at > self.ended_at
    }

    /// How long the session lasted, from `started_at` to `ended_at`.
    pub fn duration(&self) -> jiff::SignedDuration {
        self.ended_at.duration_since(self.started_at)
    }
}

/// A message was routed to a session (after any `SessionStart` it caused).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct MessageReceived {
    /// This event's id.
    pub event_id: EventId,
    /// The session the message counts toward.
    pub session_id: SessionId,
    /// The conversation.
    pub key: SessionKey,
    /// The sender.
    pub user_id: CompactString,
    /// When it arrived (UTC).
    pub at: Timestamp,
    /// Its text (empty for media without a caption).
    pub text: String,
}

impl MessageReceived {
    /// A message event; `event_id` should be stable for the same message (derive it from the
    /// platform's message id where there is one).
    pub fn new(
        event_id: EventId,
        session_id: SessionId,
        key: SessionKey,
        user_id: impl AsRef<str>,
        at: Timestamp,
        text: impl Into<String>,
    ) -> Self {
        Self { event_id, session_id, key, user_id: CompactString::new(user_id), at, text: text.into() }
    }
}

/// A command (a text starting with `/`) is about to run. A *decision* event: its handlers may allow it,
/// deny it with a message for the user, or rewrite it; see [`CommandDecision`] for how their answers
/// combine.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Command {
    /// This event's id.
    pub event_id: EventId,
    /// The key's open session, if any.
    pub session_id: Option<SessionId>,
    /// The conversation.
    pub key: SessionKey,
    /// The sender.
    pub user_id: CompactString,
    /// When it arrived (UTC).
    pub at: Timestamp,
    /// The whole command text as it will run, e.g. `"/new@MyBot hello"`. A rewrite replaces it.
    pub text: String,
}

impl Command {
    /// A command event for `text`.
    pub fn new(
        event_id: EventId,
        session_id: Option<SessionId>,
        key: SessionKey,
        user_id: impl AsRef<str>,
        at: Timestamp,
        text: impl Into<String>,
    ) -> Self {
        Self { event_id, session_id, key, user_id: CompactString::new(user_id), at, text: text.into() }
    }

    /// The command's name without the slash and without a `@BotName` suffix: `"new"` for
    /// `"/new@MyBot hi"`. Empty if the text is not a command.
    pub fn name(&self) -> &str {
        let t = self.text.trim_start();
        let Some(rest) = t.strip_prefix('/') else { return "" };
        let end = rest.find(|c: char| c.is_whitespace() || c == '@').unwrap_or(rest.len());
        &rest[..end]
    }

    /// What follows the command's name (and bot suffix), trimmed: `"hi"` for `"/new@MyBot hi"`.
    pub fn args(&self) -> &str {
        let t = self.text.trim_start();
        match t.find(char::is_whitespace) {
            Some(i) => t[i..].trim(),
            None => "",
        }
    }
}

/// A handler's answer to a [`Command`].
///
/// Combination rule, applied by the dispatcher over the handlers in their registry order:
/// - `Allow` lets the next handler decide;
/// - `Rewrite` replaces the command's text; later handlers see the rewritten command, and the gateway
///   runs the text left after the last rewrite;
/// - the first `Deny` wins: the remaining handlers are not asked, and the user sees its message;
/// - a handler that fails (error, panic, timeout) is reported and counts as `Allow`, so a broken plugin
///   cannot lock users out (a policy hook that must fail closed returns `Deny` on its own errors).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum CommandDecision {
    /// Let the command run (as rewritten so far).
    #[default]
    Allow,
    /// Refuse it; `message` is shown to the user.
    Deny {
        /// What the user is told.
        message: String,
    },
    /// Run `text` instead.
    Rewrite {
        /// The replacement command text.
        text: String,
    },
}

/// The agent is about to produce a reply for a message of a session.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct AgentTurnStart {
    /// This event's id.
    pub event_id: EventId,
    /// The session.
    pub session_id: SessionId,
    /// The conversation.
    pub key: SessionKey,
    /// When the turn began (UTC).
    pub at: Timestamp,
    /// The user's text the agent answers.
    pub input: String,
}

impl AgentTurnStart {
    /// A turn-start event.
    pub fn new(
        event_id: EventId,
        session_id: SessionId,
        key: SessionKey,
        at: Timestamp,
        input: impl Into<String>,
    ) -> Self {
        Self { event_id, session_id, key, at, input: input.into() }
    }
}

/// The agent finished a turn (with a reply or an error).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct AgentTurnEnd {
    /// This event's id.
    pub event_id: EventId,
    /// The session.
    pub session_id: SessionId,
    /// The conversation.
    pub key: SessionKey,
    /// When the turn began (UTC).
    pub started_at: Timestamp,
    /// When it ended (UTC).
    pub at: Timestamp,
    /// The reply sent to the user, or the error that stopped the agent.
    pub outcome: TurnOutcome,
}

impl AgentTurnEnd {
    /// A turn-end event.
    pub fn new(
        event_id: EventId,
        session_id: SessionId,
        key: SessionKey,
        started_at: Timestamp,
        at: Timestamp,
        outcome: TurnOutcome,
    ) -> Self {
        Self { event_id, session_id, key, started_at, at, outcome }
    }
}

/// How an agent turn ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TurnOutcome {
    /// The agent replied with `text`.
    Reply {
        /// The reply.
        text: String,
    },
    /// The agent failed; `error` says why.
    Error {
        /// The error, for logs.
        error: String,
    },
}

/// Any event of the catalogue: what per-key delivery queues and the outbox carry.
///
/// Serialized with an `"event"` tag holding the event's name, e.g.
/// `{"event":"session_end","event_id":…,…}`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum AnyEvent {
    /// See [`GatewayStartup`].
    GatewayStartup(GatewayStartup),
    /// See [`GatewayShutdown`].
    GatewayShutdown(GatewayShutdown),
    /// See [`SessionStart`].
    SessionStart(SessionStart),
    /// See [`SessionEnd`].
    SessionEnd(SessionEnd),
    /// See [`MessageReceived`].
    MessageReceived(MessageReceived),
    /// See [`Command`].
    Command(Command),
    /// See [`AgentTurnStart`].
    AgentTurnStart(AgentTurnStart),
    /// See [`AgentTurnEnd`].
    AgentTurnEnd(AgentTurnEnd),
}

macro_rules! any_event_from {
    ($($ty:ident),*) => {$(
        impl From<$ty> for AnyEvent {
            fn from(ev: $ty) -> Self {
                AnyEvent::$ty(ev)
            }
        }
    )*};
}
any_event_from!(
    GatewayStartup,
    GatewayShutdown,
    SessionStart,
    SessionEnd,
    MessageReceived,
    Command,
    AgentTurnStart,
    AgentTurnEnd
);

impl AnyEvent {
    /// The event's name, e.g. `"session_end"`.
    pub fn name(&self) -> &'static str {
        match self {
            AnyEvent::GatewayStartup(_) => "gateway_startup",
            AnyEvent::GatewayShutdown(_) => "gateway_shutdown",
            AnyEvent::SessionStart(_) => "session_start",
            AnyEvent::SessionEnd(_) => "session_end",
            AnyEvent::MessageReceived(_) => "message_received",
            AnyEvent::Command(_) => "command",
            AnyEvent::AgentTurnStart(_) => "agent_turn_start",
            AnyEvent::AgentTurnEnd(_) => "agent_turn_end",
        }
    }

    /// The event's id.
    pub fn event_id(&self) -> EventId {
        match self {
            AnyEvent::GatewayStartup(e) => e.event_id,
            AnyEvent::GatewayShutdown(e) => e.event_id,
            AnyEvent::SessionStart(e) => e.event_id,
            AnyEvent::SessionEnd(e) => e.event_id,
            AnyEvent::MessageReceived(e) => e.event_id,
            AnyEvent::Command(e) => e.event_id,
            AnyEvent::AgentTurnStart(e) => e.event_id,
            AnyEvent::AgentTurnEnd(e) => e.event_id,
        }
    }

    /// The session key the event belongs to, if any (gateway events have none).
    pub fn key(&self) -> Option<&SessionKey> {
        match self {
            AnyEvent::GatewayStartup(_) | AnyEvent::GatewayShutdown(_) => None,
            AnyEvent::SessionStart(e) => Some(&e.key),
            AnyEvent::SessionEnd(e) => Some(&e.key),
            AnyEvent::MessageReceived(e) => Some(&e.key),
            AnyEvent::Command(e) => Some(&e.key),
            AnyEvent::AgentTurnStart(e) => Some(&e.key),
            AnyEvent::AgentTurnEnd(e) => Some(&e.key),
        }
    }
}
