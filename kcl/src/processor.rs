//! The record-processor API: one [`ShardRecordProcessor`] per shard, made by a
//! [`ShardRecordProcessorFactory`], with the Java KCL's lifecycle.
//!
//! ```text
//! initialize ──► process_records* ──► one of: shard_ended | shutdown_requested | lease_lost
//! ```
//!
//! * `initialize` once, before any records (retried with backoff if it fails).
//! * `process_records` for every batch, in order; an error is never skipped (see
//!   [`ProcessErrorPolicy`](crate::config::ProcessErrorPolicy)).
//! * Exactly one terminal call:
//!   * `shard_ended` — the shard is closed and every record was delivered. The processor must
//!     checkpoint (`checkpointer.checkpoint()` writes `SHARD_END`); otherwise the shard is not
//!     finished, its children stay blocked, an error is logged and `shard_ended` is called again
//!     after a backoff.
//!   * `shutdown_requested` — the lease is about to move (the leader's graceful handoff) or the
//!     worker shuts down gracefully: checkpoint now; afterwards the lease is handed over.
//!   * `lease_lost` — the lease was lost (another worker took it, or it expired on this worker's
//!     clock), or the shard was stopped after a processing error; checkpoints are refused.
//!
//! When a lease is lost, a `process_records` call in progress is **dropped** at its next await
//! point, so that no two workers process a shard at the same time; then `lease_lost` is called.
//! A worker that is killed (crash simulation) makes no further calls at all.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kinesis_core::shard::ChildShard;
use kinesis_core::{ExtendedSequenceNumber, ShardId};

use crate::checkpointer::Checkpointer;
use crate::error::ProcessorError;
use crate::record::KinesisClientRecord;

/// What `initialize` is told.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InitializationInput {
    /// The shard.
    pub shard_id: ShardId,
    /// Where processing resumes: the lease's checkpoint (a sentinel for a new lease).
    pub extended_sequence_number: ExtendedSequenceNumber,
    /// A prepared but uncommitted checkpoint left by the previous owner.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// The application state saved with the pending checkpoint.
    pub pending_checkpoint_state: Option<Bytes>,
}

/// One batch for `process_records`.
#[derive(Debug)]
#[non_exhaustive]
pub struct ProcessRecordsInput<'a> {
    /// The records, in shard order (sub-records of an aggregate in sub-sequence order).
    pub records: &'a [KinesisClientRecord],
    /// How far the read that produced the batch was behind the tip of the shard.
    pub millis_behind_latest: Option<u64>,
    /// Checkpoints progress.
    pub checkpointer: &'a Checkpointer,
    /// How long the batch waited in the prefetch queue.
    pub time_spent_in_cache: Duration,
    /// Which delivery of this batch this is (1 the first time; more after a failed delivery
    /// under the retry policy).
    pub attempt: u32,
}

/// What `lease_lost` is told.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LeaseLostInput {
    /// The shard.
    pub shard_id: ShardId,
}

/// What `shard_ended` is told.
#[derive(Debug)]
#[non_exhaustive]
pub struct ShardEndedInput<'a> {
    /// Checkpoint with `checkpoint()` to finish the shard (writes `SHARD_END`).
    pub checkpointer: &'a Checkpointer,
    /// The shard's children (their leases exist already).
    pub child_shards: &'a [ChildShard],
}

/// Why `shutdown_requested` is called.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownReason {
    /// The leader moves the lease to another worker (graceful handoff).
    Handoff {
        /// The worker that gets the lease.
        next_owner: String,
    },
    /// This worker shuts down gracefully.
    WorkerShutdown,
}

/// What `shutdown_requested` is told.
#[derive(Debug)]
#[non_exhaustive]
pub struct ShutdownRequestedInput<'a> {
    /// Checkpoint now: the lease moves afterwards.
    pub checkpointer: &'a Checkpointer,
    /// Why.
    pub reason: ShutdownReason,
}

/// Processes the records of one shard. See the [module docs](self) for the lifecycle.
#[async_trait]
pub trait ShardRecordProcessor: Send + 'static {
    /// Called once before any records.
    async fn initialize(&mut self, input: InitializationInput) -> Result<(), ProcessorError> {
        let _ = input;
        Ok(())
    }

    /// Processes one batch. Returning an error applies the configured
    /// [`ProcessErrorPolicy`](crate::config::ProcessErrorPolicy); the batch is never skipped.
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError>;

    /// The lease is gone; checkpoints are refused. Clean up.
    async fn lease_lost(&mut self, input: LeaseLostInput) {
        let _ = input;
    }

    /// The shard ended: checkpoint (`input.checkpointer.checkpoint()`) to finish it.
    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError>;

    /// The lease is about to move or the worker shuts down: checkpoint what is done.
    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        let _ = input;
        Ok(())
    }
}

/// Makes one processor per shard.
///
/// Any `Fn(&ShardId) -> P` where `P: ShardRecordProcessor` is a factory.
pub trait ShardRecordProcessorFactory: Send + Sync + 'static {
    /// A new processor for `shard_id`.
    fn create_processor(&self, shard_id: &ShardId) -> Box<dyn ShardRecordProcessor>;
}

impl<F, P> ShardRecordProcessorFactory for F
where
    F: Fn(&ShardId) -> P + Send + Sync + 'static,
    P: ShardRecordProcessor,
{
    fn create_processor(&self, shard_id: &ShardId) -> Box<dyn ShardRecordProcessor> {
        Box::new(self(shard_id))
    }
}
