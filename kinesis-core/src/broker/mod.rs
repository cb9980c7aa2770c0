//! The bundled in-memory broker: a Kinesis Data Streams stand-in that runs in process.
//!
//! [`MemoryBroker`] implements [`Kinesis`] with the service's semantics rather than a queue's:
//! per-shard write limits (1 MiB/s and 1000 records/s, with a burst allowance for large records)
//! that throttle individual `PutRecords` entries; per-shard read limits (5 calls/s, 2 MiB/s, and
//! the lock-out after a large read); the 56-digit sequence-number layout; iterators that expire
//! after five minutes; retention trimming; `SplitShard`, `MergeShards` and `UpdateShardCount`
//! with closed parents and `ChildShards`; on-demand streams that split hot shards; enhanced
//! fan-out subscriptions; and the service's exception names and messages.
//!
//! Time comes from tokio's clock, so tests on paused time drive iterator expiry, retention and
//! token refill deterministically. A [`FaultInjector`] adds latency, failures and throttling.
//!
//! ```
//! # tokio_test_block_on(async {
//! use kinesis_core::{Kinesis, CreateStreamRequest, PutRecordsEntry, StreamRef};
//! use kinesis_core::broker::MemoryBroker;
//!
//! let broker = MemoryBroker::new();
//! broker.create_stream(CreateStreamRequest::provisioned("orders", 2)).await.unwrap();
//! let entry = PutRecordsEntry { partition_key: "k".into(), explicit_hash_key: None, data: "hi".into() };
//! let out = broker.put_records(&StreamRef::from("orders"), vec![entry]).await.unwrap();
//! assert_eq!(out.failed_record_count(), 0);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
//! # }
//! ```

mod clock;
mod errors;
mod fanout;
mod faults;
mod iterator;
mod sequence_layout;
mod stream;
mod throttle;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

pub use faults::{FaultInjector, FaultRule, Operation};

use self::clock::BrokerClock;
use self::faults::EntryFault;
use self::iterator::IteratorPosition;
use self::sequence_layout::SequenceFields;
use self::stream::{ShardState, StreamSpec, StreamState, WriteRefusal};
use crate::client::*;
use crate::error::KinesisError;
use crate::hash_key::HashKey;
use crate::limits::{self, StreamLimits};
use crate::sequence::StartingPosition;
use crate::shard::ShardId;

/// How the broker behaves: its account, limits and timers. `Default` is the real service.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Account id used in ARNs and messages.
    pub account_id: String,
    /// Region used in ARNs and messages.
    pub region: String,
    /// Enforce the per-shard read and write limits (on by default).
    pub throttling: bool,
    /// Multiplies every per-shard limit (1.0 = the service's limits).
    pub throughput_scale: f64,
    /// How long a shard iterator stays valid (5 minutes).
    pub iterator_ttl: Duration,
    /// Retention of new streams (24 hours).
    pub default_retention: Duration,
    /// Most shards (open and closed within retention) the account may have.
    pub shard_limit: u32,
    /// Shards of a new on-demand stream (4).
    pub on_demand_initial_shards: u32,
    /// An on-demand stream splits a shard whose writes have been throttled for this long.
    pub on_demand_split_after: Duration,
    /// Most open shards an on-demand stream scales to by itself.
    pub on_demand_max_shards: u32,
    /// How long a `SubscribeToShard` subscription lasts (5 minutes).
    pub subscription_duration: Duration,
    /// Most enhanced fan-out consumers per stream (20).
    pub max_consumers_per_stream: usize,
    /// Seed of the fault injector's random source.
    pub fault_seed: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            account_id: "123456789012".to_owned(),
            region: "us-east-1".to_owned(),
            throttling: true,
            throughput_scale: 1.0,
            iterator_ttl: Duration::from_secs(300),
            default_retention: Duration::from_secs(24 * 3600),
            shard_limit: 1000,
            on_demand_initial_shards: 4,
            on_demand_split_after: Duration::from_secs(1),
            on_demand_max_shards: 64,
            subscription_duration: Duration::from_secs(300),
            max_consumers_per_stream: 20,
            fault_seed: 0x006b_696e_6573_6973,
        }
    }
}

impl BrokerConfig {
    /// Turns per-shard throttling off (for benchmarks and functional tests).
    pub fn without_throttling(mut self) -> Self {
        self.throttling = false;
        self
    }

    /// Scales every per-shard limit by `scale` (e.g. 0.1 to provoke throttling sooner).
    pub fn throughput_scale(mut self, scale: f64) -> Self {
        self.throughput_scale = scale;
        self
    }
}

/// Counters of what the broker did, for tests and demos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Records stored by `PutRecord` and `PutRecords`.
    pub records_written: u64,
    /// Writes refused with `ProvisionedThroughputExceededException`.
    pub writes_throttled: u64,
    /// `GetRecords` calls refused with `ProvisionedThroughputExceededException`.
    pub reads_throttled: u64,
    /// Shards split by on-demand scaling.
    pub on_demand_splits: u64,
}

#[derive(Default)]
struct Counters {
    records_written: AtomicU64,
    writes_throttled: AtomicU64,
    reads_throttled: AtomicU64,
    on_demand_splits: AtomicU64,
}

pub(crate) struct BrokerState {
    streams: HashMap<String, StreamState>,
    next_incarnation: u64,
    next_subscription: u64,
    /// Times of recent `UpdateShardCount` calls per stream (at most 10 per 24 hours).
    scalings: HashMap<String, VecDeque<Instant>>,
}

pub(crate) struct Inner {
    config: BrokerConfig,
    clock: BrokerClock,
    state: Mutex<BrokerState>,
    faults: FaultInjector,
    counters: Counters,
}

/// The in-memory Kinesis broker. Cheap to clone: clones share the same streams.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

/// The name in `arn:aws:kinesis:<region>:<account>:stream/<name>`, if the ARN is of that form.
fn name_from_arn(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:")?;
    let (_, name) = rest.rsplit_once(":stream/")?;
    let name = name.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl MemoryBroker {
    /// A broker with the service's limits.
    pub fn new() -> Self {
        MemoryBroker::with_config(BrokerConfig::default())
    }

    /// A broker with the given configuration.
    pub fn with_config(config: BrokerConfig) -> Self {
        let faults = FaultInjector::new(config.fault_seed);
        MemoryBroker {
            inner: Arc::new(Inner {
                config,
                clock: BrokerClock::new(),
                state: Mutex::new(BrokerState {
                    streams: HashMap::new(),
                    next_incarnation: 1,
                    next_subscription: 1,
                    scalings: HashMap::new(),
                }),
                faults,
                counters: Counters::default(),
            }),
        }
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// The fault injector: add rules to slow down, fail or throttle calls.
    pub fn faults(&self) -> &FaultInjector {
        &self.inner.faults
    }

    /// What the broker has done so far.
    pub fn stats(&self) -> BrokerStats {
        let c = &self.inner.counters;
        BrokerStats {
            records_written: c.records_written.load(Ordering::Relaxed),
            writes_throttled: c.writes_throttled.load(Ordering::Relaxed),
            reads_throttled: c.reads_throttled.load(Ordering::Relaxed),
            on_demand_splits: c.on_demand_splits.load(Ordering::Relaxed),
        }
    }

    /// The ARN the broker gives a stream of this name.
    pub fn stream_arn(&self, stream_name: &str) -> String {
        format!("arn:aws:kinesis:{}:{}:stream/{stream_name}", self.inner.config.region, self.inner.config.account_id)
    }

    /// Sets a stream's retention period (24–8760 hours), as `IncreaseStreamRetentionPeriod` and
    /// `DecreaseStreamRetentionPeriod` do. Shortening it trims older records at once.
    pub fn set_retention_period_hours(&self, stream: &StreamRef, hours: u32) -> Result<(), KinesisError> {
        if hours < 24 {
            return Err(KinesisError::InvalidArgument {
                message: format!(
                    "Minimum allowed retention period is 24 hours. Requested retention period ({hours} hours) is too short."
                ),
            });
        }
        if hours > 8760 {
            return Err(KinesisError::InvalidArgument {
                message: format!(
                    "Maximum allowed retention period is 8760 hours. Requested retention period ({hours} hours) is too long."
                ),
            });
        }
        self.with_stream(stream, |s, now| {
            s.retention = Duration::from_secs(u64::from(hours) * 3600);
            s.trim(now);
            Ok(())
        })
    }

    /// Records currently retained in a stream (all shards).
    pub fn retained_records(&self, stream: &StreamRef) -> Result<usize, KinesisError> {
        self.with_stream(stream, |s, _| Ok(s.total_records()))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, BrokerState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn account(&self) -> &str {
        &self.inner.config.account_id
    }

    fn resolve_name<'a>(&self, stream: &'a StreamRef) -> Result<&'a str, KinesisError> {
        match stream {
            StreamRef::Name(name) => Ok(name),
            StreamRef::Arn(arn) => {
                let name = name_from_arn(arn)
                    .ok_or_else(|| KinesisError::InvalidArgument { message: format!("Invalid StreamARN {arn}") })?;
                if *arn != self.stream_arn(name) {
                    return Err(errors::stream_not_found(name, self.account()));
                }
                Ok(name)
            }
        }
    }

    /// Runs `f` on a stream under the lock, after applying retention.
    fn with_stream<R>(
        &self,
        stream: &StreamRef,
        f: impl FnOnce(&mut StreamState, Instant) -> Result<R, KinesisError>,
    ) -> Result<R, KinesisError> {
        let name = self.resolve_name(stream)?;
        let now = self.inner.clock.instant();
        let mut state = self.lock();
        let s = state.streams.get_mut(name).ok_or_else(|| errors::stream_not_found(name, self.account()))?;
        s.trim(now);
        f(s, now)
    }

    /// Stores a `PutRecords` request's entries (after any injected latency).
    fn store_records(&self, stream: &StreamRef, entries: &[PutRecordsEntry]) -> Result<PutRecordsOutput, KinesisError> {
        let (records, notifies) = self.with_stream(stream, |s, now| {
            let shapes: Vec<(&str, usize)> = entries.iter().map(|e| (e.partition_key.as_str(), e.data.len())).collect();
            self.validate_entries(&s.limits(), &shapes)?;
            let mut touched = Vec::new();
            let records: Vec<_> = entries
                .iter()
                .map(|e| {
                    let input = WriteInput {
                        partition_key: &e.partition_key,
                        explicit_hash_key: e.explicit_hash_key,
                        data: &e.data,
                    };
                    self.write_one(s, Operation::PutRecords, input, now, &mut touched)
                })
                .collect();
            let notifies: Vec<_> = touched.iter().map(|&i| s.shards[i].notify.clone()).collect();
            Ok((records, notifies))
        })?;
        for notify in notifies {
            notify.notify_waiters();
        }
        Ok(PutRecordsOutput { records })
    }

    /// Applies injected latency and call failures for one call.
    async fn inject(&self, operation: Operation) -> Result<(), KinesisError> {
        let (latency, failure) = self.inner.faults.on_call(operation, 0);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match failure {
            Some(code) => Err(KinesisError::from_code(&code, format!("Injected fault: {code}"))),
            None => Ok(()),
        }
    }

    fn total_shards(state: &BrokerState) -> u32 {
        state.streams.values().map(|s| s.shards.len() as u32).sum()
    }

    fn check_shard_limit(&self, state: &BrokerState, additional: u32) -> Result<(), KinesisError> {
        let current = Self::total_shards(state);
        if current + additional > self.inner.config.shard_limit {
            return Err(errors::shard_limit(
                self.account(),
                &self.inner.config.region,
                current,
                self.inner.config.shard_limit,
                additional,
            ));
        }
        Ok(())
    }

    /// Validates the entries of a write the way the service does, before anything is stored.
    fn validate_entries(&self, limits: &StreamLimits, entries: &[(&str, usize)]) -> Result<(), KinesisError> {
        if entries.is_empty() {
            return Err(errors::validation(
                1,
                "Value '[]' at 'records' failed to satisfy constraint: Member must have length greater than or equal to 1",
            ));
        }
        if entries.len() > limits::MAX_PUT_RECORDS_ENTRIES {
            return Err(errors::validation(
                1,
                "Value at 'records' failed to satisfy constraint: Member must have length less than or equal to 500",
            ));
        }
        for (i, (pk, data_len)) in entries.iter().enumerate() {
            if let Err(e) = limits::validate_partition_key(pk) {
                let constraint = match e {
                    crate::limits::ValidationError::EmptyPartitionKey => "greater than or equal to 1",
                    _ => "less than or equal to 256",
                };
                return Err(errors::validation(
                    1,
                    &format!(
                        "Value '{pk}' at 'records.{}.member.partitionKey' failed to satisfy constraint: Member must have length {constraint}",
                        i + 1
                    ),
                ));
            }
            let size = pk.len() + data_len;
            if size > limits.max_record_bytes {
                return Err(KinesisError::InvalidArgument {
                    message: format!(
                        "Record size {size} bytes (data plus partition key) of records.{} exceeds the maximum record size of {} bytes for this stream.",
                        i + 1,
                        limits.max_record_bytes
                    ),
                });
            }
        }
        let total: usize = entries.iter().map(|(pk, len)| pk.len() + len).sum();
        if total > limits.max_request_bytes {
            return Err(KinesisError::InvalidArgument {
                message: format!("Records size exceeds {} MB limit", limits.max_request_bytes / (1024 * 1024)),
            });
        }
        Ok(())
    }

    /// Stores one record on its shard, subject to limits and injected faults.
    fn write_one(
        &self,
        stream: &mut StreamState,
        operation: Operation,
        record: WriteInput<'_>,
        now: Instant,
        touched: &mut Vec<usize>,
    ) -> Result<RecordPlacement, KinesisError> {
        let WriteInput { partition_key, explicit_hash_key, data } = record;
        let key = explicit_hash_key.unwrap_or_else(|| HashKey::from_partition_key(partition_key));
        let index = stream
            .route(key)
            .ok_or_else(|| KinesisError::InternalFailure { message: "Internal service failure.".to_owned() })?;
        let config = &self.inner.config;
        let account = self.account();
        let name = stream.name.clone();
        let shard = &mut stream.shards[index];
        let fault = self.inner.faults.on_entry(operation, &shard.id);
        let size = partition_key.len() + data.len();
        let throttled = match fault {
            Some(EntryFault::Fail) => {
                return Err(KinesisError::InternalFailure { message: "Internal service failure.".to_owned() });
            }
            Some(EntryFault::Throttle) => true,
            None => shard.admit_write(size, config.throttling, now) == Err(WriteRefusal::Throttled),
        };
        if throttled {
            self.inner.counters.writes_throttled.fetch_add(1, Ordering::Relaxed);
            let hot_since = *shard.hot_since.get_or_insert(now);
            shard.last_throttled = Some(now);
            let (id, mid) = (shard.id.clone(), shard.range.midpoint());
            if stream.mode == StreamMode::OnDemand
                && now.saturating_duration_since(hot_since) >= config.on_demand_split_after
                && stream.open_shard_count() < config.on_demand_max_shards
                && stream.split(index, mid, config, &self.inner.clock).is_some()
            {
                self.inner.counters.on_demand_splits.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(stream = %name, shard = %id, "on-demand stream split a hot shard");
            }
            return Err(errors::write_throttled(&stream.shards[index].id, &name, account));
        }
        // A shard stays "hot" until it has gone a whole split interval without a refusal.
        if shard.last_throttled.is_none_or(|t| now.saturating_duration_since(t) > config.on_demand_split_after) {
            shard.hot_since = None;
        }
        let arrival = self.inner.clock.wall(now);
        let sequence_number = shard.append(partition_key, data.clone(), arrival, now);
        self.inner.counters.records_written.fetch_add(1, Ordering::Relaxed);
        if !touched.contains(&index) {
            touched.push(index);
        }
        Ok(RecordPlacement { shard_id: shard.id.clone(), sequence_number })
    }

    /// Resolves a starting position on a shard to an absolute record position.
    fn resolve_position(
        &self,
        stream: &StreamState,
        shard: &ShardState,
        position: &StartingPosition,
    ) -> Result<u64, KinesisError> {
        let account = self.account();
        match position {
            StartingPosition::TrimHorizon => Ok(shard.trim_horizon()),
            StartingPosition::Latest => Ok(shard.end_position()),
            StartingPosition::AtTimestamp(t) => {
                let now = self.inner.clock.now_wall();
                if *t > now {
                    return Err(KinesisError::InvalidArgument {
                        message: format!(
                            "The timestampInMillis parameter cannot be greater than the currentTimestampInMillis. timestampInMillis: {}, currentTimestampInMillis: {}",
                            BrokerClock::epoch_millis(*t),
                            BrokerClock::epoch_millis(now)
                        ),
                    });
                }
                Ok(shard.position_at_time(*t))
            }
            StartingPosition::AtSequenceNumber(seq) | StartingPosition::AfterSequenceNumber(seq) => {
                let after = matches!(position, StartingPosition::AfterSequenceNumber(_));
                let fields = SequenceFields::decode(seq).ok_or_else(|| KinesisError::InvalidArgument {
                    message: format!(
                        "StartingSequenceNumber {seq} used in GetShardIterator on shard {} in stream {} under account {account} is invalid.",
                        shard.id, stream.name
                    ),
                })?;
                if fields.shard_index != shard.index {
                    return Err(KinesisError::InvalidArgument {
                        message: format!(
                            "Invalid StartingSequenceNumber. It encodes {}, while it was used in a call to a shard with {}",
                            ShardId::from_index(u64::from(fields.shard_index)),
                            shard.id
                        ),
                    });
                }
                if let Some(ending) = &shard.ending_sequence_number
                    && after
                    && seq >= ending
                {
                    return Err(KinesisError::InvalidArgument {
                        message: "Invalid SequenceNumber for ShardIteratorType AFTER_SEQUENCE_NUMBER, SequenceNumber has reached max possible value for the shard.".to_owned(),
                    });
                }
                Ok(shard.position_of(seq, after))
            }
        }
    }

    fn issue_iterator(&self, stream: &StreamState, shard: &ShardState, position: u64) -> ShardIterator {
        IteratorPosition {
            stream: stream.name.clone(),
            incarnation: stream.incarnation,
            shard_index: shard.index,
            position,
            issued_at_ms: BrokerClock::epoch_millis(self.inner.clock.now_wall()),
        }
        .encode()
    }
}

/// One record to write: what `PutRecord` and each `PutRecords` entry carry.
#[derive(Clone, Copy)]
struct WriteInput<'a> {
    partition_key: &'a str,
    explicit_hash_key: Option<HashKey>,
    data: &'a bytes::Bytes,
}

/// Whether a shard belongs in a `ListShards` answer for `filter`.
fn shard_matches_filter(stream: &StreamState, shard: &ShardState, filter: &ShardFilter, now_wall: SystemTime) -> bool {
    let created = BrokerClock::epoch_secs(stream.created_at).max(shard.created_secs);
    let created_at = SystemTime::UNIX_EPOCH + Duration::from_secs(created);
    let open_at = |t: SystemTime| created_at <= t && shard.closed_at.is_none_or(|c| c > t);
    let trim_time = now_wall.checked_sub(stream.retention).unwrap_or(SystemTime::UNIX_EPOCH).max(stream.created_at);
    match filter {
        ShardFilter::AfterShardId(id) => shard.id.index().zip(id.index()).is_some_and(|(a, b)| a > b),
        ShardFilter::AtTrimHorizon => open_at(trim_time),
        ShardFilter::FromTrimHorizon => shard.closed_at.is_none_or(|c| c >= trim_time),
        ShardFilter::AtLatest => shard.is_open(),
        ShardFilter::AtTimestamp(t) => open_at((*t).max(stream.created_at)),
        ShardFilter::FromTimestamp(t) => shard.closed_at.is_none_or(|c| c >= *t),
    }
}

/// `ListShards` pagination token: stream, incarnation, next shard index, filter, issue time.
fn encode_list_token(stream: &StreamState, next_index: usize, filter: &Option<ShardFilter>, issued_ms: u64) -> String {
    let filter_text = match filter {
        None => String::from("-"),
        Some(ShardFilter::AfterShardId(id)) => format!("A{}", id.index().unwrap_or(0)),
        Some(ShardFilter::AtTrimHorizon) => "T".into(),
        Some(ShardFilter::FromTrimHorizon) => "F".into(),
        Some(ShardFilter::AtLatest) => "L".into(),
        Some(ShardFilter::AtTimestamp(t)) => format!("S{}", BrokerClock::epoch_millis(*t)),
        Some(ShardFilter::FromTimestamp(t)) => format!("R{}", BrokerClock::epoch_millis(*t)),
    };
    format!("{}|{}|{}|{}|{}", stream.name, stream.incarnation, next_index, filter_text, issued_ms)
}

fn decode_list_token(token: &str) -> Option<(String, u64, usize, Option<ShardFilter>, u64)> {
    let mut parts = token.rsplitn(5, '|');
    let issued: u64 = parts.next()?.parse().ok()?;
    let filter_text = parts.next()?;
    let next: usize = parts.next()?.parse().ok()?;
    let incarnation: u64 = parts.next()?.parse().ok()?;
    let name = parts.next()?.to_owned();
    let millis =
        |s: &str| -> Option<SystemTime> { Some(SystemTime::UNIX_EPOCH + Duration::from_millis(s.parse().ok()?)) };
    let filter = match filter_text.split_at_checked(1)? {
        ("-", _) => None,
        ("A", idx) => Some(ShardFilter::AfterShardId(ShardId::from_index(idx.parse().ok()?))),
        ("T", _) => Some(ShardFilter::AtTrimHorizon),
        ("F", _) => Some(ShardFilter::FromTrimHorizon),
        ("L", _) => Some(ShardFilter::AtLatest),
        ("S", t) => Some(ShardFilter::AtTimestamp(millis(t)?)),
        ("R", t) => Some(ShardFilter::FromTimestamp(millis(t)?)),
        _ => return None,
    };
    Some((name, incarnation, next, filter, issued))
}

#[async_trait]
impl Kinesis for MemoryBroker {
    async fn create_stream(&self, request: CreateStreamRequest) -> Result<(), KinesisError> {
        let name = request.stream_name;
        if !valid_name(&name) {
            return Err(errors::validation(
                1,
                &format!(
                    "Value '{name}' at 'streamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
                ),
            ));
        }
        let shard_count = match request.mode {
            StreamMode::OnDemand => request.shard_count.unwrap_or(self.inner.config.on_demand_initial_shards),
            StreamMode::Provisioned => request.shard_count.unwrap_or(4),
        };
        if shard_count == 0 {
            return Err(errors::validation(
                1,
                "Value '0' at 'shardCount' failed to satisfy constraint: Member must have value greater than or equal to 1",
            ));
        }
        let max_record_size_kib = match request.max_record_size_kib {
            Some(kib) => StreamLimits::validate_max_record_size_kib(kib)
                .map_err(|e| KinesisError::Validation { message: e.to_string() })?,
            None => limits::DEFAULT_MAX_RECORD_SIZE_KIB,
        };
        let mut state = self.lock();
        if state.streams.contains_key(&name) {
            return Err(errors::stream_exists(&name, self.account()));
        }
        self.check_shard_limit(&state, shard_count)?;
        let incarnation = state.next_incarnation;
        state.next_incarnation += 1;
        let arn = self.stream_arn(&name);
        let spec =
            StreamSpec { name: name.clone(), arn, mode: request.mode, shard_count, max_record_size_kib, incarnation };
        let stream = StreamState::new(spec, &self.inner.config, &self.inner.clock);
        state.streams.insert(name, stream);
        Ok(())
    }

    async fn delete_stream(&self, stream: &StreamRef, enforce_consumer_deletion: bool) -> Result<(), KinesisError> {
        let name = self.resolve_name(stream)?.to_owned();
        let mut state = self.lock();
        let s = state.streams.get(&name).ok_or_else(|| errors::stream_not_found(&name, self.account()))?;
        if !s.consumers.is_empty() && !enforce_consumer_deletion {
            return Err(KinesisError::ResourceInUse {
                message: format!("Stream {name} under account {} has registered consumers.", self.account()),
            });
        }
        if let Some(removed) = state.streams.remove(&name) {
            for shard in &removed.shards {
                shard.notify.notify_waiters();
            }
        }
        state.scalings.remove(&name);
        Ok(())
    }

    async fn describe_stream_summary(&self, stream: &StreamRef) -> Result<StreamSummary, KinesisError> {
        self.inject(Operation::DescribeStreamSummary).await?;
        self.with_stream(stream, |s, _| {
            Ok(StreamSummary {
                stream_name: s.name.clone(),
                stream_arn: s.arn.clone(),
                status: s.status,
                mode: s.mode,
                open_shard_count: s.open_shard_count(),
                retention_period_hours: (s.retention.as_secs() / 3600) as u32,
                consumer_count: Some(s.consumers.len() as u32),
                max_record_size_kib: s.max_record_size_kib,
                creation_timestamp: s.created_at,
            })
        })
    }

    async fn list_shards(&self, request: ListShardsRequest) -> Result<ListShardsPage, KinesisError> {
        self.inject(Operation::ListShards).await?;
        let max = match request.max_results {
            Some(0) => {
                return Err(errors::validation(
                    1,
                    "Value '0' at 'maxResults' failed to satisfy constraint: Member must have value greater than or equal to 1",
                ));
            }
            Some(n) if n > 10_000 => {
                return Err(errors::validation(
                    1,
                    &format!(
                        "Value '{n}' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 10000"
                    ),
                ));
            }
            Some(n) => n.min(1000) as usize,
            None => 1000,
        };
        let now_wall = self.inner.clock.now_wall();
        let (stream_ref, start, filter) = match &request.next_token {
            Some(token) => {
                let (name, incarnation, next, filter, issued) = decode_list_token(token)
                    .ok_or_else(|| KinesisError::InvalidArgument { message: "Invalid NextToken.".to_owned() })?;
                if BrokerClock::epoch_millis(now_wall).saturating_sub(issued) > 300_000 {
                    return Err(KinesisError::ExpiredNextToken {
                        message: "The timestamp on the NextToken has expired.".to_owned(),
                    });
                }
                let current = self.with_stream(&StreamRef::Name(name.clone()), |s, _| Ok(s.incarnation))?;
                if current != incarnation {
                    return Err(KinesisError::InvalidArgument { message: "Invalid NextToken.".to_owned() });
                }
                (StreamRef::Name(name), next, filter)
            }
            None => {
                let start = match &request.exclusive_start_shard_id {
                    Some(id) => id.index().map_or(0, |i| i as usize + 1),
                    None => 0,
                };
                (request.stream.clone(), start, request.filter.clone())
            }
        };
        self.with_stream(&stream_ref, |s, _| {
            let effective = filter.clone().unwrap_or(ShardFilter::FromTrimHorizon);
            let mut shards = Vec::new();
            let mut next = None;
            for (index, shard) in s.shards.iter().enumerate().skip(start) {
                if s.is_expired(index, now_wall) || !shard_matches_filter(s, shard, &effective, now_wall) {
                    continue;
                }
                if shards.len() == max {
                    next = Some(shard.index as usize);
                    break;
                }
                shards.push(shard.describe());
            }
            let next_token = next.map(|i| encode_list_token(s, i, &filter, BrokerClock::epoch_millis(now_wall)));
            Ok(ListShardsPage { shards, next_token })
        })
    }

    async fn put_record(&self, request: PutRecordRequest) -> Result<RecordPlacement, KinesisError> {
        self.inject(Operation::PutRecord).await?;
        let mut touched = Vec::new();
        let result = self.with_stream(&request.stream, |s, now| {
            self.validate_entries(&s.limits(), &[(request.partition_key.as_str(), request.data.len())])?;
            s.trim(now);
            let input = WriteInput {
                partition_key: &request.partition_key,
                explicit_hash_key: request.explicit_hash_key,
                data: &request.data,
            };
            self.write_one(s, Operation::PutRecord, input, now, &mut touched)
                .map(|placement| (placement, touched.iter().map(|&i| s.shards[i].notify.clone()).collect::<Vec<_>>()))
        })?;
        for notify in result.1 {
            notify.notify_waiters();
        }
        Ok(result.0)
    }

    async fn put_records(
        &self,
        stream: &StreamRef,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsOutput, KinesisError> {
        let bytes = entries.iter().map(|e| e.partition_key.len() + e.data.len()).sum();
        let (latency, failure) = self.inner.faults.on_call(Operation::PutRecords, bytes);
        if let Some(code) = failure {
            tokio::time::sleep(latency).await;
            return Err(KinesisError::from_code(&code, format!("Injected fault: {code}")));
        }
        if latency.is_zero() {
            return self.store_records(stream, &entries);
        }
        // A slow service still stores a request whose caller stopped waiting for the answer (a
        // client time-out): the write lands after the latency whatever the caller does.
        let broker = self.clone();
        let stream = stream.clone();
        let write = tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            broker.store_records(&stream, &entries)
        });
        write.await.unwrap_or_else(|e| {
            Err(KinesisError::InternalFailure { message: format!("the broker's write task failed: {e}") })
        })
    }

    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<ShardIterator, KinesisError> {
        self.inject(Operation::GetShardIterator).await?;
        let now_wall = self.inner.clock.now_wall();
        self.with_stream(stream, |s, _| {
            let index = s
                .live_shard_index(shard_id, now_wall)
                .ok_or_else(|| errors::shard_not_found(shard_id.as_str(), &s.name, self.account()))?;
            let shard = &s.shards[index];
            let pos = self.resolve_position(s, shard, &position)?;
            Ok(self.issue_iterator(s, shard, pos))
        })
    }

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: Option<u32>,
    ) -> Result<GetRecordsOutput, KinesisError> {
        self.inject(Operation::GetRecords).await?;
        let limit = match limit {
            Some(0) => {
                return Err(errors::validation(
                    1,
                    "Value '0' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1",
                ));
            }
            Some(n) if n > limits::MAX_GET_RECORDS_LIMIT => {
                return Err(errors::validation(
                    1,
                    &format!(
                        "Value '{n}' at 'limit' failed to satisfy constraint: Member must have value less than or equal to 10000"
                    ),
                ));
            }
            Some(n) => n as usize,
            None => limits::MAX_GET_RECORDS_LIMIT as usize,
        };
        let pos = IteratorPosition::decode(iterator).ok_or_else(errors::invalid_iterator)?;
        let now_wall = self.inner.clock.now_wall();
        let issued = SystemTime::UNIX_EPOCH + Duration::from_millis(pos.issued_at_ms);
        if now_wall.duration_since(issued).unwrap_or(Duration::ZERO) > self.inner.config.iterator_ttl {
            return Err(errors::expired_iterator(issued, now_wall));
        }
        let throttling = self.inner.config.throttling;
        let result = self.with_stream(&StreamRef::Name(pos.stream.clone()), |s, now| {
            if s.incarnation != pos.incarnation {
                return Err(errors::invalid_iterator());
            }
            let index = pos.shard_index as usize;
            if index >= s.shards.len() || s.is_expired(index, now_wall) {
                return Err(errors::invalid_iterator());
            }
            let forced = self.inner.faults.on_entry(Operation::GetRecords, &s.shards[index].id);
            let admitted = forced.is_none() && s.shards[index].admit_read(throttling, now);
            if !admitted {
                if forced == Some(EntryFault::Fail) {
                    return Err(KinesisError::InternalFailure { message: "Internal service failure.".to_owned() });
                }
                self.inner.counters.reads_throttled.fetch_add(1, Ordering::Relaxed);
                return Err(errors::read_throttled(&s.shards[index].id, &s.name, self.account()));
            }
            let shard = &s.shards[index];
            let mut position = pos.position.max(shard.trim_horizon());
            let mut records = Vec::new();
            let mut bytes = 0usize;
            while records.len() < limit {
                let Some(record) = shard.record_at(position) else { break };
                let size = record.billed_size();
                if !records.is_empty() && bytes + size > limits::MAX_GET_RECORDS_BYTES {
                    break;
                }
                bytes += size;
                records.push(record.to_record());
                position += 1;
            }
            let at_end = position >= shard.end_position();
            let closed_and_done = !shard.is_open() && at_end;
            let millis_behind_latest = Some(shard.millis_behind(position, now));
            let next = (!closed_and_done).then(|| self.issue_iterator(s, shard, position));
            let child_shards = if closed_and_done { s.child_shards_of(index) } else { Vec::new() };
            s.shards[index].charge_read(bytes, throttling, now);
            Ok(GetRecordsOutput { records, next_shard_iterator: next, millis_behind_latest, child_shards })
        });
        match result {
            Err(KinesisError::ResourceNotFound { .. }) => Err(errors::invalid_iterator()),
            other => other,
        }
    }

    async fn register_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, KinesisError> {
        fanout::register(self, stream_arn, consumer_name)
    }

    async fn describe_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, KinesisError> {
        fanout::describe(self, stream_arn, consumer_name)
    }

    async fn deregister_stream_consumer(&self, stream_arn: &str, consumer_name: &str) -> Result<(), KinesisError> {
        fanout::deregister(self, stream_arn, consumer_name)
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<SubscriptionStream, KinesisError> {
        self.inject(Operation::SubscribeToShard).await?;
        fanout::subscribe(self, consumer_arn, shard_id, position)
    }

    async fn split_shard(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        new_starting_hash_key: HashKey,
    ) -> Result<(), KinesisError> {
        let account = self.account().to_owned();
        let name = self.resolve_name(stream)?.to_owned();
        let now = self.inner.clock.instant();
        let mut state = self.lock();
        self.check_shard_limit(&state, 2)?;
        let s = state.streams.get_mut(&name).ok_or_else(|| errors::stream_not_found(&name, &account))?;
        s.trim(now);
        if s.mode == StreamMode::OnDemand {
            return Err(errors::on_demand_reshard(&name, &account));
        }
        let index = s
            .shard_index(shard_id)
            .ok_or_else(|| errors::reshard_shard_not_found(shard_id.as_str(), &name, &account))?;
        if !s.shards[index].is_open() {
            return Err(errors::already_resharded(shard_id, &name, &account));
        }
        let range = s.shards[index].range;
        if range.split_at(new_starting_hash_key).is_err() {
            return Err(KinesisError::InvalidArgument {
                message: format!(
                    "NewStartingHashKey {new_starting_hash_key} used in SplitShard() on shard {shard_id} in stream {name} under account {account} is not both greater than one plus the shard's StartingHashKey {} and less than the shard's EndingHashKey {}.",
                    range.start(),
                    range.end()
                ),
            });
        }
        s.split(index, new_starting_hash_key, &self.inner.config, &self.inner.clock);
        Ok(())
    }

    async fn merge_shards(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        adjacent_shard_id: &ShardId,
    ) -> Result<(), KinesisError> {
        let account = self.account().to_owned();
        let name = self.resolve_name(stream)?.to_owned();
        let now = self.inner.clock.instant();
        let mut state = self.lock();
        self.check_shard_limit(&state, 1)?;
        let s = state.streams.get_mut(&name).ok_or_else(|| errors::stream_not_found(&name, &account))?;
        s.trim(now);
        if s.mode == StreamMode::OnDemand {
            return Err(errors::on_demand_reshard(&name, &account));
        }
        let a = s
            .shard_index(shard_id)
            .ok_or_else(|| errors::reshard_shard_not_found(shard_id.as_str(), &name, &account))?;
        let b = s
            .shard_index(adjacent_shard_id)
            .ok_or_else(|| errors::reshard_shard_not_found(adjacent_shard_id.as_str(), &name, &account))?;
        for idx in [a, b] {
            if !s.shards[idx].is_open() {
                return Err(errors::already_resharded(&s.shards[idx].id, &name, &account));
            }
        }
        if a == b || s.shards[a].range.merge(&s.shards[b].range).is_none() {
            return Err(KinesisError::InvalidArgument {
                message: format!(
                    "Shards {shard_id} and {adjacent_shard_id} in stream {name} under account {account} are not an adjacent pair of shards eligible for merging"
                ),
            });
        }
        s.merge(a, b, &self.inner.config, &self.inner.clock);
        Ok(())
    }

    async fn update_shard_count(
        &self,
        stream: &StreamRef,
        target_shard_count: u32,
    ) -> Result<UpdateShardCountOutput, KinesisError> {
        let account = self.account().to_owned();
        let name = self.resolve_name(stream)?.to_owned();
        let now = self.inner.clock.instant();
        let mut state = self.lock();
        let current = {
            let s = state.streams.get_mut(&name).ok_or_else(|| errors::stream_not_found(&name, &account))?;
            s.trim(now);
            if s.mode == StreamMode::OnDemand {
                return Err(errors::on_demand_reshard(&name, &account));
            }
            s.open_shard_count()
        };
        if target_shard_count == 0 || target_shard_count > 10_000 {
            return Err(errors::validation(
                1,
                &format!(
                    "Value '{target_shard_count}' at 'targetShardCount' failed to satisfy constraint: Member must have value between 1 and 10000"
                ),
            ));
        }
        if target_shard_count > current.saturating_mul(2) {
            return Err(KinesisError::InvalidArgument {
                message: format!(
                    "UpdateShardCount failed for {name}. Cannot scale up over double your current open shard count. Current open shard count: {current} Target shard count: {target_shard_count}"
                ),
            });
        }
        if target_shard_count.saturating_mul(2) < current {
            return Err(KinesisError::InvalidArgument {
                message: format!(
                    "UpdateShardCount failed for {name}. Cannot scale down below half your current open shard count. Current open shard count: {current} Target shard count: {target_shard_count}"
                ),
            });
        }
        let day = Duration::from_secs(24 * 3600);
        let scalings = state.scalings.entry(name.clone()).or_default();
        while scalings.front().is_some_and(|t| now.saturating_duration_since(*t) >= day) {
            scalings.pop_front();
        }
        if scalings.len() >= 10 {
            return Err(KinesisError::LimitExceeded {
                message: format!(
                    "UpdateShardCount failed for {name}. Exceeded the limit of 10 scaling operations in a rolling 24-hour period."
                ),
            });
        }
        // Only a scaling that goes ahead counts towards the quota.
        self.check_shard_limit(&state, target_shard_count.saturating_mul(2))?;
        state.scalings.entry(name.clone()).or_default().push_back(now);
        if let Some(s) = state.streams.get_mut(&name) {
            s.scale_to(target_shard_count, &self.inner.config, &self.inner.clock);
        }
        Ok(UpdateShardCountOutput { current_shard_count: current, target_shard_count })
    }

    async fn update_max_record_size(&self, stream: &StreamRef, max_record_size_kib: u32) -> Result<(), KinesisError> {
        let kib = StreamLimits::validate_max_record_size_kib(max_record_size_kib)
            .map_err(|e| KinesisError::Validation { message: e.to_string() })?;
        self.with_stream(stream, |s, _| {
            s.max_record_size_kib = kib;
            Ok(())
        })
    }
}
