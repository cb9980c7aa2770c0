//! On the in-memory broker with its throughput limits on, failed entries, slow calls (some past
//! the request timeout), forced throttling and a shard split mid-run: every accepted record is
//! delivered or fails with its reason, none is lost, none is duplicated beyond its retries, and
//! each partition key's records are stored in send order (the default). Everything is checked
//! by reading the stream back and de-aggregating it with `kinesis_core::aggregation`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{ReadRecord, copies, read_stream, record};
use kinesis_core::broker::{FaultRule, Operation};
use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker, ShardId, StreamRef};
use kpl::{DeliveryFuture, ProduceError, Producer, ProducerConfig, RecordMetadata};

const KEYS: u64 = 50;
const RECORD_BYTES: usize = 200;

struct Run {
    broker: MemoryBroker,
    stream: StreamRef,
    delivered: HashMap<(String, u64), RecordMetadata>,
    failed: HashMap<(String, u64), ProduceError>,
    stats: kpl::ProducerStats,
}

fn id(key: u64, n: u64) -> (String, u64) {
    (format!("k{key}"), n)
}

/// Sends `per_key` records for each of [`KEYS`] keys, round robin, under injected faults, and
/// splits shard 0 once half of them are accepted (after a quarter, three calls become slower
/// than the request timeout).
async fn run(config: ProducerConfig, per_key: u64) -> Run {
    let broker = MemoryBroker::new();
    let stream: StreamRef = "faults".into();
    broker.create_stream(CreateStreamRequest::provisioned("faults", 2)).await.expect("create");
    let faults = broker.faults();
    faults.add(FaultRule::on(Operation::PutRecords).fail_entries(0.1));
    faults.add(FaultRule::on(Operation::PutRecords).latency(Duration::from_millis(30)));
    faults.add(FaultRule::on(Operation::PutRecords).on_shard(ShardId::from_index(1)).throttle(0.2));

    let producer = Producer::builder(broker.clone(), stream.clone()).config(config).build().await.expect("producer");
    let total = KEYS * per_key;
    let mut futures: Vec<((String, u64), DeliveryFuture)> = Vec::new();
    for i in 0..total {
        let (key, n) = (i % KEYS, i / KEYS);
        let future = producer.send(record(&format!("k{key}"), n, RECORD_BYTES)).await.expect("accepted");
        futures.push((id(key, n), future));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if i == total / 4 {
            // Three calls slower than the request timeout.
            broker.faults().add(FaultRule::on(Operation::PutRecords).latency(Duration::from_secs(3)).times(3));
        }
        if i == total / 2 {
            let parent = ShardId::from_index(0);
            let shards = broker.list_all_shards(&stream, None).await.expect("list");
            let range = shards.iter().find(|s| s.shard_id == parent).expect("shard 0").hash_key_range;
            broker.split_shard(&stream, &parent, range.midpoint()).await.expect("split");
        }
    }
    producer.flush().await;

    let mut delivered = HashMap::new();
    let mut failed = HashMap::new();
    for (id, future) in futures {
        match future.await {
            Ok(metadata) => {
                delivered.insert(id, metadata);
            }
            Err((error, record)) => {
                assert_eq!(common::header(record.data()), Some(id.clone()), "the failed record is handed back");
                failed.insert(id, error);
            }
        }
    }
    let stats = producer.stats();
    producer.shutdown().await;
    Run { broker, stream, delivered, failed, stats }
}

fn config() -> ProducerConfig {
    ProducerConfig::default()
        .record_max_buffered_time(Duration::from_millis(50))
        .record_ttl(Duration::from_secs(300))
        .request_timeout(Duration::from_secs(1))
        .shard_map_refresh_interval(Duration::from_secs(2))
}

/// The accounting every run must pass; returns the stream's contents.
async fn check_accounting(run: &Run, total: u64) -> HashMap<(String, u64), Vec<ReadRecord>> {
    let stats = run.stats;
    assert_eq!(run.delivered.len() + run.failed.len(), total as usize, "every accepted record finished");
    assert_eq!(stats.user_records_sent, total);
    assert_eq!((stats.user_records_pending, stats.buffered_bytes), (0, 0));
    assert_eq!(stats.user_records_delivered as usize, run.delivered.len());
    // The faults were felt.
    assert!(stats.throttles > 0, "{stats:?}");
    assert!(stats.errors > stats.throttles, "entry failures too: {stats:?}");
    assert!(stats.retries > 0 && stats.shard_map_refreshes > 0, "{stats:?}");
    for (id, error) in &run.failed {
        // Every injected fault is retryable, so only the TTL can fail a record, with its last
        // error.
        assert!(matches!(error, ProduceError::Expired { last_error: Some(_), .. }), "{id:?}: {error}");
    }

    let contents = read_stream(&run.broker, &run.stream).await;
    assert_eq!(contents.len(), 4, "shard 1, shard 0 and its two children");
    assert_eq!(contents.iter().filter(|s| s.shard.is_closed()).count(), 1);
    assert!(contents.iter().filter(|s| s.shard.is_closed()).all(|s| !s.records.is_empty()));
    assert!(contents.iter().filter(|s| !s.shard.is_closed()).all(|s| !s.records.is_empty()), "children written");
    let copies = copies(&contents);
    let sent: HashSet<(String, u64)> = (0..total).map(|i| id(i % KEYS, i / KEYS)).collect();
    for id in copies.keys() {
        assert!(sent.contains(id), "{id:?} was never sent");
    }
    for (id, metadata) in &run.delivered {
        let found = copies.get(id).map(Vec::as_slice).unwrap_or_default();
        // Delivered where its metadata says, inside that shard's hash range.
        let at = found.iter().find(|r| {
            &r.shard == metadata.shard_id()
                && &r.sequence_number == metadata.sequence_number()
                && r.sub_sequence_number == metadata.sub_sequence_number()
        });
        let at = at.unwrap_or_else(|| panic!("{id:?} not found where its metadata says: {metadata:?}"));
        assert!(at.in_range, "{id:?} stored outside its shard's range");
        // Duplicates only from retries: at most one copy per request that carried it.
        assert!(
            found.len() as u32 <= metadata.attempts(),
            "{id:?}: {} copies, {} attempts",
            found.len(),
            metadata.attempts()
        );
    }
    for (id, error) in &run.failed {
        let found = copies.get(id).map_or(0, Vec::len);
        assert!(found as u32 <= error.attempts(), "{id:?}: {found} copies of a failed record");
    }
    copies
}

#[tokio::test(start_paused = true)]
async fn every_record_is_delivered_or_fails_with_its_reason() {
    let per_key = 200;
    let run = run(config(), per_key).await;
    let copies = check_accounting(&run, KEYS * per_key).await;
    assert!(run.failed.is_empty(), "a 300 s TTL outlives every fault: {} failed", run.failed.len());
    let retried = run.delivered.values().filter(|m| m.attempts() > 1).count();
    assert!(retried > 0, "some records needed retries");
    let duplicated = copies.values().filter(|c| c.len() > 1).count();
    assert!(duplicated <= retried, "{duplicated} duplicated, {retried} retried");
}

#[tokio::test(start_paused = true)]
async fn each_keys_send_order_is_kept_by_default() {
    let per_key = 120;
    let run = run(config(), per_key).await;
    check_accounting(&run, KEYS * per_key).await;

    // What a consumer that filters by hash range (the KCL) sees, parents before children:
    // ignoring repeats, each key's records come in the order they were sent.
    let contents = read_stream(&run.broker, &run.stream).await;
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut checked = 0;
    for shard in &contents {
        for record in shard.records.iter().filter(|r| r.in_range) {
            let (key, n) = common::header(&record.data).expect("header");
            if !seen.insert((key.clone(), n)) {
                continue;
            }
            if let Some(previous) = last.insert(key.clone(), n) {
                assert!(n > previous, "{key}: {n} stored after {previous}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, run.delivered.len(), "every delivered record is in order");
}
