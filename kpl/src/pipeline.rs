//! The producer's task: one per producer, owning every buffer, so records are never shared
//! between threads after `send`. Each turn of its loop runs the stages in data-flow order:
//!
//! 1. take in the records handed over by `send` (stamp arrival, predict the shard from the
//!    [`ShardMap`], feed the shard's aggregator);
//! 2. flush aggregates whose oldest record reached `record_max_buffered_time`, move retried
//!    records whose backoff has passed back into their shard's queue, fail expired records;
//! 3. let the [`Collector`] build requests (limiter and in-flight caps permitting) and send them;
//! 4. give buffer space back, answer `flush` callers;
//!
//! then sleeps until a request completes, a shard-map read completes, a record is handed over,
//! a command arrives, or the next deadline (aggregate, limiter, backoff, expiry, refresh).
//! Request results go through the retrier ([`classify`]) record by record.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kinesis_core::{Kinesis, KinesisError, RecordPlacement, Shard, StreamRef};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::aggregator::{Built, KinesisRecord, pack};
use crate::collector::{Batch, Collector};
use crate::config::{RecordOrder, Settings};
use crate::congestion::{Congestion, Sent};
use crate::error::ProduceError;
use crate::limiter::Limiter;
use crate::producer::{Command, Shared};
use crate::record::{Pending, RecordMetadata};
use crate::retrier::{Disposition, RetryPolicy, classify};
use crate::sender::{self, Request, RequestOutcome};
use crate::shard_map::{self, MapShard, ShardMap};
use crate::slot::Slot;
use crate::stats::Counters;
use crate::telemetry::{ShardMetrics, StreamMetrics};
use crate::time::after;

/// Bytes of emptied aggregate user lists kept for reuse, beyond the one each aggregator keeps:
/// a request returns several lists at once, and freeing them only to allocate them again costs
/// more than the aggregation around it.
const LIST_POOL_BYTES: usize = 4 << 20;
/// Shortest time between two shard-map reads triggered by unexpected shards.
const TRIGGERED_REFRESH_SPACING: Duration = Duration::from_secs(1);
/// Pause after a failed shard-map read, growing ×1.5 per failure up to 30 s (as the KPL).
const REFRESH_RETRY_BASE: Duration = Duration::from_secs(1);
const REFRESH_RETRY_MAX: Duration = Duration::from_secs(30);
/// Aggregates whose digests are computed side by side (see `kinesis_core`'s `md5_each`).
const SEAL_LANES: usize = 8;
/// The largest an aggregate held back by per-key ordering grows: the classic 1 MiB record, which
/// every consumer takes.
const GROWN_AGGREGATE_MAX: usize = 1 << 20;

/// A request in flight: its records wait here for the answer.
struct InFlight {
    records: Vec<KinesisRecord>,
    slots: Vec<usize>,
    /// Its size, time-out and congestion epoch.
    sent: Sent,
}

/// A stored aggregate whose shard the map did not predict, waiting for a fresh map to tell
/// whether the shard owns all of its records' hash keys.
struct Parked {
    record: KinesisRecord,
    placement: RecordPlacement,
    /// Shard-map reads started before it was parked (only a later one can judge it).
    refreshes_started: u64,
}

/// How a record goes back into a queue after being taken apart.
#[derive(Clone)]
struct Requeue {
    attempts: u32,
    last_error: Option<Arc<KinesisError>>,
    /// `Some`: wait in backoff until then; `None`: ready at once.
    retry_at: Option<Instant>,
    /// When its last attempt failed (for `BufferingTime` between attempts).
    failed_at: Option<Instant>,
    /// Whether an attempt may have stored the records.
    may_be_stored: bool,
}

pub(crate) struct Pipeline {
    shared: Arc<Shared>,
    client: Arc<dyn Kinesis>,
    stream: StreamRef,
    s: Settings,

    map: ShardMap,
    /// Slot of each shard in `map.shards()`.
    route: Vec<usize>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    slot_of: HashMap<kinesis_core::ShardId, usize>,
    /// The [`order`](Pending::order) the next record taken in gets.
    next_order: u64,

    collector: Collector,
    congestion: Congestion,
    tasks: JoinSet<RequestOutcome>,
    task_requests: HashMap<tokio::task::Id, u64>,
    requests: HashMap<u64, InFlight>,
    next_request: u64,
    retry: RetryPolicy,

    refresh: Option<JoinHandle<Result<Vec<Shard>, KinesisError>>>,
    refresh_at: Instant,
    refresh_started_at: Option<Instant>,
    refreshes_started: u64,
    refresh_failures: u32,
    refresh_again: bool,
    parked: Vec<Parked>,

    /// Records taken in and not finished, per flush epoch, oldest epoch first.
    epochs: VecDeque<(u64, usize)>,
    outstanding: usize,
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// Buffer bytes to give back at the end of the turn.
    release: usize,
    shutting_down: bool,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    finished: watch::Sender<bool>,

    metrics: StreamMetrics,
    inbox_spare: Vec<Pending>,
    built: Vec<Built>,
    /// Emptied user lists of delivered aggregates, for aggregators that have none spare.
    list_pool: Vec<Vec<Pending>>,
    /// Capacity of `list_pool`'s lists, in bytes.
    list_pool_bytes: usize,
}

/// Wraps a finished aggregate into a Kinesis record of `slot` and queues it.
fn queue_built(slot: &mut Slot, built: Built, index: usize, version: u64, s: &Settings) {
    slot.push_ready(KinesisRecord::new(built, index, version, s));
}

impl Pipeline {
    pub fn new(
        shared: Arc<Shared>,
        client: Arc<dyn Kinesis>,
        stream: StreamRef,
        s: Settings,
        map: ShardMap,
        commands: mpsc::UnboundedReceiver<Command>,
        finished: watch::Sender<bool>,
    ) -> Self {
        let now = Instant::now();
        let refresh_at = after(now, s.refresh_interval);
        let retry = RetryPolicy::new(s.retry_base, s.retry_max);
        let metrics = StreamMetrics::new(stream.name());
        let mut pipeline = Pipeline {
            shared,
            client,
            stream,
            map,
            route: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            slot_of: HashMap::new(),
            next_order: 0,
            collector: Collector::default(),
            congestion: Congestion::new(s.max_in_flight, s.collection_max_size, s.request_timeout),
            tasks: JoinSet::new(),
            task_requests: HashMap::new(),
            requests: HashMap::new(),
            next_request: 0,
            retry,
            refresh: None,
            refresh_at,
            refresh_started_at: None,
            refreshes_started: 0,
            refresh_failures: 0,
            refresh_again: false,
            parked: Vec::new(),
            epochs: VecDeque::new(),
            outstanding: 0,
            flush_waiters: Vec::new(),
            release: 0,
            shutting_down: false,
            commands,
            commands_open: true,
            finished,
            metrics,
            inbox_spare: Vec::new(),
            built: Vec::new(),
            list_pool: Vec::new(),
            list_pool_bytes: 0,
            s,
        };
        let shards: Vec<MapShard> = pipeline.map.shards().to_vec();
        pipeline.route = shards.iter().map(|shard| pipeline.add_slot(shard, now)).collect();
        pipeline
    }

    /// Runs until shut down (by [`Command::Shutdown`] or when every producer handle is gone)
    /// and every accepted record has finished.
    pub async fn run(mut self) {
        let mut stopped = Stopped { shared: self.shared.clone(), finished: false };
        let idle = |now: Instant| after(now, Duration::from_secs(3600));
        let sleep = tokio::time::sleep_until(idle(Instant::now()));
        tokio::pin!(sleep);
        loop {
            let now = Instant::now();
            loop {
                match self.commands.try_recv() {
                    Ok(command) => self.on_command(command),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.on_handles_dropped();
                        break;
                    }
                }
            }
            self.take_in(now);
            self.maintain(now);
            self.send_ready(now);
            self.settle();
            if self.shutting_down && self.outstanding == 0 && self.requests.is_empty() {
                break;
            }
            let wake = self.next_wake(now);
            sleep.as_mut().reset(wake.unwrap_or_else(|| idle(now)));
            tokio::select! {
                biased;
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_joined(joined, Instant::now());
                }
                refreshed = join_refresh(&mut self.refresh), if self.refresh.is_some() => {
                    self.on_refreshed(refreshed, Instant::now());
                }
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => self.on_command(command),
                    None => self.on_handles_dropped(),
                },
                () = self.shared.wake.notified() => {}
                () = &mut sleep, if wake.is_some() => {}
            }
        }
        if let Some(refresh) = self.refresh.take() {
            refresh.abort();
        }
        self.shared.close();
        self.settle();
        stopped.finished = true;
        let _ = self.finished.send(true);
    }

    // ----- commands -----------------------------------------------------------------------

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Flush { upto, done } => self.flush_waiters.push((upto, done)),
            Command::Shutdown => self.begin_shutdown(),
        }
    }

    fn on_handles_dropped(&mut self) {
        self.commands_open = false;
        self.begin_shutdown();
    }

    fn begin_shutdown(&mut self) {
        if !self.shutting_down {
            tracing::debug!(stream = %self.stream, "producer shutting down");
        }
        self.shutting_down = true;
        self.shared.close();
    }

    /// Whether everything should be sent now, deadlines or not.
    fn force(&self) -> bool {
        self.shutting_down || !self.flush_waiters.is_empty()
    }

    // ----- 1. take in ---------------------------------------------------------------------

    fn take_in(&mut self, now: Instant) {
        let mut batch = {
            let mut inbox = self.shared.lock_inbox();
            if inbox.records.is_empty() {
                return;
            }
            std::mem::replace(&mut inbox.records, std::mem::take(&mut self.inbox_spare))
        };
        self.metrics.user_records_received.increment(batch.len() as u64);
        self.outstanding += batch.len();
        let version = self.map.version();
        let grown_limit = self.grown_aggregate_limit();
        for mut user in batch.drain(..) {
            user.arrival = now;
            user.order = self.next_order;
            self.next_order += 1;
            match self.epochs.back_mut() {
                Some((epoch, count)) if *epoch == user.epoch => *count += 1,
                _ => self.epochs.push_back((user.epoch, 1)),
            }
            let index = self.route.get(self.map.lookup(user.hash_key)).copied().unwrap_or_default();
            let Some(Some(slot)) = self.slots.get_mut(index) else {
                // Unreachable: every shard of the map has a slot.
                let error = ProduceError::Aborted;
                self.finish(user, Err(error));
                continue;
            };
            slot.aggregate(user, &self.s, grown_limit, &mut self.built);
            if !self.built.is_empty() {
                for built in self.built.drain(..) {
                    queue_built(slot, built, index, version, &self.s);
                }
                if slot.aggregator.wants_spare()
                    && let Some(list) = self.list_pool.pop()
                {
                    self.list_pool_bytes -= list.capacity() * std::mem::size_of::<Pending>();
                    let _ = slot.aggregator.recycle(list);
                }
            }
        }
        self.inbox_spare = batch;
    }

    /// The size an aggregate held back by per-key ordering may grow to: what the endpoint takes
    /// in one request now (see [`Congestion::request_bytes`]), at most a 1 MiB record.
    fn grown_aggregate_limit(&self) -> usize {
        self.congestion
            .request_bytes()
            .min(GROWN_AGGREGATE_MAX)
            .min(self.s.max_record_bytes.saturating_sub(1))
            .max(self.s.aggregation_max_size)
    }

    // ----- 2. deadlines: aggregates, backoffs, expiry, shard map ---------------------------

    fn maintain(&mut self, now: Instant) {
        let force = self.force();
        self.start_refresh_if_due(now);
        self.expire_parked(now);
        let version = self.map.version();
        let due = |slot: &Slot| slot.next_expiry.is_some_and(|t| t <= now);
        for index in 0..self.slots.len() {
            let Some(Some(slot)) = self.slots.get_mut(index) else { continue };
            slot.release_due(now);
            if due(slot) {
                self.expire_slot(index, now);
            }
            // An aggregate closes at its deadline unless it is held back behind an earlier
            // record of its keys (then it keeps filling until that one is answered); one that
            // grew while held back closes as soon as it is free; any closes when its records
            // are about to expire.
            let Some(Some(slot)) = self.slots.get_mut(index) else { continue };
            if let Some(oldest) = slot.aggregator.oldest_arrival()
                && (force
                    || after(oldest, self.s.ttl) <= now
                    || ((slot.aggregator.grown() || after(oldest, self.s.max_buffered_time) <= now)
                        && !slot.open_aggregate_held_back()))
                && let Some(built) = slot.aggregator.flush(&self.s)
            {
                queue_built(slot, built, index, version, &self.s);
                if due(slot) {
                    self.expire_slot(index, now);
                }
            }
        }
        self.collect_idle_slots();
    }

    /// Fails the expired user records queued on a slot; the rest stay, re-packed if needed.
    fn expire_slot(&mut self, index: usize, now: Instant) {
        let Some(Some(slot)) = self.slots.get_mut(index) else { return };
        let (ready, backoff) = slot.take_queued();
        let mut keep_ready = Vec::with_capacity(ready.len());
        let mut keep_backoff = Vec::with_capacity(backoff.len());
        for record in ready {
            keep_ready.extend(self.expire_record(record, now));
        }
        for record in backoff {
            keep_backoff.extend(self.expire_record(record, now));
        }
        if let Some(Some(slot)) = self.slots.get_mut(index) {
            keep_ready.into_iter().for_each(|r| slot.push_ready(r));
            keep_backoff.into_iter().for_each(|r| slot.push_backoff(r));
        }
    }

    /// Fails the user records of `record` whose TTL has passed and returns what is left of it
    /// (re-packed when some of its records expired).
    fn expire_record(&mut self, record: KinesisRecord, now: Instant) -> Vec<KinesisRecord> {
        if record.expires > now {
            return vec![record];
        }
        let ttl = self.s.ttl;
        let mut record = record;
        let (slot, attempts, retry_at, failed_at, may_be_stored) =
            (record.slot, record.attempts, record.retry_at, record.failed_at, record.may_be_stored);
        let last_error = record.last_error.take();
        let (expired, live): (Vec<_>, Vec<_>) =
            record.take_users().into_iter().partition(|u| after(u.arrival, ttl) <= now);
        let error = ProduceError::Expired { attempts, last_error: last_error.clone(), may_be_stored };
        self.fail_users(slot, expired, &error);
        if live.is_empty() {
            return Vec::new();
        }
        let version = self.map.version();
        pack(live, &self.s)
            .into_iter()
            .map(|built| {
                let mut record = KinesisRecord::new(built, slot, version, &self.s);
                record.attempts = attempts;
                record.last_error = last_error.clone();
                record.retry_at = retry_at;
                record.failed_at = failed_at;
                record.may_be_stored = may_be_stored;
                record
            })
            .collect()
    }

    // ----- 3. collect and send ------------------------------------------------------------

    fn send_ready(&mut self, now: Instant) {
        if self.s.ordering != RecordOrder::Unordered && !self.parked.is_empty() {
            // Nothing may overtake records whose fate awaits the shard map.
            return;
        }
        let force = self.force();
        while self.requests.len() < self.congestion.window() {
            let max_bytes = self.congestion.request_bytes();
            let Some(batch) = self.collector.next_batch(&mut self.slots, &self.s, now, force, max_bytes) else {
                break;
            };
            self.dispatch(batch, now);
        }
    }

    fn dispatch(&mut self, mut batch: Batch, now: Instant) {
        let id = self.next_request;
        self.next_request += 1;
        let mut entries = Vec::with_capacity(batch.records.len());
        let (mut user_records, mut bytes) = (0, 0);
        // The request's aggregates get their digests together: several times faster than one by
        // one, and the largest single cost of producing.
        // Digests run eight side by side: when the request has fewer aggregates than that (a
        // request of ordered records often carries one per shard), aggregates waiting in the
        // ready queues get theirs in the same pass; they need it before they are sent anyway.
        let unsealed = batch.records.iter().filter(|r| r.is_unsealed()).count();
        let spare = SEAL_LANES.saturating_sub(unsealed);
        let waiting = self
            .slots
            .iter_mut()
            .flatten()
            .flat_map(|slot| slot.ready.iter_mut())
            .filter(|r| r.is_unsealed())
            .take(if unsealed == 0 { 0 } else { spare });
        KinesisRecord::seal_all(batch.records.iter_mut().chain(waiting));
        for record in &mut batch.records {
            // BufferingTime, as the KPL: arrival to first send, and between attempts.
            if let Some(Some(slot)) = self.slots.get(record.slot) {
                if record.attempts == 0 {
                    // Records taken in on one turn share their arrival: one sample per run.
                    for run in record.users().chunk_by(|a, b| a.arrival == b.arrival) {
                        let Some(user) = run.first() else { continue };
                        let waited = now.saturating_duration_since(user.arrival);
                        slot.metrics.buffering_time.record_many(waited.as_secs_f64() * 1000.0, run.len());
                    }
                } else if let Some(failed_at) = record.failed_at {
                    let waited = now.saturating_duration_since(failed_at);
                    slot.metrics.buffering_time.record_many(waited.as_secs_f64() * 1000.0, record.users().len());
                }
            }
            record.attempts += 1;
            user_records += record.users().len();
            bytes += record.billed_size();
            entries.push(record.entry());
        }
        let sent = self.congestion.send(bytes);
        let request = Request { id, entries, user_records, bytes };
        let task = self.tasks.spawn(sender::send(self.client.clone(), self.stream.clone(), request, sent.timeout));
        self.task_requests.insert(task.id(), id);
        self.metrics.kinesis_records_per_request.record(batch.records.len() as f64);
        self.metrics.user_records_per_request.record(user_records as f64);
        self.requests.insert(id, InFlight { records: batch.records, slots: batch.slots, sent });
    }

    // ----- results ------------------------------------------------------------------------

    fn on_joined(&mut self, joined: Result<(tokio::task::Id, RequestOutcome), JoinError>, now: Instant) {
        match joined {
            Ok((task, outcome)) => {
                self.task_requests.remove(&task);
                self.on_outcome(outcome, now);
            }
            Err(error) => {
                if let Some(id) = self.task_requests.remove(&error.id()) {
                    let result = Err(KinesisError::Transport {
                        message: format!("the PutRecords task failed: {error}"),
                        source: None,
                    });
                    self.on_outcome(RequestOutcome { id, result, elapsed: Duration::ZERO }, now);
                }
            }
        }
    }

    fn on_outcome(&mut self, outcome: RequestOutcome, now: Instant) {
        let Some(in_flight) = self.requests.remove(&outcome.id) else { return };
        for &index in &in_flight.slots {
            if let Some(Some(slot)) = self.slots.get_mut(index) {
                slot.in_flight = slot.in_flight.saturating_sub(1);
            }
        }
        Counters::add(&self.shared.counters.put_requests, 1);
        self.metrics.request_time.record(outcome.elapsed.as_secs_f64() * 1000.0);
        match &outcome.result {
            Err(KinesisError::Timeout { .. }) => self.congestion.timed_out(in_flight.sent),
            // An answer, whatever it says, measures the endpoint's latency.
            Ok(_) | Err(KinesisError::Throttled { .. } | KinesisError::InternalFailure { .. }) => {
                self.congestion.answered(in_flight.sent, outcome.elapsed)
            }
            Err(_) => {}
        }

        let count = in_flight.records.len();
        // A request that failed as a whole may still have stored its records, unless the
        // service said it refused them; so may one whose answer does not add up.
        let (ambiguous, results): (bool, Vec<Result<RecordPlacement, Arc<KinesisError>>>) = match outcome.result {
            Ok(output) if output.records.len() == count => {
                (false, output.records.into_iter().map(|r| r.map_err(Arc::new)).collect())
            }
            Ok(output) => {
                let error = Arc::new(KinesisError::InternalFailure {
                    message: format!("PutRecords answered {} results for {count} records", output.records.len()),
                });
                (true, vec![Err(error); count])
            }
            Err(error) => (error.may_have_taken_effect(), vec![Err(Arc::new(error)); count]),
        };

        // Per shard: was anything throttled, did anything succeed (for the limiter).
        let mut feedback: Vec<(usize, bool, bool)> = Vec::with_capacity(in_flight.slots.len());
        for (mut record, result) in in_flight.records.into_iter().zip(results) {
            if let Some(Some(slot)) = self.slots.get_mut(record.slot) {
                slot.returned(&record);
            }
            record.may_be_stored |= ambiguous;
            let (throttled, stored) = match &result {
                Ok(_) => (false, true),
                Err(error) => (error.is_throttling(), false),
            };
            match feedback.iter_mut().find(|(slot, _, _)| *slot == record.slot) {
                Some(entry) => {
                    entry.1 |= throttled;
                    entry.2 |= stored;
                }
                None => feedback.push((record.slot, throttled, stored)),
            }
            match result {
                Ok(placement) => self.on_stored(record, placement, now),
                Err(error) => self.on_failed(record, error, now),
            }
        }
        for (index, throttled, stored) in feedback {
            if let Some(Some(slot)) = self.slots.get_mut(index) {
                if throttled {
                    slot.limiter.on_throttled(now);
                } else if stored {
                    slot.limiter.on_success(now);
                }
            }
        }
    }

    /// A Kinesis record was stored. If it landed on the predicted shard (or is a plain record,
    /// which the service routes by its own key), its user records are delivered. An aggregate
    /// that landed elsewhere is delivered only if that shard owns all its records' hash keys;
    /// otherwise its records are sent again (a consumer that filters by hash range, as the KCL
    /// does, drops such an aggregate whole).
    fn on_stored(&mut self, record: KinesisRecord, placement: RecordPlacement, now: Instant) {
        let predicted =
            self.slots.get(record.slot).and_then(Option::as_ref).is_some_and(|s| s.id == placement.shard_id);
        if predicted {
            return self.deliver(record, &placement);
        }
        self.want_refresh(now);
        if !record.aggregated() {
            return self.deliver(record, &placement);
        }
        match self.map.get(&placement.shard_id) {
            Some(actual) => {
                if record.users().iter().all(|u| actual.range.contains(u.hash_key)) {
                    self.deliver(record, &placement);
                } else {
                    self.resend_wrong_shard(record);
                }
            }
            None => {
                let refreshes_started = self.refreshes_started;
                self.parked.push(Parked { record, placement, refreshes_started });
            }
        }
    }

    /// Sends the user records of a mis-sharded aggregate again, re-routed by the current map.
    fn resend_wrong_shard(&mut self, mut record: KinesisRecord) {
        tracing::debug!(
            stream = %self.stream,
            users = record.users().len(),
            "aggregate stored on a shard that does not own all its hash keys; re-sending its records"
        );
        Counters::add(&self.shared.counters.wrong_shard_resends, record.users().len() as u64);
        Counters::add(&self.shared.counters.retries, record.users().len() as u64);
        let users = record.take_users();
        let requeue = Requeue {
            attempts: record.attempts,
            last_error: record.last_error.take(),
            retry_at: None,
            failed_at: None,
            // It is in the stream, on a shard that does not own all its keys.
            may_be_stored: true,
        };
        self.reroute(users, requeue);
    }

    fn deliver(&mut self, mut record: KinesisRecord, placement: &RecordPlacement) {
        let users = record.users().len() as u64;
        if let Some(Some(slot)) = self.slots.get(record.slot) {
            let m = &slot.metrics;
            m.kinesis_records_put.increment(1);
            m.kinesis_records_data_put.increment(record.billed_size() as u64);
            m.user_records_per_kinesis_record.record(users as f64);
            m.user_records_put.increment(users);
            m.user_records_data_put.increment(record.users().iter().map(|u| u.data_len() as u64).sum());
            m.retries_per_record.record_many(f64::from(record.attempts.saturating_sub(1)), record.users().len());
        }
        let counters = &self.shared.counters;
        Counters::add(&counters.kinesis_records_put, 1);
        Counters::add(&counters.delivered, users);
        let mut list = record.take_delivered();
        let shared = Arc::new(placement.clone());
        // Resolved where they lie (records are large; moving each out costs more than the rest).
        // Their bookkeeping is summed per run of one flush epoch (records come in such runs).
        let mut position = 0;
        for run in list.chunk_by_mut(|a, b| a.epoch == b.epoch) {
            let Some(epoch) = run.first().map(|user| user.epoch) else { continue };
            for user in run.iter_mut() {
                let sub_sequence_number = if record.aggregated() { position } else { 0 };
                position += 1;
                self.release += user.charge as usize;
                let metadata =
                    RecordMetadata::new(shared.clone(), sub_sequence_number, record.aggregated(), record.attempts);
                user.deliver_in_place(metadata);
            }
            self.finish_in_epoch(epoch, run.len());
        }
        self.outstanding = self.outstanding.saturating_sub(list.len());
        list.clear();
        if record.aggregated() {
            self.recycle(record.slot, list);
        }
    }

    /// A Kinesis record failed: retried after a backoff, or failed, per the retrier.
    fn on_failed(&mut self, mut record: KinesisRecord, error: Arc<KinesisError>, now: Instant) {
        let counters = &self.shared.counters;
        Counters::add(&counters.errors, 1);
        if error.is_throttling() {
            Counters::add(&counters.throttles, 1);
        }
        if let Some(Some(slot)) = self.slots.get_mut(record.slot) {
            slot.metrics.error(error.code(), 1);
        }
        record.last_error = Some(error.clone());
        record.failed_at = Some(now);
        let (attempts, may_be_stored) = (record.attempts, record.may_be_stored);
        match classify(&error, self.s.fail_if_throttled) {
            Disposition::Reject => {
                tracing::debug!(stream = %self.stream, %error, "records refused by Kinesis; not retried");
                let users = record.take_users();
                self.fail_users(record.slot, users, &ProduceError::Rejected { attempts, error, may_be_stored });
            }
            Disposition::FailThrottled => {
                let users = record.take_users();
                self.fail_users(record.slot, users, &ProduceError::Throttled { attempts, error, may_be_stored });
            }
            Disposition::Retry { .. } => self.retry_later(record, now),
        }
    }

    fn retry_later(&mut self, record: KinesisRecord, now: Instant) {
        for record in self.expire_record(record, now) {
            Counters::add(&self.shared.counters.retries, record.users().len() as u64);
            let retry_at = now + self.retry.delay(record.attempts);
            let version = self.map.version();
            let still_fits = record.map_version == version || {
                let index = record.slot;
                record.users().iter().all(|u| self.route.get(self.map.lookup(u.hash_key)) == Some(&index))
            };
            match self.slots.get_mut(record.slot) {
                Some(Some(slot)) if slot.open && still_fits => {
                    let mut record = record;
                    record.map_version = version;
                    record.retry_at = retry_at;
                    slot.push_backoff(record);
                }
                _ => {
                    // The shard map changed under the record: split it by the new shards.
                    let mut record = record;
                    let requeue = Requeue {
                        attempts: record.attempts,
                        last_error: record.last_error.take(),
                        retry_at: Some(retry_at),
                        failed_at: record.failed_at,
                        may_be_stored: record.may_be_stored,
                    };
                    self.reroute(record.take_users(), requeue);
                }
            }
        }
    }

    /// Routes user records by the current map and queues them, packed per shard, keeping
    /// their place in creation order.
    fn reroute(&mut self, users: Vec<Pending>, requeue: Requeue) {
        let mut groups: Vec<(usize, Vec<Pending>)> = Vec::new();
        for user in users {
            let index = self.route.get(self.map.lookup(user.hash_key)).copied().unwrap_or_default();
            match groups.iter_mut().find(|(i, _)| *i == index) {
                Some((_, group)) => group.push(user),
                None => groups.push((index, vec![user])),
            }
        }
        let version = self.map.version();
        for (index, group) in groups {
            for built in pack(group, &self.s) {
                let mut record = KinesisRecord::new(built, index, version, &self.s);
                record.attempts = requeue.attempts;
                record.last_error = requeue.last_error.clone();
                record.failed_at = requeue.failed_at;
                record.may_be_stored = requeue.may_be_stored;
                match self.slots.get_mut(index) {
                    Some(Some(slot)) => match requeue.retry_at {
                        Some(at) => {
                            record.retry_at = at;
                            slot.push_backoff(record);
                        }
                        None => slot.insert_ready(record),
                    },
                    _ => {
                        // Unreachable: routes point at live slots.
                        let error = ProduceError::Expired {
                            attempts: record.attempts,
                            last_error: record.last_error.take(),
                            may_be_stored: record.may_be_stored,
                        };
                        let users = record.take_users();
                        self.fail_users(index, users, &error);
                    }
                }
            }
        }
    }

    // ----- shard map ----------------------------------------------------------------------

    fn start_refresh_if_due(&mut self, now: Instant) {
        if self.refresh.is_some() || now < self.refresh_at {
            return;
        }
        let client = self.client.clone();
        let stream = self.stream.clone();
        self.refreshes_started += 1;
        self.refresh_started_at = Some(now);
        self.refresh = Some(tokio::spawn(async move { shard_map::fetch(client.as_ref(), &stream).await }));
    }

    /// A record landed on a shard the map did not predict: re-read the map soon.
    fn want_refresh(&mut self, now: Instant) {
        if self.refresh.is_some() {
            self.refresh_again = true;
            return;
        }
        let earliest = self.refresh_started_at.map_or(now, |t| (t + TRIGGERED_REFRESH_SPACING).max(now));
        self.refresh_at = self.refresh_at.min(earliest);
    }

    fn on_refreshed(&mut self, joined: Result<Result<Vec<Shard>, KinesisError>, JoinError>, now: Instant) {
        self.refresh = None;
        let ordinal = self.refreshes_started;
        let listing = match joined {
            Ok(listing) => listing,
            Err(error) => {
                Err(KinesisError::Transport { message: format!("shard-map task failed: {error}"), source: None })
            }
        };
        match listing.and_then(|shards| ShardMap::new(self.map.version() + 1, shards)) {
            Ok(map) => {
                Counters::add(&self.shared.counters.shard_map_refreshes, 1);
                self.refresh_failures = 0;
                self.refresh_at = after(now, self.s.refresh_interval);
                if !map.same_shards(&self.map) {
                    self.install(map, now);
                }
                self.judge_parked(ordinal);
            }
            Err(error) => {
                self.refresh_failures += 1;
                let pause = REFRESH_RETRY_BASE
                    .mul_f64(1.5f64.powi(self.refresh_failures.saturating_sub(1).min(20) as i32))
                    .min(REFRESH_RETRY_MAX);
                self.refresh_at = now + pause;
                tracing::warn!(stream = %self.stream, %error, retry_in = ?pause, "could not refresh the shard map");
            }
        }
        if self.refresh_again {
            self.refresh_again = false;
            self.want_refresh(now);
        }
    }

    /// Installs a new shard map: slots for new shards; the records of shards that closed are
    /// re-routed by the new map (before newer records of their new shard).
    fn install(&mut self, map: ShardMap, now: Instant) {
        tracing::debug!(stream = %self.stream, shards = map.shards().len(), "shard map changed");
        let shards: Vec<MapShard> = map.shards().to_vec();
        let mut route = Vec::with_capacity(shards.len());
        for shard in &shards {
            let index = match self.slot_of.get(&shard.id) {
                Some(&index) => index,
                None => self.add_slot(shard, now),
            };
            route.push(index);
        }
        let mut orphans: Vec<(Vec<Pending>, Requeue)> = Vec::new();
        let mut fresh: Vec<Pending> = Vec::new();
        for slot in self.slots.iter_mut().flatten() {
            if !slot.open || map.get(&slot.id).is_some() {
                continue;
            }
            slot.open = false;
            let (ready, backoff) = slot.take_queued();
            for (mut record, waits) in
                ready.into_iter().map(|r| (r, false)).chain(backoff.into_iter().map(|r| (r, true)))
            {
                let requeue = Requeue {
                    attempts: record.attempts,
                    last_error: record.last_error.take(),
                    retry_at: waits.then_some(record.retry_at),
                    failed_at: record.failed_at,
                    may_be_stored: record.may_be_stored,
                };
                orphans.push((record.take_users(), requeue));
            }
            fresh.extend(slot.aggregator.take_users());
        }
        self.map = map;
        self.route = route;
        for (users, requeue) in orphans {
            self.reroute(users, requeue);
        }
        if !fresh.is_empty() {
            // Not yet sent: ready at once, at their place by take-in order.
            let requeue =
                Requeue { attempts: 0, last_error: None, retry_at: None, failed_at: None, may_be_stored: false };
            self.reroute(fresh, requeue);
        }
    }

    /// Decides the parked aggregates that a shard-map read started after them can judge.
    fn judge_parked(&mut self, ordinal: u64) {
        let parked = std::mem::take(&mut self.parked);
        for entry in parked {
            if entry.refreshes_started >= ordinal {
                self.parked.push(entry);
                continue;
            }
            let Parked { record, placement, .. } = entry;
            let owns_all = self
                .map
                .get(&placement.shard_id)
                .is_some_and(|actual| record.users().iter().all(|u| actual.range.contains(u.hash_key)));
            if owns_all {
                self.deliver(record, &placement);
            } else {
                self.resend_wrong_shard(record);
            }
        }
    }

    /// A parked aggregate whose TTL passed before a map could judge it fails its records with
    /// [`ProduceError::Expired`], saying they may be stored: they are in the stream, but on a
    /// shard that may not own their keys, where a consumer filtering by hash range (every KCL)
    /// drops them. Reporting them delivered could be a lie; re-sending them past their TTL
    /// would break it.
    fn expire_parked(&mut self, now: Instant) {
        if self.parked.iter().all(|p| p.record.expires > now) {
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        for entry in parked {
            if entry.record.expires > now {
                self.parked.push(entry);
                continue;
            }
            let mut record = entry.record;
            tracing::debug!(
                stream = %self.stream,
                shard = %entry.placement.shard_id,
                users = record.users().len(),
                "an aggregate stored on a shard the producer's map does not know expired before a map could judge it"
            );
            let error = ProduceError::Expired {
                attempts: record.attempts,
                last_error: record.last_error.take(),
                may_be_stored: true,
            };
            let users = record.take_users();
            self.fail_users(record.slot, users, &error);
        }
    }

    fn add_slot(&mut self, shard: &MapShard, now: Instant) -> usize {
        let slot = Slot::new(
            shard.id.clone(),
            shard.parents.clone(),
            Limiter::new(self.s.rate_limit, self.s.adaptive, now),
            ShardMetrics::new(self.stream.name(), shard.id.as_str()),
            self.s.ordering != RecordOrder::Unordered,
        );
        let index = match self.free_slots.pop() {
            Some(index) => {
                if let Some(entry) = self.slots.get_mut(index) {
                    *entry = Some(slot);
                }
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.slot_of.insert(shard.id.clone(), index);
        index
    }

    /// Forgets closed shards with nothing left in flight.
    fn collect_idle_slots(&mut self) {
        if !self.parked.is_empty() {
            return;
        }
        for index in 0..self.slots.len() {
            let Some(entry) = self.slots.get_mut(index) else { continue };
            if entry.as_ref().is_some_and(|slot| !slot.open && slot.is_idle())
                && let Some(slot) = entry.take()
            {
                self.slot_of.remove(&slot.id);
                self.free_slots.push(index);
            }
        }
    }

    // ----- 4. finishing records -----------------------------------------------------------

    fn fail_users(&mut self, slot: usize, users: Vec<Pending>, error: &ProduceError) {
        if users.is_empty() {
            return;
        }
        let n = users.len() as u64;
        if let Some(Some(slot)) = self.slots.get(slot) {
            if matches!(error, ProduceError::Expired { .. }) {
                slot.metrics.user_record_expired.increment(n);
            }
            slot.metrics.retries_per_record.record_many(f64::from(error.attempts().saturating_sub(1)), users.len());
        }
        let counters = &self.shared.counters;
        Counters::add(&counters.failed, n);
        if matches!(error, ProduceError::Expired { .. }) {
            Counters::add(&counters.expired, n);
        }
        for user in users {
            self.finish(user, Err(error.clone()));
        }
    }

    /// Keeps the emptied user list of a delivered aggregate for a coming one: its shard's
    /// aggregator takes it if it has none, else a small pool keeps it for any shard.
    fn recycle(&mut self, index: usize, list: Vec<Pending>) {
        let list = match self.slots.get_mut(index) {
            Some(Some(slot)) => slot.aggregator.recycle(list),
            _ => Some(list),
        };
        if let Some(list) = list {
            let bytes = list.capacity() * std::mem::size_of::<Pending>();
            if bytes > 0 && self.list_pool_bytes + bytes <= LIST_POOL_BYTES {
                self.list_pool_bytes += bytes;
                self.list_pool.push(list);
            }
        }
    }

    /// Resolves one user record and gives its buffer space back.
    fn finish(&mut self, user: Pending, outcome: Result<RecordMetadata, ProduceError>) {
        self.account_finished(&user);
        user.complete(outcome);
    }

    /// Bookkeeping of a finished record: its buffer space, the outstanding count, its epoch.
    fn account_finished(&mut self, user: &Pending) {
        self.release += user.charge as usize;
        self.outstanding = self.outstanding.saturating_sub(1);
        self.finish_in_epoch(user.epoch, 1);
    }

    /// `count` records of flush epoch `epoch` finished: epochs with none left are done.
    fn finish_in_epoch(&mut self, epoch: u64, count: usize) {
        if let Some(entry) = self.epochs.iter_mut().find(|(e, _)| *e == epoch) {
            entry.1 = entry.1.saturating_sub(count);
        }
        while self.epochs.front().is_some_and(|(_, count)| *count == 0) {
            self.epochs.pop_front();
        }
    }

    /// End of a turn: buffer space back to senders, answers to `flush` callers.
    fn settle(&mut self) {
        self.shared.release(std::mem::take(&mut self.release));
        if !self.flush_waiters.is_empty() {
            let waiters = std::mem::take(&mut self.flush_waiters);
            for (upto, done) in waiters {
                if self.epochs.iter().any(|(epoch, count)| *epoch <= upto && *count > 0) {
                    self.flush_waiters.push((upto, done));
                } else {
                    let _ = done.send(());
                }
            }
        }
        self.metrics.user_records_pending.set(self.outstanding as f64);
    }

    /// The next time something is due, if anything is.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        for slot in self.slots.iter().flatten() {
            if let Some(oldest) = slot.aggregator.oldest_arrival() {
                consider(after(oldest, self.s.max_buffered_time));
                consider(after(oldest, self.s.ttl));
            }
            if let Some(front) = slot.ready.front() {
                consider(front.deadline);
                if let Some(t) = slot.limiter_wait {
                    consider(t);
                }
            }
            if let Some(t) = slot.next_retry {
                consider(t);
            }
            if let Some(t) = slot.next_expiry {
                consider(t);
            }
        }
        if self.refresh.is_none() {
            consider(self.refresh_at);
        }
        for parked in &self.parked {
            consider(parked.record.expires);
        }
        wake
    }
}

/// Closes the producer when the pipeline task ends, whatever ends it — a panic included — and
/// fails the records still in the inbox with [`ProduceError::Aborted`], each handed back: no
/// future waits forever, and `send` fails at once with `SendError::Closed` instead of waiting for
/// buffer space nobody will free. (The records the pipeline held are failed the same way as its
/// state is dropped.)
struct Stopped {
    shared: Arc<Shared>,
    /// Whether the pipeline finished its work (else it panicked, or its runtime dropped it).
    finished: bool,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.shared.close();
        let stranded = std::mem::take(&mut self.shared.lock_inbox().records);
        if !self.finished {
            tracing::error!(
                inbox = stranded.len(),
                "the producer's task stopped before its work was done (a panic, or its runtime shut down); every \
                 record it had not finished fails with Aborted"
            );
        }
        drop(stranded);
    }
}

async fn join_refresh<T>(refresh: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match refresh {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}
