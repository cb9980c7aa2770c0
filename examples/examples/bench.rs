//! `bench`: producer and consumer throughput on the in-memory broker with its limits off, and
//! the process's peak resident memory, as one JSON line.
//!
//! Everything runs on one core (a current-thread tokio runtime), like the crates' own
//! benchmarks. The producer phase sends `--records` records of `--size` bytes over `--keys`
//! partition keys into a `--shards`-shard stream with aggregation on (the KPL defaults) and
//! its rate limit opened up, awaiting every record's delivery; the consumer phase then reads
//! the same stream from TRIM_HORIZON with one `kcl` worker (polling without the 200 ms pause
//! between reads, in-memory lease stores) into a processor that only counts, timed from the
//! first delivered batch until every record was delivered. Peak memory is `VmHWM` from `/proc/self/status`: it includes the
//! broker's copy of every record, which dominates it.
//!
//! ```text
//! cargo run --release --example bench [-- --records 2000000 --size 100 --keys 1000 --shards 4]
//! ```

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use examples::{exit, peak_rss_bytes};
use kcl::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor};
use kcl::{CpuMetrics, InitialPosition, ProcessorError, Scheduler, SchedulerConfig};
use kinesis_core::broker::{BrokerConfig, MemoryBroker};
use kinesis_core::{CreateStreamRequest, Kinesis, ShardId, StreamRef};
use kpl::{DeliveryFuture, Producer, ProducerConfig, UserRecord};

/// Futures awaited in order once this many are outstanding, so the producer runs at full speed
/// while memory for pending outcomes stays bounded.
const OUTSTANDING: usize = 20_000;

/// Producer and consumer throughput on the in-memory broker with its limits off, on one core,
/// and the process's peak resident memory, as one JSON line on stdout.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Settings {
    /// How many records to produce and then consume.
    #[arg(long, value_name = "N", default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    records: u64,
    /// Bytes per record.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,
    /// How many partition keys.
    #[arg(long, value_name = "K", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// Shards in the stream.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    shards: u32,
}

fn main() -> ExitCode {
    let settings = Settings::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(run(&settings)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("bench: {message}");
            ExitCode::from(exit::FAILED)
        }
    }
}

async fn run(settings: &Settings) -> Result<String, String> {
    let broker = MemoryBroker::with_config(BrokerConfig::default().without_throttling());
    broker
        .create_stream(CreateStreamRequest::provisioned("bench", settings.shards))
        .await
        .map_err(|e| e.to_string())?;
    let stream = StreamRef::from("bench");

    let (produce_secs, kinesis_records) = produce(&broker, &stream, settings).await?;
    eprintln!("bench: produced {} records in {produce_secs:.2} s", settings.records);
    let consume_secs = consume(&broker, &stream, settings.records).await?;
    eprintln!("bench: consumed {} records in {consume_secs:.2} s", settings.records);

    let records = settings.records as f64;
    Ok(format!(
        "{{\"produce_records_per_s\": {:.0}, \"consume_records_per_s\": {:.0}, \"peak_rss_bytes\": {}, \"records\": {}, \"record_bytes\": {}, \"keys\": {}, \"shards\": {}, \"kinesis_records\": {kinesis_records}, \"user_records_per_kinesis_record\": {:.1}, \"produce_s\": {produce_secs:.3}, \"consume_s\": {consume_secs:.3}}}",
        records / produce_secs,
        records / consume_secs,
        peak_rss_bytes().map_or("null".to_owned(), |b| b.to_string()),
        settings.records,
        settings.size,
        settings.keys,
        settings.shards,
        records / kinesis_records.max(1) as f64,
    ))
}

/// Sends every record and awaits its delivery; returns the seconds taken and the Kinesis
/// records written.
async fn produce(broker: &MemoryBroker, stream: &StreamRef, settings: &Settings) -> Result<(f64, u64), String> {
    // The broker's limits are off, so the producer's per-shard rate limit is opened up too.
    let config = ProducerConfig::default().rate_limit(1_000_000);
    let producer =
        Producer::builder(broker.clone(), stream.clone()).config(config).build().await.map_err(|e| e.to_string())?;
    let keys: Vec<String> = (0..settings.keys).map(|k| format!("k{k}")).collect();
    let data = Bytes::from(vec![b'x'; settings.size]);
    let mut outstanding: VecDeque<DeliveryFuture> = VecDeque::with_capacity(OUTSTANDING + 1);
    let mut failed = 0u64;
    let started = Instant::now();
    for n in 0..settings.records {
        let key = &keys[(n % settings.keys as u64) as usize];
        let future = producer.send(UserRecord::new(key.clone(), data.clone())).await.map_err(|e| e.to_string())?;
        outstanding.push_back(future);
        if outstanding.len() > OUTSTANDING
            && let Some(oldest) = outstanding.pop_front()
        {
            failed += u64::from(oldest.await.is_err());
        }
    }
    producer.flush().await;
    for future in outstanding {
        failed += u64::from(future.await.is_err());
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = producer.stats();
    producer.shutdown().await;
    if failed > 0 {
        return Err(format!("{failed} records failed"));
    }
    Ok((secs, stats.kinesis_records_put))
}

/// Counts delivered user records and notes when the first batch arrived.
struct Counter {
    delivered: Arc<AtomicU64>,
    first_batch: Arc<OnceLock<Instant>>,
}

#[async_trait]
impl ShardRecordProcessor for Counter {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        self.first_batch.get_or_init(Instant::now);
        self.delivered.fetch_add(input.records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        Ok(input.checkpointer.checkpoint().await?)
    }
}

/// Reads the stream from the start with one worker until `total` records were delivered;
/// returns the seconds from the first delivered batch to the last (the worker's start-up —
/// lease discovery and taking — is reported on stderr).
async fn consume(broker: &MemoryBroker, stream: &StreamRef, total: u64) -> Result<f64, String> {
    let delivered = Arc::new(AtomicU64::new(0));
    let first_batch = Arc::new(OnceLock::new());
    let mut config = SchedulerConfig::default().with_cpu_metrics(CpuMetrics::Disabled);
    config.polling.min_time_between_reads = Duration::ZERO;
    let factory = {
        let (delivered, first_batch) = (delivered.clone(), first_batch.clone());
        move |_: &ShardId| Counter { delivered: delivered.clone(), first_batch: first_batch.clone() }
    };
    let handle = Scheduler::builder("bench", stream.clone(), Arc::new(broker.clone()))
        .worker_id("bench-worker")
        .initial_position(InitialPosition::TrimHorizon)
        .memory_stores()
        .config(config)
        .processor_factory(factory)
        .build()
        .map_err(|e| e.to_string())?
        .start();
    let started = Instant::now();
    let mut last_progress = (0, Instant::now());
    while delivered.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last_progress.0 {
            last_progress = (now, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(30) {
            handle.kill().await;
            return Err(format!("the consumer stalled at {now} of {total} records"));
        }
    }
    let finished = Instant::now();
    handle.kill().await;
    let first = first_batch.get().copied().unwrap_or(started);
    eprintln!("bench: the worker delivered its first batch {:.2} s after starting", (first - started).as_secs_f64());
    Ok((finished - first).as_secs_f64())
}
