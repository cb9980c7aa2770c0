//! Configuration of a worker: timers, retrieval, assignment and error policy, with documented
//! defaults.
//!
//! Every timer derives from [`SchedulerConfig::lease_duration`] (the Java KCL's
//! `failoverTimeMillis`, 10 s) unless set explicitly. The defaults are chosen so that
//!
//! * a crashed worker's shards are processed again within **2 × lease duration** (20 s): the
//!   leader sees a lease's counter unchanged for one lease duration (it scans every
//!   `lease_duration / 4` and also exactly when the oldest observation would expire), then assigns
//!   the lease; the new owner finds it with its next discovery query (every 2 s) — worst case
//!   ≈ 10 + 2.5 + 2 ≈ 15 s after the last renewal, which was at most 3.3 s before the crash;
//! * a crashed leader's shards move within **15 s**: the lock's lease is 8 s, heartbeats every
//!   2 s and contenders look every 2 s, so a contender takes the lock at most 8 s after it first
//!   saw the last version, i.e. ≤ 10 s after the crash, and reassigns the old leader's leases at
//!   once (the leader fence, see [`leader`](crate::leader));
//! * a worker cut off from the lease table stops processing before anyone else may start: its
//!   leases end `lease_duration` after it sent its last write that landed, on its own clock, and
//!   no store call waits longer than [`store_call_timeout`](SchedulerConfig::store_call_timeout).
//!
//! These bounds hold in both lease modes ([`LeaseMode`]); in heartbeat mode the worker's
//! heartbeat (every 2 s) stands in for the renewals and the owner-index query, and a dead
//! worker's shards move at most `lease_duration + 2.5 s + 2 s` after its last heartbeat.
//!
//! The Java KCL 3.x uses 120 s / 30 s for the leader lock and a 20 s assignment period, which
//! makes leader failover take minutes (`reference/kcl.md` §c.7); the cost of the shorter timers
//! here is one lock read per worker every 2 s and one lease-table scan by the leader every 2.5 s.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::ExponentialBuilder;
use kinesis_core::aggregation::DecodeLimits;

/// Where a new application starts reading a shard. Used only when a lease is created for a shard
/// that has no leased ancestor; shards created by resharding always start at `TRIM_HORIZON` so no
/// record between parent and child is missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InitialPosition {
    /// Only records written after the lease was created (the Java KCL's retrieval default).
    #[default]
    Latest,
    /// The oldest record still retained.
    TrimHorizon,
    /// The first record that arrived at or after this time.
    AtTimestamp(SystemTime),
}

/// How records are read from Kinesis.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RetrievalMode {
    /// `GetRecords` polling with a bounded prefetch queue (shares the shard's 2 MiB/s and
    /// 5 calls/s with every other polling consumer).
    #[default]
    Polling,
    /// Enhanced fan-out: `SubscribeToShard` push with a dedicated 2 MiB/s per shard.
    FanOut {
        /// The registered consumer's name; registered on first use if it does not exist.
        /// `None` uses the application name (as the Java KCL does).
        consumer_name: Option<String>,
    },
}

/// An exponential backoff schedule: `min_delay`, then × `factor` per attempt up to `max_delay`,
/// with optional jitter (up to +100 % of each delay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub min_delay: Duration,
    /// The largest delay.
    pub max_delay: Duration,
    /// Growth factor per attempt (≥ 1).
    pub factor: f32,
    /// Add random jitter to each delay, so many shards do not retry in lock step.
    pub jitter: bool,
}

impl Backoff {
    /// A schedule from `min_delay` doubling up to `max_delay`, with jitter.
    pub const fn exponential(min_delay: Duration, max_delay: Duration) -> Self {
        Backoff { min_delay, max_delay, factor: 2.0, jitter: true }
    }

    /// The same delay every time, without jitter.
    pub const fn constant(delay: Duration) -> Self {
        Backoff { min_delay: delay, max_delay: delay, factor: 1.0, jitter: false }
    }

    /// An endless iterator of delays; `seed` decorrelates the jitter of different tasks.
    pub(crate) fn iter(&self, seed: u64) -> impl Iterator<Item = Duration> + use<> {
        use backon::BackoffBuilder;
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_factor(self.factor.max(1.0))
            .without_max_times()
            .with_jitter_seed(seed);
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder.build()
    }
}

/// What a shard does when the processor's `process_records` returns an error.
///
/// The Java KCL logs the error and skips the batch (issue #10, open since 2014); here an error is
/// never skipped.
#[derive(Clone, Debug, PartialEq)]
pub enum ProcessErrorPolicy {
    /// Deliver the same batch again after a backoff. After `max_attempts` failed deliveries
    /// (`None`: never give up) the shard is stopped as with [`ProcessErrorPolicy::StopShard`].
    Retry {
        /// Delay between deliveries.
        backoff: Backoff,
        /// Most deliveries of one batch; `None` retries forever.
        max_attempts: Option<u32>,
    },
    /// Stop processing the shard: nothing past the failed batch is checkpointed (checkpoints at
    /// or beyond it are refused from then on), the processor is told `lease_lost`, the lease is
    /// released and the error is kept in the scheduler's state. The leader assigns the lease
    /// again later and processing resumes from the last checkpoint — so the failing records are
    /// delivered again, never skipped.
    StopShard,
}

impl Default for ProcessErrorPolicy {
    /// Retry forever, 100 ms doubling to 30 s.
    fn default() -> Self {
        ProcessErrorPolicy::Retry {
            backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30)),
            max_attempts: None,
        }
    }
}

/// A function that samples the host's CPU utilization in percent (0–100), or `None` when it
/// cannot.
pub type CpuSampler = Arc<dyn Fn() -> Option<f64> + Send + Sync>;

/// Where the CPU utilization reported to the leader comes from.
#[derive(Clone, Default)]
pub enum CpuMetrics {
    /// The cgroup's CPU usage and quota when the process runs in a cgroup with a CPU limit
    /// (containers), else `/proc/stat`; nothing on other platforms.
    #[default]
    Auto,
    /// Report no CPU: the leader balances on lease throughput, then on lease count.
    Disabled,
    /// A custom sampler, called once per report.
    Custom(CpuSampler),
}

impl std::fmt::Debug for CpuMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuMetrics::Auto => f.write_str("Auto"),
            CpuMetrics::Disabled => f.write_str("Disabled"),
            CpuMetrics::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Polling retrieval settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PollingConfig {
    /// Records per `GetRecords` call (1–10 000). Default 10 000.
    pub max_records: u32,
    /// Wait after an empty read or a read at the tip of the shard. Default 1 s; never below
    /// 200 ms (the Java KCL's floor: a shard allows 5 reads per second for all its consumers).
    pub idle_time_between_reads: Duration,
    /// Least time between two reads while catching up. Default 200 ms (5 reads/s).
    pub min_time_between_reads: Duration,
    /// Backoff after throttling and transient errors. Default 200 ms doubling to 10 s.
    pub error_backoff: Backoff,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            max_records: 10_000,
            idle_time_between_reads: Duration::from_secs(1),
            min_time_between_reads: Duration::from_millis(200),
            error_backoff: Backoff::exponential(Duration::from_millis(200), Duration::from_secs(10)),
        }
    }
}

/// Enhanced fan-out settings.
#[derive(Clone, Debug, PartialEq)]
pub struct FanOutConfig {
    /// Backoff between failed subscriptions (`ResourceInUse` while a previous subscription is
    /// still inside the service's 5 s window, throttling, transport errors). Default 1 s doubling
    /// to 10 s.
    pub resubscribe_backoff: Backoff,
    /// A subscription that delivers no event (the service sends one at least every 5 s) for this
    /// long is dropped and renewed. Default 60 s (the Java KCL's health check).
    pub max_time_between_events: Duration,
    /// Attempts to register or describe the consumer before the shard gives up for now (it tries
    /// again after the backoff). Default 10, 1 s apart.
    pub registration_attempts: u32,
}

impl Default for FanOutConfig {
    fn default() -> Self {
        FanOutConfig {
            resubscribe_backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(10)),
            max_time_between_events: Duration::from_secs(60),
            registration_attempts: 10,
        }
    }
}

/// Load-balancing settings of the leader's assignment (KCL 3.x `WorkerUtilizationAwareAssignmentConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct AssignmentConfig {
    /// Most leases one worker may hold. Default unlimited.
    pub max_leases_per_worker: usize,
    /// A worker is out of balance when its load is more than this fraction above (or below) the
    /// fleet average. Default 0.10. Also the least gain of a move: a lease moves only if its
    /// recipient ends at least this fraction below the donor's load before the move.
    pub rebalance_threshold: f64,
    /// Fraction of a donor's excess load moved per balancing pass. Default 0.60.
    pub dampening: f64,
    /// When no lease fits a donor's dampened excess, move its single smallest lease anyway (as
    /// long as the move still reduces the imbalance). Default true.
    pub allow_throughput_overshoot: bool,
    /// An idle fleet: when the lease throughput per live worker (total KB/s ÷ workers) is at or
    /// below this, throughput is not used as the load metric — the leader balances by lease
    /// count instead, so the decaying measurements of an idle stream cause no handoffs.
    /// Default 1.0 KB/s; 0 balances by throughput whenever any lease has some.
    pub idle_throughput_kbps: f64,
    /// Balance (move live leases) on every n-th assignment pass; the others only assign new and
    /// expired leases. Default 4 (every 10 s with the default pass interval).
    pub variance_balancing_frequency: u32,
    /// Move live leases with a graceful handoff (the owner checkpoints first). When false, the
    /// leader reassigns at once and the old owner loses the lease mid-batch. Default true.
    pub graceful_handoff: bool,
}

impl Default for AssignmentConfig {
    fn default() -> Self {
        AssignmentConfig {
            max_leases_per_worker: usize::MAX,
            rebalance_threshold: 0.10,
            dampening: 0.60,
            allow_throughput_overshoot: true,
            idle_throughput_kbps: 1.0,
            variance_balancing_frequency: 4,
            graceful_handoff: true,
        }
    }
}

/// How a worker proves it still holds its leases.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseMode {
    /// Every held lease is renewed (a conditional write bumping its counter) every
    /// [`renewal_interval`](SchedulerConfig::renewal_interval); the leader judges a lease expired
    /// when its counter has not changed for a lease duration. The Java KCL's way: required when
    /// the fleet shares its lease table with Java KCL workers. About 1,080 writes per lease per
    /// hour.
    PerLease,
    /// One conditional write per heartbeat interval to the worker's own row in the
    /// worker-metrics table proves the worker alive for all its leases; leases are written only
    /// when they change (assignment, checkpoint, a throughput change worth reporting). The
    /// leader judges a worker dead when its row has not changed for a lease duration on the
    /// leader's clock; a worker whose heartbeat has not landed for a lease duration stops every
    /// shard first (self-fencing). The leader reads the lease table only on a change (a worker
    /// joining, dying or leaving, a lease released or finished, load drifting) and as a slow
    /// safety net. Leases owned by workers without a heartbeat row (the Java KCL's, or `kcl`'s in
    /// per-lease mode) are still judged by their counters, so a mixed fleet of `kcl` workers
    /// never fights; Java KCL workers, however, would take these leases for expired: do not
    /// share the tables with them in this mode.
    WorkerHeartbeat(HeartbeatConfig),
}

impl Default for LeaseMode {
    /// Worker heartbeats with [`HeartbeatConfig::default`]: a new application's DynamoDB bill
    /// stops growing with its shard count. A fleet shared with Java KCL workers must choose
    /// [`LeaseMode::PerLease`].
    fn default() -> Self {
        LeaseMode::WorkerHeartbeat(HeartbeatConfig::default())
    }
}

/// Settings of [`LeaseMode::WorkerHeartbeat`].
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatConfig {
    /// How often a worker writes its heartbeat row. Default `lease_duration / 5` (2 s): with the
    /// leader reading the rows every `lease_assignment_interval` (2.5 s), a dead worker's shards
    /// are processed again at most `lease_duration + 2.5 s + 2 s` after its last heartbeat.
    pub heartbeat_interval: Option<Duration>,
    /// The leader reads the whole lease table at least this often even when nothing signalled a
    /// change (a safety net for a lost signal). Default 15 minutes.
    pub full_scan_interval: Duration,
    /// A worker queries the owner index at least this often even when its row's assignment
    /// version did not change (a safety net). Default 15 minutes.
    pub discovery_interval: Duration,
    /// Least time between two balancing passes started by load drift (the rows' lease counts and
    /// throughput out of balance). Default 60 s.
    pub balance_interval: Duration,
    /// Least time between two throughput reports written on one lease; a report is written only
    /// when the lease's throughput changed by more than the rebalance threshold (the first one
    /// after a worker takes the lease at once). Default 20 s (the Java KCL's assignment period).
    pub lease_stats_interval: Duration,
    /// How often a worker that is not the leader's standby reads the leader lock, as a safety
    /// net for a standby that died with the leader. Default 15 minutes.
    pub leader_check_interval: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            heartbeat_interval: None,
            full_scan_interval: Duration::from_secs(900),
            discovery_interval: Duration::from_secs(900),
            balance_interval: Duration::from_secs(60),
            lease_stats_interval: Duration::from_secs(20),
            leader_check_interval: Duration::from_secs(900),
        }
    }
}

/// A worker's configuration. `Default` gives the documented defaults; the `with_*` methods and
/// public fields change them.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Worker heartbeats or per-lease renewal. Default [`LeaseMode::WorkerHeartbeat`].
    pub lease_mode: LeaseMode,
    /// How long a lease lives without its counter changing, judged on each observer's own clock
    /// (the Java KCL's `failoverTimeMillis`). Default 10 s.
    pub lease_duration: Duration,
    /// Renewal period of held leases (per-lease mode). Default `lease_duration / 3`.
    pub lease_renewal_interval: Option<Duration>,
    /// How often a worker asks the lease table which leases the leader gave it (per-lease mode;
    /// heartbeat mode asks when its row says so, see [`HeartbeatConfig::discovery_interval`]).
    /// Default 2 s.
    pub lease_discovery_interval: Duration,
    /// The longest any call to a store may take before the worker abandons it (and, for a
    /// renewal, counts it as failed). Default `lease_duration / 4`; must be shorter than
    /// `lease_duration / 3` so that a hanging store cannot hold a renewal past the next one.
    pub store_call_timeout: Option<Duration>,
    /// The leader lock's lease: a contender takes the lock after seeing the same record version
    /// this long. Default 8 s.
    pub leader_lock_duration: Duration,
    /// The leader's heartbeat period. Default 2 s.
    pub leader_heartbeat_interval: Duration,
    /// How often a non-leader reads the lock (per-lease mode, and a heartbeat-mode worker for a
    /// minute after it stopped being a standby; see [`HeartbeatConfig::leader_check_interval`]).
    /// Default 2 s.
    pub leader_check_interval: Duration,
    /// The leader's assignment period. Default `lease_duration / 4`.
    pub lease_assignment_interval: Option<Duration>,
    /// Balancing settings.
    pub assignment: AssignmentConfig,
    /// How often each worker writes its metrics row (per-lease mode; in heartbeat mode the row is
    /// written with every heartbeat). Default 2 s.
    pub worker_metrics_interval: Duration,
    /// CPU source for the metrics row. Default [`CpuMetrics::Auto`].
    pub cpu_metrics: CpuMetrics,
    /// The leader deletes metrics rows it has seen unchanged this long. Default 1 hour.
    pub stale_worker_metrics_cleanup: Duration,
    /// How long a graceful handoff waits for the processor's `shutdown_requested` (and the batch
    /// in flight) before transferring the lease anyway. Default 30 s.
    pub graceful_handoff_timeout: Duration,
    /// How long a graceful shutdown waits for each shard's `shutdown_requested`. Default 30 s.
    pub graceful_shutdown_timeout: Duration,
    /// The leader's full shard sync period (lease creation for new shards). Default 60 s; a shard
    /// reaching its end also creates its children's leases at once.
    pub shard_sync_interval: Duration,
    /// The leader deletes a lease whose shard has been missing from every shard listing for this
    /// long (the shard expired past retention, or the lease was written for a shard that never
    /// existed): the Java KCL's garbage-lease cleanup (`garbageLeaseCleanupIntervalMillis`).
    /// Default 30 minutes. Only leases read before a listing started are judged by it, so a lease
    /// created for a brand-new shard is never taken for garbage.
    pub garbage_lease_cleanup_delay: Duration,
    /// How often a child shard waiting for its parents re-reads their leases. Default 2 s.
    pub parent_shard_poll_interval: Duration,
    /// Backoff for retried lifecycle calls (`initialize`, `shard_ended` without a checkpoint).
    /// Default 500 ms doubling to 30 s.
    pub task_backoff: Backoff,
    /// What a `process_records` error does. Default: retry forever with backoff.
    pub process_error_policy: ProcessErrorPolicy,
    /// Prefetched batches per shard. Default 4.
    pub max_prefetch_batches: usize,
    /// Prefetched bytes per shard: user data plus about 130 bytes per user record. Default 8 MiB.
    /// A read is expanded in batches of at most half of this (a single Kinesis record is expanded
    /// whole), each admitted before the next is expanded.
    pub max_prefetch_bytes: usize,
    /// Most user records one aggregate may hold; a record that holds more (or a compressed one
    /// that inflates beyond the stream's maximum record size) is not expanded: it is not
    /// delivered and is counted in `DeaggregationErrors`. Default 262,144 — far above what a
    /// producer writes, far below what would exhaust a worker's memory.
    pub max_user_records_per_aggregate: usize,
    /// Call `process_records` even when a read returned no records. Default false.
    pub call_process_records_even_for_empty_list: bool,
    /// Polling settings.
    pub polling: PollingConfig,
    /// Enhanced fan-out settings.
    pub fan_out: FanOutConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_mode: LeaseMode::default(),
            lease_duration: Duration::from_secs(10),
            lease_renewal_interval: None,
            lease_discovery_interval: Duration::from_secs(2),
            store_call_timeout: None,
            leader_lock_duration: Duration::from_secs(8),
            leader_heartbeat_interval: Duration::from_secs(2),
            leader_check_interval: Duration::from_secs(2),
            lease_assignment_interval: None,
            assignment: AssignmentConfig::default(),
            worker_metrics_interval: Duration::from_secs(2),
            cpu_metrics: CpuMetrics::Auto,
            stale_worker_metrics_cleanup: Duration::from_secs(3600),
            graceful_handoff_timeout: Duration::from_secs(30),
            graceful_shutdown_timeout: Duration::from_secs(30),
            shard_sync_interval: Duration::from_secs(60),
            garbage_lease_cleanup_delay: Duration::from_secs(30 * 60),
            parent_shard_poll_interval: Duration::from_secs(2),
            task_backoff: Backoff::exponential(Duration::from_millis(500), Duration::from_secs(30)),
            process_error_policy: ProcessErrorPolicy::default(),
            max_prefetch_batches: 4,
            max_prefetch_bytes: 8 * 1024 * 1024,
            max_user_records_per_aggregate: DecodeLimits::default().max_user_records,
            call_process_records_even_for_empty_list: false,
            polling: PollingConfig::default(),
            fan_out: FanOutConfig::default(),
        }
    }
}

impl SchedulerConfig {
    /// Sets the lease duration (and with it the derived renewal and assignment periods).
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = lease_duration;
        self
    }

    /// Sets the lease mode.
    pub fn with_lease_mode(mut self, mode: LeaseMode) -> Self {
        self.lease_mode = mode;
        self
    }

    /// Per-lease renewal (the Java KCL's way; required beside Java KCL workers).
    pub fn per_lease(self) -> Self {
        self.with_lease_mode(LeaseMode::PerLease)
    }

    /// Worker heartbeats with the default heartbeat settings.
    pub fn worker_heartbeats(self) -> Self {
        self.with_lease_mode(LeaseMode::WorkerHeartbeat(HeartbeatConfig::default()))
    }

    /// The heartbeat settings, in heartbeat mode.
    pub fn heartbeat(&self) -> Option<&HeartbeatConfig> {
        match &self.lease_mode {
            LeaseMode::WorkerHeartbeat(config) => Some(config),
            LeaseMode::PerLease => None,
        }
    }

    /// The heartbeat period in heartbeat mode: explicit, or `lease_duration / 5`.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat().map(|h| h.heartbeat_interval.unwrap_or(self.lease_duration / 5))
    }

    /// Sets the policy for `process_records` errors.
    pub fn with_process_error_policy(mut self, policy: ProcessErrorPolicy) -> Self {
        self.process_error_policy = policy;
        self
    }

    /// Sets the CPU source of the worker metrics.
    pub fn with_cpu_metrics(mut self, cpu: CpuMetrics) -> Self {
        self.cpu_metrics = cpu;
        self
    }

    /// The renewal period: explicit, or `lease_duration / 3`.
    pub fn renewal_interval(&self) -> Duration {
        self.lease_renewal_interval.unwrap_or(self.lease_duration / 3)
    }

    /// The per-call store timeout: explicit, or `lease_duration / 4`.
    pub fn store_call_timeout(&self) -> Duration {
        self.store_call_timeout.unwrap_or(self.lease_duration / 4)
    }

    /// The leader's assignment period: explicit, or `lease_duration / 4`.
    pub fn assignment_interval(&self) -> Duration {
        self.lease_assignment_interval.unwrap_or(self.lease_duration / 4)
    }

    /// The idle wait between polling reads, with the 200 ms floor applied.
    pub(crate) fn idle_time_between_reads(&self) -> Duration {
        self.polling.idle_time_between_reads.max(Duration::from_millis(200))
    }
}
