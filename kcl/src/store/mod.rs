//! The three stores a fleet of workers coordinates through, as traits with in-memory
//! implementations ([`memory`]); `kcl-ddb-store` implements them over DynamoDB.
//!
//! * [`LeaseStore`] — one lease per shard, every write conditional (optimistic locking on
//!   `leaseCounter`, or on the owner for the leader's assignments).
//! * [`CoordinatorStore`] — the leader lock: an item with an owner and a record version that the
//!   owner rewrites on every heartbeat; another worker may take it only after it saw the same
//!   version unchanged for the lock's lease duration on its own clock.
//! * [`WorkerMetricsStore`] — each worker's reported load, read by the leader to assign leases.
//!
//! A write whose condition no longer holds fails with [`StoreError::LeaseLost`] (or
//! [`StoreError::LockLost`]) carrying the item as it is now, when the backend can say.
//!
//! Every lease write carries a [`WriteToken`] that the store puts on the item, so a writer whose
//! reply was lost can later prove from the item whether its write landed
//! ([`Lease::shows_write`]).
//!
//! * [`faults`] — a fault-injecting wrapper for any store (latency, hangs, errors, throttling,
//!   lost replies), for tests of workers and processors under a failing store.
//! * [`deadline`] — the per-call timeout the scheduler puts around every store it is given.
//! * [`layer`] — the wrapper both are built on.

pub mod memory;

pub mod conformance;
pub mod deadline;
pub mod faults;
pub mod layer;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::lease::{Lease, WriteToken};

/// Why a store call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A lease write's condition failed: another worker or the leader changed the lease.
    #[error("lease condition failed; the lease changed{}", current.as_ref().map(|l| format!(" (now owner {:?}, counter {})", l.lease_owner, l.lease_counter)).unwrap_or_default())]
    LeaseLost {
        /// The lease as it is now, if known (`None` also when it was deleted).
        current: Option<Box<Lease>>,
    },
    /// A lock write's condition failed: someone else holds or changed the lock.
    #[error("lock condition failed")]
    LockLost {
        /// The lock as it is now, if known.
        current: Option<LockItem>,
    },
    /// A worker-metrics write's condition failed.
    #[error("worker metrics condition failed")]
    MetricsConditionFailed,
    /// A heartbeat was refused: the worker's row carries another process's incarnation (a
    /// restart, or a second process with the same worker id, took the row over).
    #[error("the worker's heartbeat row belongs to another process{}", current.as_ref().and_then(|r| r.heartbeat.as_ref()).map(|h| format!(" (incarnation {})", h.incarnation)).unwrap_or_default())]
    HeartbeatRowTaken {
        /// The row as it is now, if known.
        current: Option<Box<WorkerMetrics>>,
    },
    /// The backend throttled the call; retry with backoff.
    #[error("store throttled: {message}")]
    Throttled {
        /// What the backend said.
        message: String,
    },
    /// The backend is unreachable or failed transiently; retry with backoff. A write that fails
    /// so may still have landed (its reply was lost).
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
    },
    /// The call did not answer in time and was abandoned; a write may still land later.
    #[error("store call {operation} did not answer within {after:?}")]
    TimedOut {
        /// The store operation.
        operation: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// A table exists with a schema other than the one expected.
    #[error("table {table} has an unexpected schema: {details}")]
    SchemaMismatch {
        /// The table.
        table: String,
        /// What differs.
        details: String,
    },
    /// An item could not be read as a lease, lock or metrics entry.
    #[error("malformed item in {table}: {details}")]
    Malformed {
        /// The table.
        table: String,
        /// What is wrong.
        details: String,
    },
    /// Any other backend error (not retryable: permissions, validation).
    #[error("store error: {message}")]
    Backend {
        /// What the backend said.
        message: String,
    },
}

impl StoreError {
    /// Whether retrying the same call later can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Throttled { .. } | StoreError::Unavailable { .. } | StoreError::TimedOut { .. })
    }

    /// Whether a conditional write lost (the caller's view of the item is stale).
    pub fn is_condition_failure(&self) -> bool {
        matches!(
            self,
            StoreError::LeaseLost { .. }
                | StoreError::LockLost { .. }
                | StoreError::MetricsConditionFailed
                | StoreError::HeartbeatRowTaken { .. }
        )
    }

    /// A [`StoreError::LeaseLost`] with the current item.
    pub fn lease_lost(current: Option<Lease>) -> Self {
        StoreError::LeaseLost { current: current.map(Box::new) }
    }
}

/// Leases: one per shard, shared by every worker of an application.
///
/// Every write is conditional. Writes that change a lease in place take the caller's last view
/// of it (`expected`) and succeed only if the item still matches it; they return the lease as
/// written (with its new counter). Each such write also stores the caller's `token` as the item's
/// [`last_write`](Lease::last_write); an implementation that retries internally must accept a
/// condition failure as its own earlier attempt only when the item
/// [`shows_write`](Lease::shows_write) that token and counter.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Creates the lease unless one with its key exists; `Ok(false)` when it existed.
    async fn create_lease_if_not_exists(&self, lease: &Lease) -> Result<bool, StoreError>;

    /// Reads one lease (strongly consistent).
    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, StoreError>;

    /// Every lease (the leader's scan).
    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// Keys of the leases `owner` holds (the worker's discovery query; may lag behind writes).
    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError>;

    /// Heartbeat: bumps the counter, records throughput. Requires the counter to equal
    /// `expected.lease_counter`, and no handoff to have started unless `expected` already shows
    /// it (`checkpoint_owner` equal).
    async fn renew_lease(
        &self,
        expected: &Lease,
        throughput_kbps: Option<f64>,
        token: &WriteToken,
    ) -> Result<Lease, StoreError>;

    /// Takes the lease for `new_owner`: requires the counter to equal `expected.lease_counter`.
    /// Clears any handoff, bumps the counter, counts an owner switch if the owner changes.
    async fn take_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError>;

    /// The leader's assignment: requires owner and checkpoint owner to equal `expected`'s (or be
    /// absent when `expected`'s are). Sets the owner, clears any handoff, bumps the counter.
    async fn assign_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError>;

    /// Starts a graceful handoff to `next_owner`: requires the owner to equal `expected`'s and no
    /// handoff in progress. Sets owner = next, checkpoint owner = current; the counter is left
    /// alone so the current owner's renewals keep succeeding until it lets go.
    async fn initiate_handoff(
        &self,
        expected: &Lease,
        next_owner: &str,
        token: &WriteToken,
    ) -> Result<Lease, StoreError>;

    /// Removes the owner (and any handoff): same expectations as [`assign_lease`](Self::assign_lease).
    async fn evict_lease(&self, expected: &Lease, token: &WriteToken) -> Result<Lease, StoreError>;

    /// Writes `updated`'s checkpoint, pending checkpoint, owner switches, child shards and hash
    /// range: requires the counter to equal `updated.lease_counter` and the owner to equal
    /// `updated.lease_owner`. Bumps the counter.
    async fn update_lease(&self, updated: &Lease, token: &WriteToken) -> Result<Lease, StoreError>;

    /// Records child shards and the hash range without touching ownership or the counter;
    /// requires the lease to exist.
    async fn update_lease_meta(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Deletes the lease (after its shard ended and its children started).
    async fn delete_lease(&self, lease_key: &str) -> Result<(), StoreError>;
}

/// A lock item in the coordinator-state table (the leader lock is the item keyed `Leader`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockItem {
    /// The lock's key.
    pub key: String,
    /// The holder (a worker id).
    pub owner: String,
    /// Rewritten with a fresh random value on every heartbeat; a contender watches it.
    pub record_version: String,
    /// How long the lock lives without a heartbeat, as the holder declared it.
    pub lease_duration: Duration,
    /// Whether the holder released it.
    pub is_released: bool,
    /// The holder stops processing every shard it holds once it has not heartbeated the lock
    /// for `lease_duration` (its own clock), so whoever takes the lock over after watching it
    /// unchanged for that long may reassign the holder's leases at once. `kcl` leaders always
    /// fence so; a lock written by another client (the Java KCL's lock client) does not say so,
    /// and its holder's leases expire by their counters.
    pub holder_fences_leases: bool,
}

/// The coordinator-state table: the leader lock.
#[async_trait]
pub trait CoordinatorStore: Send + Sync {
    /// Reads a lock (strongly consistent).
    async fn get_lock(&self, key: &str) -> Result<Option<LockItem>, StoreError>;

    /// Acquires the lock for `owner`: if `expected` is `None` the lock must not exist; else its
    /// record version must still equal `expected`'s (a released or expired lock being taken).
    /// The lock is written with [`holder_fences_leases`](LockItem::holder_fences_leases) set,
    /// where the backend can store it.
    async fn acquire_lock(
        &self,
        key: &str,
        owner: &str,
        lease_duration: Duration,
        expected: Option<&LockItem>,
    ) -> Result<LockItem, StoreError>;

    /// Heartbeat: requires owner and record version to equal `held`'s; writes a new version.
    async fn heartbeat_lock(&self, held: &LockItem) -> Result<LockItem, StoreError>;

    /// Releases the lock: requires the record version to equal `held`'s.
    async fn release_lock(&self, held: &LockItem) -> Result<(), StoreError>;
}

/// One worker's row in the worker-metrics table: its reported load and, in heartbeat-lease mode,
/// its heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerMetrics {
    /// The worker's id.
    pub worker_id: String,
    /// When the worker last reported, epoch seconds.
    pub last_update_secs: u64,
    /// Per metric (`C` CPU, `T` throughput, ...), the recent samples; `-1` marks a failed sample.
    pub metric_stats: BTreeMap<String, Vec<f64>>,
    /// Per metric, the operating range (`[max utilization]`).
    pub operating_range: BTreeMap<String, Vec<f64>>,
    /// The worker's heartbeat, on rows of workers in heartbeat-lease mode
    /// ([`LeaseMode::WorkerHeartbeat`](crate::config::LeaseMode)); `None` on rows written by
    /// workers that renew every lease (the Java KCL's, or `kcl`'s in per-lease mode), whose
    /// leases are judged by their counters.
    pub heartbeat: Option<WorkerHeartbeat>,
    /// What the leader wrote on the row for the worker to read back with its next heartbeat.
    pub signals: WorkerSignals,
}

impl WorkerMetrics {
    /// A row with no samples, heartbeat or signals.
    pub fn new(worker_id: impl Into<String>, last_update_secs: u64) -> Self {
        WorkerMetrics {
            worker_id: worker_id.into(),
            last_update_secs,
            metric_stats: BTreeMap::new(),
            operating_range: BTreeMap::new(),
            heartbeat: None,
            signals: WorkerSignals::default(),
        }
    }
}

/// The part of a heartbeat row its worker writes: one conditional write per heartbeat interval
/// proves the worker alive for all the leases it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerHeartbeat {
    /// A random token chosen when the worker's process starts: a heartbeat requires the row to
    /// carry it, so two processes with the same worker id cannot both heartbeat.
    pub incarnation: String,
    /// Counts the process's heartbeats; every heartbeat changes the row.
    pub beat: u64,
    /// Counts the worker's changes to the lease set that the leader must act on (a lease released
    /// or finished, child leases created).
    pub lease_changes: u64,
    /// How many leases the worker holds.
    pub held_leases: u64,
    /// The sum of the held leases' throughput, KB/s.
    pub throughput_kbps: f64,
}

/// What the leader writes on a worker's heartbeat row (never the worker itself).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct WorkerSignals {
    /// Raised by the leader whenever it gives the worker a lease or moves one away from it: the
    /// worker reads the lease table's owner index only when this changed.
    pub assignment_version: u64,
    /// How many leases the leader had the worker own when it last raised the version (so a
    /// worker whose index query lags behind the assignment asks again).
    pub assigned_leases: u64,
    /// Present on the leader's standby: the leader lock as last heartbeated, so the standby
    /// watches the lock without reading it.
    pub standby: Option<StandbyStamp>,
}

/// The leader lock as its holder last heartbeated it, stamped on the standby's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyStamp {
    /// The lock's record version after the heartbeat.
    pub record_version: String,
    /// The lock's lease duration.
    pub lease_duration: Duration,
}

/// A leader's write on another worker's heartbeat row.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerSignal {
    /// Raises the assignment version and records how many leases the worker now owns.
    Assignments {
        /// Leases owned by the worker after the leader's writes.
        assigned_leases: u64,
    },
    /// Stamps (or clears) the standby's copy of the lock.
    Standby(Option<StandbyStamp>),
}

/// The worker-metrics table: each worker's report and, in heartbeat-lease mode, its heartbeat.
#[async_trait]
pub trait WorkerMetricsStore: Send + Sync {
    /// Writes (creates or replaces) a worker's report. Used in per-lease mode; it removes any
    /// heartbeat and signals from the row.
    async fn put_worker_metrics(&self, metrics: &WorkerMetrics) -> Result<(), StoreError>;

    /// Every worker's latest row. Eventually consistent on DynamoDB: a row may be shown as it
    /// was shortly before; the leader confirms with
    /// [`get_worker_metrics`](Self::get_worker_metrics) before it acts on a row looking unchanged.
    async fn list_worker_metrics(&self) -> Result<Vec<WorkerMetrics>, StoreError>;

    /// One worker's row, strongly consistent.
    async fn get_worker_metrics(&self, worker_id: &str) -> Result<Option<WorkerMetrics>, StoreError>;

    /// A heartbeat: writes the worker's own part of its row (`last_update_secs`, the samples and
    /// `heartbeat`, which must be `Some`), leaves `signals` as they are, and returns the row as
    /// written. Requires the row to be absent, to carry no heartbeat, or to carry this
    /// heartbeat's incarnation — or the incarnation `replaces` (a new process taking over the
    /// row of the previous one). Otherwise fails with [`StoreError::HeartbeatRowTaken`].
    async fn heartbeat_worker(&self, row: &WorkerMetrics, replaces: Option<&str>) -> Result<WorkerMetrics, StoreError>;

    /// Writes a signal on a worker's heartbeat row. Requires the row to exist with a heartbeat
    /// (else [`StoreError::MetricsConditionFailed`]); never creates one.
    async fn signal_worker(&self, worker_id: &str, signal: &WorkerSignal) -> Result<(), StoreError>;

    /// Deletes a stale report: requires its `last_update_secs` to still equal `expected_last_update_secs`.
    async fn delete_worker_metrics(&self, worker_id: &str, expected_last_update_secs: u64) -> Result<(), StoreError>;
}

// A shared store is a store: the scheduler and the wrappers above take `Arc<dyn …>` as readily as
// a concrete store.

#[async_trait]
impl<T: LeaseStore + ?Sized> LeaseStore for std::sync::Arc<T> {
    async fn create_lease_if_not_exists(&self, lease: &Lease) -> Result<bool, StoreError> {
        (**self).create_lease_if_not_exists(lease).await
    }
    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, StoreError> {
        (**self).get_lease(lease_key).await
    }
    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        (**self).list_leases().await
    }
    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        (**self).list_lease_keys_owned_by(owner).await
    }
    async fn renew_lease(
        &self,
        expected: &Lease,
        throughput_kbps: Option<f64>,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        (**self).renew_lease(expected, throughput_kbps, token).await
    }
    async fn take_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        (**self).take_lease(expected, new_owner, token).await
    }
    async fn assign_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        (**self).assign_lease(expected, new_owner, token).await
    }
    async fn initiate_handoff(
        &self,
        expected: &Lease,
        next_owner: &str,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        (**self).initiate_handoff(expected, next_owner, token).await
    }
    async fn evict_lease(&self, expected: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        (**self).evict_lease(expected, token).await
    }
    async fn update_lease(&self, updated: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        (**self).update_lease(updated, token).await
    }
    async fn update_lease_meta(&self, lease: &Lease) -> Result<(), StoreError> {
        (**self).update_lease_meta(lease).await
    }
    async fn delete_lease(&self, lease_key: &str) -> Result<(), StoreError> {
        (**self).delete_lease(lease_key).await
    }
}

#[async_trait]
impl<T: CoordinatorStore + ?Sized> CoordinatorStore for std::sync::Arc<T> {
    async fn get_lock(&self, key: &str) -> Result<Option<LockItem>, StoreError> {
        (**self).get_lock(key).await
    }
    async fn acquire_lock(
        &self,
        key: &str,
        owner: &str,
        lease_duration: Duration,
        expected: Option<&LockItem>,
    ) -> Result<LockItem, StoreError> {
        (**self).acquire_lock(key, owner, lease_duration, expected).await
    }
    async fn heartbeat_lock(&self, held: &LockItem) -> Result<LockItem, StoreError> {
        (**self).heartbeat_lock(held).await
    }
    async fn release_lock(&self, held: &LockItem) -> Result<(), StoreError> {
        (**self).release_lock(held).await
    }
}

#[async_trait]
impl<T: WorkerMetricsStore + ?Sized> WorkerMetricsStore for std::sync::Arc<T> {
    async fn put_worker_metrics(&self, metrics: &WorkerMetrics) -> Result<(), StoreError> {
        (**self).put_worker_metrics(metrics).await
    }
    async fn list_worker_metrics(&self) -> Result<Vec<WorkerMetrics>, StoreError> {
        (**self).list_worker_metrics().await
    }
    async fn get_worker_metrics(&self, worker_id: &str) -> Result<Option<WorkerMetrics>, StoreError> {
        (**self).get_worker_metrics(worker_id).await
    }
    async fn heartbeat_worker(&self, row: &WorkerMetrics, replaces: Option<&str>) -> Result<WorkerMetrics, StoreError> {
        (**self).heartbeat_worker(row, replaces).await
    }
    async fn signal_worker(&self, worker_id: &str, signal: &WorkerSignal) -> Result<(), StoreError> {
        (**self).signal_worker(worker_id, signal).await
    }
    async fn delete_worker_metrics(&self, worker_id: &str, expected_last_update_secs: u64) -> Result<(), StoreError> {
        (**self).delete_worker_metrics(worker_id, expected_last_update_secs).await
    }
}

/// A fresh random record version for lock heartbeats.
pub fn new_record_version() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
