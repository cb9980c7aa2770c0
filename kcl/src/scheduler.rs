//! The [`Scheduler`]: one per worker. It heartbeats (or, in per-lease mode, renews its leases and
//! reports its metrics),
//! discovers the leases the leader gives it, runs one task per held shard, and — when elected —
//! leads: shard sync, assignment passes, lease cleanup.
//!
//! ```no_run
//! # async fn example(kinesis: std::sync::Arc<dyn kinesis_core::Kinesis>) -> Result<(), kcl::KclError> {
//! use async_trait::async_trait;
//! use kcl::processor::*;
//! use kcl::{ProcessorError, Scheduler};
//!
//! struct Printer;
//!
//! #[async_trait]
//! impl ShardRecordProcessor for Printer {
//!     async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
//!         for record in input.records {
//!             println!("{} {:?}", record.partition_key, record.data);
//!         }
//!         input.checkpointer.checkpoint().await?;
//!         Ok(())
//!     }
//!     async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
//!         Ok(input.checkpointer.checkpoint().await?)
//!     }
//!     async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
//!         Ok(input.checkpointer.checkpoint().await?)
//!     }
//! }
//!
//! let scheduler = Scheduler::builder("my-app", "my-stream", kinesis)
//!     .memory_stores() // or the DynamoDB stores of kcl-ddb-store
//!     .processor_factory(|_shard: &kinesis_core::ShardId| Printer)
//!     .build()?;
//! let handle = scheduler.start();
//! // ...
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use kinesis_core::{Kinesis, StreamRef};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{InitialPosition, RetrievalMode, SchedulerConfig};
pub use crate::context::{SchedulerState, ShardPhase, ShardStatus};
use crate::context::{WallClock, WorkerContext};
use crate::error::KclError;
use crate::leader::Leader;
use crate::lease_renewer::{Fencing, LeaseRegistry, LeaseRenewer};
use crate::metrics::WorkerMetricHandles;
use crate::processor::ShardRecordProcessorFactory;
use crate::retrieval::fanout::FanOutConsumer;
use crate::store::deadline::{Timeout, WithTimeout};
use crate::store::memory::{MemoryCoordinatorStore, MemoryLeaseStore, MemoryWorkerMetricsStore};
use crate::store::{CoordinatorStore, LeaseStore, WorkerMetricsStore, WorkerSignals};
use crate::{lease_discovery, worker_metrics};

/// Builds a [`Scheduler`]; start from [`Scheduler::builder`].
///
/// | Setting | Required | Default |
/// |---|---|---|
/// | application name, stream, Kinesis client | yes (arguments of [`Scheduler::builder`]) | — |
/// | [`processor_factory`](Self::processor_factory) | yes | — |
/// | stores: [`lease_store`](Self::lease_store), [`coordinator_store`](Self::coordinator_store), [`worker_metrics_store`](Self::worker_metrics_store) — or [`memory_stores`](Self::memory_stores) | yes | — |
/// | [`worker_id`](Self::worker_id) | no | `worker-` + 16 random hex digits |
/// | [`initial_position`](Self::initial_position) | no | [`InitialPosition::Latest`] |
/// | [`retrieval`](Self::retrieval) | no | [`RetrievalMode::Polling`] |
/// | [`config`](Self::config) | no | [`SchedulerConfig::default`]: worker heartbeats every 2 s, lease 10 s, leader lock 8 s (heartbeat 2 s), rows read every 2.5 s; per-lease mode: renewal 3.3 s, assignment every 2.5 s, worker metrics every 2 s |
///
/// The stores are required on purpose: workers share shards only through shared stores, so a
/// silent in-memory default would let every worker of a fleet process every shard.
/// [`build`](Self::build) checks the settings and fails with [`KclError::Config`] when one is
/// missing or the timers contradict each other (a renewal interval not shorter than the lease
/// duration, a leader heartbeat not shorter than the lock duration, a zero interval).
pub struct SchedulerBuilder {
    application_name: String,
    stream: StreamRef,
    kinesis: Arc<dyn Kinesis>,
    worker_id: Option<String>,
    initial_position: InitialPosition,
    retrieval: RetrievalMode,
    lease_store: Option<Arc<dyn LeaseStore>>,
    coordinator_store: Option<Arc<dyn CoordinatorStore>>,
    metrics_store: Option<Arc<dyn WorkerMetricsStore>>,
    factory: Option<Arc<dyn ShardRecordProcessorFactory>>,
    config: SchedulerConfig,
}

impl std::fmt::Debug for SchedulerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerBuilder")
            .field("application_name", &self.application_name)
            .field("stream", &self.stream)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl SchedulerBuilder {
    /// This worker's id, unique in the application. Default: `worker-` and 16 random hex digits.
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = Some(worker_id.into());
        self
    }

    /// Where new leases start (default `LATEST`).
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = position;
        self
    }

    /// Polling (default) or enhanced fan-out.
    pub fn retrieval(mut self, mode: RetrievalMode) -> Self {
        self.retrieval = mode;
        self
    }

    /// The lease store shared by the application's workers.
    pub fn lease_store(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.lease_store = Some(store);
        self
    }

    /// The coordinator store (leader lock).
    pub fn coordinator_store(mut self, store: Arc<dyn CoordinatorStore>) -> Self {
        self.coordinator_store = Some(store);
        self
    }

    /// The worker-metrics store.
    pub fn worker_metrics_store(mut self, store: Arc<dyn WorkerMetricsStore>) -> Self {
        self.metrics_store = Some(store);
        self
    }

    /// Fresh in-memory stores: for a single worker, or tests. Workers share leases only when
    /// they share the store instances.
    pub fn memory_stores(self) -> Self {
        self.lease_store(Arc::new(MemoryLeaseStore::new()))
            .coordinator_store(Arc::new(MemoryCoordinatorStore::new()))
            .worker_metrics_store(Arc::new(MemoryWorkerMetricsStore::new()))
    }

    /// The processor factory (any `Fn(&ShardId) -> impl ShardRecordProcessor`).
    pub fn processor_factory(mut self, factory: impl ShardRecordProcessorFactory) -> Self {
        self.factory = Some(Arc::new(factory));
        self
    }

    /// The configuration (default [`SchedulerConfig::default`]).
    pub fn config(mut self, config: SchedulerConfig) -> Self {
        self.config = config;
        self
    }

    /// Checks the settings and builds the scheduler.
    pub fn build(self) -> Result<Scheduler, KclError> {
        let missing = |what: &str| KclError::Config(format!("{what} is required"));
        let lease_store = self.lease_store.ok_or_else(|| missing("lease store"))?;
        let coordinator_store = self.coordinator_store.ok_or_else(|| missing("coordinator store"))?;
        let metrics_store = self.metrics_store.ok_or_else(|| missing("worker metrics store"))?;
        let factory = self.factory.ok_or_else(|| missing("processor factory"))?;
        let config = self.config;
        if config.lease_duration.is_zero() || config.renewal_interval() >= config.lease_duration {
            return Err(KclError::Config("the renewal interval must be shorter than the lease duration".into()));
        }
        if let Some(heartbeat) = config.heartbeat() {
            let interval = config.heartbeat_interval().unwrap_or_default();
            if interval.is_zero() || interval >= config.lease_duration / 2 {
                return Err(KclError::Config(
                    "the heartbeat interval must be positive and shorter than half the lease duration".into(),
                ));
            }
            let intervals = [
                heartbeat.full_scan_interval,
                heartbeat.discovery_interval,
                heartbeat.balance_interval,
                heartbeat.lease_stats_interval,
                heartbeat.leader_check_interval,
            ];
            if intervals.iter().any(Duration::is_zero) {
                return Err(KclError::Config("timer intervals must be positive".into()));
            }
        }
        if config.store_call_timeout().is_zero() || config.store_call_timeout() >= config.lease_duration / 3 {
            return Err(KclError::Config(
                "the store call timeout must be positive and shorter than a third of the lease duration".into(),
            ));
        }
        if config.leader_heartbeat_interval >= config.leader_lock_duration {
            return Err(KclError::Config("the leader heartbeat must be shorter than the leader lock duration".into()));
        }
        if config.assignment_interval().is_zero()
            || config.lease_discovery_interval.is_zero()
            || config.leader_check_interval.is_zero()
        {
            return Err(KclError::Config("timer intervals must be positive".into()));
        }
        let worker_id: Arc<str> =
            Arc::from(self.worker_id.unwrap_or_else(|| format!("worker-{:016x}", fastrand::u64(..))));
        let fanout = match &self.retrieval {
            RetrievalMode::FanOut { consumer_name } => Some(Arc::new(FanOutConsumer::new(
                self.kinesis.clone(),
                self.stream.clone(),
                consumer_name.clone().unwrap_or_else(|| self.application_name.clone()),
                config.fan_out.registration_attempts,
            ))),
            RetrievalMode::Polling => None,
        };
        let (state, _) =
            watch::channel(SchedulerState { worker_id: worker_id.to_string(), ..SchedulerState::default() });
        let abort = CancellationToken::new();
        // Every store call runs under the timeout, whatever the store (see `store::deadline`).
        let timeout = Timeout(config.store_call_timeout());
        let lease_store: Arc<dyn LeaseStore> = Arc::new(WithTimeout::new(lease_store, timeout));
        let coordinator_store: Arc<dyn CoordinatorStore> = Arc::new(WithTimeout::new(coordinator_store, timeout));
        let metrics_store: Arc<dyn WorkerMetricsStore> = Arc::new(WithTimeout::new(metrics_store, timeout));
        // Heartbeat mode: a fenced lease is taken up again after two lock durations (see
        // `Fencing`); per-lease mode: only once someone else wrote it.
        let quarantine_limit = config.heartbeat().map(|_| config.leader_lock_duration * 2);
        let ctx = WorkerContext {
            metrics: WorkerMetricHandles::new(&worker_id),
            worker_id,
            stream: self.stream,
            kinesis: self.kinesis,
            lease_store,
            coordinator_store,
            metrics_store,
            factory,
            config: Arc::new(config),
            initial_position: self.initial_position,
            retrieval: self.retrieval,
            fanout,
            registry: Arc::new(LeaseRegistry::default()),
            state,
            stop_renewer: abort.child_token(),
            fencing: Arc::new(Fencing::new(quarantine_limit)),
            max_record_bytes: tokio::sync::OnceCell::new(),
            abort,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            wall: WallClock::new(),
            signals: watch::Sender::new(WorkerSignals::default()),
            discovery_wanted: tokio::sync::Notify::new(),
            discovery_incomplete: std::sync::atomic::AtomicBool::new(false),
            shortfall_retries: std::sync::atomic::AtomicU32::new(0),
            lease_changes: std::sync::atomic::AtomicU64::new(0),
        };
        Ok(Scheduler { ctx: Arc::new(ctx), application_name: self.application_name })
    }
}

/// A worker of a KCL application. Build with [`Scheduler::builder`], then [`start`](Self::start)
/// it (or [`run`](Self::run) it until a token is cancelled).
pub struct Scheduler {
    ctx: Arc<WorkerContext>,
    application_name: String,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("application_name", &self.application_name)
            .field("worker_id", &self.ctx.worker_id)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A builder for a worker of application `application_name` consuming `stream`.
    pub fn builder(
        application_name: impl Into<String>,
        stream: impl Into<StreamRef>,
        kinesis: Arc<dyn Kinesis>,
    ) -> SchedulerBuilder {
        SchedulerBuilder {
            application_name: application_name.into(),
            stream: stream.into(),
            kinesis,
            worker_id: None,
            initial_position: InitialPosition::default(),
            retrieval: RetrievalMode::default(),
            lease_store: None,
            coordinator_store: None,
            metrics_store: None,
            factory: None,
            config: SchedulerConfig::default(),
        }
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.ctx.worker_id
    }

    /// Starts the worker's tasks on the current tokio runtime.
    pub fn start(self) -> SchedulerHandle {
        let ctx = self.ctx;
        let span = tracing::info_span!("kcl_worker", worker = %ctx.worker_id, app = %self.application_name);
        ctx.tracker.spawn(worker_metrics::run(ctx.clone()).instrument(span.clone()));
        let renewer = LeaseRenewer {
            store: ctx.lease_store.clone(),
            registry: ctx.registry.clone(),
            interval: ctx.config.heartbeat_interval().unwrap_or_else(|| ctx.config.renewal_interval()),
            metrics: ctx.metrics.clone(),
            reports_only: ctx
                .config
                .heartbeat()
                .map(|h| (h.lease_stats_interval, ctx.config.assignment.rebalance_threshold)),
        };
        ctx.tracker.spawn(renewer.run(ctx.stop_renewer.clone(), || false).instrument(span.clone()));
        ctx.tracker.spawn(lease_discovery::run(ctx.clone()).instrument(span.clone()));
        let fence = ctx.clone();
        ctx.tracker.spawn(
            async move {
                tokio::select! {
                    () = fence.abort.cancelled() => {}
                    () = fence.stop_renewer.cancelled() => {}
                    () = fence.fencing.run(&fence.registry) => {}
                }
            }
            .instrument(span.clone()),
        );
        ctx.tracker.spawn(Leader::new(ctx.clone()).run().instrument(span));
        SchedulerHandle { ctx }
    }

    /// Runs the worker until `token` is cancelled, then shuts it down gracefully.
    pub async fn run(self, token: CancellationToken) {
        let handle = self.start();
        token.cancelled().await;
        handle.shutdown().await;
    }
}

/// Controls a started worker. Dropping the handle leaves the worker running.
#[derive(Clone)]
pub struct SchedulerHandle {
    ctx: Arc<WorkerContext>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle").field("worker_id", &self.ctx.worker_id).finish_non_exhaustive()
    }
}

impl SchedulerHandle {
    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.ctx.worker_id
    }

    /// A snapshot of the worker's state.
    pub fn state(&self) -> SchedulerState {
        self.ctx.state.borrow().clone()
    }

    /// A receiver that sees every change of the worker's state.
    pub fn subscribe(&self) -> watch::Receiver<SchedulerState> {
        self.ctx.state.subscribe()
    }

    /// Shuts down gracefully: stops taking leases, resigns leadership, calls
    /// `shutdown_requested` on every shard (each may checkpoint), releases every lease so other
    /// workers get it at the leader's next pass, deletes the worker's metrics row, and waits for
    /// every task.
    pub async fn shutdown(self) {
        let ctx = self.ctx;
        ctx.shutdown.cancel();
        let mut state = ctx.state.subscribe();
        let registry = ctx.registry.clone();
        tokio::select! {
            () = ctx.abort.cancelled() => {}
            _ = state.wait_for(|_| registry.is_empty()) => {}
        }
        ctx.stop_renewer.cancel();
        ctx.tracker.close();
        ctx.tracker.wait().await;
    }

    /// Stops the worker at once as if its process crashed: every task ends, in-flight processor
    /// calls are dropped, nothing is checkpointed or released (other workers take the leases
    /// over when they expire). For tests of failover.
    pub async fn kill(self) {
        self.ctx.abort.cancel();
        self.ctx.tracker.close();
        self.ctx.tracker.wait().await;
    }

    /// Whether every task of the worker has ended.
    pub fn is_finished(&self) -> bool {
        self.ctx.tracker.is_closed() && self.ctx.tracker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kinesis_core::MemoryBroker;

    use super::*;
    use crate::config::{HeartbeatConfig, LeaseMode};
    use crate::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor};

    struct Nothing;

    #[async_trait::async_trait]
    impl ShardRecordProcessor for Nothing {
        async fn process_records(&mut self, _input: ProcessRecordsInput<'_>) -> Result<(), crate::ProcessorError> {
            Ok(())
        }
        async fn shard_ended(&mut self, _input: ShardEndedInput<'_>) -> Result<(), crate::ProcessorError> {
            Ok(())
        }
    }

    fn build(config: SchedulerConfig) -> Result<Scheduler, KclError> {
        Scheduler::builder("app", "stream", Arc::new(MemoryBroker::new()))
            .memory_stores()
            .processor_factory(|_: &kinesis_core::ShardId| Nothing)
            .config(config)
            .build()
    }

    #[test]
    fn heartbeat_timers_that_cannot_keep_a_lease_are_refused() {
        assert!(build(SchedulerConfig::default()).is_ok(), "the defaults");
        assert!(build(SchedulerConfig::default().per_lease()).is_ok());
        let slow = HeartbeatConfig { heartbeat_interval: Some(Duration::from_secs(5)), ..HeartbeatConfig::default() };
        let refused = build(SchedulerConfig::default().with_lease_mode(LeaseMode::WorkerHeartbeat(slow)));
        assert!(
            matches!(refused, Err(KclError::Config(ref why)) if why.contains("heartbeat interval")),
            "half the lease"
        );
        let zero = HeartbeatConfig { full_scan_interval: Duration::ZERO, ..HeartbeatConfig::default() };
        let refused = build(SchedulerConfig::default().with_lease_mode(LeaseMode::WorkerHeartbeat(zero)));
        assert!(matches!(refused, Err(KclError::Config(_))), "a zero safety net");
    }
}
