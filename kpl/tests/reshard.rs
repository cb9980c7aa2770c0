//! After the shard map changes, aggregates are split by the new shards: records waiting for a
//! retry are re-packed per shard before they are sent again, and an aggregate stored on a shard
//! that does not own all its records' hash keys has its records sent again to the right shards.
//! Either way every record ends up inside its shard's hash range, where a consumer that filters
//! by range (the KCL) finds it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{copies, read_stream, record};
use kinesis_core::broker::{FaultRule, Operation};
use kinesis_core::{CreateStreamRequest, HashKey, Kinesis, MemoryBroker, Shard, ShardId, StreamRef};
use kpl::{Producer, ProducerConfig, RecordMetadata};

const KEYS: u64 = 40;

async fn one_shard() -> (MemoryBroker, StreamRef) {
    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::provisioned("reshard", 1)).await.expect("create");
    (broker, "reshard".into())
}

async fn split(broker: &MemoryBroker, stream: &StreamRef) -> Vec<Shard> {
    let parent = ShardId::from_index(0);
    let shards = broker.list_all_shards(stream, None).await.expect("list");
    let range = shards.iter().find(|s| s.shard_id == parent).expect("shard 0").hash_key_range;
    broker.split_shard(stream, &parent, range.midpoint()).await.expect("split");
    broker.list_all_shards(stream, None).await.expect("list").into_iter().filter(|s| !s.is_closed()).collect()
}

fn owner(children: &[Shard], key: &str) -> ShardId {
    let hash = HashKey::from_partition_key(key);
    children.iter().find(|s| s.hash_key_range.contains(hash)).expect("children tile the key space").shard_id.clone()
}

/// Sends two records per key (keys spread over the whole key space) and returns the futures.
async fn send_all(producer: &Producer) -> Vec<(String, kpl::DeliveryFuture)> {
    let mut futures = Vec::new();
    for n in 0..2 {
        for key in 0..KEYS {
            let key = format!("key-{key}");
            futures.push((key.clone(), producer.send(record(&key, n, 100)).await.expect("accepted")));
        }
    }
    futures
}

async fn outcomes(futures: Vec<(String, kpl::DeliveryFuture)>) -> Vec<(String, RecordMetadata)> {
    let mut out = Vec::new();
    for (key, future) in futures {
        out.push((key, future.await.map_err(|(error, _)| error).expect("delivered")));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn records_waiting_for_a_retry_are_split_by_the_new_shards() {
    let (broker, stream) = one_shard().await;
    // The first request fails as a whole, so its aggregate waits out a backoff...
    broker.faults().add(FaultRule::on(Operation::PutRecords).fail_calls("InternalFailure", 1.0).times(1));
    let config = ProducerConfig::default()
        .record_max_buffered_time(Duration::from_millis(50))
        .retry_base_delay(Duration::from_secs(3))
        .retry_max_delay(Duration::from_secs(6))
        .shard_map_refresh_interval(Duration::from_secs(1));
    let producer = Producer::builder(broker.clone(), stream.clone()).config(config).build().await.expect("producer");
    let futures = send_all(&producer).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(producer.stats().errors, 1, "the first request failed: {:?}", producer.stats());
    // ...during which the shard splits and the producer's map is refreshed.
    let children = split(&broker, &stream).await;
    let delivered = outcomes(futures).await;

    for (key, metadata) in &delivered {
        assert_eq!(metadata.shard_id(), &owner(&children, key), "{key} went to the shard that owns it");
        assert_eq!(metadata.attempts(), 2, "{key}: the failed attempt and the re-packed one");
    }
    let stats = producer.stats();
    assert_eq!(stats.wrong_shard_resends, 0, "split before re-sending, not after: {stats:?}");
    assert!(stats.shard_map_refreshes >= 1);
    producer.shutdown().await;

    let contents = read_stream(&broker, &stream).await;
    let parent = contents.iter().find(|s| s.shard.is_closed()).expect("the parent");
    assert!(parent.records.is_empty(), "nothing reached the parent");
    for shard in contents.iter().filter(|s| !s.shard.is_closed()) {
        assert!(!shard.records.is_empty(), "{} got its records", shard.shard.shard_id);
        assert!(shard.records.iter().all(|r| r.in_range && r.aggregated), "every sub-record within its shard's range");
    }
    assert!(copies(&contents).values().all(|c| c.len() == 1), "each record stored once");
    assert_eq!(copies(&contents).len(), delivered.len());
}

#[tokio::test(start_paused = true)]
async fn an_aggregate_stored_on_the_wrong_shard_is_sent_again_where_it_belongs() {
    let (broker, stream) = one_shard().await;
    let config = ProducerConfig::default()
        .record_max_buffered_time(Duration::from_millis(50))
        .shard_map_refresh_interval(Duration::from_secs(600));
    let producer = Producer::builder(broker.clone(), stream.clone()).config(config).build().await.expect("producer");
    // The stream splits behind the producer's back: its map still has one shard, so it packs
    // records for both children into one aggregate, which Kinesis stores on one child.
    let children = split(&broker, &stream).await;
    let futures = send_all(&producer).await;
    let delivered = outcomes(futures).await;

    for (key, metadata) in &delivered {
        assert_eq!(metadata.shard_id(), &owner(&children, key), "{key} delivered by the shard that owns it");
    }
    let stats = producer.stats();
    assert!(stats.wrong_shard_resends > 0, "{stats:?}");
    assert!(stats.shard_map_refreshes >= 1, "the unexpected shard triggered a refresh");
    producer.shutdown().await;

    let contents = read_stream(&broker, &stream).await;
    let copies = copies(&contents);
    let by_key: HashMap<&str, &RecordMetadata> = delivered.iter().map(|(k, m)| (k.as_str(), m)).collect();
    let mut out_of_range = 0;
    for ((key, _), found) in &copies {
        let metadata = by_key[key.as_str()];
        assert!(
            found.iter().any(|r| r.in_range && &r.shard == metadata.shard_id()),
            "{key}: an in-range copy where it was delivered"
        );
        out_of_range += found.iter().filter(|r| !r.in_range).count();
    }
    // The mis-stored aggregate holds out-of-range records; all its records were sent again, so
    // each has exactly one extra copy, and nothing else is duplicated.
    assert!(out_of_range > 0);
    let extra: usize = copies.values().map(|c| c.len() - 1).sum();
    assert_eq!(extra as u64, stats.wrong_shard_resends);
    assert_eq!(copies.len(), delivered.len());
}
