//! One task per held shard: waits for the parents, initializes the processor, feeds it batches
//! from the fetcher, and ends the lease in one of four ways.
//!
//! ```text
//! WaitingOnParents → Initializing → Processing ─┬─ shard end ──► shard_ended → SHARD_END → release
//!                                               ├─ handoff / shutdown ──► shutdown_requested → release
//!                                               ├─ lease lost ──► (in-flight call dropped) → lease_lost
//!                                               └─ StopShard error ──► release → lease_lost
//! ```
//!
//! A child shard starts only when every parent lease is finished (`SHARD_END`) or gone; a parent
//! without a lease does not block. At the end of a shard the children's leases are created from
//! the `ChildShards` of the last read (starting at `TRIM_HORIZON`) before the processor is asked to
//! checkpoint `SHARD_END`, and the finished lease is released (unowned) for the leader to clean
//! up once the children have started.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use kinesis_core::aggregation::DecodeLimits;
use kinesis_core::shard::ChildShard;
use kinesis_core::{ExtendedSequenceNumber, ShardId};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::Instrument;

use crate::checkpointer::Checkpointer;
use crate::config::{ProcessErrorPolicy, RetrievalMode};
use crate::context::{ShardPhase, WorkerContext};
use crate::error::ShardError;
use crate::lease::Lease;
use crate::lease_renewer::{HeldLease, WriteError};
use crate::metrics::ShardMetrics;
use crate::processor::{
    InitializationInput, LeaseLostInput, ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor, ShutdownReason,
    ShutdownRequestedInput,
};
use crate::retrieval::{self, Batch, FetchContext};

/// Starts the task for a newly held lease.
pub(crate) fn spawn(ctx: Arc<WorkerContext>, lease: Arc<HeldLease>) {
    let span = tracing::info_span!("shard", worker = %ctx.worker_id, shard = %lease.key);
    let tracker = ctx.tracker.clone();
    let task_span = span.clone();
    tracker.spawn(
        async move {
            ctx.metrics.taken_leases.increment(1);
            let consumer = ShardConsumer::new(ctx.clone(), lease.clone(), task_span);
            // The lease's local expiry is watched beside the shard's work, so it stops the shard
            // on time even while a store call or the processor is slow.
            tokio::select! {
                () = consumer.run() => {}
                () = lease.watch_expiry() => {}
            }
            if lease.is_lost() && !ctx.abort.is_cancelled() {
                ctx.metrics.lost_leases.increment(1);
                if ctx.config.heartbeat().is_some() {
                    // Nothing renews leases in heartbeat mode: a lease dropped here that the
                    // table still gives this worker (a refused write that moved nothing, the
                    // heartbeat fence) is taken up again by the next discovery pass.
                    ctx.discovery_incomplete.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            ctx.registry.remove(&lease.key);
            ctx.note_lease_change();
            ctx.metrics.current_leases.set(ctx.registry.len() as f64);
            ctx.remove_shard(&lease.key);
        }
        .instrument(span),
    );
}

/// How the processing loop ended.
enum Exit {
    Aborted,
    Lost,
    Graceful,
    /// The graceful stop's deadline passed while the processor was busy.
    GracefulTimedOut,
    Ended(Vec<ChildShard>),
    Stopped(ShardError),
}

/// Why a wait was interrupted.
enum Interrupt {
    Aborted,
    Lost,
    Stop,
}

struct ShardConsumer {
    ctx: Arc<WorkerContext>,
    lease: Arc<HeldLease>,
    checkpointer: Checkpointer,
    metrics: ShardMetrics,
    seed: u64,
    /// The shard task's span; the fetcher runs in it too.
    span: tracing::Span,
}

impl ShardConsumer {
    fn new(ctx: Arc<WorkerContext>, lease: Arc<HeldLease>, span: tracing::Span) -> Self {
        let checkpointer = Checkpointer::new(lease.clone(), ctx.lease_store.clone());
        let metrics = ShardMetrics::new(&lease.key);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ctx.worker_id.hash(&mut hasher);
        lease.key.hash(&mut hasher);
        ShardConsumer { ctx, lease, checkpointer, metrics, seed: hasher.finish(), span }
    }

    fn interrupt(&self) -> Interrupt {
        if self.ctx.abort.is_cancelled() {
            Interrupt::Aborted
        } else if self.lease.lost.is_cancelled() {
            Interrupt::Lost
        } else {
            Interrupt::Stop
        }
    }

    /// Sleeps `delay`, or returns why it was interrupted (lease lost, worker stopping).
    async fn pause(&self, delay: Duration) -> Result<(), Interrupt> {
        tokio::select! {
            biased;
            () = self.lease.lost.cancelled() => Err(self.interrupt()),
            () = self.lease.stop.cancelled() => Err(Interrupt::Stop),
            () = sleep(delay) => Ok(()),
        }
    }

    fn phase(&self, phase: ShardPhase) {
        self.ctx.update_shard(&self.lease.key, |s| s.phase = phase);
    }

    fn set_error(&self, error: Option<ShardError>) {
        self.ctx.update_shard(&self.lease.key, |s| s.error = error);
    }

    /// When a graceful stop must be complete: handoff or shutdown timeout after it was requested.
    fn stop_deadline(&self) -> Instant {
        let timeout = if self.lease.handoff_to().is_some() {
            self.ctx.config.graceful_handoff_timeout
        } else {
            self.ctx.config.graceful_shutdown_timeout
        };
        self.lease.stop_requested_at().unwrap_or_else(Instant::now) + timeout
    }

    /// Resolves once a graceful stop was requested and its deadline passed.
    async fn stop_deadline_passed(&self) {
        self.lease.stop.cancelled().await;
        sleep_until(self.stop_deadline()).await;
    }

    async fn run(self) {
        self.ctx.update_shard(&self.lease.key, |s| s.phase = ShardPhase::WaitingOnParents);
        match self.wait_for_parents().await {
            Ok(()) => {}
            Err(Interrupt::Aborted) => return,
            Err(Interrupt::Lost) => return,
            Err(Interrupt::Stop) => {
                self.release().await;
                return;
            }
        }
        let view = self.lease.snapshot().await;
        if view.is_finished() {
            self.release().await;
            return;
        }
        let mut processor = self.ctx.factory.create_processor(&self.lease.shard_id);
        self.phase(ShardPhase::Initializing);
        match self.initialize(&mut *processor, &view).await {
            Ok(()) => {}
            Err(Interrupt::Aborted) => return,
            Err(Interrupt::Lost) => {
                self.lost(&mut *processor).await;
                return;
            }
            Err(Interrupt::Stop) => {
                self.checkpointer.close();
                self.release().await;
                return;
            }
        }
        self.phase(ShardPhase::Processing);
        let exit = self.process(&mut *processor, &view).await;
        self.finish(&mut *processor, exit).await;
    }

    /// Waits until every parent lease is finished or gone.
    async fn wait_for_parents(&self) -> Result<(), Interrupt> {
        let parents = self.lease.snapshot().await.parent_shard_ids;
        if parents.is_empty() {
            return Ok(());
        }
        loop {
            let mut ready = true;
            for parent in &parents {
                match self.ctx.lease_store.get_lease(parent).await {
                    Ok(None) => {}
                    Ok(Some(lease)) if lease.is_finished() => {}
                    Ok(Some(_)) => ready = false,
                    Err(e) => {
                        tracing::warn!(parent = %parent, error = %e, "reading a parent lease failed");
                        ready = false;
                    }
                }
                if !ready {
                    break;
                }
            }
            if ready {
                return Ok(());
            }
            self.pause(self.ctx.config.parent_shard_poll_interval).await?;
        }
    }

    async fn initialize(&self, processor: &mut dyn ShardRecordProcessor, view: &Lease) -> Result<(), Interrupt> {
        let mut backoff = self.ctx.config.task_backoff.iter(self.seed);
        loop {
            let input = InitializationInput {
                shard_id: self.lease.shard_id.clone(),
                extended_sequence_number: view.checkpoint.clone(),
                pending_checkpoint: view.pending_checkpoint.clone(),
                pending_checkpoint_state: view.pending_checkpoint_state.clone(),
            };
            // A graceful stop lets initialize finish; the processing loop then sees the stop
            // and calls shutdown_requested.
            let result = tokio::select! {
                biased;
                () = self.lease.lost.cancelled() => return Err(self.interrupt()),
                r = processor.initialize(input) => r,
            };
            match result {
                Ok(()) => {
                    self.set_error(None);
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(error = %e, "processor initialize failed; retrying");
                    self.set_error(Some(ShardError::Initialize { message: e.to_string() }));
                    self.pause(backoff.next().unwrap_or(Duration::from_secs(1))).await?;
                }
            }
        }
    }

    fn fetch_context(&self, view: &Lease, decode_limits: DecodeLimits) -> FetchContext {
        let ctx = self.ctx.clone();
        let key = self.lease.key.clone();
        FetchContext {
            kinesis: self.ctx.kinesis.clone(),
            stream: self.ctx.stream.clone(),
            shard_id: self.lease.shard_id.clone(),
            checkpoint: view.checkpoint.clone(),
            at_timestamp: self.ctx.at_timestamp(),
            hash_range: view.hash_key_range,
            decode_limits,
            config: self.ctx.config.clone(),
            metrics: self.metrics.clone(),
            report: Arc::new(move |message| {
                ctx.update_shard(&key, |s| match message {
                    Some(message) => s.error = Some(ShardError::Retrieval { message }),
                    None => {
                        if matches!(s.error, Some(ShardError::Retrieval { .. })) {
                            s.error = None;
                        }
                    }
                })
            }),
            seed: self.seed,
        }
    }

    /// Starts the fetcher and feeds the processor until the shard ends or the lease goes.
    async fn process(&self, processor: &mut dyn ShardRecordProcessor, view: &Lease) -> Exit {
        let config = &self.ctx.config;
        let (queue, mut batches) = retrieval::prefetch_queue(config.max_prefetch_batches, config.max_prefetch_bytes);
        let fetch_token = self.lease.lost.child_token();
        let _stop_fetcher = fetch_token.clone().drop_guard();
        let fetch = self.fetch_context(view, self.ctx.decode_limits().await);
        match (&self.ctx.retrieval, &self.ctx.fanout) {
            (RetrievalMode::FanOut { .. }, Some(consumer)) => {
                let consumer = consumer.clone();
                self.ctx
                    .tracker
                    .spawn(retrieval::fanout::run(fetch, consumer, queue, fetch_token).instrument(self.span.clone()));
            }
            _ => {
                self.ctx
                    .tracker
                    .spawn(retrieval::polling::run(fetch, queue, fetch_token).instrument(self.span.clone()));
            }
        }
        loop {
            let batch = tokio::select! {
                biased;
                () = self.lease.lost.cancelled() => return self.lost_exit(),
                () = self.lease.stop.cancelled() => return Exit::Graceful,
                b = batches.recv() => b,
            };
            let Some(batch) = batch else {
                return match self.interrupt() {
                    Interrupt::Aborted => Exit::Aborted,
                    Interrupt::Lost => Exit::Lost,
                    Interrupt::Stop => Exit::Graceful,
                };
            };
            if let Some(lag) = batch.millis_behind_latest {
                self.metrics.millis_behind.set(lag as f64);
                self.ctx.update_shard(&self.lease.key, |s| s.millis_behind_latest = Some(lag));
            }
            if (!batch.records.is_empty() || config.call_process_records_even_for_empty_list)
                && let Some(exit) = self.deliver(processor, &batch).await
            {
                return exit;
            }
            if let Some(children) = batch.child_shards {
                return Exit::Ended(children);
            }
        }
    }

    fn lost_exit(&self) -> Exit {
        if self.ctx.abort.is_cancelled() { Exit::Aborted } else { Exit::Lost }
    }

    /// Delivers one batch under the error policy; `Some(exit)` ends the shard.
    async fn deliver(&self, processor: &mut dyn ShardRecordProcessor, batch: &Batch) -> Option<Exit> {
        let previous = self.checkpointer.largest_delivered();
        if let Some(last) = batch.records.last() {
            self.checkpointer.set_largest_delivered(Some(last.extended_sequence_number()));
        }
        let policy = &self.ctx.config.process_error_policy;
        let mut backoff = match policy {
            ProcessErrorPolicy::Retry { backoff, .. } => Some(backoff.iter(self.seed)),
            ProcessErrorPolicy::StopShard => None,
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // Never a delivery past the lease's local expiry, even in the instant it passes.
            if self.lease.expire_if_due() {
                return Some(self.lost_exit());
            }
            let input = ProcessRecordsInput {
                records: &batch.records,
                millis_behind_latest: batch.millis_behind_latest,
                checkpointer: &self.checkpointer,
                time_spent_in_cache: batch.enqueued_at.elapsed(),
                attempt,
            };
            let result = tokio::select! {
                biased;
                () = self.lease.lost.cancelled() => return Some(self.lost_exit()),
                () = self.stop_deadline_passed() => {
                    self.checkpointer.set_largest_delivered(previous);
                    return Some(Exit::GracefulTimedOut);
                }
                r = processor.process_records(input) => r,
            };
            let error = match result {
                Ok(()) => {
                    let n = batch.records.len() as u64;
                    self.metrics.records.increment(n);
                    self.metrics.bytes.increment(batch.bytes as u64);
                    self.lease.bytes_delivered.fetch_add(batch.bytes as u64, std::sync::atomic::Ordering::Relaxed);
                    self.ctx.update_shard(&self.lease.key, |s| {
                        s.records_processed += n;
                        if matches!(s.error, Some(ShardError::ProcessingRetrying { .. })) {
                            s.error = None;
                        }
                    });
                    return None;
                }
                Err(e) => e,
            };
            self.metrics.process_errors.increment(1);
            let message = error.to_string();
            let retry = match (policy, backoff.as_mut()) {
                (ProcessErrorPolicy::Retry { max_attempts, .. }, Some(delays))
                    if max_attempts.is_none_or(|max| attempt < max) =>
                {
                    delays.next()
                }
                _ => None,
            };
            match retry {
                Some(delay) => {
                    tracing::error!(attempt, error = %message, "process_records failed; delivering the batch again");
                    self.set_error(Some(ShardError::ProcessingRetrying { attempts: attempt, message }));
                    match self.pause(delay).await {
                        Ok(()) => {}
                        Err(Interrupt::Aborted) => return Some(Exit::Aborted),
                        Err(Interrupt::Lost) => return Some(Exit::Lost),
                        Err(Interrupt::Stop) => {
                            self.checkpointer.set_largest_delivered(previous);
                            return Some(Exit::Graceful);
                        }
                    }
                }
                None => {
                    tracing::error!(attempt, error = %message, "process_records failed; stopping the shard");
                    self.checkpointer.set_largest_delivered(previous);
                    return Some(Exit::Stopped(ShardError::ProcessingStopped { attempts: attempt, message }));
                }
            }
        }
    }

    async fn finish(&self, processor: &mut dyn ShardRecordProcessor, exit: Exit) {
        match exit {
            Exit::Aborted => {}
            Exit::Lost => self.lost(processor).await,
            Exit::Graceful => self.graceful(processor).await,
            Exit::GracefulTimedOut => {
                tracing::warn!("graceful stop timed out while the processor was busy; releasing the lease anyway");
                self.checkpointer.close();
                self.release().await;
                self.tell_lost(processor).await;
            }
            Exit::Ended(children) => self.shard_end(processor, children).await,
            Exit::Stopped(error) => {
                self.checkpointer.close();
                self.ctx.record_failure(&self.lease.key, error.clone());
                self.set_error(Some(error));
                self.release().await;
                self.tell_lost(processor).await;
            }
        }
    }

    async fn tell_lost(&self, processor: &mut dyn ShardRecordProcessor) {
        let input = LeaseLostInput { shard_id: self.lease.shard_id.clone() };
        tokio::select! {
            biased;
            () = self.ctx.abort.cancelled() => {}
            () = processor.lease_lost(input) => {}
        }
    }

    async fn lost(&self, processor: &mut dyn ShardRecordProcessor) {
        self.checkpointer.close();
        if self.ctx.abort.is_cancelled() {
            return;
        }
        self.tell_lost(processor).await;
    }

    /// Graceful stop: the processor checkpoints in `shutdown_requested`, then the lease goes to
    /// the next owner (handoff) or is evicted (shutdown).
    async fn graceful(&self, processor: &mut dyn ShardRecordProcessor) {
        self.phase(ShardPhase::ShuttingDown);
        let reason = match self.lease.handoff_to() {
            Some(next_owner) => ShutdownReason::Handoff { next_owner },
            None => ShutdownReason::WorkerShutdown,
        };
        let deadline = self.stop_deadline();
        let input = ShutdownRequestedInput { checkpointer: &self.checkpointer, reason };
        let result = tokio::select! {
            biased;
            () = self.lease.lost.cancelled() => {
                self.lost(processor).await;
                return;
            }
            () = sleep_until(deadline) => {
                tracing::warn!("shutdown_requested did not finish in time; releasing the lease anyway");
                Ok(())
            }
            r = processor.shutdown_requested(input) => r,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "shutdown_requested failed");
        }
        self.checkpointer.close();
        self.release().await;
    }

    /// The shard ended: create the children's leases, let the processor checkpoint `SHARD_END`
    /// (again and again with backoff until it does), then release the finished lease.
    async fn shard_end(&self, processor: &mut dyn ShardRecordProcessor, children: Vec<ChildShard>) {
        self.phase(ShardPhase::ShardEnded);
        if self.create_child_leases(&children).await.is_err() {
            return self.after_interrupt(processor).await;
        }
        let child_ids: Vec<String> = children.iter().map(|c| c.shard_id.to_string()).collect();
        self.lease.edit_view(|l| l.child_shard_ids = child_ids).await;
        self.checkpointer.set_largest_delivered(Some(ExtendedSequenceNumber::ShardEnd));
        let mut backoff = self.ctx.config.task_backoff.iter(self.seed);
        loop {
            let input = ShardEndedInput { checkpointer: &self.checkpointer, child_shards: &children };
            let result = tokio::select! {
                biased;
                () = self.lease.lost.cancelled() => return self.after_interrupt(processor).await,
                r = processor.shard_ended(input) => r,
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "shard_ended failed");
            }
            if self.lease.checkpoint() == ExtendedSequenceNumber::ShardEnd {
                break;
            }
            tracing::error!(
                "application did not checkpoint at the end of the shard; the shard is not finished and its children stay blocked"
            );
            self.set_error(Some(ShardError::ShardEndNotCheckpointed));
            if self.pause(backoff.next().unwrap_or(Duration::from_secs(30))).await.is_err() {
                return self.after_interrupt(processor).await;
            }
        }
        self.set_error(None);
        self.checkpointer.close();
        self.release().await;
    }

    /// After a wait was interrupted in the shard-end phase.
    async fn after_interrupt(&self, processor: &mut dyn ShardRecordProcessor) {
        match self.interrupt() {
            Interrupt::Aborted => {}
            Interrupt::Lost => self.lost(processor).await,
            Interrupt::Stop => {
                self.checkpointer.close();
                self.release().await;
            }
        }
    }

    async fn create_child_leases(&self, children: &[ChildShard]) -> Result<(), Interrupt> {
        let mut backoff = self.ctx.config.task_backoff.iter(self.seed);
        for child in children {
            let mut lease = Lease::new(child.shard_id.as_str(), ExtendedSequenceNumber::TrimHorizon);
            lease.parent_shard_ids = child.parent_shards.iter().map(ShardId::to_string).collect();
            lease.hash_key_range = Some(child.hash_key_range);
            loop {
                match self.ctx.lease_store.create_lease_if_not_exists(&lease).await {
                    Ok(created) => {
                        if created {
                            // The leader assigns the child once it hears of it (heartbeat mode).
                            self.ctx.note_lease_change();
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(child = %child.shard_id, error = %e, "creating a child lease failed; retrying");
                        self.pause(backoff.next().unwrap_or(Duration::from_secs(1))).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Releases the lease (transfer during a handoff, else evict), retrying transient failures
    /// while the lease is held.
    async fn release(&self) {
        let mut backoff = self.ctx.config.task_backoff.iter(self.seed);
        loop {
            if self.ctx.abort.is_cancelled() {
                return;
            }
            match self.lease.release(&*self.ctx.lease_store).await {
                Ok(()) | Err(WriteError::Lost) | Err(WriteError::Released) => return,
                Err(WriteError::Store(e)) => {
                    tracing::warn!(error = %e, "releasing the lease failed; retrying");
                    tokio::select! {
                        biased;
                        () = self.lease.lost.cancelled() => return,
                        () = sleep(backoff.next().unwrap_or(Duration::from_secs(1))) => {}
                    }
                }
            }
        }
    }
}
