//! A `tracing` span per shard task, observed with a thread-local subscriber (the test runs on a
//! current-thread runtime, so every task emits on the test's thread). Alone in its binary:
//! callsites registered concurrently by another test thread without a subscriber could cache
//! "not interested" and hide the spans.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinesis_core::broker::{FaultRule, Operation};
use support::*;
use tokio::time::sleep;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};

#[derive(Debug, Clone)]
struct SpanInfo {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
}

#[derive(Default)]
struct Spans {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, SpanInfo>>,
    stack: Mutex<Vec<u64>>,
    /// Event messages with the span they were emitted in.
    events: Mutex<Vec<(String, Option<u64>)>>,
}

/// A subscriber that keeps every span (name, fields, parent) and event.
#[derive(Clone, Default)]
struct SpanRecorder(Arc<Spans>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl SpanRecorder {
    fn current(&self) -> Option<u64> {
        lock(&self.0.stack).last().copied()
    }

    fn spans(&self) -> HashMap<u64, SpanInfo> {
        lock(&self.0.spans).clone()
    }
}

impl Subscriber for SpanRecorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = match attrs.parent() {
            Some(p) => Some(p.into_u64()),
            None if attrs.is_contextual() => self.current(),
            None => None,
        };
        lock(&self.0.spans).insert(id, SpanInfo { name: attrs.metadata().name(), fields, parent });
        Id::from_u64(id)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let span = match event.parent() {
            Some(p) => Some(p.into_u64()),
            None if event.is_contextual() => self.current(),
            None => None,
        };
        lock(&self.0.events).push((fields.remove("message").unwrap_or_default(), span));
    }

    fn enter(&self, span: &Id) {
        lock(&self.0.stack).push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut stack = lock(&self.0.stack);
        if let Some(i) = stack.iter().rposition(|s| *s == span.into_u64()) {
            stack.remove(i);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_shard_task_runs_in_a_shard_span() {
    let subscriber = SpanRecorder::default();
    let _guard = tracing::subscriber::set_default(subscriber.clone());
    let mut fleet = Fleet::new(3).await;
    fleet.start("w1");
    fleet.wait_for(Duration::from_secs(30), "all shards processed", |f| f.processing()["w1"].len() == 3).await;
    // One expired iterator: the polling fetcher logs it from inside its shard's task.
    fleet
        .broker
        .faults()
        .add(FaultRule::on(Operation::GetRecords).fail_calls("ExpiredIteratorException", 1.0).times(1));
    sleep(Duration::from_secs(5)).await;
    fleet.shutdown_all().await;

    let spans = subscriber.spans();
    let mut shard_spans: Vec<&SpanInfo> = spans.values().filter(|s| s.name == "shard").collect();
    shard_spans.sort_by(|a, b| a.fields["shard"].cmp(&b.fields["shard"]));
    let shards: Vec<&str> = shard_spans.iter().map(|s| s.fields["shard"].as_str()).collect();
    let expected: Vec<String> = (0..3).map(|i| kinesis_core::ShardId::from_index(i).to_string()).collect();
    assert_eq!(shards, expected, "one shard span per shard task");
    for span in &shard_spans {
        assert_eq!(span.fields["worker"], "w1");
        let parent = span.parent.and_then(|p| spans.get(&p)).expect("a parent span");
        assert_eq!(parent.name, "kcl_worker", "shard spans live inside the worker's span");
        assert_eq!(parent.fields["worker"], "w1");
    }
    let events = lock(&subscriber.0.events).clone();
    let expired: Vec<&(String, Option<u64>)> = events.iter().filter(|(m, _)| m.contains("iterator expired")).collect();
    assert_eq!(expired.len(), 1, "{events:?}");
    let span = expired[0].1.and_then(|id| spans.get(&id)).expect("emitted inside a span");
    assert_eq!(span.name, "shard", "the fetcher runs in its shard's span");
}
