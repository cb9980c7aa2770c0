//! One shard's processing: the error policy, lease loss, local expiry, shard end without a
//! checkpoint, backpressure, and resuming inside an aggregate.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kcl::{Backoff, LeaseStore, ProcessErrorPolicy, ShardError, ShardPhase};
use kinesis_core::aggregation::AggregateBuilder;
use kinesis_core::broker::BrokerConfig;
use kinesis_core::*;
use support::*;
use tokio::time::{Instant, sleep};

fn entry(key: &str, n: u64) -> PutRecordsEntry {
    PutRecordsEntry { partition_key: key.to_owned(), explicit_hash_key: None, data: Bytes::from(format!("{key} {n} ")) }
}

async fn put(fleet: &Fleet, entries: Vec<PutRecordsEntry>) {
    let out = fleet.kinesis.put_records(&fleet.stream, entries).await.expect("put");
    assert_eq!(out.failed_record_count(), 0);
}

async fn one_worker(fleet: &mut Fleet) {
    fleet.start("w1");
    fleet
        .wait_for(Duration::from_secs(30), "the shard processed", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == f.workers.len().max(1)
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn retry_policy_redelivers_the_same_batch() {
    let mut fleet = Fleet::new(1).await;
    fleet.config.process_error_policy =
        ProcessErrorPolicy::Retry { backoff: Backoff::constant(Duration::from_secs(1)), max_attempts: None };
    fleet.recorder.behavior(|b| b.poison = Some(("poison".into(), 3)));
    one_worker(&mut fleet).await;
    put(&fleet, vec![entry("k", 0), entry("k", 1), entry("poison", 0), entry("k", 2)]).await;
    fleet
        .wait_for(Duration::from_secs(30), "the batch accepted", |f| {
            f.recorder.deliveries().iter().any(|d| d.key == "poison" && d.worker == "w1")
        })
        .await;
    let deliveries = fleet.recorder.deliveries();
    let attempts: Vec<Vec<(String, u64, u32)>> = (1..=4)
        .map(|attempt| {
            deliveries.iter().filter(|d| d.attempt == attempt).map(|d| (d.key.clone(), d.n, d.attempt)).collect()
        })
        .collect();
    for (i, batch) in attempts.iter().enumerate() {
        let keys: Vec<(String, u64)> = batch.iter().map(|(k, n, _)| (k.clone(), *n)).collect();
        assert_eq!(
            keys,
            vec![("k".into(), 0), ("k".into(), 1), ("poison".into(), 0), ("k".into(), 2)],
            "delivery {} carries the same records",
            i + 1
        );
    }
    assert!(deliveries[..12].iter().all(|d| d.worker == "w1(failed)"));
    assert!(deliveries[12..].iter().all(|d| d.worker == "w1"));
    assert_eq!(fleet.recorder.failures.load(Ordering::SeqCst), 3);
    let sent = [("k".to_owned(), 3), ("poison".to_owned(), 1)].into_iter().collect();
    assert!(check_order(&deliveries, &sent).is_empty());
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn retry_policy_out_of_attempts_stops_the_shard() {
    let mut fleet = Fleet::new(1).await;
    fleet.config.process_error_policy =
        ProcessErrorPolicy::Retry { backoff: Backoff::constant(Duration::from_millis(200)), max_attempts: Some(2) };
    fleet.recorder.behavior(|b| b.poison = Some(("poison".into(), u32::MAX)));
    one_worker(&mut fleet).await;
    put(&fleet, vec![entry("poison", 0)]).await;
    fleet
        .wait_for(Duration::from_secs(30), "the shard stopped", |f| !f.handle("w1").state().stopped_shards.is_empty())
        .await;
    let state = fleet.handle("w1").state();
    assert!(matches!(state.stopped_shards.values().next(), Some(ShardError::ProcessingStopped { attempts: 2, .. })));
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn stop_shard_policy_never_checkpoints_past_the_failed_batch() {
    let mut fleet = Fleet::new(1).await;
    fleet.config.process_error_policy = ProcessErrorPolicy::StopShard;
    fleet.recorder.behavior(|b| b.poison = Some(("poison".into(), u32::MAX)));
    one_worker(&mut fleet).await;
    put(&fleet, vec![entry("k", 0), entry("k", 1)]).await;
    fleet.wait_for(Duration::from_secs(10), "first batch", |f| f.recorder.deliveries().len() == 2).await;
    let checkpointed = fleet.recorder.deliveries()[1].position.clone();
    put(&fleet, vec![entry("poison", 0), entry("k", 2)]).await;
    fleet
        .wait_for(Duration::from_secs(30), "the shard stopped", |f| {
            f.workers.values().any(|h| !h.state().stopped_shards.is_empty())
        })
        .await;
    let state = fleet.handle("w1").state();
    let error = state.stopped_shards.values().next().expect("stopped");
    assert!(matches!(error, ShardError::ProcessingStopped { attempts: 1, .. }), "{error:?}");
    assert!(fleet.recorder.events().iter().any(|e| matches!(e, Event::LeaseLost { .. })), "processor told");
    // The shard is retried after the leader reassigns it; it keeps failing, and the checkpoint
    // never moves past the failed batch.
    sleep(Duration::from_secs(30)).await;
    assert!(fleet.recorder.failures.load(Ordering::SeqCst) >= 2, "retried after reassignment");
    let lease = fleet.lease_table().await.remove(0);
    assert_eq!(lease.checkpoint, checkpointed, "nothing checkpointed past the failed batch");
    assert!(!fleet.recorder.deliveries().iter().any(|d| d.key == "poison" && d.worker == "w1"));
    // Once the processor is fixed, the batch goes through and nothing was skipped.
    fleet.recorder.behavior(|b| b.poison = None);
    fleet
        .wait_for(Duration::from_secs(30), "the batch accepted", |f| {
            f.recorder.deliveries().iter().any(|d| d.key == "poison" && d.worker == "w1")
        })
        .await;
    let sent = [("k".to_owned(), 3), ("poison".to_owned(), 1)].into_iter().collect();
    assert!(check_order(&fleet.recorder.deliveries(), &sent).is_empty());
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_renewal_stops_the_shard_at_once() {
    let mut fleet = Fleet::new(1).await;
    fleet.config = fleet.config.clone().per_lease();
    fleet.recorder.behavior(|b| b.delay = Duration::from_secs(5));
    one_worker(&mut fleet).await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 4, Duration::from_millis(250));
    sleep(Duration::from_secs(7)).await;
    // Another worker takes the lease while process_records is in flight.
    let lease = fleet.lease_table().await.remove(0);
    fleet.leases.take_lease(&lease, "thief", &kcl::lease::WriteToken::new()).await.expect("steal");
    let stolen_at = Instant::now();
    fleet
        .wait_for(Duration::from_secs(10), "lease_lost", |f| {
            f.recorder.events().iter().any(|e| matches!(e, Event::LeaseLost { worker, .. } if worker == "w1"))
        })
        .await;
    let noticed = stolen_at.elapsed();
    assert!(noticed <= fleet.config.renewal_interval() + Duration::from_millis(100), "noticed after {noticed:?}");
    // The call in flight was dropped: nothing was delivered by w1 after the loss was noticed.
    let lost_at = stolen_at + noticed;
    assert!(
        !fleet.recorder.deliveries().iter().any(|d| d.worker == "w1" && d.at >= lost_at),
        "w1 kept processing after the loss"
    );
    // The thief never renews: the leader gives the lease back and nothing is lost.
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(120), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= total
        })
        .await;
    check_order(&fleet.recorder.deliveries(), &sent);
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_moved_by_the_leader_stops_the_shard_at_the_next_heartbeat() {
    let mut fleet = Fleet::new(1).await;
    fleet.config = fleet.config.clone().worker_heartbeats();
    fleet.recorder.behavior(|b| b.delay = Duration::from_secs(5));
    one_worker(&mut fleet).await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 4, Duration::from_millis(250));
    sleep(Duration::from_secs(7)).await;
    // The lease moves while process_records is in flight, and the mover signals w1's row as the
    // leader does with every move.
    let lease = fleet.lease_table().await.remove(0);
    fleet.leases.take_lease(&lease, "thief", &kcl::lease::WriteToken::new()).await.expect("steal");
    let signal = kcl::WorkerSignal::Assignments { assigned_leases: 0 };
    kcl::WorkerMetricsStore::signal_worker(&fleet.metrics, "w1", &signal).await.expect("signal");
    let stolen_at = Instant::now();
    fleet
        .wait_for(Duration::from_secs(10), "lease_lost", |f| {
            f.recorder.events().iter().any(|e| matches!(e, Event::LeaseLost { worker, .. } if worker == "w1"))
        })
        .await;
    let noticed = stolen_at.elapsed();
    let heartbeat = fleet.config.heartbeat_interval().expect("heartbeat mode");
    assert!(noticed <= heartbeat + Duration::from_millis(100), "noticed after {noticed:?}");
    let lost_at = stolen_at + noticed;
    assert!(
        !fleet.recorder.deliveries().iter().any(|d| d.worker == "w1" && d.at >= lost_at),
        "w1 kept processing after the loss"
    );
    // The thief has no heartbeat row: the leader judges its lease by the counter, gives it back,
    // and nothing is lost.
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(120), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= total
        })
        .await;
    check_order(&fleet.recorder.deliveries(), &sent);
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_that_does_not_land_for_the_lease_duration_stops_the_shard() {
    use kcl::store::faults::{StoreFaultRule, StoreOperation};
    let mut fleet = Fleet::new(1).await;
    fleet.config = fleet.config.clone().worker_heartbeats();
    one_worker(&mut fleet).await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 4, Duration::from_millis(250));
    sleep(Duration::from_secs(5)).await;
    fleet.faults("w1").add(StoreFaultRule::on(StoreOperation::HeartbeatWorker).fail());
    let outage = Instant::now();
    fleet.wait_for(Duration::from_secs(30), "the shard stopped", |f| f.handle("w1").state().shards.is_empty()).await;
    let after = outage.elapsed();
    let (duration, heartbeat) = (fleet.config.lease_duration, fleet.config.heartbeat_interval().expect("heartbeat"));
    assert!(after + heartbeat >= duration && after <= duration, "stopped after {after:?}");
    assert!(
        !fleet.recorder.deliveries().iter().any(|d| d.at >= outage + duration),
        "delivered after the heartbeat fence"
    );
    // The heartbeat comes back: the worker takes its leases up again and nothing is lost.
    fleet.faults("w1").clear();
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(60), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= total
        })
        .await;
    check_order(&fleet.recorder.deliveries(), &sent);
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_not_renewed_for_its_duration_expires_on_the_local_clock() {
    let mut fleet = Fleet::new(1).await;
    fleet.config = fleet.config.clone().per_lease();
    one_worker(&mut fleet).await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 4, Duration::from_millis(250));
    sleep(Duration::from_secs(5)).await;
    fleet.leases.set_unavailable(true);
    let outage = Instant::now();
    fleet
        .wait_for(Duration::from_secs(30), "lease_lost", |f| {
            f.recorder.events().iter().any(|e| matches!(e, Event::LeaseLost { .. }))
        })
        .await;
    let after = outage.elapsed();
    let (duration, renewal) = (fleet.config.lease_duration, fleet.config.renewal_interval());
    assert!(after + renewal >= duration && after <= duration + renewal, "dropped after {after:?}");
    assert!(fleet.handle("w1").state().shards.is_empty(), "the shard task ended");
    fleet.leases.set_unavailable(false);
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(60), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= total
        })
        .await;
    check_order(&fleet.recorder.deliveries(), &sent);
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn children_stay_blocked_until_the_parent_checkpoints_shard_end() {
    let mut fleet = Fleet::new(1).await;
    fleet.recorder.behavior(|b| b.checkpoint_on_shutdown = false);
    one_worker(&mut fleet).await;
    put(&fleet, (0..10).map(|n| entry("k", n)).collect()).await;
    fleet.wait_for(Duration::from_secs(10), "records", |f| f.recorder.deliveries().len() == 10).await;
    let parent = ShardId::from_index(0);
    fleet.kinesis.split_shard(&fleet.stream, &parent, HashKeyRange::FULL.midpoint()).await.expect("split");
    put(&fleet, (10..20).map(|n| entry("k", n)).collect()).await;
    fleet
        .wait_for(Duration::from_secs(30), "the shard-end error", |f| {
            f.handle("w1")
                .state()
                .shards
                .get(parent.as_str())
                .is_some_and(|s| s.error == Some(ShardError::ShardEndNotCheckpointed))
        })
        .await;
    sleep(Duration::from_secs(10)).await;
    let state = fleet.handle("w1").state();
    for child in [ShardId::from_index(1), ShardId::from_index(2)] {
        let status = state.shards.get(child.as_str()).expect("child lease held");
        assert_eq!(status.phase, ShardPhase::WaitingOnParents, "{child} blocked");
    }
    assert_eq!(fleet.recorder.deliveries().len(), 10, "nothing from the children");
    let ended = fleet.recorder.events().iter().filter(|e| matches!(e, Event::ShardEnded { .. })).count();
    assert!(ended >= 2, "shard_ended called again ({ended})");
    fleet.recorder.behavior(|b| b.checkpoint_on_shutdown = true);
    fleet.wait_for(Duration::from_secs(60), "the children's records", |f| f.recorder.deliveries().len() == 20).await;
    let sent = [("k".to_owned(), 20)].into_iter().collect();
    assert!(check_order(&fleet.recorder.deliveries(), &sent).is_empty());
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_processor_slows_fetching() {
    let broker = MemoryBroker::with_config(BrokerConfig::default());
    let mut fleet = Fleet::with_broker(broker.clone(), 1).await;
    let counting = Arc::new(CountingKinesis::new(broker));
    fleet.kinesis = counting.clone();
    fleet.config.max_prefetch_batches = 2;
    fleet.config.polling.max_records = 10;
    fleet.recorder.behavior(|b| b.delay = Duration::from_secs(2));
    for chunk in 0..4 {
        put(&fleet, (0..500).map(|n| entry("k", chunk * 500 + n)).collect()).await;
        sleep(Duration::from_secs(1)).await;
    }
    one_worker(&mut fleet).await;
    sleep(Duration::from_secs(60)).await;
    let calls = counting.get_records.load(Ordering::SeqCst);
    let batches = fleet.recorder.batches.load(Ordering::SeqCst);
    eprintln!("{calls} GetRecords calls for {batches} processed batches");
    // One in the processor, two queued, one waiting to be queued.
    assert!(calls <= batches + 4, "{calls} reads for {batches} batches: fetching ran ahead");
    assert!(batches >= 25, "processing kept going ({batches})");
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn resuming_inside_an_aggregate_skips_the_checkpointed_sub_records() {
    let mut fleet = Fleet::new(1).await;
    fleet.recorder.behavior(|b| b.checkpoint_at = Some(("k".into(), 4)));
    one_worker(&mut fleet).await;
    let mut builder = AggregateBuilder::new();
    for n in 0..10 {
        builder.add("k", None, Bytes::from(format!("k {n} ")), &[]);
    }
    put(&fleet, vec![PutRecordsEntry { partition_key: "k".into(), explicit_hash_key: None, data: builder.finish() }])
        .await;
    fleet.wait_for(Duration::from_secs(10), "the aggregate", |f| f.recorder.deliveries().len() == 10).await;
    let first = fleet.recorder.deliveries();
    assert!(first.iter().enumerate().all(|(i, d)| d.position.sub_sequence_number() == i as u64));
    fleet.kill("w1").await;
    fleet.start("w2");
    fleet.wait_for(Duration::from_secs(60), "the rest of the aggregate", |f| f.recorder.deliveries().len() == 15).await;
    sleep(Duration::from_secs(5)).await;
    let again: Vec<(u64, u64)> =
        fleet.recorder.deliveries()[10..].iter().map(|d| (d.n, d.position.sub_sequence_number())).collect();
    assert_eq!(again, vec![(5, 5), (6, 6), (7, 7), (8, 8), (9, 9)], "resumed after sub-record 4");
    let init = fleet.recorder.events().into_iter().find_map(|e| match e {
        Event::Initialize { worker, checkpoint, .. } if worker == "w2" => Some(checkpoint),
        _ => None,
    });
    assert_eq!(init.map(|c| c.sub_sequence_number()), Some(4));
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_prepared_checkpoint_and_its_state_reach_the_next_owner() {
    let mut fleet = Fleet::new(1).await;
    // Prepare at k 6 with application state, never commit.
    fleet.recorder.behavior(|b| {
        b.checkpoint_every = 0;
        b.checkpoint_on_shutdown = false;
        b.prepare_at = Some(("k".into(), 6));
    });
    one_worker(&mut fleet).await;
    put(&fleet, (0..10).map(|n| entry("k", n)).collect()).await;
    fleet.wait_for(Duration::from_secs(10), "the records", |f| f.recorder.deliveries().len() == 10).await;
    let prepared = fleet.recorder.deliveries()[6].position.clone();
    let lease = fleet.lease_table().await.remove(0);
    assert_eq!(lease.pending_checkpoint, Some(prepared.clone()));
    assert_eq!(lease.checkpoint, ExtendedSequenceNumber::TrimHorizon, "prepared, not committed");
    fleet.kill("w1").await;
    fleet.recorder.behavior(|b| b.prepare_at = None);
    fleet.start("w2");
    fleet
        .wait_for(Duration::from_secs(60), "w2 initialized", |f| {
            f.recorder.events().iter().any(|e| matches!(e, Event::Initialize { worker, .. } if worker == "w2"))
        })
        .await;
    let init = fleet.recorder.events().into_iter().find_map(|e| match e {
        Event::Initialize { worker, checkpoint, pending_checkpoint, pending_state, .. } if worker == "w2" => {
            Some((checkpoint, pending_checkpoint, pending_state))
        }
        _ => None,
    });
    let (checkpoint, pending, state) = init.expect("w2 initialized");
    assert_eq!(checkpoint, ExtendedSequenceNumber::TrimHorizon, "resumes from the committed checkpoint");
    assert_eq!(pending, Some(prepared), "sees the prepared position");
    assert_eq!(state.as_deref(), Some(&b"state k 6"[..]), "and the application state saved with it");
    fleet.shutdown_all().await;
}
