//! The leases a worker holds, and their renewal.
//!
//! Each held lease is a [`HeldLease`]: the worker's latest view of the lease item, guarded by an
//! async mutex so that renewals, checkpoints and the final release are written one at a time
//! with the counter the previous write returned (a renewal never races a checkpoint of the same
//! worker into a spurious conflict).
//!
//! The [`LeaseRenewer`] renews every held lease each `renewal_interval` (default
//! `lease_duration / 3`), recording the lease's throughput (an EMA with α = 0.5 of the KB/s
//! delivered to the processor, as the Java KCL's `LeaseStatsRecorder`). The outcome of a renewal:
//!
//! * success — the lease's local "last renewed" instant moves to the time the request was sent;
//! * `LeaseLost` whose current item shows `checkpoint_owner == me` and another owner — the leader
//!   started a graceful handoff: adopt the item (so later writes expect the handoff), keep
//!   renewing, and ask the shard to stop gracefully (its processor checkpoints, then the lease is
//!   assigned to the next owner);
//! * `LeaseLost` otherwise — the lease is gone: its `lost` token is cancelled **while the view
//!   mutex is still held**, so no checkpoint of this worker can be written after the loss was
//!   seen, and the shard task drops whatever the processor was doing;
//! * a transient store error — kept, unless the last successful write is a lease duration old on
//!   this worker's clock: other workers may judge the lease expired from then on, so it is
//!   treated as lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kinesis_core::ShardId;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::lease::Lease;
use crate::store::{LeaseStore, StoreError};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a renewal did.
#[derive(Debug)]
pub(crate) enum RenewOutcome {
    /// Renewed.
    Renewed,
    /// Renewed, and a graceful handoff to this worker is in progress.
    Handoff,
    /// The lease is no longer this worker's.
    Lost,
    /// The store failed; the lease is still held on this worker's clock.
    Failed(StoreError),
    /// The lease was released or lost before; nothing to do.
    Gone,
}

/// Why a write through a held lease failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The lease is lost (now or before).
    Lost,
    /// The lease was released by this worker.
    Released,
    /// The store failed transiently or otherwise.
    Store(StoreError),
}

#[derive(Debug)]
struct Status {
    /// When the last successful write was sent.
    last_renewed: Instant,
    /// The next owner, while a graceful handoff is in progress.
    handoff_to: Option<String>,
    /// When the graceful stop (handoff or shutdown) was first requested.
    stop_requested_at: Option<Instant>,
    /// Released (evicted or transferred) by this worker.
    released: bool,
    /// Throughput bookkeeping.
    throughput_kbps: Option<f64>,
    bytes_at_last_sample: u64,
    last_sample_at: Instant,
    /// The checkpoint as last written or read (for lock-free reads).
    checkpoint: kinesis_core::ExtendedSequenceNumber,
}

/// A lease this worker holds.
#[derive(Debug)]
pub(crate) struct HeldLease {
    /// The lease key (the shard id).
    pub key: String,
    /// The shard.
    pub shard_id: ShardId,
    worker_id: Arc<str>,
    lease_duration: Duration,
    view: tokio::sync::Mutex<Lease>,
    status: Mutex<Status>,
    /// User-data bytes delivered to the processor (for the throughput sample).
    pub bytes_delivered: AtomicU64,
    /// Cancelled when the lease is lost (or the worker is killed): stop at once.
    pub lost: CancellationToken,
    /// Cancelled when the shard should stop gracefully (handoff, or worker shutdown).
    pub stop: CancellationToken,
}

impl HeldLease {
    /// Wraps a lease read from the store. `abort` and `shutdown` are the worker's tokens.
    pub fn new(
        lease: Lease,
        worker_id: Arc<str>,
        lease_duration: Duration,
        abort: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Self {
        let now = Instant::now();
        let shard_id = ShardId::new(&lease.lease_key).unwrap_or_else(|_| ShardId::from_index(0));
        HeldLease {
            key: lease.lease_key.clone(),
            shard_id,
            worker_id,
            lease_duration,
            status: Mutex::new(Status {
                // Not renewed yet: the first renewal happens before processing starts.
                last_renewed: now.checked_sub(lease_duration).unwrap_or(now),
                handoff_to: None,
                stop_requested_at: None,
                released: false,
                throughput_kbps: lease.throughput_kbps,
                bytes_at_last_sample: 0,
                last_sample_at: now,
                checkpoint: lease.checkpoint.clone(),
            }),
            view: tokio::sync::Mutex::new(lease),
            bytes_delivered: AtomicU64::new(0),
            lost: abort.child_token(),
            stop: shutdown.child_token(),
        }
    }

    /// The latest view of the lease.
    pub async fn snapshot(&self) -> Lease {
        self.view.lock().await.clone()
    }

    /// The checkpoint as last written or read.
    pub fn checkpoint(&self) -> kinesis_core::ExtendedSequenceNumber {
        lock(&self.status).checkpoint.clone()
    }

    /// Whether the lease is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The next owner while a graceful handoff is in progress.
    pub fn handoff_to(&self) -> Option<String> {
        lock(&self.status).handoff_to.clone()
    }

    /// When the graceful stop was requested (handoff or shutdown), if it was.
    pub fn stop_requested_at(&self) -> Option<Instant> {
        let mut status = lock(&self.status);
        if status.stop_requested_at.is_none() && self.stop.is_cancelled() {
            status.stop_requested_at = Some(Instant::now());
        }
        status.stop_requested_at
    }

    /// Marks the lease lost and stops the shard at once. Call with the view mutex held.
    fn mark_lost(&self, why: &str) {
        if !self.lost.is_cancelled() {
            tracing::warn!(lease = %self.key, why, "lease lost; stopping the shard");
            self.lost.cancel();
        }
    }

    fn is_me(&self, owner: Option<&str>) -> bool {
        owner == Some(&*self.worker_id)
    }

    /// Whether a conflicting item shows a graceful handoff away from this worker.
    fn shows_handoff(&self, current: &Lease) -> bool {
        self.is_me(current.checkpoint_owner.as_deref()) && !self.is_me(current.lease_owner.as_deref())
    }

    /// Adopts an item that shows a handoff and asks the shard to stop gracefully.
    fn enter_handoff(&self, view: &mut Lease, current: Lease) {
        let next = current.lease_owner.clone().unwrap_or_default();
        tracing::info!(lease = %self.key, next_owner = %next, "graceful handoff requested by the leader");
        *view = current;
        {
            let mut status = lock(&self.status);
            status.handoff_to = Some(next);
            status.stop_requested_at.get_or_insert_with(Instant::now);
        }
        self.stop.cancel();
    }

    fn throughput_sample(&self, now: Instant) -> Option<f64> {
        let mut status = lock(&self.status);
        let bytes = self.bytes_delivered.load(Ordering::Relaxed);
        let elapsed = now.saturating_duration_since(status.last_sample_at).as_secs_f64();
        if elapsed >= 0.1 {
            let kbps = (bytes.saturating_sub(status.bytes_at_last_sample)) as f64 / 1024.0 / elapsed;
            status.throughput_kbps = Some(match status.throughput_kbps {
                Some(prev) => 0.5 * kbps + 0.5 * prev,
                None => kbps,
            });
            status.bytes_at_last_sample = bytes;
            status.last_sample_at = now;
        }
        status.throughput_kbps
    }

    fn renewed(&self, at: Instant, lease: &Lease) {
        let mut status = lock(&self.status);
        status.last_renewed = at;
        status.checkpoint = lease.checkpoint.clone();
    }

    /// Renews the lease (see the module docs for the outcomes).
    pub async fn renew(&self, store: &dyn LeaseStore) -> RenewOutcome {
        let mut view = self.view.lock().await;
        if self.is_lost() {
            return RenewOutcome::Gone;
        }
        if lock(&self.status).released {
            return RenewOutcome::Gone;
        }
        let started = Instant::now();
        let throughput = self.throughput_sample(started);
        // At most two attempts: the second after adopting a handoff shown by the first.
        for _ in 0..2 {
            match store.renew_lease(&view, throughput).await {
                Ok(lease) => {
                    self.renewed(started, &lease);
                    *view = lease;
                    return if self.handoff_to().is_some() { RenewOutcome::Handoff } else { RenewOutcome::Renewed };
                }
                Err(StoreError::LeaseLost { current: Some(current) }) if self.shows_handoff(&current) => {
                    self.enter_handoff(&mut view, *current);
                }
                Err(StoreError::LeaseLost { current: Some(current) })
                    if self.is_me(current.lease_owner.as_deref())
                        && current.checkpoint_owner == view.checkpoint_owner
                        && current.lease_counter == view.lease_counter + 1 =>
                {
                    // Our previous write took effect although its answer was lost.
                    self.renewed(started, &current);
                    *view = *current;
                    return RenewOutcome::Renewed;
                }
                Err(StoreError::LeaseLost { .. }) => {
                    self.mark_lost("renewal refused: the lease changed");
                    return RenewOutcome::Lost;
                }
                Err(e) => {
                    let last = lock(&self.status).last_renewed;
                    if Instant::now().saturating_duration_since(last) >= self.lease_duration {
                        self.mark_lost("not renewed for a lease duration on this worker's clock");
                        return RenewOutcome::Lost;
                    }
                    return RenewOutcome::Failed(e);
                }
            }
        }
        RenewOutcome::Handoff
    }

    /// Writes a change of the lease (a checkpoint) built from the current view by `build`.
    /// The write requires the counter and owner of the view; a conflict that shows a graceful
    /// handoff is adopted and the write retried once; any other conflict loses the lease.
    pub async fn write<E>(
        &self,
        store: &dyn LeaseStore,
        mut build: impl FnMut(&Lease) -> Result<Lease, E>,
    ) -> Result<Result<Lease, E>, WriteError> {
        let mut view = self.view.lock().await;
        if self.is_lost() {
            return Err(WriteError::Lost);
        }
        if lock(&self.status).released {
            return Err(WriteError::Released);
        }
        for _ in 0..2 {
            let updated = match build(&view) {
                Ok(updated) => updated,
                Err(e) => return Ok(Err(e)),
            };
            let started = Instant::now();
            match store.update_lease(&updated).await {
                Ok(lease) => {
                    self.renewed(started, &lease);
                    *view = lease.clone();
                    return Ok(Ok(lease));
                }
                Err(StoreError::LeaseLost { current: Some(current) }) if self.shows_handoff(&current) => {
                    self.enter_handoff(&mut view, *current);
                }
                Err(StoreError::LeaseLost { .. }) => {
                    self.mark_lost("checkpoint refused: the lease changed");
                    return Err(WriteError::Lost);
                }
                Err(e) => return Err(WriteError::Store(e)),
            }
        }
        Err(WriteError::Lost)
    }

    /// Changes the local view without writing (child shard ids recorded before the final
    /// checkpoint writes them).
    pub async fn edit_view(&self, edit: impl FnOnce(&mut Lease)) {
        edit(&mut *self.view.lock().await);
    }

    /// Lets go of the lease: assigns it to the next owner during a handoff, else evicts it (the
    /// leader assigns it again at its next pass). Afterwards nothing more is written.
    pub async fn release(&self, store: &dyn LeaseStore) -> Result<(), WriteError> {
        let mut view = self.view.lock().await;
        if self.is_lost() {
            return Err(WriteError::Lost);
        }
        if lock(&self.status).released {
            return Ok(());
        }
        let result = match view.checkpoint_owner.as_deref() {
            Some(cpo) if cpo == &*self.worker_id => match view.lease_owner.clone() {
                Some(next) => store.assign_lease(&view, &next).await,
                None => store.evict_lease(&view).await,
            },
            _ => store.evict_lease(&view).await,
        };
        match result {
            Ok(lease) => {
                *view = lease;
                lock(&self.status).released = true;
                Ok(())
            }
            Err(StoreError::LeaseLost { .. }) => {
                self.mark_lost("release refused: the lease changed");
                Err(WriteError::Lost)
            }
            Err(e) => Err(WriteError::Store(e)),
        }
    }
}

/// The leases a worker holds, by key.
#[derive(Debug, Default)]
pub(crate) struct LeaseRegistry {
    leases: Mutex<BTreeMap<String, Arc<HeldLease>>>,
}

impl LeaseRegistry {
    pub fn contains(&self, key: &str) -> bool {
        lock(&self.leases).contains_key(key)
    }

    pub fn insert(&self, lease: Arc<HeldLease>) {
        lock(&self.leases).insert(lease.key.clone(), lease);
    }

    pub fn remove(&self, key: &str) {
        lock(&self.leases).remove(key);
    }

    pub fn all(&self) -> Vec<Arc<HeldLease>> {
        lock(&self.leases).values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.leases).len()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.leases).is_empty()
    }
}

/// Renews every held lease on a fixed period until `stop` resolves.
pub(crate) struct LeaseRenewer {
    pub store: Arc<dyn LeaseStore>,
    pub registry: Arc<LeaseRegistry>,
    pub interval: Duration,
    pub metrics: crate::metrics::WorkerMetricHandles,
}

impl LeaseRenewer {
    /// Runs until `until` returns true after a pass, or `abort` is cancelled.
    pub async fn run(self, abort: CancellationToken, until: impl Fn() -> bool) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = abort.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if until() {
                return;
            }
            self.renew_all().await;
        }
    }

    /// One pass over every held lease, concurrently.
    pub async fn renew_all(&self) {
        let leases = self.registry.all();
        let outcomes =
            futures::future::join_all(leases.iter().map(|lease| async { lease.renew(&*self.store).await })).await;
        let mut failed = false;
        for (lease, outcome) in leases.iter().zip(outcomes) {
            match outcome {
                RenewOutcome::Renewed | RenewOutcome::Handoff | RenewOutcome::Gone => {}
                // Counted in `LostLeases` by the shard task, however the loss was noticed.
                RenewOutcome::Lost => failed = true,
                RenewOutcome::Failed(e) => {
                    tracing::warn!(lease = %lease.key, error = %e, "lease renewal failed; retrying next period");
                    failed = true;
                }
            }
        }
        if failed {
            self.metrics.renew_failure.increment(1);
        } else {
            self.metrics.renew_success.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use kinesis_core::ExtendedSequenceNumber;

    use super::*;
    use crate::store::memory::MemoryLeaseStore;

    async fn held(store: &MemoryLeaseStore, worker: &str) -> (HeldLease, CancellationToken) {
        let lease = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon);
        store.create_lease_if_not_exists(&lease).await.expect("create");
        let taken = store.take_lease(&lease, worker).await.expect("take");
        let abort = CancellationToken::new();
        let shutdown = CancellationToken::new();
        (HeldLease::new(taken, Arc::from(worker), Duration::from_secs(10), &abort, &shutdown), abort)
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_bumps_counter_and_records_throughput() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        lease.bytes_delivered.store(20 * 1024, Ordering::Relaxed);
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Renewed));
        let stored = store.get_lease(&lease.key).await.expect("get").expect("exists");
        assert_eq!(stored.lease_counter, 2);
        assert_eq!(stored.throughput_kbps, Some(10.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_lease_is_lost_at_once() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        let current = store.get_lease(&lease.key).await.expect("get").expect("exists");
        store.take_lease(&current, "w2").await.expect("steal");
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Lost));
        assert!(lease.lost.is_cancelled());
        let write = lease.write(&store, |l| Ok::<_, ()>(l.clone())).await;
        assert!(matches!(write, Err(WriteError::Lost)));
    }

    #[tokio::test(start_paused = true)]
    async fn handoff_is_adopted_and_renewal_continues() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        let current = store.get_lease(&lease.key).await.expect("get").expect("exists");
        store.initiate_handoff(&current, "w2").await.expect("handoff");
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Handoff));
        assert!(lease.stop.is_cancelled());
        assert!(!lease.lost.is_cancelled());
        assert_eq!(lease.handoff_to().as_deref(), Some("w2"));
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Handoff));
        lease.release(&store).await.expect("transfer");
        let stored = store.get_lease(&lease.key).await.expect("get").expect("exists");
        assert_eq!(stored.lease_owner.as_deref(), Some("w2"));
        assert_eq!(stored.checkpoint_owner, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_lease_duration_loses_the_lease() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Renewed));
        store.set_unavailable(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Failed(_)));
        assert!(!lease.is_lost());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Lost));
        assert!(lease.is_lost());
    }
}
