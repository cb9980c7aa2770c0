//! The broker's limits, timers and faults on paused tokio time: what the real service does and
//! kinesis-mock does not (throttling, expiry, retention, subscription lifetime).

mod suite;
mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kinesis_core::broker::{BrokerConfig, FaultRule, Operation};
use kinesis_core::sequence::StartingPosition;
use kinesis_core::*;
use suite::{entry, entry_at};
use tokio::time::{Instant, advance, sleep};

async fn broker_with_stream(config: BrokerConfig, shards: u32) -> (MemoryBroker, StreamRef) {
    let broker = MemoryBroker::with_config(config);
    broker.create_stream(CreateStreamRequest::provisioned("s", shards)).await.expect("create");
    (broker, StreamRef::from("s"))
}

fn sized(key: HashKey, bytes: usize) -> PutRecordsEntry {
    PutRecordsEntry { partition_key: "k".into(), explicit_hash_key: Some(key), data: Bytes::from(vec![7u8; bytes - 1]) }
}

/// Offers `per_tick` records every `tick` for `seconds` and returns how many were accepted in
/// each simulated second.
async fn accepted_per_second(
    broker: &MemoryBroker,
    stream: &StreamRef,
    make: impl Fn() -> PutRecordsEntry,
    per_tick: usize,
    tick: Duration,
    seconds: u32,
) -> Vec<usize> {
    let start = Instant::now();
    let mut per_second = vec![0usize; seconds as usize];
    while start.elapsed() < Duration::from_secs(u64::from(seconds)) {
        let second = start.elapsed().as_secs() as usize;
        let out = broker.put_records(stream, (0..per_tick).map(|_| make()).collect()).await.expect("PutRecords");
        for r in &out.records {
            match r {
                Ok(_) => per_second[second] += 1,
                Err(e) => assert!(matches!(e, KinesisError::Throttled { .. }), "only throttling: {e:?}"),
            }
        }
        sleep(tick).await;
    }
    per_second
}

#[tokio::test(start_paused = true)]
async fn write_records_per_second_with_burst() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    // Offer 10,000 records/s of 10 bytes: far above 1000/s, far below 1 MiB/s.
    let counts =
        accepted_per_second(&broker, &stream, || entry("k", "0123456789"), 100, Duration::from_millis(10), 6).await;
    // Second 0: the full bucket (1000) plus one second of refill (about 1000).
    assert!((1900..=2000).contains(&counts[0]), "{counts:?}");
    for &n in &counts[1..] {
        assert!((990..=1010).contains(&n), "steady state is 1000 records/s: {counts:?}");
    }
    assert!(broker.stats().writes_throttled > 0);
}

#[tokio::test(start_paused = true)]
async fn write_bytes_per_second() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    // 100 KiB records: the byte limit (1 MiB/s) binds long before the record limit.
    let counts =
        accepted_per_second(&broker, &stream, || sized(HashKey::MIN, 100 * 1024), 5, Duration::from_millis(100), 5)
            .await;
    assert!((19..=21).contains(&counts[0]), "burst of 1 MiB plus 1 MiB/s: {counts:?}");
    for &n in &counts[1..] {
        assert!((9..=11).contains(&n), "about 10 records of 100 KiB per second: {counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn large_records_burst_then_average_one_mib_per_second() {
    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::provisioned("big", 1).max_record_size_kib(10240)).await.expect("create");
    let stream = StreamRef::from("big");
    let five_mib = || sized(HashKey::MIN, 5 * 1024 * 1024);
    let mut ok = Vec::new();
    for _ in 0..3 {
        // One record per request: two 5 MiB records would already fill the 10 MiB request cap.
        ok.push(broker.put_records(&stream, vec![five_mib()]).await.expect("PutRecords").records[0].is_ok());
    }
    assert_eq!(ok, vec![true, true, false], "a 10 MiB burst, then throttled");
    advance(Duration::from_millis(4900)).await;
    assert!(broker.put_records(&stream, vec![five_mib()]).await.expect("put").records[0].is_err(), "refill is 1 MiB/s");
    advance(Duration::from_millis(200)).await;
    assert!(
        broker.put_records(&stream, vec![five_mib()]).await.expect("put").records[0].is_ok(),
        "5 MiB back after 5 s"
    );

    // A 1 MiB stream refuses records over 1 MiB outright, and nothing is written.
    let (small, s) = broker_with_stream(BrokerConfig::default(), 1).await;
    let err = small
        .put_records(&s, vec![entry("a", "x"), sized(HashKey::MIN, 1024 * 1024 + 1)])
        .await
        .expect_err("too large");
    assert!(matches!(err, KinesisError::InvalidArgument { .. }), "{err:?}");
    assert_eq!(small.retained_records(&s).expect("count"), 0, "the whole request is refused");
}

#[tokio::test(start_paused = true)]
async fn throttled_entries_fail_individually_with_the_service_text() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 2).await;
    // Fill shard 0's record bucket.
    let fill: Vec<_> = (0..500).map(|_| entry_at(HashKey::MIN, "x")).collect();
    broker.put_records(&stream, fill.clone()).await.expect("fill");
    broker.put_records(&stream, fill).await.expect("fill");
    let out = broker
        .put_records(&stream, vec![entry_at(HashKey::MIN, "hot"), entry_at(HashKey::MAX, "cold")])
        .await
        .expect("mixed");
    let err = out.records[0].as_ref().expect_err("hot shard throttled");
    assert_eq!(err.code(), "ProvisionedThroughputExceededException");
    assert_eq!(err.message(), "Rate exceeded for shard shardId-000000000000 in stream s under account 123456789012.");
    assert!(err.is_retryable() && err.is_throttling());
    assert_eq!(out.records[1].as_ref().map(|p| p.shard_id.clone()).ok(), Some(ShardId::from_index(1)));
    assert_eq!(out.failed_record_count(), 1);
    // PutRecord is refused as a whole call.
    let err = broker
        .put_record(PutRecordRequest {
            stream: stream.clone(),
            partition_key: "k".into(),
            explicit_hash_key: Some(HashKey::MIN),
            data: Bytes::from_static(b"x"),
            sequence_number_for_ordering: None,
        })
        .await
        .expect_err("throttled");
    assert!(matches!(err, KinesisError::Throttled { .. }));
}

#[tokio::test(start_paused = true)]
async fn limits_can_be_scaled_or_switched_off() {
    let (scaled, s) = broker_with_stream(BrokerConfig::default().throughput_scale(0.1), 1).await;
    let counts = accepted_per_second(&scaled, &s, || entry("k", "x"), 50, Duration::from_millis(50), 3).await;
    assert!((95..=105).contains(&counts[2]), "a tenth of the limit: {counts:?}");
    let (open, s) = broker_with_stream(BrokerConfig::default().without_throttling(), 1).await;
    let counts = accepted_per_second(&open, &s, || entry("k", "x"), 500, Duration::from_millis(10), 1).await;
    assert_eq!(counts[0], 50_000, "no limit at all");
}

#[tokio::test(start_paused = true)]
async fn reads_are_limited_to_five_calls_per_second() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let iterator = broker
        .get_shard_iterator(&stream, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("iterator");
    for _ in 0..5 {
        broker.get_records(&iterator, None).await.expect("within 5 calls/s");
    }
    let err = broker.get_records(&iterator, None).await.expect_err("sixth call in the same second");
    assert_eq!(err.message(), "Rate exceeded for Shard - 123456789012/s/shardId-000000000000");
    advance(Duration::from_millis(210)).await;
    broker.get_records(&iterator, None).await.expect("one call refilled after 200 ms");
    assert_eq!(broker.stats().reads_throttled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_ten_mib_read_locks_the_shard_out_for_about_five_seconds() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    for _ in 0..10 {
        let out = broker.put_records(&stream, vec![sized(HashKey::MIN, 1024 * 1024 - 1)]).await.expect("put");
        assert_eq!(out.failed_record_count(), 0);
        advance(Duration::from_secs(1)).await;
    }
    let iterator = broker
        .get_shard_iterator(&stream, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("iterator");
    let out = broker.get_records(&iterator, None).await.expect("big read");
    assert_eq!(out.records.len(), 10);
    let next = out.next_shard_iterator.expect("open shard");
    advance(Duration::from_millis(3900)).await;
    assert!(broker.get_records(&next, None).await.expect_err("locked out").is_throttling());
    advance(Duration::from_millis(200)).await;
    broker.get_records(&next, None).await.expect("the debt is repaid at 2 MiB/s");
}

#[tokio::test(start_paused = true)]
async fn iterators_expire_after_five_minutes() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let iterator = broker
        .get_shard_iterator(&stream, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("iterator");
    advance(Duration::from_secs(299)).await;
    let out = broker.get_records(&iterator, None).await.expect("still valid at 299 s");
    advance(Duration::from_secs(2)).await;
    let err = broker.get_records(&iterator, None).await.expect_err("expired at 301 s");
    assert!(matches!(err, KinesisError::ExpiredIterator { .. }), "{err:?}");
    assert!(err.message().starts_with("Iterator expired. The iterator was created at time "), "{err}");
    assert!(err.message().ends_with("which is further in the future than the tolerated delay of 300000 milliseconds."));
    // The iterator handed out by the last read is fresh.
    broker.get_records(&out.next_shard_iterator.expect("next"), None).await.expect("fresh iterator");
    let err = broker.get_records(&ShardIterator::from("not-an-iterator".to_string()), None).await.expect_err("garbage");
    assert_eq!(err.message(), "Invalid ShardIterator.");
}

#[tokio::test(start_paused = true)]
async fn retention_trims_old_records_and_moves_trim_horizon() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    broker.put_records(&stream, vec![entry("k", "old-1"), entry("k", "old-2")]).await.expect("put");
    let old_iterator = broker
        .get_shard_iterator(&stream, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("iterator");
    advance(Duration::from_secs(23 * 3600)).await;
    broker.put_records(&stream, vec![entry("k", "new")]).await.expect("put");
    assert_eq!(broker.retained_records(&stream).expect("count"), 3);
    advance(Duration::from_secs(3600)).await;
    assert_eq!(broker.retained_records(&stream).expect("count"), 1, "records older than 24 h are gone");
    let (records, _) = suite::read_all(&broker, &stream, &ShardId::from_index(0), StartingPosition::TrimHorizon).await;
    assert_eq!(records.iter().map(|r| r.data.clone()).collect::<Vec<_>>(), vec![Bytes::from_static(b"new")]);
    // An iterator into trimmed data continues from the new trim horizon (it expired long ago,
    // so take a fresh one at the old position: AT_SEQUENCE_NUMBER of a trimmed record).
    drop(old_iterator);
    let err = broker.set_retention_period_hours(&stream, 23).expect_err("too short");
    assert_eq!(
        err.message(),
        "Minimum allowed retention period is 24 hours. Requested retention period (23 hours) is too short."
    );
    assert!(broker.set_retention_period_hours(&stream, 8761).is_err());
    broker.set_retention_period_hours(&stream, 48).expect("48 h");
    broker.put_records(&stream, vec![entry("k", "kept")]).await.expect("put");
    advance(Duration::from_secs(30 * 3600)).await;
    assert_eq!(broker.retained_records(&stream).expect("count"), 2, "both younger than 48 h");
    advance(Duration::from_secs(17 * 3600 + 1800)).await;
    assert_eq!(broker.retained_records(&stream).expect("count"), 1, "only the record newer than 48 h");
    assert_eq!(broker.describe_stream_summary(&stream).await.expect("summary").retention_period_hours, 48);
}

#[tokio::test(start_paused = true)]
async fn a_closed_shard_expires_after_the_retention_period() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let parent = ShardId::from_index(0);
    broker.put_records(&stream, vec![entry("k", "in-parent")]).await.expect("put");
    let kept = broker.get_shard_iterator(&stream, &parent, StartingPosition::TrimHorizon).await.expect("iterator");
    broker.split_shard(&stream, &parent, HashKeyRange::FULL.midpoint()).await.expect("split");
    advance(Duration::from_secs(24 * 3600 - 60)).await;
    let listed: Vec<ShardId> =
        broker.list_all_shards(&stream, None).await.expect("list").into_iter().map(|s| s.shard_id).collect();
    assert!(listed.contains(&parent), "closed but within retention: still listed");
    broker.get_shard_iterator(&stream, &parent, StartingPosition::TrimHorizon).await.expect("still readable");
    advance(Duration::from_secs(60)).await;
    let listed: Vec<ShardId> =
        broker.list_all_shards(&stream, None).await.expect("list").into_iter().map(|s| s.shard_id).collect();
    assert_eq!(listed, vec![ShardId::from_index(1), ShardId::from_index(2)], "expired shards are not listed");
    let err = broker.get_shard_iterator(&stream, &parent, StartingPosition::TrimHorizon).await.expect_err("expired");
    assert!(matches!(err, KinesisError::ResourceNotFound { .. }), "{err:?}");
    assert_eq!(err.message(), "Shard shardId-000000000000 in stream s under account 123456789012 does not exist");
    assert!(broker.get_records(&kept, None).await.is_err(), "an old iterator of the expired shard reads nothing");
    let arn = broker.describe_stream_summary(&stream).await.expect("summary").stream_arn;
    let consumer = broker.register_stream_consumer(&arn, "c").await.expect("register").consumer_arn;
    advance(Duration::from_secs(10)).await;
    let subscribed = broker.subscribe_to_shard(&consumer, &parent, StartingPosition::TrimHorizon).await;
    assert!(matches!(subscribed, Err(KinesisError::ResourceNotFound { .. })));
}

#[tokio::test(start_paused = true)]
async fn millis_behind_latest_grows_with_time_while_data_waits() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    broker.put_records(&stream, vec![entry("k", "a"), entry("k", "b")]).await.expect("put");
    advance(Duration::from_secs(10)).await;
    let iterator = broker
        .get_shard_iterator(&stream, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("iterator");
    let first = broker.get_records(&iterator, Some(1)).await.expect("one record");
    assert_eq!(first.millis_behind_latest, Some(10_000), "the unread record is 10 s old");
    advance(Duration::from_secs(5)).await;
    let rest = broker.get_records(first.next_shard_iterator.as_ref().expect("next"), Some(1)).await.expect("read");
    assert_eq!(rest.records.len(), 1);
    assert_eq!(rest.millis_behind_latest, Some(0), "caught up");
}

#[tokio::test(start_paused = true)]
async fn sequence_numbers_have_the_service_layout_and_children_sort_after_parents() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let out = broker.put_records(&stream, (0..5).map(|i| entry("k", &i.to_string())).collect()).await.expect("put");
    let seqs: Vec<SequenceNumber> =
        out.records.iter().map(|r| r.as_ref().expect("ok").sequence_number.clone()).collect();
    assert!(seqs.iter().all(|s| s.as_str().len() == 56));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    broker.split_shard(&stream, &ShardId::from_index(0), HashKeyRange::FULL.midpoint()).await.expect("split");
    let child = broker.put_records(&stream, vec![entry_at(HashKey::MIN, "child")]).await.expect("put");
    let child_seq = child.records[0].as_ref().expect("ok").sequence_number.clone();
    let shards = broker.list_all_shards(&stream, None).await.expect("list");
    let parent_end = shards[0].sequence_number_range.ending.clone().expect("closed");
    assert!(seqs[4] < parent_end && parent_end < child_seq, "parent records < parent end < child records");
    // A sequence number of another shard is refused by GetShardIterator with the service text.
    let err = broker
        .get_shard_iterator(&stream, &ShardId::from_index(1), StartingPosition::AtSequenceNumber(seqs[0].clone()))
        .await
        .expect_err("wrong shard");
    assert_eq!(
        err.message(),
        "Invalid StartingSequenceNumber. It encodes shardId-000000000000, while it was used in a call to a shard with shardId-000000000001"
    );
    let err = broker
        .get_shard_iterator(&stream, &ShardId::from_index(0), StartingPosition::AfterSequenceNumber(parent_end))
        .await
        .expect_err("past the end");
    assert!(err.message().contains("has reached max possible value for the shard"));
}

#[tokio::test(start_paused = true)]
async fn update_shard_count_scales_uniformly_with_lineage() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 4).await;
    for (target, expected_open) in [(8u32, 8usize), (4, 4), (3, 3), (5, 5)] {
        let out = broker.update_shard_count(&stream, target).await.expect("UpdateShardCount");
        assert_eq!(out.target_shard_count, target);
        let open = broker.list_all_shards(&stream, Some(ShardFilter::AtLatest)).await.expect("list");
        assert_eq!(open.len(), expected_open);
        let mut ranges: Vec<_> = open.iter().map(|s| s.hash_key_range).collect();
        ranges.sort();
        assert_eq!(ranges, HashKeyRange::even_split(target), "uniform ranges after scaling to {target}");
        assert!(open.iter().all(|s| s.parents().count() <= 2 && s.parents().count() >= 1));
    }
    let err = broker.update_shard_count(&stream, 11).await.expect_err("more than double");
    assert!(matches!(err, KinesisError::InvalidArgument { .. }));
    let err = broker.update_shard_count(&stream, 2).await.expect_err("less than half");
    assert!(matches!(err, KinesisError::InvalidArgument { .. }));
    // Records written before scaling stay readable in the closed shards.
    broker.put_records(&stream, vec![entry("k", "v")]).await.expect("put");
}

#[tokio::test(start_paused = true)]
async fn a_refused_scaling_does_not_use_up_the_daily_quota() {
    // An account of 100 shards, 94 of them taken: scaling 4 → 8 does not fit.
    let (broker, stream) = broker_with_stream(BrokerConfig { shard_limit: 100, ..BrokerConfig::default() }, 4).await;
    broker.create_stream(CreateStreamRequest::provisioned("big", 90)).await.expect("create");
    for _ in 0..12 {
        let err = broker.update_shard_count(&stream, 8).await.expect_err("over the account's shard limit");
        assert!(matches!(err, KinesisError::LimitExceeded { .. }), "{err:?}");
        assert!(!err.message().contains("10 scaling operations"), "{}", err.message());
    }
    broker.delete_stream(&StreamRef::from("big"), false).await.expect("delete");
    // Ten scalings that go ahead are still allowed (4 → 3 → 4 → …: within the shard limit).
    for i in 0..10 {
        let target = if i % 2 == 0 { 3 } else { 4 };
        broker.update_shard_count(&stream, target).await.expect("a scaling within the quota");
        advance(Duration::from_secs(1)).await;
    }
    let err = broker.update_shard_count(&stream, 3).await.expect_err("the eleventh in 24 hours");
    assert!(err.message().contains("Exceeded the limit of 10 scaling operations"), "{}", err.message());
}

#[tokio::test(start_paused = true)]
async fn on_demand_streams_split_hot_shards() {
    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::on_demand("od")).await.expect("create");
    let stream = StreamRef::from("od");
    assert_eq!(broker.describe_stream_summary(&stream).await.expect("summary").open_shard_count, 4);
    // Hammer one shard with 5,000 records/s for three seconds.
    accepted_per_second(&broker, &stream, || entry_at(HashKey::MIN, "x"), 50, Duration::from_millis(10), 3).await;
    assert!(broker.stats().on_demand_splits >= 1);
    let open = broker.describe_stream_summary(&stream).await.expect("summary").open_shard_count;
    assert!(open > 4, "the hot shard split: {open} open shards");
    let err = broker
        .split_shard(&stream, &ShardId::from_index(1), HashKeyRange::FULL.midpoint())
        .await
        .expect_err("manual reshard");
    assert!(matches!(err, KinesisError::Validation { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_slow_write_lands_even_if_its_caller_stops_waiting() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default().without_throttling(), 1).await;
    // 1 s per call plus 2 s per MiB: a 2 MiB request takes 5 s.
    broker.faults().add(
        FaultRule::on(Operation::PutRecords).latency(Duration::from_secs(1)).latency_per_mib(Duration::from_secs(2)),
    );
    let big: Vec<PutRecordsEntry> = (0..2).map(|i| entry(&format!("k{i}"), &"x".repeat(1024 * 1024 - 3))).collect();
    let started = Instant::now();
    let gave_up = tokio::time::timeout(Duration::from_secs(3), broker.put_records(&stream, big)).await;
    assert!(gave_up.is_err(), "the caller stops waiting after 3 s");
    assert_eq!(broker.retained_records(&stream).expect("count"), 0, "not stored yet");
    sleep(Duration::from_secs(3)).await;
    assert_eq!(broker.retained_records(&stream).expect("count"), 2, "stored at 5 s, answer or not");
    let small = broker.put_records(&stream, vec![entry("k", "small")]).await.expect("put");
    assert_eq!(small.failed_record_count(), 0);
    assert!(started.elapsed() >= Duration::from_secs(7), "the small one took about 1 s too");
    // Jitter: calls made together finish in any order.
    broker.faults().clear();
    broker.faults().add(FaultRule::on(Operation::PutRecords).jitter(Duration::from_secs(1)));
    let calls = (0..20).map(|i| {
        let broker = broker.clone();
        let stream = stream.clone();
        async move {
            broker.put_records(&stream, vec![entry("ordered", &i.to_string())]).await.expect("put");
            i
        }
    });
    let finished: Vec<i32> = futures::stream::iter(calls).buffer_unordered(20).collect().await;
    assert_ne!(finished, (0..20).collect::<Vec<_>>(), "some finish out of order");
}

#[tokio::test(start_paused = true)]
async fn fault_injector_fails_entries_calls_and_throttles_shards() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default().without_throttling(), 2).await;
    broker.faults().add(FaultRule::on(Operation::PutRecords).fail_entries(0.5));
    let out = broker.put_records(&stream, (0..400).map(|i| entry(&format!("k{i}"), "x")).collect()).await.expect("put");
    let failed = out.failed_record_count();
    assert!((140..=260).contains(&failed), "about half fail: {failed}");
    assert!(out.records.iter().filter_map(|r| r.as_ref().err()).all(|e| e.code() == "InternalFailure"));
    assert_eq!(broker.retained_records(&stream).expect("count"), 400 - failed, "failed entries are not stored");
    broker.faults().clear();

    broker.faults().add(FaultRule::on(Operation::PutRecords).on_shard(ShardId::from_index(1)).throttle(1.0));
    let out =
        broker.put_records(&stream, vec![entry_at(HashKey::MIN, "a"), entry_at(HashKey::MAX, "b")]).await.expect("put");
    assert!(out.records[0].is_ok());
    assert!(out.records[1].as_ref().expect_err("forced throttle").is_throttling());
    broker.faults().clear();

    broker.faults().add(
        FaultRule::on(Operation::GetRecords)
            .latency(Duration::from_millis(700))
            .fail_calls("InternalFailure", 1.0)
            .times(1),
    );
    let iterator = broker
        .get_shard_iterator(&stream, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("iterator");
    let start = Instant::now();
    let err = broker.get_records(&iterator, None).await.expect_err("injected failure");
    assert_eq!(start.elapsed(), Duration::from_millis(700), "injected latency");
    assert!(matches!(err, KinesisError::InternalFailure { .. }) && err.is_retryable());
    broker.get_records(&iterator, None).await.expect("the rule fired once");
}

#[tokio::test(start_paused = true)]
async fn validation_errors_use_the_service_texts_and_write_nothing() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let err = broker.put_records(&stream, (0..501).map(|_| entry("k", "x")).collect()).await.expect_err("501 entries");
    assert!(
        matches!(err, KinesisError::Validation { .. }) && err.message().contains("less than or equal to 500"),
        "{err}"
    );
    let err = broker.put_records(&stream, vec![entry("", "x")]).await.expect_err("empty key");
    assert!(err.message().contains("records.1.member.partitionKey"), "{err}");
    let err = broker
        .put_records(&stream, (0..11).map(|_| sized(HashKey::MIN, 1024 * 1024 - 1)).collect())
        .await
        .expect_err("request over 10 MiB");
    assert!(matches!(err, KinesisError::InvalidArgument { .. }), "{err:?}");
    assert_eq!(broker.retained_records(&stream).expect("count"), 0);
    let err = broker.create_stream(CreateStreamRequest::provisioned("s", 1)).await.expect_err("duplicate");
    assert_eq!(err.message(), "Stream s under account 123456789012 already exists.");
    let err = broker.create_stream(CreateStreamRequest::provisioned("bad name!", 1)).await.expect_err("bad name");
    assert!(matches!(err, KinesisError::Validation { .. }));
    let err = broker.describe_stream_summary(&StreamRef::from("nope")).await.expect_err("missing");
    assert_eq!(err.message(), "Stream nope under account 123456789012 not found.");
    let err = broker
        .get_shard_iterator(&stream, &ShardId::from_index(9), StartingPosition::Latest)
        .await
        .expect_err("missing shard");
    assert_eq!(err.message(), "Shard shardId-000000000009 in stream s under account 123456789012 does not exist");
    let err = broker.update_max_record_size(&stream, 20_000).await.expect_err("too big");
    assert!(matches!(err, KinesisError::Validation { .. }));
    broker.update_max_record_size(&stream, 2048).await.expect("2 MiB");
    assert_eq!(broker.describe_stream_summary(&stream).await.expect("summary").max_record_size_kib, 2048);
    let err = broker.create_stream(CreateStreamRequest::provisioned("huge", 5000)).await.expect_err("shard limit");
    assert!(
        matches!(err, KinesisError::LimitExceeded { .. })
            && err.message().starts_with("This request would exceed the shard limit")
    );
}

async fn efo_setup(broker: &MemoryBroker, stream: &StreamRef) -> String {
    let arn = broker.describe_stream_summary(stream).await.expect("summary").stream_arn;
    broker.register_stream_consumer(&arn, "app").await.expect("register").consumer_arn
}

#[tokio::test(start_paused = true)]
async fn subscriptions_last_five_minutes_with_heartbeats() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let consumer = efo_setup(&broker, &stream).await;
    let start = Instant::now();
    let mut events = broker
        .subscribe_to_shard(&consumer, &ShardId::from_index(0), StartingPosition::Latest)
        .await
        .expect("subscribe");
    let mut count = 0;
    let mut delivered = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.expect("event");
        assert!(event.continuation_sequence_number.is_some());
        delivered.extend(event.records.iter().map(|r| r.data.clone()));
        count += 1;
        if count == 3 {
            broker.put_records(&stream, vec![entry("k", "pushed")]).await.expect("put");
        }
    }
    let lifetime = start.elapsed();
    assert!(
        lifetime >= Duration::from_secs(300) && lifetime <= Duration::from_secs(301),
        "ends after 5 minutes: {lifetime:?}"
    );
    assert!(count >= 290, "heartbeats about every second: {count}");
    assert_eq!(delivered, vec![Bytes::from_static(b"pushed")]);
}

#[tokio::test(start_paused = true)]
async fn second_subscription_is_refused_within_five_seconds_then_takes_over() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let consumer = efo_setup(&broker, &stream).await;
    let shard = ShardId::from_index(0);
    let mut first =
        broker.subscribe_to_shard(&consumer, &shard, StartingPosition::TrimHorizon).await.expect("subscribe");
    first.next().await.expect("first event").expect("ok");
    advance(Duration::from_secs(2)).await;
    let err = broker
        .subscribe_to_shard(&consumer, &shard, StartingPosition::TrimHorizon)
        .await
        .err()
        .expect("refused within 5 s");
    assert!(matches!(err, KinesisError::ResourceInUse { .. }), "{err:?}");
    advance(Duration::from_secs(4)).await;
    let mut second = broker
        .subscribe_to_shard(&consumer, &shard, StartingPosition::TrimHorizon)
        .await
        .expect("takes over after 5 s");
    second.next().await.expect("event").expect("ok");
    // The first subscription ends with ResourceInUse.
    let mut ended_in_use = false;
    while let Some(event) = first.next().await {
        if let Err(e) = event {
            ended_in_use = matches!(e, KinesisError::ResourceInUse { .. });
        }
    }
    assert!(ended_in_use);
    // Dropping a subscription releases its slot at once.
    drop(second);
    let _third = broker
        .subscribe_to_shard(&consumer, &shard, StartingPosition::TrimHorizon)
        .await
        .expect("slot released on drop");
}

#[tokio::test(start_paused = true)]
async fn subscription_reaches_the_end_of_a_closed_shard_with_children() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let consumer = efo_setup(&broker, &stream).await;
    broker.put_records(&stream, vec![entry("k", "before-split")]).await.expect("put");
    broker.split_shard(&stream, &ShardId::from_index(0), HashKeyRange::FULL.midpoint()).await.expect("split");
    let mut events = broker
        .subscribe_to_shard(&consumer, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("subscribe");
    let mut records = Vec::new();
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event.expect("ok");
        records.extend(event.records.iter().map(|r| r.data.clone()));
        last = Some(event);
    }
    let last = last.expect("at least one event");
    assert_eq!(records, vec![Bytes::from_static(b"before-split")]);
    assert!(last.continuation_sequence_number.is_none(), "no continuation past the end");
    assert_eq!(last.child_shards.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn efo_reads_are_paced_at_two_mib_per_second_per_consumer() {
    let (broker, stream) = broker_with_stream(BrokerConfig::default(), 1).await;
    let consumer = efo_setup(&broker, &stream).await;
    for _ in 0..12 {
        broker.put_records(&stream, vec![sized(HashKey::MIN, 1024 * 1024 - 1)]).await.expect("put");
        advance(Duration::from_secs(1)).await;
    }
    let start = Instant::now();
    let mut events = broker
        .subscribe_to_shard(&consumer, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("subscribe");
    let mut got = 0;
    while got < 12 {
        got += events.next().await.expect("open").expect("ok").records.len();
    }
    // 12 MiB: 2 MiB at once plus up to 8 MiB of debt, then 2 MiB/s.
    assert!(start.elapsed() >= Duration::from_secs(4), "{:?}", start.elapsed());
}
