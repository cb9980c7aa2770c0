//! The producer reports the KPL's metrics, under the KPL's names, with stream and shard labels,
//! through the `metrics` facade: checked with a small recording `Recorder` installed for this
//! test's thread only (the producer itself never installs one).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinesis_core::broker::{FaultRule, Operation};
use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker};
use kpl::telemetry::*;
use kpl::{Producer, ProducerConfig, UserRecord};
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder};
use metrics::{SharedString, Unit};

#[derive(Default)]
struct Value {
    counter: AtomicU64,
    gauge: Mutex<f64>,
    samples: Mutex<Vec<f64>>,
}

impl CounterFn for Value {
    fn increment(&self, value: u64) {
        self.counter.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.counter.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Value {
    fn increment(&self, value: f64) {
        *self.gauge.lock().unwrap_or_else(|e| e.into_inner()) += value;
    }
    fn decrement(&self, value: f64) {
        *self.gauge.lock().unwrap_or_else(|e| e.into_inner()) -= value;
    }
    fn set(&self, value: f64) {
        *self.gauge.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

impl HistogramFn for Value {
    fn record(&self, value: f64) {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).push(value);
    }
}

/// A metric's labels, sorted.
type Labels = Vec<(String, String)>;

/// Every metric registered, by name and sorted labels.
#[derive(Default)]
struct Recording {
    values: Mutex<BTreeMap<(String, Labels), Arc<Value>>>,
    described: Mutex<Vec<(String, Option<Unit>)>>,
}

impl Recording {
    fn value(&self, key: &Key) -> Arc<Value> {
        let mut labels: Labels = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
        labels.sort();
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.entry((key.name().to_owned(), labels)).or_default().clone()
    }

    /// Values of one metric across all its label sets.
    fn all(&self, name: &str) -> Vec<(Labels, Arc<Value>)> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.iter().filter(|((n, _), _)| n == name).map(|((_, l), v)| (l.clone(), v.clone())).collect()
    }

    fn counter_sum(&self, name: &str) -> u64 {
        self.all(name).iter().map(|(_, v)| v.counter.load(Ordering::Relaxed)).sum()
    }

    fn samples(&self, name: &str) -> Vec<f64> {
        self.all(name).iter().flat_map(|(_, v)| v.samples.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect()
    }
}

struct TestRecorder(Arc<Recording>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.described.lock().unwrap_or_else(|e| e.into_inner()).push((key.as_str().to_owned(), unit));
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.described.lock().unwrap_or_else(|e| e.into_inner()).push((key.as_str().to_owned(), unit));
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.described.lock().unwrap_or_else(|e| e.into_inner()).push((key.as_str().to_owned(), unit));
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.value(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.value(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.0.value(key))
    }
}

#[tokio::test(start_paused = true)]
async fn the_kpl_metrics_under_the_kpl_names() {
    let recording = Arc::new(Recording::default());
    let recorder = TestRecorder(recording.clone());
    // The test runs on a current-thread runtime: the producer's task runs on this thread too.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::provisioned("metered", 2)).await.expect("create");
    broker.faults().add(FaultRule::on(Operation::PutRecords).fail_entries(0.3));
    let config =
        ProducerConfig::default().record_max_buffered_time(Duration::from_millis(20)).aggregation_max_size(2000);
    let producer = Producer::builder(broker.clone(), "metered").config(config).build().await.expect("producer");
    const RECORDS: u64 = 600;
    let mut futures = Vec::new();
    for n in 0..RECORDS {
        futures.push(producer.send(common::record(&format!("k{}", n % 20), n, 100)).await.expect("accepted"));
    }
    producer.flush().await;
    for future in futures {
        future.await.map_err(|(error, _)| error).expect("delivered");
    }
    // One record that expires: its only shard throttles everything.
    broker.faults().clear();
    broker.faults().add(FaultRule::on(Operation::PutRecords).throttle(1.0));
    let short = ProducerConfig::default().record_ttl(Duration::from_millis(500));
    let expiring = Producer::builder(broker.clone(), "metered").config(short).build().await.expect("producer");
    let failed = expiring.send(UserRecord::new("k0", "late")).await.expect("accepted").await;
    assert!(failed.is_err());
    let stats = producer.stats();
    producer.shutdown().await;
    expiring.shutdown().await;
    let expiring_requests = expiring.stats().put_requests;

    let m = &recording;
    // Every KPL metric name is registered.
    for name in [
        USER_RECORDS_RECEIVED,
        USER_RECORDS_PENDING,
        USER_RECORDS_PUT,
        USER_RECORDS_DATA_PUT,
        KINESIS_RECORDS_PUT,
        KINESIS_RECORDS_DATA_PUT,
        ERRORS_BY_CODE,
        ALL_ERRORS,
        RETRIES_PER_RECORD,
        USER_RECORD_EXPIRED,
        BUFFERING_TIME,
        REQUEST_TIME,
        USER_RECORDS_PER_KINESIS_RECORD,
        KINESIS_RECORDS_PER_PUT_RECORDS_REQUEST,
        USER_RECORDS_PER_PUT_RECORDS_REQUEST,
    ] {
        assert!(!m.all(name).is_empty(), "{name} was never registered");
    }
    assert_eq!(
        [
            USER_RECORDS_RECEIVED,
            USER_RECORDS_PUT,
            KINESIS_RECORDS_PUT,
            ERRORS_BY_CODE,
            BUFFERING_TIME,
            RETRIES_PER_RECORD
        ],
        [
            "UserRecordsReceived",
            "UserRecordsPut",
            "KinesisRecordsPut",
            "ErrorsByCode",
            "BufferingTime",
            "RetriesPerRecord"
        ],
        "the KPL's names"
    );
    let described = m.described.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(described.contains(&(BUFFERING_TIME.to_owned(), Some(Unit::Milliseconds))), "{described:?}");

    // Values agree with what happened.
    assert_eq!(m.counter_sum(USER_RECORDS_RECEIVED), RECORDS + 1);
    assert_eq!(m.counter_sum(USER_RECORDS_PUT), RECORDS);
    assert_eq!(m.counter_sum(USER_RECORDS_DATA_PUT), RECORDS * 100);
    assert_eq!(m.counter_sum(KINESIS_RECORDS_PUT), stats.kinesis_records_put);
    assert_eq!(m.counter_sum(USER_RECORD_EXPIRED), 1);
    let internal = m
        .all(ERRORS_BY_CODE)
        .into_iter()
        .filter(|(labels, _)| labels.iter().any(|(k, v)| k == LABEL_ERROR_CODE && v == "InternalFailure"));
    let internal: u64 = internal.map(|(_, v)| v.counter.load(Ordering::Relaxed)).sum();
    assert_eq!(internal, stats.errors, "entry failures by code");
    assert!(m.counter_sum(ALL_ERRORS) > internal, "throttling of the expiring record counted too");
    let retries = m.samples(RETRIES_PER_RECORD);
    assert_eq!(retries.len() as u64, RECORDS + 1, "one sample per finished record");
    assert!(retries.iter().any(|&r| r >= 1.0), "some records were retried");
    let buffering = m.samples(BUFFERING_TIME);
    assert!(buffering.len() as u64 > RECORDS, "first sends and retries");
    assert!(buffering.iter().all(|&ms| (0.0..=30_000.0).contains(&ms)));
    assert_eq!(m.samples(REQUEST_TIME).len() as u64, stats.put_requests + expiring_requests);
    let per_kinesis: f64 = m.samples(USER_RECORDS_PER_KINESIS_RECORD).iter().sum();
    assert_eq!(per_kinesis as u64, RECORDS, "per stored Kinesis record, summing to the records delivered");

    // Labels: stream everywhere, shard on per-shard metrics.
    for (labels, _) in m.all(USER_RECORDS_PUT) {
        assert!(labels.contains(&(LABEL_STREAM.to_owned(), "metered".to_owned())), "{labels:?}");
        assert!(labels.iter().any(|(k, v)| k == LABEL_SHARD && v.starts_with("shardId-")), "{labels:?}");
    }
    for (labels, _) in m.all(REQUEST_TIME) {
        assert_eq!(labels, vec![(LABEL_STREAM.to_owned(), "metered".to_owned())]);
    }
    for (_, pending) in m.all(USER_RECORDS_PENDING) {
        assert_eq!(*pending.gauge.lock().unwrap_or_else(|e| e.into_inner()), 0.0, "nothing pending at the end");
    }
}
