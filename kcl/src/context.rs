//! What a worker's tasks share: the [`WorkerContext`] (stores, client, configuration, the held
//! leases, the published state, the shutdown tokens) and the state types it publishes. The tasks
//! (`lease_discovery`, `shard_consumer`, `leader`, `worker_metrics`, `shard_sync`) use it; the
//! scheduler builds it. It imports none of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use kinesis_core::aggregation::DecodeLimits;
use kinesis_core::{Kinesis, ShardId, StreamRef};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{InitialPosition, RetrievalMode, SchedulerConfig};
use crate::error::ShardError;
use crate::lease::Lease;
use crate::lease_renewer::{Fencing, HeldLease, HeldLeaseContext, LeaseRegistry};
use crate::metrics::WorkerMetricHandles;
use crate::processor::ShardRecordProcessorFactory;
use crate::retrieval::fanout::FanOutConsumer;
use crate::store::{CoordinatorStore, LeaseStore, WorkerMetricsStore, WorkerSignals};

/// Where a held shard is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShardPhase {
    /// Waiting until every parent shard is finished.
    #[default]
    WaitingOnParents,
    /// Calling the processor's `initialize`.
    Initializing,
    /// Delivering records.
    Processing,
    /// `shutdown_requested` (handoff or worker shutdown) and release.
    ShuttingDown,
    /// The shard ended: `shard_ended` and release.
    ShardEnded,
}

/// A held shard as the scheduler reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardStatus {
    /// Lifecycle phase.
    pub phase: ShardPhase,
    /// The last read's distance from the tip of the shard (the lag), ms.
    pub millis_behind_latest: Option<u64>,
    /// Records accepted by the processor since this worker took the lease.
    pub records_processed: u64,
    /// The current error, if any.
    pub error: Option<ShardError>,
}

/// A snapshot of a worker: what it holds, how far behind each shard is, and errors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedulerState {
    /// The worker's id.
    pub worker_id: String,
    /// Whether the worker is the leader.
    pub is_leader: bool,
    /// Held shards by lease key.
    pub shards: BTreeMap<String, ShardStatus>,
    /// Shards this worker stopped after a processing error (and released), with the error;
    /// cleared when the worker takes the shard again.
    pub stopped_shards: BTreeMap<String, ShardError>,
}

/// Wall-clock time derived from tokio's clock (so paused-time tests control it too).
#[derive(Debug)]
pub(crate) struct WallClock {
    anchor_system: SystemTime,
    anchor: Instant,
}

impl WallClock {
    pub fn new() -> Self {
        WallClock { anchor_system: SystemTime::now(), anchor: Instant::now() }
    }

    pub fn now(&self) -> SystemTime {
        self.anchor_system + Instant::now().saturating_duration_since(self.anchor)
    }

    pub fn now_secs(&self) -> u64 {
        self.now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// Everything a worker's tasks share.
pub(crate) struct WorkerContext {
    pub worker_id: Arc<str>,
    pub stream: StreamRef,
    pub kinesis: Arc<dyn Kinesis>,
    pub lease_store: Arc<dyn LeaseStore>,
    pub coordinator_store: Arc<dyn CoordinatorStore>,
    pub metrics_store: Arc<dyn WorkerMetricsStore>,
    pub factory: Arc<dyn ShardRecordProcessorFactory>,
    pub config: Arc<SchedulerConfig>,
    pub initial_position: InitialPosition,
    pub retrieval: RetrievalMode,
    pub fanout: Option<Arc<FanOutConsumer>>,
    pub registry: Arc<LeaseRegistry>,
    pub state: watch::Sender<SchedulerState>,
    /// Crash: every task stops at once, nothing is released.
    pub abort: CancellationToken,
    /// Graceful shutdown: shards checkpoint and release, the leader resigns.
    pub shutdown: CancellationToken,
    /// Stops the renewer once every shard has let go.
    pub stop_renewer: CancellationToken,
    /// The leader fence and the leases it quarantined.
    pub fencing: Arc<Fencing>,
    /// The stream's maximum record size, read once (`DescribeStreamSummary`).
    pub max_record_bytes: tokio::sync::OnceCell<usize>,
    pub tracker: TaskTracker,
    pub metrics: WorkerMetricHandles,
    pub wall: WallClock,
    /// Heartbeat mode: the signals the leader left on this worker's row, as the last heartbeat
    /// returned them.
    pub signals: watch::Sender<WorkerSignals>,
    /// Asks lease discovery for a pass now (the assignment version changed, a heartbeat
    /// recovered, or the last pass found less than the leader assigned).
    pub discovery_wanted: Notify,
    /// Set by discovery when its pass found fewer leases than the leader says it assigned (the
    /// owner index lags) or a lease still in handoff: the next heartbeat asks for another pass.
    pub discovery_incomplete: AtomicBool,
    /// How many passes since the last assignment change found fewer leases than the leader
    /// says it assigned (bounded: a count can also be short because a lease finished since).
    pub shortfall_retries: std::sync::atomic::AtomicU32,
    /// Counts this worker's changes to the lease set the leader must act on (leases released or
    /// finished, child leases created); reported on the heartbeat row.
    pub lease_changes: AtomicU64,
}

impl WorkerContext {
    /// Wraps a lease this worker owns, for `shard_id`.
    pub fn hold(&self, lease: Lease, shard_id: ShardId) -> HeldLease {
        let worker = HeldLeaseContext {
            worker_id: self.worker_id.clone(),
            lease_duration: self.config.lease_duration,
            heartbeat_bound: self.config.heartbeat().is_some(),
            abort: &self.abort,
            shutdown: &self.shutdown,
            fencing: self.fencing.clone(),
        };
        HeldLease::new(lease, shard_id, worker)
    }

    /// How far a record of this stream may expand: compressed aggregates inflate to at most the
    /// stream's maximum record size (read once; the service's largest, 10 MiB, until it is
    /// known), and aggregates hold at most `max_user_records_per_aggregate` user records.
    pub async fn decode_limits(&self) -> DecodeLimits {
        let defaults = DecodeLimits::default();
        let describe = || async {
            let summary = self.kinesis.describe_stream_summary(&self.stream).await?;
            Ok::<_, kinesis_core::KinesisError>(summary.max_record_size_kib as usize * 1024)
        };
        let max_record_bytes = match self.max_record_bytes.get_or_try_init(describe).await {
            Ok(bytes) => (*bytes).min(defaults.max_inflated_bytes),
            Err(e) => {
                tracing::debug!(error = %e, "reading the stream's maximum record size failed; using the service's largest");
                defaults.max_inflated_bytes
            }
        };
        DecodeLimits {
            max_inflated_bytes: max_record_bytes,
            max_user_records: self.config.max_user_records_per_aggregate,
        }
    }

    pub fn at_timestamp(&self) -> Option<SystemTime> {
        match self.initial_position {
            InitialPosition::AtTimestamp(t) => Some(t),
            _ => None,
        }
    }

    pub fn update_shard(&self, key: &str, change: impl FnOnce(&mut ShardStatus)) {
        self.state.send_if_modified(|s| match s.shards.get_mut(key) {
            Some(status) => {
                change(status);
                true
            }
            None => false,
        });
    }

    pub fn add_shard(&self, key: &str) {
        self.state.send_modify(|s| {
            s.shards.insert(key.to_owned(), ShardStatus::default());
            s.stopped_shards.remove(key);
        });
    }

    pub fn remove_shard(&self, key: &str) {
        self.state.send_modify(|s| {
            s.shards.remove(key);
        });
    }

    pub fn record_failure(&self, key: &str, error: ShardError) {
        self.state.send_modify(|s| {
            s.stopped_shards.insert(key.to_owned(), error);
        });
    }

    /// Records a change of the lease set the leader must act on (heartbeat mode reports it).
    pub fn note_lease_change(&self) {
        self.lease_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        self.state.send_if_modified(|s| std::mem::replace(&mut s.is_leader, leader) != leader);
    }
}
