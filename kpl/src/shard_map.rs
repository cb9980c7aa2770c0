//! Step 2: predict each record's shard. The map holds the open shards' hash-key ranges from
//! `ListShards` (`ShardFilter::AtLatest`), sorted, and finds a key's shard by binary search. The
//! pipeline re-reads it on a timer and as soon as a write lands on a shard the map did not
//! predict.

use std::collections::HashMap;

use kinesis_core::{HashKey, HashKeyRange, Kinesis, KinesisError, Shard, ShardFilter, ShardId, StreamRef};

/// One open shard in the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MapShard {
    pub id: ShardId,
    pub range: HashKeyRange,
    /// The shards it was split or merged from.
    pub parents: Vec<ShardId>,
}

/// The open shards of a stream, covering the whole hash-key space without gaps or overlaps.
#[derive(Debug)]
pub(crate) struct ShardMap {
    version: u64,
    /// Each shard's last hash key, ascending: what the binary search runs on.
    ends: Vec<HashKey>,
    shards: Vec<MapShard>,
    by_id: HashMap<ShardId, usize>,
}

impl ShardMap {
    /// Builds a map from a listing; closed shards are ignored. Fails when the open shards do not
    /// tile the key space exactly (a listing taken in the middle of a reshard), so the caller
    /// keeps its old map and tries again.
    pub fn new(version: u64, listing: Vec<Shard>) -> Result<Self, KinesisError> {
        let mut shards: Vec<MapShard> = listing
            .into_iter()
            .filter(|s| !s.is_closed())
            .map(|s| MapShard { parents: s.parents().cloned().collect(), id: s.shard_id, range: s.hash_key_range })
            .collect();
        shards.sort_by_key(|s| s.range.start());
        let inconsistent = |why: &str| KinesisError::Service {
            code: "InconsistentShardMap".to_owned(),
            message: format!("the open shards do not cover the hash-key space: {why}"),
        };
        let (Some(first), Some(last)) = (shards.first(), shards.last()) else {
            return Err(inconsistent("no open shards"));
        };
        if first.range.start() != HashKey::MIN || last.range.end() != HashKey::MAX {
            return Err(inconsistent("the ends of the key space are not covered"));
        }
        if let Some(pair) = shards.windows(2).find(|pair| !pair[0].range.is_adjacent_to(&pair[1].range)) {
            return Err(inconsistent(&format!("{} and {} are not adjacent", pair[0].id, pair[1].id)));
        }
        let ends = shards.iter().map(|s| s.range.end()).collect();
        let by_id = shards.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        Ok(ShardMap { version, ends, shards, by_id })
    }

    /// Increases with every map the pipeline installs.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The open shards, by ascending hash key.
    pub fn shards(&self) -> &[MapShard] {
        &self.shards
    }

    /// The position (in [`shards`](Self::shards)) of the shard owning `key`.
    pub fn lookup(&self, key: HashKey) -> usize {
        // The map tiles the key space, so the first shard ending at or after `key` owns it.
        self.ends.partition_point(|end| *end < key).min(self.shards.len().saturating_sub(1))
    }

    /// An open shard by id.
    pub fn get(&self, id: &ShardId) -> Option<&MapShard> {
        self.by_id.get(id).and_then(|&i| self.shards.get(i))
    }

    /// Whether `other` lists exactly the same shards with the same ranges.
    pub fn same_shards(&self, other: &ShardMap) -> bool {
        self.shards == other.shards
    }
}

/// Reads the stream's open shards.
pub(crate) async fn fetch(client: &dyn Kinesis, stream: &StreamRef) -> Result<Vec<Shard>, KinesisError> {
    client.list_all_shards(stream, Some(ShardFilter::AtLatest)).await
}

#[cfg(test)]
mod tests {
    use kinesis_core::SequenceNumber;
    use kinesis_core::shard::SequenceNumberRange;

    use super::*;

    fn shard(index: u64, range: HashKeyRange, closed: bool) -> Shard {
        Shard {
            shard_id: ShardId::from_index(index),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            hash_key_range: range,
            sequence_number_range: SequenceNumberRange {
                starting: SequenceNumber::from_u128(1),
                ending: closed.then(|| SequenceNumber::from_u128(2)),
            },
        }
    }

    #[test]
    fn lookup_by_binary_search() {
        let ranges = HashKeyRange::even_split(4);
        // Listed out of order, with a closed parent that must be ignored.
        let mut listing: Vec<Shard> =
            ranges.iter().enumerate().rev().map(|(i, r)| shard(i as u64 + 1, *r, false)).collect();
        listing.push(shard(0, HashKeyRange::FULL, true));
        let map = ShardMap::new(1, listing).expect("tiles the key space");
        assert_eq!(map.shards().len(), 4);
        for (i, range) in ranges.iter().enumerate() {
            assert_eq!(map.lookup(range.start()), i);
            assert_eq!(map.lookup(range.end()), i);
            assert_eq!(map.lookup(range.midpoint()), i);
        }
        assert_eq!(map.lookup(HashKey::MAX), 3);
        assert_eq!(map.get(&ShardId::from_index(2)).map(|s| s.range), Some(ranges[1]));
        assert!(map.get(&ShardId::from_index(0)).is_none(), "closed shards are not in the map");
    }

    #[test]
    fn gaps_and_overlaps_are_refused() {
        let ranges = HashKeyRange::even_split(3);
        assert!(ShardMap::new(1, vec![shard(0, ranges[0], false), shard(2, ranges[2], false)]).is_err());
        assert!(ShardMap::new(1, vec![shard(0, HashKeyRange::FULL, false), shard(1, ranges[2], false)]).is_err());
        assert!(ShardMap::new(1, vec![]).is_err());
        assert!(ShardMap::new(1, vec![shard(0, ranges[1], false)]).is_err());
    }
}
