//! A panic inside the producer's task strands nothing: every accepted record resolves with
//! `Aborted` and comes back whole (data included), and `send` fails at once with `Closed` instead
//! of waiting for buffer space nobody will free. The panic is provoked through a metrics recorder
//! installed for this test's thread (the runtime is current-thread, so the producer's task runs
//! on it too) that panics when the producer records its next request, once armed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker};
use kpl::telemetry::KINESIS_RECORDS_PER_PUT_RECORDS_REQUEST;
use kpl::{ProduceError, Producer, ProducerConfig, SendError, UserRecord};
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder};
use metrics::{SharedString, Unit};

/// A metric that ignores what it is given, except that the armed histogram panics.
struct Tripwire {
    armed: Arc<AtomicBool>,
    trips: bool,
}

impl CounterFn for Tripwire {
    fn increment(&self, _: u64) {}
    fn absolute(&self, _: u64) {}
}

impl GaugeFn for Tripwire {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}

impl HistogramFn for Tripwire {
    fn record(&self, _: f64) {
        if self.trips && self.armed.load(Ordering::Relaxed) {
            panic!("injected: the producer's task panics while it sends a request");
        }
    }
}

struct PanickingRecorder {
    armed: Arc<AtomicBool>,
}

impl PanickingRecorder {
    fn metric(&self, key: &Key) -> Arc<Tripwire> {
        let trips = key.name() == KINESIS_RECORDS_PER_PUT_RECORDS_REQUEST;
        Arc::new(Tripwire { armed: self.armed.clone(), trips })
    }
}

impl Recorder for PanickingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.metric(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.metric(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.metric(key))
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_pipeline_hands_every_record_back_and_closes() {
    let armed = Arc::new(AtomicBool::new(false));
    let recorder = PanickingRecorder { armed: armed.clone() };
    let _guard = metrics::set_default_local_recorder(&recorder);

    let broker = MemoryBroker::new();
    broker.create_stream(CreateStreamRequest::provisioned("panics", 2)).await.expect("create");
    // A small buffer: once the task is gone, a `send` waiting for space would wait forever.
    let config = ProducerConfig::default().max_buffered_bytes(2 << 20);
    let producer = Producer::builder(broker.clone(), "panics").config(config).build().await.expect("producer");

    // Some records are delivered before anything goes wrong.
    let first = producer.send(common::record("k0", 0, 100)).await.expect("accepted");
    first.await.expect("delivered while the task is healthy");

    // Then the task panics at its next request, with records aggregated, queued and in the inbox.
    armed.store(true, Ordering::Relaxed);
    let mut futures = Vec::new();
    let mut refused = None;
    for n in 1..50_000u64 {
        let record = common::record(&format!("k{}", n % 100), n, 1000);
        match tokio::time::timeout(Duration::from_secs(60), producer.send(record)).await {
            Ok(Ok(future)) => futures.push((n, future)),
            Ok(Err(error)) => {
                refused = Some(error);
                break;
            }
            Err(_) => panic!("send {n} waited a minute for buffer space after the task died"),
        }
    }
    let error = refused.expect("sends are refused once the task is gone");
    assert!(matches!(error, SendError::Closed { .. }), "{error}");
    assert!(producer.is_closed());
    assert!(!futures.is_empty(), "records were accepted before the panic");

    for (n, future) in futures {
        let outcome = tokio::time::timeout(Duration::from_secs(60), future).await;
        let Ok(Err((error, record))) = outcome else { panic!("record {n} did not fail with its record: {outcome:?}") };
        assert!(matches!(error, ProduceError::Aborted), "record {n}: {error}");
        assert_eq!(common::header(record.data()), Some((format!("k{}", n % 100), n)), "record {n} comes back whole");
        assert_eq!(record.data().len(), 1000, "record {n}'s data comes back whole");
    }
    // Flushing and shutting down a producer whose task is gone return at once.
    tokio::time::timeout(Duration::from_secs(1), producer.flush()).await.expect("flush returns");
    tokio::time::timeout(Duration::from_secs(1), producer.shutdown()).await.expect("shutdown returns");
    let later = producer.send(UserRecord::new("k", "late")).await;
    assert!(matches!(later, Err(SendError::Closed { .. })), "{later:?}");
}
