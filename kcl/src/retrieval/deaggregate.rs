//! Turns Kinesis records into the user records a processor sees: expands KPL aggregates
//! (including the compressed envelope), keeps sub-sequence numbers, skips what a resumed
//! checkpoint already covers, and drops sub-records that do not belong to the lease's hash range.
//!
//! # The hash-range rule
//!
//! Kinesis routes a record by its own partition key (or explicit hash key); for a KPL aggregate
//! that is one key chosen for the whole aggregate, so the service knows nothing about the keys of
//! the user records inside. A producer that aggregated with a stale shard map (the shard split
//! while records were buffered) can therefore land user records in a shard whose hash range does
//! not contain their keys. The KPL detects this from the `PutRecords` result ("wrong shard") and
//! sends those user records again, so they also appear, correctly routed, in the shard that owns
//! their keys.
//!
//! The Java KCL drops the **whole** aggregate when any sub-record is out of range
//! (`AggregatorUtil.deaggregate`). That loses the in-range sub-records whenever the producer does
//! not re-send them (any producer other than the KPL, or a KPL that gave up).
//!
//! This crate drops **only the sub-records whose effective hash key** (explicit hash key, else
//! MD5 of the partition key) **lies outside the lease's hash range**, i.e. exactly those a
//! correctly routed write would have put into another shard; it counts them in
//! `DroppedOutOfRangeSubRecords`. In-range sub-records of the same aggregate are delivered. Plain
//! (non-aggregated) records are never dropped: the service routed them here itself. Leases
//! without a recorded hash range filter nothing.
//!
//! # Fast path
//!
//! The common case — an uncompressed, well-formed KPL aggregate without explicit hash keys or
//! tags — is expanded in one pass straight into [`KinesisClientRecord`]s: the checksum is
//! verified, the protobuf is read without building intermediate messages, and partition keys are
//! looked up once per aggregate's key table in a per-shard cache that keeps both the shared key
//! string and whether its hash lies in the lease's range. Anything else (compressed envelope,
//! explicit hash keys, tags, unknown or repeated fields, a missing field, an index out of range,
//! a bad checksum, invalid UTF-8) goes through `kinesis_core::aggregation::decode_record`, which
//! is the reference: the fast path only accepts inputs on which both give the same result (a
//! property test checks this), and any doubt falls back.
//!
//! # Corrupt aggregates
//!
//! As in the Java KCL: a record that carries the magic but fails its checksum or does not parse
//! is delivered as a plain record; an aggregate that parses but refers to missing keys is not
//! delivered, and counted in `DeaggregationErrors` with an error log.
//!
//! # Bounds
//!
//! Nothing a producer writes can make a worker allocate without bound: a compressed envelope is
//! inflated at most to the stream's maximum record size, an aggregate of more user records than
//! [`DecodeLimits::max_user_records`] (262,144 by default) is not expanded, and both are handled
//! as undecodable aggregates (not delivered, counted in `DeaggregationErrors`). A read is expanded
//! in chunks ([`Deaggregator::expand_chunk`]) each charged against the shard's prefetch budget
//! before the next is expanded — its data bytes plus [`RECORD_OVERHEAD_BYTES`] per user record — so
//! a read of many small user records is split into several batches rather than expanded whole.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use kinesis_core::aggregation::{DIGEST_LEN, DecodeLimits, Decoded, MAGIC, decode_record_with_limits, is_aggregated};
use kinesis_core::{ExtendedSequenceNumber, HashKey, HashKeyRange, Record, SequenceNumber};
use md5::{Digest, Md5};

use crate::record::KinesisClientRecord;

/// Most partition keys remembered per shard (the cache is emptied when full): enough for the
/// key tables of a producer's aggregates, small enough (≈ 0.5 MiB with UUID keys) that a
/// worker holding many shards of a stream with unique keys does not pay much for a cache that
/// cannot help it.
const KEY_CACHE_CAPACITY: usize = 1 << 12;
/// Most user records a batch vector is sized for in advance (it still grows beyond).
const MAX_PREALLOCATED: usize = 1 << 17;

/// What a user record costs a worker beyond its data, as the prefetch budget counts it: the
/// record itself (sequence number, key, timestamps, the data's handle).
pub(crate) const RECORD_OVERHEAD_BYTES: usize = std::mem::size_of::<KinesisClientRecord>() + 32;

/// User records expanded from some of a read's Kinesis records.
pub(crate) struct Expanded {
    pub records: Vec<KinesisClientRecord>,
    /// Their data bytes.
    pub bytes: usize,
    /// What they cost the prefetch budget: data plus the per-record overhead.
    pub charge: usize,
}

/// A fast hasher for short partition keys (the cache is private, so no flooding concern beyond
/// the capacity bound).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

/// Per-shard de-aggregation state.
pub(crate) struct Deaggregator {
    /// The lease's hash range, when it filters anything (not the full key space).
    range: Option<HashKeyRange>,
    /// Skip positions at or below this one (a checkpoint being resumed from).
    resume_after: Option<(SequenceNumber, u64)>,
    /// Partition keys seen in aggregates: the shared string handed to records, and whether the
    /// key's MD5 lies in the range (always true without a range). Remembered across aggregates:
    /// producers reuse keys, and hashing each sub-record's key again would cost as much as the
    /// checksum.
    keys: HashMap<Arc<str>, bool, BuildHasherDefault<KeyHasher>>,
    /// The current aggregate's key table, resolved against `keys` (reused between aggregates).
    table: Vec<(Arc<str>, bool)>,
    /// How far one record may expand.
    limits: DecodeLimits,
    /// User records per Kinesis record in the last expanded read (to size the next batch).
    expansion: f64,
    /// Sub-records dropped as out of range since the last [`take_counts`](Self::take_counts).
    dropped_out_of_range: u64,
    /// Aggregates not delivered since the last [`take_counts`](Self::take_counts).
    errors: u64,
}

impl Deaggregator {
    /// A de-aggregator for a lease with hash range `range`, resuming after `resume_after`
    /// (a concrete checkpoint; sentinels skip nothing), expanding records within `limits`.
    pub fn new(range: Option<HashKeyRange>, resume_after: &ExtendedSequenceNumber, limits: DecodeLimits) -> Self {
        Deaggregator {
            range: range.filter(|r| *r != HashKeyRange::FULL),
            resume_after: resume_after.sequence_number().map(|seq| (seq.clone(), resume_after.sub_sequence_number())),
            keys: HashMap::default(),
            table: Vec::new(),
            limits,
            expansion: 1.0,
            dropped_out_of_range: 0,
            errors: 0,
        }
    }

    /// Counts of dropped sub-records and undeliverable aggregates since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.dropped_out_of_range), std::mem::take(&mut self.errors))
    }

    /// The shared string for a partition key and whether it lies in the range.
    fn key(&mut self, key: &str) -> (Arc<str>, bool) {
        if let Some((shared, in_range)) = self.keys.get_key_value(key) {
            return (shared.clone(), *in_range);
        }
        if self.keys.len() >= KEY_CACHE_CAPACITY {
            self.keys.clear();
        }
        let in_range = self.range.is_none_or(|range| range.contains(HashKey::from_partition_key(key)));
        let shared: Arc<str> = Arc::from(key);
        self.keys.insert(shared.clone(), in_range);
        (shared, in_range)
    }

    fn partition_key_in_range(&mut self, key: &str) -> bool {
        self.key(key).1
    }

    /// Expands a well-formed aggregate in one pass (see the module docs). `None` — with `out`
    /// and the counters untouched — when the record is anything else: the caller then uses the
    /// reference decoder. An aggregate over the user-record limit is dropped here (`Some(0)`,
    /// counted as an error).
    fn push_fast(
        &mut self,
        record: &Record,
        skip_through: Option<u64>,
        out: &mut Vec<KinesisClientRecord>,
    ) -> Option<usize> {
        let data = &record.data;
        if !is_aggregated(data) {
            return None;
        }
        let body_end = data.len() - DIGEST_LEN;
        let body = data.get(MAGIC.len()..body_end)?;
        if Md5::digest(body).as_slice() != data.get(body_end..)? {
            return None;
        }
        let start_len = out.len();
        let result = self.expand_fast(record, body, skip_through, out);
        match result {
            Some(Fast::Expanded(bytes)) => Some(bytes),
            Some(Fast::OverLimit) => {
                out.truncate(start_len);
                out.shrink_to(start_len.max(MAX_PREALLOCATED));
                tracing::error!(sequence_number = %record.sequence_number, limit = self.limits.max_user_records, "aggregated record holds more user records than allowed; not delivered");
                self.errors += 1;
                Some(0)
            }
            None => {
                out.truncate(start_len);
                None
            }
        }
    }

    fn expand_fast(
        &mut self,
        record: &Record,
        body: &[u8],
        skip_through: Option<u64>,
        out: &mut Vec<KinesisClientRecord>,
    ) -> Option<Fast> {
        let mut table = std::mem::take(&mut self.table);
        table.clear();
        let mut pos = 0;
        let mut position = 0u64;
        let mut bytes = 0;
        let mut dropped = 0;
        let mut ok = true;
        while pos < body.len() {
            let Some((field, value)) = read_len_field(body, &mut pos) else {
                ok = false;
                break;
            };
            match field {
                // A partition key; the table must come before the records (as the KPL writes it).
                1 if position == 0 => match std::str::from_utf8(value) {
                    Ok(key) => {
                        let entry = self.key(key);
                        table.push(entry);
                    }
                    Err(_) => {
                        ok = false;
                        break;
                    }
                },
                3 => {
                    if position as usize >= self.limits.max_user_records {
                        self.table = table;
                        return Some(Fast::OverLimit);
                    }
                    let Some((index, data_range)) = read_user_record(value) else {
                        ok = false;
                        break;
                    };
                    let Some((key, in_range)) = usize::try_from(index).ok().and_then(|i| table.get(i)) else {
                        ok = false;
                        break;
                    };
                    let sub_seq = position;
                    position += 1;
                    if skip_through.is_some_and(|through| sub_seq <= through) {
                        continue;
                    }
                    if !in_range {
                        dropped += 1;
                        continue;
                    }
                    // `value` lies inside `record.data`; slice the shared buffer, no copy.
                    let offset = value.as_ptr() as usize - record.data.as_ptr() as usize;
                    let user_data = record.data.slice(offset + data_range.start..offset + data_range.end);
                    bytes += user_data.len();
                    out.push(KinesisClientRecord {
                        sequence_number: record.sequence_number.clone(),
                        sub_sequence_number: sub_seq,
                        aggregated: true,
                        approximate_arrival_timestamp: record.approximate_arrival_timestamp,
                        partition_key: key.clone(),
                        explicit_hash_key: None,
                        data: user_data,
                    });
                }
                // Explicit hash keys, keys after records, unknown fields: the reference decoder.
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        self.table = table;
        if !ok {
            return None;
        }
        self.dropped_out_of_range += dropped;
        Some(Fast::Expanded(bytes))
    }

    /// Expands Kinesis records from `records` until the user records expanded cost at least
    /// `budget` (data bytes plus [`RECORD_OVERHEAD_BYTES`] each) or `records` is empty; a record
    /// is expanded whole. The vector is sized from earlier expansions, so a read of aggregates
    /// does not grow it (and copy it) a dozen times.
    pub fn expand_chunk(&mut self, records: &mut impl ExactSizeIterator<Item = Record>, budget: usize) -> Expanded {
        let estimate = (records.len() as f64 * self.expansion).ceil() as usize;
        let per_record = RECORD_OVERHEAD_BYTES.max(1);
        let fits = budget / per_record + 1;
        let mut out = Vec::with_capacity(estimate.min(fits).clamp(records.len().min(fits), MAX_PREALLOCATED));
        let (mut bytes, mut read) = (0, 0);
        for record in records.by_ref() {
            read += 1;
            bytes += self.push(record, &mut out);
            if bytes + out.len() * RECORD_OVERHEAD_BYTES >= budget {
                break;
            }
        }
        if read > 0 {
            self.expansion = out.len().max(1) as f64 / read as f64;
        }
        // A wrong guess must not keep memory the prefetch bound does not count.
        if out.capacity() > 2 * out.len() + 1024 {
            out.shrink_to_fit();
        }
        let charge = bytes + out.len() * RECORD_OVERHEAD_BYTES;
        Expanded { records: out, bytes, charge }
    }

    /// Expands `record` into `out`; returns the data bytes added.
    pub fn push(&mut self, record: Record, out: &mut Vec<KinesisClientRecord>) -> usize {
        // Positions up to the resumed checkpoint were processed already.
        let mut skip_through: Option<u64> = None;
        if let Some((seq, sub)) = &self.resume_after {
            match record.sequence_number.cmp(seq) {
                std::cmp::Ordering::Less => return 0,
                std::cmp::Ordering::Equal => skip_through = Some(*sub),
                std::cmp::Ordering::Greater => self.resume_after = None,
            }
        }
        if let Some(bytes) = self.push_fast(&record, skip_through, out) {
            return bytes;
        }
        self.push_reference(record, skip_through, out)
    }

    /// Expands `record` with the reference decoder.
    fn push_reference(
        &mut self,
        record: Record,
        skip_through: Option<u64>,
        out: &mut Vec<KinesisClientRecord>,
    ) -> usize {
        match decode_record_with_limits(&record.data, &self.limits) {
            Ok(Decoded::NotAggregated) => {
                if skip_through.is_some() {
                    return 0;
                }
                let len = record.data.len();
                out.push(KinesisClientRecord {
                    sequence_number: record.sequence_number,
                    sub_sequence_number: 0,
                    aggregated: false,
                    approximate_arrival_timestamp: record.approximate_arrival_timestamp,
                    partition_key: Arc::from(record.partition_key),
                    explicit_hash_key: None,
                    data: record.data,
                });
                len
            }
            Ok(Decoded::Aggregated(subs)) => {
                let mut bytes = 0;
                out.reserve(subs.len());
                for sub in subs {
                    let sub_seq = sub.sub_sequence_number();
                    if skip_through.is_some_and(|through| sub_seq <= through) {
                        continue;
                    }
                    if let Some(range) = self.range {
                        let in_range = match sub.explicit_hash_key() {
                            Some(_) => range.contains(sub.hash_key()),
                            None => self.partition_key_in_range(sub.partition_key()),
                        };
                        if !in_range {
                            self.dropped_out_of_range += 1;
                            continue;
                        }
                    }
                    let partition_key = sub.shared_partition_key().clone();
                    let explicit_hash_key = sub.explicit_hash_key().map(Arc::from);
                    let data = sub.into_data();
                    bytes += data.len();
                    out.push(KinesisClientRecord {
                        sequence_number: record.sequence_number.clone(),
                        sub_sequence_number: sub_seq,
                        aggregated: true,
                        approximate_arrival_timestamp: record.approximate_arrival_timestamp,
                        partition_key,
                        explicit_hash_key,
                        data,
                    });
                }
                bytes
            }
            Err(e) if e.kcl_passes_through() => {
                tracing::warn!(sequence_number = %record.sequence_number, error = %e, "record carries the aggregation magic but is not a valid aggregate; delivered as a plain record");
                if skip_through.is_some() {
                    return 0;
                }
                let len = record.data.len();
                out.push(KinesisClientRecord {
                    sequence_number: record.sequence_number,
                    sub_sequence_number: 0,
                    aggregated: false,
                    approximate_arrival_timestamp: record.approximate_arrival_timestamp,
                    partition_key: Arc::from(record.partition_key),
                    explicit_hash_key: None,
                    data: record.data,
                });
                len
            }
            Err(e) => {
                tracing::error!(sequence_number = %record.sequence_number, error = %e, "aggregated record could not be expanded; not delivered");
                self.errors += 1;
                0
            }
        }
    }
}

/// What the fast path made of an aggregate.
enum Fast {
    /// Expanded; the data bytes added.
    Expanded(usize),
    /// More user records than the limit allows.
    OverLimit,
}

/// Reads a protobuf varint; `None` when truncated or longer than a `u64` (as `prost` rejects).
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Reads a key and, for a length-delimited field, its bytes. `None` for any other wire type
/// (the fast path accepts nothing else at the top level).
fn read_len_field<'a>(buf: &'a [u8], pos: &mut usize) -> Option<(u64, &'a [u8])> {
    let key = read_varint(buf, pos)?;
    if key & 7 != 2 {
        return None;
    }
    let len = usize::try_from(read_varint(buf, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let value = buf.get(*pos..end)?;
    *pos = end;
    Some((key >> 3, value))
}

/// Reads a user record with exactly a partition-key index (field 1, varint) and data (field 3,
/// bytes), each once: the index and the data's range within `buf`. `None` for anything else.
fn read_user_record(buf: &[u8]) -> Option<(u64, std::ops::Range<usize>)> {
    let mut pos = 0;
    let mut index = None;
    let mut data = None;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        match key {
            // field 1, varint
            0x08 if index.is_none() => index = Some(read_varint(buf, &mut pos)?),
            // field 3, length-delimited
            0x1a if data.is_none() => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                if end > buf.len() {
                    return None;
                }
                data = Some(pos..end);
                pos = end;
            }
            _ => return None,
        }
    }
    Some((index?, data?))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use kinesis_core::aggregation::AggregateBuilder;

    use super::*;

    fn record(seq: u128, data: Bytes) -> Record {
        Record {
            sequence_number: SequenceNumber::from_u128(seq),
            approximate_arrival_timestamp: SystemTime::UNIX_EPOCH,
            data,
            partition_key: "agg".into(),
        }
    }

    fn aggregate(keys: &[&str]) -> Bytes {
        let mut b = AggregateBuilder::new();
        for (i, k) in keys.iter().enumerate() {
            b.add(k, None, Bytes::from(format!("{k}-{i}")), &[]);
        }
        b.finish()
    }

    #[test]
    fn plain_and_aggregated_records_keep_sub_sequence_numbers() {
        let mut d = Deaggregator::new(None, &ExtendedSequenceNumber::TrimHorizon, DecodeLimits::default());
        let mut out = Vec::new();
        d.push(record(5, Bytes::from_static(b"plain")), &mut out);
        d.push(record(6, aggregate(&["a", "b", "a"])), &mut out);
        let got: Vec<_> =
            out.iter().map(|r| (r.sequence_number.to_u128(), r.sub_sequence_number, r.aggregated)).collect();
        assert_eq!(got, vec![(Some(5), 0, false), (Some(6), 0, true), (Some(6), 1, true), (Some(6), 2, true)]);
        assert_eq!(&*out[3].partition_key, "a");
        assert_eq!(&out[2].data[..], b"b-1");
    }

    #[test]
    fn resume_skips_positions_at_or_below_the_checkpoint() {
        let checkpoint = ExtendedSequenceNumber::at_sub(SequenceNumber::from_u128(6), 1);
        let mut d = Deaggregator::new(None, &checkpoint, DecodeLimits::default());
        let mut out = Vec::new();
        d.push(record(5, Bytes::from_static(b"old")), &mut out);
        d.push(record(6, aggregate(&["a", "b", "c"])), &mut out);
        d.push(record(7, Bytes::from_static(b"new")), &mut out);
        let got: Vec<_> = out.iter().map(|r| (r.sequence_number.to_u128(), r.sub_sequence_number)).collect();
        assert_eq!(got, vec![(Some(6), 2), (Some(7), 0)]);
    }

    #[test]
    fn drops_only_out_of_range_sub_records() {
        // Find keys on either side of the midpoint.
        let mid = HashKeyRange::FULL.midpoint();
        let low: Vec<String> =
            (0..100).map(|i| format!("k{i}")).filter(|k| HashKey::from_partition_key(k) < mid).take(3).collect();
        let high: Vec<String> =
            (0..100).map(|i| format!("k{i}")).filter(|k| HashKey::from_partition_key(k) >= mid).take(2).collect();
        let keys =
            [low[0].as_str(), high[0].as_str(), low[1].as_str(), high[1].as_str(), low[2].as_str(), low[0].as_str()];
        let range = HashKeyRange::new(HashKey::MIN, HashKey::new(mid.value() - 1));
        let mut d = Deaggregator::new(range, &ExtendedSequenceNumber::TrimHorizon, DecodeLimits::default());
        let mut out = Vec::new();
        d.push(record(9, aggregate(&keys)), &mut out);
        // A plain record is never filtered, whatever its key.
        d.push(record(10, Bytes::from_static(b"plain")), &mut out);
        let subs: Vec<_> = out.iter().map(|r| r.sub_sequence_number).collect();
        assert_eq!(subs, vec![0, 2, 4, 5, 0]);
        assert_eq!(d.take_counts(), (2, 0));
    }

    #[test]
    fn compressed_aggregates_are_expanded() {
        let agg = aggregate(&["x", "y"]);
        let compressed = kinesis_core::aggregation::compression::compress(&agg, 6);
        let mut d = Deaggregator::new(None, &ExtendedSequenceNumber::TrimHorizon, DecodeLimits::default());
        let mut out = Vec::new();
        d.push(record(1, compressed), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(&out[1].data[..], b"y-1");
    }

    #[test]
    fn corrupt_checksum_passes_through_as_plain() {
        let mut agg = aggregate(&["x", "y"]).to_vec();
        let last = agg.len() - 1;
        agg[last] ^= 0xff;
        let mut d = Deaggregator::new(None, &ExtendedSequenceNumber::TrimHorizon, DecodeLimits::default());
        let mut out = Vec::new();
        d.push(record(1, Bytes::from(agg)), &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].aggregated);
    }

    /// A protobuf field of a hand-made aggregate body.
    #[derive(Clone, Debug)]
    enum Field {
        Key(String),
        ExplicitHashKey(String),
        Record(Vec<RecordField>),
        Unknown(u32, Vec<u8>),
        Garbage(Vec<u8>),
    }

    #[derive(Clone, Debug)]
    enum RecordField {
        Index(u64),
        Ehk(u64),
        Data(Vec<u8>),
        Tag(String),
        Unknown(u32, u64),
    }

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn len_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(field) << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn encode_body(fields: &[Field]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fields {
            match f {
                Field::Key(k) => len_field(1, k.as_bytes(), &mut out),
                Field::ExplicitHashKey(k) => len_field(2, k.as_bytes(), &mut out),
                Field::Record(parts) => {
                    let mut r = Vec::new();
                    for part in parts {
                        match part {
                            RecordField::Index(i) => {
                                r.push(0x08);
                                varint(*i, &mut r);
                            }
                            RecordField::Ehk(i) => {
                                r.push(0x10);
                                varint(*i, &mut r);
                            }
                            RecordField::Data(d) => len_field(3, d, &mut r),
                            RecordField::Tag(t) => {
                                let mut tag = Vec::new();
                                len_field(1, t.as_bytes(), &mut tag);
                                len_field(4, &tag, &mut r);
                            }
                            RecordField::Unknown(n, v) => {
                                varint(u64::from(*n) << 3, &mut r);
                                varint(*v, &mut r);
                            }
                        }
                    }
                    len_field(3, &r, &mut out);
                }
                Field::Unknown(n, bytes) => len_field(*n, bytes, &mut out),
                Field::Garbage(bytes) => out.extend_from_slice(bytes),
            }
        }
        out
    }

    /// An aggregate with a valid checksum around `body`.
    fn wrap(body: &[u8]) -> Bytes {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(body);
        data.extend_from_slice(&Md5::digest(body));
        Bytes::from(data)
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![(0u8..12).prop_map(|i| format!("k{i}")), Just(String::new()), "[a-z\u{e9}]{0,6}",]
    }

    fn arb_record_field() -> impl Strategy<Value = RecordField> {
        prop_oneof![
            6 => (0u64..14).prop_map(RecordField::Index),
            1 => (0u64..3).prop_map(RecordField::Ehk),
            6 => prop::collection::vec(any::<u8>(), 0..12).prop_map(RecordField::Data),
            1 => "[a-z]{1,3}".prop_map(RecordField::Tag),
            1 => (5u32..9, any::<u64>()).prop_map(|(n, v)| RecordField::Unknown(n, v)),
        ]
    }

    fn arb_field() -> impl Strategy<Value = Field> {
        let well_formed = (0u64..12, prop::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(i, d)| Field::Record(vec![RecordField::Index(i), RecordField::Data(d)]));
        prop_oneof![
            6 => arb_key().prop_map(Field::Key),
            1 => prop_oneof![Just("0".to_owned()), Just("340282366920938463463374607431768211455".to_owned()), Just("x".to_owned())]
                .prop_map(Field::ExplicitHashKey),
            10 => well_formed,
            3 => prop::collection::vec(arb_record_field(), 0..4).prop_map(Field::Record),
            1 => (4u32..20, prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(n, b)| Field::Unknown(n, b)),
            1 => prop::collection::vec(any::<u8>(), 1..4).prop_map(Field::Garbage),
            1 => Just(Field::Key("\u{fffd}".to_owned())),
        ]
    }

    /// An aggregate body: mostly the KPL's layout (keys, then records), sometimes anything.
    fn arb_body() -> impl Strategy<Value = Vec<u8>> {
        let kpl_like = (prop::collection::vec(arb_key(), 0..6), prop::collection::vec(arb_field(), 0..12)).prop_map(
            |(keys, rest)| {
                let mut fields: Vec<Field> = keys.into_iter().map(Field::Key).collect();
                fields.extend(rest.into_iter().filter(|f| !matches!(f, Field::Key(_))));
                encode_body(&fields)
            },
        );
        let anything = prop::collection::vec(arb_field(), 0..12).prop_map(|f| encode_body(&f));
        let mutated = (valid_fields(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(f, at, byte)| {
            let mut body = encode_body(&f);
            if !body.is_empty() {
                let i = at.index(body.len());
                body[i] ^= byte | 1;
            }
            body
        });
        prop_oneof![6 => valid_fields().prop_map(|f| encode_body(&f)), 2 => kpl_like, 1 => anything, 2 => mutated]
    }

    /// A well-formed aggregate as the KPL writes it: keys, then records referring to them.
    fn valid_fields() -> impl Strategy<Value = Vec<Field>> {
        prop::collection::vec(arb_key(), 1..6).prop_flat_map(|keys| {
            let n = keys.len() as u64;
            prop::collection::vec((0..n, prop::collection::vec(any::<u8>(), 0..12)), 0..10).prop_map(move |records| {
                let mut fields: Vec<Field> = keys.iter().cloned().map(Field::Key).collect();
                fields.extend(
                    records.into_iter().map(|(i, d)| Field::Record(vec![RecordField::Index(i), RecordField::Data(d)])),
                );
                fields
            })
        })
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The fast path gives exactly what the reference decoder gives — records (with keys,
        /// data, positions), dropped and error counts — for arbitrary bodies, ranges and resume
        /// points.
        #[test]
        fn fast_path_matches_the_reference_decoder(
            body in arb_body(),
            bad_checksum in prop::bool::weighted(0.05),
            split in prop::option::of(any::<u128>()),
            resume_sub in prop::option::of(0u64..8),
        ) {
            let mut data = wrap(&body).to_vec();
            if bad_checksum {
                let last = data.len() - 1;
                data[last] ^= 1;
            }
            let data = Bytes::from(data);
            let range = split.map(|at| HashKeyRange::new(HashKey::MIN, HashKey::new(at)).unwrap_or(HashKeyRange::FULL));
            let resume = match resume_sub {
                Some(sub) => ExtendedSequenceNumber::at_sub(SequenceNumber::from_u128(7), sub),
                None => ExtendedSequenceNumber::TrimHorizon,
            };
            let mut fast = Deaggregator::new(range, &resume, DecodeLimits::default());
            let mut reference = Deaggregator::new(range, &resume, DecodeLimits::default());
            let (mut a, mut b) = (vec![], vec![]);
            // A plain record first, to have something in `out` the fast path must not disturb.
            let plain = record(8, Bytes::from_static(b"plain"));
            let got = (fast.push(record(7, data.clone()), &mut a), fast.push(plain.clone(), &mut a));
            let want = {
                let skip = resume_sub;
                (reference.push_reference(record(7, data), skip, &mut b), reference.push_reference(plain, None, &mut b))
            };
            prop_assert_eq!(got, want);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(fast.take_counts(), reference.take_counts());
        }
    }
}
