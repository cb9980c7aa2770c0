//! Records the service would refuse are refused at `send` and `try_send` with a typed error,
//! handed back untouched, and nothing of them is buffered or sent.

use std::time::Duration;

use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker, ValidationError};
use kpl::{Producer, ProducerConfig, SendError, UserRecord};

async fn producer(max_record_size_kib: Option<u32>) -> (MemoryBroker, Producer) {
    let broker = MemoryBroker::new();
    let mut request = CreateStreamRequest::provisioned("input", 1);
    if let Some(kib) = max_record_size_kib {
        request = request.max_record_size_kib(kib);
    }
    broker.create_stream(request).await.expect("create");
    let config = ProducerConfig::default().record_max_buffered_time(Duration::from_millis(10));
    let producer = Producer::builder(broker.clone(), "input").config(config).build().await.expect("producer");
    (broker, producer)
}

/// Tells whether an error is the one expected.
type Expect = fn(&ValidationError) -> bool;

fn bad_records() -> Vec<(UserRecord, Expect)> {
    vec![
        (UserRecord::new("", "data"), |e| matches!(e, ValidationError::EmptyPartitionKey)),
        (UserRecord::new("k".repeat(257), "data"), |e| {
            matches!(e, ValidationError::PartitionKeyTooLong { chars: 257 })
        }),
        (UserRecord::new("é".repeat(257), "data"), |e| {
            matches!(e, ValidationError::PartitionKeyTooLong { chars: 257 })
        }),
        (UserRecord::new("key", "data").with_explicit_hash_key("01"), |e| {
            matches!(e, ValidationError::InvalidExplicitHashKey { .. })
        }),
        (UserRecord::new("key", "data").with_explicit_hash_key("12ab"), |e| {
            matches!(e, ValidationError::InvalidExplicitHashKey { .. })
        }),
        (UserRecord::new("key", "data").with_explicit_hash_key(""), |e| {
            matches!(e, ValidationError::InvalidExplicitHashKey { .. })
        }),
        // 2^128: one past the largest hash key.
        (UserRecord::new("key", "data").with_explicit_hash_key("340282366920938463463374607431768211456"), |e| {
            matches!(e, ValidationError::InvalidExplicitHashKey { .. })
        }),
        // Partition key + data one byte over the stream's 1 MiB.
        (
            UserRecord::new("kk", vec![0u8; (1 << 20) - 1]),
            |e| matches!(e, ValidationError::RecordTooLarge { size, max } if *size == (1 << 20) + 1 && *max == 1 << 20),
        ),
    ]
}

fn assert_nothing_buffered(producer: &Producer) {
    let stats = producer.stats();
    assert_eq!(stats.user_records_sent, 0, "{stats:?}");
    assert_eq!(stats.user_records_pending, 0, "{stats:?}");
    assert_eq!(stats.buffered_bytes, 0, "{stats:?}");
    assert_eq!(producer.buffered_bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn send_and_try_send_refuse_invalid_records_with_a_typed_error() {
    let (broker, producer) = producer(None).await;
    for (record, expected) in bad_records() {
        match producer.send(record.clone()).await {
            Err(SendError::Invalid { error, record: back }) => {
                assert!(expected(&error), "{record:?}: unexpected {error:?}");
                assert_eq!(*back, record, "handed back untouched");
            }
            other => panic!("{record:?}: expected Invalid, got {other:?}"),
        }
        match producer.try_send(record.clone()) {
            Err(error @ SendError::Invalid { .. }) => assert_eq!(error.into_record(), record),
            other => panic!("{record:?}: expected Invalid from try_send, got {other:?}"),
        }
        assert_nothing_buffered(&producer);
    }
    producer.flush().await;
    let stats = producer.stats();
    assert_eq!((stats.put_requests, stats.kinesis_records_put), (0, 0), "nothing was sent");
    assert_eq!(broker.stats().records_written, 0);

    // The limits themselves are accepted: 256 characters (of any width), the largest hash key,
    // and a record of exactly the maximum size.
    let good = [
        UserRecord::new("é".repeat(256), "data"),
        UserRecord::new("key", "data").with_explicit_hash_key("340282366920938463463374607431768211455"),
        UserRecord::new("key", "data").with_explicit_hash_key("0"),
        UserRecord::new("kk", vec![0u8; (1 << 20) - 2]),
    ];
    let mut futures = Vec::new();
    for record in good {
        futures.push(producer.send(record).await.expect("valid"));
    }
    for future in futures {
        future.await.map_err(|(error, _)| error).expect("delivered");
    }
    producer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_size_limit_is_the_streams_own() {
    // A stream that takes 2 MiB records accepts what a 1 MiB stream refuses, and refuses past
    // its own limit.
    let (_broker, producer) = producer(Some(2048)).await;
    let big = UserRecord::new("kk", vec![1u8; (1 << 20) + 10]);
    let delivered = producer.send(big).await.expect("fits a 2 MiB stream").await;
    assert!(delivered.is_ok(), "delivered");
    let too_big = UserRecord::new("kk", vec![1u8; 2 << 20]);
    match producer.send(too_big).await {
        Err(SendError::Invalid { error: ValidationError::RecordTooLarge { size, max }, .. }) => {
            assert_eq!((size, max), ((2 << 20) + 2, 2 << 20));
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(producer.stats().user_records_sent, 1);
    assert_eq!(producer.buffered_bytes(), 0);
    producer.shutdown().await;
}
