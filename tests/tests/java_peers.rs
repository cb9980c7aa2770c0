//! The real Java libraries as peers, across processes on kinesis-mock and the DynamoDB peer: an
//! application moves from the Java KCL 3.x to `kcl` and back again keeping its checkpoints, and
//! each consumer reads the other side's producer (`kpl` → Java KCL, the Java KPL → `kcl`),
//! aggregated, with a split midway or without one.
//!
//! The Java side is `tests/java` (one program, `kinesispeer.Main`, with the same command-line
//! contracts as `consume` and `produce`), built by `scripts/peers.sh`. Every record is accounted
//! for from the consumers' `--out` files as in `fleet_processes`, and the checkpoints the first
//! consumer left in the lease table are read back: the second consumer must start exactly after
//! them, sub-sequence numbers inside aggregates included.
//!
//! Needs `KINESIS_MOCK_ENDPOINT`, `KINESIS_MOCK_TLS_ENDPOINT`, `DYNAMODB_ENDPOINT` and
//! `JAVA_PEER_CLASSPATH` (set by `scripts/test.sh`). The tests run one at a time: each starts a
//! Java virtual machine or two beside the DynamoDB peer, on two cores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kcl::store::LeaseStore;
use kinesis_core::{AwsKinesis, CreateStreamRequest, ExtendedSequenceNumber, Kinesis, StreamRef};
use tests::{Accounting, SeenRecord, account, all_shards, example_binary, expected_round_robin, last_json_line};
use tests::{peer, unique_name};

const RECORDS: u64 = 6_000;
const KEYS: u64 = 100;
const RATE: u64 = 300;
/// The Java KCL's default failover time; `consume` uses the same lease duration.
const LEASE_DURATION_MS: u64 = 10_000;

/// One test at a time: two JVMs and the DynamoDB peer share two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone)]
struct Peers {
    kinesis: String,
    kinesis_tls: String,
    dynamodb: String,
    java_classpath: String,
}

fn peers() -> Option<Peers> {
    Some(Peers {
        kinesis: peer("KINESIS_MOCK_ENDPOINT")?,
        kinesis_tls: peer("KINESIS_MOCK_TLS_ENDPOINT")?,
        dynamodb: peer("DYNAMODB_ENDPOINT")?,
        java_classpath: peer("JAVA_PEER_CLASSPATH")?,
    })
}

/// Which library a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Java,
    Ours,
}

/// A running consumer: a Java KCL worker or a `consume` process.
struct Consumer {
    worker: String,
    out: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Consumer {
    fn start(side: Side, peers: &Peers, dir: &Path, stream: &str, app: &str, worker: &str) -> Consumer {
        Consumer::start_with(side, peers, dir, stream, app, worker, &[])
    }

    /// As [`start`](Self::start), with more flags for the program.
    fn start_with(
        side: Side,
        peers: &Peers,
        dir: &Path,
        stream: &str,
        app: &str,
        worker: &str,
        extra: &[&str],
    ) -> Consumer {
        let out = dir.join(format!("{worker}.jsonl"));
        let log = dir.join(format!("{worker}.log"));
        let mut command = match side {
            Side::Java => {
                let mut c = Command::new("java");
                c.args(["-cp", &peers.java_classpath, "kinesispeer.Main", "consume"]);
                c.args(["--lease-duration-ms", &LEASE_DURATION_MS.to_string()]);
                c
            }
            Side::Ours => {
                let mut c = Command::new(example_binary("consume"));
                // Beside Java KCL workers, leases must be renewed one by one (the Java KCL takes
                // a lease nobody renews for expired).
                c.args(["--idle-exit", "600", "--lease-mode", "per-lease"]);
                c
            }
        };
        command
            .args(["--stream", stream, "--app", app, "--endpoint", &peers.kinesis, "--ddb-endpoint", &peers.dynamodb])
            .args(["--worker-id", worker])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = command.spawn().expect("start a consumer");
        Consumer { worker: worker.to_owned(), out, log, child }
    }

    /// SIGTERM (a graceful shutdown on both sides) and the summary line it prints.
    async fn stop(mut self) -> Option<serde_json::Value> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let log = self.log.clone();
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return self.child.wait_with_output().ok();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            None
        })
        .await
        .expect("join");
        let summary = waited.as_ref().and_then(|output| last_json_line(&output.stdout));
        if summary.is_none() {
            tests::print_log_tail(&log);
        }
        summary
    }
}

/// The application's DynamoDB stores, once all three of its tables (and the owner index) exist.
/// The test never
/// creates them (`DynamoDbStores::build` would): the consumer under test does, the Java KCL
/// included, so what the other side reads is what that side wrote.
async fn stores(peers: &Peers, app: &str) -> Option<kcl_ddb_store::DynamoDbStores> {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(&peers.dynamodb)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test"))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let leases = client.describe_table().table_name(app).send().await.ok()?.table?;
    let has_index =
        leases.global_secondary_indexes().iter().any(|i| i.index_name() == Some("LeaseOwnerToLeaseKeyIndex"));
    if !has_index {
        return None;
    }
    for table in [format!("{app}-CoordinatorState"), format!("{app}-WorkerMetricStats")] {
        client.describe_table().table_name(table).send().await.ok()?;
    }
    kcl_ddb_store::DynamoDbStores::builder().client(client).application_name(app.to_owned()).build().await.ok()
}

/// Who holds the application's leader lock now.
async fn leader_of(peers: &Peers, app: &str) -> Option<String> {
    let coordinator = stores(peers, app).await?.coordinator_store();
    kcl::CoordinatorStore::get_lock(&coordinator, "Leader").await.ok().flatten().map(|l| l.owner)
}

/// A fresh 4-shard stream on kinesis-mock and a temporary folder, both named `prefix-…`.
async fn new_stream(peers: &Peers, prefix: &str) -> (String, PathBuf, AwsKinesis, StreamRef) {
    let name = unique_name(prefix);
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kinesis = AwsKinesis::local(peers.kinesis.clone()).await;
    let stream = StreamRef::from(name.as_str());
    kinesis.create_stream(CreateStreamRequest::provisioned(name.clone(), 4)).await.expect("create stream");
    kinesis.wait_for_stream_active(&stream, Duration::from_secs(30)).await.expect("stream active");
    (name, dir, kinesis, stream)
}

/// Starts a producer of `records` records over `KEYS` keys at `rate` records/s.
fn start_producer(side: Side, peers: &Peers, dir: &Path, stream: &str, records: u64, rate: u64) -> (Child, PathBuf) {
    let log = dir.join(format!("produce-{side:?}.log"));
    let mut command = match side {
        Side::Java => {
            let mut c = Command::new("java");
            c.args(["-cp", &peers.java_classpath, "kinesispeer.Main", "produce", "--endpoint", &peers.kinesis_tls]);
            c.arg("--temp-dir").arg(dir);
            c
        }
        Side::Ours => {
            let mut c = Command::new(example_binary("produce"));
            c.args(["--endpoint", &peers.kinesis]);
            c
        }
    };
    command
        .args(["--stream", stream, "--records", &records.to_string(), "--keys", &KEYS.to_string()])
        .args(["--rate", &rate.to_string(), "--size", "120"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"));
    (command.spawn().expect("start a producer"), log)
}

/// What the first consumer left in the lease table, per shard.
async fn checkpoints(peers: &Peers, app: &str) -> HashMap<String, ExtendedSequenceNumber> {
    checkpoint_leases(peers, app).await.into_iter().map(|lease| (lease.lease_key, lease.checkpoint)).collect()
}

/// Waits until `wanted` leases are owned by `worker` (the Java KCL needs a minute or two
/// to create its tables, elect a leader, report its metrics and be assigned leases).
async fn wait_for_leases(peers: &Peers, app: &str, worker: &str, wanted: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(stores) = stores(peers, app).await
            && let Ok(leases) = stores.lease_store().list_leases().await
            && leases.iter().filter(|l| l.lease_owner.as_deref() == Some(worker)).count() >= wanted
        {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

/// The run: `first` consumes part of a 4-shard stream written by `producer` (split midway when
/// `split`), stops gracefully, and `second` continues on the same application.
async fn migrate(first: Side, second: Side, producer: Side, split: bool) {
    let Some(peers) = peers() else { return };
    let _serial = ONE_AT_A_TIME.lock().await;
    let (name, dir, kinesis, stream) = new_stream(&peers, &format!("java-{first:?}-{second:?}").to_lowercase()).await;

    // The first consumer holds every lease before a record is written, so that the handover
    // falls in the middle of the data, not after it.
    let consumer = Consumer::start(first, &peers, &dir, &name, &name, &format!("{first:?}-1").to_lowercase());
    let ready = wait_for_leases(&peers, &name, &consumer.worker, 4, Duration::from_secs(240)).await;
    if !ready {
        tests::print_log_tail(&consumer.log);
    }
    assert!(ready, "the first consumer ({first:?}) was not given the 4 leases within 4 minutes");
    let (producer_child, producer_log) = start_producer(producer, &peers, &dir, &name, RECORDS, RATE);
    let started = Instant::now();
    let outs = vec![consumer.out.clone()];
    if split {
        // Midway through the producer's run: split a shard at its midpoint.
        tokio::time::sleep(Duration::from_millis(RECORDS * 1000 / RATE / 2)).await;
        let shards = all_shards(&kinesis, &stream).await;
        kinesis.split_shard(&stream, &shards[0].shard_id, shards[0].hash_key_range.midpoint()).await.expect("split");
    }
    // Past 60 % of the records: the first consumer stops gracefully.
    while SeenRecord::unique_in(&outs) < (RECORDS * 6 / 10) as usize && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_worker = consumer.worker.clone();
    let first_out = consumer.out.clone();
    let first_summary = consumer.stop().await;
    assert!(first_summary.is_some(), "the first consumer ({first:?}) did not stop gracefully");
    let handed_over = checkpoints(&peers, &name).await;

    let consumer = Consumer::start(second, &peers, &dir, &name, &name, &format!("{second:?}-2").to_lowercase());
    let outs = vec![first_out.clone(), consumer.out.clone()];
    let produced =
        tokio::task::spawn_blocking(move || producer_child.wait_with_output()).await.expect("join").expect("produce");
    let producer_summary = last_json_line(&produced.stdout);
    if !produced.status.success() {
        tests::print_log_tail(&producer_log);
    }
    assert!(produced.status.success(), "the {producer:?} producer failed: {producer_summary:?}");
    let deadline = Instant::now() + Duration::from_secs(300);
    while SeenRecord::unique_in(&outs) < RECORDS as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let second_worker = consumer.worker.clone();
    let second_log = consumer.log.clone();
    let second_summary = consumer.stop().await;

    let shards = all_shards(&kinesis, &stream).await;
    let seen = SeenRecord::read_out_files(&outs);
    let accounting = account(&seen, &expected_round_robin(RECORDS, KEYS), &shards);
    let by_first = seen.iter().filter(|r| r.worker == first_worker).count();
    let by_second = seen.iter().filter(|r| r.worker == second_worker).count();
    let aggregated = seen.iter().filter(|r| r.sub > 0).count();
    // The second consumer starts exactly after the first one's checkpoints.
    let mut before_checkpoint = 0;
    for record in seen.iter().filter(|r| r.worker == second_worker) {
        match handed_over.get(&record.shard) {
            Some(ExtendedSequenceNumber::Sequence { sequence_number, sub_sequence_number })
                if record.position() <= tests::stored_position(sequence_number.as_str(), *sub_sequence_number) =>
            {
                before_checkpoint += 1;
            }
            Some(ExtendedSequenceNumber::ShardEnd) => before_checkpoint += 1,
            _ => {}
        }
    }
    println!(
        "java peers {first:?} → {second:?}, {producer:?} producer, split {split}: first processed {by_first}, \
         second {by_second}, {aggregated} sub-records at sub-sequence > 0, {before_checkpoint} at or before the \
         handed-over checkpoints; producer {producer_summary:?}; consumers {first_summary:?} {second_summary:?}; \
         {accounting:?}"
    );
    if accounting.missing_count > 0 {
        tests::print_log_tail(&second_log);
    }
    assert_eq!(accounting.missing_count, 0, "records lost: {accounting:?}");
    assert_eq!(accounting.unexpected, 0, "{accounting:?}");
    assert!(by_first > 0 && by_second > 0, "the handover was not midway: {by_first} then {by_second}");
    assert!(aggregated > 0, "the records were not aggregated");
    assert_eq!(before_checkpoint, 0, "the second consumer processed records at or before the checkpoints");
    // A stored record processed twice (the KPL's retries may store a record twice; that is no
    // consumer's doing).
    let reprocessed = SeenRecord::reprocessed(&seen);
    assert_eq!(reprocessed, 0, "stored records processed twice across a graceful handover: {accounting:?}");
    if producer == Side::Ours {
        // `kpl` keeps each key's order (its default); the KPL does not promise it, so with its
        // records only the consumers' part of the lineage order is checked. Either producer may
        // store a record twice when a request that succeeded timed out (a busy kinesis-mock):
        // that is a new sequence number, not the consumers' doing, and not counted above.
        assert_eq!(accounting.order_violations, 0, "{accounting:?}");
        assert_eq!(accounting.lineage_violations, 0, "{accounting:?}");
    }
    let children_too_early = children_processed_before_parents_ended(&seen, &shards);
    assert!(
        children_too_early.is_empty(),
        "children processed before their parent's last record: {children_too_early:?}"
    );
    assert_eq!(shards.len(), if split { 6 } else { 4 });
    check_summaries(&accounting, [first_summary, second_summary]);
    let _ = kinesis.delete_stream(&stream, true).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Child shards whose first record was processed before their parent's last one: whoever
/// processed them, a child starts only after its parents ended.
fn children_processed_before_parents_ended(seen: &[SeenRecord], shards: &[kinesis_core::Shard]) -> Vec<String> {
    let first_ts = |shard: &str| seen.iter().filter(|r| r.shard == shard).map(|r| r.ts_ms).min();
    let last_ts = |shard: &str| seen.iter().filter(|r| r.shard == shard).map(|r| r.ts_ms).max();
    shards
        .iter()
        .filter(|child| {
            let parents = [child.parent_shard_id.as_ref(), child.adjacent_parent_shard_id.as_ref()];
            let Some(child_first) = first_ts(child.shard_id.as_str()) else { return false };
            parents
                .into_iter()
                .flatten()
                .any(|p| last_ts(p.as_str()).is_some_and(|parent_last| parent_last > child_first))
        })
        .map(|child| child.shard_id.as_str().to_owned())
        .collect()
}

fn check_summaries(accounting: &Accounting, summaries: [Option<serde_json::Value>; 2]) {
    for summary in summaries.iter().flatten() {
        assert_eq!(summary["bad_headers"].as_u64(), Some(0), "{summary}; {accounting:?}");
    }
}

/// Java KCL → `kcl`, records from `kpl` (aggregated, each key's order kept), a split midway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_moves_from_the_java_kcl_to_kcl_keeping_its_checkpoints() {
    migrate(Side::Java, Side::Ours, Side::Ours, true).await;
}

/// `kcl` → Java KCL, records from the Java KPL (aggregated), a split midway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_moves_from_kcl_to_the_java_kcl_keeping_its_checkpoints() {
    migrate(Side::Ours, Side::Java, Side::Java, true).await;
}

/// The Java KPL's aggregates read by the Java KCL, then by `kcl`, without a split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_kpls_records_are_read_by_both_consumers_without_a_split() {
    migrate(Side::Java, Side::Ours, Side::Java, false).await;
}

/// `kpl`'s aggregates read by `kcl`, then by the Java KCL, without a split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpls_records_are_read_by_both_consumers_without_a_split() {
    migrate(Side::Ours, Side::Java, Side::Ours, false).await;
}

/// What a poller saw of the lease table and the leader lock, once a second.
#[derive(Debug, Default)]
struct Timeline {
    /// (ms since the Unix epoch, lease key, new owner) for every owner change seen.
    owner_changes: Vec<(u64, String, Option<String>)>,
    /// (ms, leader) for every change of the lock's holder seen (`None`: absent or released).
    leader_changes: Vec<(u64, Option<String>)>,
    samples: Vec<Sample>,
}

/// One look at the application: when (ms since the Unix epoch), the leader, and every lease's
/// owner switches since its checkpoint.
#[derive(Debug)]
struct Sample {
    at_ms: u64,
    leader: Option<String>,
    /// Every lease's `ownerSwitchesSinceCheckpoint`.
    switches: Vec<u64>,
}

/// Polls the application's lease table and leader lock until `stop` is cancelled.
async fn watch(peers: &Peers, app: &str, stop: Arc<AtomicBool>) -> Timeline {
    let stores = loop {
        match stores(peers, app).await {
            Some(stores) => break stores,
            None if stop.load(Ordering::SeqCst) => return Timeline::default(),
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    let (leases, coordinator) = (stores.lease_store(), stores.coordinator_store());
    let mut timeline = Timeline::default();
    let mut owners: HashMap<String, Option<String>> = HashMap::new();
    let mut leader: Option<Option<String>> = None;
    while !stop.load(Ordering::SeqCst) {
        let now = tests::now_ms();
        if let (Ok(all), Ok(lock)) =
            (leases.list_leases().await, kcl::CoordinatorStore::get_lock(&coordinator, "Leader").await)
        {
            let holder = lock.filter(|l| !l.is_released).map(|l| l.owner);
            if leader.as_ref() != Some(&holder) {
                timeline.leader_changes.push((now, holder.clone()));
                leader = Some(holder.clone());
            }
            for lease in &all {
                if owners.get(&lease.lease_key) != Some(&lease.lease_owner) {
                    timeline.owner_changes.push((now, lease.lease_key.clone(), lease.lease_owner.clone()));
                    owners.insert(lease.lease_key.clone(), lease.lease_owner.clone());
                }
            }
            timeline.samples.push(Sample {
                at_ms: now,
                leader: holder,
                switches: all.iter().map(|l| l.owner_switches_since_checkpoint).collect(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    timeline
}

/// Two Java KCL workers are replaced one at a time by `consume` processes while records flow,
/// until only ours remain: nothing lost, re-processing only right after a lease changed hands,
/// no lease passed back and forth, and whoever leads, the other side's workers hold leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_migration_from_the_java_kcl_to_kcl_in_a_mixed_fleet() {
    const MIXED_RECORDS: u64 = 24_000;
    const MIXED_RATE: u64 = 100;
    let Some(peers) = peers() else { return };
    let _serial = ONE_AT_A_TIME.lock().await;
    let (name, dir, kinesis, stream) = new_stream(&peers, "java-rolling").await;

    let java1 = Consumer::start(Side::Java, &peers, &dir, &name, &name, "java-1");
    let java2 = Consumer::start(Side::Java, &peers, &dir, &name, &name, "java-2");
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peers, app, stop) = (peers.clone(), name.clone(), stop_watch.clone());
        tokio::spawn(async move { watch(&peers, &app, stop).await })
    };
    let java_ready = wait_for_leases(&peers, &name, "java-1", 1, Duration::from_secs(240)).await
        || wait_for_leases(&peers, &name, "java-2", 1, Duration::from_secs(1)).await;
    assert!(java_ready, "the Java workers were given no lease within 4 minutes");

    let (producer, _) = start_producer(Side::Ours, &peers, &dir, &name, MIXED_RECORDS, MIXED_RATE);
    let mut outs = vec![java1.out.clone(), java2.out.clone()];
    let mut stops: Vec<(String, u64)> = Vec::new();

    // Step 1: ours-1 joins a fleet led by a Java worker, gets leases from it; then the Java
    // leader stops (its lock is released or expires: whoever takes it next leads a mixed fleet).
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Off EC2, ECS and EKS the Java KCL reports no CPU; workers sharing its fleet must not
    // either, or its leader balances on a metric only some workers have (and stops moving leases).
    let ours1 = Consumer::start_with(Side::Ours, &peers, &dir, &name, &name, "ours-1", &["--no-cpu-metrics"]);
    outs.push(ours1.out.clone());
    let ours1_got_leases = wait_for_leases(&peers, &name, "ours-1", 1, Duration::from_secs(150)).await;
    let leader_now = leader_of(&peers, &name).await;
    let (first_java, second_java) =
        if leader_now.as_deref() == Some("java-2") { (java2, java1) } else { (java1, java2) };
    stops.push((first_java.worker.clone(), tests::now_ms()));
    let first_java_summary = first_java.stop().await;

    // Step 2: ours-2 joins; once it holds a lease, the last Java worker stops.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let ours2 = Consumer::start_with(Side::Ours, &peers, &dir, &name, &name, "ours-2", &["--no-cpu-metrics"]);
    outs.push(ours2.out.clone());
    let ours2_got_leases = wait_for_leases(&peers, &name, "ours-2", 1, Duration::from_secs(150)).await;
    stops.push((second_java.worker.clone(), tests::now_ms()));
    let second_java_summary = second_java.stop().await;

    let produced =
        tokio::task::spawn_blocking(move || producer.wait_with_output()).await.expect("join").expect("produce");
    assert!(produced.status.success(), "produce failed: {:?}", last_json_line(&produced.stdout));
    let deadline = Instant::now() + Duration::from_secs(300);
    while SeenRecord::unique_in(&outs) < MIXED_RECORDS as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ours_summaries = [ours1.stop().await, ours2.stop().await];
    stop_watch.store(true, Ordering::SeqCst);
    let timeline = watcher.await.expect("watcher");
    let final_leases = checkpoint_leases(&peers, &name).await;

    let shards = all_shards(&kinesis, &stream).await;
    let seen = SeenRecord::read_out_files(&outs);
    let accounting = account(&seen, &expected_round_robin(MIXED_RECORDS, KEYS), &shards);
    // Re-processing of a stored record is allowed only within a failover window after the
    // shard's lease changed hands: two lease durations plus a Java assignment interval.
    let window_ms = 2 * LEASE_DURATION_MS + 2 * LEASE_DURATION_MS;
    let mut delivered_once: std::collections::HashSet<(&str, &str, u64)> = std::collections::HashSet::new();
    let mut reprocessed = 0;
    let mut outside_window = Vec::new();
    let mut sorted: Vec<&SeenRecord> = seen.iter().collect();
    sorted.sort_by_key(|r| r.ts_ms);
    for record in sorted {
        let key = (record.shard.as_str(), record.seq.as_str(), record.sub);
        if !delivered_once.insert(key) {
            reprocessed += 1;
            let near_a_move = timeline.owner_changes.iter().any(|(t, lease, _)| {
                *lease == record.shard && *t <= record.ts_ms + 2_000 && record.ts_ms <= t + window_ms
            });
            if !near_a_move && outside_window.len() < 10 {
                outside_window.push((record.shard.clone(), record.seq.clone(), record.sub, record.ts_ms));
            }
        }
    }
    let mut moves_per_lease: HashMap<&str, usize> = HashMap::new();
    for (_, lease, _) in &timeline.owner_changes {
        *moves_per_lease.entry(lease.as_str()).or_default() += 1;
    }
    // Back and forth: owners switched again and again with no checkpoint in between.
    let most_switches = timeline.samples.iter().flat_map(|s| s.switches.iter().copied()).max().unwrap_or(0);
    // Whoever leads, the other side's workers get leases: ours from a Java leader, and a Java
    // worker from ours whenever one was running while ours led.
    let leader_at =
        |t: u64| timeline.leader_changes.iter().take_while(|(at, _)| *at <= t).last().and_then(|(_, l)| l.clone());
    let ours_from_java = timeline.owner_changes.iter().any(|(t, _, owner)| {
        owner.as_deref().is_some_and(|o| o.starts_with("ours")) && leader_at(*t).is_some_and(|l| l.starts_with("java"))
    });
    let java_from_ours = timeline.owner_changes.iter().any(|(t, _, owner)| {
        owner.as_deref().is_some_and(|o| o.starts_with("java")) && leader_at(*t).is_some_and(|l| l.starts_with("ours"))
    });
    let last_java_stop = stops.last().map_or(0, |s| s.1);
    let ours_led_with_java_running = timeline
        .samples
        .iter()
        .any(|s| s.leader.as_deref().is_some_and(|l| l.starts_with("ours")) && s.at_ms + 15_000 < last_java_stop);
    let t0 = timeline.samples.first().map_or(0, |s| s.at_ms);
    let moves: Vec<(f64, &str, Option<&str>)> = timeline
        .owner_changes
        .iter()
        .map(|(t, lease, owner)| ((t.saturating_sub(t0)) as f64 / 1000.0, lease.as_str(), owner.as_deref()))
        .collect();
    println!("rolling migration: owner changes (s since the first sample, lease, owner): {moves:?}");
    println!(
        "rolling migration: leaders {:?}; owner changes per lease {moves_per_lease:?}; stops {stops:?}; \
         ours-1 got leases: {ours1_got_leases}, ours-2: {ours2_got_leases}; a lease for ours from a Java \
         leader: {ours_from_java}; for a Java worker from ours: {java_from_ours} (ours led with a Java worker \
         running: {ours_led_with_java_running}); re-processed {reprocessed} (outside a failover window: \
         {outside_window:?}); most owner switches since a checkpoint {most_switches}, at the end {:?}; \
         java {first_java_summary:?} {second_java_summary:?}; \
         ours {ours_summaries:?}; {accounting:?}",
        timeline.leader_changes,
        final_leases.iter().map(|l| (l.lease_key.as_str(), l.owner_switches_since_checkpoint)).collect::<Vec<_>>(),
    );
    assert_eq!(accounting.missing_count, 0, "records lost: {accounting:?}");
    assert_eq!(accounting.unexpected, 0, "{accounting:?}");
    assert_eq!(accounting.order_violations, 0, "{accounting:?}");
    assert!(ours1_got_leases && ours2_got_leases, "a worker of ours was given no lease within 150 s");
    assert!(ours_from_java, "a Java leader never gave one of our workers a lease");
    if ours_led_with_java_running {
        assert!(java_from_ours, "our leader never gave the running Java worker a lease");
    }
    assert!(outside_window.is_empty(), "re-processing outside a failover window: {outside_window:?}");
    assert!(most_switches <= 2, "a lease changed owners {most_switches} times without a checkpoint");
    for (lease, moves) in &moves_per_lease {
        // Four membership changes (two joins, two leaves), each moving a lease at most twice.
        assert!(*moves <= 10, "{lease} changed owners {moves} times");
    }
    for lease in &final_leases {
        assert!(lease.lease_owner.as_deref().is_none_or(|o| o.starts_with("ours")), "{lease:?}");
    }
    let _ = kinesis.delete_stream(&stream, true).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The application's leases as they are now.
async fn checkpoint_leases(peers: &Peers, app: &str) -> Vec<kcl::Lease> {
    stores(peers, app).await.expect("the lease tables").lease_store().list_leases().await.expect("list leases")
}

/// The regime the rolling migration reaches only when our worker wins the released lock: a
/// fleet led by `kcl` that a Java KCL worker joins. Our leader hands it leases (a graceful
/// handoff the Java worker completes), records keep flowing, nothing is lost or processed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_kcl_worker_joining_a_fleet_led_by_kcl_is_given_leases() {
    const JOIN_RECORDS: u64 = 15_000;
    const JOIN_RATE: u64 = 100;
    let Some(peers) = peers() else { return };
    let _serial = ONE_AT_A_TIME.lock().await;
    let (name, dir, kinesis, stream) = new_stream(&peers, "java-joins").await;

    let ours = Consumer::start_with(Side::Ours, &peers, &dir, &name, &name, "ours-1", &["--no-cpu-metrics"]);
    assert!(wait_for_leases(&peers, &name, "ours-1", 4, Duration::from_secs(60)).await, "ours-1 took no leases");
    let (producer, _) = start_producer(Side::Ours, &peers, &dir, &name, JOIN_RECORDS, JOIN_RATE);
    let java = Consumer::start(Side::Java, &peers, &dir, &name, &name, "java-1");
    let java_got_leases = wait_for_leases(&peers, &name, "java-1", 1, Duration::from_secs(240)).await;
    let leader = leader_of(&peers, &name).await;
    let outs = vec![ours.out.clone(), java.out.clone()];
    let produced =
        tokio::task::spawn_blocking(move || producer.wait_with_output()).await.expect("join").expect("produce");
    assert!(produced.status.success(), "produce failed");
    let deadline = Instant::now() + Duration::from_secs(240);
    while SeenRecord::unique_in(&outs) < JOIN_RECORDS as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let java_log = java.log.clone();
    let summaries = [java.stop().await, ours.stop().await];
    let shards = all_shards(&kinesis, &stream).await;
    let seen = SeenRecord::read_out_files(&outs);
    let accounting = account(&seen, &expected_round_robin(JOIN_RECORDS, KEYS), &shards);
    let by_java = seen.iter().filter(|r| r.worker == "java-1").count();
    let reprocessed = SeenRecord::reprocessed(&seen);
    println!(
        "java worker joins a kcl fleet: leader when it joined {leader:?}; java-1 given a lease: {java_got_leases}, \
         processed {by_java}; re-processed {reprocessed}; consumers {summaries:?}; {accounting:?}"
    );
    if !java_got_leases {
        tests::print_log_tail(&java_log);
    }
    assert_eq!(leader.as_deref(), Some("ours-1"), "ours-1 should lead the fleet it started");
    assert!(java_got_leases && by_java > 0, "our leader gave the Java worker no lease within 4 minutes");
    assert!(accounting.is_complete_and_ordered(), "{accounting:?}");
    assert_eq!(reprocessed, 0, "a graceful handoff re-processed records");
    check_summaries(&accounting, summaries);
    let _ = kinesis.delete_stream(&stream, true).await;
    let _ = std::fs::remove_dir_all(&dir);
}
