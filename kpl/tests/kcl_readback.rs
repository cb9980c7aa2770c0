//! Records written by kpl are read back correctly by kcl: a kcl worker (its polling retrieval
//! and de-aggregation, in-memory lease stores) reading the stream from `TRIM_HORIZON` receives
//! every user record exactly once, with its partition key, data, and the sequence and
//! sub-sequence numbers the producer reported — with compression off and on.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{header, record};
use kcl::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor, ShutdownRequestedInput};
use kcl::{InitialPosition, KinesisClientRecord, ProcessorError, Scheduler};
use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker, ShardId};
use kpl::{Compression, Producer, ProducerConfig, RecordMetadata};

type Received = Arc<Mutex<Vec<(ShardId, KinesisClientRecord)>>>;

struct Collector {
    shard: ShardId,
    received: Received,
}

#[async_trait]
impl ShardRecordProcessor for Collector {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        {
            let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
            received.extend(input.records.iter().map(|r| (self.shard.clone(), r.clone())));
        }
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        Ok(input.checkpointer.checkpoint().await?)
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        Ok(input.checkpointer.checkpoint().await?)
    }
}

async fn round_trip(compression: Compression) {
    const KEYS: u64 = 30;
    const PER_KEY: u64 = 60;
    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::provisioned("readback", 3)).await.expect("create");
    let config = ProducerConfig::default().compression(compression).record_max_buffered_time(Duration::from_millis(50));
    let producer = Producer::builder(broker.clone(), "readback").config(config).build().await.expect("producer");
    let mut futures = Vec::new();
    for n in 0..PER_KEY {
        for key in 0..KEYS {
            // Sizes vary so some aggregates fill up and some records travel alone.
            let size = if n % 25 == 0 { 30_000 } else { 60 + (n as usize * 7) % 300 };
            let record = record(&format!("user-{key}"), n, size);
            futures.push((record.clone(), producer.send(record).await.expect("accepted")));
        }
    }
    producer.flush().await;
    let mut sent: HashMap<(String, u64), (kpl::UserRecord, RecordMetadata)> = HashMap::new();
    for (record, future) in futures {
        let metadata = future.await.map_err(|(error, _)| error).expect("delivered");
        sent.insert(header(record.data()).expect("header"), (record, metadata));
    }
    producer.shutdown().await;
    assert!(sent.values().filter(|(_, m)| m.aggregated()).count() > sent.len() / 2, "mostly aggregated");

    let received: Received = Arc::default();
    let factory = {
        let received = received.clone();
        move |shard: &ShardId| Collector { shard: shard.clone(), received: received.clone() }
    };
    let kinesis: Arc<dyn Kinesis> = Arc::new(broker.clone());
    let scheduler = Scheduler::builder("kpl-readback", "readback", kinesis)
        .worker_id("reader")
        .initial_position(InitialPosition::TrimHorizon)
        .memory_stores()
        .processor_factory(factory)
        .build()
        .expect("scheduler");
    let handle = scheduler.start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while received.lock().unwrap_or_else(|e| e.into_inner()).len() < sent.len() {
        assert!(tokio::time::Instant::now() < deadline, "kcl did not read every record in time");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    handle.shutdown().await;

    let received = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(received.len(), sent.len(), "every record once, no more");
    let mut seen = HashMap::new();
    for (shard, got) in received {
        let id = header(&got.data).expect("header");
        let (record, metadata) = sent.get(&id).unwrap_or_else(|| panic!("{id:?} was never sent"));
        assert!(seen.insert(id.clone(), ()).is_none(), "{id:?} delivered twice");
        assert_eq!(&*got.partition_key, record.partition_key(), "{id:?}");
        assert_eq!(&got.data, record.data(), "{id:?}");
        assert_eq!(&shard, metadata.shard_id(), "{id:?}");
        assert_eq!(&got.sequence_number, metadata.sequence_number(), "{id:?}");
        assert_eq!(got.sub_sequence_number, metadata.sub_sequence_number(), "{id:?}");
        assert_eq!(got.aggregated, metadata.aggregated(), "{id:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn kcl_reads_every_record_back() {
    round_trip(Compression::None).await;
}

#[tokio::test(start_paused = true)]
async fn kcl_reads_compressed_records_back() {
    round_trip(Compression::Zlib { level: 6 }).await;
}
