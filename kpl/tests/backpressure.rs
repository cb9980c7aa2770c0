//! The memory bound: `try_send` says "full" at once, `send` waits for space, and a `send`
//! cancelled while it waits takes no space with it.

mod common;

use std::time::Duration;

use futures::FutureExt;
use kinesis_core::broker::{FaultRule, Operation};
use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker};
use kpl::{Producer, ProducerConfig, SendError};

#[tokio::test(start_paused = true)]
async fn full_buffers_refuse_wait_and_recover() {
    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::provisioned("bound", 1)).await.expect("create");
    // Nothing gets through at first.
    broker.faults().add(FaultRule::on(Operation::PutRecords).fail_calls("InternalFailure", 1.0));
    let bound = 2 << 20;
    let config = ProducerConfig::default()
        .max_buffered_bytes(bound)
        .record_max_buffered_time(Duration::from_millis(10))
        .retry_base_delay(Duration::from_millis(50))
        .retry_max_delay(Duration::from_millis(200));
    let producer = Producer::builder(broker.clone(), "bound").config(config).build().await.expect("producer");

    let mut futures = Vec::new();
    let mut n = 0;
    let refused = loop {
        match producer.try_send(common::record("k", n, 10_000)) {
            Ok(future) => futures.push(future),
            Err(error) => break error,
        }
        n += 1;
    };
    assert!(matches!(refused, SendError::Full { .. }), "{refused:?}");
    let accepted = futures.len();
    assert!(accepted >= 190, "about 2 MiB of 10 kB records: {accepted}");
    assert!(producer.buffered_bytes() <= bound);

    // `send` waits; dropping it while it waits accepts nothing and keeps nothing.
    let mut waiting = Box::pin(producer.send(common::record("k", n, 10_000)));
    assert!((&mut waiting).now_or_never().is_none(), "send waits for space");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(waiting);
    let mut waiting = Box::pin(producer.send(common::record("k", n, 10_000)));
    assert!((&mut waiting).now_or_never().is_none(), "still full");

    // Once Kinesis takes records again, space comes back and the waiting send goes through.
    broker.faults().clear();
    let last = waiting.await.expect("accepted once there is space");
    for future in futures {
        future.await.map_err(|(error, _)| error).expect("delivered");
    }
    last.await.map_err(|(error, _)| error).expect("delivered");
    assert_eq!(producer.buffered_bytes(), 0, "every byte given back, none kept by the cancelled send");
    let stats = producer.stats();
    assert_eq!(stats.user_records_sent, accepted as u64 + 1);
    assert!(stats.peak_buffered_bytes <= bound as u64);

    // The whole bound is usable again.
    let mut again = 0;
    while producer.try_send(common::record("k", 1_000 + again, 10_000)).is_ok() {
        again += 1;
    }
    assert_eq!(again as usize, accepted);
    producer.shutdown().await;
}
