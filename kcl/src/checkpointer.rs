//! The [`Checkpointer`]: how a processor records how far it got.
//!
//! A checkpoint is a conditional write of the lease (`update_lease`, expecting the counter and
//! owner this worker last wrote), so a worker that lost its lease cannot move the checkpoint: the
//! write is refused and the call returns [`CheckpointError::LeaseLost`]. Once the lease renewer
//! has seen the loss, checkpoints are refused without a write.
//!
//! Positions are validated: not below the lease's current checkpoint, not beyond the largest
//! record delivered to the processor, and no sentinel except `SHARD_END` (which is accepted only
//! once the shard ended, in `shard_ended`).
//!
//! Two-phase checkpoints ([`Checkpointer::prepare_checkpoint`]) first store a pending position
//! with optional application state; [`PreparedCheckpoint::checkpoint`] commits it. A worker that
//! takes the lease over sees the pending position and state in
//! [`InitializationInput`](crate::processor::InitializationInput).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kinesis_core::ExtendedSequenceNumber;

use crate::error::CheckpointError;
use crate::lease_renewer::{HeldLease, WriteError, lock};
use crate::record::KinesisClientRecord;
use crate::store::LeaseStore;

#[derive(Debug, Default)]
struct Progress {
    largest_delivered: Option<ExtendedSequenceNumber>,
    closed: bool,
}

struct Inner {
    lease: Arc<HeldLease>,
    store: Arc<dyn LeaseStore>,
    progress: Mutex<Progress>,
}

/// Records a shard's progress in the lease table. Cheap to clone; clones share state, so a
/// processor may keep one and checkpoint later (for example after downstream acknowledgements).
#[derive(Clone)]
pub struct Checkpointer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").field("shard_id", &self.inner.lease.key).finish_non_exhaustive()
    }
}

/// A position stored as pending by [`Checkpointer::prepare_checkpoint`]; commit it with
/// [`checkpoint`](PreparedCheckpoint::checkpoint).
#[derive(Debug)]
#[must_use = "a prepared checkpoint does nothing until committed"]
pub struct PreparedCheckpoint {
    checkpointer: Checkpointer,
    position: ExtendedSequenceNumber,
}

impl PreparedCheckpoint {
    /// The prepared position.
    pub fn position(&self) -> &ExtendedSequenceNumber {
        &self.position
    }

    /// Commits the prepared position as the checkpoint and clears the pending one.
    pub async fn checkpoint(self) -> Result<(), CheckpointError> {
        self.checkpointer.write_checkpoint(self.position).await
    }
}

impl Checkpointer {
    pub(crate) fn new(lease: Arc<HeldLease>, store: Arc<dyn LeaseStore>) -> Self {
        Checkpointer { inner: Arc::new(Inner { lease, store, progress: Mutex::new(Progress::default()) }) }
    }

    /// The shard this checkpointer writes for.
    pub fn shard_id(&self) -> &str {
        &self.inner.lease.key
    }

    /// The largest position delivered to the processor so far (`SHARD_END` once the shard
    /// ended).
    pub fn largest_delivered(&self) -> Option<ExtendedSequenceNumber> {
        lock(&self.inner.progress).largest_delivered.clone()
    }

    /// The lease's checkpoint as last written or read by this worker.
    pub fn current_checkpoint(&self) -> ExtendedSequenceNumber {
        self.inner.lease.checkpoint()
    }

    /// Checkpoints at the last record delivered to the processor (or `SHARD_END` in
    /// `shard_ended`). Does nothing when nothing was delivered yet.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        match self.largest_delivered() {
            Some(position) => self.write_checkpoint(position).await,
            None => self.check_open(),
        }
    }

    /// Checkpoints at `record` (everything up to and including it is done).
    pub async fn checkpoint_record(&self, record: &KinesisClientRecord) -> Result<(), CheckpointError> {
        self.write_checkpoint(record.extended_sequence_number()).await
    }

    /// Checkpoints at `position`, which must lie between the current checkpoint and the largest
    /// delivered record.
    pub async fn checkpoint_at(&self, position: ExtendedSequenceNumber) -> Result<(), CheckpointError> {
        self.write_checkpoint(position).await
    }

    /// Stores the last delivered record as a pending checkpoint with `application_state`; commit
    /// it later with [`PreparedCheckpoint::checkpoint`].
    pub async fn prepare_checkpoint(
        &self,
        application_state: Option<Bytes>,
    ) -> Result<PreparedCheckpoint, CheckpointError> {
        let position = self.largest_delivered().ok_or_else(|| CheckpointError::AboveLargestDelivered {
            requested: ExtendedSequenceNumber::TrimHorizon,
            largest: None,
        })?;
        self.prepare_checkpoint_at(position, application_state).await
    }

    /// Stores `position` as a pending checkpoint with `application_state`.
    pub async fn prepare_checkpoint_at(
        &self,
        position: ExtendedSequenceNumber,
        application_state: Option<Bytes>,
    ) -> Result<PreparedCheckpoint, CheckpointError> {
        self.check_open()?;
        let largest = self.largest_delivered();
        let pending = position.clone();
        self.write(move |lease| {
            validate(&position, &lease.checkpoint, largest.as_ref())?;
            let mut updated = lease.clone();
            updated.pending_checkpoint = Some(position.clone());
            updated.pending_checkpoint_state = application_state.clone();
            Ok(updated)
        })
        .await?;
        Ok(PreparedCheckpoint { checkpointer: self.clone(), position: pending })
    }

    async fn write_checkpoint(&self, position: ExtendedSequenceNumber) -> Result<(), CheckpointError> {
        self.check_open()?;
        let largest = self.largest_delivered();
        self.write(move |lease| {
            validate(&position, &lease.checkpoint, largest.as_ref())?;
            let mut updated = lease.clone();
            updated.checkpoint = position.clone();
            updated.pending_checkpoint = None;
            updated.pending_checkpoint_state = None;
            updated.owner_switches_since_checkpoint = 0;
            Ok(updated)
        })
        .await
    }

    async fn write(
        &self,
        build: impl FnMut(&crate::lease::Lease) -> Result<crate::lease::Lease, CheckpointError>,
    ) -> Result<(), CheckpointError> {
        let shard_id = || self.inner.lease.key.clone();
        match self.inner.lease.write(&*self.inner.store, build).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(invalid)) => Err(invalid),
            Err(WriteError::Lost) => Err(CheckpointError::LeaseLost { shard_id: shard_id() }),
            Err(WriteError::Released) => Err(CheckpointError::Closed { shard_id: shard_id() }),
            Err(WriteError::Store(e)) => Err(CheckpointError::Store(e)),
        }
    }

    fn check_open(&self) -> Result<(), CheckpointError> {
        if self.inner.lease.is_lost() {
            return Err(CheckpointError::LeaseLost { shard_id: self.inner.lease.key.clone() });
        }
        if lock(&self.inner.progress).closed {
            return Err(CheckpointError::Closed { shard_id: self.inner.lease.key.clone() });
        }
        Ok(())
    }

    /// Records the largest position handed to the processor.
    pub(crate) fn set_largest_delivered(&self, position: Option<ExtendedSequenceNumber>) {
        lock(&self.inner.progress).largest_delivered = position;
    }

    /// Refuses every later checkpoint.
    pub(crate) fn close(&self) {
        lock(&self.inner.progress).closed = true;
    }
}

/// Checks a requested position against the current checkpoint and the largest delivered one.
fn validate(
    requested: &ExtendedSequenceNumber,
    current: &ExtendedSequenceNumber,
    largest: Option<&ExtendedSequenceNumber>,
) -> Result<(), CheckpointError> {
    match requested {
        ExtendedSequenceNumber::Sequence { .. } => {}
        ExtendedSequenceNumber::ShardEnd if largest == Some(&ExtendedSequenceNumber::ShardEnd) => {}
        _ => return Err(CheckpointError::InvalidPosition { requested: requested.clone() }),
    }
    if requested < current {
        return Err(CheckpointError::BelowCurrent { requested: requested.clone(), current: current.clone() });
    }
    match largest {
        Some(largest) if requested <= largest => Ok(()),
        _ => Err(CheckpointError::AboveLargestDelivered { requested: requested.clone(), largest: largest.cloned() }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kinesis_core::SequenceNumber;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::lease::{Lease, WriteToken};
    use crate::lease_renewer::{Fencing, HeldLeaseContext, RenewOutcome};
    use crate::store::memory::MemoryLeaseStore;

    fn at(seq: u128, sub: u64) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::at_sub(SequenceNumber::from_u128(seq), sub)
    }

    async fn setup() -> (MemoryLeaseStore, Checkpointer, Arc<HeldLease>, CancellationToken) {
        let store = MemoryLeaseStore::new();
        let lease = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon);
        store.create_lease_if_not_exists(&lease).await.expect("create");
        let taken = store.take_lease(&lease, "w1", &WriteToken::new()).await.expect("take");
        let abort = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let worker = HeldLeaseContext {
            worker_id: Arc::from("w1"),
            lease_duration: Duration::from_secs(10),
            heartbeat_bound: false,
            abort: &abort,
            shutdown: &shutdown,
            fencing: Arc::new(Fencing::default()),
        };
        let held = Arc::new(HeldLease::new(taken, kinesis_core::ShardId::from_index(1), worker));
        // The first renewal starts the lease's local clock, as discovery does before processing.
        assert!(matches!(held.renew(&store).await, RenewOutcome::Renewed));
        let checkpointer = Checkpointer::new(held.clone(), Arc::new(store.clone()));
        (store, checkpointer, held, abort)
    }

    #[tokio::test]
    async fn validates_bounds() {
        let (store, cp, _held, _abort) = setup().await;
        assert!(matches!(cp.checkpoint_at(at(10, 0)).await, Err(CheckpointError::AboveLargestDelivered { .. })));
        cp.set_largest_delivered(Some(at(20, 3)));
        cp.checkpoint_at(at(15, 0)).await.expect("in range");
        assert!(matches!(cp.checkpoint_at(at(14, 9)).await, Err(CheckpointError::BelowCurrent { .. })));
        assert!(matches!(cp.checkpoint_at(at(20, 4)).await, Err(CheckpointError::AboveLargestDelivered { .. })));
        assert!(matches!(
            cp.checkpoint_at(ExtendedSequenceNumber::TrimHorizon).await,
            Err(CheckpointError::InvalidPosition { .. })
        ));
        assert!(matches!(
            cp.checkpoint_at(ExtendedSequenceNumber::ShardEnd).await,
            Err(CheckpointError::InvalidPosition { .. })
        ));
        cp.checkpoint().await.expect("at largest");
        let stored = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        assert_eq!(stored.checkpoint, at(20, 3));
        cp.set_largest_delivered(Some(ExtendedSequenceNumber::ShardEnd));
        cp.checkpoint().await.expect("shard end");
        let stored = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        assert!(stored.is_finished());
    }

    #[tokio::test]
    async fn prepared_checkpoint_round_trip() {
        let (store, cp, _held, _abort) = setup().await;
        cp.set_largest_delivered(Some(at(30, 1)));
        let prepared = cp.prepare_checkpoint(Some(Bytes::from_static(b"state"))).await.expect("prepare");
        let stored = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        assert_eq!(stored.pending_checkpoint, Some(at(30, 1)));
        assert_eq!(stored.pending_checkpoint_state.as_deref(), Some(&b"state"[..]));
        assert_eq!(stored.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        prepared.checkpoint().await.expect("commit");
        let stored = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        assert_eq!(stored.checkpoint, at(30, 1));
        assert_eq!(stored.pending_checkpoint, None);
        assert_eq!(stored.pending_checkpoint_state, None);
    }

    #[tokio::test]
    async fn typed_error_after_lease_loss() {
        let (store, cp, held, _abort) = setup().await;
        cp.set_largest_delivered(Some(at(5, 0)));
        // Another worker takes the lease: the conditional write fences this one.
        let current = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        store.take_lease(&current, "w2", &WriteToken::new()).await.expect("steal");
        assert!(matches!(cp.checkpoint().await, Err(CheckpointError::LeaseLost { .. })));
        assert!(held.is_lost(), "the loss stops the shard");
        // Later attempts are refused without a write.
        assert!(matches!(cp.checkpoint().await, Err(CheckpointError::LeaseLost { .. })));
        let stored = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        assert_eq!(stored.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        assert!(matches!(cp.prepare_checkpoint(None).await, Err(CheckpointError::LeaseLost { .. })));
    }

    #[tokio::test]
    async fn positional_and_prepared_checkpoints_are_refused_after_lease_loss() {
        let (store, cp, held, _abort) = setup().await;
        cp.set_largest_delivered(Some(at(40, 2)));
        let prepared = cp.prepare_checkpoint_at(at(30, 0), Some(Bytes::from_static(b"s"))).await.expect("prepare");
        // The leader reassigns the lease to another worker.
        let current = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        store.assign_lease(&current, "w2", &WriteToken::new()).await.expect("reassign");
        // A checkpoint at an explicit position within bounds is fenced by the write's condition.
        assert!(matches!(cp.checkpoint_at(at(35, 1)).await, Err(CheckpointError::LeaseLost { .. })));
        assert!(held.is_lost());
        // Committing the earlier prepared checkpoint is refused too, without a write.
        assert!(matches!(prepared.checkpoint().await, Err(CheckpointError::LeaseLost { .. })));
        let record = KinesisClientRecord {
            sequence_number: SequenceNumber::from_u128(36),
            sub_sequence_number: 0,
            aggregated: false,
            approximate_arrival_timestamp: std::time::SystemTime::UNIX_EPOCH,
            partition_key: Arc::from("k"),
            explicit_hash_key: None,
            data: Bytes::new(),
        };
        assert!(matches!(cp.checkpoint_record(&record).await, Err(CheckpointError::LeaseLost { .. })));
        assert!(matches!(cp.prepare_checkpoint_at(at(37, 0), None).await, Err(CheckpointError::LeaseLost { .. })));
        let stored = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        assert_eq!(stored.checkpoint, ExtendedSequenceNumber::TrimHorizon, "nothing written after the loss");
        assert_eq!(stored.pending_checkpoint, Some(at(30, 0)), "the prepared position stays pending for w2");
        assert_eq!(stored.lease_owner.as_deref(), Some("w2"));
    }

    #[tokio::test]
    async fn checkpoints_during_a_handoff_are_written() {
        let (store, cp, held, _abort) = setup().await;
        cp.set_largest_delivered(Some(at(7, 0)));
        let current = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        store.initiate_handoff(&current, "w2", &WriteToken::new()).await.expect("handoff");
        cp.checkpoint().await.expect("the checkpoint owner may checkpoint");
        assert!(held.stop.is_cancelled(), "the handoff was noticed");
        let stored = store.get_lease("shardId-000000000001").await.expect("get").expect("exists");
        assert_eq!(stored.checkpoint, at(7, 0));
        assert_eq!(stored.checkpoint_owner.as_deref(), Some("w1"));
    }

    #[tokio::test]
    async fn closed_checkpointer_refuses() {
        let (_store, cp, _held, _abort) = setup().await;
        cp.set_largest_delivered(Some(at(7, 0)));
        cp.close();
        assert!(matches!(cp.checkpoint().await, Err(CheckpointError::Closed { .. })));
    }
}
