//! Throughput of the in-memory broker with limits off, on one core (a current-thread runtime):
//! `PutRecords` of 500 × 100-byte records, and `GetRecords` of 10,000 records per call.
//!
//! Run: `cargo bench -p kinesis-core --bench broker`. Prints one JSON line.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_core::broker::{BrokerConfig, MemoryBroker};
use kinesis_core::sequence::StartingPosition;
use kinesis_core::{CreateStreamRequest, Kinesis, PutRecordsEntry, ShardId, StreamRef};

const BATCH: usize = 500;
const RECORD_BYTES: usize = 100;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
/// then a scaled-down smoke run checks the benchmark still works without spending minutes.
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn main() {
    let span = if smoke_run() { Duration::from_millis(100) } else { Duration::from_secs(3) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    runtime.block_on(async {
        let broker = MemoryBroker::with_config(BrokerConfig::default().without_throttling());
        broker.create_stream(CreateStreamRequest::provisioned("bench", 4)).await.expect("create");
        let stream = StreamRef::from("bench");
        let payload = Bytes::from(vec![b'x'; RECORD_BYTES]);
        let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();

        // Writes: fresh entries per request, as a producer would send them.
        let mut written = 0usize;
        let start = Instant::now();
        let mut batch_no = 0usize;
        while start.elapsed() < span {
            let entries: Vec<PutRecordsEntry> = (0..BATCH)
                .map(|i| PutRecordsEntry { partition_key: keys[(batch_no * BATCH + i) % keys.len()].clone(), explicit_hash_key: None, data: payload.clone() })
                .collect();
            let out = broker.put_records(&stream, entries).await.expect("PutRecords");
            assert_eq!(out.failed_record_count(), 0);
            written += BATCH;
            batch_no += 1;
        }
        let put_secs = start.elapsed().as_secs_f64();

        // Reads: every shard from the start, 10,000 records per call.
        let mut read = 0usize;
        let start = Instant::now();
        for shard in 0..4 {
            let mut iterator = broker.get_shard_iterator(&stream, &ShardId::from_index(shard), StartingPosition::TrimHorizon).await.expect("iterator");
            loop {
                let out = broker.get_records(&iterator, Some(10_000)).await.expect("GetRecords");
                if out.records.is_empty() {
                    break;
                }
                read += out.records.len();
                iterator = out.next_shard_iterator.expect("open shard");
            }
        }
        let get_secs = start.elapsed().as_secs_f64();
        assert_eq!(read, written);
        println!(
            "{{\"put_records_per_s\": {:.0}, \"get_records_per_s\": {:.0}, \"records\": {written}, \"record_bytes\": {RECORD_BYTES}, \"batch\": {BATCH}}}",
            written as f64 / put_secs,
            read as f64 / get_secs
        );
    });
}
