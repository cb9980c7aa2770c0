//! The crate's error types.

use kinesis_core::{ExtendedSequenceNumber, KinesisError};
use thiserror::Error;

use crate::store::StoreError;

/// An error a record processor returns from a lifecycle call. Any error type converts into it
/// with `?` or `.into()`.
pub type ProcessorError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a checkpoint was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// This worker no longer holds the lease (another worker or the leader changed it, or it
    /// expired on this worker's clock). Nothing was written; stop processing the shard.
    #[error("lease on {shard_id} was lost; checkpoint not written")]
    LeaseLost {
        /// The shard.
        shard_id: String,
    },
    /// The shard was stopped after a processing error, or the processor was shut down; no more
    /// checkpoints are accepted through this checkpointer.
    #[error("checkpointer for {shard_id} is closed")]
    Closed {
        /// The shard.
        shard_id: String,
    },
    /// The position is below the lease's current checkpoint.
    #[error("checkpoint {requested} is below the current checkpoint {current}")]
    BelowCurrent {
        /// The position asked for.
        requested: ExtendedSequenceNumber,
        /// The lease's checkpoint.
        current: ExtendedSequenceNumber,
    },
    /// The position is beyond the largest record delivered to the processor.
    #[error("checkpoint {requested} is beyond the largest delivered record {largest:?}")]
    AboveLargestDelivered {
        /// The position asked for.
        requested: ExtendedSequenceNumber,
        /// The largest position delivered so far (`None`: nothing delivered yet).
        largest: Option<ExtendedSequenceNumber>,
    },
    /// A sentinel other than `SHARD_END` (or `SHARD_END` before the shard ended).
    #[error("cannot checkpoint at {requested}")]
    InvalidPosition {
        /// The position asked for.
        requested: ExtendedSequenceNumber,
    },
    /// The lease store failed; retrying later may succeed (see [`StoreError::is_retryable`]).
    #[error("lease store: {0}")]
    Store(#[source] StoreError),
}

impl CheckpointError {
    /// Whether the same checkpoint may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CheckpointError::Store(e) if e.is_retryable())
    }
}

/// Why a scheduler could not be built or failed to run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KclError {
    /// A required builder setting is missing or invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A Kinesis call failed.
    #[error("kinesis: {0}")]
    Kinesis(#[from] KinesisError),
    /// A store call failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// An error kept in the scheduler's state for a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardError {
    /// `process_records` failed and the shard was stopped (policy `StopShard`, or `Retry` out of
    /// attempts).
    ProcessingStopped {
        /// Deliveries of the failing batch.
        attempts: u32,
        /// The processor's error, as text.
        message: String,
    },
    /// `process_records` failed and the batch will be delivered again.
    ProcessingRetrying {
        /// Deliveries so far.
        attempts: u32,
        /// The processor's error, as text.
        message: String,
    },
    /// `initialize` failed; it is retried with backoff.
    Initialize {
        /// The processor's error, as text.
        message: String,
    },
    /// The shard ended but the processor did not checkpoint `SHARD_END`: the shard is not
    /// finished and its children stay blocked. `shard_ended` is called again with backoff.
    ShardEndNotCheckpointed,
    /// Reading the shard failed (it is retried with backoff).
    Retrieval {
        /// The Kinesis error, as text.
        message: String,
    },
}

impl std::fmt::Display for ShardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardError::ProcessingStopped { attempts, message } => {
                write!(f, "processing stopped after {attempts} failed deliveries: {message}")
            }
            ShardError::ProcessingRetrying { attempts, message } => {
                write!(f, "processing failed {attempts} times, retrying: {message}")
            }
            ShardError::Initialize { message } => write!(f, "initialize failed: {message}"),
            ShardError::ShardEndNotCheckpointed => {
                f.write_str("shard ended but the processor did not checkpoint SHARD_END; children stay blocked")
            }
            ShardError::Retrieval { message } => write!(f, "retrieval failed: {message}"),
        }
    }
}
