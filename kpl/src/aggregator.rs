//! Step 3: pack user records into Kinesis records, one aggregator per predicted shard.
//!
//! An aggregator fills a KPL aggregate (exact sizes from
//! [`AggregateBuilder`](kinesis_core::aggregation::AggregateBuilder)) until the next record would
//! pass `aggregation_max_size` or the count reaches `aggregation_max_count`; the pipeline also
//! flushes it when its oldest record has waited `record_max_buffered_time`. As in the KPL:
//!
//! * an aggregate's outer partition key is `"a"` and its explicit hash key is the first user
//!   record's hash key, so it lands on the shard all its records were predicted for;
//! * an aggregate of a single record is sent as that plain record, with its own keys;
//! * a record too large for an empty aggregate is sent on its own.
//!
//! With compression on, every aggregate — even of one record — is wrapped in the compressed
//! envelope, so a consumer decodes all records the same way; a record is sent plain only when
//! the envelope would not fit the stream's maximum record size.
//!
//! An uncompressed aggregate leaves its aggregator without the MD5 digest that ends it: the
//! pipeline computes the digests of a request's aggregates together just before sending it
//! ([`KinesisRecord::seal_all`]), eight side by side, which is several times faster than one by
//! one (the digest took a third of the producer's time per record). Sizes are exact before
//! sealing, so nothing else changes.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use kinesis_core::aggregation::compression::compress;
use kinesis_core::aggregation::{AggregateBuilder, UnsealedAggregate};
use kinesis_core::{HashKey, KinesisError, PutRecordsEntry};
use tokio::time::Instant;

use crate::config::{RecordOrder, Settings};
use crate::record::Pending;

/// What per-key ordering compares records by: the low 64 bits of the hash key (an MD5 digest,
/// so its low bits are as good as any). Two keys that agree there only make a record wait.
pub(crate) fn key_id(hash_key: HashKey) -> u64 {
    hash_key.value() as u64
}

/// The outer partition key of every aggregate: one byte, as the KPL writes it.
pub(crate) const AGGREGATE_PARTITION_KEY: &str = "a";

/// One Kinesis record on its way: an aggregate (possibly compressed) or a plain user record,
/// with the user records it carries, its place in the producer's order and its attempts.
pub(crate) struct KinesisRecord {
    /// Its first user record's [`order`](Pending::order): queues keep Kinesis records in this
    /// order, and retried or re-packed ones go back to their place by it.
    pub seq: u64,
    /// The shard slot it was predicted for.
    pub slot: usize,
    /// Version of the shard map that predicted it.
    pub map_version: u64,
    /// What it sends, and the user records inside.
    content: Built,
    /// When it should be sent at the latest: oldest user record's arrival + max buffered time.
    pub deadline: Instant,
    /// When its first user record expires.
    pub expires: Instant,
    /// Requests that carried it so far.
    pub attempts: u32,
    /// The error of its last attempt.
    pub last_error: Option<Arc<KinesisError>>,
    /// When it may be retried (while it waits in a backoff queue).
    pub retry_at: Instant,
    /// When its last attempt failed, if one did.
    pub failed_at: Option<Instant>,
    /// Whether an attempt — of it, or of the record its user records were re-packed from — may
    /// have stored them: a request that timed out or failed ambiguously, or an aggregate stored
    /// on a shard that did not own all its keys.
    pub may_be_stored: bool,
}

impl KinesisRecord {
    /// Wraps what an aggregator produced.
    pub fn new(built: Built, slot: usize, map_version: u64, s: &Settings) -> Self {
        let oldest = built.users.iter().map(|u| u.arrival).min().unwrap_or_else(Instant::now);
        let seq = built.users.first().map_or(0, |u| u.order);
        KinesisRecord {
            seq,
            slot,
            map_version,
            content: built,
            deadline: crate::time::after(oldest, s.max_buffered_time),
            expires: crate::time::after(oldest, s.ttl),
            attempts: 0,
            last_error: None,
            retry_at: oldest,
            failed_at: None,
            may_be_stored: false,
        }
    }

    /// The user records, in sub-sequence order (their data may be lent to the aggregate).
    pub fn users(&self) -> &[Pending] {
        &self.content.users
    }

    /// The [`key_id`]s of its user records, each at least once; kept only when records are
    /// ordered (see [`RecordOrder`]).
    pub fn keys(&self) -> &[u64] {
        if self.content.keys.is_empty() { std::slice::from_ref(&self.content.first_key) } else { &self.content.keys }
    }

    /// Whether it is an aggregate (partition key `"a"`).
    pub fn aggregated(&self) -> bool {
        self.content.aggregated
    }

    /// Takes the user records out, each with its data.
    pub fn take_users(&mut self) -> Vec<Pending> {
        self.content.take_users()
    }

    /// Takes the user records out to be delivered: their data stays lent (a delivered record's
    /// data is not handed back), which saves touching it. Only for records about to complete
    /// successfully.
    pub fn take_delivered(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.content.users)
    }

    /// What Kinesis counts for it: partition key + data bytes.
    pub fn billed_size(&self) -> usize {
        self.content.partition_key().len() + self.content.payload_len()
    }

    /// Computes the digests of the records' unsealed aggregates together (see
    /// [`UnsealedAggregate::seal_all`]): what a request does before it is sent.
    pub fn seal_all<'a>(records: impl IntoIterator<Item = &'a mut KinesisRecord>) {
        let (contents, aggregates): (Vec<&mut Built>, Vec<UnsealedAggregate>) = records
            .into_iter()
            .filter_map(|record| record.content.unsealed.take().map(|aggregate| (&mut record.content, aggregate)))
            .unzip();
        for (content, aggregate) in contents.into_iter().zip(UnsealedAggregate::seal_all(aggregates)) {
            content.store_sealed(aggregate);
        }
    }

    /// Whether its aggregate still waits for its digest.
    pub fn is_unsealed(&self) -> bool {
        self.content.unsealed.is_some()
    }

    /// The `PutRecords` entry that sends it (sealing it first if [`seal_all`](Self::seal_all)
    /// has not).
    pub fn entry(&mut self) -> PutRecordsEntry {
        self.content.seal();
        PutRecordsEntry {
            partition_key: self.content.partition_key().to_owned(),
            explicit_hash_key: self.content.explicit_hash_key,
            data: self.content.payload.clone(),
        }
    }
}

impl Drop for Built {
    /// Records still inside (the producer's task is being torn down, or it panicked) get their
    /// data back before they are dropped, so each is handed back whole with
    /// [`ProduceError::Aborted`](crate::ProduceError::Aborted).
    fn drop(&mut self) {
        if !self.users.is_empty() {
            drop(self.take_users());
        }
    }
}

/// A finished Kinesis record's content: its data, and the user records it carries.
///
/// The user records of an aggregate lend their data to it: they note where their bytes lie in
/// the encoded aggregate (`source`) and hold no reference of their own, so a delivered record
/// costs no reference counting. Taking them out ([`take_users`](Self::take_users), or dropping
/// the Kinesis record) gives each its data back as a slice of the aggregate.
///
/// An uncompressed aggregate leaves the aggregator without its digest (`unsealed`): the
/// pipeline computes the digests of a request's aggregates together just before sending it,
/// several times faster than one by one (see [`UnsealedAggregate`]).
pub(crate) struct Built {
    /// The user records, in sub-sequence order.
    users: Vec<Pending>,
    /// The uncompressed aggregate `users` lent their data to, once sealed.
    source: Option<Bytes>,
    /// The data sent to Kinesis (empty while `unsealed`).
    payload: Bytes,
    /// The aggregate before its digest is computed; `payload` and `source` once it is.
    unsealed: Option<UnsealedAggregate>,
    /// Whether `payload` is an aggregate (partition key `"a"`).
    aggregated: bool,
    /// The outer explicit hash key.
    explicit_hash_key: Option<HashKey>,
    /// The [`key_id`]s of an aggregate's records, each at least once, when records are ordered;
    /// empty for a record sent alone, whose one key is `first_key`.
    keys: Vec<u64>,
    /// The [`key_id`] of the first user record.
    first_key: u64,
}

impl Built {
    /// The outer partition key.
    fn partition_key(&self) -> &str {
        match self.users.first() {
            Some(user) if !self.aggregated => user.partition_key(),
            _ => AGGREGATE_PARTITION_KEY,
        }
    }

    /// The length of the data sent, sealed or not.
    fn payload_len(&self) -> usize {
        self.unsealed.as_ref().map_or(self.payload.len(), UnsealedAggregate::sealed_len)
    }

    /// Computes the digest now, if it is still to be computed.
    fn seal(&mut self) {
        if let Some(aggregate) = self.unsealed.take() {
            self.store_sealed(aggregate.seal());
        }
    }

    /// Stores `aggregate`, the sealed form of `unsealed`, as what is sent and what the user
    /// records lent their data to.
    fn store_sealed(&mut self, aggregate: Bytes) {
        self.source = Some(aggregate.clone());
        self.payload = aggregate;
    }

    /// Takes the user records out, each with its data.
    fn take_users(&mut self) -> Vec<Pending> {
        self.seal();
        let mut users = std::mem::take(&mut self.users);
        if let Some(source) = &self.source {
            restore_data(&mut users, source);
        }
        users
    }
}

/// The aggregate being filled for one shard.
///
/// Records' data are copied into the builder as they are added and the records let go of their
/// own buffers (only the first record keeps its buffer, in case it ends up sent alone); once the
/// aggregate is encoded, each record's data is a slice of it, so the bytes are held once, not
/// twice.
#[derive(Default)]
pub(crate) struct Aggregator {
    builder: AggregateBuilder,
    users: Vec<Pending>,
    ranges: Vec<Range<usize>>,
    /// An emptied `users` vector of a delivered aggregate, reused for the next one.
    spare: Option<Vec<Pending>>,
    /// With ordered records: the [`key_id`]s of the open aggregate's records, each at least
    /// once (a new key in the builder's tables is noted; a known one is not).
    keys: Vec<u64>,
    /// Whether a record of the open aggregate has an explicit hash key: then the partition-key
    /// table no longer tells which hash keys are known, and every record's key is noted.
    mixed: bool,
    /// The size the open aggregate may reach, when it was allowed past `aggregation_max_size`
    /// because it is held back anyway (0: not).
    grown_limit: usize,
    /// Aggregates closed so far: tells one open aggregate from the next.
    closed: u64,
}

impl Drop for Aggregator {
    /// Like [`Built`]'s: the open aggregate's records get their data back first.
    fn drop(&mut self) {
        if !self.users.is_empty() {
            drop(self.take_users());
        }
    }
}

impl Aggregator {
    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Offers an emptied vector of user records for the next aggregate (saves allocating and
    /// freeing one large vector per aggregate); hands it back if the aggregator has one already.
    pub fn recycle(&mut self, mut users: Vec<Pending>) -> Option<Vec<Pending>> {
        users.clear();
        if self.spare.is_some() || users.capacity() == 0 {
            return Some(users);
        }
        self.spare = Some(users);
        None
    }

    /// Whether the aggregator would take a vector from [`recycle`](Self::recycle).
    pub fn wants_spare(&self) -> bool {
        self.spare.is_none()
    }

    /// The [`key_id`]s of the open aggregate's records (kept only when records are ordered).
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// Whether the open aggregate was let grow past `aggregation_max_size` (it was held back).
    pub fn grown(&self) -> bool {
        self.grown_limit > 0
    }

    /// The size of the open aggregate if it was let grow, else 0.
    pub fn grown_bytes(&self) -> usize {
        if self.grown() { self.builder.encoded_len() } else { 0 }
    }

    /// Tells the open aggregate from later ones: it changes whenever an aggregate closes.
    pub fn opened(&self) -> u64 {
        self.closed
    }

    /// When its oldest record arrived.
    pub fn oldest_arrival(&self) -> Option<Instant> {
        self.users.first().map(|u| u.arrival)
    }

    /// Adds a record; Kinesis records completed by it (none, one or two) go to `out`, in order.
    ///
    /// When the record does not fit within `aggregation_max_size`, `grow` is asked, with the
    /// [`key_id`]s of the open aggregate, whether the aggregate is held back (it shares a key with
    /// an earlier record still unsent or unanswered, so it could not go before that one's reply
    /// anyway); if it names a larger size, the aggregate keeps filling up to it instead of
    /// closing. A record of a slow shard then carries more per round trip.
    ///
    /// The record is moved once, into the aggregate's list, and taken back out only when it does
    /// not fit (records are large enough for extra moves to show in the producer's throughput).
    pub fn add(
        &mut self,
        user: Pending,
        s: &Settings,
        out: &mut Vec<Built>,
        grow: impl FnOnce(&[u64]) -> Option<usize>,
    ) {
        if !s.aggregation {
            out.push(plain(user));
            return;
        }
        self.users.push(user);
        if self.add_last(s) {
            return self.flush_if_counted(s, out);
        }
        if self.users.len() > 1
            && self.grown_limit == 0
            && let Some(limit) = grow(&self.keys)
            && limit > s.aggregation_max_size
        {
            self.grown_limit = limit;
            if self.add_last(s) {
                return self.flush_if_counted(s, out);
            }
        }
        let Some(user) = self.users.pop() else { return };
        if self.users.is_empty() {
            // Too large for an empty aggregate: it goes on its own.
            return out.push(self.alone(user, s));
        }
        // Full: close this aggregate and start the next with the record.
        out.extend(self.flush(s));
        self.users.push(user);
        if self.add_last(s) {
            return self.flush_if_counted(s, out);
        }
        if let Some(user) = self.users.pop() {
            out.push(self.alone(user, s));
        }
    }

    /// Adds the last record of `users` to the builder if it fits; otherwise leaves it as it was.
    ///
    /// The builder copies the data in at once, while it is still in the CPU's cache; the record
    /// then lets go of its own buffer (freed here, where the allocator can hand it straight to
    /// the next record) and notes only its length until the aggregate is encoded. The first
    /// record keeps its buffer, in case it ends up sent alone.
    fn add_last(&mut self, s: &Settings) -> bool {
        let first = self.users.len() == 1;
        let limit = self.grown_limit.max(s.aggregation_max_size);
        let counts = (self.builder.partition_key_count(), self.builder.explicit_hash_key_count());
        let Some(user) = self.users.last_mut() else { return false };
        // A record routed by its partition key carries the key's MD5 already: the builder looks
        // the key up by it instead of hashing the key again.
        let key_hash = user.explicit_hash_key().is_none().then(|| {
            let value = user.hash_key.value();
            (value as u64) ^ ((value >> 64) as u64)
        });
        let added = self.builder.try_add_with_key_hash(
            user.partition_key(),
            key_hash,
            user.explicit_hash_key(),
            user.data().as_ref(),
            &[],
            limit,
        );
        if added.is_err() {
            return false;
        }
        if s.ordering != RecordOrder::Unordered {
            let new_key = if user.explicit_hash_key().is_some() {
                self.mixed = true;
                self.builder.explicit_hash_key_count() > counts.1
            } else {
                self.mixed || self.builder.partition_key_count() > counts.0
            };
            if new_key {
                self.keys.push(key_id(user.hash_key));
            }
        }
        if !first {
            // The data's place in the aggregate is known when it is encoded; until then only
            // its length matters. The key's place is final already.
            let len = user.data().len();
            user.lend_data(0..len);
            if let Some(range) = self.builder.last_partition_key_range() {
                user.lend_partition_key(range);
            }
        }
        true
    }

    /// Encodes the builder's aggregate, without its digest; `users` lend it their data.
    fn encode(&mut self, users: &mut [Pending]) -> UnsealedAggregate {
        self.ranges.clear();
        let aggregate = self.builder.take_unsealed_with_data_ranges(&mut self.ranges);
        for (user, range) in users.iter_mut().zip(self.ranges.drain(..)) {
            user.lend_data(range);
        }
        aggregate
    }

    fn flush_if_counted(&mut self, s: &Settings, out: &mut Vec<Built>) {
        if self.users.len() >= s.aggregation_max_count {
            out.extend(self.flush(s));
        }
    }

    /// Marks the open aggregate closed: the next one starts unmixed, ungrown.
    fn reset_open(&mut self) {
        self.mixed = false;
        self.grown_limit = 0;
        self.closed += 1;
    }

    /// Starts the next aggregate's key notes; returns the closed one's.
    fn take_keys(&mut self) -> Vec<u64> {
        self.reset_open();
        if self.keys.is_empty() {
            return Vec::new();
        }
        let capacity = self.keys.len();
        std::mem::replace(&mut self.keys, Vec::with_capacity(capacity))
    }

    /// Closes the current aggregate, if it holds anything.
    pub fn flush(&mut self, s: &Settings) -> Option<Built> {
        match self.users.len() {
            0 => None,
            1 if s.compression.is_none() => {
                self.builder.clear();
                self.keys.clear();
                self.reset_open();
                self.users.pop().map(plain)
            }
            n => {
                // Room for as many records as this one, plus the candidate `add` pushes before
                // it knows whether it fits (and a little slack: sizes vary).
                let next = match self.spare.take() {
                    Some(spare) => spare,
                    None => Vec::with_capacity(n + n / 8 + 2),
                };
                let mut users = std::mem::replace(&mut self.users, next);
                let keys = self.take_keys();
                let aggregate = self.encode(&mut users);
                let explicit_hash_key = users.first().map(|u| u.hash_key);
                let first_key = explicit_hash_key.map_or(0, key_id);
                let Some(level) = s.compression else {
                    // The digest is computed when the aggregate is sent, with the request's others.
                    let (payload, source, unsealed) = (Bytes::new(), None, Some(aggregate));
                    return Some(Built {
                        users,
                        source,
                        payload,
                        unsealed,
                        aggregated: true,
                        explicit_hash_key,
                        keys,
                        first_key,
                    });
                };
                let aggregate = aggregate.seal();
                let packed = compress(&aggregate, level);
                // The plain aggregate always fits; the envelope almost always does.
                let payload = if packed.len() + AGGREGATE_PARTITION_KEY.len() <= s.max_record_bytes {
                    packed
                } else {
                    aggregate.clone()
                };
                let source = Some(aggregate);
                Some(Built {
                    users,
                    source,
                    payload,
                    unsealed: None,
                    aggregated: true,
                    explicit_hash_key,
                    keys,
                    first_key,
                })
            }
        }
    }

    /// Takes every record out (the shard closed); the partial aggregate is dropped. Records after
    /// the first lent their data to the builder, so the aggregate is encoded once to hand every
    /// record its data back (as slices of it) before they are routed again.
    pub fn take_users(&mut self) -> Vec<Pending> {
        let mut users = std::mem::take(&mut self.users);
        if users.len() > 1 {
            let aggregate = self.encode(&mut users).seal();
            restore_data(&mut users, &aggregate);
        }
        self.builder.clear();
        self.keys.clear();
        self.reset_open();
        users
    }

    /// A record that does not fit an aggregate: compressed in an envelope of its own when
    /// compression is on and the envelope fits, else plain. The builder is empty here.
    fn alone(&mut self, user: Pending, s: &Settings) -> Built {
        if let Some(level) = s.compression {
            self.builder.add(user.partition_key(), user.explicit_hash_key(), user.data(), &[]);
            let packed = compress(&self.builder.take(), level);
            if packed.len() + AGGREGATE_PARTITION_KEY.len() <= s.max_record_bytes {
                let explicit_hash_key = Some(user.hash_key);
                let first_key = key_id(user.hash_key);
                let users = vec![user];
                return Built {
                    users,
                    source: None,
                    payload: packed,
                    unsealed: None,
                    aggregated: true,
                    explicit_hash_key,
                    keys: Vec::new(),
                    first_key,
                };
            }
        }
        plain(user)
    }
}

/// Gives user records the data and keys they lent to `aggregate` back, as slices of it.
fn restore_data(users: &mut [Pending], aggregate: &Bytes) {
    for user in users {
        user.restore_data(aggregate);
    }
}

/// A user record sent as it is, with its own keys.
fn plain(user: Pending) -> Built {
    let explicit_hash_key = user.explicit_hash_key().is_some().then_some(user.hash_key);
    let payload = user.data().clone();
    let first_key = key_id(user.hash_key);
    Built {
        payload,
        users: vec![user],
        source: None,
        unsealed: None,
        aggregated: false,
        explicit_hash_key,
        keys: Vec::new(),
        first_key,
    }
}

/// Packs user records (all for one shard, in order) into as few Kinesis records as the limits
/// allow: used when records must be re-packed after expiry or a shard-map change.
pub(crate) fn pack(users: impl IntoIterator<Item = Pending>, s: &Settings) -> Vec<Built> {
    let mut aggregator = Aggregator::default();
    let mut out = Vec::new();
    for user in users {
        aggregator.add(user, s, &mut out, |_| None);
    }
    out.extend(aggregator.flush(s));
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kinesis_core::StreamLimits;
    use kinesis_core::aggregation::{Decoded, decode_record};

    use super::*;
    use crate::config::ProducerConfig;
    use crate::record::UserRecord;

    fn settings(config: ProducerConfig) -> Settings {
        config.resolve(StreamLimits::default()).expect("valid config")
    }

    fn user(key: &str, data: &[u8]) -> Pending {
        let record = UserRecord::new(key, Bytes::copy_from_slice(data));
        let hash_key = HashKey::from_partition_key(key);
        let (cell, _rx) = crate::completion::Cells::default().pair();
        Pending::new(record, hash_key, 0, Instant::now(), cell)
    }

    /// The user records inside, as a consumer decodes them (computing the digest first, as
    /// sending would).
    fn decoded(built: &mut Built) -> Vec<(String, Vec<u8>)> {
        built.seal();
        match decode_record(&built.payload).expect("decodes") {
            Decoded::Aggregated(records) => {
                records.iter().map(|r| (r.partition_key().to_owned(), r.data().to_vec())).collect()
            }
            Decoded::NotAggregated => {
                built.users.iter().map(|u| (u.partition_key().to_owned(), built.payload.to_vec())).collect()
            }
        }
    }

    #[tokio::test]
    async fn fills_to_the_size_limit_and_keeps_order() {
        let s = settings(ProducerConfig::default().aggregation_max_size(1000));
        let mut aggregator = Aggregator::default();
        let mut out = Vec::new();
        for i in 0..100u8 {
            aggregator.add(user(&format!("k{}", i % 7), &[i; 40]), &s, &mut out, |_| None);
        }
        out.extend(aggregator.flush(&s));
        assert!(out.len() > 1);
        let mut seen = Vec::new();
        for built in &mut out {
            assert!(built.payload_len() <= 1000);
            assert!(built.aggregated);
            assert_eq!(built.explicit_hash_key, Some(built.users[0].hash_key), "outer EHK is the first record's");
            seen.extend(decoded(built).into_iter().map(|(_, data)| data[0]));
        }
        assert_eq!(seen, (0..100).collect::<Vec<u8>>());
    }

    #[tokio::test]
    async fn single_and_oversized_records_go_plain() {
        let s = settings(ProducerConfig::default().aggregation_max_size(200));
        let mut aggregator = Aggregator::default();
        let mut out = Vec::new();
        aggregator.add(user("a", b"small"), &s, &mut out, |_| None);
        aggregator.add(user("b", &[1; 500]), &s, &mut out, |_| None);
        aggregator.add(user("c", b"tail"), &s, &mut out, |_| None);
        out.extend(aggregator.flush(&s));
        assert_eq!(out.len(), 3, "the small record is closed off before the large one to keep order");
        assert!(out.iter().all(|b| !b.aggregated && b.explicit_hash_key.is_none()));
        assert_eq!(&out[1].payload[..], &[1; 500][..]);
    }

    #[tokio::test]
    async fn count_limit_and_no_aggregation() {
        let s = settings(ProducerConfig::default().aggregation_max_count(3));
        let out = pack((0..7).map(|i| user("k", &[i])), &s);
        assert_eq!(out.iter().map(|b| b.users.len()).collect::<Vec<_>>(), [3, 3, 1]);
        let s = settings(ProducerConfig::default().aggregation_enabled(false));
        let out = pack((0..3).map(|i| user("k", &[i])), &s);
        assert!(out.iter().all(|b| !b.aggregated && b.users.len() == 1));
    }

    #[tokio::test]
    async fn compression_wraps_even_single_records() {
        let s = settings(ProducerConfig::default().compression(crate::Compression::Zlib { level: 6 }));
        let mut out = pack([user("only", b"hello hello hello hello")], &s);
        assert_eq!(out.len(), 1);
        assert!(out[0].aggregated);
        assert_eq!(decoded(&mut out[0]), [("only".to_owned(), b"hello hello hello hello".to_vec())]);
        let mut out = pack((0..50).map(|i| user("k", format!("{{\"n\":{i},\"event\":\"click\"}}").as_bytes())), &s);
        assert_eq!(out.len(), 1);
        assert_eq!(decoded(&mut out[0]).len(), 50);
    }
    #[tokio::test]
    async fn records_taken_out_of_a_partial_aggregate_keep_their_data() {
        // A shard closing while its aggregate fills hands the records back to be routed again:
        // every one must still carry its own data (not the empty husk lent to the builder).
        let s = settings(ProducerConfig::default());
        let mut aggregator = Aggregator::default();
        let mut out = Vec::new();
        for i in 0..4u8 {
            aggregator.add(user(&format!("k{i}"), &[b'a' + i; 10]), &s, &mut out, |_| None);
        }
        assert!(out.is_empty(), "still filling");
        let users = aggregator.take_users();
        assert!(aggregator.is_empty());
        let data: Vec<Vec<u8>> = users.iter().map(|u| u.data().to_vec()).collect();
        assert_eq!(data, (0..4u8).map(|i| vec![b'a' + i; 10]).collect::<Vec<_>>());
        let keys: Vec<&str> = users.iter().map(|u| u.partition_key()).collect();
        assert_eq!(keys, ["k0", "k1", "k2", "k3"], "the keys lent to the builder come back too");
        let mut repacked = pack(users, &s);
        assert_eq!(decoded(&mut repacked[0]).len(), 4);
        assert!(decoded(&mut repacked[0]).iter().enumerate().all(|(i, (_, d))| *d == vec![b'a' + i as u8; 10]));
    }

    #[tokio::test]
    async fn a_requests_aggregates_are_sealed_together_as_each_alone() {
        // Aggregates leave the aggregator without their digest; a request seals them together.
        // Plain records (and compressed envelopes) are complete already and stay as they are.
        let s = settings(ProducerConfig::default().aggregation_max_size(300));
        let inputs: Vec<(String, Vec<u8>)> =
            (0..40u8).map(|i| (format!("key-{}", i % 5), vec![i; usize::from(i % 7) * 9 + 1])).collect();
        let mut built = pack(inputs.iter().map(|(k, d)| user(k, d)), &s);
        built.push(pack([user("alone", b"plain")], &s).remove(0));
        assert!(built.len() > 5, "several aggregates and a plain record");
        assert!(built.iter().filter(|b| b.aggregated).all(|b| b.unsealed.is_some() && b.payload.is_empty()));
        let mut one_by_one: Vec<Bytes> = Vec::new();
        for b in &mut pack(inputs.iter().map(|(k, d)| user(k, d)), &s) {
            b.seal();
            one_by_one.push(b.payload.clone());
        }
        let sizes: Vec<usize> = built.iter().map(Built::payload_len).collect();
        let mut records: Vec<KinesisRecord> = built.into_iter().map(|b| KinesisRecord::new(b, 0, 1, &s)).collect();
        KinesisRecord::seal_all(&mut records);
        let payloads: Vec<Bytes> = records.iter_mut().map(|r| r.entry().data).collect();
        assert_eq!(payloads.iter().map(Bytes::len).collect::<Vec<_>>(), sizes, "sizes were exact before sealing");
        assert_eq!(payloads[..payloads.len() - 1], one_by_one[..]);
        assert_eq!(&payloads[payloads.len() - 1][..], b"plain");
        let mut users = Vec::new();
        for record in &mut records {
            users.extend(record.take_users().iter().map(|u| (u.partition_key().to_owned(), u.data().to_vec())));
        }
        assert_eq!(users[..inputs.len()], inputs[..], "the records lent their data to the sealed aggregates");
    }

    #[tokio::test]
    async fn records_taken_out_of_a_sent_aggregate_are_whole_again() {
        // Records of an aggregate lend it their data and keys (only the lengths and places stay
        // with them); a retry or a re-route takes them out whole, repeated keys included.
        let s = settings(ProducerConfig::default());
        let inputs: Vec<(String, Vec<u8>)> =
            (0..6u8).map(|i| (format!("key-{}", i % 3), vec![b'a' + i; usize::from(i) + 1])).collect();
        let built = pack(inputs.iter().map(|(k, d)| user(k, d)), &s).pop().expect("one aggregate");
        assert!(built.users[1..].iter().all(|u| u.partition_key().is_empty() && u.data().is_empty()), "lent");
        assert_eq!(built.users.iter().map(Pending::data_len).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        let mut record = KinesisRecord::new(built, 0, 1, &s);
        let back: Vec<(String, Vec<u8>)> =
            record.take_users().iter().map(|u| (u.partition_key().to_owned(), u.data().to_vec())).collect();
        assert_eq!(back, inputs);
    }
}
