//! `produce`: writes N records to a Kinesis stream with the `kpl` producer.
//!
//! ```text
//! cargo run --release --example produce -- --stream S [--endpoint URL] [--region R]
//!     [--create-shards N] [--records N] [--size BYTES] [--keys K] [--rate R] [--no-aggregation]
//!     [--unordered] [--compress]
//! ```
//!
//! Each key's records are stored in send order (the producer's default); `--unordered` gives
//! that up (`RecordOrder::Unordered`, the KPL's behaviour). `--compress` deflates the aggregates
//! (only `kcl`-based consumers such as `consume` undo that transparently).
//!
//! Partition keys are `k0`…`k{K-1}` round-robin; each record's data starts with the ASCII header
//! `"<key> <n> "` (n counts per key from 0), padded to BYTES. Progress goes to stderr; the last
//! stdout line is one JSON object: `sent`, `delivered`, `failed`, `kinesis_records`,
//! `put_requests`, `retries`, `throttles`, `expired`, `failed_may_be_stored`, `elapsed_s`,
//! `records_per_s`.
//!
//! Exit codes: 0 all delivered, 1 some failed, 2 bad flags, 3 endpoint unreachable, 4 no stream.
//! `--help` lists the flags with their defaults; `--version` prints the version.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use examples::{AwsArgs, exit, payload, startup_failure};
use kinesis_core::{CreateStreamRequest, Kinesis, KinesisError, StreamRef};
use kpl::{Compression, Producer, ProducerConfig, RecordOrder, UserRecord};

/// Writes records to a Kinesis stream with the `kpl` producer and reports what was delivered.
///
/// Partition keys are k0…k{K-1} round-robin; each record's data starts with "<key> <n> ",
/// padded to --size bytes. The last stdout line is a JSON summary. Exit codes: 0 all delivered,
/// 1 some failed, 2 bad flags, 3 endpoint unreachable, 4 no stream.
#[derive(Debug, Parser)]
#[command(name = "produce", version)]
struct Args {
    /// The stream to write to (a name or an ARN).
    #[arg(long, value_name = "NAME")]
    stream: String,
    #[command(flatten)]
    aws: AwsArgs,
    /// Create the stream with this many shards first (0: it must exist; an existing stream is kept).
    #[arg(long, value_name = "N", default_value_t = 0)]
    create_shards: u32,
    /// How many records to send.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    records: u64,
    /// Bytes per record (never shorter than its "<key> <n> " header).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,
    /// How many partition keys.
    #[arg(long, value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Records per second to send at (0: as fast as the producer takes them).
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    rate: f64,
    /// Send each record as a Kinesis record of its own (no KPL aggregation).
    #[arg(long)]
    no_aggregation: bool,
    /// Give up each key's send order (`RecordOrder::Unordered`, the Java KPL's behaviour).
    #[arg(long)]
    unordered: bool,
    /// Deflate the aggregates (only kcl-based consumers undo it).
    #[arg(long)]
    compress: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let Args { records, size, keys, rate, create_shards, .. } = args;
    let client = args.aws.kinesis_client().await;
    let stream = StreamRef::from(args.stream.as_str());

    if create_shards > 0 {
        match client.create_stream(CreateStreamRequest::provisioned(stream.name(), create_shards)).await {
            Ok(()) | Err(KinesisError::ResourceInUse { .. }) => {}
            Err(e) => return startup_failure("produce", "creating the stream", &e),
        }
    }
    // One describe first, so a missing stream or an unreachable endpoint fails at once.
    if let Err(e) = client.describe_stream_summary(&stream).await {
        return startup_failure("produce", &format!("stream {stream}"), &e);
    }
    if let Err(e) = client.wait_for_stream_active(&stream, Duration::from_secs(60)).await {
        return startup_failure("produce", &format!("stream {stream}"), &e);
    }

    let mut config = ProducerConfig::default().aggregation_enabled(!args.no_aggregation).ordering(if args.unordered {
        RecordOrder::Unordered
    } else {
        RecordOrder::PerKey
    });
    if args.compress {
        config = config.compression(Compression::Zlib { level: 6 });
    }
    let producer = match Producer::builder(client, stream.clone()).config(config).build().await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("produce: starting the producer: {e}");
            return ExitCode::from(exit::UNREACHABLE);
        }
    };

    let started = Instant::now();
    let mut counters = vec![0u64; keys as usize];
    let mut deliveries = Vec::with_capacity(records as usize);
    let mut last_report = Instant::now();
    for i in 0..records {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let k = (i % keys) as usize;
        let key = format!("k{k}");
        let n = counters[k];
        counters[k] += 1;
        match producer.send(UserRecord::new(key.clone(), payload(&key, n, size))).await {
            Ok(delivery) => deliveries.push(delivery),
            Err(e) => {
                eprintln!("produce: record {i} refused: {e}");
                break;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let s = producer.stats();
            eprintln!(
                "produce: sent {} delivered {} failed {} throttles {}",
                s.user_records_sent, s.user_records_delivered, s.user_records_failed, s.throttles
            );
            last_report = Instant::now();
        }
    }
    producer.flush().await;
    let (mut failed, mut may_be_stored) = (0u64, 0u64);
    for delivery in deliveries {
        if let Err((error, record)) = delivery.await {
            failed += 1;
            may_be_stored += u64::from(error.may_be_stored());
            if failed <= 5 {
                eprintln!("produce: record {:?} failed: {error}", record.partition_key());
            }
        }
    }
    producer.shutdown().await;
    let elapsed = started.elapsed().as_secs_f64();
    let s = producer.stats();
    let summary = serde_json::json!({
        "sent": s.user_records_sent,
        "delivered": s.user_records_delivered,
        "failed": failed,
        "kinesis_records": s.kinesis_records_put,
        "put_requests": s.put_requests,
        "retries": s.retries,
        "throttles": s.throttles,
        "expired": s.user_records_expired,
        "failed_may_be_stored": may_be_stored,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "records_per_s": (s.user_records_delivered as f64 / elapsed.max(1e-9)).round(),
    });
    println!("{summary}");
    if failed == 0 && s.user_records_sent == records { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) }
}
