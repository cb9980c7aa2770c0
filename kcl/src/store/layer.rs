//! [`Layered`]: a store wrapped in a [`StoreLayer`] that sees every call on its way to the store
//! — the mechanism behind [`WithFaults`](super::faults::WithFaults) and
//! [`WithTimeout`](super::deadline::WithTimeout). A `Layered` store implements whichever of
//! [`LeaseStore`], [`CoordinatorStore`] and [`WorkerMetricsStore`] the wrapped store does.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use super::{CoordinatorStore, LeaseStore, LockItem, StoreError, WorkerMetrics, WorkerMetricsStore, WorkerSignal};
use crate::lease::{Lease, WriteToken};

/// The store calls a [`StoreLayer`] sees (and a [`StoreFaultRule`](super::faults::StoreFaultRule) can target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOperation {
    /// Every call of every store.
    Any,
    /// Every lease-store call.
    AnyLease,
    /// Every coordinator-state (leader lock) call.
    AnyLock,
    /// Every worker-metrics call.
    AnyWorkerMetrics,
    /// [`LeaseStore::create_lease_if_not_exists`].
    CreateLease,
    /// [`LeaseStore::get_lease`].
    GetLease,
    /// [`LeaseStore::list_leases`].
    ListLeases,
    /// [`LeaseStore::list_lease_keys_owned_by`].
    ListOwnedLeaseKeys,
    /// [`LeaseStore::renew_lease`].
    RenewLease,
    /// [`LeaseStore::take_lease`].
    TakeLease,
    /// [`LeaseStore::assign_lease`].
    AssignLease,
    /// [`LeaseStore::initiate_handoff`].
    InitiateHandoff,
    /// [`LeaseStore::evict_lease`].
    EvictLease,
    /// [`LeaseStore::update_lease`] (checkpoints).
    UpdateLease,
    /// [`LeaseStore::update_lease_meta`].
    UpdateLeaseMeta,
    /// [`LeaseStore::delete_lease`].
    DeleteLease,
    /// [`CoordinatorStore::get_lock`].
    GetLock,
    /// [`CoordinatorStore::acquire_lock`].
    AcquireLock,
    /// [`CoordinatorStore::heartbeat_lock`].
    HeartbeatLock,
    /// [`CoordinatorStore::release_lock`].
    ReleaseLock,
    /// [`WorkerMetricsStore::put_worker_metrics`].
    PutWorkerMetrics,
    /// [`WorkerMetricsStore::list_worker_metrics`].
    ListWorkerMetrics,
    /// [`WorkerMetricsStore::get_worker_metrics`].
    GetWorkerMetrics,
    /// [`WorkerMetricsStore::heartbeat_worker`].
    HeartbeatWorker,
    /// [`WorkerMetricsStore::signal_worker`].
    SignalWorker,
    /// [`WorkerMetricsStore::delete_worker_metrics`].
    DeleteWorkerMetrics,
}

impl StoreOperation {
    /// The operation's name, as error messages and logs give it.
    pub fn name(self) -> &'static str {
        match self {
            StoreOperation::Any => "any",
            StoreOperation::AnyLease => "any lease call",
            StoreOperation::AnyLock => "any lock call",
            StoreOperation::AnyWorkerMetrics => "any worker-metrics call",
            StoreOperation::CreateLease => "create_lease_if_not_exists",
            StoreOperation::GetLease => "get_lease",
            StoreOperation::ListLeases => "list_leases",
            StoreOperation::ListOwnedLeaseKeys => "list_lease_keys_owned_by",
            StoreOperation::RenewLease => "renew_lease",
            StoreOperation::TakeLease => "take_lease",
            StoreOperation::AssignLease => "assign_lease",
            StoreOperation::InitiateHandoff => "initiate_handoff",
            StoreOperation::EvictLease => "evict_lease",
            StoreOperation::UpdateLease => "update_lease",
            StoreOperation::UpdateLeaseMeta => "update_lease_meta",
            StoreOperation::DeleteLease => "delete_lease",
            StoreOperation::GetLock => "get_lock",
            StoreOperation::AcquireLock => "acquire_lock",
            StoreOperation::HeartbeatLock => "heartbeat_lock",
            StoreOperation::ReleaseLock => "release_lock",
            StoreOperation::PutWorkerMetrics => "put_worker_metrics",
            StoreOperation::ListWorkerMetrics => "list_worker_metrics",
            StoreOperation::GetWorkerMetrics => "get_worker_metrics",
            StoreOperation::HeartbeatWorker => "heartbeat_worker",
            StoreOperation::SignalWorker => "signal_worker",
            StoreOperation::DeleteWorkerMetrics => "delete_worker_metrics",
        }
    }

    fn group(self) -> StoreOperation {
        use StoreOperation::*;
        match self {
            CreateLease | GetLease | ListLeases | ListOwnedLeaseKeys | RenewLease | TakeLease | AssignLease
            | InitiateHandoff | EvictLease | UpdateLease | UpdateLeaseMeta | DeleteLease => AnyLease,
            GetLock | AcquireLock | HeartbeatLock | ReleaseLock => AnyLock,
            PutWorkerMetrics | ListWorkerMetrics | GetWorkerMetrics | HeartbeatWorker | SignalWorker
            | DeleteWorkerMetrics => AnyWorkerMetrics,
            group => group,
        }
    }

    /// Whether a rule for `self` applies to a call of `call`.
    pub(crate) fn covers(self, call: StoreOperation) -> bool {
        self == StoreOperation::Any || self == call || self == call.group()
    }
}

/// Something that runs around every call of a [`Layered`] store: it may delay the call, refuse it,
/// drop it, or change its result.
pub trait StoreLayer: Send + Sync {
    /// Runs `call` (the wrapped store's call of `operation` about `key`: a lease key, a lock key
    /// or a worker id) and answers in its place.
    fn call<T: Send>(
        &self,
        operation: StoreOperation,
        key: Option<&str>,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> impl Future<Output = Result<T, StoreError>> + Send;
}

/// A store whose calls pass through a [`StoreLayer`].
#[derive(Clone, Debug)]
pub struct Layered<S, L> {
    inner: S,
    layer: L,
}

impl<S, L> Layered<S, L> {
    /// Wraps `inner` in `layer`.
    pub fn new(inner: S, layer: L) -> Self {
        Layered { inner, layer }
    }

    /// The layer (for a fault-injecting store, its rules).
    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: LeaseStore, L: StoreLayer> LeaseStore for Layered<S, L> {
    async fn create_lease_if_not_exists(&self, lease: &Lease) -> Result<bool, StoreError> {
        let key = Some(lease.lease_key.as_str());
        self.layer.call(StoreOperation::CreateLease, key, self.inner.create_lease_if_not_exists(lease)).await
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, StoreError> {
        self.layer.call(StoreOperation::GetLease, Some(lease_key), self.inner.get_lease(lease_key)).await
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.layer.call(StoreOperation::ListLeases, None, self.inner.list_leases()).await
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        let call = self.inner.list_lease_keys_owned_by(owner);
        self.layer.call(StoreOperation::ListOwnedLeaseKeys, Some(owner), call).await
    }

    async fn renew_lease(
        &self,
        expected: &Lease,
        throughput_kbps: Option<f64>,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        let call = self.inner.renew_lease(expected, throughput_kbps, token);
        self.layer.call(StoreOperation::RenewLease, Some(expected.lease_key.as_str()), call).await
    }

    async fn take_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        let call = self.inner.take_lease(expected, new_owner, token);
        self.layer.call(StoreOperation::TakeLease, Some(expected.lease_key.as_str()), call).await
    }

    async fn assign_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        let call = self.inner.assign_lease(expected, new_owner, token);
        self.layer.call(StoreOperation::AssignLease, Some(expected.lease_key.as_str()), call).await
    }

    async fn initiate_handoff(
        &self,
        expected: &Lease,
        next_owner: &str,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        let call = self.inner.initiate_handoff(expected, next_owner, token);
        self.layer.call(StoreOperation::InitiateHandoff, Some(expected.lease_key.as_str()), call).await
    }

    async fn evict_lease(&self, expected: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        let call = self.inner.evict_lease(expected, token);
        self.layer.call(StoreOperation::EvictLease, Some(expected.lease_key.as_str()), call).await
    }

    async fn update_lease(&self, updated: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        let call = self.inner.update_lease(updated, token);
        self.layer.call(StoreOperation::UpdateLease, Some(updated.lease_key.as_str()), call).await
    }

    async fn update_lease_meta(&self, lease: &Lease) -> Result<(), StoreError> {
        let call = self.inner.update_lease_meta(lease);
        self.layer.call(StoreOperation::UpdateLeaseMeta, Some(lease.lease_key.as_str()), call).await
    }

    async fn delete_lease(&self, lease_key: &str) -> Result<(), StoreError> {
        self.layer.call(StoreOperation::DeleteLease, Some(lease_key), self.inner.delete_lease(lease_key)).await
    }
}

#[async_trait]
impl<S: CoordinatorStore, L: StoreLayer> CoordinatorStore for Layered<S, L> {
    async fn get_lock(&self, key: &str) -> Result<Option<LockItem>, StoreError> {
        self.layer.call(StoreOperation::GetLock, Some(key), self.inner.get_lock(key)).await
    }

    async fn acquire_lock(
        &self,
        key: &str,
        owner: &str,
        lease_duration: Duration,
        expected: Option<&LockItem>,
    ) -> Result<LockItem, StoreError> {
        let call = self.inner.acquire_lock(key, owner, lease_duration, expected);
        self.layer.call(StoreOperation::AcquireLock, Some(key), call).await
    }

    async fn heartbeat_lock(&self, held: &LockItem) -> Result<LockItem, StoreError> {
        self.layer.call(StoreOperation::HeartbeatLock, Some(held.key.as_str()), self.inner.heartbeat_lock(held)).await
    }

    async fn release_lock(&self, held: &LockItem) -> Result<(), StoreError> {
        self.layer.call(StoreOperation::ReleaseLock, Some(held.key.as_str()), self.inner.release_lock(held)).await
    }
}

#[async_trait]
impl<S: WorkerMetricsStore, L: StoreLayer> WorkerMetricsStore for Layered<S, L> {
    async fn put_worker_metrics(&self, metrics: &WorkerMetrics) -> Result<(), StoreError> {
        let call = self.inner.put_worker_metrics(metrics);
        self.layer.call(StoreOperation::PutWorkerMetrics, Some(metrics.worker_id.as_str()), call).await
    }

    async fn list_worker_metrics(&self) -> Result<Vec<WorkerMetrics>, StoreError> {
        self.layer.call(StoreOperation::ListWorkerMetrics, None, self.inner.list_worker_metrics()).await
    }

    async fn get_worker_metrics(&self, worker_id: &str) -> Result<Option<WorkerMetrics>, StoreError> {
        let call = self.inner.get_worker_metrics(worker_id);
        self.layer.call(StoreOperation::GetWorkerMetrics, Some(worker_id), call).await
    }

    async fn heartbeat_worker(&self, row: &WorkerMetrics, replaces: Option<&str>) -> Result<WorkerMetrics, StoreError> {
        let call = self.inner.heartbeat_worker(row, replaces);
        self.layer.call(StoreOperation::HeartbeatWorker, Some(row.worker_id.as_str()), call).await
    }

    async fn signal_worker(&self, worker_id: &str, signal: &WorkerSignal) -> Result<(), StoreError> {
        let call = self.inner.signal_worker(worker_id, signal);
        self.layer.call(StoreOperation::SignalWorker, Some(worker_id), call).await
    }

    async fn delete_worker_metrics(&self, worker_id: &str, expected_last_update_secs: u64) -> Result<(), StoreError> {
        let call = self.inner.delete_worker_metrics(worker_id, expected_last_update_secs);
        self.layer.call(StoreOperation::DeleteWorkerMetrics, Some(worker_id), call).await
    }
}
