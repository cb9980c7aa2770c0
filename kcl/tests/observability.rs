//! Metrics under the KCL's names through the `metrics` facade, observed with a thread-local
//! recorder (the test runs on a current-thread runtime, so every task of the fleet emits on the
//! test's thread). The `tracing` spans are checked in `tracing_spans.rs`, a binary of their own.

mod support;

use std::time::Duration;

use kcl::LeaseStore;
use support::*;
use tokio::time::sleep;

async fn metrics_are_emitted_under_the_kcl_names() {
    let recorder = TestRecorder::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut fleet = Fleet::new(4).await;
    fleet.start("w1");
    fleet.start("w2");
    fleet
        .wait_for(Duration::from_secs(60), "all shards processed", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == 4
        })
        .await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 8, Duration::from_millis(200));
    sleep(Duration::from_secs(5)).await;
    let leader = fleet.leader().expect("a leader");
    let survivor = if leader == "w1" { "w2" } else { "w1" }.to_owned();
    fleet.kill(&leader).await;
    fleet
        .wait_for(Duration::from_secs(60), "the survivor leads and holds every shard", |f| {
            f.leader().as_deref() == Some(survivor.as_str()) && f.processing()[&survivor].len() == 4
        })
        .await;
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(60), "every record delivered", |f| {
            first_deliveries(&f.recorder.deliveries()).len() as u64 >= total
        })
        .await;
    sleep(Duration::from_secs(5)).await;

    // Per shard: records and bytes accepted by the processor, and the lag.
    let deliveries = fleet.recorder.deliveries();
    let processed = recorder.counter_sum("RecordsProcessed", "shard=");
    assert_eq!(processed, deliveries.len() as u64, "RecordsProcessed counts every delivered record");
    let bytes = recorder.counter_sum("DataBytesProcessed", "shard=");
    assert!(bytes >= processed * 40, "DataBytesProcessed counts their data ({bytes} bytes)");
    let lag = recorder.gauge_keys("MillisBehindLatest");
    assert_eq!(lag.len(), 4, "a MillisBehindLatest gauge per shard: {lag:?}");
    assert!(lag.iter().all(|k| recorder.gauge(k) == Some(0.0)), "caught up");

    // Per worker: leases held and taken, renewals, leadership.
    let w = |name: &str, worker: &str| format!("{name}{{worker={worker}}}");
    assert_eq!(recorder.gauge(&w("CurrentLeases", &survivor)), Some(4.0));
    assert!(recorder.counter(&w("TakenLeases", &survivor)) >= 4, "took its own and the dead worker's leases");
    let proofs = match fleet.config.lease_mode {
        kcl::LeaseMode::PerLease => "RenewAllLeases",
        kcl::LeaseMode::WorkerHeartbeat(_) => "WorkerHeartbeats",
    };
    assert!(recorder.counter(&format!("{proofs}{{result=success,worker={survivor}}}")) >= 5, "{proofs}");
    assert_eq!(recorder.counter(&w("LeaderChanges", &leader)), 1);
    assert_eq!(recorder.counter(&w("LeaderChanges", &survivor)), 1, "became leader once, after the kill");
    assert_eq!(recorder.gauge(&w("IsLeader", &survivor)), Some(1.0));
    assert_eq!(recorder.gauge(&w("NumWorkers", &survivor)), Some(1.0));
    assert_eq!(recorder.gauge(&w("TotalLeases", &survivor)), Some(4.0));
    assert!(recorder.counter(&w("NumOfLeasesReassignment", &survivor)) >= 2, "assigned the dead worker's leases");
    assert_eq!(recorder.counter(&w("LostLeases", &survivor)), 0);

    // A lease taken away from the survivor is counted as lost.
    let lease = fleet.lease_table().await.into_iter().find(|l| l.is_owned_by(&survivor)).expect("a lease");
    fleet.leases.take_lease(&lease, "thief", &kcl::lease::WriteToken::new()).await.expect("steal");
    if matches!(fleet.config.lease_mode, kcl::LeaseMode::WorkerHeartbeat(_)) {
        // In heartbeat mode nothing renews the lease: the leader's signal on the worker's row is
        // what sends it to the lease table (as the leader does with every move).
        let signal = kcl::WorkerSignal::Assignments { assigned_leases: 3 };
        kcl::WorkerMetricsStore::signal_worker(&fleet.metrics, &survivor, &signal).await.expect("signal");
    }
    fleet.wait_for(Duration::from_secs(10), "the loss noticed", |f| f.processing()[&survivor].len() == 3).await;
    assert_eq!(recorder.counter(&w("LostLeases", &survivor)), 1);
    fleet.shutdown_all().await;
}

in_both_lease_modes!(metrics_are_emitted_under_the_kcl_names);
