//! The consumer's promises under faults, on paused tokio time: a stalled or slow lease store,
//! lost replies, dead workers and leaders, malformed leases, expired parents. Each test is the
//! regression test of one defect of issue 12. Every test runs in both lease modes (per-lease
//! renewal and worker heartbeats, issue 14): a module per test holds the two.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kcl::store::LeaseStore;
use kcl::store::faults::{StoreFaultRule, StoreOperation};
use kcl::{Lease, LeaseMode, SchedulerConfig};
use kinesis_core::{ExtendedSequenceNumber, Kinesis, ShardId};
use support::*;
use tokio::time::{Instant, sleep};

/// A fleet of `workers` on `shards` shards, every shard processed.
async fn processing_fleet(config: &SchedulerConfig, shards: u32, workers: &[&str]) -> Fleet {
    let mut fleet = Fleet::new(shards).await;
    fleet.config = config.clone();
    for w in workers {
        fleet.start(w);
    }
    fleet
        .wait_for(Duration::from_secs(60), "every shard processed", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == shards as usize
        })
        .await;
    fleet
}

/// The worker processing `shard`, if any.
fn holder(fleet: &Fleet, shard: &str) -> Option<String> {
    fleet.processing().into_iter().find(|(_, shards)| shards.iter().any(|s| s == shard)).map(|(w, _)| w)
}

/// A worker other than the leader that processes at least one shard.
fn busy_follower(fleet: &Fleet) -> String {
    let leader = fleet.leader().expect("a leader");
    fleet.processing().into_iter().find(|(w, s)| *w != leader && !s.is_empty()).map(|(w, _)| w).expect("a follower")
}

/// Cuts `victim` off the lease table in the way `rule` says at once, and checks that it delivers
/// nothing of its shards once a lease duration has passed since (its last renewal was before the
/// cut), while another worker takes the shards over.
async fn cut_off_from_the_lease_table(config: &SchedulerConfig, rule: impl Fn(StoreOperation) -> StoreFaultRule) {
    let fleet = processing_fleet(config, 2, &["w1", "w2"]).await;
    // What proves the worker alive: its lease writes, or its heartbeat.
    let rule = rule(liveness_calls(config));
    // Processors that do not checkpoint every batch go on processing while only the renewals
    // wait for the store.
    fleet.recorder.behavior(|b| b.checkpoint_every = 0);
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 8, Duration::from_millis(100));
    sleep(Duration::from_secs(5)).await;
    let victim = busy_follower(&fleet);
    let shards = fleet.processing()[&victim].clone();
    let cut_at = Instant::now();
    fleet.faults(&victim).add(rule);
    let lease_duration = fleet.config.lease_duration;
    fleet
        .wait_for(Duration::from_secs(60), "the victim's shards processed by the other worker", |f| {
            let deliveries = f.recorder.deliveries();
            shards.iter().all(|s| deliveries.iter().any(|d| &d.shard == s && d.worker != victim && d.at > cut_at))
        })
        .await;
    // Let the victim run on for a while: a worker that ignores its lease expiry would go on
    // delivering from its prefetched and newly read batches.
    sleep(Duration::from_secs(30)).await;
    let late: Vec<Delivery> = fleet
        .recorder
        .deliveries()
        .into_iter()
        .filter(|d| d.worker == victim && shards.contains(&d.shard) && d.at >= cut_at + lease_duration)
        .collect();
    assert!(
        late.is_empty(),
        "{} records delivered by {victim} after its lease expired on its own clock; first {:?} ({:?} after the cut)",
        late.len(),
        late[0],
        late[0].at - cut_at
    );
    assert!(fleet.processing()[&victim].is_empty(), "the victim holds none of its shards any more");
    drop(producer);
}

/// The store calls that keep a worker's leases: the lease table's in per-lease mode, the
/// heartbeat in heartbeat mode.
fn liveness_calls(config: &SchedulerConfig) -> StoreOperation {
    match config.lease_mode {
        LeaseMode::PerLease => StoreOperation::AnyLease,
        LeaseMode::WorkerHeartbeat(_) => StoreOperation::HeartbeatWorker,
    }
}

async fn a_worker_whose_lease_store_hangs_stops_before_its_shards_move(config: SchedulerConfig) {
    cut_off_from_the_lease_table(&config, |calls| StoreFaultRule::on(calls).hang()).await;
}

async fn a_worker_whose_lease_store_answers_too_late_stops_before_its_shards_move(config: SchedulerConfig) {
    // Every call is served, but 30 s late: longer than the lease (a throttled client retrying).
    cut_off_from_the_lease_table(&config, |calls| StoreFaultRule::on(calls).latency(Duration::from_secs(30))).await;
}

async fn a_lost_reply_to_a_checkpoint_does_not_lose_the_lease(config: SchedulerConfig) {
    let fleet = processing_fleet(&config, 1, &["w1"]).await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 4, Duration::from_millis(100));
    sleep(Duration::from_secs(3)).await;
    // Half of w1's checkpoints land but lose their replies.
    fleet.faults("w1").add(StoreFaultRule::on(StoreOperation::UpdateLease).lose_reply().probability(0.5).times(20));
    sleep(Duration::from_secs(20)).await;
    assert!(fleet.faults("w1").fired() > 0);
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(30), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= total
        })
        .await;
    let lost: Vec<Event> =
        fleet.recorder.events().into_iter().filter(|e| matches!(e, Event::LeaseLost { .. })).collect();
    assert!(lost.is_empty(), "a checkpoint that landed was taken for a lost lease: {lost:?}");
    assert_eq!(fleet.recorder.failures.load(std::sync::atomic::Ordering::SeqCst), 0);
    // A checkpoint whose every attempt lost its reply fails the batch, which is delivered again
    // by the same worker: never a loss, never a failover.
    let duplicates = check_order(&fleet.recorder.deliveries(), &sent);
    assert!(duplicates.iter().all(|d| d.worker == "w1" && d.attempt > 1), "redeliveries only: {duplicates:?}");
    let lease = &fleet.lease_table().await[0];
    assert!(lease.is_owned_by("w1"));
    let last = fleet.recorder.deliveries().last().map(|d| d.position.clone()).expect("deliveries");
    assert_eq!(lease.checkpoint, last, "the last checkpoint stands");
}

/// The leases `worker` owns, by key, with their counters.
fn owned_by(leases: &[Lease], worker: &str) -> HashMap<String, u64> {
    leases.iter().filter(|l| l.is_owned_by(worker)).map(|l| (l.lease_key.clone(), l.lease_counter)).collect()
}

/// Kills `victim` and waits until each of `shards` is processed by another worker. Fails when a
/// lease is given to the victim after its death. Returns the failover time.
async fn kill_and_time_failover(fleet: &mut Fleet, victim: &str, shards: &[String]) -> Duration {
    let at_kill = owned_by(&fleet.leases_snapshot(), victim);
    let killed_at = Instant::now();
    fleet.kill(victim).await;
    let victim = victim.to_owned();
    fleet
        .wait_for(Duration::from_secs(60), "the victim's shards processed elsewhere", |f| {
            for (key, counter) in owned_by(&f.leases_snapshot(), &victim) {
                assert_eq!(
                    at_kill.get(&key),
                    Some(&counter),
                    "lease {key} was given to the dead worker {victim} {:?} after its death",
                    killed_at.elapsed()
                );
            }
            shards.iter().all(|s| holder(f, s).is_some_and(|w| w != victim))
        })
        .await;
    killed_at.elapsed()
}

async fn a_dead_workers_leases_never_go_back_to_it_and_move_within_one_and_a_half_lease_durations(
    config: SchedulerConfig,
) {
    let mut failovers = Vec::new();
    // Kill times spread over the renewal (3.3 s) and metrics (2 s) periods of an idle fleet.
    for offset in 0..40u64 {
        let mut fleet = processing_fleet(&config, 4, &["w1", "w2", "w3"]).await;
        sleep(Duration::from_secs(12) + Duration::from_millis(offset * 167)).await;
        let victim = busy_follower(&fleet);
        let shards = fleet.processing()[&victim].clone();
        let took = kill_and_time_failover(&mut fleet, &victim, &shards).await;
        failovers.push(took);
        fleet.shutdown_all().await;
    }
    failovers.sort();
    let lease_duration = config.lease_duration;
    eprintln!("worker failover: min {:?}, max {:?}", failovers[0], failovers[failovers.len() - 1]);
    let worst = failovers[failovers.len() - 1];
    assert!(worst <= lease_duration * 3 / 2, "a worker failover took {worst:?}: {failovers:?}");
}

async fn a_killed_leaders_shards_move_within_15s(config: SchedulerConfig) {
    let mut failovers = Vec::new();
    for offset in 0..20u64 {
        let mut fleet = processing_fleet(&config, 4, &["w1", "w2", "w3"]).await;
        sleep(Duration::from_secs(12) + Duration::from_millis(offset * 211)).await;
        let leader = fleet.leader().expect("a leader");
        let shards = fleet.processing()[&leader].clone();
        assert!(!shards.is_empty(), "the leader processes shards too");
        let took = kill_and_time_failover(&mut fleet, &leader, &shards).await;
        assert!(fleet.leader().is_some(), "a new leader");
        failovers.push(took);
        fleet.shutdown_all().await;
    }
    failovers.sort();
    eprintln!("leader failover: min {:?}, max {:?}", failovers[0], failovers[failovers.len() - 1]);
    let worst = failovers[failovers.len() - 1];
    assert!(worst <= Duration::from_secs(15), "moving a dead leader's shards took {worst:?}: {failovers:?}");
}

async fn a_leader_killed_during_a_worker_failover_resumes_assignment_within_15s(config: SchedulerConfig) {
    for offset in 0..10u64 {
        let mut fleet = processing_fleet(&config, 6, &["w1", "w2", "w3", "w4"]).await;
        sleep(Duration::from_secs(12) + Duration::from_millis(offset * 331)).await;
        let leader = fleet.leader().expect("a leader");
        let worker = busy_follower(&fleet);
        let leader_shards = fleet.processing()[&leader].clone();
        fleet.kill(&worker).await;
        sleep(Duration::from_secs(3)).await;
        // The leader dies while the worker's leases are expiring on its view.
        let took = kill_and_time_failover(&mut fleet, &leader, &leader_shards).await;
        assert!(took <= Duration::from_secs(15), "offset {offset}: the dead leader's shards moved after {took:?}");
        fleet
            .wait_for(Duration::from_secs(60), "every shard processed again", |f| {
                f.processing().values().map(Vec::len).sum::<usize>() == 6
            })
            .await;
        fleet.shutdown_all().await;
    }
}

async fn a_leader_cut_off_from_the_lock_stops_its_shards_before_they_move(config: SchedulerConfig) {
    let fleet = processing_fleet(&config, 4, &["w1", "w2", "w3"]).await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 8, Duration::from_millis(100));
    sleep(Duration::from_secs(5)).await;
    let leader = fleet.leader().expect("a leader");
    let shards = fleet.processing()[&leader].clone();
    // The leader's calls to the coordinator table hang; its lease table still answers.
    let cut_at = Instant::now();
    fleet.faults(&leader).add(StoreFaultRule::on(StoreOperation::AnyLock).hang());
    let took = fleet
        .wait_for(Duration::from_secs(40), "the old leader's shards processed elsewhere", |f| {
            let deliveries = f.recorder.deliveries();
            shards.iter().all(|s| deliveries.iter().any(|d| &d.shard == s && d.worker != leader && d.at > cut_at))
        })
        .await;
    assert!(took <= Duration::from_secs(15), "the cut-off leader's shards moved after {took:?}");
    let new_leader = fleet.leader().expect("a new leader");
    assert_ne!(new_leader, leader);
    // Its last heartbeat was sent before the cut: it stopped its shards within the lock's lease.
    let lock_duration = fleet.config.leader_lock_duration;
    let late = fleet
        .recorder
        .deliveries()
        .into_iter()
        .filter(|d| d.worker == leader && shards.contains(&d.shard) && d.at >= cut_at + lock_duration)
        .count();
    assert_eq!(late, 0, "records delivered by the fenced leader after its fence");
    drop(producer);
}

async fn a_lease_key_that_names_no_shard_is_never_processed(config: SchedulerConfig) {
    let mut fleet = Fleet::new(1).await;
    fleet.config = config.clone();
    // A multi-stream lease key (`account:stream:creation:shard`) with a long stream name: longer
    // than any shard id can be, and not of a shard id's characters.
    let key = format!("123456789012:{}:1700000000:shardId-000000000000", "orders-".repeat(18));
    let bogus = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
    fleet.leases.create_lease_if_not_exists(&bogus).await.expect("create");
    fleet.start("w1");
    fleet.start("w2");
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 4, Duration::from_millis(200));
    sleep(Duration::from_secs(30)).await;
    let sent = producer.stop().await;
    sleep(Duration::from_secs(5)).await;
    for (worker, handle) in &fleet.workers {
        assert!(!handle.state().shards.contains_key(&bogus.lease_key), "{worker} took the lease of no shard");
    }
    let duplicates = check_order(&fleet.recorder.deliveries(), &sent);
    assert!(duplicates.is_empty(), "shard 0 was read twice: {} duplicates", duplicates.len());
    let stored = fleet.leases.get_lease(&bogus.lease_key).await.expect("get").expect("kept");
    assert_eq!((stored.lease_owner, stored.lease_counter), (None, 0), "never assigned");
    fleet.shutdown_all().await;
}

async fn a_parent_expired_past_retention_does_not_block_its_children(config: SchedulerConfig) {
    let mut fleet = Fleet::new(1).await;
    fleet.config = config.clone();
    fleet.initial_position = kcl::InitialPosition::Latest;
    fleet.start("w1");
    fleet.wait_for(Duration::from_secs(30), "the shard processed", |f| f.processing()["w1"].len() == 1).await;
    // The application stops; the shard splits; the application stays down past the retention
    // period, so the parent expires with its lease unfinished.
    fleet.shutdown("w1").await;
    let parent = ShardId::from_index(0);
    let range = fleet.open_shards().await[0].hash_key_range;
    fleet.kinesis.split_shard(&fleet.stream, &parent, range.midpoint()).await.expect("split");
    sleep(Duration::from_secs(25 * 3600)).await;
    assert!(
        fleet.kinesis.list_all_shards(&fleet.stream, None).await.expect("list").iter().all(|s| s.shard_id != parent)
    );
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 8, Duration::from_millis(200));
    sleep(Duration::from_secs(1)).await;
    fleet.start("w2");
    let sent_so_far = producer.total();
    fleet
        .wait_for(Duration::from_secs(60), "the children's records delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= sent_so_far
        })
        .await;
    let sent = producer.stop().await;
    fleet
        .wait_for(Duration::from_secs(30), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= sent.values().sum::<u64>()
        })
        .await;
    // Every record written after the parent expired is delivered, in order, from the very first
    // one: the children started at TRIM_HORIZON although the application starts at LATEST.
    check_order(&fleet.recorder.deliveries(), &sent);
    let parent_lease = fleet.leases.get_lease(parent.as_str()).await.expect("get");
    assert!(parent_lease.as_ref().is_none_or(Lease::is_finished), "the expired parent ended: {parent_lease:?}");
    fleet.shutdown_all().await;
}

async fn a_lease_whose_shard_no_longer_exists_is_cleaned_up(config: SchedulerConfig) {
    let mut fleet = Fleet::new(1).await;
    fleet.config = config.clone();
    let garbage = Lease::new(ShardId::from_index(99).as_str(), ExtendedSequenceNumber::TrimHorizon);
    fleet.leases.create_lease_if_not_exists(&garbage).await.expect("create");
    fleet.start("w1");
    let delay = fleet.config.garbage_lease_cleanup_delay;
    let took = fleet
        .wait_for(delay + Duration::from_secs(300), "the garbage lease deleted", |f| {
            f.leases_snapshot().iter().all(|l| l.lease_key != garbage.lease_key)
        })
        .await;
    // Missing from the first listing on, deleted at the first shard sync a full delay later.
    let sync = fleet.config.shard_sync_interval;
    assert!(took >= delay && took <= delay + sync * 2, "deleted after {took:?} (delay {delay:?})");
    assert!(
        fleet.leases_snapshot().iter().any(|l| l.lease_key == ShardId::from_index(0).as_str()),
        "the real lease stays"
    );
    fleet.shutdown_all().await;
}

/// Runs each named test once per lease mode: `<name>::per_lease` and `<name>::heartbeat`.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(start_paused = true)]
                async fn per_lease() {
                    super::$name(super::support::test_config().per_lease()).await;
                }

                #[tokio::test(start_paused = true)]
                async fn heartbeat() {
                    super::$name(super::support::test_config().worker_heartbeats()).await;
                }
            }
        )*
    };
}

in_both_modes!(
    a_worker_whose_lease_store_hangs_stops_before_its_shards_move,
    a_worker_whose_lease_store_answers_too_late_stops_before_its_shards_move,
    a_lost_reply_to_a_checkpoint_does_not_lose_the_lease,
    a_dead_workers_leases_never_go_back_to_it_and_move_within_one_and_a_half_lease_durations,
    a_killed_leaders_shards_move_within_15s,
    a_leader_killed_during_a_worker_failover_resumes_assignment_within_15s,
    a_leader_cut_off_from_the_lock_stops_its_shards_before_they_move,
    a_lease_key_that_names_no_shard_is_never_processed,
    a_parent_expired_past_retention_does_not_block_its_children,
    a_lease_whose_shard_no_longer_exists_is_cleaned_up,
);
