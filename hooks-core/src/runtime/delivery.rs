//! Per-key delivery: one queue and at most one worker task per session key, so a key's events reach
//! the handlers in order while different keys are delivered in parallel.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::dyn_store::DynStore;
use crate::dispatch::Dispatcher;
use crate::event::{AnyEvent, SessionKey};
use crate::store::OutboxSeq;

/// An event waiting for delivery, with its outbox position (`None` if the store failed to record it).
pub(crate) struct Queued {
    pub(crate) seq: Option<OutboxSeq>,
    pub(crate) event: AnyEvent,
}

struct KeyQueue {
    items: VecDeque<Queued>,
    worker: Option<AbortHandle>,
}

pub(crate) struct Deliveries {
    dispatcher: Arc<Dispatcher>,
    store: Arc<dyn DynStore>,
    queues: Mutex<HashMap<SessionKey, KeyQueue>>,
    /// Events queued or being delivered.
    pending: AtomicUsize,
    drained: Notify,
    pub(crate) delivered: AtomicU64,
    pub(crate) handler_failures: AtomicU64,
}

impl Deliveries {
    pub(crate) fn new(dispatcher: Arc<Dispatcher>, store: Arc<dyn DynStore>) -> Self {
        Self {
            dispatcher,
            store,
            queues: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            drained: Notify::new(),
            delivered: AtomicU64::new(0),
            handler_failures: AtomicU64::new(0),
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
            let report = self.dispatcher.deliver_any(&item.event).await;
            if let Some(seq) = item.seq
                && let Err(error) = self.store.mark_delivered(seq).await
            {
                // The event will be delivered again after a restart; handlers dedupe by event_id.
                tracing::warn!(%error, event_id = %item.event.event_id(), "could not mark an event delivered");
            }
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.handler_failures.fetch_add(report.failed as u64, Ordering::Relaxed);
            if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.drained.notify_waiters();
            }
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
