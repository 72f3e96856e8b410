//! Where sessions and their events are recorded: the atomic "close if open and record the event" step,
//! and the outbox of recorded events not yet delivered.
//!
//! The lifecycle [`Engine`](crate::lifecycle::Engine) decides *that* a session closes; a [`Store`] makes
//! the close happen exactly once. Every close path ends in one of two atomic steps:
//!
//! - [`Store::close_if_open`]: if the session is still open, mark it closed with the reason and append
//!   its `SessionEnd` to the outbox; otherwise change nothing and tell the caller it lost, and to which
//!   reason. Of any number of concurrent callers exactly one wins.
//! - [`Store::rotate`]: close a session and open its successor (a reset command, an auto-reset), appending
//!   the `SessionEnd` and then the `SessionStart`, as one step: both happen or neither.
//!
//! Each step is one transaction in a SQL store (`UPDATE sessions SET state = 'closed' … WHERE id = ? AND
//! state = 'open'`, checking the row count, then `INSERT INTO outbox …`, then `COMMIT`), which is why the
//! trait is shaped around whole steps rather than reads and writes. Events are delivered from the outbox
//! and then marked delivered; an event recorded but not marked (a crash in between) is delivered again,
//! with the same `event_id`: emission is exactly once, delivery at least once.
//!
//! [`MemoryStore`] keeps everything in memory (tests, replay, a single gateway that may lose its
//! sessions on restart). Durable stores (SQLite, PostgreSQL) implement the same trait.

mod memory;

use std::future::Future;

use jiff::Timestamp;
use serde::Serialize;

use crate::event::{AnyEvent, CloseReason, SessionEnd, SessionId, SessionKey, SessionStart};

pub use memory::MemoryStore;

/// The position of an event in a store's outbox: increasing in record order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct OutboxSeq(pub u64);

/// An event recorded in the outbox and not yet marked delivered.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    /// Its position.
    pub seq: OutboxSeq,
    /// The event.
    pub event: AnyEvent,
}

/// An open session as a store knows it (to resume timers after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSession {
    /// The session.
    pub session_id: SessionId,
    /// Its key.
    pub key: SessionKey,
    /// When it opened (UTC).
    pub started_at: Timestamp,
}

/// What [`Store::open`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenOutcome {
    /// The session is open and its `SessionStart` recorded at `start`.
    Opened {
        /// The `SessionStart`'s outbox position.
        start: OutboxSeq,
    },
    /// Nothing changed: the key already has an open session.
    KeyBusy {
        /// The key's open session.
        open: SessionId,
    },
}

/// What [`Store::close_if_open`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseOutcome {
    /// This caller won: the session is closed and its `SessionEnd` recorded at `end`.
    Closed {
        /// The `SessionEnd`'s outbox position.
        end: OutboxSeq,
    },
    /// This caller lost: the session was already closed, by another close path, and nothing changed.
    Lost(LostClose),
}

/// What [`Store::rotate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    /// This caller won: the old session is closed and the successor open; the `SessionEnd` was recorded
    /// at `end` and the `SessionStart` right after it at `start`.
    Rotated {
        /// The `SessionEnd`'s outbox position.
        end: OutboxSeq,
        /// The `SessionStart`'s outbox position (after `end`).
        start: OutboxSeq,
    },
    /// This caller lost: the old session was already closed, and nothing changed (the successor was not
    /// opened).
    Lost(LostClose),
}

/// How a session that a caller wanted to close had already been closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostClose {
    /// The session.
    pub session_id: SessionId,
    /// The reason the winning close path gave.
    pub reason: CloseReason,
    /// When the winner closed it (UTC).
    pub ended_at: Timestamp,
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The session to close was never opened in this store.
    #[error("session {0} is unknown to the store")]
    UnknownSession(SessionId),
    /// A rotate whose successor does not name the closed session as its predecessor on the same key.
    #[error("session {start} does not directly succeed {end} on the same key")]
    NotASuccessor {
        /// The session being closed.
        end: SessionId,
        /// The session being opened.
        start: SessionId,
    },
    /// A `SessionStart` for a session id the store already knows.
    #[error("session {0} was already opened")]
    DuplicateSession(SessionId),
    /// Session events are recorded by [`Store::open`], [`Store::close_if_open`] and [`Store::rotate`]
    /// only, never by [`Store::record`].
    #[error("a {0} event must be recorded through open, close_if_open or rotate")]
    SessionEvent(&'static str),
    /// The backend failed (I/O, database); the step did not happen.
    #[error("store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Records sessions and events atomically. See the [module docs](self).
///
/// Every method is one atomic step: it happens entirely or not at all, and concurrent calls behave as
/// if they ran one after another.
pub trait Store: Send + Sync + 'static {
    /// Opens the session of `start` if its key has no open session, recording `start` in the outbox.
    ///
    /// # Errors
    ///
    /// [`StoreError::DuplicateSession`] if the id is known; backend failures.
    fn open(&self, start: &SessionStart) -> impl Future<Output = Result<OpenOutcome, StoreError>> + Send;

    /// Closes `end`'s session if it is still open, recording `end` in the outbox; otherwise reports how
    /// it was closed. Exactly one of any number of concurrent callers for a session gets
    /// [`CloseOutcome::Closed`].
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownSession`] if the session was never opened here; backend failures.
    fn close_if_open(&self, end: &SessionEnd) -> impl Future<Output = Result<CloseOutcome, StoreError>> + Send;

    /// Closes `end`'s session and opens `start`'s successor as one step, recording `end` then `start`; if
    /// the session was already closed, changes nothing and reports how it was closed.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotASuccessor`] unless `start` is on the same key and names `end`'s session as its
    /// `previous_session_id`; [`StoreError::UnknownSession`]; [`StoreError::DuplicateSession`]; backend
    /// failures.
    fn rotate(
        &self,
        end: &SessionEnd,
        start: &SessionStart,
    ) -> impl Future<Output = Result<RotateOutcome, StoreError>> + Send;

    /// Records any other event (a message, an agent turn) in the outbox, in order with the session
    /// events.
    ///
    /// # Errors
    ///
    /// [`StoreError::SessionEvent`] for a `SessionStart` or `SessionEnd`; backend failures.
    fn record(&self, event: &AnyEvent) -> impl Future<Output = Result<OutboxSeq, StoreError>> + Send;

    /// Up to `limit` events recorded and not yet marked delivered, oldest first.
    ///
    /// # Errors
    ///
    /// Backend failures.
    fn pending(&self, limit: usize) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Marks the event at `seq` delivered (to every handler); marking twice is harmless.
    ///
    /// # Errors
    ///
    /// Backend failures.
    fn mark_delivered(&self, seq: OutboxSeq) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every open session, oldest first.
    ///
    /// # Errors
    ///
    /// Backend failures.
    fn open_sessions(&self) -> impl Future<Output = Result<Vec<OpenSession>, StoreError>> + Send;
}
