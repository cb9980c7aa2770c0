//! Shard ids, shards and their lineage.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::hash_key::HashKeyRange;
use crate::limits::ValidationError;
use crate::sequence::SequenceNumber;

/// A shard's id, `shardId-` followed by a 12-digit zero-padded index (`shardId-000000000007`).
///
/// Cloning is cheap. Ids from a service are accepted as given when they fit the service's
/// `ShardId` shape (1–128 characters of `[a-zA-Z0-9_.-]`); ids built from an index use the
/// service's naming.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(Arc<str>);

impl ShardId {
    /// The prefix every Kinesis shard id starts with.
    pub const PREFIX: &'static str = "shardId-";

    /// The id the service gives the shard with this creation index.
    pub fn from_index(index: u64) -> Self {
        ShardId(Arc::from(format!("{}{index:012}", Self::PREFIX)))
    }

    /// Wraps an id received from the service or a lease table; fails on text that cannot be a
    /// shard id (empty, over 128 characters, or a character outside `[a-zA-Z0-9_.-]`, such as
    /// the `:` of a multi-stream lease key).
    pub fn new(id: impl AsRef<str>) -> Result<Self, ValidationError> {
        let id = id.as_ref();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if id.is_empty() || id.len() > 128 || !id.chars().all(valid_char) {
            return Err(ValidationError::InvalidShardId { value: id.to_owned() });
        }
        Ok(ShardId(Arc::from(id)))
    }

    /// The creation index encoded in an id of the service's form, if it has that form.
    pub fn index(&self) -> Option<u64> {
        self.0.strip_prefix(Self::PREFIX)?.parse().ok()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ShardId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ShardId::new(s)
    }
}

impl AsRef<str> for ShardId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The sequence numbers a shard holds: from its starting number, up to its ending number once it
/// is closed by a split or merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceNumberRange {
    /// The first sequence number the shard can hold.
    pub starting: SequenceNumber,
    /// The last sequence number of a closed shard; `None` while the shard is open.
    pub ending: Option<SequenceNumber>,
}

/// A shard as `ListShards` describes it: its id, hash range, sequence range and lineage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The shard's id.
    pub shard_id: ShardId,
    /// The shard this one was split from, or the first parent of a merge.
    pub parent_shard_id: Option<ShardId>,
    /// The second parent of a merge.
    pub adjacent_parent_shard_id: Option<ShardId>,
    /// The hash keys routed to this shard.
    pub hash_key_range: HashKeyRange,
    /// The shard's sequence numbers.
    pub sequence_number_range: SequenceNumberRange,
}

impl Shard {
    /// Whether the shard is closed (split or merged away): it takes no more writes but stays
    /// readable until its records pass retention.
    pub fn is_closed(&self) -> bool {
        self.sequence_number_range.ending.is_some()
    }

    /// The shard's parents: none for an original shard, one after a split, two after a merge.
    pub fn parents(&self) -> impl Iterator<Item = &ShardId> {
        self.parent_shard_id.iter().chain(self.adjacent_parent_shard_id.iter())
    }
}

/// A child shard reported at the end of a closed parent (by `GetRecords` or a fan-out event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    /// The child's id.
    pub shard_id: ShardId,
    /// The child's parents (one for a split, two for a merge).
    pub parent_shards: Vec<ShardId>,
    /// The child's hash range.
    pub hash_key_range: HashKeyRange,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_id_naming() {
        let id = ShardId::from_index(7);
        assert_eq!(id.as_str(), "shardId-000000000007");
        assert_eq!(id.index(), Some(7));
        assert!(ShardId::from_index(2) < ShardId::from_index(10));
        assert_eq!(ShardId::new("custom").map(|s| s.index()), Ok(None));
        assert!(ShardId::new("").is_err());
        assert!(ShardId::new("x".repeat(129)).is_err());
        assert!(
            ShardId::new("123456789012:orders:1700000000:shardId-000000000001").is_err(),
            "a multi-stream lease key"
        );
        assert!(ShardId::new("shard id").is_err());
        assert!(ShardId::new("shard_id.v2-1").is_ok());
    }

    #[test]
    fn lineage() {
        let shard = Shard {
            shard_id: ShardId::from_index(3),
            parent_shard_id: Some(ShardId::from_index(1)),
            adjacent_parent_shard_id: Some(ShardId::from_index(2)),
            hash_key_range: HashKeyRange::FULL,
            sequence_number_range: SequenceNumberRange { starting: SequenceNumber::from_u128(5), ending: None },
        };
        let parents: Vec<_> = shard.parents().map(ShardId::as_str).collect();
        assert_eq!(parents, ["shardId-000000000001", "shardId-000000000002"]);
        assert!(!shard.is_closed());
    }
}
