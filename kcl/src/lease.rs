//! A lease: one worker's claim on one shard, with the shard's checkpoint.
//!
//! The fields are those of the Java KCL 3.x lease item, so a lease table can move between the
//! Java KCL and this crate (see `kcl-ddb-store` for the attribute names).

use bytes::Bytes;
use kinesis_core::{ExtendedSequenceNumber, HashKeyRange, ShardId};

/// The identity of one conditional write of a lease, stored on the item by the write itself.
///
/// A write whose reply is lost (a timeout, a dropped connection, a throttled retry after an
/// attempt that did land) leaves the writer unsure whether it took effect. Every write `kcl`
/// makes carries a fresh token; when a later write of the same writer fails its condition, the
/// item it gets back proves the earlier write landed only if it still carries that write's token
/// *and* the counter that write produced — so another worker's write (which carries its own token,
/// or none when it comes from the Java KCL) is never taken for one's own. The Java KCL ignores the
/// attribute (`kcl-ddb-store` stores it as `lastWriteToken`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WriteToken(String);

impl WriteToken {
    /// A fresh random token (128 bits, hex).
    pub fn new() -> Self {
        WriteToken(format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
    }

    /// A token read back from a store.
    pub fn from_stored(text: impl Into<String>) -> Self {
        WriteToken(text.into())
    }

    /// The token's text, as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for WriteToken {
    fn default() -> Self {
        WriteToken::new()
    }
}

impl std::fmt::Display for WriteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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
    /// The token of the last write that carried one (see [`WriteToken`]); `None` on items only
    /// the Java KCL has written.
    pub last_write: Option<WriteToken>,
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
            last_write: None,
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

    /// The worker processing the shard: the previous owner during a graceful handoff (it may
    /// still checkpoint), else the owner.
    pub fn holder(&self) -> Option<&str> {
        self.checkpoint_owner.as_deref().or(self.lease_owner.as_deref())
    }

    /// Whether the item is exactly what the write carrying `token` left: the token is still on
    /// it and the counter is the one that write set (`counter_after`). Proof that the write
    /// landed and nothing that bumps the counter happened since.
    pub fn shows_write(&self, token: &WriteToken, counter_after: u64) -> bool {
        self.last_write.as_ref() == Some(token) && self.lease_counter == counter_after
    }

    /// The shard the lease is for, when its key is a shard id (`shardId-` and 12 digits); `None`
    /// for any other key, which `kcl` then never processes (it does not guess a shard).
    pub fn shard_id(&self) -> Option<ShardId> {
        ShardId::new(&self.lease_key).ok()
    }
}
