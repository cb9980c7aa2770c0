//! Helpers shared by kpl's integration tests: records with a checkable header, reading a whole
//! stream back, and de-aggregating it with `kinesis_core::aggregation`.

#![allow(dead_code)]

use std::collections::HashMap;

use bytes::Bytes;
use kinesis_core::aggregation::{Decoded, decode_record};
use kinesis_core::sequence::StartingPosition;
use kinesis_core::{HashKey, HashKeyRange, Kinesis, SequenceNumber, Shard, ShardId, StreamRef};
use kpl::UserRecord;

/// A record whose data starts with `"<key> <n> "` (the workspace's `produce` header), padded to
/// `size` bytes.
pub fn record(key: &str, n: u64, size: usize) -> UserRecord {
    let mut data = format!("{key} {n} ").into_bytes();
    if data.len() < size {
        data.resize(size, b'.');
    }
    UserRecord::new(key, data)
}

/// The `(key, n)` of a record written by [`record`].
pub fn header(data: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(data.get(..data.len().min(64))?).ok()?;
    let mut parts = text.splitn(3, ' ');
    let key = parts.next()?.to_owned();
    let n = parts.next()?.parse().ok()?;
    Some((key, n))
}

/// One user record as read back from the stream.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    pub shard: ShardId,
    pub sequence_number: SequenceNumber,
    pub sub_sequence_number: u64,
    pub partition_key: String,
    pub hash_key: HashKey,
    pub data: Bytes,
    /// Whether the shard's hash range holds the record's hash key (the KCL's filter).
    pub in_range: bool,
    pub aggregated: bool,
}

/// A shard and everything stored in it, de-aggregated, in order.
#[derive(Debug)]
pub struct ShardContents {
    pub shard: Shard,
    pub records: Vec<ReadRecord>,
    /// Kinesis records read (aggregates count once).
    pub kinesis_records: usize,
}

/// Reads every shard of the stream from `TRIM_HORIZON` to its end (closed shards) or tip (open
/// ones), in listing order (parents before children), and de-aggregates what it finds.
pub async fn read_stream(client: &dyn Kinesis, stream: &StreamRef) -> Vec<ShardContents> {
    let mut shards = client.list_all_shards(stream, None).await.expect("list shards");
    shards.sort_by_key(|s| s.shard_id.index());
    let mut out = Vec::new();
    for shard in shards {
        let mut iterator = Some(
            client
                .get_shard_iterator(stream, &shard.shard_id, StartingPosition::TrimHorizon)
                .await
                .expect("shard iterator"),
        );
        let mut records = Vec::new();
        let mut kinesis_records = 0;
        let mut empty_pages = 0;
        while let Some(it) = iterator.take() {
            let page = client.get_records(&it, Some(10_000)).await.expect("get records");
            let empty = page.records.is_empty();
            for kinesis_record in page.records {
                kinesis_records += 1;
                records.extend(expand(&shard, kinesis_record));
            }
            empty_pages = if empty { empty_pages + 1 } else { 0 };
            let caught_up = empty && (page.millis_behind_latest == Some(0) || empty_pages > 20);
            iterator = if caught_up { None } else { page.next_shard_iterator };
        }
        out.push(ShardContents { shard, records, kinesis_records });
    }
    out
}

/// De-aggregates one Kinesis record (compressed envelopes included) with
/// `kinesis_core::aggregation::decode_record`.
pub fn expand(shard: &Shard, record: kinesis_core::Record) -> Vec<ReadRecord> {
    let range: HashKeyRange = shard.hash_key_range;
    match decode_record(&record.data).expect("a decodable record") {
        Decoded::Aggregated(subs) => subs
            .into_iter()
            .map(|sub| {
                let hash_key = sub.hash_key();
                ReadRecord {
                    shard: shard.shard_id.clone(),
                    sequence_number: record.sequence_number.clone(),
                    sub_sequence_number: sub.sub_sequence_number(),
                    partition_key: sub.partition_key().to_owned(),
                    hash_key,
                    data: sub.data().clone(),
                    in_range: range.contains(hash_key),
                    aggregated: true,
                }
            })
            .collect(),
        Decoded::NotAggregated => {
            let hash_key = HashKey::from_partition_key(&record.partition_key);
            vec![ReadRecord {
                shard: shard.shard_id.clone(),
                sequence_number: record.sequence_number,
                sub_sequence_number: 0,
                partition_key: record.partition_key,
                hash_key,
                data: record.data,
                in_range: range.contains(hash_key),
                aggregated: false,
            }]
        }
    }
}

/// Every copy of each `(key, n)` found in the stream.
pub fn copies(contents: &[ShardContents]) -> HashMap<(String, u64), Vec<ReadRecord>> {
    let mut map: HashMap<(String, u64), Vec<ReadRecord>> = HashMap::new();
    for shard in contents {
        for record in &shard.records {
            let id = header(&record.data).expect("every stored record has a header");
            map.entry(id).or_default().push(record.clone());
        }
    }
    map
}
