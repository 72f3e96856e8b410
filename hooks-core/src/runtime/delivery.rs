//! Per-key delivery: one queue and at most one worker task per session key, so a key's events reach
//! the handlers in order while different keys are delivered in parallel.
//!
//! A handler that fails is called again (only it: the handlers that succeeded are skipped) after a
//! growing pause, up to the configured number of attempts; then the event becomes a dead letter in the
//! store, with the errors, and the key's later events go on. Each attempt is recorded per handler.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::dyn_store::DynStore;
use super::failpoint;
use crate::dispatch::Dispatcher;
use crate::event::{AnyEvent, SessionKey};
use crate::store::{DeliveryRecord, HandlerResult, OutboxSeq};

/// An event waiting for delivery, with its outbox position (`None` if the store failed to record it).
pub(crate) struct Queued {
    pub(crate) seq: Option<OutboxSeq>,
    pub(crate) event: AnyEvent,
    /// The attempt this delivery is (above 1 for an event re-delivered after a restart).
    pub(crate) attempt: u32,
    /// Handlers that already handled the event in an earlier process.
    pub(crate) skip: Vec<String>,
}

impl Queued {
    /// A first delivery.
    pub(crate) fn new(seq: Option<OutboxSeq>, event: AnyEvent) -> Self {
        Self { seq, event, attempt: 1, skip: Vec::new() }
    }
}

/// How failing handlers are retried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retry {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Duration,
}

struct KeyQueue {
    items: VecDeque<Queued>,
    worker: Option<AbortHandle>,
}

pub(crate) struct Deliveries {
    dispatcher: Arc<Dispatcher>,
    store: Arc<dyn DynStore>,
    retry: Retry,
    queues: Mutex<HashMap<SessionKey, KeyQueue>>,
    /// Events queued or being delivered.
    pending: AtomicUsize,
    drained: Notify,
    pub(crate) delivered: AtomicU64,
    pub(crate) handler_failures: AtomicU64,
    /// Events that gave up (since start, plus those found in the store at start).
    pub(crate) dead_letters: AtomicU64,
}

impl Deliveries {
    pub(crate) fn new(dispatcher: Arc<Dispatcher>, store: Arc<dyn DynStore>, retry: Retry) -> Self {
        Self {
            dispatcher,
            store,
            retry,
            queues: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            drained: Notify::new(),
            delivered: AtomicU64::new(0),
            handler_failures: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionKey, KeyQueue>> {
        // No code panics while holding this lock (no handler runs under it).
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events queued or being delivered.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Queues `item` behind the key's earlier events; starts the key's worker if it has none. Never
    /// waits for a handler.
    pub(crate) fn enqueue(self: &Arc<Self>, key: &SessionKey, item: Queued) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let mut queues = self.lock();
        if let Some(queue) = queues.get_mut(key) {
            queue.items.push_back(item);
            return;
        }
        let worker = tokio::spawn(Arc::clone(self).run(key.clone()));
        queues.insert(key.clone(), KeyQueue { items: VecDeque::from([item]), worker: Some(worker.abort_handle()) });
    }

    /// Delivers the key's events one after another until its queue is empty. The queue stays in the map
    /// while an event is being delivered, so later events of the key line up behind it instead of
    /// starting a second worker.
    async fn run(self: Arc<Self>, key: SessionKey) {
        loop {
            let item = {
                let mut queues = self.lock();
                let Some(queue) = queues.get_mut(&key) else { return };
                match queue.items.pop_front() {
                    Some(item) => item,
                    None => {
                        queues.remove(&key);
                        return;
                    }
                }
            };
            self.deliver(item).await;
            self.delivered.fetch_add(1, Ordering::Relaxed);
            if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.drained.notify_waiters();
            }
        }
    }

    /// Delivers one event, retrying its failing handlers, and records each attempt.
    async fn deliver(&self, item: Queued) {
        let Queued { seq, event, mut attempt, mut skip } = item;
        let mut pause = self.retry.backoff;
        loop {
            let outcomes = self.dispatcher.deliver_any_detailed(&event, attempt, &skip).await;
            failpoint::hit("after_delivery_before_record");
            let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
            self.handler_failures.fetch_add(failed as u64, Ordering::Relaxed);
            let dead = failed > 0 && attempt >= self.retry.max_attempts;
            if let Some(seq) = seq {
                let results: Vec<HandlerResult> = outcomes
                    .iter()
                    .map(|o| HandlerResult { handler: o.hook.to_string(), error: o.error.clone() })
                    .collect();
                let record = DeliveryRecord { seq, attempt, results: &results, dead };
                if let Err(error) = self.store.record_delivery(&record).await {
                    // The event will be delivered again after a restart; handlers dedupe by event_id.
                    tracing::warn!(%error, event_id = %event.event_id(), "could not record a delivery");
                }
            }
            if dead {
                self.dead_letters.fetch_add(1, Ordering::Relaxed);
                let errors: Vec<String> =
                    outcomes.iter().filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.hook))).collect();
                tracing::error!(
                    event = event.name(),
                    event_id = %event.event_id(),
                    seq = seq.map(|s| s.0),
                    attempts = attempt,
                    errors = %errors.join("; "),
                    "delivery gave up: the event is a dead letter"
                );
            }
            if failed == 0 || dead {
                return;
            }
            skip.extend(outcomes.into_iter().filter(|o| o.error.is_none()).map(|o| o.hook.to_string()));
            attempt += 1;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Waits until nothing is queued or being delivered.
    pub(crate) async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops every worker (after the drain time ran out); what they had not delivered stays in the
    /// store's outbox.
    pub(crate) fn abort_all(&self) {
        let mut queues = self.lock();
        for (_, queue) in queues.drain() {
            if let Some(worker) = queue.worker {
                worker.abort();
            }
        }
    }
}
