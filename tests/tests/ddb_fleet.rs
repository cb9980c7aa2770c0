//! A multi-worker `kcl` run on kinesis-mock with its leases, leader lock and worker metrics in
//! the DynamoDB peer (moto's server, or DynamoDB Local) through `kcl-ddb-store`: three workers (each with stores of its own, as on
//! three hosts) share a 4-shard stream and read every record; then, with the stream idle, the
//! DynamoDB requests each table receives are counted over a window and checked against the
//! renewal schedule — one conditional write per held lease per renewal interval, no more — and
//! reported per lease per hour at the default settings.
//!
//! Needs `KINESIS_MOCK_ENDPOINT` and `DYNAMODB_ENDPOINT` (set by `scripts/test.sh`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kcl::{CpuMetrics, InitialPosition, Scheduler, SchedulerConfig, SchedulerHandle};
use kcl_ddb_store::{DynamoDbStores, StoreTable};
use kinesis_core::{AwsKinesis, CreateStreamRequest, Kinesis, PutRecordsEntry, ShardId, StreamRef};
use tests::{Recorder, account, all_shards, expected_round_robin, peer, unique_name};
use tokio::time::Instant;

const RECORDS: u64 = 2000;
const KEYS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_dynamodb_share_a_stream_and_renew_at_the_expected_cost() {
    let (Some(kinesis_endpoint), Some(ddb_endpoint)) = (peer("KINESIS_MOCK_ENDPOINT"), peer("DYNAMODB_ENDPOINT"))
    else {
        return;
    };
    let name = unique_name("ddb-fleet");
    let kinesis = AwsKinesis::local(kinesis_endpoint).await;
    let stream = StreamRef::from(name.as_str());
    kinesis.create_stream(CreateStreamRequest::provisioned(name.clone(), 4)).await.expect("create stream");
    kinesis.wait_for_stream_active(&stream, Duration::from_secs(30)).await.expect("active");
    let mut counters = vec![0u64; KEYS as usize];
    for batch in 0..RECORDS / 500 {
        let entries = (0..500)
            .map(|i| {
                let k = ((batch * 500 + i) % KEYS) as usize;
                let data = format!("k{k} {} payload", counters[k]);
                counters[k] += 1;
                PutRecordsEntry { partition_key: format!("k{k}"), explicit_hash_key: None, data: Bytes::from(data) }
            })
            .collect();
        let out = kinesis.put_records(&stream, entries).await.expect("put");
        assert_eq!(out.failed_record_count(), 0);
    }

    // A short lease duration (3 s: renewals every second) so the measuring window holds many
    // renewal rounds; the cost per renewal scales to the defaults below.
    let config =
        SchedulerConfig::default().with_lease_duration(Duration::from_secs(3)).with_cpu_metrics(CpuMetrics::Disabled);
    // This test counts renewals: per-lease mode (heartbeat mode's cost is the coordination_cost
    // benchmark's).
    let config = config.per_lease();
    let renewal = config.renewal_interval();
    let epoch = Instant::now();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut workers: Vec<(SchedulerHandle, DynamoDbStores)> = Vec::new();
    for i in 0..3 {
        let stores = DynamoDbStores::builder()
            .local(ddb_endpoint.clone())
            .await
            .application_name(name.clone())
            .build()
            .await
            .expect("tables");
        let worker = format!("w{i}");
        let factory = {
            let (worker, seen) = (worker.clone(), seen.clone());
            move |shard: &ShardId| Recorder::new(shard, &worker, epoch, &seen)
        };
        let handle = Scheduler::builder(name.clone(), stream.clone(), Arc::new(kinesis.clone()))
            .worker_id(worker)
            .initial_position(InitialPosition::TrimHorizon)
            .lease_store(Arc::new(stores.lease_store()))
            .coordinator_store(Arc::new(stores.coordinator_store()))
            .worker_metrics_store(Arc::new(stores.worker_metrics_store()))
            .config(config.clone())
            .processor_factory(factory)
            .build()
            .expect("scheduler")
            .start();
        workers.push((handle, stores));
    }

    // Every record read, the shards spread over the workers.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let unique: HashSet<(String, u64)> = seen.lock().expect("lock").iter().map(|r| (r.key.clone(), r.n)).collect();
        let held: Vec<usize> = workers.iter().map(|(h, _)| h.state().shards.len()).collect();
        if unique.len() as u64 >= RECORDS && held.iter().sum::<usize>() == 4 && held.iter().all(|&n| n >= 1) {
            break;
        }
        assert!(Instant::now() < deadline, "not all read / spread in time: {} records, leases {held:?}", unique.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let shards = all_shards(&kinesis, &stream).await;
    let accounting = account(&seen.lock().expect("lock"), &expected_round_robin(RECORDS, KEYS), &shards);
    assert!(accounting.is_complete_and_ordered(), "{accounting:?}");

    // The stream is idle now: count each table's requests over a window of renewal rounds.
    let snapshot = |workers: &[(SchedulerHandle, DynamoDbStores)]| {
        [StoreTable::Leases, StoreTable::CoordinatorState, StoreTable::WorkerMetrics].map(|table| {
            workers
                .iter()
                .map(|(_, s)| (s.stats().table_reads(table), s.stats().table_writes(table)))
                .fold((0, 0), |(r, w), (r2, w2)| (r + r2, w + w2))
        })
    };
    tokio::time::sleep(renewal).await;
    let before = snapshot(&workers);
    let window = renewal * 10;
    let window_start = Instant::now();
    tokio::time::sleep(window).await;
    let after = snapshot(&workers);
    let elapsed = window_start.elapsed();
    let held: usize = workers.iter().map(|(h, _)| h.state().shards.len()).sum();
    let rounds = elapsed.as_secs_f64() / renewal.as_secs_f64();
    let lease_writes = after[0].1 - before[0].1;
    let writes_per_lease_per_round = lease_writes as f64 / held as f64 / rounds;
    let default_rounds_per_hour = 3600.0 / SchedulerConfig::default().renewal_interval().as_secs_f64();
    let per_hour = |delta: u64| delta as f64 * 3600.0 / elapsed.as_secs_f64();
    println!(
        "ddb cost, idle stream, {held} leases, 3 workers, {:.1} s window: lease table {} writes {} reads; \
         coordinator {} writes {} reads; worker metrics {} writes {} reads. \
         Writes per lease per renewal round: {writes_per_lease_per_round:.2} \
         => {:.0} lease writes per lease per hour at the default renewal interval ({:?}); \
         at this run's timers: leader lock {:.0} writes/h, worker metrics {:.0} writes/h per worker",
        elapsed.as_secs_f64(),
        lease_writes,
        after[0].0 - before[0].0,
        after[1].1 - before[1].1,
        after[1].0 - before[1].0,
        after[2].1 - before[2].1,
        after[2].0 - before[2].0,
        writes_per_lease_per_round * default_rounds_per_hour,
        SchedulerConfig::default().renewal_interval(),
        per_hour(after[1].1 - before[1].1),
        per_hour(after[2].1 - before[2].1) / 3.0,
    );
    // One conditional renewal per held lease per round (the window's edges can cut a round in
    // or out, and a tick delayed by a slow request can land on either side); nothing else
    // writes to the lease table while the stream is idle — no handoffs, no checkpoints.
    let expected = held as f64 * rounds;
    let slack = 2.0 * held as f64;
    assert!(
        (lease_writes as f64) <= expected + slack && (lease_writes as f64) >= expected - slack,
        "{lease_writes} lease-table writes for {held} leases over {rounds:.1} renewal rounds"
    );
    for (handle, _) in workers {
        handle.shutdown().await;
    }
    let _ = kinesis.delete_stream(&stream, true).await;
}
