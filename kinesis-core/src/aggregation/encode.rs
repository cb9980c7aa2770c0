//! The encoder: [`AggregateBuilder`] writes the protobuf bytes directly, with exact incremental
//! size accounting, and computes the MD5 once when the aggregate is finished.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::ops::Range;

use bytes::Bytes;
use md5::{Digest, Md5};

use super::{FIXED_OVERHEAD, MAGIC, Tag, field_len, varint_len};

// Tag bytes: (field number << 3) | wire type.
const PARTITION_KEY_TABLE: u8 = 0x0A; // AggregatedRecord.partition_key_table = 1, len
const EXPLICIT_HASH_KEY_TABLE: u8 = 0x12; // AggregatedRecord.explicit_hash_key_table = 2, len
const RECORDS: u8 = 0x1A; // AggregatedRecord.records = 3, len
const RECORD_PARTITION_KEY_INDEX: u8 = 0x08; // Record.partition_key_index = 1, varint
const RECORD_EXPLICIT_HASH_KEY_INDEX: u8 = 0x10; // Record.explicit_hash_key_index = 2, varint
const RECORD_DATA: u8 = 0x1A; // Record.data = 3, len
const RECORD_TAGS: u8 = 0x22; // Record.tags = 4, len
const TAG_KEY: u8 = 0x0A; // Tag.key = 1, len
const TAG_VALUE: u8 = 0x12; // Tag.value = 2, len

const NONE: usize = usize::MAX;

/// Builds one KPL aggregated record from user records, tracking its exact encoded size.
///
/// Records are encoded in the order they are added; that order is their sub-sequence number.
/// Partition keys and explicit hash keys are stored once each in their tables and referred to by
/// index, as the KPL does. [`encoded_len`](Self::encoded_len) and
/// [`size_with`](Self::size_with) are exact (magic, protobuf and digest included), so a caller can
/// fill an aggregate up to a byte limit without ever encoding it speculatively.
///
/// The builder keeps each record's data as a [`Bytes`] handle (no copy) until
/// [`finish`](Self::finish) or [`take`](Self::take) writes the aggregate into one exactly sized
/// buffer. Keys are copied into the builder's own tables; nothing is allocated per record beyond
/// those tables' amortized growth. `take` empties the builder but keeps its allocations, so one
/// builder per shard can be reused for every aggregate.
///
/// The builder does not validate keys: partition keys and explicit hash keys are expected to have
/// passed [`StreamLimits::validate_record`](crate::StreamLimits::validate_record) already.
///
/// ```
/// use bytes::Bytes;
/// use kinesis_core::aggregation::AggregateBuilder;
///
/// let mut builder = AggregateBuilder::new();
/// let limit = 200;
/// let mut sent = 0;
/// for n in 0..100 {
///     let data = Bytes::from(format!("record {n}"));
///     if builder.try_add("key", None, data, &[], limit).is_err() {
///         break; // full: finish this aggregate and start another
///     }
///     sent += 1;
/// }
/// let aggregate = builder.finish();
/// assert!(aggregate.len() <= limit);
/// assert_eq!(sent, 12); // 20 bytes of overhead, 5 for the key, 14 or 15 per record
/// ```
#[derive(Debug)]
pub struct AggregateBuilder {
    partition_keys: KeyTable,
    explicit_hash_keys: KeyTable,
    records: Vec<PendingRecord>,
    /// Encoded bytes of all `records` entries (tag, length and body of each).
    records_len: usize,
    /// Encoded `tags` fields of all records, each record owning a range.
    tag_bytes: Vec<u8>,
}

/// A user record waiting to be encoded.
#[derive(Debug)]
struct PendingRecord {
    partition_key_index: usize,
    explicit_hash_key_index: Option<usize>,
    /// Length of the encoded `Record` message.
    body_len: usize,
    data: Bytes,
    tags: Range<usize>,
}

/// What adding a record would do, worked out without changing the builder.
struct Plan {
    partition_key: Slot,
    explicit_hash_key: Option<Slot>,
    body_len: usize,
    /// `encoded_len()` after the record is added.
    new_len: usize,
}

impl AggregateBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty builder with room for `records` user records before it reallocates.
    pub fn with_capacity(records: usize) -> Self {
        AggregateBuilder { records: Vec::with_capacity(records), ..Self::default() }
    }

    /// Number of user records added so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no user record has been added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The exact length [`finish`](Self::finish) would return now: magic, protobuf and digest.
    ///
    /// An empty builder reports [`FIXED_OVERHEAD`] (20 bytes).
    pub fn encoded_len(&self) -> usize {
        FIXED_OVERHEAD + self.partition_keys.encoded.len() + self.explicit_hash_keys.encoded.len() + self.records_len
    }

    /// The exact [`encoded_len`](Self::encoded_len) the aggregate would have after adding a
    /// record with this partition key, explicit hash key, data length and tags.
    ///
    /// Keys already in the tables cost only their index; new keys cost their table entry too.
    pub fn size_with(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
        tags: &[Tag],
    ) -> usize {
        self.plan(partition_key, explicit_hash_key, data_len, tags_len(tags)).new_len
    }

    /// Adds a user record and returns its sub-sequence number (its position in the aggregate).
    ///
    /// `data` is kept as is (no copy) until the aggregate is encoded.
    pub fn add(&mut self, partition_key: &str, explicit_hash_key: Option<&str>, data: Bytes, tags: &[Tag]) -> u64 {
        let tags_len = tags_len(tags);
        let plan = self.plan(partition_key, explicit_hash_key, data.len(), tags_len);
        self.commit(plan, partition_key, explicit_hash_key, data, tags, tags_len)
    }

    /// Adds a user record only if the aggregate stays within `max_encoded_len` bytes, and returns
    /// its sub-sequence number; otherwise leaves the builder unchanged and hands `data` back.
    ///
    /// This is [`size_with`](Self::size_with) and [`add`](Self::add) in one step, with a single
    /// key lookup.
    pub fn try_add(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: Bytes,
        tags: &[Tag],
        max_encoded_len: usize,
    ) -> Result<u64, Bytes> {
        let tags_len = tags_len(tags);
        let plan = self.plan(partition_key, explicit_hash_key, data.len(), tags_len);
        if plan.new_len > max_encoded_len {
            return Err(data);
        }
        Ok(self.commit(plan, partition_key, explicit_hash_key, data, tags, tags_len))
    }

    /// Encodes the aggregate: magic, protobuf body, MD5 of the body.
    ///
    /// The result is exactly [`encoded_len`](Self::encoded_len) bytes, built in one allocation.
    /// An aggregate of no records is 20 bytes long, which consumers read as a plain record, not an
    /// aggregate; the KPL never sends one (nor, by default, one of a single record).
    pub fn finish(self) -> Bytes {
        self.encode(None)
    }

    /// Encodes the aggregate like [`finish`](Self::finish), then empties the builder for the next
    /// aggregate, keeping its allocations.
    pub fn take(&mut self) -> Bytes {
        let encoded = self.encode(None);
        self.clear();
        encoded
    }

    /// Encodes and empties the builder like [`take`](Self::take), and appends to `ranges` where
    /// each record's data lies in the result, in sub-sequence order. A caller can then keep
    /// slices of the aggregate (`Bytes::slice`) instead of the records' own buffers, holding the
    /// data once.
    pub fn take_with_data_ranges(&mut self, ranges: &mut Vec<Range<usize>>) -> Bytes {
        let encoded = self.encode(Some(ranges));
        self.clear();
        encoded
    }

    /// Drops every record and key, keeping allocations for reuse.
    pub fn clear(&mut self) {
        self.partition_keys.clear();
        self.explicit_hash_keys.clear();
        self.records.clear();
        self.records_len = 0;
        self.tag_bytes.clear();
    }

    fn plan(&self, partition_key: &str, explicit_hash_key: Option<&str>, data_len: usize, tags_len: usize) -> Plan {
        let mut tables_growth = 0;
        let partition_key_slot = self.partition_keys.find(partition_key);
        let pk_index = match partition_key_slot {
            Slot::Existing(index) => index,
            Slot::New(_) => {
                tables_growth += field_len(partition_key.len());
                self.partition_keys.len()
            }
        };
        let mut body_len = 1 + varint_len(pk_index as u64) + field_len(data_len) + tags_len;
        let explicit_hash_key_slot = explicit_hash_key.map(|ehk| {
            let slot = self.explicit_hash_keys.find(ehk);
            let index = match slot {
                Slot::Existing(index) => index,
                Slot::New(_) => {
                    tables_growth += field_len(ehk.len());
                    self.explicit_hash_keys.len()
                }
            };
            body_len += 1 + varint_len(index as u64);
            slot
        });
        Plan {
            partition_key: partition_key_slot,
            explicit_hash_key: explicit_hash_key_slot,
            body_len,
            new_len: self.encoded_len() + tables_growth + field_len(body_len),
        }
    }

    fn commit(
        &mut self,
        plan: Plan,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: Bytes,
        tags: &[Tag],
        tags_len: usize,
    ) -> u64 {
        let partition_key_index = self.partition_keys.resolve(partition_key, plan.partition_key);
        let explicit_hash_key_index = match (explicit_hash_key, plan.explicit_hash_key) {
            (Some(ehk), Some(slot)) => Some(self.explicit_hash_keys.resolve(ehk, slot)),
            _ => None,
        };
        let tags_start = self.tag_bytes.len();
        if !tags.is_empty() {
            self.tag_bytes.reserve(tags_len);
            for tag in tags {
                encode_tag(&mut self.tag_bytes, tag);
            }
        }
        debug_assert_eq!(self.tag_bytes.len() - tags_start, tags_len);
        self.records_len += field_len(plan.body_len);
        self.records.push(PendingRecord {
            partition_key_index,
            explicit_hash_key_index,
            body_len: plan.body_len,
            data,
            tags: tags_start..self.tag_bytes.len(),
        });
        (self.records.len() - 1) as u64
    }

    fn encode(&self, mut ranges: Option<&mut Vec<Range<usize>>>) -> Bytes {
        let total = self.encoded_len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.partition_keys.encoded);
        out.extend_from_slice(&self.explicit_hash_keys.encoded);
        for record in &self.records {
            // Tag, length and the fixed fields of the record, at most 1+10 + 1+10 + 1+10 + 1+10.
            let mut header = [0u8; 44];
            let mut at = 0;
            at = put_byte(&mut header, at, RECORDS);
            at = put_varint(&mut header, at, record.body_len as u64);
            at = put_byte(&mut header, at, RECORD_PARTITION_KEY_INDEX);
            at = put_varint(&mut header, at, record.partition_key_index as u64);
            if let Some(index) = record.explicit_hash_key_index {
                at = put_byte(&mut header, at, RECORD_EXPLICIT_HASH_KEY_INDEX);
                at = put_varint(&mut header, at, index as u64);
            }
            at = put_byte(&mut header, at, RECORD_DATA);
            at = put_varint(&mut header, at, record.data.len() as u64);
            out.extend_from_slice(header.get(..at).unwrap_or_default());
            if let Some(ranges) = ranges.as_deref_mut() {
                ranges.push(out.len()..out.len() + record.data.len());
            }
            out.extend_from_slice(&record.data);
            out.extend_from_slice(self.tag_bytes.get(record.tags.clone()).unwrap_or_default());
        }
        let digest = Md5::digest(out.get(MAGIC.len()..).unwrap_or_default());
        out.extend_from_slice(&digest);
        debug_assert_eq!(out.len(), total, "size accounting must match the encoding");
        Bytes::from(out)
    }
}

/// Encoded length of the `tags` fields of one record.
fn tags_len(tags: &[Tag]) -> usize {
    tags.iter().map(|tag| field_len(tag_body_len(tag))).sum()
}

fn tag_body_len(tag: &Tag) -> usize {
    field_len(tag.key.len()) + tag.value.as_ref().map_or(0, |value| field_len(value.len()))
}

fn encode_tag(out: &mut Vec<u8>, tag: &Tag) {
    out.push(RECORD_TAGS);
    push_varint(out, tag_body_len(tag) as u64);
    push_string(out, TAG_KEY, &tag.key);
    if let Some(value) = &tag.value {
        push_string(out, TAG_VALUE, value);
    }
}

fn push_string(out: &mut Vec<u8>, tag: u8, text: &str) {
    out.push(tag);
    push_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes `byte` at `at` in a scratch buffer sized for the worst case; returns the next position.
#[inline]
fn put_byte(buf: &mut [u8], at: usize, byte: u8) -> usize {
    if let Some(slot) = buf.get_mut(at) {
        *slot = byte;
    }
    at + 1
}

#[inline]
fn put_varint(buf: &mut [u8], mut at: usize, mut value: u64) -> usize {
    while value >= 0x80 {
        at = put_byte(buf, at, (value as u8) | 0x80);
        value >>= 7;
    }
    put_byte(buf, at, value as u8)
}

/// Where a key is, or would go, in a key table.
#[derive(Clone, Copy)]
enum Slot {
    /// Already in the table at this index.
    Existing(usize),
    /// Not in the table; this is its hash.
    New(u64),
}

/// A de-duplicated key table, kept already encoded as the repeated string field it becomes.
///
/// Keys live in one arena (`encoded`), so a new key costs no allocation of its own. Lookup goes
/// through a map from a keyed hash of the key to the first index with that hash, with collisions
/// chained through `chain`; the last key used is checked first, since producers often send runs
/// of records with the same key.
#[derive(Debug)]
struct KeyTable {
    /// Protobuf tag byte of the table's field.
    tag: u8,
    /// The encoded field entries: tag, length, key bytes, for each key in index order.
    encoded: Vec<u8>,
    /// Where each key's bytes are in `encoded`.
    spans: Vec<Range<usize>>,
    /// For each index, the next index with the same hash, or `NONE`.
    chain: Vec<usize>,
    /// Hash of a key → the most recently added index with that hash.
    heads: HashMap<u64, usize, BuildHasherDefault<PassThroughHasher>>,
    hasher: RandomState,
    /// Index of the key most recently added or resolved, or `NONE`.
    last: usize,
}

impl KeyTable {
    fn new(tag: u8) -> Self {
        KeyTable {
            tag,
            encoded: Vec::new(),
            spans: Vec::new(),
            chain: Vec::new(),
            heads: HashMap::default(),
            hasher: RandomState::new(),
            last: NONE,
        }
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn key(&self, index: usize) -> &[u8] {
        self.spans.get(index).and_then(|span| self.encoded.get(span.clone())).unwrap_or_default()
    }

    fn find(&self, key: &str) -> Slot {
        if self.last != NONE && self.key(self.last) == key.as_bytes() {
            return Slot::Existing(self.last);
        }
        let hash = self.hasher.hash_one(key);
        let mut index = self.heads.get(&hash).copied().unwrap_or(NONE);
        while index != NONE {
            if self.key(index) == key.as_bytes() {
                return Slot::Existing(index);
            }
            index = self.chain.get(index).copied().unwrap_or(NONE);
        }
        Slot::New(hash)
    }

    /// The index of `key`, inserting it if `slot` says it is new.
    fn resolve(&mut self, key: &str, slot: Slot) -> usize {
        let index = match slot {
            Slot::Existing(index) => index,
            Slot::New(hash) => {
                let index = self.spans.len();
                self.encoded.push(self.tag);
                push_varint(&mut self.encoded, key.len() as u64);
                let start = self.encoded.len();
                self.encoded.extend_from_slice(key.as_bytes());
                self.spans.push(start..self.encoded.len());
                self.chain.push(self.heads.insert(hash, index).unwrap_or(NONE));
                index
            }
        };
        self.last = index;
        index
    }

    fn clear(&mut self) {
        self.encoded.clear();
        self.spans.clear();
        self.chain.clear();
        self.heads.clear();
        self.last = NONE;
    }
}

impl Default for AggregateBuilder {
    fn default() -> Self {
        AggregateBuilder {
            partition_keys: KeyTable::new(PARTITION_KEY_TABLE),
            explicit_hash_keys: KeyTable::new(EXPLICIT_HASH_KEY_TABLE),
            records: Vec::new(),
            records_len: 0,
            tag_bytes: Vec::new(),
        }
    }
}

/// Hasher for keys that are already hashes.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}
