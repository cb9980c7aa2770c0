//! In-memory stores that enforce the same conditional-write rules as the DynamoDB stores, for
//! tests and single-process runs. Each is cheap to clone; clones share state.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    CoordinatorStore, LeaseStore, LockItem, StoreError, WorkerMetrics, WorkerMetricsStore, WorkerSignal, WorkerSignals,
    new_record_version,
};
use crate::lease::{Lease, WriteToken};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Leases in memory.
#[derive(Clone, Default, Debug)]
pub struct MemoryLeaseStore {
    leases: Arc<Mutex<BTreeMap<String, Lease>>>,
    unavailable: Arc<AtomicBool>,
}

impl MemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryLeaseStore::default()
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (or succeed again), to test how
    /// workers ride out a store outage.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    fn guard(&self) -> Result<MutexGuard<'_, BTreeMap<String, Lease>>, StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable { message: "in-memory lease store set unavailable".to_owned() });
        }
        Ok(lock(&self.leases))
    }

    /// Applies `change` to the lease if `condition` holds on it, stamping `token` (when the write
    /// carries one); returns the lease as written.
    fn conditional(
        &self,
        key: &str,
        token: Option<&WriteToken>,
        condition: impl FnOnce(&Lease) -> bool,
        change: impl FnOnce(&mut Lease),
    ) -> Result<Lease, StoreError> {
        let mut leases = self.guard()?;
        let Some(current) = leases.get_mut(key) else { return Err(StoreError::lease_lost(None)) };
        if !condition(current) {
            return Err(StoreError::lease_lost(Some(current.clone())));
        }
        change(current);
        if let Some(token) = token {
            current.last_write = Some(token.clone());
        }
        Ok(current.clone())
    }
}

fn switch_owner(lease: &mut Lease, new_owner: &str) {
    if lease.lease_owner.as_deref() != Some(new_owner) {
        lease.owner_switches_since_checkpoint += 1;
    }
    lease.lease_owner = Some(new_owner.to_owned());
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn create_lease_if_not_exists(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut leases = self.guard()?;
        if leases.contains_key(&lease.lease_key) {
            return Ok(false);
        }
        leases.insert(lease.lease_key.clone(), lease.clone());
        Ok(true)
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, StoreError> {
        Ok(self.guard()?.get(lease_key).cloned())
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.guard()?.values().cloned().collect())
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.guard()?.values().filter(|l| l.is_owned_by(owner)).map(|l| l.lease_key.clone()).collect())
    }

    async fn renew_lease(
        &self,
        expected: &Lease,
        throughput_kbps: Option<f64>,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        self.conditional(
            &expected.lease_key,
            Some(token),
            |l| {
                l.lease_counter == expected.lease_counter
                    && (l.checkpoint_owner.is_none() || l.checkpoint_owner == expected.checkpoint_owner)
            },
            |l| {
                l.lease_counter += 1;
                if throughput_kbps.is_some() {
                    l.throughput_kbps = throughput_kbps;
                }
            },
        )
    }

    async fn take_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        self.conditional(
            &expected.lease_key,
            Some(token),
            |l| l.lease_counter == expected.lease_counter,
            |l| {
                switch_owner(l, new_owner);
                l.checkpoint_owner = None;
                l.lease_counter += 1;
            },
        )
    }

    async fn assign_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        self.conditional(
            &expected.lease_key,
            Some(token),
            |l| l.lease_owner == expected.lease_owner && l.checkpoint_owner == expected.checkpoint_owner,
            |l| {
                switch_owner(l, new_owner);
                l.checkpoint_owner = None;
                l.lease_counter += 1;
            },
        )
    }

    async fn initiate_handoff(
        &self,
        expected: &Lease,
        next_owner: &str,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        self.conditional(
            &expected.lease_key,
            Some(token),
            |l| l.lease_owner.is_some() && l.lease_owner == expected.lease_owner && l.checkpoint_owner.is_none(),
            |l| {
                l.checkpoint_owner = l.lease_owner.take();
                l.lease_owner = Some(next_owner.to_owned());
            },
        )
    }

    async fn evict_lease(&self, expected: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        self.conditional(
            &expected.lease_key,
            Some(token),
            |l| l.lease_owner == expected.lease_owner && l.checkpoint_owner == expected.checkpoint_owner,
            |l| {
                l.lease_owner = None;
                l.checkpoint_owner = None;
                l.lease_counter += 1;
            },
        )
    }

    async fn update_lease(&self, updated: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        self.conditional(
            &updated.lease_key,
            Some(token),
            |l| l.lease_counter == updated.lease_counter && l.lease_owner == updated.lease_owner,
            |l| {
                l.checkpoint = updated.checkpoint.clone();
                l.pending_checkpoint = updated.pending_checkpoint.clone();
                l.pending_checkpoint_state = updated.pending_checkpoint_state.clone();
                l.owner_switches_since_checkpoint = updated.owner_switches_since_checkpoint;
                l.child_shard_ids = updated.child_shard_ids.clone();
                l.hash_key_range = updated.hash_key_range;
                l.lease_counter += 1;
            },
        )
    }

    async fn update_lease_meta(&self, lease: &Lease) -> Result<(), StoreError> {
        self.conditional(
            &lease.lease_key,
            None,
            |_| true,
            |l| {
                l.child_shard_ids = lease.child_shard_ids.clone();
                l.hash_key_range = lease.hash_key_range;
            },
        )
        .map(|_| ())
    }

    async fn delete_lease(&self, lease_key: &str) -> Result<(), StoreError> {
        self.guard()?.remove(lease_key);
        Ok(())
    }
}

/// The coordinator-state table in memory.
#[derive(Clone, Default, Debug)]
pub struct MemoryCoordinatorStore {
    locks: Arc<Mutex<HashMap<String, LockItem>>>,
}

impl MemoryCoordinatorStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryCoordinatorStore::default()
    }
}

#[async_trait]
impl CoordinatorStore for MemoryCoordinatorStore {
    async fn get_lock(&self, key: &str) -> Result<Option<LockItem>, StoreError> {
        Ok(lock(&self.locks).get(key).cloned())
    }

    async fn acquire_lock(
        &self,
        key: &str,
        owner: &str,
        lease_duration: Duration,
        expected: Option<&LockItem>,
    ) -> Result<LockItem, StoreError> {
        let mut locks = lock(&self.locks);
        let current = locks.get(key);
        let matches = match (current, expected) {
            (None, None) => true,
            (Some(c), Some(e)) => c.record_version == e.record_version,
            _ => false,
        };
        if !matches {
            return Err(StoreError::LockLost { current: current.cloned() });
        }
        let item = LockItem {
            key: key.to_owned(),
            owner: owner.to_owned(),
            record_version: new_record_version(),
            lease_duration,
            is_released: false,
            holder_fences_leases: true,
        };
        locks.insert(key.to_owned(), item.clone());
        Ok(item)
    }

    async fn heartbeat_lock(&self, held: &LockItem) -> Result<LockItem, StoreError> {
        let mut locks = lock(&self.locks);
        match locks.get_mut(&held.key) {
            Some(c) if c.owner == held.owner && c.record_version == held.record_version && !c.is_released => {
                c.record_version = new_record_version();
                Ok(c.clone())
            }
            other => Err(StoreError::LockLost { current: other.map(|c| c.clone()) }),
        }
    }

    async fn release_lock(&self, held: &LockItem) -> Result<(), StoreError> {
        let mut locks = lock(&self.locks);
        match locks.get(&held.key) {
            Some(c) if c.record_version == held.record_version => {
                locks.remove(&held.key);
                Ok(())
            }
            other => Err(StoreError::LockLost { current: other.cloned() }),
        }
    }
}

/// The worker-metrics table in memory.
#[derive(Clone, Default, Debug)]
pub struct MemoryWorkerMetricsStore {
    metrics: Arc<Mutex<BTreeMap<String, WorkerMetrics>>>,
}

impl MemoryWorkerMetricsStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryWorkerMetricsStore::default()
    }
}

#[async_trait]
impl WorkerMetricsStore for MemoryWorkerMetricsStore {
    async fn put_worker_metrics(&self, metrics: &WorkerMetrics) -> Result<(), StoreError> {
        let row = WorkerMetrics { heartbeat: None, signals: WorkerSignals::default(), ..metrics.clone() };
        lock(&self.metrics).insert(metrics.worker_id.clone(), row);
        Ok(())
    }

    async fn list_worker_metrics(&self) -> Result<Vec<WorkerMetrics>, StoreError> {
        Ok(lock(&self.metrics).values().cloned().collect())
    }

    async fn get_worker_metrics(&self, worker_id: &str) -> Result<Option<WorkerMetrics>, StoreError> {
        Ok(lock(&self.metrics).get(worker_id).cloned())
    }

    async fn heartbeat_worker(&self, row: &WorkerMetrics, replaces: Option<&str>) -> Result<WorkerMetrics, StoreError> {
        let Some(heartbeat) = &row.heartbeat else {
            return Err(StoreError::Backend { message: "a heartbeat row needs a heartbeat".into() });
        };
        let mut metrics = lock(&self.metrics);
        let signals = match metrics.get(&row.worker_id) {
            None => WorkerSignals::default(),
            Some(current) => match &current.heartbeat {
                None => current.signals.clone(),
                Some(h) if h.incarnation == heartbeat.incarnation || Some(h.incarnation.as_str()) == replaces => {
                    current.signals.clone()
                }
                Some(_) => return Err(StoreError::HeartbeatRowTaken { current: Some(Box::new(current.clone())) }),
            },
        };
        let written = WorkerMetrics { signals, ..row.clone() };
        metrics.insert(row.worker_id.clone(), written.clone());
        Ok(written)
    }

    async fn signal_worker(&self, worker_id: &str, signal: &WorkerSignal) -> Result<(), StoreError> {
        let mut metrics = lock(&self.metrics);
        let Some(row) = metrics.get_mut(worker_id).filter(|r| r.heartbeat.is_some()) else {
            return Err(StoreError::MetricsConditionFailed);
        };
        match signal {
            WorkerSignal::Assignments { assigned_leases } => {
                row.signals.assignment_version += 1;
                row.signals.assigned_leases = *assigned_leases;
            }
            WorkerSignal::Standby(stamp) => row.signals.standby = stamp.clone(),
        }
        Ok(())
    }

    async fn delete_worker_metrics(&self, worker_id: &str, expected_last_update_secs: u64) -> Result<(), StoreError> {
        let mut metrics = lock(&self.metrics);
        match metrics.get(worker_id) {
            Some(m) if m.last_update_secs == expected_last_update_secs => {
                metrics.remove(worker_id);
                Ok(())
            }
            _ => Err(StoreError::MetricsConditionFailed),
        }
    }
}
