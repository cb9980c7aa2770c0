//! End to end across processes and real peers: `produce` → kinesis-mock → three `consume`
//! processes with their leases on the DynamoDB peer. Midway a shard splits and one consumer is
//! killed with SIGKILL. Afterwards every record is accounted for from the consumers' `--out`
//! files, order per key holds within each shard and across the lineage, and the failover time
//! is reported.
//!
//! Needs `KINESIS_MOCK_ENDPOINT` and `DYNAMODB_ENDPOINT` (set by `scripts/test.sh`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kinesis_core::{AwsKinesis, CreateStreamRequest, Kinesis, StreamRef};
use tests::{SeenRecord, account, all_shards, example_binary, expected_round_robin, failover_ms, last_json_line};
use tests::{now_ms, peer, unique_name};

const RECORDS: u64 = 12_000;
const KEYS: u64 = 200;
const RATE: u64 = 600;

struct Consumer {
    worker: String,
    out: PathBuf,
    log: PathBuf,
    child: Child,
}

fn start_consumer(
    bin: &PathBuf,
    dir: &std::path::Path,
    stream: &str,
    app: &str,
    kinesis: &str,
    ddb: &str,
    i: usize,
) -> Consumer {
    let worker = format!("worker-{i}");
    let out = dir.join(format!("{worker}.jsonl"));
    let log = dir.join(format!("{worker}.log"));
    let child = Command::new(bin)
        .args(["--stream", stream, "--app", app, "--endpoint", kinesis, "--ddb-endpoint", ddb, "--worker-id", &worker])
        .args(["--idle-exit", "300", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start consume");
    Consumer { worker, out, log, child }
}

fn dump_logs(consumers: &[Consumer], producer_log: &std::path::Path) {
    for path in consumers.iter().map(|c| c.log.as_path()).chain(std::iter::once(producer_log)) {
        tests::print_log_tail(path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_to_three_consume_processes_with_a_split_and_a_sigkill() {
    let (Some(kinesis_endpoint), Some(ddb_endpoint)) = (peer("KINESIS_MOCK_ENDPOINT"), peer("DYNAMODB_ENDPOINT"))
    else {
        return;
    };
    let (produce_bin, consume_bin) = (example_binary("produce"), example_binary("consume"));
    let name = unique_name("e2e-procs");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kinesis = AwsKinesis::local(kinesis_endpoint.clone()).await;
    let stream = StreamRef::from(name.as_str());
    kinesis.create_stream(CreateStreamRequest::provisioned(name.clone(), 4)).await.expect("create stream");
    kinesis.wait_for_stream_active(&stream, Duration::from_secs(30)).await.expect("stream active");

    let mut consumers: Vec<Consumer> =
        (0..3).map(|i| start_consumer(&consume_bin, &dir, &name, &name, &kinesis_endpoint, &ddb_endpoint, i)).collect();
    let producer_log = dir.join("produce.log");
    let producer = Command::new(&produce_bin)
        .args(["--stream", &name, "--endpoint", &kinesis_endpoint])
        .args(["--records", &RECORDS.to_string(), "--keys", &KEYS.to_string(), "--rate", &RATE.to_string()])
        .args(["--size", "120"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&producer_log).expect("log file"))
        .spawn()
        .expect("start produce");
    let outs: Vec<PathBuf> = consumers.iter().map(|c| c.out.clone()).collect();

    // A third of the way in: split the first shard at its midpoint.
    let started = Instant::now();
    while SeenRecord::unique_in(&outs) < (RECORDS / 3) as usize && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shards = all_shards(&kinesis, &stream).await;
    kinesis.split_shard(&stream, &shards[0].shard_id, shards[0].hash_key_range.midpoint()).await.expect("split");

    // Half way: SIGKILL the consumer that has processed the most records lately.
    while SeenRecord::unique_in(&outs) < (RECORDS / 2) as usize && started.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = SeenRecord::read_out_files(&outs);
    let recent_ms = now_ms().saturating_sub(3000);
    let victim = (0..consumers.len())
        .max_by_key(|&i| seen.iter().filter(|r| r.worker == consumers[i].worker && r.ts_ms >= recent_ms).count())
        .expect("consumers");
    let killed_at_ms = now_ms();
    consumers[victim].child.kill().expect("SIGKILL");
    let _ = consumers[victim].child.wait();
    let victim_worker = consumers[victim].worker.clone();

    // The producer finishes; then wait until everything was seen (failover included).
    let produced =
        tokio::task::spawn_blocking(move || producer.wait_with_output()).await.expect("join").expect("produce");
    let summary = last_json_line(&produced.stdout);
    if !produced.status.success() {
        dump_logs(&consumers, &producer_log);
    }
    assert!(produced.status.success(), "produce failed: {summary:?}");
    let summary = summary.expect("produce summary");
    assert_eq!(summary["delivered"].as_u64(), Some(RECORDS), "{summary}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while SeenRecord::unique_in(&outs) < RECORDS as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Stop the survivors gracefully (SIGTERM: checkpoint, release leases) and read their summaries.
    let mut summaries = Vec::new();
    for (i, consumer) in consumers.into_iter().enumerate() {
        if i == victim {
            continue;
        }
        let _ = Command::new("kill").args(["-TERM", &consumer.child.id().to_string()]).status();
        let output = tokio::task::spawn_blocking(move || consumer.child.wait_with_output()).await.expect("join");
        summaries.push(last_json_line(&output.expect("consume").stdout));
    }

    let shards = all_shards(&kinesis, &stream).await;
    let seen = SeenRecord::read_out_files(&outs);
    let accounting = account(&seen, &expected_round_robin(RECORDS, KEYS), &shards);
    let failover = failover_ms(&seen, &victim_worker, killed_at_ms);
    println!(
        "e2e processes: failover after SIGKILL of {victim_worker}: {} ms; producer {summary}; consumers {summaries:?}; {accounting:?}",
        failover.map_or("n/a".to_owned(), |ms| ms.to_string())
    );
    assert_eq!(shards.len(), 6, "the split made two children");
    assert!(accounting.is_complete_and_ordered(), "{accounting:?}");
    assert_eq!(accounting.unique, RECORDS);
    for summary in summaries.iter().flatten() {
        assert_eq!(summary["bad_headers"].as_u64(), Some(0), "{summary}");
    }
    let _ = kinesis.delete_stream(&stream, true).await;
    let _ = std::fs::remove_dir_all(&dir);
}
