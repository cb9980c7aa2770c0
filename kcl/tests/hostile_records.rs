//! Records no producer should write, read by a worker on paused time: a compressed envelope that
//! inflates a thousandfold, aggregates of hundreds of thousands of empty user records, and reads
//! of more small user records than the prefetch budget holds. None may make a worker allocate
//! without bound: the first two are not expanded (counted in `DeaggregationErrors`), the last is
//! split into batches within the budget.

mod support;

use std::time::Duration;

use bytes::Bytes;
use kinesis_core::aggregation::{AggregateBuilder, MAGIC, compression};
use kinesis_core::*;
use md5::{Digest, Md5};
use support::*;
use tokio::time::sleep;

/// An aggregate of `n` minimal user records (one key, empty data: six bytes each).
fn minimal_aggregate(n: usize) -> Bytes {
    let mut body = vec![0x0a, 0x01, b'k'];
    body.reserve(n * 6);
    for _ in 0..n {
        body.extend_from_slice(&[0x1a, 0x04, 0x08, 0x00, 0x1a, 0x00]);
    }
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(&body);
    data.extend_from_slice(&Md5::digest(&body));
    Bytes::from(data)
}

fn produced(key: &str, n: u64) -> PutRecordsEntry {
    PutRecordsEntry { partition_key: key.into(), explicit_hash_key: None, data: Bytes::from(format!("{key} {n} ")) }
}

#[tokio::test(start_paused = true)]
async fn hostile_aggregates_are_counted_not_expanded() {
    let recorder = TestRecorder::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let broker = MemoryBroker::with_config(kinesis_core::broker::BrokerConfig::default().without_throttling());
    let mut fleet = Fleet::with_broker(broker, 1).await;
    // A stream that takes 10 MiB records.
    fleet.kinesis.update_max_record_size(&fleet.stream, 10240).await.expect("10 MiB records");
    fleet.kinesis.put_records(&fleet.stream, vec![produced("k0", 0)]).await.expect("put");
    // Ten compressed envelopes of about 20 KiB, each inflating to 12 MiB of two million empty
    // user records, in one request.
    let bomb = compression::compress(&minimal_aggregate(2 * 1024 * 1024), 9);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let bombs = (0..10)
        .map(|i| PutRecordsEntry { partition_key: format!("bomb{i}"), explicit_hash_key: None, data: bomb.clone() })
        .collect();
    let out = fleet.kinesis.put_records(&fleet.stream, bombs).await.expect("put");
    assert_eq!(out.failed_record_count(), 0);
    // A plain aggregate of 300,000 empty user records (1.8 MB, within the stream's record size).
    let many =
        PutRecordsEntry { partition_key: "many".into(), explicit_hash_key: None, data: minimal_aggregate(300_000) };
    let out = fleet.kinesis.put_records(&fleet.stream, vec![many]).await.expect("put");
    assert_eq!(out.failed_record_count(), 0);
    fleet.kinesis.put_records(&fleet.stream, vec![produced("k0", 1)]).await.expect("put");

    fleet.start("w1");
    fleet
        .wait_for(Duration::from_secs(60), "the records after the hostile ones delivered", |f| {
            f.recorder.deliveries().iter().any(|d| d.key == "k0" && d.n == 1)
        })
        .await;
    sleep(Duration::from_secs(2)).await;
    let deliveries = fleet.recorder.deliveries();
    assert_eq!(
        deliveries.iter().map(|d| (d.key.as_str(), d.n)).collect::<Vec<_>>(),
        vec![("k0", 0), ("k0", 1)],
        "nothing of the hostile records was delivered"
    );
    assert_eq!(recorder.counter_sum("DeaggregationErrors", "shard="), 11, "each counted once");
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_read_of_many_small_records_is_split_within_the_prefetch_budget() {
    let broker = MemoryBroker::with_config(kinesis_core::broker::BrokerConfig::default().without_throttling());
    let mut fleet = Fleet::with_broker(broker, 1).await;
    fleet.config.max_prefetch_bytes = 1024 * 1024;
    // 20 aggregates of 5,000 user records of 8 bytes: one read of 100,000 user records, about
    // 0.8 MB of data but 14 MB expanded (with the per-record overhead).
    let mut entries = Vec::new();
    let mut n = 0u64;
    for _ in 0..20 {
        let mut builder = AggregateBuilder::new();
        for _ in 0..5000 {
            builder.add("k0", None, Bytes::from(format!("k0 {n} ")), &[]);
            n += 1;
        }
        entries.push(PutRecordsEntry { partition_key: "a".into(), explicit_hash_key: None, data: builder.finish() });
    }
    let out = fleet.kinesis.put_records(&fleet.stream, entries).await.expect("put");
    assert_eq!(out.failed_record_count(), 0);
    fleet.start("w1");
    fleet
        .wait_for(Duration::from_secs(120), "every record delivered", |f| f.recorder.deliveries().len() as u64 >= n)
        .await;
    // Each batch holds at most half the budget of user records, plus the one aggregate that
    // crossed it: the 100,000 records came in many batches, never all at once.
    let batches = fleet.recorder.batches.load(std::sync::atomic::Ordering::SeqCst);
    let per_record = std::mem::size_of::<kcl::KinesisClientRecord>() + 32 + 8;
    let most_per_batch = fleet.config.max_prefetch_bytes / 2 / per_record + 5000;
    assert!(batches as usize >= n as usize / most_per_batch, "{batches} batches for {n} records");
    let sent = [("k0".to_owned(), n)].into_iter().collect();
    check_order(&fleet.recorder.deliveries(), &sent);
    fleet.shutdown_all().await;
}
