//! Consumer throughput on one core (a current-thread runtime): a full worker (scheduler, lease
//! renewal, polling retrieval with prefetch, de-aggregation with hash-range filtering, delivery)
//! reading pre-written KPL aggregates of 100-byte user records from the in-memory broker with
//! its limits off, into a no-op processor.
//!
//! The polling pace between reads is set to zero (the 5 reads/s of the real service is a limit
//! like the others); the measured span runs from the first delivered batch to the last.
//!
//! Run: `cargo bench -p kinesis-kcl --bench consume`. Prints one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kcl::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor};
use kcl::{CpuMetrics, InitialPosition, ProcessorError, Scheduler, SchedulerConfig};
use kinesis_core::aggregation::AggregateBuilder;
use kinesis_core::broker::{BrokerConfig, MemoryBroker};
use kinesis_core::{CreateStreamRequest, HashKey, Kinesis, PutRecordsEntry, ShardId, StreamRef};

const SHARDS: usize = 4;
const RECORD_BYTES: usize = 100;
/// The KPL's default `AggregationMaxSize`.
const AGGREGATE_BYTES: usize = 51_200;

struct Counter {
    delivered: Arc<AtomicU64>,
    first: Arc<std::sync::OnceLock<Instant>>,
}

#[async_trait]
impl ShardRecordProcessor for Counter {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        self.first.get_or_init(Instant::now);
        self.delivered.fetch_add(input.records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        Ok(input.checkpointer.checkpoint().await?)
    }
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
/// then a scaled-down smoke run checks the benchmark still works without spending minutes.
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn main() {
    let records_per_shard: usize = if smoke_run() { 5_000 } else { 1_000_000 };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    runtime.block_on(async {
        let broker = MemoryBroker::with_config(BrokerConfig::default().without_throttling());
        broker.create_stream(CreateStreamRequest::provisioned("bench", SHARDS as u32)).await.expect("create");
        let stream = StreamRef::from("bench");
        let shards = broker.list_all_shards(&stream, None).await.expect("shards");
        let payload = Bytes::from(vec![b'x'; RECORD_BYTES]);

        // Aggregates as the KPL builds them: per shard, records whose keys hash into it.
        let mut aggregates = 0usize;
        let mut total = 0u64;
        for shard in &shards {
            let keys: Vec<String> = (0..)
                .map(|i| format!("key-{i}"))
                .filter(|k| shard.hash_key_range.contains(HashKey::from_partition_key(k)))
                .take(250)
                .collect();
            let mut builder = AggregateBuilder::new();
            let mut entries = Vec::new();
            for i in 0..records_per_shard {
                let key = &keys[i % keys.len()];
                if builder.size_with(key, None, RECORD_BYTES, &[]) > AGGREGATE_BYTES {
                    entries.push(PutRecordsEntry { partition_key: keys[0].clone(), explicit_hash_key: None, data: builder.take() });
                }
                builder.add(key, None, payload.clone(), &[]);
                if entries.len() == 80 {
                    aggregates += entries.len();
                    broker.put_records(&stream, std::mem::take(&mut entries)).await.expect("put");
                }
            }
            entries.push(PutRecordsEntry { partition_key: keys[0].clone(), explicit_hash_key: None, data: builder.take() });
            aggregates += entries.len();
            broker.put_records(&stream, entries).await.expect("put");
            total += records_per_shard as u64;
        }

        let delivered = Arc::new(AtomicU64::new(0));
        let first = Arc::new(std::sync::OnceLock::new());
        let mut config = SchedulerConfig::default().with_cpu_metrics(CpuMetrics::Disabled);
        config.polling.min_time_between_reads = Duration::ZERO;
        config.polling.idle_time_between_reads = Duration::from_millis(200);
        let factory = {
            let delivered = delivered.clone();
            let first = first.clone();
            move |_: &ShardId| Counter { delivered: delivered.clone(), first: first.clone() }
        };
        let handle = Scheduler::builder("bench", stream.clone(), Arc::new(broker.clone()))
            .worker_id("bench-worker")
            .initial_position(InitialPosition::TrimHorizon)
            .memory_stores()
            .config(config)
            .processor_factory(factory)
            .build()
            .expect("scheduler")
            .start();
        let started = Instant::now();
        while delivered.load(Ordering::Relaxed) < total {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(started.elapsed() < Duration::from_secs(300), "consumer stalled");
        }
        let end = Instant::now();
        let begin = first.get().copied().unwrap_or(started);
        let secs = end.duration_since(begin).as_secs_f64();
        handle.kill().await;
        println!(
            "{{\"records_per_s\": {:.0}, \"records\": {total}, \"record_bytes\": {RECORD_BYTES}, \"aggregates\": {aggregates}, \"aggregate_bytes\": {AGGREGATE_BYTES}, \"shards\": {SHARDS}, \"elapsed_s\": {secs:.3}}}",
            total as f64 / secs
        );
    });
}
