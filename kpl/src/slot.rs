//! Everything the pipeline keeps for one shard: its aggregator, the Kinesis records ready to go
//! (waiting for the limiter and an in-flight slot), the records waiting out a retry backoff, its
//! limiter and its metrics.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use kinesis_core::ShardId;
use kinesis_core::hash_key::PassThroughHasher;
use tokio::time::Instant;

use crate::aggregator::{Aggregator, Built, KinesisRecord};
use crate::config::Settings;
use crate::limiter::Limiter;
use crate::record::Pending;
use crate::telemetry::ShardMetrics;

/// Bytes per-key ordering may hold for one user record, at most: its key in its aggregate's key
/// list (8) and an entry in its shard's [`OrderKeys`] (16, plus the table's spare room).
pub(crate) const ORDER_KEY_BYTES: usize = 32;

/// How many of a shard's Kinesis records carry one key: `queued` in the ready queue, `out` in
/// flight or waiting out a retry backoff.
#[derive(Clone, Copy, Debug, Default)]
struct KeyCount {
    queued: u32,
    out: u32,
}

/// The keys ([`key_id`](crate::aggregator::key_id)s) of a shard's records that are neither stored
/// nor finished, with where those records are: what per-key ordering consults. A record may not be
/// sent while one of its keys is out (an earlier record of the key could still fail and be
/// retried), and an open aggregate that shares a key with any of them is held back anyway, so it
/// may keep growing instead of closing.
#[derive(Debug, Default)]
pub(crate) struct OrderKeys {
    counts: HashMap<u64, KeyCount, BuildHasherDefault<PassThroughHasher>>,
    /// How many keys have left the map: only that can free a held-back aggregate.
    removals: u64,
}

impl OrderKeys {
    fn change(&mut self, keys: &[u64], change: impl Fn(&mut KeyCount)) {
        for key in keys {
            let count = self.counts.entry(*key).or_default();
            change(count);
            if count.queued == 0 && count.out == 0 {
                self.counts.remove(key);
                self.removals += 1;
            }
        }
    }

    /// A record joined the ready queue.
    fn queue(&mut self, keys: &[u64]) {
        self.change(keys, |c| c.queued += 1);
    }

    /// A record left the ready queue without being sent (expiry, re-routing).
    fn unqueue(&mut self, keys: &[u64]) {
        self.change(keys, |c| c.queued = c.queued.saturating_sub(1));
    }

    /// A record left the ready queue in a request.
    fn send(&mut self, keys: &[u64]) {
        self.change(keys, |c| {
            c.queued = c.queued.saturating_sub(1);
            c.out += 1;
        });
    }

    /// A record went out of reach of the ready queue (into a request or a backoff).
    fn hold(&mut self, keys: &[u64]) {
        self.change(keys, |c| c.out += 1);
    }

    /// A record that was out came back (answered, or its backoff ended).
    fn release(&mut self, keys: &[u64]) {
        self.change(keys, |c| c.out = c.out.saturating_sub(1));
    }

    /// Whether a record with these keys must wait: an earlier record of one of them is out.
    pub fn blocks(&self, keys: &[u64]) -> bool {
        !self.counts.is_empty() && keys.iter().any(|k| self.counts.get(k).is_some_and(|c| c.out > 0))
    }

    /// Whether any of these keys belongs to a record queued or out.
    fn holds_any(&self, keys: &[u64]) -> bool {
        !self.counts.is_empty() && keys.iter().any(|k| self.counts.contains_key(k))
    }
}

/// One shard's state. Slots outlive their shard's place in the map while requests for it are in
/// flight.
pub(crate) struct Slot {
    pub id: ShardId,
    /// The shards this one was split or merged from (per-key ordering waits for them).
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
    /// With ordered records: the keys of the records queued, in flight or in backoff.
    pub keys: OrderKeys,
    /// Whether `keys` is kept (per-key or per-shard ordering).
    pub keeps_order: bool,
    /// The open aggregate was found held back when `keys` had seen this many removals and the
    /// aggregator this many aggregates: it still is until either moves.
    held_back_at: Option<(u64, u64)>,
    pub metrics: ShardMetrics,
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Slot {
    /// An empty slot for an open shard; `keeps_order`: hold the keys of records in flight and in
    /// backoff.
    pub fn new(id: ShardId, parents: Vec<ShardId>, limiter: Limiter, metrics: ShardMetrics, keeps_order: bool) -> Self {
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
            keys: OrderKeys::default(),
            keeps_order,
            held_back_at: None,
            metrics,
        }
    }

    /// Appends a new record to the ready queue.
    pub fn push_ready(&mut self, record: KinesisRecord) {
        if self.keeps_order {
            self.keys.queue(record.keys());
        }
        self.ready_bytes += record.billed_size();
        self.next_expiry = earliest(self.next_expiry, record.expires);
        self.ready.push_back(record);
    }

    /// Puts a record into the ready queue at its place by creation order: retried and re-routed
    /// records go before newer ones.
    pub fn insert_ready(&mut self, record: KinesisRecord) {
        if self.keeps_order {
            self.keys.queue(record.keys());
        }
        self.ready_bytes += record.billed_size();
        self.next_expiry = earliest(self.next_expiry, record.expires);
        let at = self.ready.partition_point(|r| r.seq <= record.seq);
        self.ready.insert(at, record);
    }

    /// Takes the head of the ready queue to send it: its keys now count as out.
    pub fn take_to_send(&mut self) -> Option<KinesisRecord> {
        let record = self.ready.pop_front()?;
        self.ready_bytes = self.ready_bytes.saturating_sub(record.billed_size());
        if self.keeps_order {
            self.keys.send(record.keys());
        }
        Some(record)
    }

    /// Parks a failed record until its `retry_at`; its keys hold newer records back.
    pub fn push_backoff(&mut self, record: KinesisRecord) {
        self.next_retry = earliest(self.next_retry, record.retry_at);
        self.next_expiry = earliest(self.next_expiry, record.expires);
        if self.keeps_order {
            self.keys.hold(record.keys());
        }
        self.backoff.push(record);
    }

    /// A record of this shard came back from a request (stored or failed).
    pub fn returned(&mut self, record: &KinesisRecord) {
        if self.keeps_order {
            self.keys.release(record.keys());
        }
    }

    /// Adds a user record to the shard's aggregator (Kinesis records it completes go to `out`).
    /// An aggregate that shares a key with a record of the shard still queued or out could not
    /// go before that record's reply anyway: it keeps filling up to `grown_limit` bytes rather
    /// than closing at `aggregation_max_size`, so a slow shard carries more per round trip.
    pub fn aggregate(&mut self, user: Pending, s: &Settings, grown_limit: usize, out: &mut Vec<Built>) {
        let (keys, keeps_order) = (&self.keys, self.keeps_order);
        self.aggregator.add(user, s, out, |open| (keeps_order && keys.holds_any(open)).then_some(grown_limit));
    }

    /// Whether the open aggregate shares a key with a record of the shard still queued or out:
    /// closing it at its deadline would gain nothing.
    pub fn open_aggregate_held_back(&mut self) -> bool {
        if !self.keeps_order {
            return false;
        }
        let now = (self.keys.removals, self.aggregator.opened());
        if self.held_back_at == Some(now) {
            return true;
        }
        let held = self.keys.holds_any(self.aggregator.keys());
        self.held_back_at = held.then_some(now);
        held
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
            // Ready again, ahead of every newer record of its keys (by creation order).
            if self.keeps_order {
                self.keys.release(record.keys());
            }
            self.insert_ready(record);
        }
    }

    /// Takes every queued record out (ready and backoff), for expiry or re-routing.
    pub fn take_queued(&mut self) -> (Vec<KinesisRecord>, Vec<KinesisRecord>) {
        self.ready_bytes = 0;
        self.next_retry = None;
        self.next_expiry = None;
        let backoff = std::mem::take(&mut self.backoff);
        let ready: Vec<KinesisRecord> = self.ready.drain(..).collect();
        if self.keeps_order {
            ready.iter().for_each(|record| self.keys.unqueue(record.keys()));
            backoff.iter().for_each(|record| self.keys.release(record.keys()));
        }
        (ready, backoff)
    }

    /// Whether nothing is queued, aggregated or in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.ready.is_empty() && self.backoff.is_empty() && self.aggregator.is_empty()
    }
}
