//! [`ProducerStats`]: the producer's own cumulative counters, readable at any time without a
//! metrics recorder (examples and tests print them).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of what the producer has done since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerStats {
    /// User records accepted by `send`/`try_send`.
    pub user_records_sent: u64,
    /// User records delivered (their future resolved `Ok`).
    pub user_records_delivered: u64,
    /// User records failed (their future resolved `Err`), expired ones included.
    pub user_records_failed: u64,
    /// User records failed because their TTL passed.
    pub user_records_expired: u64,
    /// User records accepted and not finished yet.
    pub user_records_pending: u64,
    /// Kinesis records (aggregates or plain records) stored.
    pub kinesis_records_put: u64,
    /// `PutRecords` requests completed (successfully or not).
    pub put_requests: u64,
    /// User-record retries: each time a user record is scheduled to be sent again.
    pub retries: u64,
    /// Kinesis records refused with throttling (per entry, or per entry of a throttled request).
    pub throttles: u64,
    /// Kinesis records that failed with any error, throttling included.
    pub errors: u64,
    /// User records re-sent because their aggregate landed on a shard that does not own all of
    /// their hash keys (the shard split while they were on their way); see the crate docs.
    pub wrong_shard_resends: u64,
    /// Shard-map reads (`ListShards`) completed after the first.
    pub shard_map_refreshes: u64,
    /// Bytes currently counted against `max_buffered_bytes`.
    pub buffered_bytes: u64,
    /// The most bytes ever counted against `max_buffered_bytes`.
    pub peak_buffered_bytes: u64,
}

/// The counters behind [`ProducerStats`], written by the pipeline task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
    pub kinesis_records_put: AtomicU64,
    pub put_requests: AtomicU64,
    pub retries: AtomicU64,
    pub throttles: AtomicU64,
    pub errors: AtomicU64,
    pub wrong_shard_resends: AtomicU64,
    pub shard_map_refreshes: AtomicU64,
    pub peak_buffered_bytes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
