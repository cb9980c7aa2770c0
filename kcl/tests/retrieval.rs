//! Retrieval on paused time: the polling pace (busy while behind, idle at the tip), backoff under
//! throttling, re-created expired iterators; enhanced fan-out's consumer registration and its
//! resubscription after errors, continuing after the last delivered record.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcl::RetrievalMode;
use kinesis_core::broker::{BrokerConfig, FaultRule, Operation};
use kinesis_core::sequence::StartingPosition;
use kinesis_core::*;
use support::*;
use tokio::time::{Instant, sleep};

fn entry(key: &str, n: u64) -> PutRecordsEntry {
    PutRecordsEntry { partition_key: key.to_owned(), explicit_hash_key: None, data: Bytes::from(format!("{key} {n} ")) }
}

async fn put(fleet: &Fleet, entries: Vec<PutRecordsEntry>) {
    let out = fleet.kinesis.put_records(&fleet.stream, entries).await.expect("put");
    assert_eq!(out.failed_record_count(), 0);
}

/// A one-shard fleet whose Kinesis client logs its calls.
async fn counted_fleet() -> (Fleet, Arc<CountingKinesis>) {
    let broker = MemoryBroker::with_config(BrokerConfig::default());
    let mut fleet = Fleet::with_broker(broker.clone(), 1).await;
    let counting = Arc::new(CountingKinesis::new(broker));
    fleet.kinesis = counting.clone();
    (fleet, counting)
}

async fn start_one(fleet: &mut Fleet, worker: &str) {
    fleet.start(worker);
    fleet
        .wait_for(Duration::from_secs(30), "the shard processed", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == 1
        })
        .await;
}

fn records_of(call: &Call) -> Option<usize> {
    call.result.as_ref().ok().copied()
}

#[tokio::test(start_paused = true)]
async fn polling_reads_at_the_busy_pace_behind_the_tip_and_the_idle_pace_at_it() {
    let (mut fleet, counting) = counted_fleet().await;
    fleet.config.polling.max_records = 10;
    put(&fleet, (0..300).map(|n| entry("k", n)).collect()).await;
    start_one(&mut fleet, "w1").await;
    sleep(Duration::from_secs(30)).await;

    let calls = counting.get_records_calls();
    let full: Vec<usize> = (0..calls.len()).filter(|&i| records_of(&calls[i]) == Some(10)).collect();
    assert_eq!(full.len(), 30, "300 records in reads of 10");
    assert_eq!(full, (0..30).collect::<Vec<_>>(), "the backlog is read first, without a gap");
    let gap = |i: usize| calls[i + 1].at - calls[i].at;
    // Behind the tip: one read per `min_time_between_reads` (200 ms).
    for i in 0..29 {
        let g = gap(i);
        assert!(g >= Duration::from_millis(200) && g < Duration::from_millis(250), "read {i}: gap {g:?} while behind");
    }
    // The last backlog read reached the tip; from then on reads are empty and come once per
    // `idle_time_between_reads` (1 s).
    let idle: Vec<Duration> = (29..calls.len() - 1).map(gap).collect();
    assert!(idle.len() >= 15, "kept polling the idle shard ({} reads)", idle.len());
    for g in &idle {
        assert!(*g >= Duration::from_secs(1) && *g < Duration::from_millis(1050), "idle gap {g:?}");
    }
    assert!(calls[30..].iter().all(|c| records_of(c) == Some(0)));
    assert_eq!(fleet.recorder.deliveries().len(), 300);
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn throttled_reads_back_off_exponentially_and_lose_nothing() {
    let (mut fleet, counting) = counted_fleet().await;
    start_one(&mut fleet, "w1").await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 4, Duration::from_millis(250));
    sleep(Duration::from_secs(5)).await;
    let throttled_from = counting.get_records_calls().len();
    fleet
        .broker
        .faults()
        .add(FaultRule::on(Operation::GetRecords).fail_calls("ProvisionedThroughputExceededException", 1.0).times(6));
    sleep(Duration::from_secs(40)).await;
    let calls = counting.get_records_calls();
    let window = &calls[throttled_from..];
    let first_ok = window.iter().position(|c| c.result.is_ok()).expect("reads succeed again");
    assert_eq!(first_ok, 6, "six throttled reads, then success: {window:?}");
    assert!(
        window[..6]
            .iter()
            .all(|c| c.result.as_ref().err().map(String::as_str) == Some("ProvisionedThroughputExceededException"))
    );
    // Backoff 200 ms doubling (with up to +100 % jitter): the six retries wait at least
    // 0.2 + 0.4 + … + 6.4 = 12.6 s and at most twice that — instead of 6 reads in 1.2 s.
    let waited = window[6].at - window[0].at;
    assert!(waited >= Duration::from_millis(12_600) && waited <= Duration::from_millis(25_300), "waited {waited:?}");
    for i in 0..5 {
        let (before, after) = (window[i + 1].at - window[i].at, window[i + 2].at - window[i + 1].at);
        let base = Duration::from_millis(200 << i);
        assert!(before >= base && before <= base * 2, "retry {i} waited {before:?}");
        assert!(after >= base * 2, "the wait grows: {before:?} then {after:?}");
    }
    // Throttling is expected: it is not reported as a shard error.
    let state = fleet.handle("w1").state();
    assert!(state.shards.values().all(|s| s.error.is_none()), "{state:?}");
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(30), "every record delivered", |f| f.recorder.deliveries().len() as u64 >= total)
        .await;
    assert!(check_order(&fleet.recorder.deliveries(), &sent).is_empty(), "no duplicates");
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_is_re_created_after_the_last_record_read() {
    let (mut fleet, counting) = counted_fleet().await;
    fleet.config.polling.max_records = 5;
    fleet.config.max_prefetch_batches = 1;
    put(&fleet, (0..10).map(|n| entry("k", n)).collect()).await;
    // The first batch takes six minutes: the fetcher, blocked on the full prefetch queue, holds
    // its next iterator past the service's five-minute expiry.
    fleet.recorder.behavior(|b| b.delay = Duration::from_secs(360));
    start_one(&mut fleet, "w1").await;
    sleep(Duration::from_secs(1)).await;
    fleet.recorder.behavior(|b| b.delay = Duration::ZERO);
    // Written while the fetcher is stalled.
    sleep(Duration::from_secs(60)).await;
    put(&fleet, (10..15).map(|n| entry("k", n)).collect()).await;
    fleet.wait_for(Duration::from_secs(600), "all 15 records", |f| f.recorder.deliveries().len() >= 15).await;
    sleep(Duration::from_secs(10)).await;

    let calls = counting.get_records_calls();
    let expired = calls
        .iter()
        .filter(|c| c.result.as_ref().err().map(String::as_str) == Some("ExpiredIteratorException"))
        .count();
    assert_eq!(expired, 1, "the held iterator expired once: {calls:?}");
    let deliveries = fleet.recorder.deliveries();
    let sent = [("k".to_owned(), 15)].into_iter().collect();
    assert!(check_order(&deliveries, &sent).is_empty(), "nothing read twice");
    assert_eq!(deliveries.len(), 15, "nothing skipped or repeated");
    let state = fleet.handle("w1").state();
    assert!(state.shards.values().all(|s| s.error.is_none()), "an expired iterator is not an error: {state:?}");
    fleet.shutdown_all().await;
}

async fn stream_arn(fleet: &Fleet) -> String {
    fleet.kinesis.describe_stream_summary(&fleet.stream).await.expect("describe").stream_arn
}

#[tokio::test(start_paused = true)]
async fn fan_out_registers_its_consumer_when_it_does_not_exist() {
    let mut fleet = Fleet::new(2).await;
    fleet.mode = RetrievalMode::FanOut { consumer_name: Some("fresh-consumer".into()) };
    let arn = stream_arn(&fleet).await;
    let before = fleet.kinesis.describe_stream_consumer(&arn, "fresh-consumer").await;
    assert!(before.is_err_and(|e| e.is_not_found()), "no consumer before the workers start");
    // Two workers resolve the consumer at the same time: one registers, the other finds it.
    fleet.start("w1");
    fleet.start("w2");
    fleet
        .wait_for(Duration::from_secs(60), "both shards processed", |f| {
            f.processing().values().map(Vec::len).sum::<usize>() == 2
        })
        .await;
    let consumer = fleet.kinesis.describe_stream_consumer(&arn, "fresh-consumer").await.expect("registered");
    assert_eq!(consumer.status, ConsumerStatus::Active);
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 8, Duration::from_millis(200));
    sleep(Duration::from_secs(5)).await;
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(30), "every record delivered", |f| f.recorder.deliveries().len() as u64 >= total)
        .await;
    assert!(check_order(&fleet.recorder.deliveries(), &sent).is_empty());
    fleet.shutdown_all().await;
}

/// A fan-out fleet of one worker on one shard, with a producer running.
async fn fan_out_fleet() -> (Fleet, Arc<CountingKinesis>, Producer) {
    let (mut fleet, counting) = counted_fleet().await;
    fleet.mode = RetrievalMode::FanOut { consumer_name: None };
    start_one(&mut fleet, "w1").await;
    let producer = Producer::start(fleet.kinesis.clone(), fleet.stream.clone(), 4, Duration::from_millis(200));
    sleep(Duration::from_secs(10)).await;
    (fleet, counting, producer)
}

/// Asserts that records written after `since` were delivered within `within`, and that after
/// the producer stops everything arrives once, in order.
async fn resumes_without_gaps(fleet: &Fleet, producer: Producer, since: Instant, within: Duration) {
    fleet
        .wait_for(within, "deliveries after the error", |f| {
            f.recorder.deliveries().iter().any(|d| d.at > since + Duration::from_secs(1))
        })
        .await;
    let sent = producer.stop().await;
    let total: u64 = sent.values().sum();
    fleet
        .wait_for(Duration::from_secs(30), "every record delivered", |f| f.recorder.deliveries().len() as u64 >= total)
        .await;
    sleep(Duration::from_secs(2)).await;
    let deliveries = fleet.recorder.deliveries();
    assert!(check_order(&deliveries, &sent).is_empty(), "continued after the last delivered record: no duplicates");
    assert_eq!(deliveries.len() as u64, total, "no gaps, nothing twice");
}

#[tokio::test(start_paused = true)]
async fn fan_out_resubscribes_after_errors_from_the_last_delivered_record() {
    let (fleet, counting, producer) = fan_out_fleet().await;
    let arn =
        fleet.kinesis.describe_stream_consumer(&stream_arn(&fleet).await, "app").await.expect("consumer").consumer_arn;
    let subscribed_before = counting.subscribe_calls().len();
    // The next two subscriptions fail, and another subscriber takes the shard over, which ends
    // the worker's subscription with ResourceInUseException.
    let error_at = Instant::now();
    let takeover = fleet.broker.subscribe_to_shard(&arn, &ShardId::from_index(0), StartingPosition::Latest).await;
    drop(takeover.expect("takeover"));
    fleet.broker.faults().add(FaultRule::on(Operation::SubscribeToShard).fail_calls("InternalFailure", 1.0).times(2));
    resumes_without_gaps(&fleet, producer, error_at, Duration::from_secs(30)).await;

    let calls = counting.subscribe_calls()[subscribed_before..].to_vec();
    let codes: Vec<Result<usize, String>> = calls.iter().map(|c| c.result.clone()).collect();
    assert_eq!(
        codes[..3],
        [Err("InternalFailure".to_owned()), Err("InternalFailure".to_owned()), Ok(0)],
        "resubscribed after the takeover, retrying the failures: {codes:?}"
    );
    let resubscribed = calls[2].at - error_at;
    assert!(
        resubscribed < Duration::from_secs(20),
        "resubscribed {resubscribed:?} after the error, not after 5 minutes"
    );
    let state = fleet.handle("w1").state();
    assert!(state.shards.values().all(|s| s.error.is_none()), "the error clears once events flow: {state:?}");
    let mut fleet = fleet;
    fleet.shutdown_all().await;
}

#[tokio::test(start_paused = true)]
async fn fan_out_registers_the_consumer_again_after_it_was_deregistered() {
    let (fleet, _counting, producer) = fan_out_fleet().await;
    let stream = stream_arn(&fleet).await;
    let old = fleet.kinesis.describe_stream_consumer(&stream, "app").await.expect("consumer");
    sleep(Duration::from_secs(1)).await;
    let removed_at = Instant::now();
    fleet.kinesis.deregister_stream_consumer(&stream, "app").await.expect("deregister");
    resumes_without_gaps(&fleet, producer, removed_at, Duration::from_secs(60)).await;
    let new = fleet.kinesis.describe_stream_consumer(&stream, "app").await.expect("registered again");
    assert_eq!(new.status, ConsumerStatus::Active);
    assert_ne!(new.consumer_arn, old.consumer_arn, "a new registration");
    let mut fleet = fleet;
    fleet.shutdown_all().await;
}
