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
//! sessions on restart). [`SqliteStore`] keeps it in one SQLite file, survives crashes, and commits
//! several steps per transaction ([`Store::apply`], group commit); on start the runtime reads back what
//! it needs to resume ([`Store::recover`]): the open sessions with their messages, and the events not
//! yet delivered.

mod codec;
mod memory;
mod sqlite;

use std::future::Future;

use jiff::Timestamp;
use serde::Serialize;

use compact_str::CompactString;

use crate::event::{AnyEvent, CloseReason, SessionEnd, SessionId, SessionKey, SessionStart, TranscriptEntry};

pub use memory::MemoryStore;
pub use sqlite::{Commit, DeadLetter, SCHEMA_VERSION, SqliteOptions, SqliteStore, StepOutcomes, Synchronous};

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
    /// The disk (or the database's configured size limit) is full; the step did not happen and nothing
    /// committed before was lost. Free space and restart.
    #[error("the session store is full ({detail}); nothing was written, committed data is intact")]
    Full {
        /// The backend's message.
        detail: String,
    },
    /// The store cannot write (a read-only file, directory or file system); the step did not happen.
    #[error("the session store is read-only ({detail}); nothing was written, committed data is intact")]
    ReadOnly {
        /// The backend's message.
        detail: String,
    },
    /// The database file is damaged (truncated, overwritten, not a database). The store refuses to open
    /// it and never resets or rewrites it: restore it from a backup (see docs/operations.md).
    #[error("the session database {path} is corrupt: {detail}; it was left untouched (restore it from a backup)")]
    Corrupt {
        /// The database file.
        path: std::path::PathBuf,
        /// What the check found.
        detail: String,
    },
    /// The database was written by a newer version of this software (schema version `found`, this
    /// build knows up to `supported`). The store refuses to open it rather than misread or downgrade it.
    #[error(
        "the session database {path} has schema version {found}, newer than this build supports ({supported}); \
         it was left untouched (run the newer version, or restore a backup)"
    )]
    NewerSchema {
        /// The database file.
        path: std::path::PathBuf,
        /// The schema version in the file.
        found: i64,
        /// The newest schema version this build can use.
        supported: i64,
    },
    /// The store's worker has stopped (it panicked, or the store was closed); nothing was written.
    #[error("the session store is closed")]
    Closed,
}

/// One step of a batch given to [`Store::apply`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Step {
    /// [`Store::open`].
    Open(SessionStart),
    /// [`Store::close_if_open`].
    Close(SessionEnd),
    /// [`Store::rotate`].
    Rotate(SessionEnd, SessionStart),
    /// [`Store::record`].
    Record(AnyEvent),
    /// A message was routed to an open session: a durable store counts it, moves the session's last
    /// message time (from which the idle deadline is computed on restart) and keeps it for the
    /// transcript. Stores that do not survive a restart may ignore it.
    Message(RoutedMessage),
}

/// A message routed to a session, as [`Step::Message`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedMessage {
    /// The session it counts toward.
    pub session_id: SessionId,
    /// When it was routed (UTC): the session's new last message time.
    pub at: Timestamp,
    /// The sender.
    pub user_id: CompactString,
    /// Its text.
    pub text: String,
}

/// What one [`Step`] of a batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepOutcome {
    /// See [`Store::open`].
    Opened(OpenOutcome),
    /// See [`Store::close_if_open`].
    Closed(CloseOutcome),
    /// See [`Store::rotate`].
    Rotated(RotateOutcome),
    /// See [`Store::record`].
    Recorded(OutboxSeq),
    /// The message was counted.
    Message,
}

/// An open session with what a restarted engine needs to go on with it (see
/// [`Engine::restore`](crate::lifecycle::Engine::restore)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredSession {
    /// The session.
    pub session_id: SessionId,
    /// Its key.
    pub key: SessionKey,
    /// The sender of the message that opened it.
    pub user_id: CompactString,
    /// When it opened (UTC).
    pub started_at: Timestamp,
    /// Its last message's time (UTC); its idle deadline is this plus the idle timeout.
    pub last_message_at: Timestamp,
    /// Messages routed to it.
    pub message_count: u64,
    /// Its messages, oldest first (all of them; the engine keeps its transcript limit).
    pub transcript: Vec<TranscriptEntry>,
}

/// An event recorded and not yet delivered to every handler, read back on start.
#[derive(Clone, Debug)]
pub struct PendingDelivery {
    /// The event and its outbox position.
    pub entry: OutboxEntry,
    /// Delivery attempts recorded so far (0 if the process stopped before recording any).
    pub attempts: u32,
    /// Handlers (by qualified name) that already handled it: a re-delivery skips them.
    pub done: Vec<String>,
}

/// What a store hands the runtime on start.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Sessions open when the last process stopped, oldest first.
    pub sessions: Vec<RecoveredSession>,
    /// Undelivered events, in outbox order.
    pub pending: Vec<PendingDelivery>,
    /// Events in the dead-letter state (not delivered again until retried).
    pub dead_letters: u64,
}

/// One handler's result for one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerResult {
    /// The hook's qualified name (`module::path::name`).
    pub handler: String,
    /// `None` if it succeeded, else what went wrong (error, panic, timeout).
    pub error: Option<String>,
}

/// What one delivery attempt of an outbox event did, as [`Store::record_delivery`] records it.
#[derive(Clone, Debug)]
pub struct DeliveryRecord<'a> {
    /// The event's outbox position.
    pub seq: OutboxSeq,
    /// The attempt number (1 for the first delivery).
    pub attempt: u32,
    /// One result per handler called in this attempt (handlers done in earlier attempts are not called).
    /// An attempt in which every handler succeeded may list none: stores keep per-handler rows only for
    /// attempts that failed somewhere, and "no failure listed" means delivered.
    pub results: &'a [HandlerResult],
    /// Whether the event gives up: some handler failed and this was the last allowed attempt. The event
    /// moves to the dead-letter state with the errors, instead of staying pending.
    pub dead: bool,
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

    /// Performs `steps` in order; a durable store commits them together (one transaction: all or none),
    /// so many inputs share one disk flush. Returns one result per step: a step that is refused
    /// ([`StoreError::UnknownSession`], [`StoreError::DuplicateSession`], …) changes nothing and the
    /// others go on.
    ///
    /// The default performs the steps one by one with the other methods (not atomically as a whole).
    ///
    /// # Errors
    ///
    /// Backend failures: then no step of the batch happened (in a transactional store).
    fn apply(
        &self,
        steps: Vec<Step>,
    ) -> impl Future<Output = Result<Vec<Result<StepOutcome, StoreError>>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(steps.len());
            for step in steps {
                let result = match step {
                    Step::Open(start) => self.open(&start).await.map(StepOutcome::Opened),
                    Step::Close(end) => self.close_if_open(&end).await.map(StepOutcome::Closed),
                    Step::Rotate(end, start) => self.rotate(&end, &start).await.map(StepOutcome::Rotated),
                    Step::Record(event) => self.record(&event).await.map(StepOutcome::Recorded),
                    Step::Message(_) => Ok(StepOutcome::Message),
                };
                match result {
                    Err(e @ (StoreError::Backend(_) | StoreError::Full { .. } | StoreError::ReadOnly { .. })) => {
                        return Err(e);
                    }
                    other => out.push(other),
                }
            }
            Ok(out)
        }
    }

    /// Records one delivery attempt of the event at `record.seq`: per-handler results, and the event's
    /// state (delivered when no handler failed, dead when `record.dead`, else still pending).
    ///
    /// The default marks the event delivered (whatever the handlers did) with
    /// [`mark_delivered`](Self::mark_delivered) unless it is still to be retried: a store without
    /// delivery records.
    ///
    /// # Errors
    ///
    /// Backend failures.
    fn record_delivery(&self, record: &DeliveryRecord<'_>) -> impl Future<Output = Result<(), StoreError>> + Send {
        let finished = record.dead || record.results.iter().all(|r| r.error.is_none());
        let seq = record.seq;
        async move { if finished { self.mark_delivered(seq).await } else { Ok(()) } }
    }

    /// What the runtime needs to resume after a restart: open sessions with their messages, undelivered
    /// events, the dead-letter count.
    ///
    /// The default recovers nothing: a store that does not outlive its process starts empty.
    ///
    /// # Errors
    ///
    /// Backend failures.
    fn recover(&self) -> impl Future<Output = Result<Recovery, StoreError>> + Send {
        async { Ok(Recovery::default()) }
    }
}
