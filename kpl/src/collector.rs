//! Step 5: pack Kinesis records from the shards' ready queues into `PutRecords` requests of at
//! most `collection_max_count` entries and `collection_max_size` bytes (partition keys + data, as
//! the service counts them); a record larger than that goes alone.
//!
//! A request is built when one would be full, when a ready record has reached its deadline, when
//! a shard has 256 KiB ready (as in the KPL), or when the producer is flushing; it then takes
//! records from every shard that may send (round robin, so no shard starves), each admitted by its
//! shard's limiter. A shard may send while it has fewer than `max_in_flight_per_shard` requests
//! in flight. With per-key ordering (the default), also only when no parent shard has a request
//! in flight or records ready, and its next record waits while one of its hash keys is out — in
//! a request in flight, in this request, or waiting out a retry backoff — so requests in flight
//! together never share a key for one shard (a partial failure could otherwise store the later
//! record and retry the earlier one).

use tokio::time::Instant;

use crate::aggregator::KinesisRecord;
use crate::config::{RecordOrder, Settings};
use crate::slot::Slot;

/// A shard with this many bytes ready sends without waiting for a full request or a deadline,
/// as the KPL's collector does: more would only queue behind the shard's own rate limit.
pub(crate) const SHARD_READY_BYTES_TRIGGER: usize = 256 * 1024;

/// A request's worth of records, and the shards it holds an in-flight place of.
pub(crate) struct Batch {
    pub records: Vec<KinesisRecord>,
    pub slots: Vec<usize>,
}

/// Builds requests from the shards' ready queues.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    /// Where the next round-robin pass starts.
    cursor: usize,
}

/// Whether the slot at `index` may add records to a request now.
fn may_send(slots: &[Option<Slot>], index: usize, s: &Settings, now: Instant) -> bool {
    let Some(Some(slot)) = slots.get(index) else { return false };
    if slot.ready.is_empty() || slot.in_flight >= s.max_in_flight_per_shard {
        return false;
    }
    if slot.limiter_wait.is_some_and(|t| t > now) {
        return false;
    }
    if s.ordering == RecordOrder::PerKey {
        let parent_busy = slot.parents.iter().any(|parent| {
            slots.iter().flatten().any(|other| &other.id == parent && (other.in_flight > 0 || !other.ready.is_empty()))
        });
        if parent_busy {
            return false;
        }
    }
    true
}

impl Collector {
    /// The next request to send, if one should go now, of at most `max_bytes` (the congestion
    /// control's request size; a single larger record goes alone). `force` sends whatever may be
    /// sent (flush and shutdown).
    pub fn next_batch(
        &mut self,
        slots: &mut [Option<Slot>],
        s: &Settings,
        now: Instant,
        force: bool,
        max_bytes: usize,
    ) -> Option<Batch> {
        let max_bytes = max_bytes.min(s.collection_max_size);
        // Survey: is there a full request's worth, or a record due?
        let (mut count, mut bytes, mut due) = (0usize, 0usize, false);
        for index in 0..slots.len() {
            if !may_send(slots, index, s, now) {
                continue;
            }
            if let Some(Some(slot)) = slots.get(index) {
                count += slot.ready.len();
                bytes += slot.ready_bytes;
                // An open aggregate that grows because it is held back by these records counts
                // towards the shard's trigger: it is where the shard's batching goes on.
                due |= slot.ready_bytes + slot.aggregator.grown_bytes() >= SHARD_READY_BYTES_TRIGGER
                    || slot.ready.front().is_some_and(|r| r.deadline <= now);
            }
        }
        if count == 0 || !(force || due || count >= s.collection_max_count || bytes >= max_bytes) {
            return None;
        }

        let mut batch = Batch { records: Vec::new(), slots: Vec::new() };
        let mut size = 0usize;
        let n = slots.len();
        'slots: for step in 0..n {
            let index = (self.cursor + step) % n;
            if !may_send(slots, index, s, now) {
                continue;
            }
            let Some(Some(slot)) = slots.get_mut(index) else { continue };
            let mut took = false;
            let mut full = false;
            while let Some(front) = slot.ready.front() {
                let record_size = front.billed_size();
                if batch.records.len() >= s.collection_max_count
                    || (size + record_size > max_bytes && !batch.records.is_empty())
                {
                    full = true;
                    break;
                }
                // A record taken into this request counts as out already, so this also keeps two
                // records of one key out of one request.
                if slot.keeps_order && slot.keys.blocks(front.keys()) {
                    break;
                }
                if let Err(retry_at) = slot.limiter.try_acquire(record_size, now) {
                    slot.limiter_wait = Some(retry_at);
                    break;
                }
                slot.limiter_wait = None;
                let Some(record) = slot.take_to_send() else { break };
                size += record_size;
                batch.records.push(record);
                took = true;
            }
            if took {
                slot.in_flight += 1;
                batch.slots.push(index);
            }
            if full {
                break 'slots;
            }
        }
        self.cursor = if n == 0 { 0 } else { (self.cursor + 1) % n };
        if batch.records.is_empty() { None } else { Some(batch) }
    }
}
