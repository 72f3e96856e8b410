//! An object-safe view of [`Store`], so the runtime is not generic over its store.

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::event::{AnyEvent, SessionEnd, SessionStart};
use crate::store::{CloseOutcome, OpenOutcome, OutboxEntry, OutboxSeq, RotateOutcome, Store, StoreError};

pub(crate) trait DynStore: Send + Sync + 'static {
    fn open<'a>(&'a self, start: &'a SessionStart) -> BoxFuture<'a, Result<OpenOutcome, StoreError>>;
    fn close_if_open<'a>(&'a self, end: &'a SessionEnd) -> BoxFuture<'a, Result<CloseOutcome, StoreError>>;
    fn rotate<'a>(
        &'a self,
        end: &'a SessionEnd,
        start: &'a SessionStart,
    ) -> BoxFuture<'a, Result<RotateOutcome, StoreError>>;
    fn record<'a>(&'a self, event: &'a AnyEvent) -> BoxFuture<'a, Result<OutboxSeq, StoreError>>;
    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>>;
    fn mark_delivered(&self, seq: OutboxSeq) -> BoxFuture<'_, Result<(), StoreError>>;
}

impl<S: Store> DynStore for S {
    fn open<'a>(&'a self, start: &'a SessionStart) -> BoxFuture<'a, Result<OpenOutcome, StoreError>> {
        Store::open(self, start).boxed()
    }

    fn close_if_open<'a>(&'a self, end: &'a SessionEnd) -> BoxFuture<'a, Result<CloseOutcome, StoreError>> {
        Store::close_if_open(self, end).boxed()
    }

    fn rotate<'a>(
        &'a self,
        end: &'a SessionEnd,
        start: &'a SessionStart,
    ) -> BoxFuture<'a, Result<RotateOutcome, StoreError>> {
        Store::rotate(self, end, start).boxed()
    }

    fn record<'a>(&'a self, event: &'a AnyEvent) -> BoxFuture<'a, Result<OutboxSeq, StoreError>> {
        Store::record(self, event).boxed()
    }

    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>> {
        Store::pending(self, limit).boxed()
    }

    fn mark_delivered(&self, seq: OutboxSeq) -> BoxFuture<'_, Result<(), StoreError>> {
        Store::mark_delivered(self, seq).boxed()
    }
}
