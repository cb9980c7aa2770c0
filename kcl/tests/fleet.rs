//! Multi-worker behaviour on paused tokio time: distribution, failover, leader death, load
//! balancing, graceful shutdown and handoff.

mod support;

use std::time::Duration;

use support::*;

async fn three_workers_share_eight_shards_evenly() {
    let mut fleet = Fleet::new(8).await;
    for w in ["w1", "w2", "w3"] {
        fleet.start(w);
    }
    let took = fleet
        .wait_for(Duration::from_secs(60), "8 shards spread 2–3 per worker", |f| {
            let p = f.processing();
            p.values().map(Vec::len).sum::<usize>() == 8 && p.values().all(|s| (2..=3).contains(&s.len()))
        })
        .await;
    eprintln!("balanced after {took:?}: {:?}", fleet.processing());
    assert!(fleet.leader().is_some());
    let all: Vec<String> = fleet.processing().into_values().flatten().collect();
    assert_eq!(distinct(&all).len(), 8, "no shard held twice");
    fleet.shutdown_all().await;
}

/// Starts three workers on 8 shards with a producer, and waits until every shard is processed.
async fn running_fleet() -> (Fleet, Producer) {
    let mut fleet = Fleet::new(8).await;
    for w in ["w1", "w2", "w3"] {
        fleet.start(w);
    }
    fleet
        .wait_for(Duration::from_secs(60), "all shards processed", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == 8
        })
        .await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 16, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(5)).await;
    (fleet, producer)
}

/// Waits until every record sent was delivered at least once.
async fn drain(fleet: &Fleet, sent: &std::collections::HashMap<String, u64>) {
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(60), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= total
        })
        .await;
}

/// Asserts that every duplicate was first delivered by `victim` past the checkpoint its shard
/// had when the victim was killed (an un-checkpointed failover).
fn duplicates_only_after_failover(
    fleet: &Fleet,
    duplicates: &[Delivery],
    victim: &str,
    checkpoints: &std::collections::HashMap<String, kinesis_core::ExtendedSequenceNumber>,
) {
    let first = first_deliveries(&fleet.recorder.deliveries());
    for dup in duplicates {
        let original = &first[&(dup.key.clone(), dup.n)];
        assert_eq!(original.worker, victim, "duplicate not caused by the failover: {dup:?} first {original:?}");
        let checkpoint = &checkpoints[&original.shard];
        assert!(&original.position > checkpoint, "duplicate {dup:?} was checkpointed ({checkpoint}) before the kill");
    }
}

async fn killed_worker_shards_move_within_two_lease_durations() {
    let (mut fleet, producer) = running_fleet().await;
    let leader = fleet.leader().expect("a leader");
    let victim = ["w1", "w2", "w3"].into_iter().find(|w| *w != leader).expect("a non-leader").to_owned();
    let victim_shards = fleet.processing()[&victim].clone();
    assert!(!victim_shards.is_empty());
    let checkpoints =
        fleet.lease_table().await.into_iter().map(|l| (l.lease_key.clone(), l.checkpoint.clone())).collect();
    let killed_at = tokio::time::Instant::now();
    fleet.kill(&victim).await;
    fleet
        .wait_for(Duration::from_secs(40), "the victim's shards processed elsewhere", |f| {
            let deliveries = f.recorder.deliveries();
            victim_shards
                .iter()
                .all(|s| deliveries.iter().any(|d| &d.shard == s && d.worker != victim && d.at > killed_at))
        })
        .await;
    let took = killed_at.elapsed();
    eprintln!("worker failover: {took:?}");
    let lease_duration = fleet.config.lease_duration;
    assert!(took <= lease_duration * 2, "failover took {took:?}, more than 2 × {lease_duration:?}");
    let sent = producer.stop().await;
    drain(&fleet, &sent).await;
    let duplicates = check_order(&fleet.recorder.deliveries(), &sent);
    duplicates_only_after_failover(&fleet, &duplicates, &victim, &checkpoints);
    fleet.shutdown_all().await;
}

async fn killed_leader_is_replaced_and_assignment_resumes_within_15s() {
    let (mut fleet, producer) = running_fleet().await;
    let leader = fleet.leader().expect("a leader");
    let leader_shards = fleet.processing()[&leader].clone();
    // A shard of a surviving worker splits at the moment the leader dies: its children's leases
    // need the (new) leader.
    let survivor_shard =
        fleet.processing().iter().find(|(w, _)| **w != leader).map(|(_, s)| s[0].clone()).expect("a survivor shard");
    let checkpoints =
        fleet.lease_table().await.into_iter().map(|l| (l.lease_key.clone(), l.checkpoint.clone())).collect();
    let killed_at = tokio::time::Instant::now();
    fleet.kill(&leader).await;
    let parent = kinesis_core::ShardId::new(&survivor_shard).expect("shard id");
    let range = fleet.open_shards().await.into_iter().find(|s| s.shard_id == parent).expect("open").hash_key_range;
    fleet.kinesis.split_shard(&fleet.stream, &parent, range.midpoint()).await.expect("split");
    let children: Vec<String> = fleet
        .kinesis
        .list_all_shards(&fleet.stream, None)
        .await
        .expect("list")
        .into_iter()
        .filter(|s| s.parent_shard_id.as_ref() == Some(&parent))
        .map(|s| s.shard_id.to_string())
        .collect();
    assert_eq!(children.len(), 2);

    fleet.wait_for(Duration::from_secs(30), "a new leader", |f| f.leader().is_some()).await;
    let elected = killed_at.elapsed();
    fleet
        .wait_for(Duration::from_secs(30), "the children processed", |f| {
            let processing: Vec<String> = f.processing().into_values().flatten().collect();
            children.iter().all(|c| processing.contains(c))
        })
        .await;
    let assigned = killed_at.elapsed();
    eprintln!("leader failover: elected after {elected:?}, new leases processed after {assigned:?}");
    assert!(elected <= Duration::from_secs(12), "election took {elected:?}");
    assert!(assigned <= Duration::from_secs(15), "assignment resumed after {assigned:?}");
    fleet
        .wait_for(Duration::from_secs(40), "the dead leader's shards processed elsewhere", |f| {
            let deliveries = f.recorder.deliveries();
            leader_shards
                .iter()
                .all(|s| deliveries.iter().any(|d| &d.shard == s && d.worker != leader && d.at > killed_at))
        })
        .await;
    let resumed = killed_at.elapsed();
    eprintln!("dead leader's shards resumed after {resumed:?}");
    assert!(resumed <= fleet.config.lease_duration * 2, "dead leader's shards resumed after {resumed:?}");
    let sent = producer.stop().await;
    drain(&fleet, &sent).await;
    let duplicates = check_order(&fleet.recorder.deliveries(), &sent);
    duplicates_only_after_failover(&fleet, &duplicates, &leader, &checkpoints);
    fleet.shutdown_all().await;
}

async fn an_added_worker_gets_a_fair_share_through_graceful_handoffs() {
    let mut fleet = Fleet::new(8).await;
    fleet.start("w1");
    fleet.start("w2");
    fleet.wait_for(Duration::from_secs(60), "4 + 4", |f| f.processing().values().all(|s| s.len() == 4)).await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 16, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(5)).await;
    fleet.start("w3");
    let took = fleet
        .wait_for(Duration::from_secs(90), "each worker 2–3", |f| {
            let p = f.processing();
            p.values().map(Vec::len).sum::<usize>() == 8 && p.values().all(|s| (2..=3).contains(&s.len()))
        })
        .await;
    eprintln!("rebalanced after {took:?}: {:?}", fleet.processing());
    let sent = producer.stop().await;
    drain(&fleet, &sent).await;
    let duplicates = check_order(&fleet.recorder.deliveries(), &sent);
    assert!(duplicates.is_empty(), "graceful handoffs checkpoint first: {duplicates:?}");
    let handoffs = fleet
        .recorder
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::ShutdownRequested { reason: kcl::processor::ShutdownReason::Handoff { next_owner }, .. } if next_owner == "w3"))
        .count();
    assert!(handoffs >= 2, "leases moved to w3 by graceful handoff ({handoffs})");
    fleet.shutdown_all().await;
}

async fn graceful_shutdown_hands_shards_over_without_duplicates() {
    let (mut fleet, producer) = running_fleet().await;
    let leaving = fleet.leader().expect("a leader");
    let shards = fleet.processing()[&leaving].clone();
    let left_at = tokio::time::Instant::now();
    fleet.shutdown(&leaving).await;
    // Released, and checkpointed at the last record it processed.
    let table = fleet.lease_table().await;
    let deliveries = fleet.recorder.deliveries();
    for shard in &shards {
        let lease = table.iter().find(|l| &l.lease_key == shard).expect("lease");
        assert!(!lease.is_owned_by(&leaving), "{shard} released: {lease:?}");
        let last =
            deliveries.iter().rev().find(|d| &d.shard == shard && d.worker == leaving).map(|d| d.position.clone());
        match last {
            Some(last) => assert_eq!(lease.checkpoint, last, "{shard} checkpointed at its last processed record"),
            None => assert!(lease.checkpoint.is_sentinel(), "{shard}: nothing processed, nothing checkpointed"),
        }
    }
    let events = fleet.recorder.events();
    for shard in &shards {
        assert!(
            events.contains(&Event::ShutdownRequested {
                worker: leaving.clone(),
                shard: shard.clone(),
                reason: kcl::processor::ShutdownReason::WorkerShutdown
            }),
            "{shard} was asked to checkpoint"
        );
    }
    let took = fleet
        .wait_for(Duration::from_secs(30), "the shards processed elsewhere", |f| {
            let deliveries = f.recorder.deliveries();
            shards.iter().all(|s| deliveries.iter().any(|d| &d.shard == s && d.worker != leaving && d.at > left_at))
        })
        .await;
    eprintln!("taken over after graceful shutdown in {took:?}");
    assert!(took <= Duration::from_secs(10));
    let sent = producer.stop().await;
    drain(&fleet, &sent).await;
    assert!(check_order(&fleet.recorder.deliveries(), &sent).is_empty(), "no duplicates after a graceful shutdown");
    fleet.shutdown_all().await;
}

/// Keys (`prefix{i}`) whose hash falls in each open shard's range, `per_shard` per shard.
async fn keys_per_shard(fleet: &Fleet, prefix: &str, per_shard: usize) -> Vec<(String, Vec<String>)> {
    let shards = fleet.open_shards().await;
    shards
        .iter()
        .map(|s| {
            let keys = (0..)
                .map(|i| format!("{prefix}{i}"))
                .filter(|k| s.hash_key_range.contains(kinesis_core::HashKey::from_partition_key(k)))
                .take(per_shard)
                .collect();
            (s.shard_id.to_string(), keys)
        })
        .collect()
}

async fn a_hot_worker_sheds_leases_by_throughput() {
    use kinesis_core::{Kinesis, PutRecordsEntry};
    let mut fleet = Fleet::new(4).await;
    let shard_keys = keys_per_shard(&fleet, "h", 1).await;
    // Shards 0 and 1 carry ~50 KB/s each, shards 2 and 3 ~1 KB/s.
    let hot: Vec<String> = shard_keys[..2].iter().map(|(s, _)| s.clone()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let kinesis = fleet.kinesis.clone();
        let stream = fleet.stream.clone();
        let stop = stop.clone();
        let shard_keys = shard_keys.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let mut entries = Vec::new();
                for (i, (_, keys)) in shard_keys.iter().enumerate() {
                    let size = if i < 2 { 5_000 } else { 100 };
                    let data = format!("{} {n} {}", keys[0], "x".repeat(size));
                    entries.push(PutRecordsEntry {
                        partition_key: keys[0].clone(),
                        explicit_hash_key: None,
                        data: data.into(),
                    });
                }
                let _ = kinesis.put_records(&stream, entries).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    fleet.start("w1");
    fleet.wait_for(Duration::from_secs(30), "w1 processes all", |f| f.processing()["w1"].len() == 4).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let hot_tp: Vec<f64> = fleet
        .lease_table()
        .await
        .iter()
        .filter(|l| hot.contains(&l.lease_key))
        .map(|l| l.throughput_kbps.unwrap_or(0.0))
        .collect();
    assert!(hot_tp.iter().all(|tp| *tp > 30.0), "hot leases measured: {hot_tp:?}");
    fleet.start("w2");
    let took = fleet
        .wait_for(Duration::from_secs(120), "w1 keeps one hot lease, w2 the rest", |f| {
            let p = f.processing();
            p["w1"].len() == 1 && p.get("w2").is_some_and(|s| s.len() == 3)
        })
        .await;
    let p = fleet.processing();
    eprintln!("balanced by throughput after {took:?}: {p:?}");
    assert!(hot.contains(&p["w1"][0]), "w1 kept a hot lease");
    assert_eq!(p["w2"].iter().filter(|s| hot.contains(s)).count(), 1, "w2 took the other hot lease");
    // And it stays that way: balancing does not oscillate.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fleet.processing(), p);
    stop.cancel();
    let _ = writer.await;
    fleet.shutdown_all().await;
}

/// Regression (lease ping-pong): 3 workers, 4 shards, a burst of `rounds` records on each of
/// 100 keys (so the shards get unequal shares), `size` bytes each, then silence. Once the burst
/// is consumed the 2/1/1 split is balanced, and an idle fleet must leave it alone: the decaying
/// throughput measurements of idle leases are no reason for handoffs.
async fn idle_fleet_keeps_its_leases_after_a_burst(rounds: u64, size: usize) {
    use kinesis_core::{Kinesis, PutRecordsEntry};
    const KEYS: u64 = 100;
    let mut fleet = Fleet::new(4).await;
    fleet.config = fleet.config.clone().with_lease_duration(Duration::from_secs(3));
    for n in 0..rounds {
        let entries: Vec<PutRecordsEntry> = (0..KEYS)
            .map(|k| PutRecordsEntry {
                partition_key: format!("k{k}"),
                explicit_hash_key: None,
                data: format!("k{k} {n} {}", "x".repeat(size)).into(),
            })
            .collect();
        let out = fleet.kinesis.put_records(&fleet.stream, entries).await.expect("put records");
        assert!(out.records.iter().all(Result::is_ok), "burst accepted");
        // Stay under the shards' write limits.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent: std::collections::HashMap<String, u64> = (0..KEYS).map(|k| (format!("k{k}"), rounds)).collect();
    for w in ["w0", "w1", "w2"] {
        fleet.start(w);
    }
    let took = fleet
        .wait_for(Duration::from_secs(60), "the burst consumed on a 2/1/1 split", |f| {
            let mut counts: Vec<usize> = f.processing().values().map(Vec::len).collect();
            counts.sort_unstable();
            counts == [1, 1, 2] && first_deliveries(&f.recorder.deliveries()).len() as u64 >= rounds * KEYS
        })
        .await;
    let settled = fleet.processing();
    let owners = |table: &[kcl::Lease]| -> Vec<(String, Option<String>)> {
        table.iter().map(|l| (l.lease_key.clone(), l.lease_owner.clone())).collect()
    };
    let table = owners(&fleet.lease_table().await);
    let handoffs_before = handoff_requests(&fleet);
    eprintln!("burst consumed after {took:?}: {settled:?}");
    for second in 1..=60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(fleet.processing(), settled, "ownership changed {second} s into the idle period");
    }
    assert_eq!(owners(&fleet.lease_table().await), table, "lease owners unchanged");
    assert_eq!(handoff_requests(&fleet), handoffs_before, "no graceful handoff on an idle fleet");
    assert!(check_order(&fleet.recorder.deliveries(), &sent).is_empty(), "no duplicates");
    fleet.shutdown_all().await;
}

fn handoff_requests(fleet: &Fleet) -> usize {
    fleet
        .recorder
        .events()
        .into_iter()
        .filter(|e| {
            matches!(e, Event::ShutdownRequested { reason: kcl::processor::ShutdownReason::Handoff { .. }, .. })
        })
        .count()
}

async fn an_idle_fleet_keeps_its_leases_after_a_small_burst() {
    // 400 tiny records: about a KB/s per lease while consumed, then decaying towards zero.
    idle_fleet_keeps_its_leases_after_a_burst(4, 1).await;
}

async fn an_idle_fleet_keeps_its_leases_after_a_large_burst() {
    // 4 000 records of 2 KB: hundreds of KB/s per lease while the burst lasts, then silence.
    idle_fleet_keeps_its_leases_after_a_burst(40, 2_000).await;
}

/// A fleet mixing the two lease modes (a rolling switch between them): per-lease workers renew,
/// heartbeat workers do not, and the leader — of either kind — judges each lease by its holder's
/// kind. Nothing fights over leases while the fleet is calm, a dead worker of either kind has
/// its shards processed again within two lease durations, and a dead leader is replaced.
#[tokio::test(start_paused = true)]
async fn a_fleet_mixing_both_lease_modes_shares_shards_without_fights() {
    let mut fleet = Fleet::new(8).await;
    let per_lease = support::default_config().per_lease();
    let heartbeat = support::default_config().worker_heartbeats();
    for (worker, config) in [("w1", &per_lease), ("w2", &heartbeat), ("w3", &per_lease), ("w4", &heartbeat)] {
        fleet.worker_configs.insert(worker.to_owned(), config.clone());
        fleet.start(worker);
    }
    fleet
        .wait_for(Duration::from_secs(60), "8 shards spread 2 per worker", |f| {
            let p = f.processing();
            p.values().map(Vec::len).sum::<usize>() == 8 && p.values().all(|s| s.len() == 2)
        })
        .await;
    // Calm (an idle stream): the assignment stays as it is — a leader taking a heartbeat worker's
    // unrenewed leases for expired, or the reverse, would move them.
    let settled = fleet.processing();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fleet.processing(), settled, "leases moved in a calm mixed fleet");
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 16, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lease_duration = fleet.config.lease_duration;
    let leader = fleet.leader().expect("a leader");
    for victim in ["w1", "w2", "w3", "w4"].into_iter().filter(|w| *w != leader).take(2) {
        let shards = fleet.processing()[victim].clone();
        let killed_at = tokio::time::Instant::now();
        fleet.kill(victim).await;
        let took = fleet
            .wait_for(Duration::from_secs(40), "the victim's shards processed elsewhere", |f| {
                let deliveries = f.recorder.deliveries();
                shards
                    .iter()
                    .all(|s| deliveries.iter().any(|d| &d.shard == s && d.worker != victim && d.at > killed_at))
            })
            .await;
        eprintln!("{victim} failover: {took:?}");
        assert!(took <= lease_duration * 2, "{victim}'s failover took {took:?}");
    }
    let killed_at = tokio::time::Instant::now();
    fleet.kill(&leader).await;
    fleet
        .wait_for(Duration::from_secs(40), "the last worker holds every shard", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == 8 && f.leader().is_some_and(|l| l != leader)
        })
        .await;
    eprintln!("leader failover: {:?}", killed_at.elapsed());
    let sent = producer.stop().await;
    drain(&fleet, &sent).await;
    check_order(&fleet.recorder.deliveries(), &sent);
    fleet.shutdown_all().await;
}

in_both_lease_modes!(
    three_workers_share_eight_shards_evenly,
    killed_worker_shards_move_within_two_lease_durations,
    killed_leader_is_replaced_and_assignment_resumes_within_15s,
    an_added_worker_gets_a_fair_share_through_graceful_handoffs,
    graceful_shutdown_hands_shards_over_without_duplicates,
    a_hot_worker_sheds_leases_by_throughput,
    an_idle_fleet_keeps_its_leases_after_a_small_burst,
    an_idle_fleet_keeps_its_leases_after_a_large_burst,
);
