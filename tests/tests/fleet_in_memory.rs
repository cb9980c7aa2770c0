//! The end-to-end run in one process on the in-memory broker, on paused tokio time: a `kpl`
//! producer (default per-key ordering) writes to a 4-shard stream with the service's throttling on;
//! three `kcl` workers share it through in-memory stores; midway a shard splits and a worker
//! is killed (no graceful release). Afterwards every record is accounted for, order per key
//! holds within each shard and across the lineage, duplicates come only from the failover,
//! and the failover stays within twice the lease duration — in both lease modes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl::store::memory::{MemoryCoordinatorStore, MemoryLeaseStore, MemoryWorkerMetricsStore};
use kcl::{CpuMetrics, InitialPosition, Scheduler, SchedulerConfig, SchedulerHandle, ShardPhase};
use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker, ShardId, StreamRef};
use kpl::{Producer, UserRecord};
use tests::{Recorder, account, expected_round_robin, failover_ms};
use tokio::time::Instant;

const RECORDS: u64 = 30_000;
const KEYS: u64 = 300;

#[tokio::test(start_paused = true)]
async fn produce_split_kill_and_account_for_every_record_with_worker_heartbeats() {
    produce_split_kill_and_account_for_every_record(SchedulerConfig::default().worker_heartbeats()).await;
}

#[tokio::test(start_paused = true)]
async fn produce_split_kill_and_account_for_every_record_with_per_lease_renewal() {
    produce_split_kill_and_account_for_every_record(SchedulerConfig::default().per_lease()).await;
}

async fn produce_split_kill_and_account_for_every_record(config: SchedulerConfig) {
    let epoch = Instant::now();
    let broker = MemoryBroker::new();
    let stream = StreamRef::from("fleet");
    broker.create_stream(CreateStreamRequest::provisioned("fleet", 4)).await.expect("create");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let (leases, coordinator, metrics) = (
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(MemoryCoordinatorStore::new()),
        Arc::new(MemoryWorkerMetricsStore::new()),
    );
    let config = config.with_cpu_metrics(CpuMetrics::Disabled);
    let lease_duration = config.lease_duration;
    let mut workers: Vec<Option<SchedulerHandle>> = (0..3)
        .map(|i| {
            let worker = format!("w{i}");
            let seen = seen.clone();
            let factory = {
                let worker = worker.clone();
                move |shard: &ShardId| Recorder::new(shard, &worker, epoch, &seen)
            };
            Some(
                Scheduler::builder("fleet-app", stream.clone(), Arc::new(broker.clone()))
                    .worker_id(worker)
                    .initial_position(InitialPosition::TrimHorizon)
                    .lease_store(leases.clone())
                    .coordinator_store(coordinator.clone())
                    .worker_metrics_store(metrics.clone())
                    .config(config.clone())
                    .processor_factory(factory)
                    .build()
                    .expect("scheduler")
                    .start(),
            )
        })
        .collect();

    // 30,000 records at 1,000 records/s of simulated time, 300 keys round-robin.
    let producer = Arc::new(Producer::builder(broker.clone(), stream.clone()).build().await.expect("producer"));
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut counters = vec![0u64; KEYS as usize];
            let mut deliveries = Vec::new();
            for i in 0..RECORDS {
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let k = (i % KEYS) as usize;
                let key = format!("k{k}");
                let data = format!("{key} {} {}", counters[k], "x".repeat(60));
                counters[k] += 1;
                deliveries.push(producer.send(UserRecord::new(key, data)).await.expect("send"));
            }
            producer.flush().await;
            let mut failed = 0;
            for delivery in deliveries {
                failed += u32::from(delivery.await.is_err());
            }
            failed
        })
    };

    // At 10 s: split the first shard. At 15 s: kill a non-leader that is processing shards.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let shards = broker.list_all_shards(&stream, None).await.expect("shards");
    let first = &shards[0];
    broker.split_shard(&stream, &first.shard_id, first.hash_key_range.midpoint()).await.expect("split");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let victim = (0..workers.len())
        .filter_map(|i| workers[i].as_ref().map(|h| (i, h.state())))
        .filter(|(_, state)| state.shards.values().any(|s| s.phase == ShardPhase::Processing))
        .max_by_key(|(_, state)| (!state.is_leader, state.shards.len()))
        .map(|(i, _)| i)
        .expect("a worker processing shards");
    let killed_at_ms = epoch.elapsed().as_millis() as u64;
    workers[victim].take().expect("victim").kill().await;

    assert_eq!(sender.await.expect("sender"), 0, "every record delivered by the producer");
    let expected = expected_round_robin(RECORDS, KEYS);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let unique: std::collections::HashSet<(String, u64)> =
            seen.lock().expect("lock").iter().map(|r| (r.key.clone(), r.n)).collect();
        if unique.len() as u64 >= RECORDS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for handle in workers.into_iter().flatten() {
        handle.shutdown().await;
    }
    producer.shutdown().await;
    let producer_stats = producer.stats();

    let shards = broker.list_all_shards(&stream, None).await.expect("shards");
    assert_eq!(shards.len(), 6, "the split added two children");
    let seen = seen.lock().expect("lock").clone();
    let accounting = account(&seen, &expected, &shards);
    assert!(accounting.is_complete_and_ordered(), "{accounting:?}");
    assert_eq!(accounting.unique, RECORDS);
    // Duplicates have two sources only: records the killed worker processed but had not
    // checkpointed (delivered again by another worker), and user records of aggregates that
    // landed on a child shard the split made while they were in flight, which the producer
    // re-sends whole (the Java KCL drops such an aggregate entirely; this kcl keeps its in-range
    // records, so those are seen twice).
    let resent = producer_stats.wrong_shard_resends;
    assert!(
        accounting.duplicates <= accounting.redelivered_by_another_worker + resent,
        "unexplained duplicates: {accounting:?}, {resent} user records re-sent after landing on a wrong shard"
    );
    let victim_name = format!("w{victim}");
    let failover = failover_ms(&seen, &victim_name, killed_at_ms).expect("the killed worker's shards resumed");
    println!("failover after the kill: {failover} ms (simulated); {accounting:?}");
    assert!(
        Duration::from_millis(failover) <= 2 * lease_duration,
        "failover took {failover} ms, more than twice the lease duration"
    );
}
