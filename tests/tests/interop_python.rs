//! Interop with independent programs through kinesis-mock, both ways:
//!
//! * `consume` reads what boto3 + the reference `aws-kinesis-agg` aggregator wrote (half the
//!   batches KPL aggregates, half plain records);
//! * what `produce` wrote (aggregated, and plain) is read correctly by boto3 + the reference
//!   `aws-kinesis-agg` de-aggregator.
//!
//! Needs `KINESIS_MOCK_ENDPOINT` and `KINESIS_AGG_PYTHON` (set by `scripts/test.sh`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kinesis_core::{AwsKinesis, CreateStreamRequest, Kinesis, StreamRef};
use tests::{example_binary, last_json_line, peer, unique_name};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

async fn new_stream(endpoint: &str, prefix: &str, shards: u32) -> String {
    let name = unique_name(prefix);
    let kinesis = AwsKinesis::local(endpoint.to_owned()).await;
    kinesis.create_stream(CreateStreamRequest::provisioned(name.clone(), shards)).await.expect("create stream");
    kinesis.wait_for_stream_active(&StreamRef::from(name.as_str()), Duration::from_secs(30)).await.expect("active");
    name
}

#[tokio::test]
async fn consume_reads_what_the_reference_aggregator_wrote() {
    let (Some(endpoint), Some(python)) = (peer("KINESIS_MOCK_ENDPOINT"), peer("KINESIS_AGG_PYTHON")) else { return };
    let stream = new_stream(&endpoint, "py-to-consume", 3).await;
    const RECORDS: u64 = 3000;
    let written = Command::new(&python)
        .arg(script("independent_producer.py"))
        .args(["--endpoint", &endpoint, "--stream", &stream, "--records", &RECORDS.to_string(), "--keys", "50"])
        .output()
        .expect("run the independent producer");
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let written = last_json_line(&written.stdout).expect("producer summary");
    assert!(written["aggregated_records"].as_u64() > Some(0), "{written}");
    assert!(written["plain_records"].as_u64() > Some(0), "{written}");

    let consumed = Command::new(example_binary("consume"))
        .args(["--stream", &stream, "--app", &stream, "--endpoint", &endpoint])
        .args(["--expect", &RECORDS.to_string(), "--idle-exit", "60"])
        .output()
        .expect("run consume");
    let summary = last_json_line(&consumed.stdout);
    assert!(consumed.status.success(), "consume failed: {summary:?}\n{}", String::from_utf8_lossy(&consumed.stderr));
    let summary = summary.expect("consume summary");
    assert_eq!(summary["unique"].as_u64(), Some(RECORDS), "{summary}");
    assert_eq!(summary["bad_headers"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["order_violations"].as_u64(), Some(0), "{summary}");
}

async fn produce_then_read_with_python(aggregation: bool) {
    let (Some(endpoint), Some(python)) = (peer("KINESIS_MOCK_ENDPOINT"), peer("KINESIS_AGG_PYTHON")) else { return };
    let stream = new_stream(&endpoint, "produce-to-py", 2).await;
    const RECORDS: u64 = 3000;
    let mut produce = Command::new(example_binary("produce"));
    produce.args(["--stream", &stream, "--endpoint", &endpoint, "--records", &RECORDS.to_string(), "--keys", "40"]);
    if !aggregation {
        produce.arg("--no-aggregation");
    }
    let produced = produce.output().expect("run produce");
    let summary = last_json_line(&produced.stdout);
    assert!(produced.status.success(), "produce failed: {summary:?}\n{}", String::from_utf8_lossy(&produced.stderr));
    let summary = summary.expect("produce summary");
    assert_eq!(summary["delivered"].as_u64(), Some(RECORDS), "{summary}");
    let kinesis_records = summary["kinesis_records"].as_u64().expect("kinesis_records");
    if aggregation {
        assert!(kinesis_records < RECORDS / 10, "records were aggregated: {summary}");
    } else {
        assert_eq!(kinesis_records, RECORDS, "{summary}");
    }

    let read = Command::new(&python)
        .arg(script("independent_consumer.py"))
        .args(["--endpoint", &endpoint, "--stream", &stream, "--expect", &RECORDS.to_string(), "--timeout", "60"])
        .output()
        .expect("run the independent consumer");
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let read = last_json_line(&read.stdout).expect("consumer summary");
    assert_eq!(read["unique"].as_u64(), Some(RECORDS), "{read}");
    assert_eq!(read["bad_headers"].as_u64(), Some(0), "{read}");
    assert_eq!(read["order_violations"].as_u64(), Some(0), "{read}");
}

#[tokio::test]
async fn the_reference_deaggregator_reads_what_produce_aggregated() {
    produce_then_read_with_python(true).await;
}

#[tokio::test]
async fn the_reference_consumer_reads_what_produce_wrote_plain() {
    produce_then_read_with_python(false).await;
}
