//! How a durable store writes events to its outbox and reads them back.
//!
//! The outbox form is MessagePack with named fields (`rmp-serde`): self-describing like JSON, but a
//! string is its length and its bytes, so the texts that dominate the payloads (messages, transcripts)
//! are copied, not scanned and escaped; encoding JSON was a fifth of the SQLite writer's work. Schema
//! version 1 wrote JSON text, which [`decode_json`] still reads.
//!
//! The public event types serialize for handlers and logs but deliberately do not deserialize: a
//! `SessionEnd` read from arbitrary JSON would be a way around "only the engine ends sessions". The
//! outbox needs the full event back (the transcript included, which the public form skips), so it uses
//! this private mirror, readable only inside the crate.

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
enum Stored<K = SessionKey, U = CompactString, S = String, T = Transcript, O = StoredOutcome> {
    GatewayStartup {
        event_id: EventId,
        at: Timestamp,
        hooks: usize,
    },
    GatewayShutdown {
        event_id: EventId,
        at: Timestamp,
        sessions_closed: u64,
    },
    SessionStart {
        session_id: SessionId,
        key: K,
        user_id: U,
        started_at: Timestamp,
        cause: StartCause,
        previous_session_id: Option<SessionId>,
    },
    SessionEnd {
        session_id: SessionId,
        key: K,
        user_id: U,
        reason: CloseReason,
        started_at: Timestamp,
        ended_at: Timestamp,
        detected_at: Timestamp,
        message_count: u64,
        transcript: T,
    },
    MessageReceived {
        event_id: EventId,
        session_id: SessionId,
        key: K,
        user_id: U,
        at: Timestamp,
        text: S,
    },
    Command {
        event_id: EventId,
        session_id: Option<SessionId>,
        key: K,
        user_id: U,
        at: Timestamp,
        text: S,
    },
    AgentTurnStart {
        event_id: EventId,
        session_id: SessionId,
        key: K,
        at: Timestamp,
        input: S,
    },
    AgentTurnEnd {
        event_id: EventId,
        session_id: SessionId,
        key: K,
        started_at: Timestamp,
        at: Timestamp,
        outcome: O,
    },
}

/// The borrowed outbox form, for encoding.
type StoredRef<'a> = Stored<&'a SessionKey, &'a CompactString, &'a str, &'a Transcript, StoredOutcome<&'a str>>;

/// The outbox form of `event` (MessagePack).
pub(crate) fn encode(event: &AnyEvent) -> Vec<u8> {
    let stored: StoredRef<'_> = match event {
        AnyEvent::GatewayStartup(e) => Stored::GatewayStartup { event_id: e.event_id, at: e.at, hooks: e.hooks },
        AnyEvent::GatewayShutdown(e) => {
            Stored::GatewayShutdown { event_id: e.event_id, at: e.at, sessions_closed: e.sessions_closed }
        }
        AnyEvent::SessionStart(e) => return encode_start(e),
        AnyEvent::SessionEnd(e) => return encode_end(e),
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
    };
    to_bytes(&stored)
}

/// The outbox form of a `SessionStart` (session event ids are derived from the session id, so they
/// are not stored).
pub(crate) fn encode_start(e: &SessionStart) -> Vec<u8> {
    to_bytes(&StoredRef::SessionStart {
        session_id: e.session_id,
        key: &e.key,
        user_id: &e.user_id,
        started_at: e.started_at,
        cause: e.cause,
        previous_session_id: e.previous_session_id,
    })
}

/// The outbox form of a `SessionEnd`, transcript included.
pub(crate) fn encode_end(e: &SessionEnd) -> Vec<u8> {
    to_bytes(&StoredRef::SessionEnd {
        session_id: e.session_id,
        key: &e.key,
        user_id: &e.user_id,
        reason: e.reason,
        started_at: e.started_at,
        ended_at: e.ended_at,
        detected_at: e.detected_at,
        message_count: e.message_count,
        transcript: &e.transcript,
    })
}

fn to_bytes(stored: &StoredRef<'_>) -> Vec<u8> {
    // Every field is a string, number, timestamp or enum: serialization cannot fail.
    // Sized for a typical event up front: growing the buffer field by field cost more than encoding.
    let mut bytes = Vec::with_capacity(512);
    rmp_serde::encode::write_named(&mut bytes, stored).expect("outbox events serialize");
    bytes
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
    let bytes = encode(event);
    let stored: Stored = rmp_serde::from_slice(&bytes).expect("just encoded");
    serde_json::to_string(&stored).expect("outbox events serialize")
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
            transcript,
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
