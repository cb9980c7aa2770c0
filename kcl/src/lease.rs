//! A lease: one worker's claim on one shard, with the shard's checkpoint.
//!
//! The fields are those of the Java KCL 3.x lease item, so a lease table can move between the
//! Java KCL and this crate (see `kcl-ddb-store` for the attribute names).

use bytes::Bytes;
use kinesis_core::{ExtendedSequenceNumber, HashKeyRange};

/// A lease on one shard.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// The lease's key: the shard id for a single-stream application.
    pub lease_key: String,
    /// The worker that holds the lease; during a graceful handoff, the worker it is moving to.
    pub lease_owner: Option<String>,
    /// Optimistic-lock counter: every renewal, take, assignment and checkpoint adds one. Other
    /// workers judge a lease expired when they have not seen this change for a lease duration.
    pub lease_counter: u64,
    /// How far the shard has been processed.
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared (two-phase) checkpoint not yet committed.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// Application state saved with the prepared checkpoint.
    pub pending_checkpoint_state: Option<Bytes>,
    /// Owner changes since the last checkpoint (a hint of reprocessing).
    pub owner_switches_since_checkpoint: u64,
    /// The shard's parents (one after a split, two after a merge).
    pub parent_shard_ids: Vec<String>,
    /// The shard's children, recorded when it reached its end.
    pub child_shard_ids: Vec<String>,
    /// The shard's hash-key range.
    pub hash_key_range: Option<HashKeyRange>,
    /// Recent throughput of the shard as delivered to the processor, in KB/s.
    pub throughput_kbps: Option<f64>,
    /// During a graceful handoff: the previous owner, which may still checkpoint.
    pub checkpoint_owner: Option<String>,
}

impl Lease {
    /// A new, unowned lease on `lease_key` starting at `checkpoint`.
    pub fn new(lease_key: impl Into<String>, checkpoint: ExtendedSequenceNumber) -> Self {
        Lease {
            lease_key: lease_key.into(),
            lease_owner: None,
            lease_counter: 0,
            checkpoint,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: Vec::new(),
            child_shard_ids: Vec::new(),
            hash_key_range: None,
            throughput_kbps: None,
            checkpoint_owner: None,
        }
    }

    /// Whether the shard has been processed to its end.
    pub fn is_finished(&self) -> bool {
        self.checkpoint == ExtendedSequenceNumber::ShardEnd
    }

    /// Whether a graceful handoff is in progress (the old owner may still checkpoint).
    pub fn is_in_handoff(&self) -> bool {
        self.checkpoint_owner.is_some()
    }

    /// Whether `worker` is the lease's owner.
    pub fn is_owned_by(&self, worker: &str) -> bool {
        self.lease_owner.as_deref() == Some(worker)
    }
}
