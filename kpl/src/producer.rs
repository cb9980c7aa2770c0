//! [`Producer`]: the handle applications use, and its builder. Validation, the memory bound and
//! the hand-off to the pipeline task happen here, on the caller's task.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kinesis_core::{Kinesis, KinesisError, StreamLimits, StreamRef};
use tokio::sync::{Notify, Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::completion::Cells;
use crate::config::ProducerConfig;
use crate::error::{BuildError, SendError};
use crate::pipeline::Pipeline;
use crate::record::{DeliveryFuture, Pending, UserRecord};
use crate::shard_map::{self, ShardMap};
use crate::stats::{Counters, ProducerStats};
use crate::validate::{Validated, validate};

/// State shared by the producer handles and the pipeline task.
pub(crate) struct Shared {
    pub inbox: Mutex<Inbox>,
    /// Wakes the pipeline when the inbox goes from empty to non-empty.
    pub wake: Notify,
    /// One permit per byte of `max_buffered_bytes`.
    pub permits: Semaphore,
    pub max_buffered_bytes: usize,
    pub limits: StreamLimits,
    pub counters: Counters,
    /// When the producer was built (a placeholder arrival until the pipeline stamps a record).
    pub created: Instant,
}

/// Records handed over and not yet taken in by the pipeline.
#[derive(Default)]
pub(crate) struct Inbox {
    pub records: Vec<Pending>,
    /// Current flush epoch: `flush` waits for every record of earlier epochs.
    pub epoch: u64,
    pub closed: bool,
    /// Records accepted so far.
    pub accepted: u64,
    /// Where the outcome channels of new records come from.
    pub cells: Cells,
}

impl Shared {
    pub fn lock_inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses new records from now on and wakes every `send` waiting for buffer space.
    pub fn close(&self) {
        self.lock_inbox().closed = true;
        self.permits.close();
    }

    /// Bytes currently counted against the bound.
    pub fn buffered_bytes(&self) -> usize {
        self.max_buffered_bytes.saturating_sub(self.permits.available_permits())
    }

    /// Returns bytes to the bound, noting the peak reached before (the count only grows between
    /// two releases, so the value just before a release is a local maximum).
    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.counters.peak_buffered_bytes.fetch_max(self.buffered_bytes() as u64, Ordering::Relaxed);
        self.permits.add_permits(bytes);
    }
}

/// Requests from the handles to the pipeline task.
pub(crate) enum Command {
    /// Send everything now; answer once every record of epoch `upto` or earlier has finished.
    Flush { upto: u64, done: oneshot::Sender<()> },
    /// Finish every record, then stop.
    Shutdown,
}

/// A KPL-style producer for one stream: aggregation, collection into `PutRecords`, per-shard
/// rate limiting, retries with backoff, record TTLs, and a bound on buffered bytes.
///
/// Cheap to clone; clones share one pipeline. When the last clone is dropped the producer
/// finishes every accepted record in the background and stops; call
/// [`shutdown`](Self::shutdown) to wait for that.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker};
/// use kpl::{Producer, UserRecord};
///
/// let broker = MemoryBroker::new();
/// broker.create_stream(CreateStreamRequest::provisioned("orders", 2)).await?;
/// let producer = Producer::builder(broker.clone(), "orders").build().await?;
///
/// let delivery = producer.send(UserRecord::new("customer-7", "order placed")).await?;
/// let metadata = delivery.await.map_err(|(error, _record)| error)?;
/// println!("stored on {} at {}", metadata.shard_id(), metadata.sequence_number());
///
/// producer.shutdown().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    stream: StreamRef,
    commands: mpsc::UnboundedSender<Command>,
    finished: watch::Receiver<bool>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("stream", &self.handle.stream).finish_non_exhaustive()
    }
}

impl Producer {
    /// Starts building a producer for `stream` (a name or an ARN) on a Kinesis client: the
    /// in-memory broker, [`AwsKinesis`](kinesis_core::AwsKinesis), or any `Arc<dyn Kinesis>`.
    pub fn builder<K: Kinesis + 'static>(client: K, stream: impl Into<StreamRef>) -> ProducerBuilder {
        ProducerBuilder { client: Arc::new(client), stream: stream.into(), config: ProducerConfig::default() }
    }

    /// The stream this producer writes to.
    pub fn stream(&self) -> &StreamRef {
        &self.handle.stream
    }

    /// The stream's limits, as read when the producer was built.
    pub fn limits(&self) -> StreamLimits {
        self.handle.shared.limits
    }

    /// Accepts a record, waiting for buffer space if the producer holds `max_buffered_bytes`
    /// already, and returns the future of its outcome.
    ///
    /// Fails at once, handing the record back, if the record is invalid
    /// ([`SendError::Invalid`]: nothing is buffered) or the producer is shut down
    /// ([`SendError::Closed`]). Records sent one after another from one task are delivered in
    /// that order per partition key as far as the crate documentation's ordering section says.
    ///
    /// # Cancellation
    ///
    /// Dropping the future before it completes accepts nothing: the record is dropped with it.
    /// Once it returned a [`DeliveryFuture`], the record will be sent whatever happens to that.
    pub async fn send(&self, record: UserRecord) -> Result<DeliveryFuture, SendError> {
        let shared = &self.handle.shared;
        let checked = match validate(&record, &shared.limits) {
            Ok(checked) => checked,
            Err(error) => return Err(SendError::Invalid { error, record: Box::new(record) }),
        };
        // Give the scheduler its say now and then, as an awaited permit would: on a
        // current-thread runtime the producer's task runs only when senders yield. (Before the
        // permits are taken: nothing may be awaited between taking them and enqueueing, or a
        // cancelled `send` would leak them.)
        tokio::task::coop::consume_budget().await;
        let charge = self.charge(&checked);
        // Fast path without a waiter node; tokio hands released permits to queued waiters
        // first, so this never overtakes a `send` that is already waiting.
        let permit = match shared.permits.try_acquire_many(charge) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(SendError::Closed { record: Box::new(record) }),
            Err(TryAcquireError::NoPermits) => match shared.permits.acquire_many(charge).await {
                Ok(permit) => permit,
                Err(_) => return Err(SendError::Closed { record: Box::new(record) }),
            },
        };
        permit.forget();
        self.enqueue(record, checked)
    }

    /// Accepts a record only if there is buffer space now; otherwise hands it back with
    /// [`SendError::Full`]. Validation and shutdown fail as in [`send`](Self::send).
    pub fn try_send(&self, record: UserRecord) -> Result<DeliveryFuture, SendError> {
        let shared = &self.handle.shared;
        let checked = match validate(&record, &shared.limits) {
            Ok(checked) => checked,
            Err(error) => return Err(SendError::Invalid { error, record: Box::new(record) }),
        };
        match shared.permits.try_acquire_many(self.charge(&checked)) {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Err(SendError::Full { record: Box::new(record) }),
            Err(TryAcquireError::Closed) => return Err(SendError::Closed { record: Box::new(record) }),
        }
        self.enqueue(record, checked)
    }

    fn charge(&self, checked: &Validated) -> u32 {
        // The bound always holds one record of the stream's maximum size; never ask for more.
        let cap = u32::try_from(self.handle.shared.max_buffered_bytes).unwrap_or(u32::MAX);
        checked.charge.min(cap)
    }

    fn enqueue(&self, record: UserRecord, checked: Validated) -> Result<DeliveryFuture, SendError> {
        let shared = &self.handle.shared;
        let charge = self.charge(&checked);
        let mut inbox = shared.lock_inbox();
        if inbox.closed {
            drop(inbox);
            shared.permits.add_permits(charge as usize);
            return Err(SendError::Closed { record: Box::new(record) });
        }
        let (cell, rx) = inbox.cells.pair();
        let mut pending = Pending::new(record, checked.hash_key, charge, shared.created, cell);
        pending.epoch = inbox.epoch;
        inbox.accepted += 1;
        let was_empty = inbox.records.is_empty();
        inbox.records.push(pending);
        drop(inbox);
        if was_empty {
            shared.wake.notify_one();
        }
        Ok(DeliveryFuture::new(rx))
    }

    /// Sends every buffered record now, ignoring `record_max_buffered_time`, and waits until
    /// every record accepted before the call has finished (delivered or failed). Records keep
    /// being accepted meanwhile.
    pub async fn flush(&self) {
        let shared = &self.handle.shared;
        let upto = {
            let mut inbox = shared.lock_inbox();
            let upto = inbox.epoch;
            inbox.epoch += 1;
            upto
        };
        let (done, wait) = oneshot::channel();
        if self.handle.commands.send(Command::Flush { upto, done }).is_ok() {
            // An error means the pipeline stopped, which it only does with nothing pending.
            let _ = wait.await;
        }
    }

    /// Stops accepting records (`send` fails with [`SendError::Closed`], also for callers
    /// waiting for space), sends everything buffered at once, and waits until every accepted
    /// record has finished and the producer's task has stopped. Records still undelivered when
    /// their TTL passes fail with [`ProduceError::Expired`](crate::ProduceError::Expired), so
    /// this takes at most about `record_ttl`.
    pub async fn shutdown(&self) {
        self.handle.shared.close();
        let _ = self.handle.commands.send(Command::Shutdown);
        let mut finished = self.handle.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Whether the producer has stopped accepting records.
    pub fn is_closed(&self) -> bool {
        self.handle.shared.lock_inbox().closed
    }

    /// A snapshot of the producer's counters.
    pub fn stats(&self) -> ProducerStats {
        let shared = &self.handle.shared;
        let c = &shared.counters;
        let sent = shared.lock_inbox().accepted;
        let delivered = Counters::get(&c.delivered);
        let failed = Counters::get(&c.failed);
        let buffered = shared.buffered_bytes() as u64;
        ProducerStats {
            user_records_sent: sent,
            user_records_delivered: delivered,
            user_records_failed: failed,
            user_records_expired: Counters::get(&c.expired),
            user_records_pending: sent.saturating_sub(delivered + failed),
            kinesis_records_put: Counters::get(&c.kinesis_records_put),
            put_requests: Counters::get(&c.put_requests),
            retries: Counters::get(&c.retries),
            throttles: Counters::get(&c.throttles),
            errors: Counters::get(&c.errors),
            wrong_shard_resends: Counters::get(&c.wrong_shard_resends),
            shard_map_refreshes: Counters::get(&c.shard_map_refreshes),
            buffered_bytes: buffered,
            peak_buffered_bytes: Counters::get(&c.peak_buffered_bytes).max(buffered),
        }
    }

    /// Bytes currently counted against `max_buffered_bytes`.
    pub fn buffered_bytes(&self) -> usize {
        self.handle.shared.buffered_bytes()
    }
}

/// Builds a [`Producer`]; see [`Producer::builder`].
pub struct ProducerBuilder {
    client: Arc<dyn Kinesis>,
    stream: StreamRef,
    config: ProducerConfig,
}

impl std::fmt::Debug for ProducerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerBuilder").field("stream", &self.stream).field("config", &self.config).finish()
    }
}

/// Attempts of each start-up call (`DescribeStreamSummary`, `ListShards`) on retryable errors.
const STARTUP_ATTEMPTS: u32 = 5;

impl ProducerBuilder {
    /// Uses these options instead of the defaults.
    pub fn config(mut self, config: ProducerConfig) -> Self {
        self.config = config;
        self
    }

    /// Reads the stream's maximum record size (`DescribeStreamSummary`) and its shards
    /// (`ListShards`), then starts the producer's task on the current tokio runtime.
    ///
    /// Retryable errors of those calls are retried a few times; others fail the build.
    pub async fn build(self) -> Result<Producer, BuildError> {
        let ProducerBuilder { client, stream, config } = self;
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;

        let summary = with_retries(|| client.describe_stream_summary(&stream))
            .await
            .map_err(|source| BuildError::DescribeStream { stream: stream.clone(), source })?;
        let limits = StreamLimits::from_max_record_size_kib(summary.max_record_size_kib);
        let settings = config.resolve(limits)?;
        let map = with_retries(|| async { ShardMap::new(1, shard_map::fetch(client.as_ref(), &stream).await?) })
            .await
            .map_err(|source| BuildError::ListShards { stream: stream.clone(), source })?;

        crate::telemetry::describe();
        let max_buffered_bytes = config.max_buffered_bytes.min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Notify::new(),
            permits: Semaphore::new(max_buffered_bytes),
            max_buffered_bytes,
            limits,
            counters: Counters::default(),
            created: Instant::now(),
        });
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (finished_tx, finished_rx) = watch::channel(false);
        let pipeline = Pipeline::new(shared.clone(), client, stream.clone(), settings, map, commands_rx, finished_tx);
        runtime.spawn(pipeline.run());
        Ok(Producer { handle: Arc::new(Handle { shared, stream, commands: commands_tx, finished: finished_rx }) })
    }
}

/// Runs a start-up call, retrying retryable errors with a short doubling pause.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, KinesisError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KinesisError>>,
{
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error)
                if attempt < STARTUP_ATTEMPTS && (error.is_retryable() || error.code() == "InconsistentShardMap") =>
            {
                tracing::debug!(%error, attempt, "producer start-up call failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
