//! An object-safe view of [`Store`], so the runtime is not generic over its store.

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::store::{DeliveryRecord, OutboxEntry, Recovery, Step, StepOutcome, Store, StoreError};

pub(crate) trait DynStore: Send + Sync + 'static {
    fn apply(&self, steps: Vec<Step>) -> BoxFuture<'_, Result<Vec<Result<StepOutcome, StoreError>>, StoreError>>;
    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>>;
    fn record_delivery<'a>(&'a self, record: &'a DeliveryRecord<'a>) -> BoxFuture<'a, Result<(), StoreError>>;
    fn recover(&self) -> BoxFuture<'_, Result<Recovery, StoreError>>;
}

impl<S: Store> DynStore for S {
    fn apply(&self, steps: Vec<Step>) -> BoxFuture<'_, Result<Vec<Result<StepOutcome, StoreError>>, StoreError>> {
        Store::apply(self, steps).boxed()
    }

    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>> {
        Store::pending(self, limit).boxed()
    }

    fn record_delivery<'a>(&'a self, record: &'a DeliveryRecord<'a>) -> BoxFuture<'a, Result<(), StoreError>> {
        Store::record_delivery(self, record).boxed()
    }

    fn recover(&self) -> BoxFuture<'_, Result<Recovery, StoreError>> {
        Store::recover(self).boxed()
    }
}
