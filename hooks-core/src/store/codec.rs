//! How a durable store writes events to its outbox and reads them back.
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
    MessageReceived, SessionEnd, SessionId, SessionKey, SessionStart, StartCause, Transcript, TurnOutcome,
};

#[derive(Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum StoredOutcome {
    Reply { text: String },
    Error { error: String },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Stored {
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
        key: SessionKey,
        user_id: CompactString,
        started_at: Timestamp,
        cause: StartCause,
        previous_session_id: Option<SessionId>,
    },
    SessionEnd {
        session_id: SessionId,
        key: SessionKey,
        user_id: CompactString,
        reason: CloseReason,
        started_at: Timestamp,
        ended_at: Timestamp,
        detected_at: Timestamp,
        message_count: u64,
        transcript: Transcript,
    },
    MessageReceived {
        event_id: EventId,
        session_id: SessionId,
        key: SessionKey,
        user_id: CompactString,
        at: Timestamp,
        text: String,
    },
    Command {
        event_id: EventId,
        session_id: Option<SessionId>,
        key: SessionKey,
        user_id: CompactString,
        at: Timestamp,
        text: String,
    },
    AgentTurnStart {
        event_id: EventId,
        session_id: SessionId,
        key: SessionKey,
        at: Timestamp,
        input: String,
    },
    AgentTurnEnd {
        event_id: EventId,
        session_id: SessionId,
        key: SessionKey,
        started_at: Timestamp,
        at: Timestamp,
        outcome: StoredOutcome,
    },
}

/// The outbox form of `event` (JSON).
pub(crate) fn encode(event: &AnyEvent) -> String {
    let stored = match event.clone() {
        AnyEvent::GatewayStartup(e) => Stored::GatewayStartup { event_id: e.event_id, at: e.at, hooks: e.hooks },
        AnyEvent::GatewayShutdown(e) => {
            Stored::GatewayShutdown { event_id: e.event_id, at: e.at, sessions_closed: e.sessions_closed }
        }
        // Session event ids are derived from the session id, so they are not stored.
        AnyEvent::SessionStart(e) => Stored::SessionStart {
            session_id: e.session_id,
            key: e.key,
            user_id: e.user_id,
            started_at: e.started_at,
            cause: e.cause,
            previous_session_id: e.previous_session_id,
        },
        AnyEvent::SessionEnd(e) => Stored::SessionEnd {
            session_id: e.session_id,
            key: e.key,
            user_id: e.user_id,
            reason: e.reason,
            started_at: e.started_at,
            ended_at: e.ended_at,
            detected_at: e.detected_at,
            message_count: e.message_count,
            transcript: e.transcript,
        },
        AnyEvent::MessageReceived(e) => Stored::MessageReceived {
            event_id: e.event_id,
            session_id: e.session_id,
            key: e.key,
            user_id: e.user_id,
            at: e.at,
            text: e.text,
        },
        AnyEvent::Command(e) => Stored::Command {
            event_id: e.event_id,
            session_id: e.session_id,
            key: e.key,
            user_id: e.user_id,
            at: e.at,
            text: e.text,
        },
        AnyEvent::AgentTurnStart(e) => Stored::AgentTurnStart {
            event_id: e.event_id,
            session_id: e.session_id,
            key: e.key,
            at: e.at,
            input: e.input,
        },
        AnyEvent::AgentTurnEnd(e) => Stored::AgentTurnEnd {
            event_id: e.event_id,
            session_id: e.session_id,
            key: e.key,
            started_at: e.started_at,
            at: e.at,
            outcome: match e.outcome {
                TurnOutcome::Reply { text } => StoredOutcome::Reply { text },
                TurnOutcome::Error { error } => StoredOutcome::Error { error },
            },
        },
    };
    // Every field is a string, number, timestamp or enum: serialization cannot fail.
    serde_json::to_string(&stored).expect("outbox events serialize")
}

/// The event whose outbox form is `json`.
pub(crate) fn decode(json: &str) -> Result<AnyEvent, serde_json::Error> {
    Ok(match serde_json::from_str::<Stored>(json)? {
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
    })
}
