//! A fleet of in-process workers on the in-memory broker and stores, a producer with per-key
//! counters, and a recording processor, for deterministic paused-time tests.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kcl::processor::*;
use kcl::store::faults::{StoreFaults, WithFaults};
use kcl::store::memory::{MemoryCoordinatorStore, MemoryLeaseStore, MemoryWorkerMetricsStore};
use kcl::{
    CpuMetrics, InitialPosition, Lease, LeaseStore, ProcessorError, RetrievalMode, Scheduler, SchedulerConfig,
    SchedulerHandle, ShardPhase,
};
use kinesis_core::broker::BrokerConfig;
use kinesis_core::sequence::StartingPosition;
use kinesis_core::*;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One user record as a processor saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub worker: String,
    pub shard: String,
    pub key: String,
    pub n: u64,
    pub position: ExtendedSequenceNumber,
    pub attempt: u32,
    pub at: Instant,
}

/// A lifecycle call a processor saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Initialize {
        worker: String,
        shard: String,
        checkpoint: ExtendedSequenceNumber,
        pending_checkpoint: Option<ExtendedSequenceNumber>,
        pending_state: Option<Bytes>,
    },
    LeaseLost {
        worker: String,
        shard: String,
    },
    ShardEnded {
        worker: String,
        shard: String,
    },
    ShutdownRequested {
        worker: String,
        shard: String,
        reason: ShutdownReason,
    },
}

/// How the recording processor behaves.
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Checkpoint after every n-th batch of a processor (1: every batch; 0: never).
    pub checkpoint_every: u32,
    /// Checkpoint in shutdown_requested and shard_ended.
    pub checkpoint_on_shutdown: bool,
    /// Sleep this long in every process_records call.
    pub delay: Duration,
    /// Fail batches that contain this key this many times (then accept).
    pub poison: Option<(String, u32)>,
    /// Checkpoint at the record with this key and counter when it is delivered (instead of the
    /// batch-rhythm checkpoints).
    pub checkpoint_at: Option<(String, u64)>,
    /// Prepare (not commit) a checkpoint at the record with this key and counter, with the
    /// application state `"state <key> <n>"`.
    pub prepare_at: Option<(String, u64)>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            checkpoint_every: 1,
            checkpoint_on_shutdown: true,
            delay: Duration::ZERO,
            poison: None,
            checkpoint_at: None,
            prepare_at: None,
        }
    }
}

/// What every processor of a fleet records.
#[derive(Clone, Default)]
pub struct Recorder {
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
    pub events: Arc<Mutex<Vec<Event>>>,
    pub failures: Arc<AtomicU64>,
    pub behavior: Arc<Mutex<Behavior>>,
    pub batches: Arc<AtomicU64>,
}

impl Recorder {
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    pub fn behavior(&self, change: impl FnOnce(&mut Behavior)) {
        change(&mut lock(&self.behavior));
    }
}

/// Parses the `"<key> <n> "` header of a produced record.
pub fn parse(data: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split_whitespace();
    let key = parts.next()?.to_owned();
    let n = parts.next()?.parse().ok()?;
    Some((key, n))
}

pub struct RecordingProcessor {
    worker: String,
    shard: String,
    recorder: Recorder,
    batches: u32,
}

#[async_trait]
impl ShardRecordProcessor for RecordingProcessor {
    async fn initialize(&mut self, input: InitializationInput) -> Result<(), ProcessorError> {
        lock(&self.recorder.events).push(Event::Initialize {
            worker: self.worker.clone(),
            shard: self.shard.clone(),
            checkpoint: input.extended_sequence_number,
            pending_checkpoint: input.pending_checkpoint,
            pending_state: input.pending_checkpoint_state,
        });
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let behavior = lock(&self.recorder.behavior).clone();
        if !behavior.delay.is_zero() {
            sleep(behavior.delay).await;
        }
        if let Some((poison, times)) = &behavior.poison {
            let poisoned = input.records.iter().any(|r| parse(&r.data).is_some_and(|(k, _)| &k == poison));
            if poisoned && self.recorder.failures.load(Ordering::SeqCst) < u64::from(*times) {
                self.recorder.failures.fetch_add(1, Ordering::SeqCst);
                let mut log = lock(&self.recorder.deliveries);
                for r in input.records {
                    if let Some((key, n)) = parse(&r.data) {
                        log.push(Delivery {
                            worker: format!("{}(failed)", self.worker),
                            shard: self.shard.clone(),
                            key,
                            n,
                            position: r.extended_sequence_number(),
                            attempt: input.attempt,
                            at: Instant::now(),
                        });
                    }
                }
                return Err(format!("poison record in batch (attempt {})", input.attempt).into());
            }
        }
        {
            let mut log = lock(&self.recorder.deliveries);
            for r in input.records {
                let (key, n) = parse(&r.data).ok_or("record without a producer header")?;
                log.push(Delivery {
                    worker: self.worker.clone(),
                    shard: self.shard.clone(),
                    key,
                    n,
                    position: r.extended_sequence_number(),
                    attempt: input.attempt,
                    at: Instant::now(),
                });
            }
        }
        self.recorder.batches.fetch_add(1, Ordering::SeqCst);
        self.batches += 1;
        if let Some((key, n)) = &behavior.prepare_at {
            if let Some(r) = input.records.iter().find(|r| parse(&r.data).is_some_and(|(k, m)| &k == key && m == *n)) {
                let state = Bytes::from(format!("state {key} {n}"));
                let _prepared =
                    input.checkpointer.prepare_checkpoint_at(r.extended_sequence_number(), Some(state)).await?;
            }
        } else if let Some((key, n)) = &behavior.checkpoint_at {
            if let Some(r) = input.records.iter().find(|r| parse(&r.data).is_some_and(|(k, m)| &k == key && m == *n)) {
                input.checkpointer.checkpoint_record(r).await?;
            }
        } else if behavior.checkpoint_every > 0 && self.batches.is_multiple_of(behavior.checkpoint_every) {
            input.checkpointer.checkpoint().await?;
        }
        Ok(())
    }

    async fn lease_lost(&mut self, _input: LeaseLostInput) {
        lock(&self.recorder.events).push(Event::LeaseLost { worker: self.worker.clone(), shard: self.shard.clone() });
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        lock(&self.recorder.events).push(Event::ShardEnded { worker: self.worker.clone(), shard: self.shard.clone() });
        if lock(&self.recorder.behavior).checkpoint_on_shutdown {
            input.checkpointer.checkpoint().await?;
        }
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        lock(&self.recorder.events).push(Event::ShutdownRequested {
            worker: self.worker.clone(),
            shard: self.shard.clone(),
            reason: input.reason.clone(),
        });
        if lock(&self.recorder.behavior).checkpoint_on_shutdown {
            input.checkpointer.checkpoint().await?;
        }
        Ok(())
    }
}

/// The in-memory broker, the three stores and a set of workers.
pub struct Fleet {
    pub broker: MemoryBroker,
    pub kinesis: Arc<dyn Kinesis>,
    pub stream: StreamRef,
    pub leases: MemoryLeaseStore,
    pub coordinator: MemoryCoordinatorStore,
    pub metrics: MemoryWorkerMetricsStore,
    pub recorder: Recorder,
    pub config: SchedulerConfig,
    pub mode: RetrievalMode,
    pub initial_position: InitialPosition,
    pub workers: BTreeMap<String, SchedulerHandle>,
    /// Per worker, a configuration other than `config` (a fleet mixing lease modes).
    pub worker_configs: BTreeMap<String, SchedulerConfig>,
    /// Per worker, the store faults between it and the shared stores (no rules: none).
    pub store_faults: Mutex<BTreeMap<String, Arc<StoreFaults>>>,
}

thread_local! {
    /// The configuration [`Fleet::new`] gives a fleet, when a test sets one ([`with_config`]).
    static CONFIG: std::cell::RefCell<Option<SchedulerConfig>> = const { std::cell::RefCell::new(None) };
}

/// The test configuration: the defaults, without host CPU (all workers share one host here) — or
/// the one [`with_config`] set for this test.
pub fn test_config() -> SchedulerConfig {
    CONFIG
        .with(|c| c.borrow().clone())
        .unwrap_or_else(|| SchedulerConfig::default().with_cpu_metrics(CpuMetrics::Disabled))
}

/// Runs `test` with every fleet it makes configured by `config` (tests run on a current-thread
/// runtime, so the setting is the test's own).
pub async fn with_config(config: SchedulerConfig, test: impl std::future::Future<Output = ()>) {
    CONFIG.with(|c| *c.borrow_mut() = Some(config));
    test.await;
    CONFIG.with(|c| *c.borrow_mut() = None);
}

/// Runs each named `async fn()` test once per lease mode: `<name>::per_lease` and
/// `<name>::heartbeat` (issue 14: the fleet tests hold in both modes).
#[macro_export]
macro_rules! in_both_lease_modes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(start_paused = true)]
                async fn per_lease() {
                    let config = super::support::default_config().per_lease();
                    super::support::with_config(config, super::$name()).await;
                }

                #[tokio::test(start_paused = true)]
                async fn heartbeat() {
                    let config = super::support::default_config().worker_heartbeats();
                    super::support::with_config(config, super::$name()).await;
                }
            }
        )*
    };
}

/// The defaults without host CPU, whatever [`with_config`] set.
pub fn default_config() -> SchedulerConfig {
    SchedulerConfig::default().with_cpu_metrics(CpuMetrics::Disabled)
}

impl Fleet {
    pub async fn new(shards: u32) -> Fleet {
        Fleet::with_broker(MemoryBroker::with_config(BrokerConfig::default()), shards).await
    }

    pub async fn with_broker(broker: MemoryBroker, shards: u32) -> Fleet {
        broker.create_stream(CreateStreamRequest::provisioned("orders", shards)).await.expect("create stream");
        Fleet {
            kinesis: Arc::new(broker.clone()),
            broker,
            stream: StreamRef::from("orders"),
            leases: MemoryLeaseStore::new(),
            coordinator: MemoryCoordinatorStore::new(),
            metrics: MemoryWorkerMetricsStore::new(),
            recorder: Recorder::default(),
            config: test_config(),
            mode: RetrievalMode::Polling,
            initial_position: InitialPosition::TrimHorizon,
            workers: BTreeMap::new(),
            worker_configs: BTreeMap::new(),
            store_faults: Mutex::new(BTreeMap::new()),
        }
    }

    /// The store faults of one worker's calls (to all three stores); rules added here hit only
    /// that worker, as a partition between it and the store would.
    pub fn faults(&self, worker: &str) -> Arc<StoreFaults> {
        let seed = worker.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        lock(&self.store_faults).entry(worker.to_owned()).or_insert_with(|| Arc::new(StoreFaults::new(seed))).clone()
    }

    pub fn scheduler(&self, worker: &str) -> Scheduler {
        let recorder = self.recorder.clone();
        let id = worker.to_owned();
        Scheduler::builder("app", self.stream.clone(), self.kinesis.clone())
            .worker_id(worker)
            .initial_position(self.initial_position)
            .retrieval(self.mode.clone())
            .lease_store(Arc::new(WithFaults::new(self.leases.clone(), self.faults(worker))))
            .coordinator_store(Arc::new(WithFaults::new(self.coordinator.clone(), self.faults(worker))))
            .worker_metrics_store(Arc::new(WithFaults::new(self.metrics.clone(), self.faults(worker))))
            .config(self.worker_configs.get(worker).unwrap_or(&self.config).clone())
            .processor_factory(move |shard: &ShardId| RecordingProcessor {
                worker: id.clone(),
                shard: shard.to_string(),
                recorder: recorder.clone(),
                batches: 0,
            })
            .build()
            .expect("build scheduler")
    }

    pub fn start(&mut self, worker: &str) {
        let handle = self.scheduler(worker).start();
        self.workers.insert(worker.to_owned(), handle);
    }

    pub async fn kill(&mut self, worker: &str) {
        if let Some(handle) = self.workers.remove(worker) {
            handle.kill().await;
        }
    }

    pub async fn shutdown(&mut self, worker: &str) {
        if let Some(handle) = self.workers.remove(worker) {
            handle.shutdown().await;
        }
    }

    pub async fn shutdown_all(&mut self) {
        let workers: Vec<String> = self.workers.keys().cloned().collect();
        for w in workers {
            self.shutdown(&w).await;
        }
    }

    pub fn handle(&self, worker: &str) -> &SchedulerHandle {
        &self.workers[worker]
    }

    /// Shards each worker is processing (phase Processing).
    pub fn processing(&self) -> BTreeMap<String, Vec<String>> {
        self.workers
            .iter()
            .map(|(w, h)| {
                let shards = h
                    .state()
                    .shards
                    .iter()
                    .filter(|(_, s)| s.phase == ShardPhase::Processing)
                    .map(|(k, _)| k.clone())
                    .collect();
                (w.clone(), shards)
            })
            .collect()
    }

    pub fn leader(&self) -> Option<String> {
        let leaders: Vec<String> =
            self.workers.iter().filter(|(_, h)| h.state().is_leader).map(|(w, _)| w.clone()).collect();
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        leaders.into_iter().next()
    }

    pub async fn lease_table(&self) -> Vec<Lease> {
        self.leases.list_leases().await.expect("list leases")
    }

    /// The lease table, read synchronously (the in-memory store answers at once), for
    /// [`wait_for`](Self::wait_for) conditions.
    pub fn leases_snapshot(&self) -> Vec<Lease> {
        use futures::FutureExt;
        match self.leases.list_leases().now_or_never() {
            Some(Ok(leases)) => leases,
            other => panic!("the in-memory lease store did not answer at once: {other:?}"),
        }
    }

    pub async fn open_shards(&self) -> Vec<Shard> {
        self.kinesis
            .list_all_shards(&self.stream, None)
            .await
            .expect("list shards")
            .into_iter()
            .filter(|s| !s.is_closed())
            .collect()
    }

    /// Waits (virtual time) until `done` holds, checking every 100 ms; panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, mut done: impl FnMut(&Fleet) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if done(self) {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
            sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Produces records `"<key> <n> "` (n counting per key from 0), `per_tick` keys every `tick`,
/// retrying refused entries before moving on so per-key order is kept.
pub struct Producer {
    pub sent: Arc<Mutex<HashMap<String, u64>>>,
    task: JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
}

impl Producer {
    pub fn start(kinesis: Arc<dyn Kinesis>, stream: StreamRef, keys: usize, tick: Duration) -> Producer {
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let sent = sent.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut counters = vec![0u64; keys];
                while !stop.is_cancelled() {
                    let mut pending: Vec<(usize, PutRecordsEntry)> = (0..keys)
                        .map(|k| {
                            let data = format!("k{k} {} {}", counters[k], "x".repeat(40));
                            (
                                k,
                                PutRecordsEntry {
                                    partition_key: format!("k{k}"),
                                    explicit_hash_key: None,
                                    data: Bytes::from(data),
                                },
                            )
                        })
                        .collect();
                    while !pending.is_empty() {
                        let entries = pending.iter().map(|(_, e)| e.clone()).collect();
                        if let Ok(out) = kinesis.put_records(&stream, entries).await {
                            let mut retry = Vec::new();
                            for ((k, e), r) in pending.into_iter().zip(out.records) {
                                match r {
                                    Ok(_) => {
                                        counters[k] += 1;
                                        lock(&sent).insert(format!("k{k}"), counters[k]);
                                    }
                                    Err(_) => retry.push((k, e)),
                                }
                            }
                            pending = retry;
                        }
                        if !pending.is_empty() {
                            sleep(Duration::from_millis(50)).await;
                        }
                    }
                    sleep(tick).await;
                }
            })
        };
        Producer { sent, task, stop }
    }

    pub async fn stop(self) -> HashMap<String, u64> {
        self.stop.cancel();
        let _ = self.task.await;
        lock(&self.sent).clone()
    }

    pub fn total(&self) -> u64 {
        lock(&self.sent).values().sum()
    }
}

/// Checks per-key order and completeness: the first deliveries of every key are exactly
/// 0, 1, 2, … in delivery order, every produced record was delivered, and returns the
/// duplicate deliveries (a record delivered again).
pub fn check_order(deliveries: &[Delivery], sent: &HashMap<String, u64>) -> Vec<Delivery> {
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut duplicates = Vec::new();
    for d in deliveries.iter().filter(|d| !d.worker.ends_with("(failed)")) {
        let expected = next.entry(d.key.as_str()).or_insert(0);
        if d.n < *expected {
            duplicates.push(d.clone());
        } else {
            assert_eq!(d.n, *expected, "key {} jumped from {} to {} (lost or reordered): {d:?}", d.key, *expected, d.n);
            *expected += 1;
        }
    }
    for (key, count) in sent {
        assert_eq!(next.get(key.as_str()).copied().unwrap_or(0), *count, "records of {key} lost");
    }
    duplicates
}

/// The first delivery of each (key, n).
pub fn first_deliveries(deliveries: &[Delivery]) -> HashMap<(String, u64), Delivery> {
    let mut first = HashMap::new();
    for d in deliveries.iter().filter(|d| !d.worker.ends_with("(failed)")) {
        first.entry((d.key.clone(), d.n)).or_insert_with(|| d.clone());
    }
    first
}

/// Reads every record of a shard (for checks).
pub async fn read_shard(kinesis: &dyn Kinesis, stream: &StreamRef, shard: &ShardId) -> Vec<Record> {
    let mut it = kinesis.get_shard_iterator(stream, shard, StartingPosition::TrimHorizon).await.expect("iterator");
    let mut all = Vec::new();
    loop {
        let out = kinesis.get_records(&it, None).await.expect("get records");
        let empty = out.records.is_empty();
        all.extend(out.records);
        match out.next_shard_iterator {
            Some(next) if !empty => it = next,
            _ => return all,
        }
    }
}

pub fn distinct<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> HashSet<T> {
    items.iter().cloned().collect()
}

/// One `GetRecords` or `SubscribeToShard` call as [`CountingKinesis`] saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    /// Records returned, or the error code.
    pub result: Result<usize, String>,
}

/// A `Kinesis` that counts and logs `GetRecords` and `SubscribeToShard` calls and forwards
/// everything to the broker.
pub struct CountingKinesis {
    pub inner: MemoryBroker,
    pub get_records: AtomicU64,
    pub subscriptions: AtomicU64,
    pub get_records_log: Mutex<Vec<Call>>,
    pub subscribe_log: Mutex<Vec<Call>>,
}

impl CountingKinesis {
    pub fn new(inner: MemoryBroker) -> Self {
        CountingKinesis {
            inner,
            get_records: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            get_records_log: Mutex::new(Vec::new()),
            subscribe_log: Mutex::new(Vec::new()),
        }
    }

    pub fn get_records_calls(&self) -> Vec<Call> {
        lock(&self.get_records_log).clone()
    }

    pub fn subscribe_calls(&self) -> Vec<Call> {
        lock(&self.subscribe_log).clone()
    }
}

#[async_trait]
impl Kinesis for CountingKinesis {
    async fn create_stream(&self, request: CreateStreamRequest) -> Result<(), KinesisError> {
        self.inner.create_stream(request).await
    }
    async fn delete_stream(&self, stream: &StreamRef, enforce: bool) -> Result<(), KinesisError> {
        self.inner.delete_stream(stream, enforce).await
    }
    async fn describe_stream_summary(&self, stream: &StreamRef) -> Result<StreamSummary, KinesisError> {
        self.inner.describe_stream_summary(stream).await
    }
    async fn list_shards(&self, request: ListShardsRequest) -> Result<ListShardsPage, KinesisError> {
        self.inner.list_shards(request).await
    }
    async fn put_record(&self, request: PutRecordRequest) -> Result<RecordPlacement, KinesisError> {
        self.inner.put_record(request).await
    }
    async fn put_records(
        &self,
        stream: &StreamRef,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsOutput, KinesisError> {
        self.inner.put_records(stream, entries).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<ShardIterator, KinesisError> {
        self.inner.get_shard_iterator(stream, shard_id, position).await
    }
    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: Option<u32>,
    ) -> Result<GetRecordsOutput, KinesisError> {
        self.get_records.fetch_add(1, Ordering::SeqCst);
        let at = Instant::now();
        let result = self.inner.get_records(iterator, limit).await;
        let logged = match &result {
            Ok(out) => Ok(out.records.len()),
            Err(e) => Err(e.code().to_owned()),
        };
        lock(&self.get_records_log).push(Call { at, result: logged });
        result
    }
    async fn register_stream_consumer(&self, stream_arn: &str, name: &str) -> Result<StreamConsumer, KinesisError> {
        self.inner.register_stream_consumer(stream_arn, name).await
    }
    async fn describe_stream_consumer(&self, stream_arn: &str, name: &str) -> Result<StreamConsumer, KinesisError> {
        self.inner.describe_stream_consumer(stream_arn, name).await
    }
    async fn deregister_stream_consumer(&self, stream_arn: &str, name: &str) -> Result<(), KinesisError> {
        self.inner.deregister_stream_consumer(stream_arn, name).await
    }
    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<SubscriptionStream, KinesisError> {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        let at = Instant::now();
        let result = self.inner.subscribe_to_shard(consumer_arn, shard_id, position).await;
        let logged = match &result {
            Ok(_) => Ok(0),
            Err(e) => Err(e.code().to_owned()),
        };
        lock(&self.subscribe_log).push(Call { at, result: logged });
        result
    }
    async fn split_shard(&self, stream: &StreamRef, shard_id: &ShardId, key: HashKey) -> Result<(), KinesisError> {
        self.inner.split_shard(stream, shard_id, key).await
    }
    async fn merge_shards(&self, stream: &StreamRef, a: &ShardId, b: &ShardId) -> Result<(), KinesisError> {
        self.inner.merge_shards(stream, a, b).await
    }
    async fn update_shard_count(
        &self,
        stream: &StreamRef,
        target: u32,
    ) -> Result<UpdateShardCountOutput, KinesisError> {
        self.inner.update_shard_count(stream, target).await
    }
    async fn update_max_record_size(&self, stream: &StreamRef, kib: u32) -> Result<(), KinesisError> {
        self.inner.update_max_record_size(stream, kib).await
    }
}

/// Keeps every counter and gauge, keyed `Name{label=value,…}` (labels sorted).
#[derive(Default)]
pub struct TestRecorder {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    pub fn counter(&self, key: &str) -> u64 {
        lock(&self.counters).get(key).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Sum of the counters `name{…}` whose labels include `label`.
    pub fn counter_sum(&self, name: &str, label: &str) -> u64 {
        lock(&self.counters)
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }

    pub fn gauge(&self, key: &str) -> Option<f64> {
        lock(&self.gauges).get(key).map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }

    pub fn gauge_keys(&self, name: &str) -> Vec<String> {
        lock(&self.gauges).keys().filter(|k| k.starts_with(&format!("{name}{{"))).cloned().collect()
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(lock(&self.counters).entry(render(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(lock(&self.gauges).entry(render(key)).or_default().clone())
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
