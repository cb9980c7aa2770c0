//! Timing on paused tokio time (the broker's clock is tokio's too): records leave within
//! `record_max_buffered_time`, a record that cannot be delivered within `record_ttl` fails as
//! expired with the record handed back, and under sustained throttling the adaptive limiter
//! settles at what the shard accepts.

mod common;

use std::time::Duration;

use common::record;
use kinesis_core::broker::{FaultRule, Operation};
use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker};
use kpl::{ProduceError, Producer, ProducerConfig, ProducerStats, UserRecord};
use tokio::time::Instant;

async fn stream(shards: u32) -> MemoryBroker {
    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::provisioned("timing", shards)).await.expect("create");
    broker
}

#[tokio::test(start_paused = true)]
async fn records_leave_within_max_buffered_time() {
    let broker = stream(2).await;
    let max_buffered = Duration::from_millis(100);
    let config = ProducerConfig::default().record_max_buffered_time(max_buffered);
    let producer = Producer::builder(broker.clone(), "timing").config(config).build().await.expect("producer");

    // A trickle far below any size or count trigger: only the deadline sends records.
    let mut waits = Vec::new();
    for n in 0..40u64 {
        let sent = Instant::now();
        let future = producer.send(record(&format!("k{}", n % 7), n, 100)).await.expect("accepted");
        waits.push(tokio::spawn(async move {
            let metadata = future.await.map_err(|(error, _)| error).expect("delivered");
            (sent.elapsed(), metadata)
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut longest = Duration::ZERO;
    let mut aggregated = 0;
    for wait in waits {
        let (waited, metadata) = wait.await.expect("joined");
        assert!(waited <= max_buffered + Duration::from_millis(1), "a record waited {waited:?}");
        longest = longest.max(waited);
        aggregated += usize::from(metadata.aggregated());
    }
    // The records were batched (not sent one by one as they came), up to the deadline.
    assert!(longest >= max_buffered - Duration::from_millis(1), "longest wait {longest:?}");
    assert!(aggregated > 20, "records travelled together: {aggregated} of 40 in aggregates");
    producer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_record_past_its_ttl_expires_and_is_handed_back() {
    let broker = stream(1).await;
    broker.faults().add(FaultRule::on(Operation::PutRecords).throttle(1.0));
    let ttl = Duration::from_secs(2);
    let config = ProducerConfig::default().record_ttl(ttl).record_max_buffered_time(Duration::from_millis(10));
    let producer = Producer::builder(broker.clone(), "timing").config(config).build().await.expect("producer");

    let original = UserRecord::new("key", "payload").with_explicit_hash_key("12345");
    let start = Instant::now();
    let future = producer.send(original.clone()).await.expect("accepted");
    let (error, record) = future.await.expect_err("throttled until its TTL");
    let waited = start.elapsed();
    match &error {
        ProduceError::Expired { attempts, last_error: Some(last), may_be_stored } => {
            assert!(*attempts >= 2, "retried before expiring: {attempts}");
            assert!(last.is_throttling(), "the last error is kept: {last}");
            assert!(!may_be_stored, "every attempt was refused outright");
        }
        other => panic!("expected Expired with the last error, got {other:?}"),
    }
    assert_eq!(record, original, "the record is handed back whole");
    assert!(waited >= ttl && waited <= ttl + Duration::from_millis(50), "expired after {waited:?}");
    let stats = producer.stats();
    assert_eq!((stats.user_records_expired, stats.user_records_failed, stats.user_records_pending), (1, 1, 0));
    assert_eq!(stats.buffered_bytes, 0);
    producer.shutdown().await;
}

/// Kinesis records attempted and stored per second over a window of sustained overload.
struct Rates {
    attempted: f64,
    stored: f64,
}

/// Offers one shard (1000 records/s) 3000 records/s, unaggregated, for `seconds`; measures the
/// second half.
async fn overload_one_shard(adaptive: bool, seconds: u64) -> Rates {
    let broker = stream(1).await;
    let config = ProducerConfig::default()
        .aggregation_enabled(false)
        .adaptive_rate(adaptive)
        .record_ttl(Duration::from_secs(3600))
        .record_max_buffered_time(Duration::from_millis(20));
    let producer = Producer::builder(broker.clone(), "timing").config(config).build().await.expect("producer");
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                for _ in 0..30 {
                    // Outcomes are read from the counters; the futures are not needed.
                    let _ = producer.send(record(&format!("k{}", n % 100), n, 40)).await;
                    n += 1;
                }
            }
        })
    };
    let start = Instant::now();
    tokio::time::sleep_until(start + Duration::from_secs(seconds / 2)).await;
    let a: ProducerStats = producer.stats();
    tokio::time::sleep_until(start + Duration::from_secs(seconds)).await;
    let b = producer.stats();
    sender.abort();
    let window = (seconds - seconds / 2) as f64;
    let stored = (b.kinesis_records_put - a.kinesis_records_put) as f64;
    let throttled = (b.throttles - a.throttles) as f64;
    assert_eq!(b.errors - a.errors, b.throttles - a.throttles, "throttling is the only error");
    Rates { attempted: (stored + throttled) / window, stored: stored / window }
}

#[tokio::test(start_paused = true)]
async fn adaptive_rate_converges_to_the_shard_limit() {
    let adaptive = overload_one_shard(true, 60).await;
    eprintln!("adaptive: attempted {:.0}/s, stored {:.0}/s", adaptive.attempted, adaptive.stored);
    // The limiter starts at 150 % (1500 records/s) and settles near the shard's 1000/s: it
    // neither keeps overshooting (and retrying the difference) nor starves the shard.
    assert!(
        (850.0..=1100.0).contains(&adaptive.attempted),
        "attempted {:.0}/s under sustained throttling",
        adaptive.attempted
    );
    assert!(adaptive.stored >= 850.0, "stored {:.0}/s of the shard's 1000/s", adaptive.stored);

    // The KPL's fixed limiter keeps sending at 150 % and is throttled for the difference.
    let fixed = overload_one_shard(false, 60).await;
    eprintln!("fixed: attempted {:.0}/s, stored {:.0}/s", fixed.attempted, fixed.stored);
    assert!(fixed.attempted >= 1350.0, "fixed limiter attempted {:.0}/s", fixed.attempted);
    assert!(fixed.attempted - fixed.stored > 300.0, "and is throttled for the excess");
}
