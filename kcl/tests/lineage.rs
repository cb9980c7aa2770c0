//! Resharding mid-stream: a split and a merge keep per-key order across parents and children,
//! lose nothing, and duplicate only after an un-checkpointed failover — with polling and with
//! enhanced fan-out.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kcl::RetrievalMode;
use kinesis_core::{ExtendedSequenceNumber, Kinesis, ShardId};
use support::*;

fn fan_out() -> RetrievalMode {
    RetrievalMode::FanOut { consumer_name: Some("kcl-test".into()) }
}

async fn reshard_mid_stream(mode: RetrievalMode, kill: bool) {
    let mut fleet = Fleet::new(2).await;
    fleet.mode = mode;
    for w in ["w1", "w2", "w3"] {
        fleet.start(w);
    }
    fleet
        .wait_for(Duration::from_secs(60), "both shards processed", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == 2
        })
        .await;
    if kill {
        // Checkpoint only every fifth batch, so a crash leaves un-checkpointed records behind.
        fleet.recorder.behavior(|b| b.checkpoint_every = 5);
    }
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 20, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Split shard 0 (the lower half of the key space) into 2 and 3.
    let s0 = ShardId::from_index(0);
    let s1 = ShardId::from_index(1);
    let range0 = fleet.open_shards().await.into_iter().find(|s| s.shard_id == s0).expect("shard 0").hash_key_range;
    fleet.kinesis.split_shard(&fleet.stream, &s0, range0.midpoint()).await.expect("split");
    tokio::time::sleep(Duration::from_secs(15)).await;

    let mut victim = None;
    let mut checkpoints: HashMap<String, ExtendedSequenceNumber> = HashMap::new();
    if kill {
        // Off the batch rhythm, so the victim is between checkpoints.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        // Kill the worker processing shard 1 (the merge's second parent) mid-stream.
        let holder = fleet
            .processing()
            .into_iter()
            .find(|(_, shards)| shards.contains(&s1.to_string()))
            .map(|(w, _)| w)
            .expect("someone processes shard 1");
        checkpoints = fleet.lease_table().await.into_iter().map(|l| (l.lease_key.clone(), l.checkpoint)).collect();
        fleet.kill(&holder).await;
        victim = Some(holder);
    }

    // Merge 3 (upper half of shard 0's range) with 1 into 4.
    let s3 = ShardId::from_index(3);
    fleet.kinesis.merge_shards(&fleet.stream, &s3, &s1).await.expect("merge");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(90), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= total
        })
        .await;

    let deliveries = fleet.recorder.deliveries();
    let duplicates = check_order(&deliveries, &sent);
    eprintln!("{} records, {} deliveries, {} duplicates", total, deliveries.len(), duplicates.len());
    match &victim {
        None => {
            assert!(duplicates.is_empty(), "no failover, no duplicates: {:?}", &duplicates[..duplicates.len().min(5)])
        }
        Some(victim) => {
            let first = first_deliveries(&deliveries);
            assert!(!duplicates.is_empty(), "the crash left un-checkpointed records to redeliver");
            for dup in &duplicates {
                let original = &first[&(dup.key.clone(), dup.n)];
                assert_eq!(&original.worker, victim, "duplicate not from the failover: {dup:?}");
                assert!(original.position > checkpoints[&original.shard], "{dup:?} was checkpointed before the kill");
            }
        }
    }
    // Every shard of the lineage was read: 0 → 2, 3; 3 + 1 → 4.
    let shards_read = distinct(&deliveries.iter().map(|d| d.shard.clone()).collect::<Vec<_>>());
    for i in 0..5 {
        assert!(shards_read.contains(&ShardId::from_index(i).to_string()), "shard {i} was read: {shards_read:?}");
    }
    // The merge child started only after both parents finished: its first delivery follows the
    // last of each parent.
    let first_of =
        |shard: u64| deliveries.iter().find(|d| d.shard == ShardId::from_index(shard).to_string()).map(|d| d.at);
    let last_of =
        |shard: u64| deliveries.iter().rev().find(|d| d.shard == ShardId::from_index(shard).to_string()).map(|d| d.at);
    assert!(first_of(4) >= last_of(1) && first_of(4) >= last_of(3), "merge child after both parents");
    assert!(first_of(2) >= last_of(0) && first_of(3) >= last_of(0), "split children after the parent");

    // Finished parents are cleaned up once their children started; the merge child remains.
    let keys: Vec<String> = fleet.lease_table().await.into_iter().map(|l| l.lease_key).collect();
    for i in [0, 1, 3] {
        assert!(!keys.contains(&ShardId::from_index(i).to_string()), "shard {i}'s finished lease deleted: {keys:?}");
    }
    assert!(keys.contains(&ShardId::from_index(4).to_string()));
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_keep_order_polling() {
    reshard_mid_stream(RetrievalMode::Polling, false).await;
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_keep_order_fan_out() {
    reshard_mid_stream(fan_out(), false).await;
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_with_a_crash_duplicate_only_after_the_checkpoint_polling() {
    reshard_mid_stream(RetrievalMode::Polling, true).await;
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_with_a_crash_duplicate_only_after_the_checkpoint_fan_out() {
    reshard_mid_stream(fan_out(), true).await;
}

#[tokio::test(start_paused = true)]
async fn a_finished_parent_lease_is_kept_until_its_children_started() {
    use bytes::Bytes;
    use kinesis_core::{HashKey, PutRecordsEntry};

    let mut fleet = Fleet::new(2).await;
    fleet.start("w1");
    fleet.wait_for(Duration::from_secs(30), "both shards processed", |f| f.processing()["w1"].len() == 2).await;
    let shards = fleet.open_shards().await;
    let key_in = |shard: usize, prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| shards[shard].hash_key_range.contains(HashKey::from_partition_key(k)))
            .expect("a key")
    };
    let (k0, poison) = (key_in(0, "a"), key_in(1, "p"));
    // Shard 1 cannot get past its poison record until the processor is fixed.
    fleet.recorder.behavior(|b| b.poison = Some((poison.clone(), u32::MAX)));
    let entries = [(k0.clone(), 0), (poison.clone(), 0)]
        .into_iter()
        .map(|(k, n)| PutRecordsEntry {
            partition_key: k.clone(),
            explicit_hash_key: None,
            data: Bytes::from(format!("{k} {n} ")),
        })
        .collect();
    fleet.kinesis.put_records(&fleet.stream, entries).await.expect("put");
    let (s0, s1, merged) = (ShardId::from_index(0), ShardId::from_index(1), ShardId::from_index(2));
    fleet.kinesis.merge_shards(&fleet.stream, &s0, &s1).await.expect("merge");

    // Shard 0 finishes; the merge child is leased (and owned) but waits for shard 1.
    fleet
        .wait_for(Duration::from_secs(30), "shard 0 finished and the child held", |f| {
            f.handle("w1")
                .state()
                .shards
                .get(merged.as_str())
                .is_some_and(|s| s.phase == kcl::ShardPhase::WaitingOnParents)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let table = fleet.lease_table().await;
    let lease = |key: &ShardId| table.iter().find(|l| l.lease_key == key.as_str()).cloned();
    assert!(lease(&s0).is_some_and(|l| l.is_finished()), "the finished parent stays while its child waits: {table:?}");
    assert!(lease(&merged).is_some_and(|l| l.lease_owner.as_deref() == Some("w1")), "the child is owned");
    assert!(!fleet.recorder.deliveries().iter().any(|d| d.shard == merged.as_str()));

    // Once shard 1 gets through and ends, the child starts and both parents are cleaned up.
    fleet.recorder.behavior(|b| b.poison = None);
    fleet
        .wait_for(Duration::from_secs(60), "both parents' leases deleted", |f| {
            let keys: Vec<String> = f.leases_snapshot().into_iter().map(|l| l.lease_key).collect();
            !keys.contains(&s0.to_string()) && !keys.contains(&s1.to_string()) && keys.contains(&merged.to_string())
        })
        .await;
    let status = fleet.handle("w1").state().shards.get(merged.as_str()).map(|s| s.phase);
    assert_eq!(status, Some(kcl::ShardPhase::Processing));
    fleet.shutdown_all().await;
}
