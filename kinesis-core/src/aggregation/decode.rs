//! The decoder: tells aggregated records from plain ones and expands aggregates into user records,
//! never panicking on any input.

use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use super::{AggregationError, DIGEST_LEN, FIXED_OVERHEAD, MAGIC, Tag, proto};
use crate::hash_key::HashKey;
use crate::limits::{MAX_MAX_RECORD_SIZE_KIB, ValidationError};

/// How much a decoder may expand one Kinesis record into, so that no input — a compressed
/// envelope that inflates a thousandfold, an aggregate of millions of empty user records — can
/// make a consumer allocate without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest aggregate a compressed envelope may inflate to: the stream's maximum record size
    /// (a producer compresses an aggregate that fitted in a record). Default 10 MiB, the service's
    /// largest.
    pub max_inflated_bytes: usize,
    /// Most user records one aggregate may hold. Default 262,144: far above what any producer
    /// writes (the KPL's default 51,200-byte aggregates hold at most about 8,500; a 1 MiB
    /// aggregate of empty records about 174,000).
    pub max_user_records: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_inflated_bytes: MAX_MAX_RECORD_SIZE_KIB as usize * 1024, max_user_records: 1 << 18 }
    }
}

/// What a Kinesis record's data turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A plain record: no magic, or too short to be an aggregate. Use the record as it is.
    NotAggregated,
    /// An aggregate, expanded into its user records in sub-sequence order. It may hold no
    /// records at all, if that is what its producer wrote.
    Aggregated(Vec<SubRecord>),
}

impl Decoded {
    /// Whether the record was an aggregate.
    pub fn is_aggregated(&self) -> bool {
        matches!(self, Decoded::Aggregated(_))
    }
}

/// One user record expanded from an aggregate.
///
/// Its data is a slice of the aggregate's buffer (no copy), and records that share a partition key
/// share one allocation of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubRecord {
    partition_key: Arc<str>,
    explicit_hash_key: Option<ExplicitHashKey>,
    data: Bytes,
    tags: Vec<Tag>,
    sub_sequence_number: u64,
}

/// An explicit hash key as written, and its parsed value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ExplicitHashKey {
    text: Arc<str>,
    key: HashKey,
}

impl SubRecord {
    /// The user record's partition key.
    pub fn partition_key(&self) -> &str {
        &self.partition_key
    }

    /// The partition key as a shared string, for callers that keep it without copying.
    pub fn shared_partition_key(&self) -> &Arc<str> {
        &self.partition_key
    }

    /// The explicit hash key the producer gave the user record, as written (decimal).
    pub fn explicit_hash_key(&self) -> Option<&str> {
        self.explicit_hash_key.as_ref().map(|ehk| &*ehk.text)
    }

    /// The user record's payload, a slice of the aggregate's buffer.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Takes the payload out of the record.
    pub fn into_data(self) -> Bytes {
        self.data
    }

    /// The user record's tags (almost always none: the KPL does not write them).
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// The user record's position in the aggregate: with the aggregate's sequence number, the
    /// position a consumer checkpoints.
    pub fn sub_sequence_number(&self) -> u64 {
        self.sub_sequence_number
    }

    /// The hash key that decides the user record's shard: its explicit hash key if it has one,
    /// else the MD5 of its partition key.
    ///
    /// The KCL drops a whole aggregate when any of its records' hash keys lies outside the shard
    /// it was read from (records aggregated for another shard).
    pub fn hash_key(&self) -> HashKey {
        match &self.explicit_hash_key {
            Some(ehk) => ehk.key,
            None => HashKey::from_partition_key(&self.partition_key),
        }
    }
}

/// Whether `data` has the shape of an aggregate: the magic followed by more than the 16-byte
/// digest. This is the KCL's test; it does not verify the digest.
pub fn is_aggregated(data: &[u8]) -> bool {
    data.len() > FIXED_OVERHEAD && data.starts_with(&MAGIC)
}

/// Decodes a Kinesis record's data: a plain record, an aggregate's user records, or an error that
/// says why a record carrying the magic is not a valid aggregate.
///
/// Follows the KCL's rules: data shorter than 4 bytes, not starting with the magic, or with 16
/// bytes or fewer after it is not aggregated. Otherwise the MD5 of the bytes between magic and
/// digest must match the digest, the body must parse, every required field must be present, every
/// key index must point into its table, and every explicit hash key used must be a valid hash key.
/// [`AggregationError::kcl_passes_through`] says which failures the KCL delivers as plain records.
///
/// Never panics, whatever the input; user records' data are slices of `record_data`, not copies.
/// An aggregate of more user records than [`DecodeLimits::default`] allows is refused
/// ([`AggregationError::OverLimit`]); [`decode_with_limits`] sets other limits.
pub fn decode(record_data: &Bytes) -> Result<Decoded, AggregationError> {
    decode_with_limits(record_data, &DecodeLimits::default())
}

/// [`decode`] with explicit limits.
pub fn decode_with_limits(record_data: &Bytes, limits: &DecodeLimits) -> Result<Decoded, AggregationError> {
    if !is_aggregated(record_data) {
        return Ok(Decoded::NotAggregated);
    }
    let body_end = record_data.len() - DIGEST_LEN;
    let body = record_data.slice(MAGIC.len()..body_end);
    let mut expected = [0u8; DIGEST_LEN];
    expected.copy_from_slice(record_data.get(body_end..).unwrap_or(&[0; DIGEST_LEN]));
    let mut actual = [0u8; DIGEST_LEN];
    actual.copy_from_slice(&Md5::digest(&body));
    if expected != actual {
        return Err(AggregationError::ChecksumMismatch { expected, actual });
    }
    let message = proto::AggregatedRecordLazy::decode(body)?;
    if message.records.len() > limits.max_user_records {
        return Err(AggregationError::OverLimit { what: "user records", limit: limits.max_user_records });
    }
    expand(message).map(Decoded::Aggregated)
}

/// Decodes the records of a parsed aggregate one by one and resolves them against its key tables.
fn expand(message: proto::AggregatedRecordLazy) -> Result<Vec<SubRecord>, AggregationError> {
    let partition_keys: Vec<Arc<str>> = message.partition_key_table.into_iter().map(Arc::from).collect();
    // Explicit hash keys are parsed once per table entry; an invalid entry is an error only if a
    // record uses it.
    let explicit_hash_keys: Vec<(Arc<str>, Result<HashKey, ValidationError>)> = message
        .explicit_hash_key_table
        .into_iter()
        .map(|text| {
            let key = HashKey::parse_explicit(&text);
            (Arc::from(text), key)
        })
        .collect();

    let mut records = Vec::with_capacity(message.records.len());
    for (position, encoded) in message.records.into_iter().enumerate() {
        let record = proto::Record::decode(encoded)?;
        let missing = |field| AggregationError::MissingField { record: position, field };

        let index = record.partition_key_index.ok_or_else(|| missing("partition_key_index"))?;
        let partition_key = table_entry(&partition_keys, index)
            .ok_or(AggregationError::PartitionKeyIndexOutOfRange {
                record: position,
                index,
                table_len: partition_keys.len(),
            })?
            .clone();

        let explicit_hash_key = match record.explicit_hash_key_index {
            None => None,
            Some(index) => {
                let (text, key) = table_entry(&explicit_hash_keys, index).ok_or(
                    AggregationError::ExplicitHashKeyIndexOutOfRange {
                        record: position,
                        index,
                        table_len: explicit_hash_keys.len(),
                    },
                )?;
                let key = key
                    .clone()
                    .map_err(|source| AggregationError::InvalidExplicitHashKey { record: position, source })?;
                Some(ExplicitHashKey { text: text.clone(), key })
            }
        };

        let data = record.data.ok_or_else(|| missing("data"))?;
        let tags = record
            .tags
            .into_iter()
            .map(|tag| Ok(Tag { key: tag.key.ok_or_else(|| missing("tags.key"))?, value: tag.value }))
            .collect::<Result<Vec<_>, AggregationError>>()?;

        records.push(SubRecord { partition_key, explicit_hash_key, data, tags, sub_sequence_number: position as u64 });
    }
    Ok(records)
}

fn table_entry<T>(table: &[T], index: u64) -> Option<&T> {
    usize::try_from(index).ok().and_then(|index| table.get(index))
}
