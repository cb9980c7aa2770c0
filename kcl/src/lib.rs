//! The KCL-v3-style Kinesis consumer.
//!
//! Workers on many hosts share the shards of a stream through three stores (leases, the leader
//! lock, worker metrics); one elected leader assigns leases by load and moves them with graceful
//! handoffs; each worker proves it holds its leases (one heartbeat row per worker by default, or a
//! renewal per lease beside Java KCL workers), runs one task per held shard and checkpoints through
//! conditional writes, so a worker that lost a lease can neither process nor checkpoint it.
//!
//! * [`scheduler`] — [`Scheduler`], its builder and [`SchedulerHandle`] (state, shutdown, kill).
//! * [`processor`] — the [`ShardRecordProcessor`] lifecycle.
//! * [`checkpointer`] — [`Checkpointer`]: plain, positional and two-phase checkpoints.
//! * [`record`] — [`KinesisClientRecord`], a de-aggregated user record.
//! * [`config`] — [`SchedulerConfig`] and its documented defaults (timers, retrieval, policy).
//! * [`assignment`] — the leader's pure assignment function.
//! * [`leader`] — election and the leader's local expiry rules.
//! * `lineage`, `shard_sync` — lease creation and parent-before-child rules.
//! * `lease_renewer`, `lease_discovery`, `shard_consumer`, `worker_metrics`, `retrieval` — the
//!   worker's tasks (internal; their rules are documented on the module items).
//! * [`metrics`] — metric names.
//! * [`lease`] — the lease model (KCL 3.x fields).
//! * [`store`] — the lease, coordinator-state and worker-metrics stores, with in-memory
//!   implementations.
//!
//! # Example
//!
//! One worker on the bundled in-memory broker, with in-memory stores: it reads a two-shard
//! stream from the start, checkpoints after every batch, and shuts down gracefully once it has
//! processed every record. Against real Kinesis only the client changes
//! (`kinesis_core::AwsKinesis`), and several workers share the shards when they share the stores
//! (`kcl-ddb-store` keeps them in DynamoDB).
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use kcl::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor, ShutdownRequestedInput};
//! use kcl::{InitialPosition, ProcessorError, Scheduler};
//! use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker, PutRecordsEntry, ShardId};
//!
//! /// Counts records and checkpoints after each batch.
//! struct Counter(Arc<AtomicU64>);
//!
//! #[async_trait]
//! impl ShardRecordProcessor for Counter {
//!     async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
//!         for record in input.records {
//!             assert!(record.data.starts_with(b"order-"));
//!         }
//!         self.0.fetch_add(input.records.len() as u64, Ordering::Relaxed);
//!         input.checkpointer.checkpoint().await?;
//!         Ok(())
//!     }
//!
//!     // A closed shard is finished only once SHARD_END is checkpointed.
//!     async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
//!         Ok(input.checkpointer.checkpoint().await?)
//!     }
//!
//!     // The lease is about to move (or the worker stops): checkpoint what is done.
//!     async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
//!         Ok(input.checkpointer.checkpoint().await?)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // Paused time: the worker's timers run instantly in this example.
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! let broker = MemoryBroker::new();
//! broker.create_stream(CreateStreamRequest::provisioned("orders", 2)).await?;
//! let entries = (0..100)
//!     .map(|i| PutRecordsEntry {
//!         partition_key: format!("customer-{}", i % 10),
//!         explicit_hash_key: None,
//!         data: format!("order-{i}").into(),
//!     })
//!     .collect();
//! broker.put_records(&"orders".into(), entries).await?;
//!
//! let processed = Arc::new(AtomicU64::new(0));
//! let counter = processed.clone();
//! let handle = Scheduler::builder("orders-app", "orders", Arc::new(broker.clone()))
//!     .initial_position(InitialPosition::TrimHorizon)
//!     .memory_stores()
//!     .processor_factory(move |_: &ShardId| Counter(counter.clone()))
//!     .build()?
//!     .start();
//!
//! // The worker's state: held shards, their phase, lag and progress.
//! let mut state = handle.subscribe();
//! let all_done = state.wait_for(|s| s.shards.values().map(|shard| shard.records_processed).sum::<u64>() == 100);
//! tokio::time::timeout(Duration::from_secs(60), all_done).await??;
//! assert_eq!(handle.state().shards.len(), 2);
//!
//! // Checkpoint and release every lease, then stop.
//! handle.shutdown().await;
//! assert_eq!(processed.load(Ordering::Relaxed), 100);
//! # Ok(())
//! # })
//! # }
//! ```
//!
//! # Observability
//!
//! Metrics go through the [`metrics`](https://docs.rs/metrics) facade under the Java KCL's names
//! (`RecordsProcessed`, `MillisBehindLatest`, `CurrentLeases`, `RenewAllLeases`, …, see
//! the [`metrics`] module); logs and spans through `tracing` (a `shard` span per shard
//! task). The crate installs neither a recorder nor a subscriber: with none installed, both cost
//! next to nothing.

pub mod assignment;
pub mod checkpointer;
pub mod config;
mod context;
pub mod error;
pub mod leader;
pub mod lease;
mod lease_discovery;
mod lease_renewer;
mod lineage;
pub mod metrics;
pub mod processor;
pub mod record;
mod retrieval;
pub mod scheduler;
mod shard_consumer;
mod shard_sync;
pub mod store;
mod worker_metrics;

pub use checkpointer::{Checkpointer, PreparedCheckpoint};
pub use config::{
    AssignmentConfig, Backoff, CpuMetrics, FanOutConfig, HeartbeatConfig, InitialPosition, LeaseMode, PollingConfig,
    ProcessErrorPolicy, RetrievalMode, SchedulerConfig,
};
pub use error::{CheckpointError, KclError, ProcessorError, ShardError};
pub use lease::Lease;
pub use processor::{ShardRecordProcessor, ShardRecordProcessorFactory};
pub use record::KinesisClientRecord;
pub use scheduler::{Scheduler, SchedulerBuilder, SchedulerHandle, SchedulerState, ShardPhase, ShardStatus};
pub use store::{
    CoordinatorStore, LeaseStore, LockItem, StandbyStamp, StoreError, WorkerHeartbeat, WorkerMetrics,
    WorkerMetricsStore, WorkerSignal, WorkerSignals,
};

/// The crate's README (its page on crates.io), compiled and run as doctests so that its example
/// stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
