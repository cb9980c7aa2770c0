//! One stream's state inside the broker: shards, their records, limits and lineage.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::BrokerConfig;
use super::clock::BrokerClock;
use super::sequence_layout::{ENDING_COUNTER, SequenceFields};
use super::throttle::TokenBucket;
use crate::client::{Record, StreamMode, StreamStatus};
use crate::hash_key::{HashKey, HashKeyRange};
use crate::limits;
use crate::sequence::SequenceNumber;
use crate::shard::{ChildShard, SequenceNumberRange, Shard, ShardId};

/// A record as stored in a shard.
#[derive(Clone, Debug)]
pub(crate) struct StoredRecord {
    pub sequence_number: SequenceNumber,
    pub arrival: SystemTime,
    pub arrival_instant: Instant,
    pub partition_key: Arc<str>,
    pub data: Bytes,
}

impl StoredRecord {
    pub fn billed_size(&self) -> usize {
        self.partition_key.len() + self.data.len()
    }

    pub fn to_record(&self) -> Record {
        Record {
            sequence_number: self.sequence_number.clone(),
            approximate_arrival_timestamp: self.arrival,
            data: self.data.clone(),
            partition_key: self.partition_key.to_string(),
        }
    }
}

/// Why a write to a shard was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriteRefusal {
    Throttled,
}

/// One shard: its records (oldest first), counters, limits and lineage.
#[derive(Debug)]
pub(crate) struct ShardState {
    pub id: ShardId,
    pub index: u32,
    pub range: HashKeyRange,
    pub parent: Option<ShardId>,
    pub adjacent_parent: Option<ShardId>,
    pub children: Vec<ShardId>,
    pub created_secs: u64,
    pub starting_sequence_number: SequenceNumber,
    pub ending_sequence_number: Option<SequenceNumber>,
    pub closed_at: Option<SystemTime>,
    records: VecDeque<StoredRecord>,
    /// Absolute position of `records[0]`: how many records were trimmed away before it.
    trimmed: u64,
    counter: u64,
    write_records: TokenBucket,
    write_bytes: TokenBucket,
    read_calls: TokenBucket,
    read_bytes: TokenBucket,
    /// When this shard first refused a write in the current hot spell (on-demand scaling).
    pub hot_since: Option<Instant>,
    /// The last time this shard refused a write.
    pub last_throttled: Option<Instant>,
    pub notify: Arc<Notify>,
}

impl ShardState {
    fn new(
        index: u32,
        range: HashKeyRange,
        created_secs: u64,
        config: &BrokerConfig,
        max_record_bytes: usize,
        now: Instant,
    ) -> Self {
        let scale = config.throughput_scale;
        let starting = SequenceFields {
            shard_created_secs: created_secs,
            shard_index: index,
            counter: 0,
            arrival_secs: created_secs,
        }
        .encode();
        // The byte bucket holds at least one maximum-size record: the service's burst allowance
        // for large records while the average stays at 1 MiB/s.
        let write_bytes_capacity = (limits::SHARD_WRITE_BYTES_PER_SEC as f64 * scale).max(max_record_bytes as f64);
        let read_bytes_rate = limits::SHARD_READ_BYTES_PER_SEC as f64 * scale;
        ShardState {
            id: ShardId::from_index(u64::from(index)),
            index,
            range,
            parent: None,
            adjacent_parent: None,
            children: Vec::new(),
            created_secs,
            starting_sequence_number: starting,
            ending_sequence_number: None,
            closed_at: None,
            records: VecDeque::new(),
            trimmed: 0,
            counter: 0,
            write_records: TokenBucket::new(
                f64::from(limits::SHARD_WRITE_RECORDS_PER_SEC) * scale,
                f64::from(limits::SHARD_WRITE_RECORDS_PER_SEC) * scale,
                now,
            ),
            write_bytes: TokenBucket::new(write_bytes_capacity, limits::SHARD_WRITE_BYTES_PER_SEC as f64 * scale, now),
            read_calls: TokenBucket::new(
                f64::from(limits::SHARD_READ_CALLS_PER_SEC) * scale,
                f64::from(limits::SHARD_READ_CALLS_PER_SEC) * scale,
                now,
            ),
            // A 10 MiB response may be taken at once and is then repaid at 2 MiB/s: the
            // service's lock-out after a large read.
            read_bytes: TokenBucket::with_floor(
                read_bytes_rate,
                read_bytes_rate,
                read_bytes_rate - limits::MAX_GET_RECORDS_BYTES as f64,
                now,
            ),
            hot_since: None,
            last_throttled: None,
            notify: Arc::new(Notify::new()),
        }
    }

    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }

    /// Absolute position one past the newest record.
    pub fn end_position(&self) -> u64 {
        self.trimmed + self.records.len() as u64
    }

    /// Absolute position of the oldest retained record.
    pub fn trim_horizon(&self) -> u64 {
        self.trimmed
    }

    pub fn records_len(&self) -> usize {
        self.records.len()
    }

    pub fn record_at(&self, position: u64) -> Option<&StoredRecord> {
        let offset = position.checked_sub(self.trimmed)?;
        self.records.get(usize::try_from(offset).ok()?)
    }

    /// Position of the first record whose sequence number is ≥ `seq` (or > when `after`).
    pub fn position_of(&self, seq: &SequenceNumber, after: bool) -> u64 {
        let idx =
            self.records.partition_point(|r| if after { r.sequence_number <= *seq } else { r.sequence_number < *seq });
        self.trimmed + idx as u64
    }

    /// Position of the first record that arrived at or after `time`.
    pub fn position_at_time(&self, time: SystemTime) -> u64 {
        self.trimmed + self.records.partition_point(|r| r.arrival < time) as u64
    }

    /// Whether the write limits admit a record of `size` bytes now; charges them if so.
    pub fn admit_write(&mut self, size: usize, throttling: bool, now: Instant) -> Result<(), WriteRefusal> {
        if !throttling {
            return Ok(());
        }
        if self.write_records.can_take(1.0, now) && self.write_bytes.can_take(size as f64, now) {
            self.write_records.try_take(1.0, now);
            self.write_bytes.try_take(size as f64, now);
            Ok(())
        } else {
            Err(WriteRefusal::Throttled)
        }
    }

    /// Whether a read call is admitted now (5 calls/s and the byte debt repaid).
    pub fn admit_read(&mut self, throttling: bool, now: Instant) -> bool {
        !throttling || (self.read_bytes.is_positive(now) && self.read_calls.try_take(1.0, now))
    }

    /// Charges a read's bytes against the shard's read budget.
    pub fn charge_read(&mut self, bytes: usize, throttling: bool, now: Instant) {
        if throttling {
            self.read_bytes.charge(bytes as f64, now);
        }
    }

    /// Appends a record and returns its sequence number.
    pub fn append(&mut self, partition_key: &str, data: Bytes, arrival: SystemTime, now: Instant) -> SequenceNumber {
        self.counter += 1;
        let sequence_number = SequenceFields {
            shard_created_secs: self.created_secs,
            shard_index: self.index,
            counter: self.counter,
            arrival_secs: BrokerClock::epoch_secs(arrival),
        }
        .encode();
        self.records.push_back(StoredRecord {
            sequence_number: sequence_number.clone(),
            arrival,
            arrival_instant: now,
            partition_key: Arc::from(partition_key),
            data,
        });
        sequence_number
    }

    /// Drops records older than `retention`; returns how many were dropped.
    pub fn trim(&mut self, retention: Duration, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some(front) = self.records.front() {
            if now.saturating_duration_since(front.arrival_instant) >= retention {
                self.records.pop_front();
                self.trimmed += 1;
                dropped += 1;
            } else {
                break;
            }
        }
        dropped
    }

    /// Closes the shard (after a split or merge).
    pub fn close(&mut self, at: SystemTime) {
        self.ending_sequence_number = Some(
            SequenceFields {
                shard_created_secs: self.created_secs,
                shard_index: self.index,
                counter: ENDING_COUNTER,
                arrival_secs: BrokerClock::epoch_secs(at),
            }
            .encode(),
        );
        self.closed_at = Some(at);
        self.notify.notify_waiters();
    }

    pub fn describe(&self) -> Shard {
        Shard {
            shard_id: self.id.clone(),
            parent_shard_id: self.parent.clone(),
            adjacent_parent_shard_id: self.adjacent_parent.clone(),
            hash_key_range: self.range,
            sequence_number_range: SequenceNumberRange {
                starting: self.starting_sequence_number.clone(),
                ending: self.ending_sequence_number.clone(),
            },
        }
    }

    /// Age of the record at `position` (how far a reader there is behind the tip), or 0 when
    /// the reader is at the tip.
    pub fn millis_behind(&self, position: u64, now: Instant) -> u64 {
        match self.record_at(position.max(self.trimmed)) {
            Some(record) => now.saturating_duration_since(record.arrival_instant).as_millis() as u64,
            None => 0,
        }
    }
}

/// A registered enhanced fan-out consumer.
#[derive(Clone, Debug)]
pub(crate) struct ConsumerState {
    pub name: String,
    pub arn: String,
    pub created_at: SystemTime,
}

/// What a new stream is created with.
pub(crate) struct StreamSpec {
    pub name: String,
    pub arn: String,
    pub mode: StreamMode,
    pub shard_count: u32,
    pub max_record_size_kib: u32,
    pub incarnation: u64,
}

/// One stream.
#[derive(Debug)]
pub(crate) struct StreamState {
    pub name: String,
    pub arn: String,
    pub mode: StreamMode,
    pub status: StreamStatus,
    pub created_at: SystemTime,
    /// Distinguishes a stream from an earlier one of the same name (stale iterators fail).
    pub incarnation: u64,
    pub retention: Duration,
    pub max_record_size_kib: u32,
    pub shards: Vec<ShardState>,
    /// Open shards sorted by hash range.
    open: Vec<usize>,
    pub consumers: Vec<ConsumerState>,
    /// Enhanced fan-out subscriptions: (consumer ARN, shard index) → generation and start.
    pub subscriptions: std::collections::HashMap<(String, u32), (u64, Instant)>,
}

impl StreamState {
    pub fn new(spec: StreamSpec, config: &BrokerConfig, clock: &BrokerClock) -> Self {
        let StreamSpec { name, arn, mode, shard_count, max_record_size_kib, incarnation } = spec;
        let now = clock.instant();
        let created_at = clock.now_wall();
        let created_secs = BrokerClock::epoch_secs(created_at);
        let max_record_bytes = max_record_size_kib as usize * 1024;
        let shards: Vec<ShardState> = HashKeyRange::even_split(shard_count)
            .into_iter()
            .enumerate()
            .map(|(i, range)| ShardState::new(i as u32, range, created_secs, config, max_record_bytes, now))
            .collect();
        let mut stream = StreamState {
            name,
            arn,
            mode,
            status: StreamStatus::Active,
            created_at,
            incarnation,
            retention: config.default_retention,
            max_record_size_kib,
            shards,
            open: Vec::new(),
            consumers: Vec::new(),
            subscriptions: Default::default(),
        };
        stream.rebuild_routing();
        stream
    }

    pub fn limits(&self) -> limits::StreamLimits {
        limits::StreamLimits::from_max_record_size_kib(self.max_record_size_kib)
    }

    fn rebuild_routing(&mut self) {
        let mut open: Vec<usize> = (0..self.shards.len()).filter(|&i| self.shards[i].is_open()).collect();
        open.sort_by_key(|&i| self.shards[i].range.start());
        self.open = open;
    }

    pub fn open_shard_count(&self) -> u32 {
        self.open.len() as u32
    }

    /// The open shard whose range holds `key`.
    pub fn route(&self, key: HashKey) -> Option<usize> {
        let pos = self.open.partition_point(|&i| self.shards[i].range.end() < key);
        self.open.get(pos).copied().filter(|&i| self.shards[i].range.contains(key))
    }

    pub fn shard_index(&self, id: &ShardId) -> Option<usize> {
        let index = usize::try_from(id.index()?).ok()?;
        (index < self.shards.len() && self.shards[index].id == *id).then_some(index)
    }

    /// Whether a shard has expired: closed for longer than the retention period, so every record
    /// of it is gone. The service lists it no more and answers `ResourceNotFoundException` for it.
    pub fn is_expired(&self, index: usize, now_wall: SystemTime) -> bool {
        self.shards
            .get(index)
            .and_then(|shard| shard.closed_at)
            .is_some_and(|closed| now_wall >= closed + self.retention)
    }

    /// The index of a shard that exists and has not expired.
    pub fn live_shard_index(&self, id: &ShardId, now_wall: SystemTime) -> Option<usize> {
        self.shard_index(id).filter(|&index| !self.is_expired(index, now_wall))
    }

    /// Applies retention to every shard.
    pub fn trim(&mut self, now: Instant) {
        let retention = self.retention;
        for shard in &mut self.shards {
            shard.trim(retention, now);
        }
    }

    fn add_shard(
        &mut self,
        range: HashKeyRange,
        parents: &[usize],
        config: &BrokerConfig,
        clock: &BrokerClock,
    ) -> usize {
        let now = clock.instant();
        let index = self.shards.len();
        // Children sort after their parents: their creation second is later than any parent's.
        let parent_secs = parents.iter().map(|&p| self.shards[p].created_secs).max().unwrap_or(0);
        let created_secs = BrokerClock::epoch_secs(clock.now_wall()).max(parent_secs + 1);
        let mut shard =
            ShardState::new(index as u32, range, created_secs, config, self.max_record_size_kib as usize * 1024, now);
        shard.parent = parents.first().map(|&p| self.shards[p].id.clone());
        shard.adjacent_parent = parents.get(1).map(|&p| self.shards[p].id.clone());
        let id = shard.id.clone();
        self.shards.push(shard);
        for &p in parents {
            self.shards[p].children.push(id.clone());
        }
        index
    }

    /// Splits an open shard at `at` (already validated): closes it and adds two children.
    pub fn split(
        &mut self,
        shard: usize,
        at: HashKey,
        config: &BrokerConfig,
        clock: &BrokerClock,
    ) -> Option<(usize, usize)> {
        let (low, high) = self.shards[shard].range.split_at(at).ok()?;
        let closed_at = clock.now_wall();
        self.shards[shard].close(closed_at);
        let a = self.add_shard(low, &[shard], config, clock);
        let b = self.add_shard(high, &[shard], config, clock);
        self.rebuild_routing();
        Some((a, b))
    }

    /// Merges two adjacent open shards (already validated): closes both and adds one child.
    pub fn merge(
        &mut self,
        shard: usize,
        adjacent: usize,
        config: &BrokerConfig,
        clock: &BrokerClock,
    ) -> Option<usize> {
        let range = self.shards[shard].range.merge(&self.shards[adjacent].range)?;
        let closed_at = clock.now_wall();
        self.shards[shard].close(closed_at);
        self.shards[adjacent].close(closed_at);
        let child = self.add_shard(range, &[shard, adjacent], config, clock);
        self.rebuild_routing();
        Some(child)
    }

    /// Uniform scaling to `target` open shards, done as the service does it: a series of splits
    /// (at every target boundary inside a shard) and then merges (of the pieces of each target
    /// range), so every new shard has a real lineage of at most two parents.
    pub fn scale_to(&mut self, target: u32, config: &BrokerConfig, clock: &BrokerClock) {
        let target_ranges = HashKeyRange::even_split(target);
        let boundaries: Vec<HashKey> = target_ranges.iter().skip(1).map(|r| r.start()).collect();
        // Splits.
        let mut pending: Vec<usize> = self.open.clone();
        while let Some(shard) = pending.pop() {
            let range = self.shards[shard].range;
            let inside = boundaries.iter().find(|&&b| range.split_at(b).is_ok());
            if let Some(&at) = inside
                && let Some((low, high)) = self.split(shard, at, config, clock)
            {
                pending.push(low);
                pending.push(high);
            }
        }
        // Merges.
        for range in target_ranges {
            loop {
                let mut pieces: Vec<usize> =
                    self.open.iter().copied().filter(|&i| range.contains_range(&self.shards[i].range)).collect();
                if pieces.len() <= 1 {
                    break;
                }
                pieces.sort_by_key(|&i| self.shards[i].range.start());
                if self.merge(pieces[0], pieces[1], config, clock).is_none() {
                    break;
                }
            }
        }
    }

    pub fn child_shards_of(&self, shard: usize) -> Vec<ChildShard> {
        self.shards[shard]
            .children
            .iter()
            .filter_map(|id| self.shard_index(id))
            .map(|i| {
                let child = &self.shards[i];
                ChildShard {
                    shard_id: child.id.clone(),
                    parent_shards: child.parent.iter().chain(child.adjacent_parent.iter()).cloned().collect(),
                    hash_key_range: child.range,
                }
            })
            .collect()
    }

    pub fn total_records(&self) -> usize {
        self.shards.iter().map(ShardState::records_len).sum()
    }
}
