//! The leases a worker holds, and their renewal.
//!
//! Each held lease is a [`HeldLease`]: the worker's latest view of the lease item, guarded by an
//! async mutex so that renewals, checkpoints and the final release are written one at a time
//! with the counter the previous write returned (a renewal never races a checkpoint of the same
//! worker into a spurious conflict).
//!
//! The [`LeaseRenewer`] renews every held lease each `renewal_interval` (default
//! `lease_duration / 3`), recording the lease's throughput (an EMA with α = 0.5 of the KB/s
//! delivered to the processor, as the Java KCL's `LeaseStatsRecorder`).
//!
//! # Local expiry
//!
//! A held lease is valid on this worker's clock until `lease_duration` after the *sending* of its
//! last write known to have landed (renewal, checkpoint). Other workers judge it expired only a
//! lease duration after they *saw* that write's counter, which is later, so a worker always stops
//! before another may start. The shard task watches the expiry instant itself
//! ([`HeldLease::watch_expiry`]): once it passes, the lease is lost and the shard stops at once,
//! whether or not a store call is still outstanding — a store that hangs cannot keep a worker
//! processing a shard that was given away. While the worker leads, every lease is also bounded by
//! the leader fence ([`Fencing`]).
//!
//! # Outcomes of a write
//!
//! * success — the lease's local expiry moves to `lease_duration` after the request was sent;
//! * `LeaseLost` whose item [`shows_write`](Lease::shows_write) an earlier write of this worker
//!   whose reply was lost (a timeout, an unavailable store) — that write landed: the item is
//!   adopted (its send time counts as a renewal) and the write goes on from it;
//! * `LeaseLost` whose item shows `checkpoint_owner == me` and another owner — the leader started
//!   a graceful handoff: adopt the item (so later writes expect the handoff), keep renewing, and
//!   ask the shard to stop gracefully (its processor checkpoints, then the lease is assigned to
//!   the next owner);
//! * `LeaseLost` otherwise — the lease is gone: its `lost` token is cancelled **while the view
//!   mutex is still held**, so no checkpoint of this worker can be written after the loss was
//!   seen, and the shard task drops whatever the processor was doing;
//! * any other error — the write's outcome is unknown: its token is kept so that a later write
//!   can recognise it, and the lease is kept until its local expiry.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kinesis_core::ShardId;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::lease::{Lease, WriteToken};
use crate::store::{LeaseStore, StoreError};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes with unknown outcomes kept per lease (a processor retrying checkpoints against a failing
/// store cannot grow the list without bound; an entry dropped only costs the lease).
const MAX_UNANSWERED: usize = 16;

/// What a renewal did.
#[derive(Debug)]
pub(crate) enum RenewOutcome {
    /// Renewed.
    Renewed,
    /// Renewed, and a graceful handoff to this worker is in progress.
    Handoff,
    /// The lease is no longer this worker's.
    Lost,
    /// The store failed; the lease is still held on this worker's clock.
    Failed(StoreError),
    /// The lease was released or lost before; nothing to do.
    Gone,
}

/// Why a write through a held lease failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The lease is lost (now or before).
    Lost,
    /// The lease was released by this worker.
    Released,
    /// The store failed transiently or otherwise.
    Store(StoreError),
}

/// The kinds of write a held lease makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    Renew,
    Update,
    Release,
}

/// A write sent from the current view whose reply never came.
#[derive(Debug)]
struct Unanswered {
    token: WriteToken,
    counter_after: u64,
    sent_at: Instant,
    kind: WriteKind,
}

/// The lease as this worker last wrote or read it, and its writes of unknown outcome.
#[derive(Debug)]
struct View {
    lease: Lease,
    unanswered: Vec<Unanswered>,
}

impl View {
    /// The earlier write of this view that `current` proves landed, if any.
    fn proven(&self, current: &Lease) -> Option<(Instant, WriteKind)> {
        self.unanswered.iter().find(|w| current.shows_write(&w.token, w.counter_after)).map(|w| (w.sent_at, w.kind))
    }

    fn adopt(&mut self, lease: Lease) {
        self.lease = lease;
        self.unanswered.clear();
    }

    fn remember(&mut self, token: WriteToken, sent_at: Instant, kind: WriteKind) {
        if self.unanswered.len() == MAX_UNANSWERED {
            self.unanswered.remove(0);
        }
        let counter_after = self.lease.lease_counter + 1;
        self.unanswered.push(Unanswered { token, counter_after, sent_at, kind });
    }
}

#[derive(Debug)]
struct Status {
    /// When the last write known to have landed was sent (`None` before the first renewal).
    last_renewed: Option<Instant>,
    /// The next owner, while a graceful handoff is in progress.
    handoff_to: Option<String>,
    /// When the graceful stop (handoff or shutdown) was first requested.
    stop_requested_at: Option<Instant>,
    /// Released (evicted or transferred) by this worker.
    released: bool,
    /// Throughput bookkeeping.
    throughput_kbps: Option<f64>,
    bytes_at_last_sample: u64,
    last_sample_at: Instant,
    /// The checkpoint as last written or read (for lock-free reads).
    checkpoint: kinesis_core::ExtendedSequenceNumber,
    /// The counter as last written or read (for lock-free reads).
    counter: u64,
    /// The tokens of this worker's writes the item may show now: the last one that landed, and
    /// those whose outcome is unknown (for the fence's quarantine).
    tokens: Vec<WriteToken>,
    /// The throughput the last renewal that landed wrote on the item.
    reported_kbps: Option<f64>,
    /// Whether a renewal after the first (the take-up) reported a throughput.
    reported_since_taken: bool,
}

/// The leader fence of one worker, and the leases it quarantined.
///
/// While the worker leads, every lease it holds is valid at most until `leader_lock_duration`
/// after the sending of its last successful lock heartbeat (the fence deadline): a contender takes
/// the lock only after watching the same version that long, so once it has, this worker has
/// stopped all its shards, and the new leader may reassign them at once instead of waiting for
/// their counters to go stale. When the deadline passes, every held lease is lost and quarantined:
/// discovery does not take it up again until somebody else has written it (its counter moved
/// beyond what this worker's own writes can have left), so the new leader's reassignment never
/// races this worker's re-take.
#[derive(Debug)]
pub(crate) struct Fencing {
    deadline: watch::Sender<Option<Instant>>,
    /// In heartbeat mode: a lease duration after the sending of the worker's last heartbeat that
    /// landed (`None` before the first one, and after the heartbeat fence fired).
    heartbeat: watch::Sender<Option<Instant>>,
    quarantined: Mutex<HashMap<String, Quarantine>>,
    /// How long a lease quarantined by the leader fence stays so when nobody writes it: for
    /// ever in per-lease mode (its counter then goes stale and the leader reassigns it); in
    /// heartbeat mode, where nothing renews a lease, a bounded time — long enough for the new
    /// leader, which took the lock at least a lock duration after this worker's last heartbeat
    /// of it, to have made its first pass — after which the worker takes the lease up again
    /// with a write that bumps the counter.
    quarantine_limit: Option<Duration>,
}

/// A lease this worker dropped at its fence, and how to tell whether anyone else wrote it since.
#[derive(Debug)]
struct Quarantine {
    /// The tokens this worker's writes may have left on the item.
    tokens: Vec<WriteToken>,
    /// For an item without a token (written by the Java KCL): the highest counter this worker's
    /// own writes may have left (one write may still be in flight).
    counter_limit: u64,
    /// When the fence quarantined it.
    since: Instant,
}

impl Default for Fencing {
    fn default() -> Self {
        Fencing::new(None)
    }
}

impl Fencing {
    /// A fence without deadlines; `quarantine_limit` as the field says.
    pub fn new(quarantine_limit: Option<Duration>) -> Self {
        Fencing {
            deadline: watch::Sender::new(None),
            heartbeat: watch::Sender::new(None),
            quarantined: Mutex::new(HashMap::new()),
            quarantine_limit,
        }
    }

    /// Sets (or clears) the fence deadline.
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        self.deadline.send_replace(deadline);
    }

    /// The current fence deadline.
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.borrow()
    }

    /// Whether the fence deadline has passed (the fence fires, or is about to).
    pub fn has_passed(&self) -> bool {
        self.deadline().is_some_and(|at| Instant::now() >= at)
    }

    /// Moves the heartbeat fence (heartbeat mode): every held lease ends at `deadline` unless a
    /// later heartbeat lands.
    pub fn set_heartbeat_deadline(&self, deadline: Option<Instant>) {
        self.heartbeat.send_replace(deadline);
    }

    /// The heartbeat fence, if a heartbeat has landed and the fence has not fired since.
    pub fn heartbeat_deadline(&self) -> Option<Instant> {
        *self.heartbeat.borrow()
    }

    /// A heartbeat landed after the fence's deadline had passed: the fence fires now if it has
    /// not yet (so no lease outlives a lapse because the heartbeat's reply came first), then the
    /// caller sets the new deadline.
    pub fn lapse_if_passed(&self, registry: &LeaseRegistry) {
        if self.heartbeat_deadline().is_some_and(|at| Instant::now() >= at) {
            self.lapse(registry);
        }
    }

    /// Whether the worker's heartbeat is current: one landed less than a lease duration ago (as
    /// sent). Heartbeat mode only; a worker takes up no lease while it is not.
    pub fn heartbeat_is_current(&self) -> bool {
        self.heartbeat_deadline().is_some_and(|at| Instant::now() < at)
    }

    /// The heartbeat fence fires: every lease in `registry` is lost (not quarantined: the
    /// leader reassigns them only after judging the worker dead, and a re-take after a recovery
    /// is a conditional write that bumps the counter, so it cannot race that reassignment).
    fn lapse(&self, registry: &LeaseRegistry) {
        for lease in registry.all() {
            lease.mark_lost("the worker's heartbeat has not landed for a lease duration");
        }
        self.set_heartbeat_deadline(None);
    }

    /// Fires the fence: every lease in `registry` is lost and quarantined; the deadline clears.
    pub fn fire(&self, registry: &LeaseRegistry, why: &str) {
        for lease in registry.all() {
            self.quarantine(&lease);
            lease.mark_lost(why);
        }
        self.set_deadline(None);
    }

    /// Keeps discovery off `lease` until someone else writes it (per-lease mode).
    fn quarantine(&self, lease: &HeldLease) {
        let (tokens, counter) = {
            let status = lock(&lease.status);
            (status.tokens.clone(), status.counter)
        };
        let quarantine = Quarantine { tokens, counter_limit: counter + 1, since: Instant::now() };
        lock(&self.quarantined).insert(lease.key.clone(), quarantine);
    }

    /// Whether discovery must leave `lease` alone: it was quarantined by the fence and nobody else
    /// has written it since (the item still shows one of this worker's tokens, or — written by a
    /// client without tokens — a counter this worker's own writes can have left). Forgets
    /// quarantines that no longer apply.
    pub fn is_quarantined(&self, lease: &Lease, me: &str) -> bool {
        let mut quarantined = lock(&self.quarantined);
        let Some(quarantine) = quarantined.get(&lease.lease_key) else { return false };
        let timed_out = self.quarantine_limit.is_some_and(|limit| Instant::now() >= quarantine.since + limit);
        let untouched = !timed_out
            && match &lease.last_write {
                Some(token) => quarantine.tokens.contains(token),
                None => lease.lease_counter <= quarantine.counter_limit,
            };
        if lease.is_owned_by(me) && untouched {
            return true;
        }
        quarantined.remove(&lease.lease_key);
        false
    }

    /// Waits for the deadlines and fires the fences on `registry`; runs until cancelled.
    pub async fn run(&self, registry: &LeaseRegistry) {
        let mut leader = self.deadline.subscribe();
        let mut heartbeat = self.heartbeat.subscribe();
        loop {
            let leader_at = *leader.borrow_and_update();
            let heartbeat_at = *heartbeat.borrow_and_update();
            let now = Instant::now();
            if leader_at.is_some_and(|at| now >= at) {
                self.fire(registry, "the leader lock was not heartbeated for its lease duration");
                continue;
            }
            if heartbeat_at.is_some_and(|at| now >= at) {
                self.lapse(registry);
                continue;
            }
            let next = leader_at.into_iter().chain(heartbeat_at).min();
            tokio::select! {
                () = async { match next { Some(at) => sleep_until(at).await, None => std::future::pending().await } } => {}
                changed = leader.changed() => if changed.is_err() { return },
                changed = heartbeat.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// A lease this worker holds.
#[derive(Debug)]
pub(crate) struct HeldLease {
    /// The lease key.
    pub key: String,
    /// The shard.
    pub shard_id: ShardId,
    worker_id: Arc<str>,
    lease_duration: Duration,
    /// Heartbeat mode: the lease lives as long as the worker's heartbeat, not its own writes.
    heartbeat_bound: bool,
    view: tokio::sync::Mutex<View>,
    status: Mutex<Status>,
    fencing: Arc<Fencing>,
    /// User-data bytes delivered to the processor (for the throughput sample).
    pub bytes_delivered: AtomicU64,
    /// Cancelled when the lease is lost (or the worker is killed): stop at once.
    pub lost: CancellationToken,
    /// Cancelled when the shard should stop gracefully (handoff, or worker shutdown).
    pub stop: CancellationToken,
}

/// The tokens and settings a held lease shares with its worker.
pub(crate) struct HeldLeaseContext<'a> {
    pub worker_id: Arc<str>,
    pub lease_duration: Duration,
    /// Heartbeat mode (see [`HeldLease::local_expiry`]).
    pub heartbeat_bound: bool,
    pub abort: &'a CancellationToken,
    pub shutdown: &'a CancellationToken,
    pub fencing: Arc<Fencing>,
}

impl HeldLease {
    /// Wraps a lease read from the store, for `shard_id` (the shard its key names).
    pub fn new(lease: Lease, shard_id: ShardId, worker: HeldLeaseContext<'_>) -> Self {
        let now = Instant::now();
        let lease_duration = worker.lease_duration;
        HeldLease {
            key: lease.lease_key.clone(),
            shard_id,
            worker_id: worker.worker_id,
            lease_duration,
            heartbeat_bound: worker.heartbeat_bound,
            status: Mutex::new(Status {
                // Not renewed yet: the first renewal happens before processing starts.
                last_renewed: None,
                handoff_to: None,
                stop_requested_at: None,
                released: false,
                throughput_kbps: lease.throughput_kbps,
                bytes_at_last_sample: 0,
                last_sample_at: now,
                checkpoint: lease.checkpoint.clone(),
                counter: lease.lease_counter,
                tokens: Vec::new(),
                reported_kbps: lease.throughput_kbps,
                reported_since_taken: false,
            }),
            view: tokio::sync::Mutex::new(View { lease, unanswered: Vec::new() }),
            fencing: worker.fencing,
            bytes_delivered: AtomicU64::new(0),
            lost: worker.abort.child_token(),
            stop: worker.shutdown.child_token(),
        }
    }

    /// The latest view of the lease.
    pub async fn snapshot(&self) -> Lease {
        self.view.lock().await.lease.clone()
    }

    /// The checkpoint as last written or read.
    pub fn checkpoint(&self) -> kinesis_core::ExtendedSequenceNumber {
        lock(&self.status).checkpoint.clone()
    }

    /// Whether the lease is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The instant this worker stops holding the lease unless a write (per-lease mode) or a
    /// heartbeat (heartbeat mode) lands before: a lease duration after its last landed write was
    /// sent — or after the worker's last landed heartbeat was sent — and no later than the leader
    /// fence. `None` before the first renewal in per-lease mode (the lease is not held yet).
    pub fn local_expiry(&self) -> Option<Instant> {
        let own = self.own_expiry()?;
        Some(match self.fencing.deadline() {
            Some(fence) => own.min(fence),
            None => own,
        })
    }

    /// The lease's own bound, without the leader fence.
    fn own_expiry(&self) -> Option<Instant> {
        if self.heartbeat_bound {
            // No current heartbeat: the lease is not held.
            Some(self.fencing.heartbeat_deadline().unwrap_or_else(Instant::now))
        } else {
            Some(lock(&self.status).last_renewed? + self.lease_duration)
        }
    }

    /// Whether the lease is lost, marking it lost first when its local expiry has passed (and
    /// quarantining it when the leader fence is what ended it, as the fence itself does).
    pub fn expire_if_due(&self) -> bool {
        if self.is_lost() {
            return true;
        }
        let now = Instant::now();
        let Some(own) = self.own_expiry() else { return false };
        if self.fencing.has_passed() {
            self.fencing.quarantine(self);
            self.mark_lost("the leader lock was not heartbeated for its lease duration");
        } else if now >= own && self.heartbeat_bound {
            self.mark_lost("the worker's heartbeat has not landed for a lease duration");
        } else if now >= own {
            self.mark_lost("not renewed for a lease duration on this worker's clock");
        }
        self.is_lost()
    }

    /// The lease's throughput as last sampled, KB/s.
    pub fn throughput_kbps(&self) -> Option<f64> {
        lock(&self.status).throughput_kbps
    }

    /// Heartbeat mode: samples the throughput and says whether a renewal should report it — it
    /// moved by more than `threshold` of the last reported value (and by more than 1 KB/s), and
    /// no write of the lease landed for `min_interval` or none was reported since this worker
    /// took the lease.
    pub fn throughput_report_due(&self, min_interval: Duration, threshold: f64) -> bool {
        let now = Instant::now();
        let Some(kbps) = self.throughput_sample(now) else { return false };
        let status = lock(&self.status);
        let quiet = !status.reported_since_taken
            || status.last_renewed.is_none_or(|at| now.saturating_duration_since(at) >= min_interval);
        let reported = status.reported_kbps.unwrap_or(0.0);
        quiet && (kbps - reported).abs() > (reported.abs() * threshold).max(1.0)
    }

    /// Marks the lease lost once its local expiry passes (see the module docs); never returns.
    pub async fn watch_expiry(&self) {
        let mut fence = self.fencing.deadline.subscribe();
        let mut heartbeat = self.fencing.heartbeat.subscribe();
        loop {
            if self.is_lost() || lock(&self.status).released {
                return std::future::pending().await;
            }
            if self.expire_if_due() {
                continue;
            }
            let Some(at) = self.local_expiry() else {
                // Not renewed yet: nothing to watch until it is.
                return std::future::pending().await;
            };
            tokio::select! {
                () = sleep_until(at) => {}
                changed = fence.changed() => if changed.is_err() { sleep_until(at).await },
                changed = heartbeat.changed(), if self.heartbeat_bound => if changed.is_err() { sleep_until(at).await },
            }
        }
    }

    /// The next owner while a graceful handoff is in progress.
    pub fn handoff_to(&self) -> Option<String> {
        lock(&self.status).handoff_to.clone()
    }

    /// When the graceful stop was requested (handoff or shutdown), if it was.
    pub fn stop_requested_at(&self) -> Option<Instant> {
        let mut status = lock(&self.status);
        if status.stop_requested_at.is_none() && self.stop.is_cancelled() {
            status.stop_requested_at = Some(Instant::now());
        }
        status.stop_requested_at
    }

    /// Marks the lease lost and stops the shard at once. Writes check the token under the view
    /// mutex, so a loss seen by a write stops every later write.
    pub fn mark_lost(&self, why: &str) {
        if !self.lost.is_cancelled() {
            tracing::warn!(lease = %self.key, why, "lease lost; stopping the shard");
            self.lost.cancel();
        }
    }

    fn is_me(&self, owner: Option<&str>) -> bool {
        owner == Some(&*self.worker_id)
    }

    /// Whether an item shows a graceful handoff away from this worker.
    fn shows_handoff(&self, current: &Lease) -> bool {
        self.is_me(current.checkpoint_owner.as_deref()) && !self.is_me(current.lease_owner.as_deref())
    }

    /// Asks the shard to stop gracefully for a handoff shown by `lease` (once).
    fn enter_handoff(&self, lease: &Lease) {
        let next = lease.lease_owner.clone().unwrap_or_default();
        {
            let mut status = lock(&self.status);
            if status.handoff_to.is_some() {
                return;
            }
            status.handoff_to = Some(next.clone());
            status.stop_requested_at.get_or_insert_with(Instant::now);
        }
        tracing::info!(lease = %self.key, next_owner = %next, "graceful handoff requested by the leader");
        self.stop.cancel();
    }

    fn throughput_sample(&self, now: Instant) -> Option<f64> {
        let mut status = lock(&self.status);
        let bytes = self.bytes_delivered.load(Ordering::Relaxed);
        let elapsed = now.saturating_duration_since(status.last_sample_at).as_secs_f64();
        if elapsed >= 0.1 {
            let kbps = (bytes.saturating_sub(status.bytes_at_last_sample)) as f64 / 1024.0 / elapsed;
            status.throughput_kbps = Some(match status.throughput_kbps {
                Some(prev) => 0.5 * kbps + 0.5 * prev,
                None => kbps,
            });
            status.bytes_at_last_sample = bytes;
            status.last_sample_at = now;
        }
        status.throughput_kbps
    }

    /// Adopts `lease` as the view. `landed`: the sending time of this worker's write that is known
    /// to have left the item so (it moves the local expiry); `None` for an item read back from a
    /// refused write. Enters a handoff the item shows.
    fn adopt(&self, view: &mut View, lease: Lease, landed: Option<Instant>) {
        {
            let mut status = lock(&self.status);
            if let Some(sent_at) = landed {
                status.last_renewed = Some(status.last_renewed.map_or(sent_at, |last| last.max(sent_at)));
            }
            status.checkpoint = lease.checkpoint.clone();
            status.counter = lease.lease_counter;
            status.tokens.clear();
            if landed.is_some() {
                status.tokens.extend(lease.last_write.clone());
            }
        }
        if self.shows_handoff(&lease) {
            self.enter_handoff(&lease);
        }
        view.adopt(lease);
    }

    /// Sends one kind of write from the view, with the recovery rules of the module docs.
    /// `attempt` makes the store call from the view and a fresh token (`None`: nothing to write);
    /// `done` says whether an item adopted from a proven earlier write of the given kind already
    /// is what this write wants (then it is not sent again).
    async fn send<Fut>(
        &self,
        view: &mut View,
        kind: WriteKind,
        mut attempt: impl FnMut(&Lease, WriteToken) -> Option<Fut>,
        done: impl Fn(&Lease, WriteKind) -> bool,
    ) -> Result<Option<Lease>, WriteError>
    where
        Fut: Future<Output = Result<Lease, StoreError>>,
    {
        // A proven earlier write and a handoff may each be adopted once before the write itself.
        for _ in 0..3 {
            let token = WriteToken::new();
            let sent_at = Instant::now();
            let Some(call) = attempt(&view.lease, token.clone()) else { return Ok(None) };
            match call.await {
                Ok(lease) => {
                    self.adopt(view, lease.clone(), Some(sent_at));
                    return Ok(Some(lease));
                }
                Err(StoreError::LeaseLost { current: Some(current) }) => {
                    let current = *current;
                    if let Some((earlier, earlier_kind)) = view.proven(&current) {
                        tracing::debug!(lease = %self.key, ?earlier_kind, "an earlier write whose reply was lost had landed");
                        self.adopt(view, current.clone(), Some(earlier));
                        if done(&current, earlier_kind) {
                            return Ok(Some(current));
                        }
                    } else if self.shows_handoff(&current) {
                        self.adopt(view, current, None);
                    } else {
                        self.mark_lost("a write was refused: the lease changed");
                        return Err(WriteError::Lost);
                    }
                }
                Err(StoreError::LeaseLost { current: None }) => {
                    self.mark_lost("a write was refused: the lease is gone");
                    return Err(WriteError::Lost);
                }
                Err(e) => {
                    {
                        let mut status = lock(&self.status);
                        if status.tokens.len() < MAX_UNANSWERED {
                            status.tokens.push(token.clone());
                        }
                    }
                    view.remember(token, sent_at, kind);
                    return Err(WriteError::Store(e));
                }
            }
        }
        self.mark_lost("the lease kept changing under this worker's writes");
        Err(WriteError::Lost)
    }

    /// Renews the lease (see the module docs for the outcomes).
    pub async fn renew(&self, store: &dyn LeaseStore) -> RenewOutcome {
        let mut view = self.view.lock().await;
        if self.is_lost() || lock(&self.status).released {
            return RenewOutcome::Gone;
        }
        if self.expire_if_due() {
            return RenewOutcome::Lost;
        }
        let throughput = self.throughput_sample(Instant::now());
        let result = self
            .send(
                &mut view,
                WriteKind::Renew,
                |lease, token| {
                    let lease = lease.clone();
                    Some(async move { store.renew_lease(&lease, throughput, &token).await })
                },
                // An earlier renewal or checkpoint that landed is a renewal, but an older one:
                // renew again from it.
                |_, _| false,
            )
            .await;
        if result.is_ok() {
            let mut status = lock(&self.status);
            status.reported_since_taken = status.reported_kbps.is_some() || throughput.is_some();
            status.reported_kbps = throughput;
        }
        match result {
            Ok(_) if self.handoff_to().is_some() => RenewOutcome::Handoff,
            Ok(_) => RenewOutcome::Renewed,
            Err(WriteError::Lost) => RenewOutcome::Lost,
            Err(WriteError::Released) => RenewOutcome::Gone,
            Err(WriteError::Store(e)) => RenewOutcome::Failed(e),
        }
    }

    /// Writes a change of the lease (a checkpoint) built from the current view by `build`.
    /// The write requires the counter and owner of the view. One transient failure is retried at
    /// once, so a lost reply to a write that landed is recognised by its token rather than
    /// reported.
    pub async fn write<E>(
        &self,
        store: &dyn LeaseStore,
        mut build: impl FnMut(&Lease) -> Result<Lease, E>,
    ) -> Result<Result<Lease, E>, WriteError> {
        let mut view = self.view.lock().await;
        if self.is_lost() || self.expire_if_due() {
            return Err(WriteError::Lost);
        }
        if lock(&self.status).released {
            return Err(WriteError::Released);
        }
        let mut invalid = None;
        let wanted: Mutex<Option<Lease>> = Mutex::new(None);
        let mut outcome = Err(WriteError::Lost);
        for _ in 0..2 {
            outcome = self
                .send(
                    &mut view,
                    WriteKind::Update,
                    |lease, token| match build(lease) {
                        Ok(updated) => {
                            *lock(&wanted) = Some(updated.clone());
                            Some(async move { store.update_lease(&updated, &token).await })
                        }
                        Err(e) => {
                            invalid = Some(e);
                            None
                        }
                    },
                    |current, kind| {
                        kind == WriteKind::Update && lock(&wanted).as_ref().is_some_and(|w| same_progress(w, current))
                    },
                )
                .await;
            if let Some(e) = invalid.take() {
                return Ok(Err(e));
            }
            match &outcome {
                Err(WriteError::Store(e)) if e.is_retryable() => continue,
                _ => break,
            }
        }
        match outcome {
            Ok(Some(lease)) => Ok(Ok(lease)),
            Ok(None) => Err(WriteError::Lost),
            Err(e) => Err(e),
        }
    }

    /// Changes the local view without writing (child shard ids recorded before the final
    /// checkpoint writes them).
    pub async fn edit_view(&self, edit: impl FnOnce(&mut Lease)) {
        edit(&mut self.view.lock().await.lease);
    }

    /// Lets go of the lease: assigns it to the next owner during a handoff, else evicts it (the
    /// leader assigns it again at its next pass). Afterwards nothing more is written.
    pub async fn release(&self, store: &dyn LeaseStore) -> Result<(), WriteError> {
        let mut view = self.view.lock().await;
        if self.is_lost() {
            return Err(WriteError::Lost);
        }
        if lock(&self.status).released {
            return Ok(());
        }
        let me = self.worker_id.clone();
        let result = self
            .send(
                &mut view,
                WriteKind::Release,
                |lease, token| {
                    let handing_to = match lease.checkpoint_owner.as_deref() {
                        Some(cpo) if cpo == &*me => lease.lease_owner.clone(),
                        _ => None,
                    };
                    let lease = lease.clone();
                    Some(async move {
                        match handing_to {
                            Some(next) => store.assign_lease(&lease, &next, &token).await,
                            None => store.evict_lease(&lease, &token).await,
                        }
                    })
                },
                |_, kind| kind == WriteKind::Release,
            )
            .await;
        match result {
            Ok(_) => {
                lock(&self.status).released = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether `current` already holds the progress `wanted` writes (checkpoint, pending checkpoint
/// and its state, children).
fn same_progress(wanted: &Lease, current: &Lease) -> bool {
    wanted.checkpoint == current.checkpoint
        && wanted.pending_checkpoint == current.pending_checkpoint
        && wanted.pending_checkpoint_state == current.pending_checkpoint_state
        && wanted.child_shard_ids == current.child_shard_ids
}

/// The leases a worker holds, by key.
#[derive(Debug, Default)]
pub(crate) struct LeaseRegistry {
    leases: Mutex<BTreeMap<String, Arc<HeldLease>>>,
}

impl LeaseRegistry {
    pub fn contains(&self, key: &str) -> bool {
        lock(&self.leases).contains_key(key)
    }

    pub fn insert(&self, lease: Arc<HeldLease>) {
        lock(&self.leases).insert(lease.key.clone(), lease);
    }

    pub fn remove(&self, key: &str) {
        lock(&self.leases).remove(key);
    }

    pub fn all(&self) -> Vec<Arc<HeldLease>> {
        lock(&self.leases).values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.leases).len()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.leases).is_empty()
    }
}

/// Renews every held lease on a fixed period until `stop` resolves — in heartbeat mode only the
/// leases whose throughput changed enough to report ([`HeldLease::throughput_report_due`]).
pub(crate) struct LeaseRenewer {
    pub store: Arc<dyn LeaseStore>,
    pub registry: Arc<LeaseRegistry>,
    pub interval: Duration,
    pub metrics: crate::metrics::WorkerMetricHandles,
    /// Heartbeat mode: the least time between two reports of a lease, and the relative change
    /// worth one.
    pub reports_only: Option<(Duration, f64)>,
}

impl LeaseRenewer {
    /// Runs until `until` returns true after a pass, or `abort` is cancelled.
    pub async fn run(self, abort: CancellationToken, until: impl Fn() -> bool) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = abort.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if until() {
                return;
            }
            self.renew_all().await;
        }
    }

    /// One pass over every held lease, concurrently.
    pub async fn renew_all(&self) {
        let mut leases = self.registry.all();
        if let Some((min_interval, threshold)) = self.reports_only {
            leases.retain(|lease| lease.throughput_report_due(min_interval, threshold));
            if leases.is_empty() {
                return;
            }
        }
        let outcomes =
            futures::future::join_all(leases.iter().map(|lease| async { lease.renew(&*self.store).await })).await;
        let mut failed = false;
        for (lease, outcome) in leases.iter().zip(outcomes) {
            match outcome {
                RenewOutcome::Renewed | RenewOutcome::Handoff | RenewOutcome::Gone => {}
                // Counted in `LostLeases` by the shard task, however the loss was noticed.
                RenewOutcome::Lost => failed = true,
                RenewOutcome::Failed(e) => {
                    tracing::warn!(lease = %lease.key, error = %e, "lease renewal failed; retrying next period");
                    failed = true;
                }
            }
        }
        if failed {
            self.metrics.renew_failure.increment(1);
        } else {
            self.metrics.renew_success.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use kinesis_core::ExtendedSequenceNumber;

    use super::*;
    use crate::lease::WriteToken;
    use crate::store::memory::MemoryLeaseStore;

    async fn held(store: &MemoryLeaseStore, worker: &str) -> (HeldLease, CancellationToken) {
        let lease = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon);
        store.create_lease_if_not_exists(&lease).await.expect("create");
        let taken = store.take_lease(&lease, worker, &WriteToken::new()).await.expect("take");
        let abort = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let shard_id = ShardId::from_index(1);
        let worker = HeldLeaseContext {
            worker_id: Arc::from(worker),
            lease_duration: Duration::from_secs(10),
            heartbeat_bound: false,
            abort: &abort,
            shutdown: &shutdown,
            fencing: Arc::new(Fencing::default()),
        };
        (HeldLease::new(taken, shard_id, worker), abort)
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_bumps_counter_and_records_throughput() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        lease.bytes_delivered.store(20 * 1024, Ordering::Relaxed);
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Renewed));
        let stored = store.get_lease(&lease.key).await.expect("get").expect("exists");
        assert_eq!(stored.lease_counter, 2);
        assert_eq!(stored.throughput_kbps, Some(10.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_lease_is_lost_at_once() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        let current = store.get_lease(&lease.key).await.expect("get").expect("exists");
        store.take_lease(&current, "w2", &WriteToken::new()).await.expect("steal");
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Lost));
        assert!(lease.lost.is_cancelled());
        let write = lease.write(&store, |l| Ok::<_, ()>(l.clone())).await;
        assert!(matches!(write, Err(WriteError::Lost)));
    }

    #[tokio::test(start_paused = true)]
    async fn handoff_is_adopted_and_renewal_continues() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        let current = store.get_lease(&lease.key).await.expect("get").expect("exists");
        store.initiate_handoff(&current, "w2", &WriteToken::new()).await.expect("handoff");
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Handoff));
        assert!(lease.stop.is_cancelled());
        assert!(!lease.lost.is_cancelled());
        assert_eq!(lease.handoff_to().as_deref(), Some("w2"));
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Handoff));
        lease.release(&store).await.expect("transfer");
        let stored = store.get_lease(&lease.key).await.expect("get").expect("exists");
        assert_eq!(stored.lease_owner.as_deref(), Some("w2"));
        assert_eq!(stored.checkpoint_owner, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_reply_to_a_checkpoint_is_recognised_by_its_token() {
        use crate::store::faults::{StoreFaultRule, StoreFaults, StoreOperation, WithFaults};
        let shared = MemoryLeaseStore::new();
        let faults = Arc::new(StoreFaults::new(3));
        let store = WithFaults::new(shared.clone(), faults.clone());
        let (lease, _abort) = held(&shared, "w1").await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Renewed));
        faults.add(StoreFaultRule::on(StoreOperation::UpdateLease).lose_reply().times(1));
        let at = kinesis_core::ExtendedSequenceNumber::at(kinesis_core::SequenceNumber::from_u128(42));
        let written = lease
            .write(&store, |l| {
                let mut next = l.clone();
                next.checkpoint = at.clone();
                Ok::<_, ()>(next)
            })
            .await;
        assert!(matches!(written, Ok(Ok(_))), "the retry recognises the landed write: {written:?}");
        let stored = shared.get_lease(&lease.key).await.expect("get").expect("exists");
        assert_eq!(stored.checkpoint, at);
        assert_eq!(stored.lease_counter, 3, "written once: take, renewal, checkpoint");
        assert!(!lease.is_lost());
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Renewed));
    }

    #[tokio::test(start_paused = true)]
    async fn another_workers_write_is_never_taken_for_our_own() {
        use crate::store::faults::{StoreFaultRule, StoreFaults, StoreOperation, WithFaults};
        let shared = MemoryLeaseStore::new();
        let faults = Arc::new(StoreFaults::new(4));
        let store = WithFaults::new(shared.clone(), faults.clone());
        let (lease, _abort) = held(&shared, "w1").await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Renewed));
        // w1's renewal is throttled: nothing is written.
        faults.add(StoreFaultRule::on(StoreOperation::RenewLease).throttle().times(1));
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Failed(StoreError::Throttled { .. })));
        // The leader gives the lease to w2: counter + 1, exactly what w1's renewal would have left.
        let current = shared.get_lease(&lease.key).await.expect("get").expect("exists");
        let assigned = shared.assign_lease(&current, "w2", &WriteToken::new()).await.expect("assign");
        assert_eq!(assigned.lease_counter, current.lease_counter + 1);
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Lost));
        let write = lease.write(&store, |l| Ok::<_, ()>(l.clone())).await;
        assert!(matches!(write, Err(WriteError::Lost)));
        let stored = shared.get_lease(&lease.key).await.expect("get").expect("exists");
        assert_eq!(stored, assigned, "w1 wrote nothing on w2's lease");
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_fence_bounds_every_held_lease() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Renewed));
        let fence = lease.fencing.clone();
        fence.set_deadline(Some(Instant::now() + Duration::from_secs(3)));
        assert_eq!(lease.local_expiry(), Some(Instant::now() + Duration::from_secs(3)));
        let registry = LeaseRegistry::default();
        let lease = Arc::new(lease);
        registry.insert(lease.clone());
        let watcher = tokio::spawn({
            let fence = fence.clone();
            async move { fence.run(&registry).await }
        });
        tokio::time::sleep(Duration::from_millis(2999)).await;
        assert!(!lease.is_lost());
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(lease.is_lost(), "the fence fired at its deadline");
        let stored = store.get_lease(&lease.key).await.expect("get").expect("exists");
        assert!(fence.is_quarantined(&stored, "w1"), "not taken up again until someone else writes it");
        let moved = store.take_lease(&stored, "w2", &WriteToken::new()).await.expect("take");
        let back = store.assign_lease(&moved, "w1", &WriteToken::new()).await.expect("assign back");
        assert!(!fence.is_quarantined(&back, "w1"));
        watcher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_lease_duration_loses_the_lease() {
        let store = MemoryLeaseStore::new();
        let (lease, _abort) = held(&store, "w1").await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Renewed));
        store.set_unavailable(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Failed(_)));
        assert!(!lease.is_lost());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(lease.renew(&store).await, RenewOutcome::Lost));
        assert!(lease.is_lost());
    }
}
