//! Producer benchmarks on the in-memory broker, on one core (a current-thread runtime). Prints
//! one JSON line per scenario.
//!
//! * `throughput`: 100-byte records, 1000 partition keys, aggregation on, broker limits off, for
//!   a few seconds of wall time: user records per second end to end (accepted, aggregated,
//!   stored, future resolved), with per-key ordering (the default) and without. The broker keeps records for 20 ms only, so memory is reused
//!   as it is with a real service (see `RETENTION_MS`).
//! * `overload`: a 2-shard stream with the service's limits (1000 records/s, 1 MiB/s per shard)
//!   offered 10× what it accepts, with `max_buffered_bytes` = 32 MiB: the peak resident memory
//!   (`VmHWM` of `/proc/self/status`) shows memory stays near the configured bound.
//!
//! Run: `cargo bench -p kinesis-kpl --bench producer` (optionally `-- throughput` or `-- overload`).
//! With `BENCH_RECORDS=n` each throughput run sends `n` records instead of running for a few
//! seconds: the work is then the same from run to run, for valgrind's instruction and cache-miss
//! counts, which a shared machine does not disturb (see `scripts/bench-counts.sh`).
//! `BENCH_SHARDS=n` gives the throughput scenario's stream `n` shards instead of 4, and
//! `BENCH_ORDER=per-key` or `unordered` runs only that ordering.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kinesis_core::broker::{BrokerConfig, MemoryBroker};
use kinesis_core::sequence::StartingPosition;
use kinesis_core::*;
use kpl::{DeliveryFuture, Producer, ProducerConfig, RecordOrder, UserRecord};

const RECORD_BYTES: usize = 100;
const KEYS: usize = 1000;
/// Retention of the throughput scenario's broker: long enough to hold every request in flight,
/// short enough that sent aggregates are freed about as soon as a real service would let the
/// producer free them.
const RETENTION_MS: u64 = 20;

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    // Overload first: it reports the process's peak resident memory, which the throughput
    // scenario (whose broker keeps gigabytes of records) would otherwise dominate.
    if wants("overload") {
        // Simulated time: the 20 seconds of overload run as fast as the CPU allows.
        let paused =
            tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
        paused.block_on(overload());
    }
    if wants("throughput") {
        runtime.block_on(throughput());
    }
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
/// then a scaled-down smoke run checks the benchmark still works without spending minutes.
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// Shards of the throughput scenario's stream: 4, or `BENCH_SHARDS`.
fn shards() -> u32 {
    std::env::var("BENCH_SHARDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4)
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("key-{i}")).collect()
}

/// Awaits the oldest outstanding futures so at most `keep` remain.
async fn drain(outstanding: &mut VecDeque<DeliveryFuture>, keep: usize, delivered: &mut u64, failed: &mut u64) {
    while outstanding.len() > keep {
        let Some(future) = outstanding.pop_front() else { break };
        match future.await {
            Ok(_) => *delivered += 1,
            Err(_) => *failed += 1,
        }
    }
}

async fn throughput() {
    // The default keeps each key's order; the unordered runs show what that costs.
    // `BENCH_ORDER=per-key` or `unordered` runs only one of them.
    let orders: &[(RecordOrder, &str)] = match std::env::var("BENCH_ORDER").as_deref() {
        Ok("per-key") => &[(RecordOrder::PerKey, "per-key")],
        Ok("unordered") => &[(RecordOrder::Unordered, "unordered")],
        _ => &[(RecordOrder::PerKey, "per-key"), (RecordOrder::Unordered, "unordered")],
    };
    for &(ordering, name) in orders {
        // Each record's data in a buffer of its own (what most applications hand over), then
        // with every record sharing one static buffer (the producer's own cost, without the
        // caller's allocation).
        let (fresh, fresh_cpu, stats) = throughput_run(false, ordering).await;
        let (shared, shared_cpu, _) = throughput_run(true, ordering).await;
        let rate = |r: Option<f64>| r.map_or("null".to_owned(), |r| format!("{r:.0}"));
        println!(
            "{{\"scenario\": \"throughput\", \"ordering\": \"{name}\", \"records_per_s\": {fresh:.0}, \"records_per_s_shared_payload\": {shared:.0}, \"records_per_cpu_s\": {}, \"records_per_cpu_s_shared_payload\": {}, \"record_bytes\": {RECORD_BYTES}, \"keys\": {KEYS}, \"shards\": {}, \"records\": {}, \"kinesis_records\": {}, \"put_requests\": {}, \"user_records_per_kinesis_record\": {:.1}}}",
            rate(fresh_cpu),
            rate(shared_cpu),
            shards(),
            stats.user_records_delivered,
            stats.kinesis_records_put,
            stats.put_requests,
            stats.user_records_delivered as f64 / stats.kinesis_records_put.max(1) as f64,
        );
    }
}

/// Sends 100-byte records for a few seconds, awaiting outcomes as they come (at most
/// `OUTSTANDING` futures pending); returns records per second of wall time and of the thread's
/// CPU time (everything runs on this thread; on a shared machine the CPU-time figure is the
/// steadier one), and the producer's counters.
async fn throughput_run(shared_payload: bool, ordering: RecordOrder) -> (f64, Option<f64>, kpl::ProducerStats) {
    const OUTSTANDING: usize = 20_000;
    static PAYLOAD: [u8; RECORD_BYTES] = [b'x'; RECORD_BYTES];
    // The broker keeps records only briefly. What is measured is the producer; a broker holding
    // every record of the run (about a gigabyte) would make each new aggregate's buffer fresh
    // memory, and the page faults on it (the run is 10–25 % faster without them, measured) are a
    // cost a real producer does not pay: it frees a sent aggregate once its `PutRecords` returns.
    let broker_config =
        BrokerConfig { default_retention: Duration::from_millis(RETENTION_MS), ..BrokerConfig::default() };
    let broker = MemoryBroker::with_config(broker_config.without_throttling());
    broker.create_stream(CreateStreamRequest::provisioned("bench", shards())).await.expect("create");
    // The broker's limits are off, so the producer's per-shard limiter is opened up too.
    let config = ProducerConfig::default().rate_limit(1_000_000).ordering(ordering);
    let producer = Producer::builder(broker.clone(), "bench").config(config).build().await.expect("producer");
    let keys = keys();

    let mut outstanding = VecDeque::new();
    let (mut delivered, mut failed) = (0u64, 0u64);
    let mut sent = 0u64;
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    let span = if smoke_run() { Duration::from_millis(200) } else { Duration::from_secs(4) };
    // A fixed number of records instead of a time span, for instruction and cache-miss counts
    // under valgrind (which would make a timed run measure a different amount of work).
    let fixed_count: Option<u64> = std::env::var("BENCH_RECORDS").ok().and_then(|v| v.parse().ok());
    while fixed_count.map_or(start.elapsed() < span, |n| sent < n) {
        for _ in 0..10_000 {
            let key = &keys[sent as usize % KEYS];
            let data = if shared_payload { Bytes::from_static(&PAYLOAD) } else { Bytes::copy_from_slice(&PAYLOAD) };
            outstanding.push_back(producer.send(UserRecord::new(key.clone(), data)).await.expect("send"));
            sent += 1;
        }
        drain(&mut outstanding, OUTSTANDING, &mut delivered, &mut failed).await;
    }
    producer.flush().await;
    drain(&mut outstanding, 0, &mut delivered, &mut failed).await;
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    let cpu_rate = match (cpu_start, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some(sent as f64 / ((b - a) as f64 / 1e9)),
        _ => None,
    };
    let stats = producer.stats();
    producer.shutdown().await;
    assert_eq!((delivered, failed), (sent, 0), "every record delivered");
    (rate, cpu_rate, stats)
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`), on Linux.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

async fn overload() {
    const SHARDS: u32 = 2;
    const BUFFER: usize = 32 << 20;
    const OVERLOAD_RECORD_BYTES: usize = 1024;
    let seconds: u64 = if smoke_run() { 2 } else { 20 };
    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::provisioned("overload", SHARDS)).await.expect("create");
    let broker = Forgetful(broker);
    let rss_before_kib = rss_kib("VmRSS:");
    let config = ProducerConfig::default().max_buffered_bytes(BUFFER);
    let producer = Producer::builder(broker.clone(), "overload").config(config).build().await.expect("producer");
    let broker = broker.0;
    let keys = keys();
    let payload = vec![b'y'; OVERLOAD_RECORD_BYTES];
    // The stream accepts 2 × 1 MiB/s: about 2048 records of 1 KiB per second. Offer 10×.
    let offered_per_sec = 10 * SHARDS as u64 * 1024;
    let tick = Duration::from_millis(10);
    let per_tick = offered_per_sec / 100;

    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut full = 0u64;
    let mut outstanding = VecDeque::new();
    let (mut delivered, mut failed) = (0u64, 0u64);
    let mut next = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..per_tick {
            let key = &keys[(sent + full) as usize % KEYS];
            let record = UserRecord::new(key.clone(), Bytes::copy_from_slice(&payload));
            match producer.try_send(record) {
                Ok(future) => {
                    outstanding.push_back(future);
                    sent += 1;
                }
                Err(_) => full += 1,
            }
        }
        // Collect outcomes that are already there, without waiting.
        while let Some(front) = outstanding.front_mut() {
            match futures::FutureExt::now_or_never(&mut *front) {
                Some(Ok(_)) => delivered += 1,
                Some(Err(_)) => failed += 1,
                None => break,
            }
            outstanding.pop_front();
        }
        next += tick;
        tokio::time::sleep_until(next).await;
    }
    let delivered_during_load = delivered;
    let stats = producer.stats();
    producer.shutdown().await;
    drain(&mut outstanding, 0, &mut delivered, &mut failed).await;
    // Shutdown delivers what was still buffered; it takes simulated time too.
    let drained_after_s = start.elapsed().as_secs_f64() - seconds as f64;
    let peak_rss_kib = rss_kib("VmHWM:");
    let retained = broker.retained_records(&"overload".into()).unwrap_or(0);
    println!(
        "{{\"scenario\": \"overload\", \"seconds\": {seconds}, \"offered_per_s\": {offered_per_sec}, \"record_bytes\": {OVERLOAD_RECORD_BYTES}, \"accepted\": {sent}, \"refused_full\": {full}, \"delivered\": {delivered}, \"failed\": {failed}, \"delivered_during_load_per_s\": {:.0}, \"drain_after_load_s\": {drained_after_s:.1}, \"max_buffered_bytes\": {BUFFER}, \"peak_buffered_bytes\": {}, \"rss_before_bytes\": {}, \"peak_rss_bytes\": {}, \"broker_kinesis_records\": {retained}, \"throttles\": {}}}",
        delivered_during_load as f64 / seconds as f64,
        stats.peak_buffered_bytes,
        rss_before_kib.map_or("null".to_owned(), |k| (k * 1024).to_string()),
        peak_rss_kib.map_or("null".to_owned(), |k| (k * 1024).to_string()),
        stats.throttles,
    );
}

/// A memory figure of `/proc/self/status` in KiB (`VmHWM:` is the peak resident set), on Linux.
fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The broker with every limit and behaviour, except that it stores zeros instead of the
/// records' bytes: it keeps every record for 24 hours, and the overload scenario measures the
/// producer's memory, not the broker's.
#[derive(Clone)]
struct Forgetful(MemoryBroker);

static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

#[async_trait]
impl Kinesis for Forgetful {
    async fn create_stream(&self, request: CreateStreamRequest) -> Result<(), KinesisError> {
        self.0.create_stream(request).await
    }
    async fn delete_stream(&self, stream: &StreamRef, enforce: bool) -> Result<(), KinesisError> {
        self.0.delete_stream(stream, enforce).await
    }
    async fn describe_stream_summary(&self, stream: &StreamRef) -> Result<StreamSummary, KinesisError> {
        self.0.describe_stream_summary(stream).await
    }
    async fn list_shards(&self, request: ListShardsRequest) -> Result<ListShardsPage, KinesisError> {
        self.0.list_shards(request).await
    }
    async fn put_record(&self, request: PutRecordRequest) -> Result<RecordPlacement, KinesisError> {
        self.0.put_record(request).await
    }
    async fn put_records(
        &self,
        stream: &StreamRef,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsOutput, KinesisError> {
        let zeroed = entries
            .into_iter()
            .map(|e| PutRecordsEntry { data: Bytes::from_static(&ZEROS[..e.data.len().min(ZEROS.len())]), ..e })
            .collect();
        self.0.put_records(stream, zeroed).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard: &ShardId,
        position: StartingPosition,
    ) -> Result<ShardIterator, KinesisError> {
        self.0.get_shard_iterator(stream, shard, position).await
    }
    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: Option<u32>,
    ) -> Result<GetRecordsOutput, KinesisError> {
        self.0.get_records(iterator, limit).await
    }
    async fn register_stream_consumer(&self, arn: &str, name: &str) -> Result<StreamConsumer, KinesisError> {
        self.0.register_stream_consumer(arn, name).await
    }
    async fn describe_stream_consumer(&self, arn: &str, name: &str) -> Result<StreamConsumer, KinesisError> {
        self.0.describe_stream_consumer(arn, name).await
    }
    async fn deregister_stream_consumer(&self, arn: &str, name: &str) -> Result<(), KinesisError> {
        self.0.deregister_stream_consumer(arn, name).await
    }
    async fn subscribe_to_shard(
        &self,
        arn: &str,
        shard: &ShardId,
        position: StartingPosition,
    ) -> Result<SubscriptionStream, KinesisError> {
        self.0.subscribe_to_shard(arn, shard, position).await
    }
    async fn split_shard(&self, stream: &StreamRef, shard: &ShardId, at: HashKey) -> Result<(), KinesisError> {
        self.0.split_shard(stream, shard, at).await
    }
    async fn merge_shards(&self, stream: &StreamRef, shard: &ShardId, adjacent: &ShardId) -> Result<(), KinesisError> {
        self.0.merge_shards(stream, shard, adjacent).await
    }
    async fn update_shard_count(
        &self,
        stream: &StreamRef,
        target: u32,
    ) -> Result<UpdateShardCountOutput, KinesisError> {
        self.0.update_shard_count(stream, target).await
    }
    async fn update_max_record_size(&self, stream: &StreamRef, kib: u32) -> Result<(), KinesisError> {
        self.0.update_max_record_size(stream, kib).await
    }
}
