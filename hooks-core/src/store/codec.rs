//! How a durable store writes events to its outbox and reads them back.
//!
//! The outbox form is MessagePack with named fields (`rmp-serde`): self-describing like JSON, but a
//! string is its length and its bytes, so the texts that dominate the payloads (messages, transcripts)
//! are copied, not scanned and escaped; encoding JSON was a fifth of the SQLite writer's work. Ids are
//! 16-byte binaries, times integers (nanoseconds since the Unix epoch, UTC), transcript entries
//! `[at, user_id, text]`. Schema version 2 wrote times as RFC 3339 text and transcript entries as maps,
//! and version 1 wrote JSON text ([`decode_json`]); both are still read.
//!
//! The public event types serialize for handlers and logs but deliberately do not deserialize: a
//! `SessionEnd` read from arbitrary JSON would be a way around "only the engine ends sessions". The
//! outbox needs the full event back (the transcript included, which the public form skips), so it uses
//! this private mirror, readable only inside the crate.

use std::borrow::Cow;

use compact_str::CompactString;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{
    AgentTurnEnd, AgentTurnStart, AnyEvent, CloseReason, Command, EventId, GatewayShutdown, GatewayStartup,
    MessageReceived, SessionEnd, SessionId, SessionKey, SessionStart, StartCause, Transcript, TranscriptEntry,
    TurnOutcome,
};
use crate::store::RoutedMessage;

#[derive(Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum StoredOutcome<S = String> {
    Reply { text: S },
    Error { error: S },
}

/// The outbox form. Generic over how the strings, key, transcript and outcome are held, so that
/// encoding borrows them from the event (`Stored<&SessionKey, ...>`) instead of cloning it, while
/// decoding owns them (the defaults).
#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Stored<K = SessionKey, U = CompactString, S = String, T = StoredTranscript, O = StoredOutcome> {
    GatewayStartup {
        event_id: EventId,
        #[serde(with = "nanos_or_text")]
        at: Timestamp,
        hooks: usize,
    },
    GatewayShutdown {
        event_id: EventId,
        #[serde(with = "nanos_or_text")]
        at: Timestamp,
        sessions_closed: u64,
    },
    SessionStart {
        session_id: SessionId,
        key: K,
        user_id: U,
        #[serde(with = "nanos_or_text")]
        started_at: Timestamp,
        cause: StartCause,
        previous_session_id: Option<SessionId>,
    },
    SessionEnd {
        session_id: SessionId,
        key: K,
        user_id: U,
        reason: CloseReason,
        #[serde(with = "nanos_or_text")]
        started_at: Timestamp,
        #[serde(with = "nanos_or_text")]
        ended_at: Timestamp,
        #[serde(with = "nanos_or_text")]
        detected_at: Timestamp,
        message_count: u64,
        transcript: T,
    },
    MessageReceived {
        event_id: EventId,
        session_id: SessionId,
        key: K,
        user_id: U,
        #[serde(with = "nanos_or_text")]
        at: Timestamp,
        text: S,
    },
    Command {
        event_id: EventId,
        session_id: Option<SessionId>,
        key: K,
        user_id: U,
        #[serde(with = "nanos_or_text")]
        at: Timestamp,
        text: S,
    },
    AgentTurnStart {
        event_id: EventId,
        session_id: SessionId,
        key: K,
        #[serde(with = "nanos_or_text")]
        at: Timestamp,
        input: S,
    },
    AgentTurnEnd {
        event_id: EventId,
        session_id: SessionId,
        key: K,
        #[serde(with = "nanos_or_text")]
        started_at: Timestamp,
        #[serde(with = "nanos_or_text")]
        at: Timestamp,
        outcome: O,
    },
}

/// Timestamps in the outbox: nanoseconds since the Unix epoch (UTC) as an integer in MessagePack,
/// where formatting RFC 3339 text cost a fifth of encoding a payload (schema version 2 wrote text,
/// which is still read); RFC 3339 text in human-readable formats (the JSON rows of version 1).
mod nanos_or_text {
    use jiff::Timestamp;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(t) } else { s.serialize_i64(super::nanos(*t)) }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        d.deserialize_any(NanosOrText)
    }

    struct NanosOrText;

    impl Visitor<'_> for NanosOrText {
        type Value = Timestamp;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("nanoseconds since the Unix epoch or an RFC 3339 timestamp")
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Timestamp, E> {
            Timestamp::from_nanosecond(i128::from(n)).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Timestamp, E> {
            Timestamp::from_nanosecond(i128::from(n)).map_err(E::custom)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
            text.parse().map_err(E::custom)
        }
    }
}

/// A transcript as the outbox stores it (borrowed, for encoding): `{entries, truncated}` with each
/// entry `[at, user_id, text]`, `at` as [`nanos_or_text`] writes it.
struct TranscriptRef<'a>(&'a Transcript);

impl Serialize for TranscriptRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Entries<'a>(&'a [TranscriptEntry]);
        impl Serialize for Entries<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(EntryRef))
            }
        }
        let mut out = s.serialize_struct("Transcript", 2)?;
        out.serialize_field("entries", &Entries(self.0.entries()))?;
        out.serialize_field("truncated", &self.0.truncated())?;
        out.end()
    }
}

struct EntryRef<'a>(&'a TranscriptEntry);

impl Serialize for EntryRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeStruct, SerializeTuple};
        struct At(Timestamp);
        impl Serialize for At {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                nanos_or_text::serialize(&self.0, s)
            }
        }
        if s.is_human_readable() {
            // The named form schema version 1 wrote as JSON.
            let mut out = s.serialize_struct("TranscriptEntry", 3)?;
            out.serialize_field("at", &At(self.0.at))?;
            out.serialize_field("user_id", &self.0.user_id)?;
            out.serialize_field("text", &self.0.text)?;
            return out.end();
        }
        let mut out = s.serialize_tuple(3)?;
        out.serialize_element(&At(self.0.at))?;
        out.serialize_element(&self.0.user_id)?;
        out.serialize_element(&self.0.text)?;
        out.end()
    }
}

/// A transcript read back from the outbox (see [`TranscriptRef`]).
#[derive(Deserialize)]
struct StoredTranscript {
    entries: Vec<StoredEntry>,
    truncated: bool,
}

/// A transcript entry read back: `[at, user_id, text]`, or `{at, user_id, text}` with `at` as text
/// (schema versions 1 and 2).
struct StoredEntry(TranscriptEntry);

impl<'de> Deserialize<'de> for StoredEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Positional(#[serde(with = "nanos_or_text")] Timestamp, CompactString, String);
        #[derive(Deserialize)]
        struct Named {
            #[serde(with = "nanos_or_text")]
            at: Timestamp,
            user_id: CompactString,
            text: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Positional(Positional),
            Named(Named),
        }
        Ok(StoredEntry(match Either::deserialize(d)? {
            Either::Positional(Positional(at, user_id, text)) => TranscriptEntry { at, user_id, text },
            Either::Named(Named { at, user_id, text }) => TranscriptEntry { at, user_id, text },
        }))
    }
}

/// The borrowed outbox form, for encoding.
type StoredRef<'a> = Stored<&'a SessionKey, &'a CompactString, &'a str, TranscriptRef<'a>, StoredOutcome<&'a str>>;

/// The outbox form of `event` (MessagePack).
pub(crate) fn encode(event: &AnyEvent) -> Vec<u8> {
    to_bytes(&stored_ref(event))
}

/// The outbox form of `event`, borrowing from it.
fn stored_ref(event: &AnyEvent) -> StoredRef<'_> {
    match event {
        AnyEvent::GatewayStartup(e) => Stored::GatewayStartup { event_id: e.event_id, at: e.at, hooks: e.hooks },
        AnyEvent::GatewayShutdown(e) => {
            Stored::GatewayShutdown { event_id: e.event_id, at: e.at, sessions_closed: e.sessions_closed }
        }
        AnyEvent::SessionStart(e) => start_ref(e),
        AnyEvent::SessionEnd(e) => end_ref(e),
        AnyEvent::MessageReceived(e) => Stored::MessageReceived {
            event_id: e.event_id,
            session_id: e.session_id,
            key: &e.key,
            user_id: &e.user_id,
            at: e.at,
            text: &e.text,
        },
        AnyEvent::Command(e) => Stored::Command {
            event_id: e.event_id,
            session_id: e.session_id,
            key: &e.key,
            user_id: &e.user_id,
            at: e.at,
            text: &e.text,
        },
        AnyEvent::AgentTurnStart(e) => Stored::AgentTurnStart {
            event_id: e.event_id,
            session_id: e.session_id,
            key: &e.key,
            at: e.at,
            input: &e.input,
        },
        AnyEvent::AgentTurnEnd(e) => Stored::AgentTurnEnd {
            event_id: e.event_id,
            session_id: e.session_id,
            key: &e.key,
            started_at: e.started_at,
            at: e.at,
            outcome: match &e.outcome {
                TurnOutcome::Reply { text } => StoredOutcome::Reply { text },
                TurnOutcome::Error { error } => StoredOutcome::Error { error },
            },
        },
    }
}

/// The outbox form of a `SessionStart` (session event ids are derived from the session id, so they
/// are not stored).
pub(crate) fn encode_start(e: &SessionStart) -> Vec<u8> {
    to_bytes(&start_ref(e))
}

fn start_ref(e: &SessionStart) -> StoredRef<'_> {
    StoredRef::SessionStart {
        session_id: e.session_id,
        key: &e.key,
        user_id: &e.user_id,
        started_at: e.started_at,
        cause: e.cause,
        previous_session_id: e.previous_session_id,
    }
}

/// The outbox form of a `SessionEnd`, transcript included.
pub(crate) fn encode_end(e: &SessionEnd) -> Vec<u8> {
    to_bytes(&end_ref(e))
}

fn end_ref(e: &SessionEnd) -> StoredRef<'_> {
    StoredRef::SessionEnd {
        session_id: e.session_id,
        key: &e.key,
        user_id: &e.user_id,
        reason: e.reason,
        started_at: e.started_at,
        ended_at: e.ended_at,
        detected_at: e.detected_at,
        message_count: e.message_count,
        transcript: TranscriptRef(&e.transcript),
    }
}

fn to_bytes(stored: &StoredRef<'_>) -> Vec<u8> {
    // Sized for a typical event up front: growing the buffer field by field cost more than encoding.
    let mut bytes = Vec::with_capacity(512);
    write_stored(&mut bytes, stored);
    bytes
}

fn write_stored(bytes: &mut Vec<u8>, stored: &StoredRef<'_>) {
    // Every field is a string, number, timestamp or enum: serialization cannot fail.
    rmp_serde::encode::write_named(bytes, stored).expect("outbox events serialize");
}

/// Outbox payloads encoded one after another into one buffer that is itself a [`pack`] of all of
/// them: written as the packed row of a job that records every one, it needs no further copy.
#[derive(Default)]
pub(crate) struct PackWriter {
    bytes: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
}

impl PackWriter {
    /// An empty pack with room for about `bytes` bytes in `payloads` payloads.
    pub(crate) fn with_capacity(bytes: usize, payloads: usize) -> Self {
        let mut out = Self { bytes: Vec::with_capacity(bytes.max(16)), spans: Vec::with_capacity(payloads) };
        // A fixed-size array header (0xdd and a 32-bit count), filled in by `finish`.
        out.bytes.extend_from_slice(&[0xdd, 0, 0, 0, 0]);
        out
    }

    /// Appends the outbox form of `event`.
    pub(crate) fn event(&mut self, event: &AnyEvent) {
        self.payload(|bytes| write_stored(bytes, &stored_ref(event)));
    }

    /// Appends the outbox form of a `SessionStart`.
    pub(crate) fn start(&mut self, e: &SessionStart) {
        self.payload(|bytes| write_stored(bytes, &start_ref(e)));
    }

    /// Appends the outbox form of a `SessionEnd`.
    pub(crate) fn end(&mut self, e: &SessionEnd) {
        self.payload(|bytes| write_stored(bytes, &end_ref(e)));
    }

    fn payload(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        // A fixed-size binary header (0xc6 and a 32-bit length), filled in once the length is known.
        let header = self.bytes.len();
        self.bytes.extend_from_slice(&[0xc6, 0, 0, 0, 0]);
        write(&mut self.bytes);
        let len = self.bytes.len() - header - 5;
        self.bytes[header + 1..header + 5].copy_from_slice(&(len as u32).to_be_bytes());
        self.spans.push(header + 5..self.bytes.len());
    }

    /// How many payloads so far.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// The buffer (a pack of every payload) and each payload's byte range in it.
    pub(crate) fn finish(mut self) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
        let n = self.spans.len() as u32;
        self.bytes[1..5].copy_from_slice(&n.to_be_bytes());
        (self.bytes, self.spans)
    }
}

/// Why an outbox payload could not be read.
pub(crate) type DecodeError = Box<dyn std::error::Error + Send + Sync>;

/// The event whose outbox form is `bytes` (MessagePack, as [`encode`] writes it).
pub(crate) fn decode(bytes: &[u8]) -> Result<AnyEvent, DecodeError> {
    Ok(from_stored(rmp_serde::from_slice::<Stored>(bytes)?))
}

/// The event whose outbox form is `json` (schema version 1 wrote JSON text).
pub(crate) fn decode_json(json: &str) -> Result<AnyEvent, DecodeError> {
    Ok(from_stored(serde_json::from_str::<Stored>(json)?))
}

/// A JSON outbox form, as schema version 1 wrote it (for migration tests).
#[cfg(test)]
pub(crate) fn encode_json(event: &AnyEvent) -> String {
    serde_json::to_string(&stored_ref(event)).expect("outbox events serialize")
}

/// Several outbox payloads in one: a MessagePack array of binaries, each one event's payload, in
/// order. A group-commit job that records many events writes them as one outbox row (see the SQLite
/// store's packed rows); [`PackWriter`] builds the same form while encoding.
pub(crate) fn pack(payloads: &[Cow<'_, [u8]>]) -> Vec<u8> {
    let size = payloads.iter().map(|p| p.len() + 5).sum::<usize>();
    let mut out = PackWriter::with_capacity(size, payloads.len());
    for p in payloads {
        out.payload(|bytes| bytes.extend_from_slice(p));
    }
    out.finish().0
}

/// The payloads of a [`pack`], in order, borrowed from `bytes`.
pub(crate) fn unpack(mut bytes: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let n = rmp::decode::read_array_len(&mut bytes).map_err(|e| format!("packed payloads: {e}"))?;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let len = rmp::decode::read_bin_len(&mut bytes).map_err(|e| format!("packed payload {i}: {e}"))? as usize;
        if len > bytes.len() {
            return Err(format!("packed payload {i} needs {len} bytes, {} are left", bytes.len()).into());
        }
        let (payload, rest) = bytes.split_at(len);
        out.push(payload);
        bytes = rest;
    }
    if !bytes.is_empty() {
        return Err(format!("{} bytes after the last packed payload", bytes.len()).into());
    }
    Ok(out)
}

/// The stored form of a transcript chunk: some consecutive messages of one session, oldest first,
/// each `[at, user_id, text]` with `at` in nanoseconds since the Unix epoch (UTC). MessagePack, as
/// [`decode_chunk`] reads it back; schema version 2's rows were migrated to the same array in JSON.
pub(crate) fn encode_chunk(messages: &[&RoutedMessage]) -> Vec<u8> {
    let entries: Vec<(i64, &str, &str)> =
        messages.iter().map(|m| (nanos(m.at), m.user_id.as_str(), m.text.as_str())).collect();
    let size = messages.iter().map(|m| m.user_id.len() + m.text.len() + 16).sum::<usize>() + 8;
    let mut bytes = Vec::with_capacity(size);
    rmp_serde::encode::write(&mut bytes, &entries).expect("transcript chunks serialize");
    bytes
}

/// The messages of a transcript chunk, appended to `into`: MessagePack bytes as [`encode_chunk`]
/// writes them, or JSON text (rows migrated from schema version 2).
pub(crate) fn decode_chunk(stored: Chunk<'_>, into: &mut Vec<TranscriptEntry>) -> Result<(), DecodeError> {
    let entries: Vec<(i64, CompactString, String)> = match stored {
        Chunk::MessagePack(bytes) => rmp_serde::from_slice(bytes)?,
        Chunk::Json(text) => serde_json::from_str(text)?,
    };
    into.extend(entries.into_iter().map(|(at, user_id, text)| TranscriptEntry { at: from_nanos(at), user_id, text }));
    Ok(())
}

/// A transcript chunk as read from its row (see [`decode_chunk`]).
pub(crate) enum Chunk<'a> {
    /// Written by this version.
    MessagePack(&'a [u8]),
    /// Migrated from schema version 2.
    Json(&'a str),
}

/// Nanoseconds since the Unix epoch (UTC), as the store keeps times.
pub(crate) fn nanos(t: Timestamp) -> i64 {
    // i64 nanoseconds reach the year 2262; later times (never produced by a real clock) saturate.
    i64::try_from(t.as_nanosecond()).unwrap_or(if t < Timestamp::UNIX_EPOCH { i64::MIN } else { i64::MAX })
}

/// The time `n` nanoseconds after the Unix epoch (UTC); the epoch itself if out of range.
pub(crate) fn from_nanos(n: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(n)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn from_stored(stored: Stored) -> AnyEvent {
    match stored {
        Stored::GatewayStartup { event_id, at, hooks } => {
            AnyEvent::GatewayStartup(GatewayStartup { event_id, at, hooks })
        }
        Stored::GatewayShutdown { event_id, at, sessions_closed } => {
            AnyEvent::GatewayShutdown(GatewayShutdown { event_id, at, sessions_closed })
        }
        Stored::SessionStart { session_id, key, user_id, started_at, cause, previous_session_id } => {
            AnyEvent::SessionStart(SessionStart::new(session_id, key, user_id, started_at, cause, previous_session_id))
        }
        Stored::SessionEnd {
            session_id,
            key,
            user_id,
            reason,
            started_at,
            ended_at,
            detected_at,
            message_count,
            transcript,
        } => AnyEvent::SessionEnd(SessionEnd::new(
            session_id,
            key,
            user_id,
            reason,
            started_at,
            ended_at,
            detected_at,
            message_count,
            Transcript::new(transcript.entries.into_iter().map(|e| e.0).collect::<Vec<_>>(), transcript.truncated),
        )),
        Stored::MessageReceived { event_id, session_id, key, user_id, at, text } => {
            AnyEvent::MessageReceived(MessageReceived { event_id, session_id, key, user_id, at, text })
        }
        Stored::Command { event_id, session_id, key, user_id, at, text } => {
            AnyEvent::Command(Command { event_id, session_id, key, user_id, at, text })
        }
        Stored::AgentTurnStart { event_id, session_id, key, at, input } => {
            AnyEvent::AgentTurnStart(AgentTurnStart { event_id, session_id, key, at, input })
        }
        Stored::AgentTurnEnd { event_id, session_id, key, started_at, at, outcome } => {
            let outcome = match outcome {
                StoredOutcome::Reply { text } => TurnOutcome::Reply { text },
                StoredOutcome::Error { error } => TurnOutcome::Error { error },
            };
            AnyEvent::AgentTurnEnd(AgentTurnEnd { event_id, session_id, key, started_at, at, outcome })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{SessionId, SessionKey};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn session_end() -> SessionEnd {
        let entries = vec![
            TranscriptEntry { at: t("2024-05-01T10:00:00.123456789Z"), user_id: "alice".into(), text: "hi".into() },
            TranscriptEntry { at: t("1969-12-31T23:59:59Z"), user_id: "bob".into(), text: "before the epoch".into() },
        ];
        SessionEnd::new(
            SessionId::from_u128(7),
            SessionKey::chat("web", "a"),
            "alice".into(),
            CloseReason::IdleExpiry,
            t("2024-05-01T10:00:00Z"),
            t("2024-05-01T10:30:00Z"),
            t("2024-05-01T11:00:00Z"),
            2,
            Transcript::new(entries, true),
        )
    }

    fn message() -> MessageReceived {
        MessageReceived {
            event_id: EventId::from_u128(9),
            session_id: SessionId::from_u128(7),
            key: SessionKey::chat("web", "a"),
            user_id: "alice".into(),
            at: t("2024-05-01T10:05:00.5Z"),
            text: "hello".into(),
        }
    }

    #[test]
    fn events_round_trip_with_times_as_integers() {
        let end = AnyEvent::SessionEnd(session_end());
        let msg = AnyEvent::MessageReceived(message());
        for event in [&end, &msg] {
            let bytes = encode(event);
            assert_eq!(format!("{:?}", decode(&bytes).unwrap()), format!("{event:?}"));
        }
        // No RFC 3339 text left in the payload: times are integers.
        let bytes = encode(&end);
        assert!(!bytes.windows(4).any(|w| w == b"2024"), "{bytes:?}");
    }

    /// How schema version 2 wrote events: RFC 3339 text for times, named transcript entries.
    #[derive(Serialize)]
    #[serde(tag = "event", rename_all = "snake_case")]
    enum Version2<'a> {
        MessageReceived {
            event_id: EventId,
            session_id: SessionId,
            key: &'a SessionKey,
            user_id: &'a str,
            at: Timestamp,
            text: &'a str,
        },
        SessionEnd {
            session_id: SessionId,
            key: &'a SessionKey,
            user_id: &'a str,
            reason: CloseReason,
            started_at: Timestamp,
            ended_at: Timestamp,
            detected_at: Timestamp,
            message_count: u64,
            transcript: &'a Transcript,
        },
    }

    #[test]
    fn events_written_by_schema_version_2_are_read() {
        let (m, e) = (message(), session_end());
        let old = [
            Version2::MessageReceived {
                event_id: m.event_id,
                session_id: m.session_id,
                key: &m.key,
                user_id: &m.user_id,
                at: m.at,
                text: &m.text,
            },
            Version2::SessionEnd {
                session_id: e.session_id,
                key: &e.key,
                user_id: &e.user_id,
                reason: e.reason,
                started_at: e.started_at,
                ended_at: e.ended_at,
                detected_at: e.detected_at,
                message_count: e.message_count,
                transcript: &e.transcript,
            },
        ];
        let expected =
            [format!("{:?}", AnyEvent::MessageReceived(m.clone())), format!("{:?}", AnyEvent::SessionEnd(e.clone()))];
        for (old, expected) in old.iter().zip(expected) {
            let mut bytes = Vec::new();
            rmp_serde::encode::write_named(&mut bytes, old).unwrap();
            assert!(bytes.windows(4).any(|w| w == b"2024"), "the fixture holds text times");
            assert_eq!(format!("{:?}", decode(&bytes).unwrap()), expected);
        }
    }

    #[test]
    fn a_pack_written_ahead_reads_back_like_a_pack_of_its_payloads() {
        let (m, e) = (AnyEvent::MessageReceived(message()), session_end());
        let mut ahead = PackWriter::with_capacity(0, 0);
        ahead.event(&m);
        ahead.end(&e);
        let (bytes, spans) = ahead.finish();
        let payloads = [encode(&m), encode_end(&e)];
        let separately: Vec<Cow<'_, [u8]>> = payloads.iter().map(|p| Cow::Borrowed(p.as_slice())).collect();
        let unpacked = unpack(&bytes).unwrap();
        assert_eq!(unpacked, unpack(&pack(&separately)).unwrap());
        assert_eq!(unpacked, spans.iter().map(|s| &bytes[s.clone()]).collect::<Vec<_>>());
        assert_eq!(format!("{:?}", decode(unpacked[1]).unwrap()), format!("{:?}", AnyEvent::SessionEnd(e)));
        // A damaged pack is an error, not a panic.
        assert!(unpack(&bytes[..bytes.len() - 1]).is_err());
        assert!(unpack(&[bytes.as_slice(), &[0]].concat()).is_err());
    }

    #[test]
    fn json_rows_of_schema_version_1_keep_text_times() {
        let end = AnyEvent::SessionEnd(session_end());
        let json = encode_json(&end);
        assert!(json.contains("\"2024-05-01T10:30:00Z\""), "{json}");
        assert_eq!(format!("{:?}", decode_json(&json).unwrap()), format!("{end:?}"));
    }
}
