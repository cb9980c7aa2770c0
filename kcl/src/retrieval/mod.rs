//! Reading a shard: polling ([`polling`]) or enhanced fan-out ([`fanout`]), both feeding a
//! bounded prefetch queue that the shard's processor drains, and both de-aggregating with
//! [`deaggregate`].
//!
//! The queue holds at most `max_prefetch_batches` batches and `max_prefetch_bytes` bytes of user
//! data (a single larger batch is admitted alone). A fetcher waits while the queue is full, so a
//! slow processor slows reading and memory stays bounded; with fan-out, not pulling the
//! subscription's next event is the backpressure.
//!
//! Both fetchers stop after delivering the shard's end (a batch carrying the child shards). A shard
//! the service no longer knows (expired past retention) ends the same way, with the children a
//! shard listing shows ([`FetchContext::children_if_gone`]).

pub(crate) mod deaggregate;
pub(crate) mod fanout;
pub(crate) mod polling;

use std::sync::Arc;
use std::time::SystemTime;

use kinesis_core::aggregation::DecodeLimits;
use kinesis_core::sequence::StartingPosition;
use kinesis_core::shard::ChildShard;
use kinesis_core::{ExtendedSequenceNumber, HashKeyRange, Kinesis, Record, ShardId, StreamRef};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::config::SchedulerConfig;
use crate::metrics::ShardMetrics;
use crate::record::KinesisClientRecord;

/// A batch handed from a fetcher to the shard's processor loop.
pub(crate) struct Batch {
    /// User records (empty for a read that found nothing).
    pub records: Vec<KinesisClientRecord>,
    /// Their data bytes.
    pub bytes: usize,
    /// What they hold of the prefetch budget (data plus per-record overhead).
    pub charge: usize,
    /// The read's distance from the tip of the shard.
    pub millis_behind_latest: Option<u64>,
    /// Set on the last batch of a closed shard: its children.
    pub child_shards: Option<Vec<ChildShard>>,
    /// When the batch entered the queue.
    pub enqueued_at: Instant,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Batch {
    /// A batch of expanded records.
    pub fn new(
        expanded: deaggregate::Expanded,
        millis_behind_latest: Option<u64>,
        child_shards: Option<Vec<ChildShard>>,
    ) -> Self {
        let deaggregate::Expanded { records, bytes, charge } = expanded;
        Batch { records, bytes, charge, millis_behind_latest, child_shards, enqueued_at: Instant::now(), _permit: None }
    }

    /// The last batch of a shard that ended with no records left to read.
    pub fn end(children: Vec<ChildShard>) -> Self {
        let nothing = deaggregate::Expanded { records: Vec::new(), bytes: 0, charge: 0 };
        Batch::new(nothing, None, Some(children))
    }
}

/// The sending side of a shard's prefetch queue.
pub(crate) struct Prefetch {
    tx: mpsc::Sender<Batch>,
    bytes: Arc<Semaphore>,
    max_kib: u32,
}

/// A prefetch queue of at most `max_batches` batches and `max_bytes` bytes.
pub(crate) fn prefetch_queue(max_batches: usize, max_bytes: usize) -> (Prefetch, mpsc::Receiver<Batch>) {
    let (tx, rx) = mpsc::channel(max_batches.max(1));
    let max_kib = u32::try_from(max_bytes.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, Semaphore::MAX_PERMITS as u32);
    (Prefetch { tx, bytes: Arc::new(Semaphore::new(max_kib as usize)), max_kib }, rx)
}

impl Prefetch {
    /// Queues a batch, waiting for room; false once the processor side is gone.
    pub async fn send(&self, mut batch: Batch) -> bool {
        let kib = u32::try_from(batch.charge.div_ceil(1024)).unwrap_or(u32::MAX).min(self.max_kib);
        if kib > 0 {
            match self.bytes.clone().acquire_many_owned(kib).await {
                Ok(permit) => batch._permit = Some(permit),
                Err(_) => return false,
            }
        }
        batch.enqueued_at = Instant::now();
        self.tx.send(batch).await.is_ok()
    }
}

/// What a fetcher needs to read one shard.
pub(crate) struct FetchContext {
    pub kinesis: Arc<dyn Kinesis>,
    pub stream: StreamRef,
    pub shard_id: ShardId,
    /// The lease's checkpoint when processing started.
    pub checkpoint: ExtendedSequenceNumber,
    /// The configured `AT_TIMESTAMP` time, for leases whose checkpoint is that sentinel.
    pub at_timestamp: Option<SystemTime>,
    pub hash_range: Option<HashKeyRange>,
    /// How far one record may expand (the stream's maximum record size for compressed ones).
    pub decode_limits: DecodeLimits,
    pub config: Arc<SchedulerConfig>,
    pub metrics: ShardMetrics,
    /// Reports a retrieval error (or its end, with `None`) to the scheduler's state.
    pub report: Arc<dyn Fn(Option<String>) + Send + Sync>,
    /// Seeds the backoff jitter.
    pub seed: u64,
}

impl FetchContext {
    /// Where reading starts for the lease's checkpoint. A concrete checkpoint re-reads its
    /// record (`AT_SEQUENCE_NUMBER`) and the de-aggregator skips the sub-records it covers.
    pub fn starting_position(&self) -> StartingPosition {
        match &self.checkpoint {
            ExtendedSequenceNumber::TrimHorizon | ExtendedSequenceNumber::ShardEnd => StartingPosition::TrimHorizon,
            ExtendedSequenceNumber::Latest => StartingPosition::Latest,
            ExtendedSequenceNumber::AtTimestamp => match self.at_timestamp {
                Some(t) => StartingPosition::AtTimestamp(t),
                None => {
                    tracing::warn!(shard = %self.shard_id, "lease checkpoint is AT_TIMESTAMP but no timestamp is configured; reading from TRIM_HORIZON");
                    StartingPosition::TrimHorizon
                }
            },
            ExtendedSequenceNumber::Sequence { sequence_number, .. } => {
                StartingPosition::AtSequenceNumber(sequence_number.clone())
            }
        }
    }

    pub fn deaggregator(&self) -> deaggregate::Deaggregator {
        deaggregate::Deaggregator::new(self.hash_range, &self.checkpoint, self.decode_limits)
    }

    /// Expands the records of one read and queues them, in batches that each hold at most half
    /// the prefetch budget (plus one Kinesis record's expansion), waiting for room before
    /// expanding the next: a read of many small user records never sits in memory expanded
    /// beyond the budget. The last batch carries `child_shards`. False once the processor side
    /// is gone.
    pub async fn queue_read(
        &self,
        deagg: &mut deaggregate::Deaggregator,
        queue: &Prefetch,
        records: Vec<Record>,
        millis_behind_latest: Option<u64>,
        mut child_shards: Option<Vec<ChildShard>>,
    ) -> bool {
        let budget = (self.config.max_prefetch_bytes / 2).max(64 * 1024);
        let mut records = records.into_iter();
        loop {
            let expanded = deagg.expand_chunk(&mut records, budget);
            self.count(deagg);
            let last = records.len() == 0;
            let children = if last { child_shards.take() } else { None };
            if !queue.send(Batch::new(expanded, millis_behind_latest, children)).await {
                return false;
            }
            if last {
                return true;
            }
        }
    }

    /// After a `ResourceNotFoundException` for the shard: whether the shard is gone — past the
    /// stream's retention (the service no longer lists an expired shard) or otherwise absent from
    /// a listing of a stream that exists — and if so its children, from that listing. A gone shard
    /// is treated as ended, as the Java KCL does, so its children are not blocked forever.
    pub async fn children_if_gone(&self) -> Option<Vec<ChildShard>> {
        let shards = match self.kinesis.list_all_shards(&self.stream, None).await {
            Ok(shards) => shards,
            Err(e) => {
                tracing::debug!(shard = %self.shard_id, error = %e, "listing shards to check for an expired shard failed");
                return None;
            }
        };
        if shards.iter().any(|s| s.shard_id == self.shard_id) {
            return None;
        }
        tracing::info!(shard = %self.shard_id, "the shard no longer exists (past the retention period); treating it as ended");
        Some(
            shards
                .iter()
                .filter(|s| s.parents().any(|p| *p == self.shard_id))
                .map(|s| ChildShard {
                    shard_id: s.shard_id.clone(),
                    parent_shards: s.parents().cloned().collect(),
                    hash_key_range: s.hash_key_range,
                })
                .collect(),
        )
    }

    /// Adds the de-aggregator's counts to the shard's metrics.
    pub fn count(&self, deagg: &mut deaggregate::Deaggregator) {
        let (dropped, errors) = deagg.take_counts();
        if dropped > 0 {
            self.metrics.dropped_out_of_range.increment(dropped);
        }
        if errors > 0 {
            self.metrics.deaggregation_errors.increment(errors);
        }
    }
}
