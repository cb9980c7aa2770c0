//! Everything the pipeline keeps for one shard: its aggregator, the Kinesis records ready to go
//! (waiting for the limiter and an in-flight slot), the records waiting out a retry backoff, its
//! limiter and its metrics.

use std::collections::VecDeque;

use kinesis_core::ShardId;
use tokio::time::Instant;

use crate::aggregator::{Aggregator, KinesisRecord};
use crate::limiter::Limiter;
use crate::telemetry::ShardMetrics;

/// One shard's state. Slots outlive their shard's place in the map while requests for it are in
/// flight.
pub(crate) struct Slot {
    pub id: ShardId,
    /// The shards this one was split or merged from (strict ordering waits for them).
    pub parents: Vec<ShardId>,
    /// Whether the shard is in the current map.
    pub open: bool,
    pub aggregator: Aggregator,
    /// Kinesis records to send, in creation (`seq`) order.
    pub ready: VecDeque<KinesisRecord>,
    /// Billed bytes of `ready`.
    pub ready_bytes: usize,
    /// Failed records waiting for their retry time.
    pub backoff: Vec<KinesisRecord>,
    /// Earliest `retry_at` in `backoff`.
    pub next_retry: Option<Instant>,
    /// Earliest expiry in `ready` and `backoff`.
    pub next_expiry: Option<Instant>,
    pub limiter: Limiter,
    /// The limiter refused the head of `ready` until then.
    pub limiter_wait: Option<Instant>,
    /// Requests in flight that carry records for this shard.
    pub in_flight: usize,
    pub metrics: ShardMetrics,
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Slot {
    /// An empty slot for an open shard.
    pub fn new(id: ShardId, parents: Vec<ShardId>, limiter: Limiter, metrics: ShardMetrics) -> Self {
        Slot {
            id,
            parents,
            open: true,
            aggregator: Aggregator::default(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            backoff: Vec::new(),
            next_retry: None,
            next_expiry: None,
            limiter,
            limiter_wait: None,
            in_flight: 0,
            metrics,
        }
    }

    /// Appends a new record to the ready queue.
    pub fn push_ready(&mut self, record: KinesisRecord) {
        self.ready_bytes += record.billed_size();
        self.next_expiry = earliest(self.next_expiry, record.expires);
        self.ready.push_back(record);
    }

    /// Puts a record into the ready queue at its place by creation order: retried and re-routed
    /// records go before newer ones.
    pub fn insert_ready(&mut self, record: KinesisRecord) {
        self.ready_bytes += record.billed_size();
        self.next_expiry = earliest(self.next_expiry, record.expires);
        let at = self.ready.partition_point(|r| r.seq <= record.seq);
        self.ready.insert(at, record);
    }

    /// Takes the head of the ready queue.
    pub fn pop_ready(&mut self) -> Option<KinesisRecord> {
        let record = self.ready.pop_front()?;
        self.ready_bytes = self.ready_bytes.saturating_sub(record.billed_size());
        Some(record)
    }

    /// Parks a failed record until its `retry_at`.
    pub fn push_backoff(&mut self, record: KinesisRecord) {
        self.next_retry = earliest(self.next_retry, record.retry_at);
        self.next_expiry = earliest(self.next_expiry, record.expires);
        self.backoff.push(record);
    }

    /// Moves the records whose backoff has passed into the ready queue, in creation order.
    pub fn release_due(&mut self, now: Instant) {
        if self.next_retry.is_none_or(|t| t > now) {
            return;
        }
        let (mut due, waiting): (Vec<_>, Vec<_>) = self.backoff.drain(..).partition(|r| r.retry_at <= now);
        self.backoff = waiting;
        self.next_retry = self.backoff.iter().map(|r| r.retry_at).min();
        due.sort_by_key(|r| r.seq);
        for record in due {
            self.insert_ready(record);
        }
    }

    /// Takes every queued record out (ready and backoff), for expiry or re-routing.
    pub fn take_queued(&mut self) -> (Vec<KinesisRecord>, Vec<KinesisRecord>) {
        self.ready_bytes = 0;
        self.next_retry = None;
        self.next_expiry = None;
        (self.ready.drain(..).collect(), std::mem::take(&mut self.backoff))
    }

    /// Whether nothing is queued, aggregated or in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.ready.is_empty() && self.backoff.is_empty() && self.aggregator.is_empty()
    }
}
