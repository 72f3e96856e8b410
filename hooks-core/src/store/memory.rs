//! The in-memory store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use jiff::Timestamp;

use super::{
    CloseOutcome, LostClose, OpenOutcome, OpenSession, OutboxEntry, OutboxSeq, RotateOutcome, Store, StoreError,
};
use crate::event::{AnyEvent, CloseReason, SessionEnd, SessionId, SessionKey, SessionStart};

#[derive(Debug)]
enum State {
    Open,
    Closed { reason: CloseReason, ended_at: Timestamp },
}

#[derive(Debug)]
struct Row {
    key: SessionKey,
    started_at: Timestamp,
    state: State,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionId, Row>,
    open_by_key: HashMap<SessionKey, SessionId>,
    outbox: BTreeMap<u64, AnyEvent>,
    next_seq: u64,
    recorded: u64,
}

impl Inner {
    fn append(&mut self, event: AnyEvent) -> OutboxSeq {
        self.next_seq += 1;
        self.recorded += 1;
        self.outbox.insert(self.next_seq, event);
        OutboxSeq(self.next_seq)
    }

    /// Whether `id` is open; `Err` tells how it closed, or that it is unknown.
    fn check_open(&self, id: SessionId) -> Result<Result<(), LostClose>, StoreError> {
        match self.sessions.get(&id) {
            None => Err(StoreError::UnknownSession(id)),
            Some(Row { state: State::Open, .. }) => Ok(Ok(())),
            Some(Row { state: State::Closed { reason, ended_at }, .. }) => {
                Ok(Err(LostClose { session_id: id, reason: *reason, ended_at: *ended_at }))
            }
        }
    }

    fn close(&mut self, end: &SessionEnd) {
        if let Some(row) = self.sessions.get_mut(&end.session_id) {
            row.state = State::Closed { reason: end.reason, ended_at: end.ended_at };
            if self.open_by_key.get(&row.key) == Some(&end.session_id) {
                self.open_by_key.remove(&row.key);
            }
        }
    }

    fn insert_open(&mut self, start: &SessionStart) {
        self.sessions
            .insert(start.session_id, Row { key: start.key.clone(), started_at: start.started_at, state: State::Open });
        self.open_by_key.insert(start.key.clone(), start.session_id);
    }
}

/// A [`Store`] in memory: one mutex around the session table and the outbox, so each step is atomic.
///
/// Closed sessions are remembered (so a late closer learns who won) until
/// [`forget_closed`](Self::forget_closed) drops them. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-done step (each step mutates only after its
        // checks), so the data is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events recorded in total, delivered or not.
    pub fn recorded(&self) -> u64 {
        self.lock().recorded
    }

    /// Every event still in the outbox (recorded, not yet marked delivered), oldest first.
    pub fn undelivered(&self) -> Vec<OutboxEntry> {
        self.lock()
            .outbox
            .iter()
            .map(|(seq, event)| OutboxEntry { seq: OutboxSeq(*seq), event: event.clone() })
            .collect()
    }

    /// How `id` closed, if it did.
    pub fn closed_reason(&self, id: SessionId) -> Option<CloseReason> {
        match self.lock().sessions.get(&id)?.state {
            State::Open => None,
            State::Closed { reason, .. } => Some(reason),
        }
    }

    /// Drops the rows of closed sessions (a later close of one of them reports
    /// [`StoreError::UnknownSession`]); bounds the memory of a long-running gateway.
    pub fn forget_closed(&self) {
        self.lock().sessions.retain(|_, row| matches!(row.state, State::Open));
    }
}

impl Store for MemoryStore {
    async fn open(&self, start: &SessionStart) -> Result<OpenOutcome, StoreError> {
        let mut inner = self.lock();
        if inner.sessions.contains_key(&start.session_id) {
            return Err(StoreError::DuplicateSession(start.session_id));
        }
        if let Some(open) = inner.open_by_key.get(&start.key) {
            return Ok(OpenOutcome::KeyBusy { open: *open });
        }
        inner.insert_open(start);
        Ok(OpenOutcome::Opened { start: inner.append(AnyEvent::SessionStart(start.clone())) })
    }

    async fn close_if_open(&self, end: &SessionEnd) -> Result<CloseOutcome, StoreError> {
        let mut inner = self.lock();
        if let Err(lost) = inner.check_open(end.session_id)? {
            return Ok(CloseOutcome::Lost(lost));
        }
        inner.close(end);
        Ok(CloseOutcome::Closed { end: inner.append(AnyEvent::SessionEnd(end.clone())) })
    }

    async fn rotate(&self, end: &SessionEnd, start: &SessionStart) -> Result<RotateOutcome, StoreError> {
        if start.key != end.key || start.previous_session_id != Some(end.session_id) {
            return Err(StoreError::NotASuccessor { end: end.session_id, start: start.session_id });
        }
        let mut inner = self.lock();
        if let Err(lost) = inner.check_open(end.session_id)? {
            return Ok(RotateOutcome::Lost(lost));
        }
        if inner.sessions.contains_key(&start.session_id) {
            return Err(StoreError::DuplicateSession(start.session_id));
        }
        inner.close(end);
        inner.insert_open(start);
        let e = inner.append(AnyEvent::SessionEnd(end.clone()));
        let s = inner.append(AnyEvent::SessionStart(start.clone()));
        Ok(RotateOutcome::Rotated { end: e, start: s })
    }

    async fn record(&self, event: &AnyEvent) -> Result<OutboxSeq, StoreError> {
        if matches!(event, AnyEvent::SessionStart(_) | AnyEvent::SessionEnd(_)) {
            return Err(StoreError::SessionEvent(event.name()));
        }
        Ok(self.lock().append(event.clone()))
    }

    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .outbox
            .iter()
            .take(limit)
            .map(|(seq, event)| OutboxEntry { seq: OutboxSeq(*seq), event: event.clone() })
            .collect())
    }

    async fn mark_delivered(&self, seq: OutboxSeq) -> Result<(), StoreError> {
        self.lock().outbox.remove(&seq.0);
        Ok(())
    }

    async fn open_sessions(&self) -> Result<Vec<OpenSession>, StoreError> {
        let inner = self.lock();
        let mut open: Vec<OpenSession> = inner
            .open_by_key
            .values()
            .filter_map(|id| {
                let row = inner.sessions.get(id)?;
                Some(OpenSession { session_id: *id, key: row.key.clone(), started_at: row.started_at })
            })
            .collect();
        open.sort_by_key(|s| (s.started_at, s.session_id));
        Ok(open)
    }
}
