//! The tokio driver: feeds the lifecycle [`Engine`] the clock and the gateway's messages, records what
//! it decides in a [`Store`], and hands the recorded events to the [`Dispatcher`], per key in order.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use hooks_core::dispatch::Dispatcher;
//! use hooks_core::event::SessionKey;
//! use hooks_core::lifecycle::Policy;
//! use hooks_core::registry::Registry;
//! use hooks_core::runtime::{Runtime, TokioClock};
//! use hooks_core::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dispatcher = Arc::new(Dispatcher::new(Registry::empty()));
//! let rt = Runtime::start(Policy::default(), MemoryStore::new(), dispatcher, TokioClock::system());
//! let routed = rt.handle().message(SessionKey::chat("web", "42"), "alice", "hello").await?;
//! assert!(routed.opened);
//! let report = rt.shutdown(Duration::from_secs(5)).await;
//! assert_eq!(report.sessions_closed, 1);
//! assert!(report.undelivered.is_empty());
//! # Ok(()) }
//! ```
//!
//! # How it runs
//!
//! One *lifecycle task* owns the engine. Messages, gateway events and shutdown reach it through a
//! channel from any number of [`RuntimeHandle`]s (clone them freely, across tasks and threads); between
//! messages it sleeps on the [`Clock`] until the engine's next deadline. Because one task owns the
//! engine, close paths that race (a `/new` arriving as the idle timer fires, shutdown during a daily
//! reset) are ordered by the channel, and each session's close is then made durable by the store's
//! atomic step ([`Store::close_if_open`] or [`Store::rotate`]): exactly one close wins.
//!
//! Closing never waits for a handler: recorded events go to per-key queues, each drained by its own
//! delivery task, so a slow handler delays only later events of the same key. A session's `SessionEnd`
//! reaches every handler before its successor's `SessionStart`; events a gateway [emits](RuntimeHandle::emit)
//! for a key are delivered in order with the key's session events.
//!
//! # Shutdown
//!
//! [`Runtime::shutdown`] ends every open session (idle ones too) with `shutdown`, then waits up to the
//! drain time for every recorded event to be delivered. What was not delivered by then is listed in the
//! [`ShutdownReport`] and stays in the store's outbox. Dropping the [`Runtime`] without calling it shuts
//! down the same way once every handle is gone, without waiting for delivery.

mod clock;
mod delivery;
mod dyn_store;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use compact_str::CompactString;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use clock::{Clock, ManualClock, TokioClock};
use delivery::{Deliveries, Queued};
use dyn_store::DynStore;

use crate::dispatch::Dispatcher;
use crate::event::{AnyEvent, CloseReason, EventId, SessionId, SessionKey};
use crate::lifecycle::{Engine, EngineStats, Policy, Routed, SessionIds};
use crate::store::{CloseOutcome, OpenOutcome, OutboxSeq, RotateOutcome, Store};

/// Why a runtime call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The runtime is shutting down or has shut down; the message was not routed.
    #[error("the session runtime is shutting down")]
    ShuttingDown,
    /// `SessionStart` and `SessionEnd` are emitted by the lifecycle only; a gateway cannot emit them.
    #[error("{0} events are emitted by the session lifecycle only")]
    LifecycleEvent(&'static str),
}

/// A snapshot of the runtime's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeMetrics {
    /// Sessions open now.
    pub open_sessions: u64,
    /// Sessions opened since start.
    pub sessions_opened: u64,
    /// Sessions closed since start, indexed like [`CloseReason::ALL`]; see [`closed`](Self::closed).
    pub closed_by_reason: [u64; 6],
    /// Messages routed.
    pub messages: u64,
    /// Events handed to the dispatcher (every handler returned, failed or timed out).
    pub events_delivered: u64,
    /// Events recorded and waiting for (or in) delivery.
    pub deliveries_pending: u64,
    /// Handler calls that failed (error, panic, timeout), as the dispatcher reported them.
    pub handler_failures: u64,
    /// Session steps the store refused because another writer had already made them (another gateway
    /// instance on a shared store); those events were not delivered by this runtime.
    pub store_conflicts: u64,
    /// Store operations that failed; those events were delivered without being recorded.
    pub store_errors: u64,
}

impl RuntimeMetrics {
    /// Sessions closed with `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        let i = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.closed_by_reason[i]
    }
}

/// An event that was recorded but not delivered when shutdown's drain time ran out. It stays in the
/// store's outbox (a durable store delivers it again on the next start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UndeliveredEvent {
    /// Its outbox position.
    pub seq: OutboxSeq,
    /// Its name, e.g. `"session_end"`.
    pub event: &'static str,
    /// Its id.
    pub event_id: EventId,
    /// Its session key, if it has one.
    pub key: Option<SessionKey>,
}

/// What [`Runtime::shutdown`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Sessions that shutdown closed with [`CloseReason::Shutdown`].
    pub sessions_closed: u64,
    /// Whether every recorded event was delivered within the drain time.
    pub drained: bool,
    /// Recorded events not delivered (empty if `drained`).
    pub undelivered: Vec<UndeliveredEvent>,
    /// The counters at the end.
    pub metrics: RuntimeMetrics,
}

enum Cmd {
    Message { key: SessionKey, user_id: CompactString, text: String, reply: oneshot::Sender<Routed> },
    Emit { key: SessionKey, event: AnyEvent },
    OpenSession { key: SessionKey, reply: oneshot::Sender<Option<SessionId>> },
    Shutdown { reply: oneshot::Sender<u64> },
}

#[derive(Default)]
struct Counters {
    open_sessions: AtomicU64,
    opened: AtomicU64,
    closed: [AtomicU64; 6],
    messages: AtomicU64,
    store_conflicts: AtomicU64,
    store_errors: AtomicU64,
}

struct Shared {
    counters: Counters,
    deliveries: Arc<Deliveries>,
    store: Arc<dyn DynStore>,
    stopping: AtomicBool,
}

/// A cheap, cloneable way to talk to a [`Runtime`] from any task or thread.
#[derive(Clone)]
pub struct RuntimeHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
}

impl fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeHandle").field("metrics", &self.metrics()).finish()
    }
}

impl RuntimeHandle {
    /// Routes a message for `key` from `user_id`, at the clock's current time, per the session policy
    /// (see [`Engine::message`]). Returns once the resulting session events are recorded and queued
    /// for delivery (not delivered: handlers never hold up routing).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::ShuttingDown`] once shutdown has begun.
    pub async fn message(
        &self,
        key: SessionKey,
        user_id: impl AsRef<str>,
        text: impl Into<String>,
    ) -> Result<Routed, RuntimeError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(RuntimeError::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Message { key, user_id: CompactString::new(user_id), text: text.into(), reply };
        self.tx.send(cmd).map_err(|_| RuntimeError::ShuttingDown)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)
    }

    /// Queues a gateway event (`MessageReceived`, `AgentTurnStart`, …) for `key`: it is recorded and
    /// delivered after every session event of the key that happened before this call, so a message's
    /// `MessageReceived` emitted after [`message`](Self::message) returned follows its `SessionStart`.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::LifecycleEvent`] for a `SessionStart` or `SessionEnd` (a copy of one would be
    /// delivered twice); [`RuntimeError::ShuttingDown`] once the lifecycle task has stopped.
    pub fn emit(&self, key: SessionKey, event: impl Into<AnyEvent>) -> Result<(), RuntimeError> {
        let event = event.into();
        if matches!(event, AnyEvent::SessionStart(_) | AnyEvent::SessionEnd(_)) {
            return Err(RuntimeError::LifecycleEvent(event.name()));
        }
        self.tx.send(Cmd::Emit { key, event }).map_err(|_| RuntimeError::ShuttingDown)
    }

    /// The open session of `key`, if any.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::ShuttingDown`] once the lifecycle task has stopped.
    pub async fn open_session(&self, key: SessionKey) -> Result<Option<SessionId>, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::OpenSession { key, reply }).map_err(|_| RuntimeError::ShuttingDown)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)
    }

    /// The counters now.
    pub fn metrics(&self) -> RuntimeMetrics {
        let c = &self.shared.counters;
        let d = &self.shared.deliveries;
        RuntimeMetrics {
            open_sessions: c.open_sessions.load(Ordering::Relaxed),
            sessions_opened: c.opened.load(Ordering::Relaxed),
            closed_by_reason: std::array::from_fn(|i| c.closed[i].load(Ordering::Relaxed)),
            messages: c.messages.load(Ordering::Relaxed),
            events_delivered: d.delivered.load(Ordering::Relaxed),
            deliveries_pending: d.pending() as u64,
            handler_failures: d.handler_failures.load(Ordering::Relaxed),
            store_conflicts: c.store_conflicts.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
        }
    }
}

/// The running session lifecycle. See the [module docs](self).
pub struct Runtime {
    handle: RuntimeHandle,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("handle", &self.handle).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts the lifecycle task on the current tokio runtime, with random (UUID v7) session ids.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(policy: Policy, store: impl Store, dispatcher: Arc<Dispatcher>, clock: impl Clock) -> Self {
        Self::start_with_ids(policy, SessionIds::Random, store, dispatcher, clock)
    }

    /// [`start`](Self::start) with a choice of session ids ([`SessionIds::Sequential`] for reproducible
    /// tests).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start_with_ids(
        policy: Policy,
        ids: SessionIds,
        store: impl Store,
        dispatcher: Arc<Dispatcher>,
        clock: impl Clock,
    ) -> Self {
        let store: Arc<dyn DynStore> = Arc::new(store);
        let deliveries = Arc::new(Deliveries::new(dispatcher, Arc::clone(&store)));
        let shared =
            Arc::new(Shared { counters: Counters::default(), deliveries, store, stopping: AtomicBool::new(false) });
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            engine: Engine::new(policy, ids),
            clock: Box::new(clock),
            rx,
            shared: Arc::clone(&shared),
            out: Vec::new(),
        };
        let task = tokio::spawn(actor.run());
        Self { handle: RuntimeHandle { tx, shared }, task }
    }

    /// A handle for sending messages and events; clone it for other tasks.
    pub fn handle(&self) -> &RuntimeHandle {
        &self.handle
    }

    /// Shuts down gracefully: messages sent before this call are routed, every open session (idle ones
    /// included) ends with [`CloseReason::Shutdown`], and this waits up to `drain` for every recorded
    /// event to be delivered. Later [`RuntimeHandle::message`] calls fail with
    /// [`RuntimeError::ShuttingDown`].
    ///
    /// Deliveries still running after `drain` are stopped; the report lists what was not delivered (it
    /// stays in the store's outbox).
    pub async fn shutdown(self, drain: Duration) -> ShutdownReport {
        let shared = Arc::clone(&self.handle.shared);
        shared.stopping.store(true, Ordering::SeqCst);
        let (reply, rx) = oneshot::channel();
        let sessions_closed = match self.handle.tx.send(Cmd::Shutdown { reply }) {
            Ok(()) => rx.await.unwrap_or(0),
            Err(_) => 0,
        };
        // The lifecycle task has returned (or panicked); its result carries nothing else.
        let _ = self.task.await;
        let drained = tokio::time::timeout(drain, shared.deliveries.wait_drained()).await.is_ok();
        if !drained {
            shared.deliveries.abort_all();
        }
        let undelivered = match shared.store.pending(usize::MAX).await {
            Ok(entries) => entries
                .into_iter()
                .map(|e| UndeliveredEvent {
                    seq: e.seq,
                    event: e.event.name(),
                    event_id: e.event.event_id(),
                    key: e.event.key().cloned(),
                })
                .collect(),
            Err(error) => {
                tracing::error!(%error, "could not list undelivered events at shutdown");
                Vec::new()
            }
        };
        if !undelivered.is_empty() {
            tracing::warn!(count = undelivered.len(), ?drain, "shutdown: events not delivered within the drain time");
        }
        ShutdownReport {
            sessions_closed,
            drained: drained && undelivered.is_empty(),
            undelivered,
            metrics: self.handle.metrics(),
        }
    }
}

/// The lifecycle task: the only owner of the engine.
struct Actor {
    engine: Engine,
    clock: Box<dyn Clock>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    shared: Arc<Shared>,
    /// Reused between inputs so routing allocates no event vector.
    out: Vec<AnyEvent>,
}

impl Actor {
    async fn run(mut self) {
        loop {
            let cmd = match self.engine.next_deadline() {
                Some(deadline) => {
                    let sleep = self.clock.sleep_until(deadline);
                    tokio::select! {
                        biased;
                        cmd = self.rx.recv() => cmd,
                        () = sleep => {
                            let now = self.clock.now();
                            self.engine.advance(now, &mut self.out);
                            self.commit().await;
                            continue;
                        }
                    }
                }
                None => self.rx.recv().await,
            };
            match cmd {
                Some(Cmd::Message { key, user_id, text, reply }) => {
                    let now = self.clock.now();
                    let routed = self.engine.message(&key, &user_id, &text, now, &mut self.out);
                    self.commit().await;
                    // The caller may have given up waiting; the message was routed all the same.
                    let _ = reply.send(routed);
                }
                Some(Cmd::Emit { key, event }) => {
                    let seq = match self.shared.store.record(&event).await {
                        Ok(seq) => Some(seq),
                        Err(error) => {
                            self.shared.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(%error, %key, event = event.name(), "could not record an event; delivering it unrecorded");
                            None
                        }
                    };
                    self.shared.deliveries.enqueue(&key, Queued { seq, event });
                }
                Some(Cmd::OpenSession { key, reply }) => {
                    let _ = reply.send(self.engine.open_session(&key));
                }
                Some(Cmd::Shutdown { reply }) => {
                    let closed = self.shutdown().await;
                    let _ = reply.send(closed);
                    return;
                }
                None => {
                    // Every handle is gone without an explicit shutdown: still end every session.
                    self.shutdown().await;
                    return;
                }
            }
        }
    }

    async fn shutdown(&mut self) -> u64 {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let before = self.engine.stats().closed(CloseReason::Shutdown);
        let now = self.clock.now();
        self.engine.shutdown(now, &mut self.out);
        self.commit().await;
        self.rx.close();
        self.engine.stats().closed(CloseReason::Shutdown) - before
    }

    /// Records the engine's output in the store, one atomic step per close (a close followed by its
    /// successor's start is one rotate), and queues what was recorded for delivery.
    async fn commit(&mut self) {
        let out = std::mem::take(&mut self.out);
        let mut events = out.into_iter().peekable();
        while let Some(event) = events.next() {
            match event {
                AnyEvent::SessionEnd(end) => {
                    let successor = matches!(events.peek(), Some(AnyEvent::SessionStart(s)) if s.previous_session_id == Some(end.session_id));
                    if successor {
                        let Some(AnyEvent::SessionStart(start)) = events.next() else { unreachable!("peeked") };
                        match self.shared.store.rotate(&end, &start).await {
                            Ok(RotateOutcome::Rotated { end: e, start: s }) => {
                                self.deliver(Some(e), AnyEvent::SessionEnd(end));
                                self.deliver(Some(s), AnyEvent::SessionStart(start));
                            }
                            Ok(RotateOutcome::Lost(lost)) => {
                                self.conflict("rotate", lost.session_id, Some(lost.reason))
                            }
                            Err(error) => {
                                self.store_error(&error, end.session_id);
                                self.deliver(None, AnyEvent::SessionEnd(end));
                                self.deliver(None, AnyEvent::SessionStart(start));
                            }
                        }
                    } else {
                        match self.shared.store.close_if_open(&end).await {
                            Ok(CloseOutcome::Closed { end: seq }) => self.deliver(Some(seq), AnyEvent::SessionEnd(end)),
                            Ok(CloseOutcome::Lost(lost)) => self.conflict("close", lost.session_id, Some(lost.reason)),
                            Err(error) => {
                                self.store_error(&error, end.session_id);
                                self.deliver(None, AnyEvent::SessionEnd(end));
                            }
                        }
                    }
                }
                AnyEvent::SessionStart(start) => match self.shared.store.open(&start).await {
                    Ok(OpenOutcome::Opened { start: seq }) => self.deliver(Some(seq), AnyEvent::SessionStart(start)),
                    Ok(OpenOutcome::KeyBusy { open }) => self.conflict("open", open, None),
                    Err(error) => {
                        self.store_error(&error, start.session_id);
                        self.deliver(None, AnyEvent::SessionStart(start));
                    }
                },
                other => {
                    // The engine emits session events only.
                    debug_assert!(false, "unexpected engine output {}", other.name());
                }
            }
        }
        self.publish();
    }

    fn deliver(&self, seq: Option<OutboxSeq>, event: AnyEvent) {
        let Some(key) = event.key().cloned() else { return };
        self.shared.deliveries.enqueue(&key, Queued { seq, event });
    }

    fn conflict(&self, step: &str, session: SessionId, reason: Option<CloseReason>) {
        self.shared.counters.store_conflicts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(step, %session, reason = reason.map(CloseReason::as_str), "the store refused a session step another writer already made");
    }

    fn store_error(&self, error: &crate::store::StoreError, session: SessionId) {
        self.shared.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, %session, "could not record a session event; delivering it unrecorded");
    }

    fn publish(&self) {
        let c = &self.shared.counters;
        let stats: &EngineStats = self.engine.stats();
        c.open_sessions.store(self.engine.open_sessions() as u64, Ordering::Relaxed);
        c.opened.store(stats.opened, Ordering::Relaxed);
        c.messages.store(stats.messages, Ordering::Relaxed);
        for (i, n) in stats.closed_by_reason.iter().enumerate() {
            c.closed[i].store(*n, Ordering::Relaxed);
        }
    }
}
