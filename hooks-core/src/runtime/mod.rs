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
//! # Durability and recovery
//!
//! The lifecycle task takes every input that is waiting (up to [`RuntimeConfig::max_batch`]), runs
//! it through the engine and records the result in the store with one [`Store::apply`]: with a
//! transactional store that is one commit for the whole batch (group commit). A caller of
//! [`RuntimeHandle::message`] hears back only after that commit, and events are queued for delivery
//! only after it, so nothing is delivered that the store could forget.
//!
//! On start the task first asks the store what it kept ([`Store::recover`]): events recorded and not
//! delivered are delivered again, with their ids and the next attempt number, before anything new; the
//! sessions that were open go back into the engine ([`Engine::restore`]), and those that fell due
//! while the gateway was down close at once with their real reason and due time, detected late.
//!
//! If the store fails (a full disk, a read-only file system), the batch is not recorded and nothing
//! of it is delivered; the runtime stops taking input ([`RuntimeError::Store`]) because its engine
//! no longer matches the store. [`RuntimeHandle::failed`] resolves then; restarting the process on
//! the repaired store resumes from what was committed.
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
mod failpoint;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use compact_str::CompactString;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use clock::{Clock, ManualClock, TokioClock};
use delivery::{Deliveries, Queued, Retry};
use dyn_store::DynStore;

use crate::dispatch::Dispatcher;
use crate::event::{AnyEvent, CloseReason, EventId, SessionId, SessionKey};
use crate::lifecycle::{Engine, EngineStats, Policy, Routed, SessionIds};
use crate::store::{CloseOutcome, OpenOutcome, OutboxSeq, RotateOutcome, RoutedMessage, Step, StepOutcome, Store};

/// How the runtime batches and delivers.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Delivery attempts per event before it becomes a dead letter (at least 1). Default: 1 (a failing
    /// handler is reported and the event is not retried).
    pub max_attempts: u32,
    /// The pause before the second attempt; it doubles for each later one, up to 5 seconds.
    /// Default: 100 ms.
    pub retry_backoff: Duration,
    /// The most inputs (messages, emitted events, timer firings) recorded in one store batch.
    /// Default: 256.
    pub max_batch: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { max_attempts: 1, retry_backoff: Duration::from_millis(100), max_batch: 256 }
    }
}

impl RuntimeConfig {
    /// The defaults with `max_attempts` delivery attempts per event.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// The defaults with a first retry pause of `backoff`.
    pub fn with_retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// The defaults with at most `max_batch` inputs per store batch.
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }
}

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
    /// The store failed to record a batch (the message was not recorded, nothing of the batch was
    /// delivered) and the runtime no longer takes input. The text is the store's error.
    #[error("the session store failed: {0}")]
    Store(String),
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
    /// Store operations that failed. A refused step's event was delivered without being recorded; a
    /// failed batch stops the runtime (see [`RuntimeError::Store`]).
    pub store_errors: u64,
    /// Events in the dead-letter state: found in the store at start, plus those that gave up since.
    pub dead_letters: u64,
    /// Events re-delivered at start because the previous process stopped before delivering them.
    pub redelivered: u64,
    /// Sessions found open in the store at start and put back into the engine.
    pub sessions_restored: u64,
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
    Message {
        key: SessionKey,
        user_id: CompactString,
        text: String,
        reply: oneshot::Sender<Result<Routed, RuntimeError>>,
    },
    Emit {
        key: SessionKey,
        event: AnyEvent,
        /// Answered once the event is committed (for [`RuntimeHandle::emit_committed`]).
        committed: Option<oneshot::Sender<Result<(), RuntimeError>>>,
    },
    OpenSession {
        key: SessionKey,
        reply: oneshot::Sender<Option<SessionId>>,
    },
    Shutdown {
        reply: oneshot::Sender<u64>,
    },
}

#[derive(Default)]
struct Counters {
    open_sessions: AtomicU64,
    opened: AtomicU64,
    closed: [AtomicU64; 6],
    messages: AtomicU64,
    store_conflicts: AtomicU64,
    store_errors: AtomicU64,
    redelivered: AtomicU64,
    restored: AtomicU64,
}

struct Shared {
    counters: Counters,
    deliveries: Arc<Deliveries>,
    store: Arc<dyn DynStore>,
    stopping: AtomicBool,
    /// The store failure that stopped the runtime, once there is one.
    failure: watch::Sender<Option<String>>,
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
        if let Some(failure) = self.failure() {
            return Err(RuntimeError::Store(failure));
        }
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(RuntimeError::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Message { key, user_id: CompactString::new(user_id), text: text.into(), reply };
        self.tx.send(cmd).map_err(|_| RuntimeError::ShuttingDown)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)?
    }

    /// The store failure that stopped the runtime, if one did (see [`RuntimeError::Store`]).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.borrow().clone()
    }

    /// Resolves with the store's error once a store failure has stopped the runtime (never, if none
    /// does): a gateway awaits it to stop serving and exit with the error.
    pub async fn failed(&self) -> String {
        let mut rx = self.shared.failure.subscribe();
        // The guard is dropped before any other await, so this future is `Send`.
        let failure = rx.wait_for(Option::is_some).await.map(|f| f.clone()).ok().flatten();
        match failure {
            Some(failure) => failure,
            // The sender lives in `Shared`, which this handle holds: it cannot be gone.
            None => std::future::pending().await,
        }
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
        self.tx.send(Cmd::Emit { key, event, committed: None }).map_err(|_| RuntimeError::ShuttingDown)
    }

    /// [`emit`](Self::emit), and waits until the event is committed to the store (with a durable
    /// store: it will be delivered even if the process dies now). Since inputs are committed in order,
    /// every input sent before this call is committed too: a gateway awaits its last event of a message
    /// before it answers, so an answered message has all its events recorded.
    ///
    /// # Errors
    ///
    /// As [`emit`](Self::emit); [`RuntimeError::Store`] if the store failed to record it.
    pub async fn emit_committed(&self, key: SessionKey, event: impl Into<AnyEvent>) -> Result<(), RuntimeError> {
        let event = event.into();
        if matches!(event, AnyEvent::SessionStart(_) | AnyEvent::SessionEnd(_)) {
            return Err(RuntimeError::LifecycleEvent(event.name()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Emit { key, event, committed: Some(reply) }).map_err(|_| RuntimeError::ShuttingDown)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)?
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
            dead_letters: d.dead_letters.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            sessions_restored: c.restored.load(Ordering::Relaxed),
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
        Self::start_with_config(policy, ids, store, dispatcher, clock, RuntimeConfig::default())
    }

    /// [`start_with_ids`](Self::start_with_ids) with delivery retries and batching set by `config`.
    ///
    /// Before it routes any message, the runtime recovers what `store` kept from an earlier process
    /// (see the [module docs](self#durability-and-recovery)).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start_with_config(
        policy: Policy,
        ids: SessionIds,
        store: impl Store,
        dispatcher: Arc<Dispatcher>,
        clock: impl Clock,
        config: RuntimeConfig,
    ) -> Self {
        let store: Arc<dyn DynStore> = Arc::new(store);
        let retry = Retry { max_attempts: config.max_attempts.max(1), backoff: config.retry_backoff };
        let deliveries = Arc::new(Deliveries::new(dispatcher, Arc::clone(&store), retry));
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            deliveries,
            store,
            stopping: AtomicBool::new(false),
            failure: watch::Sender::new(None),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            engine: Engine::new(policy, ids),
            clock: Box::new(clock),
            rx,
            shared: Arc::clone(&shared),
            out: Vec::new(),
            max_batch: config.max_batch.max(1),
            steps: Vec::new(),
            keys: Vec::new(),
            replies: Vec::new(),
            committed: Vec::new(),
            failed: false,
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

/// A reply to send once its batch is committed.
type Reply = (oneshot::Sender<Result<Routed, RuntimeError>>, Routed);

/// The lifecycle task: the only owner of the engine.
struct Actor {
    engine: Engine,
    clock: Box<dyn Clock>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    shared: Arc<Shared>,
    /// Reused between inputs so routing allocates no event vector.
    out: Vec<AnyEvent>,
    max_batch: usize,
    /// The batch being built: store steps, the delivery key of each `Record` step, and the replies
    /// that wait for the commit.
    steps: Vec<Step>,
    keys: Vec<Option<SessionKey>>,
    replies: Vec<Reply>,
    /// Emitters waiting for the batch's commit.
    committed: Vec<oneshot::Sender<Result<(), RuntimeError>>>,
    /// A store failure stopped the runtime: the engine no longer matches the store.
    failed: bool,
}

impl Actor {
    async fn run(mut self) {
        self.recover().await;
        loop {
            let cmd = match self.engine.next_deadline().filter(|_| !self.failed) {
                Some(deadline) => {
                    let sleep = self.clock.sleep_until(deadline);
                    tokio::select! {
                        biased;
                        cmd = self.rx.recv() => cmd,
                        () = sleep => {
                            let now = self.clock.now();
                            self.engine.advance(now, &mut self.out);
                            self.stage_engine_output();
                            self.commit().await;
                            continue;
                        }
                    }
                }
                None => self.rx.recv().await,
            };
            let Some(mut cmd) = cmd else {
                // Every handle is gone without an explicit shutdown: still end every session.
                self.shutdown().await;
                return;
            };
            // Take everything already waiting (up to the batch size) into one store batch.
            let mut taken = 0;
            let shutdown = loop {
                if let Cmd::Shutdown { reply } = cmd {
                    break Some(reply);
                }
                self.take(cmd);
                taken += 1;
                if taken >= self.max_batch {
                    break None;
                }
                match self.rx.try_recv() {
                    Ok(next) => cmd = next,
                    Err(_) => break None,
                }
            };
            self.commit().await;
            if let Some(reply) = shutdown {
                let closed = self.shutdown().await;
                let _ = reply.send(closed);
                return;
            }
        }
    }

    /// Adds one input to the batch being built.
    fn take(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Message { key, user_id, text, reply } => {
                if self.failed {
                    let _ = reply.send(Err(self.failure()));
                    return;
                }
                let now = self.clock.now();
                let routed = self.engine.message(&key, &user_id, &text, now, &mut self.out);
                self.stage_engine_output();
                let message = RoutedMessage { session_id: routed.session_id, at: routed.at, user_id, text };
                self.steps.push(Step::Message(message));
                self.keys.push(None);
                self.replies.push((reply, routed));
            }
            Cmd::Emit { key, event, committed } => {
                if self.failed {
                    tracing::warn!(%key, event = event.name(), "the store failed; dropping an emitted event");
                    if let Some(reply) = committed {
                        let _ = reply.send(Err(self.failure()));
                    }
                    return;
                }
                self.steps.push(Step::Record(event));
                self.keys.push(Some(key));
                if let Some(reply) = committed {
                    self.committed.push(reply);
                }
            }
            Cmd::OpenSession { key, reply } => {
                let _ = reply.send(self.engine.open_session(&key));
            }
            Cmd::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn failure(&self) -> RuntimeError {
        RuntimeError::Store(self.shared.failure.borrow().clone().unwrap_or_default())
    }

    /// Resumes from what the store kept: undelivered events first, then the open sessions (closing
    /// those that fell due while the gateway was down).
    async fn recover(&mut self) {
        let recovery = match self.shared.store.recover().await {
            Ok(recovery) => recovery,
            Err(error) => {
                self.fail(format!("recovering from the store: {error}"));
                return;
            }
        };
        let d = &self.shared.deliveries;
        d.dead_letters.fetch_add(recovery.dead_letters, Ordering::Relaxed);
        if recovery.dead_letters > 0 {
            tracing::warn!(
                count = recovery.dead_letters,
                "the store holds dead letters: events whose handlers kept failing, kept for inspection and retry"
            );
        }
        let redelivered = recovery.pending.len() as u64;
        for pending in recovery.pending {
            let event = pending.entry.event;
            // Events without a key (gateway events) share one queue of their own.
            let key = event.key().cloned().unwrap_or_else(|| SessionKey::chat("", ""));
            let attempt = pending.attempts.saturating_add(1).max(2);
            d.enqueue(&key, Queued { seq: Some(pending.entry.seq), event, attempt, skip: pending.done });
        }
        self.shared.counters.redelivered.store(redelivered, Ordering::Relaxed);
        let now = self.clock.now();
        let restored = self.engine.restore(recovery.sessions, now, &mut self.out) as u64;
        self.shared.counters.restored.store(restored, Ordering::Relaxed);
        if restored > 0 || redelivered > 0 {
            tracing::info!(
                sessions_restored = restored,
                closed_late = self.out.len(),
                events_redelivered = redelivered,
                "recovered from the store"
            );
        }
        self.stage_engine_output();
        self.commit().await;
    }

    async fn shutdown(&mut self) -> u64 {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if self.failed {
            // Nothing can be recorded: the sessions stay open in the store and the next start closes
            // them (late) instead.
            self.rx.close();
            return 0;
        }
        let before = self.engine.stats().closed(CloseReason::Shutdown);
        let now = self.clock.now();
        self.engine.shutdown(now, &mut self.out);
        self.stage_engine_output();
        self.commit().await;
        self.rx.close();
        self.engine.stats().closed(CloseReason::Shutdown) - before
    }

    /// Turns the engine's output into store steps: one atomic step per close (a close followed by its
    /// successor's start is one rotate).
    fn stage_engine_output(&mut self) {
        let mut events = self.out.drain(..).peekable();
        while let Some(event) = events.next() {
            match event {
                AnyEvent::SessionEnd(end) => {
                    let successor = matches!(events.peek(), Some(AnyEvent::SessionStart(s)) if s.previous_session_id == Some(end.session_id));
                    if successor {
                        let Some(AnyEvent::SessionStart(start)) = events.next() else { unreachable!("peeked") };
                        self.steps.push(Step::Rotate(end, start));
                    } else {
                        self.steps.push(Step::Close(end));
                    }
                }
                AnyEvent::SessionStart(start) => self.steps.push(Step::Open(start)),
                other => {
                    // The engine emits session events only.
                    debug_assert!(false, "unexpected engine output {}", other.name());
                    continue;
                }
            }
            self.keys.push(None);
        }
    }

    /// Records the batch in the store, then queues what was recorded for delivery and answers the
    /// messages of the batch: nothing is delivered or acknowledged before it is committed.
    async fn commit(&mut self) {
        let steps = std::mem::take(&mut self.steps);
        let keys = std::mem::take(&mut self.keys);
        let replies = std::mem::take(&mut self.replies);
        let committed = std::mem::take(&mut self.committed);
        if !steps.is_empty() {
            let outcomes = match self.shared.store.apply(steps.clone()).await {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    self.fail(error.to_string());
                    for (reply, _) in replies {
                        let _ = reply.send(Err(self.failure()));
                    }
                    for reply in committed {
                        let _ = reply.send(Err(self.failure()));
                    }
                    self.publish();
                    return;
                }
            };
            failpoint::hit("after_commit_before_delivery");
            for ((step, key), outcome) in steps.into_iter().zip(keys).zip(outcomes) {
                self.settle(step, key, outcome);
            }
        }
        for reply in committed {
            let _ = reply.send(Ok(()));
        }
        for (reply, routed) in replies {
            // The caller may have given up waiting; the message was routed all the same.
            let _ = reply.send(Ok(routed));
        }
        self.publish();
    }

    /// Queues a recorded step's events for delivery, or reports why the store refused it.
    fn settle(&self, step: Step, key: Option<SessionKey>, outcome: Result<StepOutcome, crate::store::StoreError>) {
        match (step, outcome) {
            (Step::Open(start), Ok(StepOutcome::Opened(OpenOutcome::Opened { start: seq }))) => {
                self.deliver(Some(seq), AnyEvent::SessionStart(start));
            }
            (_, Ok(StepOutcome::Opened(OpenOutcome::KeyBusy { open }))) => self.conflict("open", open, None),
            (Step::Close(end), Ok(StepOutcome::Closed(CloseOutcome::Closed { end: seq }))) => {
                self.deliver(Some(seq), AnyEvent::SessionEnd(end));
            }
            (_, Ok(StepOutcome::Closed(CloseOutcome::Lost(lost)))) => {
                self.conflict("close", lost.session_id, Some(lost.reason));
            }
            (Step::Rotate(end, start), Ok(StepOutcome::Rotated(RotateOutcome::Rotated { end: e, start: s }))) => {
                self.deliver(Some(e), AnyEvent::SessionEnd(end));
                self.deliver(Some(s), AnyEvent::SessionStart(start));
            }
            (_, Ok(StepOutcome::Rotated(RotateOutcome::Lost(lost)))) => {
                self.conflict("rotate", lost.session_id, Some(lost.reason));
            }
            (Step::Record(event), Ok(StepOutcome::Recorded(seq))) => {
                if let Some(key) = key {
                    self.shared.deliveries.enqueue(&key, Queued::new(Some(seq), event));
                }
            }
            (Step::Message(_), Ok(_)) => {}
            (step, Err(error)) => {
                self.shared.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "the store refused a step; delivering its events unrecorded");
                match step {
                    Step::Open(start) => self.deliver(None, AnyEvent::SessionStart(start)),
                    Step::Close(end) => self.deliver(None, AnyEvent::SessionEnd(end)),
                    Step::Rotate(end, start) => {
                        self.deliver(None, AnyEvent::SessionEnd(end));
                        self.deliver(None, AnyEvent::SessionStart(start));
                    }
                    Step::Record(event) => {
                        if let Some(key) = key {
                            self.shared.deliveries.enqueue(&key, Queued::new(None, event));
                        }
                    }
                    _ => {}
                }
            }
            (step, Ok(outcome)) => {
                debug_assert!(false, "outcome {outcome:?} does not match step {step:?}");
            }
        }
    }

    /// Stops taking input after a store failure.
    fn fail(&mut self, error: String) {
        self.failed = true;
        self.shared.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.stopping.store(true, Ordering::SeqCst);
        tracing::error!(%error, "the session store failed: the batch was not recorded; the runtime stops taking input");
        self.shared.failure.send_replace(Some(error));
    }

    fn deliver(&self, seq: Option<OutboxSeq>, event: AnyEvent) {
        let Some(key) = event.key().cloned() else { return };
        self.shared.deliveries.enqueue(&key, Queued::new(seq, event));
    }

    fn conflict(&self, step: &str, session: SessionId, reason: Option<CloseReason>) {
        self.shared.counters.store_conflicts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(step, %session, reason = reason.map(CloseReason::as_str), "the store refused a session step another writer already made");
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

#[cfg(test)]
mod recovery_tests;
