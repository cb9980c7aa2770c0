//! The same end-to-end run with polling and with enhanced fan-out: plain records and KPL
//! aggregates (plain and compressed) over two shards and two workers; every in-range user record
//! is delivered once, in per-key order, with its sub-sequence number; sub-records that an
//! aggregate carried into the wrong shard are dropped and counted.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use kcl::RetrievalMode;
use kinesis_core::aggregation::{AggregateBuilder, compression};
use kinesis_core::*;
use support::*;

async fn end_to_end(mode: RetrievalMode) {
    let mut fleet = Fleet::new(2).await;
    fleet.mode = mode;
    fleet.start("w1");
    fleet.start("w2");
    fleet
        .wait_for(Duration::from_secs(30), "both shards processed", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == 2
        })
        .await;
    let shards = fleet.open_shards().await;
    // Per shard, 10 keys that hash into it.
    let keys: Vec<Vec<String>> = shards
        .iter()
        .map(|s| {
            (0..)
                .map(|i| format!("u{i}"))
                .filter(|k| s.hash_key_range.contains(HashKey::from_partition_key(k)))
                .take(10)
                .collect()
        })
        .collect();
    let mut sent: HashMap<String, u64> = HashMap::new();
    let next = |key: &str, sent: &mut HashMap<String, u64>| {
        let n = sent.entry(key.to_owned()).or_insert(0);
        *n += 1;
        Bytes::from(format!("{key} {} payload", *n - 1))
    };
    for round in 0..30 {
        let mut entries = Vec::new();
        for shard_keys in &keys {
            let mut builder = AggregateBuilder::new();
            for key in shard_keys {
                builder.add(key, None, next(key, &mut sent), &[]);
            }
            let aggregate = builder.finish();
            let data = if round % 3 == 2 { compression::compress(&aggregate, 6) } else { aggregate };
            // Routed by its first user record's key, which lies in the shard.
            entries.push(PutRecordsEntry { partition_key: shard_keys[0].clone(), explicit_hash_key: None, data });
            let plain = &shard_keys[round % shard_keys.len()];
            entries.push(PutRecordsEntry {
                partition_key: plain.clone(),
                explicit_hash_key: None,
                data: next(plain, &mut sent),
            });
        }
        let out = fleet.kinesis.put_records(&fleet.stream, entries).await.expect("put");
        assert_eq!(out.failed_record_count(), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // An aggregate built with a stale shard map: half of its user records belong to the other
    // shard. Only those are dropped.
    let mut stale = AggregateBuilder::new();
    let mut expected_stale = HashMap::new();
    for (i, (in_range, out_of_range)) in keys[0].iter().zip(&keys[1]).take(5).enumerate() {
        stale.add(in_range, None, Bytes::from(format!("stale{i} 0 in-range")), &[]);
        expected_stale.insert(format!("stale{i}"), 1u64);
        stale.add(out_of_range, None, Bytes::from(format!("dropped{i} 0 out-of-range")), &[]);
    }
    let out = fleet
        .kinesis
        .put_records(
            &fleet.stream,
            vec![PutRecordsEntry { partition_key: keys[0][0].clone(), explicit_hash_key: None, data: stale.finish() }],
        )
        .await
        .expect("put");
    assert_eq!(out.failed_record_count(), 0);
    sent.extend(expected_stale);
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(60), "every record delivered", |f| f.recorder.deliveries().len() as u64 >= total)
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let deliveries = fleet.recorder.deliveries();
    assert_eq!(deliveries.len() as u64, total, "nothing extra delivered");
    assert!(check_order(&deliveries, &sent).is_empty(), "no duplicates");
    assert!(!deliveries.iter().any(|d| d.key.starts_with("dropped")), "out-of-range sub-records dropped");
    // Sub-sequence numbers: the records of one aggregate count up from 0 in delivery order.
    let mut by_sequence: HashMap<SequenceNumber, Vec<u64>> = HashMap::new();
    for d in deliveries.iter().filter(|d| !d.key.starts_with("stale")) {
        if let Some(seq) = d.position.sequence_number() {
            by_sequence.entry(seq.clone()).or_default().push(d.position.sub_sequence_number());
        }
    }
    let aggregates = by_sequence.values().filter(|subs| subs.len() > 1).count();
    assert_eq!(aggregates, 60, "30 rounds × 2 shards of aggregates");
    for subs in by_sequence.values().filter(|subs| subs.len() > 1) {
        assert_eq!(*subs, (0..subs.len() as u64).collect::<Vec<_>>());
    }
    let stale_subs: Vec<u64> =
        deliveries.iter().filter(|d| d.key.starts_with("stale")).map(|d| d.position.sub_sequence_number()).collect();
    assert_eq!(stale_subs, vec![0, 2, 4, 6, 8], "in-range sub-records keep their positions");
    // Lag was reported and reached the tip.
    for handle in fleet.workers.values() {
        for status in handle.state().shards.values() {
            assert_eq!(status.millis_behind_latest, Some(0));
        }
    }
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn end_to_end_polling() {
    end_to_end(RetrievalMode::Polling).await;
}

#[tokio::test(start_paused = true)]
async fn end_to_end_fan_out() {
    end_to_end(RetrievalMode::FanOut { consumer_name: None }).await;
}

#[tokio::test(start_paused = true)]
async fn fan_out_resubscribes_after_the_five_minute_lifetime() {
    let broker = MemoryBroker::new();
    let mut fleet = Fleet::with_broker(broker.clone(), 1).await;
    let counting = std::sync::Arc::new(CountingKinesis::new(broker));
    fleet.kinesis = counting.clone();
    fleet.mode = RetrievalMode::FanOut { consumer_name: None };
    fleet.start("w1");
    fleet.wait_for(Duration::from_secs(30), "processing", |f| f.processing()["w1"].len() == 1).await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 3, Duration::from_secs(1));
    // Three subscription lifetimes.
    tokio::time::sleep(Duration::from_secs(16 * 60)).await;
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet.wait_for(Duration::from_secs(30), "every record", |f| f.recorder.deliveries().len() as u64 >= total).await;
    assert!(check_order(&fleet.recorder.deliveries(), &sent).is_empty(), "no gaps or duplicates across subscriptions");
    let subscriptions = counting.subscriptions.load(std::sync::atomic::Ordering::SeqCst);
    assert!((4..=6).contains(&subscriptions), "resubscribed at the end of each lifetime ({subscriptions})");
    fleet.shutdown_all().await;
}
