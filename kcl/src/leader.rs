//! Leader election and the leader's duties (assignment passes, shard sync, lease cleanup).
//!
//! # Election
//!
//! Leadership is the coordinator store's lock item `Leader`, held with a lease of
//! `leader_lock_duration` (8 s) and heartbeated every `leader_heartbeat_interval` (2 s); every
//! heartbeat writes a new record version. A non-leader reads the lock every
//! `leader_check_interval` (2 s) and remembers when it first saw the current version, on its own
//! clock. It takes the lock (conditionally on that version) only after seeing the same version
//! for the lock's full lease duration — no clock agreement between hosts is needed — and looks
//! again exactly when that time is up. An absent or released lock is taken at once. A leader that
//! cannot heartbeat for `lock duration − heartbeat` stops acting as leader before anyone may take
//! over; one whose heartbeat is refused stops at once (a refusal that shows the lock still naming
//! it is its own heartbeat whose reply was lost: it adopts that version). On graceful shutdown the
//! leader releases the lock.
//!
//! # The leader fence
//!
//! While it leads, a worker's every lease ends at the latest `leader_lock_duration` after it
//! sent its last successful heartbeat (the lease renewer's fencing): once that
//! passes, all its shards stop and their leases are quarantined (not taken up again until someone
//! else writes them). A contender takes the lock only after watching one version for the lock's
//! lease duration, so by then the old leader has stopped every shard, and the lock item says it
//! does so ([`LockItem::holder_fences_leases`]): the new leader takes the old leader's leases as
//! expired at its first pass instead of watching their counters for a lease duration. With the
//! defaults a crashed leader's shards move ≤ 10 s after its last heartbeat, plus the new owner's
//! discovery (≤ 2 s). A lock written by a client that does not fence (the Java KCL's) gets no
//! such treatment: its holder's leases expire by their counters.
//!
//! # Expiry (the leader's local view)
//!
//! The leader keeps, per lease, the counter it last saw and the instant (its own tokio clock) it
//! first saw that counter. A lease is expired when it is owned and its counter has not changed
//! for `lease_duration`. Counters only grow, so an observation stays valid across gaps between
//! scans. A leader scans every `lease_assignment_interval` (2.5 s) and additionally at the
//! instant the oldest observation would expire, so an expiry is acted on when it happens, not a
//! whole pass later. An expired lease is taken for its recipient conditionally on the counter
//! that was seen unchanged (`take_lease`), so a renewal that lands meanwhile keeps it where it is.
//!
//! **Standby scans.** A new leader has no observations of the other workers' leases. A contender
//! that sees the lock's version unchanged for two heartbeat periods (the leader looks dead) reads
//! the lease table and the worker metrics on each lock check and records observations without
//! writing, so the leases of a worker that died shortly before the leader expire on time after
//! the takeover. Standby scans happen only while the lock looks stale.
//!
//! # Live workers
//!
//! A worker may receive leases while its metrics row keeps changing: the leader records, per
//! worker, the `last_update_secs` it last saw and when it first saw it; a row unchanged for three
//! metrics periods (or a lease duration, if shorter), or absent, marks the worker dead for
//! assignment. A worker that reports less often (a Java KCL worker writes its row every 30 s) gets
//! two of its own report intervals, as its row's successive timestamps show them (at most
//! 2 minutes each), so a mixed fleet's Java workers receive leases from our leader. A leader of a starting fleet (the lock was free) trusts a row it sees for the first
//! time; after a takeover only rows it saw changing count (the standby scans watched them), since
//! a row may be a dead worker's last report. The leader's own row always counts.
//!
//! A worker that let a lease expire is excluded from receiving leases — a dead worker's load just
//! fell, so it would look least loaded; a worker cut off from the lease table still reports its
//! metrics — until the leader sees it writing a lease it holds (a renewal or checkpoint), or until
//! the exclusion ends: 10 s, doubling while it keeps letting leases expire, up to 5 minutes. The
//! replaced leader is excluded at a takeover too. Rows unchanged for
//! `stale_worker_metrics_cleanup` are deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{Instant, sleep_until};

use crate::assignment::{self, Action, AssignmentInput, LeaseInfo, WorkerInfo};
use crate::context::WorkerContext;
use crate::lease::{Lease, WriteToken};
use crate::lineage;
use crate::shard_sync::{self, GarbageLeases, Synced};
use crate::store::{LockItem, StoreError, WorkerMetrics};
use crate::worker_metrics::{cpu_of, max_cpu_of};

/// The key of the leader lock in the coordinator store.
pub const LEADER_LOCK_KEY: &str = "Leader";

/// Per lease: the counter last seen, when it was first seen (local clock), and its holder then.
#[derive(Debug)]
pub(crate) struct ExpiryTracker {
    lease_duration: Duration,
    seen: HashMap<String, Seen>,
    /// Leases known expired at this counter without waiting (their holder fenced itself).
    fenced: HashMap<String, u64>,
}

#[derive(Debug)]
struct Seen {
    counter: u64,
    since: Instant,
    holder: Option<String>,
}

impl ExpiryTracker {
    pub fn new(lease_duration: Duration) -> Self {
        ExpiryTracker { lease_duration, seen: HashMap::new(), fenced: HashMap::new() }
    }

    /// Records a full scan: new or changed counters restart their clocks; leases no longer
    /// listed are forgotten. Returns the workers seen writing their own leases since the last
    /// observation (a counter moved while the same worker held the lease): they are working.
    pub fn observe_all(&mut self, leases: &[Lease], now: Instant) -> HashSet<String> {
        let keys: HashSet<&str> = leases.iter().map(|l| l.lease_key.as_str()).collect();
        self.seen.retain(|k, _| keys.contains(k.as_str()));
        self.fenced.retain(|k, _| keys.contains(k.as_str()));
        leases.iter().filter_map(|lease| self.observe(lease, now)).collect()
    }

    /// Records one observation of a lease (also of one this leader just wrote); returns its
    /// holder when the holder moved the counter itself.
    pub fn observe(&mut self, lease: &Lease, now: Instant) -> Option<String> {
        let holder = lease.holder().map(str::to_owned);
        if self.fenced.get(&lease.lease_key).is_some_and(|c| *c != lease.lease_counter) {
            self.fenced.remove(&lease.lease_key);
        }
        match self.seen.get_mut(&lease.lease_key) {
            Some(seen) if seen.counter == lease.lease_counter => None,
            Some(seen) => {
                let renewed_by = (seen.holder.is_some() && seen.holder == holder).then(|| holder.clone()).flatten();
                *seen = Seen { counter: lease.lease_counter, since: now, holder };
                renewed_by
            }
            None => {
                self.seen.insert(lease.lease_key.clone(), Seen { counter: lease.lease_counter, since: now, holder });
                None
            }
        }
    }

    /// Takes `lease` as expired now, for as long as its counter stays what it is: its holder
    /// has fenced itself (see [`Fencing`](crate::lease_renewer::Fencing)).
    pub fn expire_fenced(&mut self, lease: &Lease) {
        self.fenced.insert(lease.lease_key.clone(), lease.lease_counter);
    }

    /// Whether the lease is owned and its counter was seen unchanged for a lease duration (or
    /// its holder fenced itself at this counter).
    pub fn is_expired(&self, lease: &Lease, now: Instant) -> bool {
        lease.lease_owner.is_some()
            && (self.fenced.get(&lease.lease_key) == Some(&lease.lease_counter)
                || self.seen.get(&lease.lease_key).is_some_and(|seen| {
                    seen.counter == lease.lease_counter
                        && now.saturating_duration_since(seen.since) >= self.lease_duration
                }))
    }

    /// The earliest instant at which one of these owned leases would expire, if not yet expired.
    pub fn next_expiry(&self, leases: &[Lease], now: Instant) -> Option<Instant> {
        leases
            .iter()
            .filter(|l| l.lease_owner.is_some() && !l.is_finished())
            .filter_map(|l| self.seen.get(&l.lease_key))
            .map(|seen| seen.since + self.lease_duration)
            .filter(|at| *at > now)
            .min()
    }
}

/// How long a worker that let a lease expire receives nothing at first; each further expiry
/// while it has not been seen working doubles it, up to [`MAX_EXCLUSION`].
const FIRST_EXCLUSION: Duration = Duration::from_secs(10);
/// The longest exclusion.
const MAX_EXCLUSION: Duration = Duration::from_secs(300);
/// The longest report interval a row's own timestamps are believed to show: a broken or hostile
/// row cannot keep a dead worker alive for longer than twice this.
const MAX_REPORT_CADENCE: Duration = Duration::from_secs(120);

/// Per worker: the metrics row's `last_update_secs` last seen and when it was first seen, and
/// the workers excluded from receiving leases for letting one expire.
#[derive(Debug)]
pub(crate) struct WorkerLiveness {
    dead_after: Duration,
    /// Per worker: the row's `last_update_secs` and when that value was first seen.
    seen: HashMap<String, RowSeen>,
    excluded: HashMap<String, Exclusion>,
    /// Whether a row seen for the first time counts as alive: yes for a leader of a fleet that is
    /// starting (the lock was free); no after a takeover, when a row may be a dead worker's last.
    trust_first_sightings: bool,
}

#[derive(Debug)]
struct RowSeen {
    secs: u64,
    /// When this value was first seen.
    since: Instant,
    /// Whether the change to this value was watched: the previous value was seen shortly before
    /// (so `since` is close to when the worker wrote it), not only after a gap in observation.
    watched_change: bool,
    last_seen: Instant,
    /// The worker's report interval as its own timestamps show it (the last change's step, at
    /// most [`MAX_REPORT_CADENCE`]); zero until a change was seen. Read off the writer's clock
    /// only as a difference, so no clock agreement between hosts is needed.
    cadence: Duration,
}

#[derive(Debug)]
struct Exclusion {
    until: Instant,
    length: Duration,
}

impl WorkerLiveness {
    pub fn new(dead_after: Duration) -> Self {
        WorkerLiveness { dead_after, seen: HashMap::new(), excluded: HashMap::new(), trust_first_sightings: true }
    }

    /// Whether rows seen only once count as alive (see the field).
    pub fn trust_first_sightings(&mut self, trust: bool) {
        self.trust_first_sightings = trust;
    }

    pub fn observe_all(&mut self, rows: &[WorkerMetrics], now: Instant) {
        let ids: HashSet<&str> = rows.iter().map(|r| r.worker_id.as_str()).collect();
        self.seen.retain(|k, _| ids.contains(k.as_str()));
        for row in rows {
            match self.seen.get_mut(&row.worker_id) {
                Some(seen) if seen.secs == row.last_update_secs => seen.last_seen = now,
                Some(seen) => {
                    let limit = Self::limit(self.dead_after, seen);
                    let watched_change = now.saturating_duration_since(seen.last_seen) < limit;
                    let step = Duration::from_secs(row.last_update_secs.saturating_sub(seen.secs));
                    *seen = RowSeen {
                        secs: row.last_update_secs,
                        since: now,
                        watched_change,
                        last_seen: now,
                        cadence: step.min(MAX_REPORT_CADENCE),
                    };
                }
                None => {
                    let row_seen = RowSeen {
                        secs: row.last_update_secs,
                        since: now,
                        watched_change: false,
                        last_seen: now,
                        cadence: Duration::ZERO,
                    };
                    self.seen.insert(row.worker_id.clone(), row_seen);
                }
            }
        }
    }

    /// Excludes `worker` from receiving leases: a lease it held expired (or it was the leader
    /// just replaced). A worker whose process runs (its metrics row changes) may still be cut off
    /// from the lease table, so only its own lease writes ([`forgive`](Self::forgive)) or the end
    /// of the exclusion let it receive leases again.
    pub fn exclude(&mut self, worker: &str, now: Instant) {
        match self.excluded.get_mut(worker) {
            Some(exclusion) if now < exclusion.until => {}
            Some(exclusion) => {
                exclusion.length = (exclusion.length * 2).min(MAX_EXCLUSION);
                exclusion.until = now + exclusion.length;
            }
            None => {
                self.excluded
                    .insert(worker.to_owned(), Exclusion { until: now + FIRST_EXCLUSION, length: FIRST_EXCLUSION });
            }
        }
    }

    /// Ends `worker`'s exclusion: it was seen renewing or checkpointing a lease it holds.
    pub fn forgive(&mut self, worker: &str) {
        self.excluded.remove(worker);
    }

    /// Whether `worker` may receive leases: its row changes (or, for a starting fleet, was just
    /// seen), and it is not excluded.
    pub fn is_alive(&self, worker: &str, now: Instant) -> bool {
        self.excluded.get(worker).is_none_or(|e| now >= e.until)
            && self.seen.get(worker).is_some_and(|seen| {
                (seen.watched_change || self.trust_first_sightings)
                    && now.saturating_duration_since(seen.since) < self.dead_after_for(seen)
            })
    }

    /// How long `seen`'s row may stay unchanged with its worker alive: the leader's own limit, or
    /// two of the worker's report intervals if that is longer (a Java KCL worker reports every
    /// 30 s, and the Java KCL's leader waits two intervals too).
    fn dead_after_for(&self, seen: &RowSeen) -> Duration {
        Self::limit(self.dead_after, seen)
    }

    fn limit(dead_after: Duration, seen: &RowSeen) -> Duration {
        dead_after.max(seen.cadence * 2)
    }

    /// Rows seen unchanged for at least `age`.
    pub fn unchanged_for(&self, age: Duration, now: Instant) -> Vec<(String, u64)> {
        self.seen
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(seen.since) >= age)
            .map(|(id, seen)| (id.clone(), seen.secs))
            .collect()
    }
}

struct Held {
    lock: LockItem,
    /// When the last successful heartbeat (or the acquisition) was sent.
    last_heartbeat_ok: Instant,
    next_heartbeat: Instant,
    next_pass: Instant,
    next_sync: Instant,
    passes: u64,
}

/// The leader-election and leader-duty loop of one worker.
pub(crate) struct Leader {
    ctx: Arc<WorkerContext>,
    expiry: ExpiryTracker,
    liveness: WorkerLiveness,
    held: Option<Held>,
    /// The lock version last seen as a contender, when it was first seen, and the lock's lease
    /// duration.
    watched: Option<(String, Instant, Duration)>,
    /// A leader replaced by this one that fenced its leases on the lock: its leases are expired
    /// at the first pass.
    fenced_predecessor: Option<String>,
    /// Leases without a shard, for the garbage-lease cleanup.
    garbage: GarbageLeases,
}

impl Leader {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        let lease_duration = ctx.config.lease_duration;
        // A worker's metrics row changes every `worker_metrics_interval`; three missed reports
        // mark it dead for assignment (it receives nothing) well before its leases expire.
        let dead_after = (ctx.config.worker_metrics_interval * 3).min(lease_duration);
        Leader {
            ctx,
            expiry: ExpiryTracker::new(lease_duration),
            liveness: WorkerLiveness::new(dead_after),
            held: None,
            watched: None,
            fenced_predecessor: None,
            garbage: GarbageLeases::default(),
        }
    }

    /// Runs until abort (drops everything) or shutdown (releases the lock).
    pub async fn run(mut self) {
        loop {
            let wake = self.step().await;
            tokio::select! {
                biased;
                () = self.ctx.abort.cancelled() => return,
                () = self.ctx.shutdown.cancelled() => {
                    if !self.ctx.abort.is_cancelled() {
                        self.resign().await;
                    }
                    return;
                }
                () = sleep_until(wake) => {}
            }
        }
    }

    fn me(&self) -> &str {
        &self.ctx.worker_id
    }

    /// One step; returns when to wake next.
    async fn step(&mut self) -> Instant {
        if self.held.is_none() {
            self.contend().await;
            if self.held.is_none() {
                // Look again after the check interval, or exactly when the watched version will
                // have been unchanged for the lock's lease duration.
                let regular = Instant::now() + self.ctx.config.leader_check_interval;
                return match &self.watched {
                    Some((_, since, duration)) => regular.min((*since + *duration).max(Instant::now())),
                    None => regular,
                };
            }
        }
        let now = Instant::now();
        if self.held.as_ref().is_some_and(|h| now >= h.next_heartbeat) {
            self.heartbeat().await;
        }
        if self.held.as_ref().is_some_and(|h| Instant::now() >= h.next_sync) {
            match shard_sync::sync(&self.ctx, &mut self.garbage).await {
                Ok(synced) if synced == Synced::default() => {}
                Ok(synced) => {
                    tracing::info!(created = synced.created, deleted = synced.deleted, "shard sync changed leases")
                }
                Err(e) => tracing::warn!(error = %e, "shard sync failed"),
            }
            if let Some(h) = self.held.as_mut() {
                h.next_sync = Instant::now() + self.ctx.config.shard_sync_interval;
            }
        }
        if self.held.as_ref().is_some_and(|h| Instant::now() >= h.next_pass) {
            let next = self.assignment_pass().await;
            if let Some(h) = self.held.as_mut() {
                h.next_pass = next;
            }
        }
        match &self.held {
            Some(h) => h.next_heartbeat.min(h.next_pass).min(h.next_sync),
            None => Instant::now() + self.ctx.config.leader_check_interval,
        }
    }

    async fn contend(&mut self) {
        let store = self.ctx.coordinator_store.clone();
        let lock = match store.get_lock(LEADER_LOCK_KEY).await {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader lock failed");
                return;
            }
        };
        let now = Instant::now();
        match lock {
            None => self.try_acquire(None, false).await,
            Some(item) if item.is_released => self.try_acquire(Some(&item), false).await,
            Some(item) if item.owner == self.me() => {
                // This worker held the lock before a restart: resume it.
                let sent_at = Instant::now();
                if let Ok(fresh) = store.heartbeat_lock(&item).await {
                    self.become_leader(fresh, true, sent_at);
                }
            }
            Some(item) => match &self.watched {
                Some((version, since, _)) if *version == item.record_version => {
                    let unchanged = now.saturating_duration_since(*since);
                    if unchanged >= item.lease_duration {
                        tracing::info!(previous = %item.owner, "leader lock not heartbeated for its lease duration; taking it");
                        let previous = item.owner.clone();
                        self.try_acquire(Some(&item), true).await;
                        if self.held.is_some() {
                            self.liveness.exclude(&previous, Instant::now());
                            if item.holder_fences_leases {
                                self.fenced_predecessor = Some(previous);
                            }
                        }
                    } else if unchanged >= self.ctx.config.leader_heartbeat_interval * 2 {
                        self.standby_scan().await;
                    }
                }
                _ => self.watched = Some((item.record_version, now, item.lease_duration)),
            },
        }
    }

    async fn try_acquire(&mut self, expected: Option<&LockItem>, takeover: bool) {
        let duration = self.ctx.config.leader_lock_duration;
        let sent_at = Instant::now();
        match self.ctx.coordinator_store.acquire_lock(LEADER_LOCK_KEY, self.me(), duration, expected).await {
            Ok(item) => self.become_leader(item, takeover, sent_at),
            Err(StoreError::LockLost { current }) => {
                self.watched = current.map(|c| (c.record_version, Instant::now(), c.lease_duration));
            }
            Err(e) => tracing::warn!(error = %e, "acquiring the leader lock failed"),
        }
    }

    /// Takes office. `takeover`: the lock was taken from a leader that stopped heartbeating (the
    /// fleet is running, pass at once); otherwise the lock was free (the fleet may be starting:
    /// wait up to 2 s so workers starting together report their metrics before the first pass).
    fn become_leader(&mut self, lock: LockItem, takeover: bool, sent_at: Instant) {
        let now = Instant::now();
        // From now on every held lease ends with the lock unless it is heartbeated (the fence).
        self.ctx.fencing.set_deadline(Some(sent_at + lock.lease_duration));
        tracing::info!(worker = %self.ctx.worker_id, takeover, "became leader");
        let settle =
            if takeover { Duration::ZERO } else { self.ctx.config.assignment_interval().min(Duration::from_secs(2)) };
        self.held = Some(Held {
            lock,
            last_heartbeat_ok: sent_at,
            next_heartbeat: now + self.ctx.config.leader_heartbeat_interval,
            next_pass: now + settle,
            next_sync: now,
            passes: 0,
        });
        self.watched = None;
        // After a takeover the fleet is running and a row may be a dead worker's last report:
        // only rows seen changing (the standby scans watched them) count as alive.
        self.liveness.trust_first_sightings(!takeover);
        self.ctx.metrics.is_leader.set(1.0);
        self.ctx.metrics.leader_changes.increment(1);
        self.ctx.set_leader(true);
    }

    fn step_down(&mut self, why: &str) {
        if self.held.take().is_some() {
            tracing::warn!(why, "no longer leader");
            self.ctx.metrics.is_leader.set(0.0);
            self.ctx.set_leader(false);
        }
    }

    async fn heartbeat(&mut self) {
        // A heartbeat whose reply was lost leaves a version this worker does not know; the lock
        // still names this worker, so it is this worker's own write: adopt it and beat again.
        for _ in 0..2 {
            let Some(held) = self.held.as_ref() else { return };
            let now = Instant::now();
            let result = self.ctx.coordinator_store.heartbeat_lock(&held.lock).await;
            let interval = self.ctx.config.leader_heartbeat_interval;
            let grace = self.ctx.config.leader_lock_duration.saturating_sub(interval);
            let Some(held) = self.held.as_mut() else { return };
            match result {
                Ok(lock) => {
                    self.ctx.fencing.set_deadline(Some(now + lock.lease_duration));
                    held.lock = lock;
                    held.last_heartbeat_ok = now;
                    held.next_heartbeat = now + interval;
                    return;
                }
                Err(StoreError::LockLost { current: Some(current) })
                    if current.owner == held.lock.owner && !current.is_released =>
                {
                    held.lock = current;
                }
                Err(StoreError::LockLost { .. }) => {
                    self.step_down("leader lock taken over");
                    // The new leader may reassign this worker's leases at once.
                    self.ctx.fencing.fire(&self.ctx.registry, "the leader lock was taken over");
                    return;
                }
                Err(e) => {
                    let now = Instant::now();
                    if now.saturating_duration_since(held.last_heartbeat_ok) >= grace {
                        // The fence stays: this worker's leases end at its deadline.
                        self.step_down("cannot heartbeat the leader lock");
                    } else {
                        tracing::warn!(error = %e, "leader heartbeat failed; retrying");
                        held.next_heartbeat = now + Duration::from_millis(500);
                    }
                    return;
                }
            }
        }
    }

    async fn resign(&mut self) {
        if let Some(held) = self.held.take() {
            match self.ctx.coordinator_store.release_lock(&held.lock).await {
                // Nobody will take over from a watched version: the fence is no longer needed.
                Ok(()) => self.ctx.fencing.set_deadline(None),
                // The lock may still be taken over after its lease duration: keep the fence.
                Err(e) => tracing::warn!(error = %e, "releasing the leader lock failed"),
            }
            self.ctx.metrics.is_leader.set(0.0);
            self.ctx.set_leader(false);
        }
    }

    /// Reads leases and metrics only to record observations (the leader looks dead).
    async fn standby_scan(&mut self) {
        let now = Instant::now();
        if let Ok(leases) = self.ctx.lease_store.list_leases().await {
            for worker in self.expiry.observe_all(&leases, now) {
                self.liveness.forgive(&worker);
            }
        }
        if let Ok(rows) = self.ctx.metrics_store.list_worker_metrics().await {
            self.liveness.observe_all(&rows, now);
        }
    }

    /// One assignment pass; returns when the next one is due.
    async fn assignment_pass(&mut self) -> Instant {
        let interval = self.ctx.config.assignment_interval();
        let (leases, rows) =
            match (self.ctx.lease_store.list_leases().await, self.ctx.metrics_store.list_worker_metrics().await) {
                (Ok(leases), Ok(rows)) => (leases, rows),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "assignment pass could not read the stores");
                    return Instant::now() + interval;
                }
            };
        let now = Instant::now();
        for worker in self.expiry.observe_all(&leases, now) {
            self.liveness.forgive(&worker);
        }
        self.liveness.observe_all(&rows, now);
        if let Some(predecessor) = self.fenced_predecessor.take() {
            // The replaced leader stopped every shard it held by now (its fence): no need to wait
            // for their counters to go stale.
            for lease in leases.iter().filter(|l| l.holder() == Some(predecessor.as_str())) {
                self.expiry.expire_fenced(lease);
            }
        }
        // A lease key that names no shard is never processed: leave it alone (logged once per
        // pass), rather than handing it from worker to worker.
        let (leases, unusable): (Vec<Lease>, Vec<Lease>) = leases.into_iter().partition(|l| l.shard_id().is_some());
        for lease in &unusable {
            tracing::warn!(lease = %lease.lease_key, "lease key is not a shard id; not assigning it");
        }
        let passes = match self.held.as_mut() {
            Some(h) => {
                h.passes += 1;
                h.passes
            }
            None => return now + interval,
        };

        let me = self.me().to_owned();
        let workers: Vec<WorkerInfo> = rows
            .iter()
            .filter(|r| r.worker_id == me || self.liveness.is_alive(&r.worker_id, now))
            .map(|r| WorkerInfo { worker_id: r.worker_id.clone(), cpu: cpu_of(r), max_cpu: max_cpu_of(r) })
            .collect();
        let open: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
        let infos: Vec<LeaseInfo> = open
            .iter()
            .map(|l| LeaseInfo {
                lease_key: l.lease_key.clone(),
                owner: l.lease_owner.clone(),
                in_handoff: l.is_in_handoff(),
                expired: self.expiry.is_expired(l, now),
                throughput_kbps: l.throughput_kbps,
            })
            .collect();
        let frequency = u64::from(self.ctx.config.assignment.variance_balancing_frequency);
        let balance = frequency > 0 && passes % frequency == 0;
        let plan = assignment::assign(AssignmentInput {
            leases: &infos,
            workers: &workers,
            config: &self.ctx.config.assignment,
            balance,
        });
        // The holder of an expired lease receives nothing until it is seen writing its leases
        // again: a dead worker's load just fell, so it would look least loaded; a worker cut off
        // from the lease table still reports its metrics.
        for lease in open.iter().filter(|l| self.expiry.is_expired(l, now)) {
            if let Some(holder) = lease.holder() {
                self.liveness.exclude(holder, now);
            }
        }
        let expired = infos.iter().filter(|l| l.expired).count();
        self.ctx.metrics.num_workers.set(workers.len() as f64);
        self.ctx.metrics.total_leases.set(leases.len() as f64);
        self.ctx.metrics.expired_leases.set(expired as f64);

        let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
        let graceful = self.ctx.config.assignment.graceful_handoff;
        let store = self.ctx.lease_store.clone();
        let writes = futures::stream::iter(plan.actions.into_iter().filter_map(|action| {
            let lease = (*by_key.get(action.lease_key())?).clone();
            let store = store.clone();
            Some(async move {
                let token = WriteToken::new();
                let result = match &action {
                    Action::Handoff { to, .. } if graceful => store.initiate_handoff(&lease, to, &token).await,
                    // An owned lease given away here expired: take it on the counter that was seen
                    // unchanged, so a renewal that lands meanwhile keeps it with its owner.
                    Action::Assign { to, .. } if lease.lease_owner.is_some() => {
                        store.take_lease(&lease, to, &token).await
                    }
                    Action::Handoff { to, .. } | Action::Assign { to, .. } => {
                        store.assign_lease(&lease, to, &token).await
                    }
                };
                (action, result)
            })
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        let now = Instant::now();
        for (action, result) in writes {
            match result {
                Ok(lease) => {
                    tracing::info!(?action, "assignment written");
                    self.ctx.metrics.reassignments.increment(1);
                    self.expiry.observe(&lease, now);
                }
                Err(e) => tracing::info!(?action, error = %e, "assignment not written"),
            }
        }

        for key in lineage::finished_leases_to_delete(&leases) {
            match self.ctx.lease_store.delete_lease(&key).await {
                Ok(()) => tracing::info!(lease = %key, "deleted finished lease"),
                Err(e) => tracing::warn!(lease = %key, error = %e, "deleting a finished lease failed"),
            }
        }
        for (worker, secs) in self.liveness.unchanged_for(self.ctx.config.stale_worker_metrics_cleanup, now) {
            let _ = self.ctx.metrics_store.delete_worker_metrics(&worker, secs).await;
        }

        // The next pass: the regular period, or exactly when the oldest observation expires.
        let regular = now + interval;
        let next = match self.expiry.next_expiry(&leases, now) {
            Some(at) => regular.min(at + Duration::from_millis(1)),
            None => regular,
        };
        next.max(now + Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use kinesis_core::ExtendedSequenceNumber;

    use super::*;

    fn lease(key: &str, owner: Option<&str>, counter: u64) -> Lease {
        let mut l = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
        l.lease_owner = owner.map(str::to_owned);
        l.lease_counter = counter;
        l
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_judged_from_the_last_observed_change() {
        let mut t = ExpiryTracker::new(Duration::from_secs(10));
        let start = Instant::now();
        t.observe_all(&[lease("a", Some("w1"), 1), lease("b", None, 0)], start);
        tokio::time::advance(Duration::from_secs(6)).await;
        // "a" renews; its clock restarts.
        t.observe_all(&[lease("a", Some("w1"), 2), lease("b", None, 0)], Instant::now());
        tokio::time::advance(Duration::from_secs(6)).await;
        let now = Instant::now();
        assert!(!t.is_expired(&lease("a", Some("w1"), 2), now), "renewed 6 s ago");
        assert!(!t.is_expired(&lease("b", None, 0), now), "unowned leases are not 'expired', just unassigned");
        assert_eq!(t.next_expiry(&[lease("a", Some("w1"), 2)], now), Some(start + Duration::from_secs(16)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(t.is_expired(&lease("a", Some("w1"), 2), Instant::now()));
        // A counter seen again after a gap is still the same counter: the observation holds.
        t.observe_all(&[lease("a", Some("w1"), 3)], Instant::now());
        assert!(!t.is_expired(&lease("a", Some("w1"), 3), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_follows_row_changes() {
        let row = |id: &str, secs| WorkerMetrics {
            worker_id: id.into(),
            last_update_secs: secs,
            metric_stats: Default::default(),
            operating_range: Default::default(),
        };
        let mut l = WorkerLiveness::new(Duration::from_secs(10));
        l.observe_all(&[row("w1", 100), row("w2", 100)], Instant::now());
        l.exclude("w2", Instant::now());
        assert!(l.is_alive("w1", Instant::now()));
        assert!(!l.is_alive("w2", Instant::now()), "a lease of w2 expired: it is excluded");
        tokio::time::advance(Duration::from_secs(5)).await;
        l.observe_all(&[row("w1", 105), row("w2", 105)], Instant::now());
        assert!(!l.is_alive("w2", Instant::now()), "its row changes, but that does not show it can write leases");
        l.forgive("w2");
        assert!(l.is_alive("w2", Instant::now()), "seen renewing its own lease");
        tokio::time::advance(Duration::from_secs(10)).await;
        l.observe_all(&[row("w1", 115), row("w2", 105)], Instant::now());
        assert!(l.is_alive("w1", Instant::now()));
        assert!(!l.is_alive("w2", Instant::now()), "unchanged for a lease duration");
        assert!(!l.is_alive("w3", Instant::now()), "absent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_reporting_slowly_stays_alive_between_its_reports() {
        // A Java KCL worker writes its row every 30 s (workerMetricsReporterFreqInMillis).
        let row = |secs| WorkerMetrics {
            worker_id: "java".into(),
            last_update_secs: secs,
            metric_stats: Default::default(),
            operating_range: Default::default(),
        };
        let mut l = WorkerLiveness::new(Duration::from_secs(6));
        l.trust_first_sightings(false);
        l.observe_all(&[row(1_000)], Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        l.observe_all(&[row(1_030)], Instant::now());
        tokio::time::advance(Duration::from_secs(29)).await;
        l.observe_all(&[row(1_030)], Instant::now());
        assert!(l.is_alive("java", Instant::now()), "29 s into a 30 s report interval");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!l.is_alive("java", Instant::now()), "two report intervals (60 s) missed");
        // A row claiming a huge interval keeps a dead worker alive no longer than the cap.
        l.observe_all(&[row(1_000_000)], Instant::now());
        tokio::time::advance(MAX_REPORT_CADENCE * 2).await;
        assert!(!l.is_alive("java", Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn exclusions_double_while_a_worker_keeps_failing() {
        let row = |secs| WorkerMetrics {
            worker_id: "w1".into(),
            last_update_secs: secs,
            metric_stats: Default::default(),
            operating_range: Default::default(),
        };
        let mut l = WorkerLiveness::new(Duration::from_secs(60));
        l.observe_all(&[row(1)], Instant::now());
        l.exclude("w1", Instant::now());
        tokio::time::advance(FIRST_EXCLUSION - Duration::from_millis(1)).await;
        l.exclude("w1", Instant::now());
        assert!(!l.is_alive("w1", Instant::now()), "an exclusion in force is not extended");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l.is_alive("w1", Instant::now()), "it ends");
        l.exclude("w1", Instant::now());
        tokio::time::advance(FIRST_EXCLUSION).await;
        assert!(!l.is_alive("w1", Instant::now()), "the second one lasts twice as long");
        tokio::time::advance(FIRST_EXCLUSION).await;
        assert!(l.is_alive("w1", Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_moving_its_counter_is_seen_working() {
        let mut t = ExpiryTracker::new(Duration::from_secs(10));
        let now = Instant::now();
        assert!(t.observe_all(&[lease("a", Some("w1"), 1)], now).is_empty(), "a first sighting proves nothing");
        assert_eq!(t.observe_all(&[lease("a", Some("w1"), 2)], now), HashSet::from(["w1".to_owned()]));
        // The counter moved with the owner: an assignment, not the holder's own write.
        assert!(t.observe_all(&[lease("a", Some("w2"), 3)], now).is_empty());
    }
}
