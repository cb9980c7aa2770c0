//! Metric names (the Java KCL's where it has one) emitted through the `metrics` facade.
//!
//! The crate never installs a recorder: with none installed every emission is a no-op. Per-shard
//! metrics carry the label `shard`; worker metrics carry `worker` (so several workers in one
//! process stay apart).
//!
//! | Name | Kind | Labels | Meaning |
//! |---|---|---|---|
//! | `RecordsProcessed` | counter | shard | user records delivered to `process_records` and accepted |
//! | `DataBytesProcessed` | counter | shard | their data bytes |
//! | `MillisBehindLatest` | gauge | shard | the last read's distance from the tip of the shard |
//! | `ExpiredIterator` | counter | shard | iterators that expired and were re-created |
//! | `ProcessRecordsErrors` | counter | shard | `process_records` calls that returned an error |
//! | `DroppedOutOfRangeSubRecords` | counter | shard | KPL sub-records outside the lease's hash range |
//! | `DeaggregationErrors` | counter | shard | aggregates that could not be expanded, or were over a decoding limit (not delivered) |
//! | `CurrentLeases` | gauge | worker | leases held |
//! | `TakenLeases` | counter | worker | leases this worker started processing |
//! | `LostLeases` | counter | worker | leases lost (renewal or checkpoint refused, expired locally) |
//! | `RenewAllLeases` | counter | worker, result = success / failure | renewal passes (per-lease mode) |
//! | `WorkerHeartbeats` | counter | worker, result = success / failure | heartbeat writes (heartbeat mode) |
//! | `IsLeader` | gauge | worker | 1 while this worker is the leader |
//! | `LeaderChanges` | counter | worker | times this worker became leader |
//! | `NumWorkers` | gauge | worker | live workers seen by the leader |
//! | `TotalLeases` / `ExpiredLeases` | gauge | worker | leases seen by the leader, and how many it judged expired |
//! | `NumOfLeasesReassignment` | counter | worker | assignments and handoffs the leader wrote |
//!
//! # Tracing
//!
//! Every task of a worker runs in a `kcl_worker` span (fields `worker`, `app`); every shard task
//! — and its fetcher — in a `shard` span (fields `worker`, `shard`), so a subscriber can attribute
//! each log line to its worker and shard. The crate never installs a subscriber.

/// User records accepted by the processor.
pub const RECORDS_PROCESSED: &str = "RecordsProcessed";
/// Data bytes of the records accepted by the processor.
pub const DATA_BYTES_PROCESSED: &str = "DataBytesProcessed";
/// Distance from the tip of the shard, ms.
pub const MILLIS_BEHIND_LATEST: &str = "MillisBehindLatest";
/// Iterators re-created after expiry.
pub const EXPIRED_ITERATOR: &str = "ExpiredIterator";
/// `process_records` errors.
pub const PROCESS_RECORDS_ERRORS: &str = "ProcessRecordsErrors";
/// Sub-records dropped because their hash key lies outside the lease's range.
pub const DROPPED_OUT_OF_RANGE: &str = "DroppedOutOfRangeSubRecords";
/// Aggregates that could not be expanded.
pub const DEAGGREGATION_ERRORS: &str = "DeaggregationErrors";
/// Leases held by the worker.
pub const CURRENT_LEASES: &str = "CurrentLeases";
/// Leases the worker started processing.
pub const TAKEN_LEASES: &str = "TakenLeases";
/// Leases the worker lost.
pub const LOST_LEASES: &str = "LostLeases";
/// Renewal passes, by result.
pub const RENEW_ALL_LEASES: &str = "RenewAllLeases";
/// 1 while leader.
pub const IS_LEADER: &str = "IsLeader";
/// Times the worker became leader.
pub const LEADER_CHANGES: &str = "LeaderChanges";
/// Live workers seen by the leader.
pub const NUM_WORKERS: &str = "NumWorkers";
/// Leases seen by the leader.
pub const TOTAL_LEASES: &str = "TotalLeases";
/// Leases the leader judged expired.
pub const EXPIRED_LEASES: &str = "ExpiredLeases";
/// Assignments and handoffs written by the leader.
pub const NUM_OF_LEASES_REASSIGNMENT: &str = "NumOfLeasesReassignment";

/// Handles of one shard's metrics, resolved once per shard task.
#[derive(Clone)]
pub(crate) struct ShardMetrics {
    pub records: metrics::Counter,
    pub bytes: metrics::Counter,
    pub millis_behind: metrics::Gauge,
    pub expired_iterator: metrics::Counter,
    pub process_errors: metrics::Counter,
    pub dropped_out_of_range: metrics::Counter,
    pub deaggregation_errors: metrics::Counter,
}

impl ShardMetrics {
    pub fn new(shard: &str) -> Self {
        let label = [("shard", shard.to_owned())];
        ShardMetrics {
            records: metrics::counter!(RECORDS_PROCESSED, &label),
            bytes: metrics::counter!(DATA_BYTES_PROCESSED, &label),
            millis_behind: metrics::gauge!(MILLIS_BEHIND_LATEST, &label),
            expired_iterator: metrics::counter!(EXPIRED_ITERATOR, &label),
            process_errors: metrics::counter!(PROCESS_RECORDS_ERRORS, &label),
            dropped_out_of_range: metrics::counter!(DROPPED_OUT_OF_RANGE, &label),
            deaggregation_errors: metrics::counter!(DEAGGREGATION_ERRORS, &label),
        }
    }
}

/// Heartbeat writes of a worker in heartbeat mode.
pub const WORKER_HEARTBEATS: &str = "WorkerHeartbeats";

/// Handles of one worker's metrics.
#[derive(Clone)]
pub(crate) struct WorkerMetricHandles {
    pub current_leases: metrics::Gauge,
    pub taken_leases: metrics::Counter,
    pub lost_leases: metrics::Counter,
    pub renew_success: metrics::Counter,
    pub renew_failure: metrics::Counter,
    pub heartbeat_success: metrics::Counter,
    pub heartbeat_failure: metrics::Counter,
    pub is_leader: metrics::Gauge,
    pub leader_changes: metrics::Counter,
    pub num_workers: metrics::Gauge,
    pub total_leases: metrics::Gauge,
    pub expired_leases: metrics::Gauge,
    pub reassignments: metrics::Counter,
}

impl WorkerMetricHandles {
    pub fn new(worker: &str) -> Self {
        let label = [("worker", worker.to_owned())];
        let success = [("worker", worker.to_owned()), ("result", "success".to_owned())];
        let failure = [("worker", worker.to_owned()), ("result", "failure".to_owned())];
        WorkerMetricHandles {
            current_leases: metrics::gauge!(CURRENT_LEASES, &label),
            taken_leases: metrics::counter!(TAKEN_LEASES, &label),
            lost_leases: metrics::counter!(LOST_LEASES, &label),
            renew_success: metrics::counter!(RENEW_ALL_LEASES, &success),
            renew_failure: metrics::counter!(RENEW_ALL_LEASES, &failure),
            heartbeat_success: metrics::counter!(WORKER_HEARTBEATS, &success),
            heartbeat_failure: metrics::counter!(WORKER_HEARTBEATS, &failure),
            is_leader: metrics::gauge!(IS_LEADER, &label),
            leader_changes: metrics::counter!(LEADER_CHANGES, &label),
            num_workers: metrics::gauge!(NUM_WORKERS, &label),
            total_leases: metrics::gauge!(TOTAL_LEASES, &label),
            expired_leases: metrics::gauge!(EXPIRED_LEASES, &label),
            reassignments: metrics::counter!(NUM_OF_LEASES_REASSIGNMENT, &label),
        }
    }
}
