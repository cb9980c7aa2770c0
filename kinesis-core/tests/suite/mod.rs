//! One behaviour suite, two backends: every function here runs against the in-memory broker
//! (`broker_suite.rs`) and against kinesis-mock through `AwsKinesis` (`aws_kinesis_mock.rs`).
//! Behaviours kinesis-mock does not implement (throttling, expiry on paused time, retention)
//! are tested on the broker alone in `broker_limits.rs`.

#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use kinesis_core::sequence::StartingPosition;
use kinesis_core::*;

use crate::support;

pub async fn new_stream<K: Kinesis>(kinesis: &K, prefix: &str, shards: u32) -> StreamRef {
    let name = support::unique_name(prefix);
    kinesis.create_stream(CreateStreamRequest::provisioned(&name, shards)).await.expect("CreateStream");
    let stream = StreamRef::from(name.as_str());
    let summary =
        kinesis.wait_for_stream_active(&stream, Duration::from_secs(30)).await.expect("stream becomes ACTIVE");
    assert_eq!(summary.open_shard_count, shards);
    assert_eq!(summary.stream_name, name);
    stream
}

pub fn entry(key: &str, data: &str) -> PutRecordsEntry {
    PutRecordsEntry { partition_key: key.to_owned(), explicit_hash_key: None, data: Bytes::from(data.to_owned()) }
}

pub fn entry_at(key: HashKey, data: &str) -> PutRecordsEntry {
    PutRecordsEntry { partition_key: "k".to_owned(), explicit_hash_key: Some(key), data: Bytes::from(data.to_owned()) }
}

/// `GetRecords`, waiting and retrying when the shard's read limit throttles the call (as any
/// consumer must: the broker enforces 5 calls/s per shard).
pub async fn get_records<K: Kinesis>(kinesis: &K, iterator: &ShardIterator, limit: Option<u32>) -> GetRecordsOutput {
    for _ in 0..100 {
        match kinesis.get_records(iterator, limit).await {
            Ok(out) => return out,
            Err(e) if e.is_throttling() => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => panic!("GetRecords: {e:?}"),
        }
    }
    panic!("GetRecords stayed throttled");
}

/// Reads a shard from `position` until an empty read at the tip, or the end of a closed shard.
/// Returns the records and the last response.
pub async fn read_all<K: Kinesis>(
    kinesis: &K,
    stream: &StreamRef,
    shard: &ShardId,
    position: StartingPosition,
) -> (Vec<Record>, GetRecordsOutput) {
    let mut iterator = kinesis.get_shard_iterator(stream, shard, position).await.expect("GetShardIterator");
    let mut records = Vec::new();
    loop {
        let out = get_records(kinesis, &iterator, Some(1000)).await;
        let empty = out.records.is_empty();
        records.extend(out.records.iter().cloned());
        match &out.next_shard_iterator {
            Some(next) if !empty && out.child_shards.is_empty() => iterator = next.clone(),
            _ => return (records, out),
        }
    }
}

/// Reads a closed shard to its end: the end response has no iterator and names the children.
pub async fn read_to_end<K: Kinesis>(
    kinesis: &K,
    stream: &StreamRef,
    shard: &ShardId,
) -> (Vec<Bytes>, GetRecordsOutput) {
    let mut iterator =
        kinesis.get_shard_iterator(stream, shard, StartingPosition::TrimHorizon).await.expect("iterator");
    let mut records = Vec::new();
    for _ in 0..1000 {
        let out = get_records(kinesis, &iterator, None).await;
        records.extend(out.records.iter().map(|r| r.data.clone()));
        match &out.next_shard_iterator {
            Some(next) if out.child_shards.is_empty() => iterator = next.clone(),
            _ => return (records, out),
        }
    }
    panic!("closed shard {shard} never reached its end");
}

fn data(records: &[Record]) -> Vec<Bytes> {
    records.iter().map(|r| r.data.clone()).collect()
}

async fn wait_for_shard_count<K: Kinesis>(kinesis: &K, stream: &StreamRef, count: usize) -> Vec<Shard> {
    let mut shards = Vec::new();
    for _ in 0..100 {
        shards = kinesis.list_all_shards(stream, None).await.expect("ListShards");
        if shards.len() == count {
            return shards;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected {count} shards, have {shards:?}");
}

pub async fn lists_shards_with_paging_and_filters<K: Kinesis>(kinesis: &K) {
    let stream = new_stream(kinesis, "paging", 5).await;
    let first = kinesis.list_shards(ListShardsRequest::new(stream.clone()).max_results(2)).await.expect("page 1");
    assert_eq!(first.shards.len(), 2);
    let token = first.next_token.clone().expect("a second page exists");
    let second = kinesis
        .list_shards(ListShardsRequest::new(stream.clone()).max_results(2).next_token(token))
        .await
        .expect("page 2");
    assert_eq!(second.shards.len(), 2);
    let token = second.next_token.clone().expect("a third page exists");
    let third = kinesis
        .list_shards(ListShardsRequest::new(stream.clone()).max_results(2).next_token(token))
        .await
        .expect("page 3");
    assert_eq!(third.shards.len(), 1);
    assert!(third.next_token.is_none(), "no page after the last shard");

    let all = kinesis.list_all_shards(&stream, None).await.expect("all shards");
    let paged: Vec<_> = first.shards.iter().chain(&second.shards).chain(&third.shards).cloned().collect();
    assert_eq!(all, paged);
    assert_eq!(all.len(), 5);
    for (shard, range) in all.iter().zip(HashKeyRange::even_split(5)) {
        assert_eq!(shard.hash_key_range, range, "{}", shard.shard_id);
        assert!(!shard.is_closed());
        assert_eq!(shard.parents().count(), 0);
        assert_eq!(shard.sequence_number_range.starting.as_str().len(), 56, "56-digit sequence numbers");
    }
    assert_eq!(all[0].shard_id, ShardId::from_index(0));
    let after = kinesis
        .list_all_shards(&stream, Some(ShardFilter::AfterShardId(ShardId::from_index(2))))
        .await
        .expect("AFTER_SHARD_ID");
    assert_eq!(
        after.iter().map(|s| s.shard_id.clone()).collect::<Vec<_>>(),
        vec![ShardId::from_index(3), ShardId::from_index(4)]
    );
    kinesis.delete_stream(&stream, true).await.expect("DeleteStream");
}

pub async fn puts_and_reads_back_through_every_iterator_type<K: Kinesis>(kinesis: &K) {
    let stream = new_stream(kinesis, "iterators", 2).await;
    let before = SystemTime::now() - Duration::from_secs(2);
    let first = kinesis
        .put_record(PutRecordRequest {
            stream: stream.clone(),
            partition_key: "key-a".into(),
            explicit_hash_key: Some(HashKey::MIN),
            data: Bytes::from_static(b"first"),
            sequence_number_for_ordering: None,
        })
        .await
        .expect("PutRecord");
    assert_eq!(first.shard_id, ShardId::from_index(0), "hash key 0 belongs to the first shard");
    let mut entries: Vec<_> = (0..20).map(|i| entry(&format!("key-{i}"), &format!("record-{i}"))).collect();
    entries.push(entry_at(HashKey::MAX, "last-shard"));
    let put = kinesis.put_records(&stream, entries.clone()).await.expect("PutRecords");
    assert_eq!(put.failed_record_count(), 0);
    assert_eq!(put.records.len(), entries.len());
    let shards = kinesis.list_all_shards(&stream, None).await.expect("ListShards");
    for (entry, result) in entries.iter().zip(&put.records) {
        let placement = result.as_ref().expect("entry stored");
        let key = entry.explicit_hash_key.unwrap_or_else(|| HashKey::from_partition_key(&entry.partition_key));
        let owner = shards.iter().find(|s| s.hash_key_range.contains(key)).expect("a shard owns every key");
        assert_eq!(placement.shard_id, owner.shard_id, "{} routed by its hash key", entry.partition_key);
    }

    let shard0 = ShardId::from_index(0);
    let expected: Vec<Bytes> = std::iter::once(Bytes::from_static(b"first"))
        .chain(
            entries
                .iter()
                .zip(&put.records)
                .filter(|(_, r)| r.as_ref().is_ok_and(|p| p.shard_id == shard0))
                .map(|(e, _)| e.data.clone()),
        )
        .collect();

    let (from_start, _) = read_all(kinesis, &stream, &shard0, StartingPosition::TrimHorizon).await;
    assert_eq!(data(&from_start), expected);
    assert!(from_start.windows(2).all(|w| w[0].sequence_number < w[1].sequence_number), "sequence numbers increase");
    assert_eq!(from_start[0].sequence_number, first.sequence_number);
    assert_eq!(from_start[0].partition_key, "key-a");

    let (at, _) =
        read_all(kinesis, &stream, &shard0, StartingPosition::AtSequenceNumber(first.sequence_number.clone())).await;
    assert_eq!(data(&at), expected);
    let (after, _) =
        read_all(kinesis, &stream, &shard0, StartingPosition::AfterSequenceNumber(first.sequence_number.clone())).await;
    assert_eq!(data(&after), expected[1..].to_vec());
    let (at_time, _) = read_all(kinesis, &stream, &shard0, StartingPosition::AtTimestamp(before)).await;
    assert_eq!(data(&at_time), expected);

    let latest = kinesis.get_shard_iterator(&stream, &shard0, StartingPosition::Latest).await.expect("LATEST");
    let empty = get_records(kinesis, &latest, None).await;
    assert!(empty.records.is_empty());
    assert_eq!(empty.millis_behind_latest, Some(0), "at the tip");
    kinesis
        .put_records(&stream, vec![entry_at(HashKey::new(5), "after-latest")])
        .await
        .expect("PutRecords after LATEST");
    let next = empty.next_shard_iterator.expect("open shard keeps an iterator");
    let got = get_records(kinesis, &next, None).await;
    assert_eq!(data(&got.records), vec![Bytes::from_static(b"after-latest")]);
    assert!(got.millis_behind_latest.is_some());
    kinesis.delete_stream(&stream, true).await.expect("DeleteStream");
}

pub async fn split_then_read_parent_to_end_then_children<K: Kinesis>(kinesis: &K) {
    let stream = new_stream(kinesis, "split", 2).await;
    let parent_id = ShardId::from_index(0);
    kinesis.put_records(&stream, vec![entry_at(HashKey::new(1), "in-parent")]).await.expect("PutRecords");
    let before = kinesis.list_all_shards(&stream, None).await.expect("ListShards");
    let parent_range = before[0].hash_key_range;
    let split_at = parent_range.midpoint();
    kinesis.split_shard(&stream, &parent_id, split_at).await.expect("SplitShard");
    kinesis.wait_for_stream_active(&stream, Duration::from_secs(30)).await.expect("ACTIVE after split");
    let after = wait_for_shard_count(kinesis, &stream, 4).await;
    let parent = after.iter().find(|s| s.shard_id == parent_id).expect("parent still listed");
    assert!(parent.is_closed(), "the split parent is closed");
    let children: Vec<_> = after.iter().filter(|s| s.parent_shard_id.as_ref() == Some(&parent_id)).cloned().collect();
    assert_eq!(children.len(), 2);
    let (low, high) = parent_range.split_at(split_at).expect("valid split");
    let low_child = children.iter().find(|c| c.hash_key_range == low).expect("low child");
    let high_child = children.iter().find(|c| c.hash_key_range == high).expect("high child");
    assert!(children.iter().all(|c| !c.is_closed() && c.adjacent_parent_shard_id.is_none()));
    let open = kinesis.list_all_shards(&stream, Some(ShardFilter::AtLatest)).await.expect("AT_LATEST");
    assert_eq!(open.len(), 3, "only open shards at latest");

    // Writes now go to the children.
    let put = kinesis
        .put_records(&stream, vec![entry_at(HashKey::new(1), "in-low-child"), entry_at(split_at, "in-high-child")])
        .await
        .expect("PutRecords");
    assert_eq!(put.records[0].as_ref().map(|p| p.shard_id.clone()).ok(), Some(low_child.shard_id.clone()));
    assert_eq!(put.records[1].as_ref().map(|p| p.shard_id.clone()).ok(), Some(high_child.shard_id.clone()));

    // The parent reads to its end, where it names both children and hands out no iterator.
    let (records, end) = read_to_end(kinesis, &stream, &parent_id).await;
    assert_eq!(records, vec![Bytes::from_static(b"in-parent")]);
    assert!(end.next_shard_iterator.is_none(), "no iterator past the end of a closed shard");
    let mut child_ids: Vec<_> = end.child_shards.iter().map(|c| c.shard_id.clone()).collect();
    child_ids.sort();
    assert_eq!(child_ids, vec![low_child.shard_id.clone(), high_child.shard_id.clone()]);
    assert!(end.child_shards.iter().all(|c| c.parent_shards == vec![parent_id.clone()]));
    // Then each child from its start.
    let (low_records, _) = read_all(kinesis, &stream, &low_child.shard_id, StartingPosition::TrimHorizon).await;
    assert_eq!(data(&low_records), vec![Bytes::from_static(b"in-low-child")]);
    let (high_records, _) = read_all(kinesis, &stream, &high_child.shard_id, StartingPosition::TrimHorizon).await;
    assert_eq!(data(&high_records), vec![Bytes::from_static(b"in-high-child")]);

    let again = kinesis.split_shard(&stream, &parent_id, split_at).await.expect_err("closed shard");
    assert!(matches!(again, KinesisError::InvalidArgument { .. } | KinesisError::ResourceInUse { .. }), "{again:?}");
    kinesis.delete_stream(&stream, true).await.expect("DeleteStream");
}

pub async fn merge_has_two_parents<K: Kinesis>(kinesis: &K) {
    let stream = new_stream(kinesis, "merge", 2).await;
    let (a, b) = (ShardId::from_index(0), ShardId::from_index(1));
    kinesis
        .put_records(&stream, vec![entry_at(HashKey::MIN, "in-a"), entry_at(HashKey::MAX, "in-b")])
        .await
        .expect("PutRecords");
    kinesis.merge_shards(&stream, &a, &b).await.expect("MergeShards");
    kinesis.wait_for_stream_active(&stream, Duration::from_secs(30)).await.expect("ACTIVE after merge");
    let shards = wait_for_shard_count(kinesis, &stream, 3).await;
    let child = shards.iter().find(|s| !s.is_closed()).expect("the merged child is open");
    assert_eq!(child.hash_key_range, HashKeyRange::FULL);
    let parents: Vec<_> = child.parents().cloned().collect();
    assert_eq!(parents.len(), 2);
    assert!(parents.contains(&a) && parents.contains(&b));
    kinesis.put_records(&stream, vec![entry("any", "in-child")]).await.expect("PutRecords");
    for (parent, expected) in [(&a, "in-a"), (&b, "in-b")] {
        let (records, end) = read_to_end(kinesis, &stream, parent).await;
        assert_eq!(records, vec![Bytes::from(expected)]);
        assert_eq!(
            end.child_shards.iter().map(|c| c.shard_id.clone()).collect::<Vec<_>>(),
            vec![child.shard_id.clone()]
        );
    }
    let (records, _) = read_all(kinesis, &stream, &child.shard_id, StartingPosition::TrimHorizon).await;
    assert_eq!(data(&records), vec![Bytes::from_static(b"in-child")]);
    kinesis.delete_stream(&stream, true).await.expect("DeleteStream");
}

pub async fn typed_errors_for_missing_stream_and_invalid_argument<K: Kinesis>(kinesis: &K) {
    let missing = StreamRef::from("no-such-stream-for-kinesis-core");
    let err = kinesis.describe_stream_summary(&missing).await.expect_err("missing stream");
    assert!(matches!(err, KinesisError::ResourceNotFound { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.message().contains("no-such-stream-for-kinesis-core"), "the service's message is kept: {err}");
    let err = kinesis.put_records(&missing, vec![entry("k", "v")]).await.expect_err("missing stream");
    assert!(err.is_not_found(), "{err:?}");

    let stream = new_stream(kinesis, "errors", 3).await;
    let invalid =
        |err: &KinesisError| matches!(err, KinesisError::InvalidArgument { .. } | KinesisError::Validation { .. });
    let err = kinesis
        .merge_shards(&stream, &ShardId::from_index(0), &ShardId::from_index(2))
        .await
        .expect_err("not adjacent");
    assert!(invalid(&err), "{err:?}");
    assert!(!err.is_retryable());
    let err = kinesis
        .split_shard(&stream, &ShardId::from_index(0), HashKey::MAX)
        .await
        .expect_err("split point outside the shard");
    assert!(invalid(&err), "{err:?}");
    let err =
        kinesis.put_records(&stream, vec![entry(&"k".repeat(257), "v")]).await.expect_err("partition key too long");
    assert!(invalid(&err), "{err:?}");
    assert!(!err.message().is_empty());
    kinesis.delete_stream(&stream, true).await.expect("DeleteStream");
}

pub async fn enhanced_fan_out_subscription_delivers_records<K: Kinesis>(kinesis: &K) {
    let stream = new_stream(kinesis, "efo", 1).await;
    let summary = kinesis.describe_stream_summary(&stream).await.expect("summary");
    let consumer = kinesis.register_stream_consumer(&summary.stream_arn, "efo-test").await.expect("register");
    assert_eq!(consumer.consumer_name, "efo-test");
    let mut active = consumer.clone();
    for _ in 0..100 {
        active = kinesis.describe_stream_consumer(&summary.stream_arn, "efo-test").await.expect("describe");
        if active.status == ConsumerStatus::Active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active.status, ConsumerStatus::Active);
    assert_eq!(active.consumer_arn, consumer.consumer_arn);
    kinesis.put_records(&stream, vec![entry("a", "one"), entry("b", "two")]).await.expect("PutRecords");
    let mut events = kinesis
        .subscribe_to_shard(&consumer.consumer_arn, &ShardId::from_index(0), StartingPosition::TrimHorizon)
        .await
        .expect("SubscribeToShard");
    let mut got = Vec::new();
    let mut continuation = None;
    while got.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("an event within 20 s")
            .expect("the subscription is open")
            .expect("an event, not an error");
        got.extend(event.records.iter().map(|r| r.data.clone()));
        continuation = event.continuation_sequence_number.clone().or(continuation);
    }
    assert_eq!(got, vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]);
    let continuation = continuation.expect("events carry a continuation sequence number");
    drop(events);
    // Resuming after the continuation delivers only newer records.
    kinesis.put_records(&stream, vec![entry("c", "three")]).await.expect("PutRecords");
    tokio::time::sleep(Duration::from_secs(6)).await; // past the 5-second resubscribe rule
    let mut events = kinesis
        .subscribe_to_shard(
            &consumer.consumer_arn,
            &ShardId::from_index(0),
            StartingPosition::AfterSequenceNumber(continuation),
        )
        .await
        .expect("resubscribe");
    let mut resumed = Vec::new();
    while resumed.is_empty() {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("event")
            .expect("open")
            .expect("ok");
        resumed.extend(event.records.iter().map(|r| r.data.clone()));
    }
    assert_eq!(resumed, vec![Bytes::from_static(b"three")]);
    drop(events);
    kinesis.deregister_stream_consumer(&summary.stream_arn, "efo-test").await.expect("deregister");
    kinesis.delete_stream(&stream, true).await.expect("DeleteStream");
}

/// Expands to one `#[tokio::test]` per suite function, each building its backend with `$client`
/// (an async expression yielding `Option<impl Kinesis>`; `None` skips).
#[macro_export]
macro_rules! behaviour_suite {
    ($client:expr, $args:tt) => {
        $crate::behaviour_suite!(@one $client, $args,
            lists_shards_with_paging_and_filters,
            puts_and_reads_back_through_every_iterator_type,
            split_then_read_parent_to_end_then_children,
            merge_has_two_parents,
            typed_errors_for_missing_stream_and_invalid_argument,
            enhanced_fan_out_subscription_delivers_records);
    };
    (@one $client:expr, $args:tt, $($name:ident),*) => {
        $(
            #[tokio::test $args]
            async fn $name() {
                let Some(kinesis) = $client.await else { return };
                suite::$name(&kinesis).await;
            }
        )*
    };
}
