//! The producer against an endpoint that answers slowly, on paused time: no retry storm (no
//! record expires, almost nothing is stored twice), per-key order by default, no `Ok` for an
//! aggregate nobody could judge, and the records of a panicking pipeline handed back.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{copies, read_stream, record};
use kinesis_core::broker::{BrokerConfig, FaultRule, Operation};
use kinesis_core::{CreateStreamRequest, HashKey, Kinesis, MemoryBroker, ShardId, StreamRef};
use kpl::{DeliveryFuture, ProduceError, Producer, ProducerConfig};

/// Sends `records` records of 100 bytes over `keys` keys, round robin, as fast as the producer
/// takes them; returns the futures by `(key, n)`.
async fn send_all(producer: &Producer, records: u64, keys: u64) -> Vec<((String, u64), DeliveryFuture)> {
    let mut futures = Vec::with_capacity(records as usize);
    for i in 0..records {
        let (key, n) = (format!("k{}", i % keys), i / keys);
        let future = producer.send(record(&key, n, 100)).await.expect("accepted");
        futures.push(((key, n), future));
    }
    futures
}

/// The outcome of each record: `Ok(attempts)` or the error.
async fn outcomes(futures: Vec<((String, u64), DeliveryFuture)>) -> HashMap<(String, u64), Result<u32, ProduceError>> {
    let mut out = HashMap::new();
    for (id, future) in futures {
        out.insert(id, future.await.map(|m| m.attempts()).map_err(|(e, _)| e));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_causes_no_retry_storm() {
    // An emulator's endpoint: no shard limits, but slow.
    let broker = MemoryBroker::with_config(BrokerConfig::default().without_throttling());
    let stream: StreamRef = "slow".into();
    broker.create_stream(CreateStreamRequest::provisioned("slow", 4)).await.expect("create");
    // Every PutRecords takes 2 s plus 1.6 s per MiB: a full request of 5 MiB about 10 s, longer
    // than the 6 s request timeout. What times out is still stored.
    broker.faults().add(
        FaultRule::on(Operation::PutRecords)
            .latency(Duration::from_secs(2))
            .latency_per_mib(Duration::from_millis(1600)),
    );
    let producer = Producer::builder(broker.clone(), stream.clone()).build().await.expect("producer");
    let records = 100_000;
    let futures = send_all(&producer, records, 1000).await;
    producer.flush().await;
    let outcomes = outcomes(futures).await;
    let expired = outcomes.values().filter(|o| matches!(o, Err(ProduceError::Expired { .. }))).count();
    let stats = producer.stats();
    let stored = copies(&read_stream(&broker, &stream).await);
    let duplicates: usize = stored.values().map(|c| c.len().saturating_sub(1)).sum();
    eprintln!(
        "expired {expired}, stored twice or more {duplicates}, retries {}, requests {}",
        stats.retries, stats.put_requests
    );
    assert_eq!(expired, 0, "records expired on a slow endpoint");
    assert!(outcomes.values().all(Result::is_ok), "every record delivered");
    assert_eq!(stored.len() as u64, records, "every record stored");
    assert!(duplicates as u64 <= records / 100, "{duplicates} duplicates: more than 1 % of {records}");
    producer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_keys_records_are_stored_in_send_order_by_default() {
    let broker = MemoryBroker::with_config(BrokerConfig::default().without_throttling());
    let stream: StreamRef = "order".into();
    broker.create_stream(CreateStreamRequest::provisioned("order", 2)).await.expect("create");
    // Requests in flight together finish in any order.
    broker.faults().add(FaultRule::on(Operation::PutRecords).jitter(Duration::from_millis(500)));
    let producer = Producer::builder(broker.clone(), stream.clone()).build().await.expect("producer");
    let futures = send_all(&producer, 20_000, 100).await;
    producer.flush().await;
    let outcomes = outcomes(futures).await;
    let failed: Vec<_> = outcomes.iter().filter(|(_, o)| o.is_err()).take(3).collect();
    assert!(failed.is_empty(), "{} failed, e.g. {failed:?}", outcomes.values().filter(|o| o.is_err()).count());
    let mut inversions = 0;
    for shard in read_stream(&broker, &stream).await {
        let mut last: HashMap<String, u64> = HashMap::new();
        for r in &shard.records {
            let (key, n) = common::header(&r.data).expect("header");
            if last.get(&key).is_some_and(|prev| *prev > n) {
                inversions += 1;
            }
            let entry = last.entry(key).or_insert(n);
            *entry = (*entry).max(n);
        }
    }
    eprintln!("{inversions} inversions, {} requests", producer.stats().put_requests);
    assert_eq!(inversions, 0, "per-key order broken {inversions} times");
    producer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_aggregate_nobody_could_judge_never_resolves_ok() {
    let broker = MemoryBroker::with_config(BrokerConfig::default().without_throttling());
    let stream: StreamRef = "judge".into();
    broker.create_stream(CreateStreamRequest::provisioned("judge", 1)).await.expect("create");
    let config = ProducerConfig::default().record_ttl(Duration::from_secs(3));
    let producer = Producer::builder(broker.clone(), stream.clone()).config(config).build().await.expect("producer");
    // The shard splits behind the producer's back, and ListShards fails from then on: the
    // producer cannot learn the new shards, so it cannot judge where its aggregates landed.
    let parent = ShardId::from_index(0);
    let range = broker.list_all_shards(&stream, None).await.expect("list")[0].hash_key_range;
    broker.split_shard(&stream, &parent, range.midpoint()).await.expect("split");
    broker.faults().add(FaultRule::on(Operation::ListShards).fail_calls("InternalFailure", 1.0));
    let children = broker.list_shards(kinesis_core::ListShardsRequest::new(stream.clone())).await;
    assert!(children.is_err());
    broker.faults().clear();
    let shards = broker.list_all_shards(&stream, None).await.expect("list");
    broker.faults().add(FaultRule::on(Operation::ListShards).fail_calls("InternalFailure", 1.0));
    let range_of = |id: &ShardId| shards.iter().find(|s| &s.shard_id == id).map(|s| s.hash_key_range);
    let futures = send_all(&producer, 40, 40).await;
    producer.flush().await;
    let mut ok_on_a_foreign_shard = 0;
    for ((key, _), future) in futures {
        match future.await {
            Ok(meta) => {
                let range = range_of(meta.shard_id()).expect("a shard of the stream");
                if !range.contains(HashKey::from_partition_key(&key)) {
                    ok_on_a_foreign_shard += 1;
                }
            }
            Err((error, record)) => {
                assert_eq!(record.partition_key(), key, "the record is handed back");
                assert!(matches!(error, ProduceError::Expired { .. }), "{error}");
            }
        }
    }
    assert_eq!(ok_on_a_foreign_shard, 0, "records reported stored on a shard that does not own their key");
    producer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_record_that_may_be_stored_says_so_when_it_expires() {
    let broker = MemoryBroker::with_config(BrokerConfig::default().without_throttling());
    let stream: StreamRef = "maybe".into();
    broker.create_stream(CreateStreamRequest::provisioned("maybe", 1)).await.expect("create");
    // Every write takes 20 s: each attempt times out (at most 6 s), and lands later.
    broker.faults().add(FaultRule::on(Operation::PutRecords).latency(Duration::from_secs(20)));
    let config = ProducerConfig::default().record_ttl(Duration::from_secs(10));
    let producer = Producer::builder(broker.clone(), stream.clone()).config(config).build().await.expect("producer");
    let future = producer.send(record("k", 0, 100)).await.expect("accepted");
    let (error, record) = future.await.expect_err("no attempt is answered within the TTL");
    assert_eq!(record.partition_key(), "k", "the record is handed back");
    assert!(matches!(error, ProduceError::Expired { .. }), "{error}");
    assert!(error.may_be_stored(), "a timed-out attempt may have stored it: {error}");
    assert!(error.to_string().contains("not known to be stored"), "{error}");
    assert!(error.to_string().contains("may have stored it"), "{error}");
    // And it was: the attempts landed after their callers stopped waiting.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let stored = copies(&read_stream(&broker, &stream).await);
    assert!(!stored.is_empty(), "the timed-out writes landed");
    producer.shutdown().await;
}
