//! The behaviour every store implementation must show, as async functions that panic on a
//! deviation. The in-memory stores run them in `kcl/tests/store_conformance.rs`; `kcl-ddb-store`
//! runs the same functions against a DynamoDB peer (moto's server, DynamoDB Local). Use them to check your own implementation.
//!
//! Each function takes a store that starts empty.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kinesis_core::{ExtendedSequenceNumber, HashKeyRange, SequenceNumber};

use super::{CoordinatorStore, LeaseStore, StoreError, WorkerMetrics, WorkerMetricsStore};
use crate::lease::{Lease, WriteToken};

fn seq(n: u128) -> SequenceNumber {
    SequenceNumber::from_u128(n)
}

fn sample_lease(key: &str) -> Lease {
    let mut lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
    lease.parent_shard_ids = vec!["shardId-000000000000".to_owned()];
    lease.hash_key_range = Some(HashKeyRange::FULL);
    lease
}

/// A fresh token for a write whose token the check does not look at.
fn t() -> WriteToken {
    WriteToken::new()
}

fn lost_current(result: Result<Lease, StoreError>) -> Option<Lease> {
    match result {
        Err(StoreError::LeaseLost { current }) => current.map(|b| *b),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

/// Create, read, list; creating twice keeps the first.
pub async fn lease_create_get_list<S: LeaseStore>(store: &S) {
    let lease = sample_lease("shardId-000000000001");
    assert!(store.create_lease_if_not_exists(&lease).await.expect("create"));
    let mut other = lease.clone();
    other.lease_owner = Some("intruder".into());
    assert!(!store.create_lease_if_not_exists(&other).await.expect("create again"), "existing lease kept");
    let read = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert_eq!(read, lease);
    assert!(store.get_lease("shardId-999999999999").await.expect("get").is_none());
    let second = sample_lease("shardId-000000000002");
    store.create_lease_if_not_exists(&second).await.expect("create");
    let mut keys: Vec<_> = store.list_leases().await.expect("list").into_iter().map(|l| l.lease_key).collect();
    keys.sort();
    assert_eq!(keys, vec!["shardId-000000000001", "shardId-000000000002"]);
}

/// Renewal bumps the counter and requires the caller's counter; a stale renewal loses and sees
/// the current item.
pub async fn renew_requires_the_counter<S: LeaseStore>(store: &S) {
    let lease = sample_lease("shardId-000000000003");
    store.create_lease_if_not_exists(&lease).await.expect("create");
    let taken = store.take_lease(&lease, "w1", &t()).await.expect("take");
    assert_eq!(taken.lease_counter, 1);
    let renewed = store.renew_lease(&taken, Some(12.5), &t()).await.expect("renew");
    assert_eq!(renewed.lease_counter, 2);
    assert_eq!(renewed.throughput_kbps, Some(12.5));
    let current = lost_current(store.renew_lease(&taken, None, &t()).await).expect("item returned");
    assert_eq!(current.lease_counter, 2, "the failed condition returns the current item");
    let stored = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert_eq!(stored.lease_counter, 2);
    assert_eq!(stored.lease_owner.as_deref(), Some("w1"));
}

/// Taking counts owner switches and fences the previous owner's checkpoint.
pub async fn take_fences_the_previous_owner<S: LeaseStore>(store: &S) {
    let lease = sample_lease("shardId-000000000004");
    store.create_lease_if_not_exists(&lease).await.expect("create");
    let w1 = store.take_lease(&lease, "w1", &t()).await.expect("w1 takes");
    assert_eq!(w1.owner_switches_since_checkpoint, 1);
    let w2 = store.take_lease(&w1, "w2", &t()).await.expect("w2 takes the expired lease");
    assert_eq!(w2.lease_owner.as_deref(), Some("w2"));
    assert_eq!(w2.owner_switches_since_checkpoint, 2);
    // w1 still thinks it holds the lease: its checkpoint is refused.
    let mut stale = w1.clone();
    stale.checkpoint = ExtendedSequenceNumber::at(seq(100));
    let current = lost_current(store.update_lease(&stale, &t()).await).expect("current item");
    assert_eq!(current.lease_owner.as_deref(), Some("w2"));
    let stored = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert_eq!(stored.checkpoint, ExtendedSequenceNumber::TrimHorizon, "nothing half-written");
}

/// Many workers race to take the same lease with the same view: exactly one wins.
pub async fn concurrent_takers_exactly_one_wins<S: LeaseStore + 'static>(store: Arc<S>) {
    let lease = sample_lease("shardId-000000000005");
    store.create_lease_if_not_exists(&lease).await.expect("create");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let lease = lease.clone();
        tasks.push(tokio::spawn(async move { store.take_lease(&lease, &format!("w{i}"), &t()).await }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(l) => winners.push(l),
            Err(e) => assert!(matches!(e, StoreError::LeaseLost { .. }), "losers see LeaseLost: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one taker wins");
    let stored = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert_eq!(stored.lease_owner, winners[0].lease_owner);
    assert_eq!(stored.lease_counter, 1);
}

/// Checkpoints (plain and prepared, with application state) are conditional on the counter and
/// round-trip exactly; a checkpoint resets owner switches.
pub async fn checkpoints_round_trip<S: LeaseStore>(store: &S) {
    let lease = sample_lease("shardId-000000000006");
    store.create_lease_if_not_exists(&lease).await.expect("create");
    let held = store.take_lease(&lease, "w1", &t()).await.expect("take");
    let mut prepared = held.clone();
    prepared.pending_checkpoint =
        Some(ExtendedSequenceNumber::at_sub(seq(49_590_338_271_490_256_608_559_692_538_361_571), 3));
    prepared.pending_checkpoint_state = Some(Bytes::from_static(b"\x00app-state\xff"));
    let held = store.update_lease(&prepared, &t()).await.expect("prepare");
    let read = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert_eq!(read.pending_checkpoint, prepared.pending_checkpoint);
    assert_eq!(read.pending_checkpoint_state, prepared.pending_checkpoint_state);
    let mut committed = held.clone();
    committed.checkpoint = ExtendedSequenceNumber::at_sub(seq(49_590_338_271_490_256_608_559_692_538_361_571), 3);
    committed.pending_checkpoint = None;
    committed.pending_checkpoint_state = None;
    committed.owner_switches_since_checkpoint = 0;
    let held = store.update_lease(&committed, &t()).await.expect("commit");
    let read = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert_eq!(read.checkpoint, committed.checkpoint);
    assert_eq!(read.checkpoint.sub_sequence_number(), 3);
    assert_eq!(read.pending_checkpoint, None);
    assert_eq!(read.pending_checkpoint_state, None);
    assert_eq!(read.owner_switches_since_checkpoint, 0);
    assert_eq!(read.lease_counter, held.lease_counter);
    let mut finished = held.clone();
    finished.checkpoint = ExtendedSequenceNumber::ShardEnd;
    finished.child_shard_ids = vec!["shardId-000000000010".into(), "shardId-000000000011".into()];
    store.update_lease(&finished, &t()).await.expect("shard end");
    let read = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert!(read.is_finished());
    assert_eq!(read.child_shard_ids, finished.child_shard_ids);
}

/// The leader's graceful handoff: the counter is untouched, the old owner keeps renewing with a
/// view that shows the handoff, and hands the lease over with an assignment.
pub async fn graceful_handoff<S: LeaseStore>(store: &S) {
    let lease = sample_lease("shardId-000000000007");
    store.create_lease_if_not_exists(&lease).await.expect("create");
    let a = store.take_lease(&lease, "a", &t()).await.expect("take");
    let handing = store.initiate_handoff(&a, "b", &t()).await.expect("handoff");
    assert_eq!(handing.lease_owner.as_deref(), Some("b"));
    assert_eq!(handing.checkpoint_owner.as_deref(), Some("a"));
    assert_eq!(handing.lease_counter, a.lease_counter, "handoff does not bump the counter");
    assert!(store.initiate_handoff(&handing, "c", &t()).await.is_err(), "one handoff at a time");
    // A's renewal with its old view fails and shows the handoff...
    let seen = lost_current(store.renew_lease(&a, None, &t()).await).expect("current");
    assert_eq!(seen.checkpoint_owner.as_deref(), Some("a"));
    // ...and with the handoff-aware view it keeps renewing.
    let renewed = store.renew_lease(&seen, None, &t()).await.expect("renew during handoff");
    assert_eq!(renewed.checkpoint_owner.as_deref(), Some("a"));
    // A checkpoints (it is the checkpoint owner), then transfers.
    let done = store.assign_lease(&renewed, "b", &t()).await.expect("transfer");
    assert_eq!(done.lease_owner.as_deref(), Some("b"));
    assert_eq!(done.checkpoint_owner, None);
    assert!(done.lease_counter > renewed.lease_counter);
    // The leader's own assignment with a stale owner view loses.
    assert!(store.assign_lease(&a, "c", &t()).await.is_err());
}

/// Eviction clears the owner and any handoff, conditional on the owner.
pub async fn evict_and_delete<S: LeaseStore>(store: &S) {
    let lease = sample_lease("shardId-000000000008");
    store.create_lease_if_not_exists(&lease).await.expect("create");
    let held = store.take_lease(&lease, "w1", &t()).await.expect("take");
    let mut wrong = held.clone();
    wrong.lease_owner = Some("w9".into());
    assert!(store.evict_lease(&wrong, &t()).await.is_err());
    let evicted = store.evict_lease(&held, &t()).await.expect("evict");
    assert_eq!(evicted.lease_owner, None);
    assert!(evicted.lease_counter > held.lease_counter);
    let mut meta = evicted.clone();
    meta.child_shard_ids = vec!["shardId-000000000020".into()];
    store.update_lease_meta(&meta).await.expect("meta");
    let read = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert_eq!(read.child_shard_ids, meta.child_shard_ids);
    assert_eq!(read.lease_counter, evicted.lease_counter, "meta updates leave the counter alone");
    store.delete_lease(&lease.lease_key).await.expect("delete");
    assert!(store.get_lease(&lease.lease_key).await.expect("get").is_none());
    assert!(store.update_lease_meta(&meta).await.is_err(), "meta update needs the lease to exist");
}

/// Every lease write stores its token, so a writer can recognise its own write in an item later
/// (and only its own): after another writer's write the item shows that writer's token instead.
pub async fn writes_carry_their_token<S: LeaseStore>(store: &S) {
    let lease = sample_lease("shardId-000000000009");
    store.create_lease_if_not_exists(&lease).await.expect("create");
    let took = WriteToken::new();
    let held = store.take_lease(&lease, "w1", &took).await.expect("take");
    assert!(held.shows_write(&took, 1));
    let renewed_with = WriteToken::new();
    let renewed = store.renew_lease(&held, None, &renewed_with).await.expect("renew");
    let read = store.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert!(read.shows_write(&renewed_with, 2), "the stored item carries the renewal's token: {read:?}");
    assert!(!read.shows_write(&took, 1));
    let checkpointed_with = WriteToken::new();
    let mut next = renewed.clone();
    next.checkpoint = ExtendedSequenceNumber::at(seq(7));
    let checkpointed = store.update_lease(&next, &checkpointed_with).await.expect("checkpoint");
    assert!(checkpointed.shows_write(&checkpointed_with, 3));
    // The leader moves the lease: w1's renewal with its old view fails, and the item it gets back
    // shows the leader's write, not one of w1's.
    let assigned_with = WriteToken::new();
    store.assign_lease(&checkpointed, "w2", &assigned_with).await.expect("assign");
    let mine = WriteToken::new();
    let current = lost_current(store.renew_lease(&checkpointed, None, &mine).await).expect("current");
    assert!(current.shows_write(&assigned_with, 4), "{current:?}");
    assert!(!current.shows_write(&mine, 4) && !current.shows_write(&checkpointed_with, 4));
    let handed_with = WriteToken::new();
    let handing = store.initiate_handoff(&current, "w3", &handed_with).await.expect("handoff");
    assert!(handing.shows_write(&handed_with, 4), "a handoff keeps the counter and stores its token");
    let evicted_with = WriteToken::new();
    let evicted = store.evict_lease(&handing, &evicted_with).await.expect("evict");
    assert!(evicted.shows_write(&evicted_with, 5));
}

/// The owner query finds a worker's leases (allowing for an eventually consistent index).
pub async fn lists_keys_by_owner<S: LeaseStore>(store: &S) {
    for i in 0..4 {
        let lease = sample_lease(&format!("shardId-00000000003{i}"));
        store.create_lease_if_not_exists(&lease).await.expect("create");
        store.take_lease(&lease, if i % 2 == 0 { "even" } else { "odd" }, &t()).await.expect("take");
    }
    let mut keys = Vec::new();
    for _ in 0..50 {
        keys = store.list_lease_keys_owned_by("even").await.expect("query");
        keys.sort();
        if keys.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keys, vec!["shardId-000000000030", "shardId-000000000032"]);
    assert!(store.list_lease_keys_owned_by("nobody").await.expect("query").is_empty());
}

/// The leader lock: acquire, refuse a second holder, heartbeat, take over a stale version, release.
pub async fn leader_lock<S: CoordinatorStore>(store: &S) {
    assert!(store.get_lock("Leader").await.expect("get").is_none());
    let held = store.acquire_lock("Leader", "w1", Duration::from_secs(8), None).await.expect("acquire");
    assert_eq!(held.owner, "w1");
    assert!(held.holder_fences_leases, "kcl's leaders fence their leases on the lock");
    assert_eq!(held.lease_duration, Duration::from_secs(8));
    match store.acquire_lock("Leader", "w2", Duration::from_secs(8), None).await {
        Err(StoreError::LockLost { current }) => assert_eq!(current.map(|c| c.owner), Some("w1".to_owned())),
        other => panic!("second acquire must fail: {other:?}"),
    }
    let beat = store.heartbeat_lock(&held).await.expect("heartbeat");
    assert_ne!(beat.record_version, held.record_version);
    let read = store.get_lock("Leader").await.expect("get").expect("held");
    assert!(read.holder_fences_leases, "a heartbeat keeps the marker: {read:?}");
    assert!(store.heartbeat_lock(&held).await.is_err(), "a stale version cannot heartbeat");
    // w2 watched `beat` go stale and takes over with that version.
    let taken = store.acquire_lock("Leader", "w2", Duration::from_secs(8), Some(&beat)).await.expect("take over");
    assert_eq!(taken.owner, "w2");
    assert!(store.heartbeat_lock(&beat).await.is_err(), "the old leader is fenced");
    assert!(store.release_lock(&beat).await.is_err());
    store.release_lock(&taken).await.expect("release");
    let read = store.get_lock("Leader").await.expect("get");
    assert!(read.is_none() || read.is_some_and(|r| r.is_released), "released");
}

/// Worker metrics: upsert, list, conditional delete.
pub async fn worker_metrics<S: WorkerMetricsStore>(store: &S) {
    let mut m = WorkerMetrics {
        metric_stats: [("C".to_owned(), vec![10.0, 20.5, -1.0])].into_iter().collect(),
        operating_range: [("C".to_owned(), vec![100.0])].into_iter().collect(),
        ..WorkerMetrics::new("w1", 1_700_000_000)
    };
    store.put_worker_metrics(&m).await.expect("put");
    m.last_update_secs += 30;
    m.metric_stats.insert("C".into(), vec![30.0]);
    store.put_worker_metrics(&m).await.expect("replace");
    let other = WorkerMetrics { worker_id: "w2".into(), ..m.clone() };
    store.put_worker_metrics(&other).await.expect("put");
    let mut all = store.list_worker_metrics().await.expect("list");
    all.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    assert_eq!(all, vec![m.clone(), other]);
    assert!(store.delete_worker_metrics("w1", 1_700_000_000).await.is_err(), "stale timestamp");
    store.delete_worker_metrics("w1", m.last_update_secs).await.expect("delete");
    assert_eq!(store.list_worker_metrics().await.expect("list").len(), 1);
}

/// Heartbeat rows: a heartbeat keeps the signals others wrote and returns them; a row carrying
/// another incarnation is refused unless replaced explicitly; signals need a heartbeat row; a
/// plain report clears heartbeat and signals; the consistent read sees every write.
pub async fn worker_heartbeats<S: WorkerMetricsStore>(store: &S) {
    use super::{StandbyStamp, WorkerHeartbeat, WorkerSignal, WorkerSignals};
    let heartbeat = |incarnation: &str, beat| WorkerHeartbeat {
        incarnation: incarnation.into(),
        beat,
        lease_changes: 2,
        held_leases: 3,
        throughput_kbps: 12.5,
    };
    let row = |secs, h: WorkerHeartbeat| WorkerMetrics { heartbeat: Some(h), ..WorkerMetrics::new("hb1", secs) };
    assert!(
        matches!(
            store.signal_worker("hb1", &WorkerSignal::Assignments { assigned_leases: 1 }).await,
            Err(StoreError::MetricsConditionFailed)
        ),
        "no row: a signal never creates one"
    );
    let first = store.heartbeat_worker(&row(100, heartbeat("a", 1)), None).await.expect("first heartbeat");
    assert_eq!(first.signals, WorkerSignals::default());
    assert_eq!(first.heartbeat, Some(heartbeat("a", 1)));
    store.signal_worker("hb1", &WorkerSignal::Assignments { assigned_leases: 7 }).await.expect("signal");
    let stamp = StandbyStamp { record_version: "v1".into(), lease_duration: std::time::Duration::from_secs(8) };
    store.signal_worker("hb1", &WorkerSignal::Standby(Some(stamp.clone()))).await.expect("stamp");
    store.signal_worker("hb1", &WorkerSignal::Assignments { assigned_leases: 5 }).await.expect("signal");
    let second = store.heartbeat_worker(&row(102, heartbeat("a", 2)), None).await.expect("second heartbeat");
    assert_eq!(
        second.signals,
        WorkerSignals { assignment_version: 2, assigned_leases: 5, standby: Some(stamp) },
        "the heartbeat returns what the leader wrote"
    );
    assert_eq!(second.last_update_secs, 102);
    let consistent = store.get_worker_metrics("hb1").await.expect("get").expect("exists");
    assert_eq!(consistent, second);
    assert!(store.get_worker_metrics("nobody").await.expect("get").is_none());
    store.signal_worker("hb1", &WorkerSignal::Standby(None)).await.expect("clear the stamp");
    match store.heartbeat_worker(&row(103, heartbeat("b", 1)), None).await {
        Err(StoreError::HeartbeatRowTaken { current }) => {
            assert_eq!(current.and_then(|c| c.heartbeat).map(|h| h.incarnation).as_deref(), Some("a"))
        }
        other => panic!("another incarnation must be refused: {other:?}"),
    }
    let taken = store.heartbeat_worker(&row(104, heartbeat("b", 1)), Some("a")).await.expect("take the row over");
    assert_eq!(taken.signals.assignment_version, 2);
    assert_eq!(taken.signals.standby, None);
    assert!(
        matches!(
            store.heartbeat_worker(&row(105, heartbeat("a", 3)), None).await,
            Err(StoreError::HeartbeatRowTaken { .. })
        ),
        "the old process is shut out"
    );
    store.put_worker_metrics(&WorkerMetrics::new("hb1", 106)).await.expect("plain report");
    let plain = store.get_worker_metrics("hb1").await.expect("get").expect("exists");
    assert_eq!(plain.heartbeat, None);
    assert_eq!(plain.signals, WorkerSignals::default());
    assert!(
        matches!(
            store.signal_worker("hb1", &WorkerSignal::Assignments { assigned_leases: 1 }).await,
            Err(StoreError::MetricsConditionFailed)
        ),
        "a row without a heartbeat takes no signals"
    );
    store.heartbeat_worker(&row(107, heartbeat("c", 1)), None).await.expect("a heartbeat over a plain row");
    store.delete_worker_metrics("hb1", 107).await.expect("delete");
}
