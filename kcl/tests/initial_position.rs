//! Where a new application starts reading: `TRIM_HORIZON`, `LATEST` and `AT_TIMESTAMP`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use kcl::InitialPosition;
use kinesis_core::*;
use support::*;
use tokio::time::sleep;

async fn put(fleet: &Fleet, range: std::ops::Range<u64>) {
    let entries = range
        .map(|n| PutRecordsEntry {
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: Bytes::from(format!("k {n} ")),
        })
        .collect();
    let out = fleet.kinesis.put_records(&fleet.stream, entries).await.expect("put");
    assert_eq!(out.failed_record_count(), 0);
}

fn delivered(fleet: &Fleet) -> Vec<u64> {
    fleet.recorder.deliveries().iter().map(|d| d.n).collect()
}

/// Writes records with `before`, which returns the initial position; starts a worker, writes
/// records 10..15, and returns the counters the processor saw.
async fn run_from(before: impl AsyncFnOnce(&Fleet) -> InitialPosition) -> Vec<u64> {
    let mut fleet = Fleet::new(1).await;
    fleet.initial_position = before(&fleet).await;
    fleet.start("w1");
    fleet.wait_for(Duration::from_secs(30), "the shard processed", |f| f.processing()["w1"].len() == 1).await;
    sleep(Duration::from_secs(2)).await;
    put(&fleet, 10..15).await;
    fleet.wait_for(Duration::from_secs(30), "the new records", |f| delivered(f).contains(&14)).await;
    sleep(Duration::from_secs(5)).await;
    let lease = fleet.lease_table().await.remove(0);
    assert!(!lease.checkpoint.is_sentinel(), "the processor checkpointed past the starting sentinel");
    fleet.shutdown_all().await;
    delivered(&fleet)
}

#[tokio::test(start_paused = true)]
async fn trim_horizon_starts_at_the_oldest_record() {
    let got = run_from(async |fleet| {
        put(fleet, 0..10).await;
        InitialPosition::TrimHorizon
    })
    .await;
    assert_eq!(got, (0..15).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn latest_starts_after_the_records_written_before_the_lease() {
    let got = run_from(async |fleet| {
        put(fleet, 0..10).await;
        InitialPosition::Latest
    })
    .await;
    assert_eq!(got, (10..15).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn at_timestamp_starts_at_the_first_record_at_or_after_the_time() {
    let got = run_from(async |fleet| {
        for n in 0..10 {
            put(fleet, n..n + 1).await;
            sleep(Duration::from_secs(1)).await;
        }
        // The arrival time of record 4: records 4 and later are read.
        let shard = ShardId::from_index(0);
        let records = read_shard(&*fleet.kinesis, &fleet.stream, &shard).await;
        let at = records[4].approximate_arrival_timestamp;
        assert!(records[3].approximate_arrival_timestamp < at);
        InitialPosition::AtTimestamp(at)
    })
    .await;
    assert_eq!(got, (4..15).collect::<Vec<_>>());
}
