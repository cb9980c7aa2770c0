//! Records kpl writes to kinesis-mock (through `AwsKinesis`, the real AWS SDK path) are read
//! back by independent Python consumers built on boto3 and the reference `aws-kinesis-agg`
//! de-aggregator: the workspace's `tests/py/independent_consumer.py` for plain KPL aggregates,
//! and `tests/py/inflating_consumer.py` (zlib, then `aws-kinesis-agg`, as kpl's documentation
//! tells consumers to do) for compressed ones.
//!
//! Needs `KINESIS_MOCK_ENDPOINT` and `KINESIS_AGG_PYTHON` (set by `scripts/test.sh`); skipped
//! without them unless `KINESIS_TEST_REQUIRE_PEERS` is set.

#[path = "../../kinesis-core/tests/support/mod.rs"]
mod support;

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kinesis_core::{AwsKinesis, CreateStreamRequest, Kinesis, StreamRef};
use kpl::{Compression, Producer, ProducerConfig};

const RECORDS: u64 = 2000;
const KEYS: u64 = 40;

fn peers() -> Option<(String, String)> {
    let endpoint = support::peer("KINESIS_MOCK_ENDPOINT")?;
    let python = support::peer("KINESIS_AGG_PYTHON")?;
    Some((endpoint, python))
}

/// Writes [`RECORDS`] records with `"<key> <n> "` headers through kpl; returns the stream.
async fn produce(endpoint: &str, compression: Compression) -> String {
    let client = AwsKinesis::local(endpoint.to_owned()).await;
    let name = support::unique_name("kpl-interop");
    let stream = StreamRef::from(name.as_str());
    client.create_stream(CreateStreamRequest::provisioned(name.clone(), 2)).await.expect("create stream");
    client.wait_for_stream_active(&stream, Duration::from_secs(30)).await.expect("stream active");
    // The consumers check each key's order, which the default ordering keeps.
    let config = ProducerConfig::default().compression(compression).record_max_buffered_time(Duration::from_millis(50));
    let producer = Producer::builder(client, stream).config(config).build().await.expect("producer");
    let mut futures = Vec::new();
    for i in 0..RECORDS {
        let record = common::record(&format!("k{}", i % KEYS), i / KEYS, 80 + (i as usize * 13) % 400);
        futures.push(producer.send(record).await.expect("accepted"));
    }
    producer.flush().await;
    for future in futures {
        future.await.map_err(|(error, _)| error).expect("delivered");
    }
    let stats = producer.stats();
    assert!(stats.kinesis_records_put < RECORDS / 10, "records were aggregated: {stats:?}");
    producer.shutdown().await;
    name
}

fn consume(python: &str, script: &Path, endpoint: &str, stream: &str) -> serde_json::Value {
    let output = Command::new(python)
        .arg(script)
        .args(["--endpoint", endpoint, "--stream", stream, "--expect", &RECORDS.to_string(), "--timeout", "60"])
        .output()
        .expect("run the Python consumer");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).expect("a JSON summary");
    serde_json::from_str(line).expect("JSON")
}

fn check(summary: &serde_json::Value) {
    assert_eq!(summary["unique"].as_u64(), Some(RECORDS), "{summary}");
    assert_eq!(summary["records"].as_u64(), Some(RECORDS), "no duplicates: {summary}");
    assert_eq!(summary["bad_headers"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["order_violations"].as_u64(), Some(0), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kinesis_agg_reads_what_kpl_aggregated() {
    let Some((endpoint, python)) = peers() else { return };
    let stream = produce(&endpoint, Compression::None).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/py/independent_consumer.py");
    let summary = consume(&python, &script, &endpoint, &stream);
    check(&summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kinesis_agg_reads_what_kpl_compressed_once_inflated() {
    let Some((endpoint, python)) = peers() else { return };
    let stream = produce(&endpoint, Compression::Zlib { level: 6 }).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/inflating_consumer.py");
    let summary = consume(&python, &script, &endpoint, &stream);
    check(&summary);
    assert!(summary["compressed_records"].as_u64() > Some(0), "{summary}");
    assert_eq!(summary["plain_records"].as_u64(), Some(0), "every Kinesis record compressed: {summary}");
}
