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
//! such treatment: its holder's leases expire by their counters. In heartbeat mode a quarantine
//! ends after two lock durations even if nobody wrote the lease (nothing renews it, so nobody
//! else might): the worker then takes it up again with a write that bumps the counter.
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

//!
//! # Heartbeat mode
//!
//! With [`LeaseMode::WorkerHeartbeat`](crate::config::LeaseMode) a worker's row is its
//! heartbeat. The leader reads the rows (eventually consistent, one small scan) every assignment
//! interval and exactly when a row would have been unchanged for a lease duration; a row that
//! looks so is read again consistently before its worker is judged dead — the worker has fenced
//! itself by then (it stops every shard a lease duration after it sent its last heartbeat that
//! landed). A dead worker's leases are taken conditionally on their counters. The lease table is
//! read only when the rows show a change (a worker joining, restarting, leaving, becoming
//! eligible or not, dying; a worker's lease-change count moving; load out of balance, at most
//! every `balance_interval`), when a pass owes work, when some lease's holder has no heartbeat
//! row (its counter is then watched as in per-lease mode), and every `full_scan_interval`. Each
//! worker whose leases a pass moved gets a signal on its row (its assignment version, and how
//! many leases it now owns), which its next heartbeat returns. With every lock heartbeat the
//! leader stamps the lock's version on two standbys' rows; a standby takes the lock when the
//! stamp has not changed for the lock's lease duration (conditionally on that version), so the
//! other workers read the lock only every `leader_check_interval`.

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
use crate::store::{LockItem, StandbyStamp, StoreError, WorkerMetrics, WorkerSignal};
use crate::worker_metrics::{cpu_of, max_cpu_of};

/// How many workers the leader stamps as standbys (heartbeat mode).
const STANDBYS: usize = 2;
/// The longest lock lease duration a stamp is believed to carry.
const MAX_STAMPED_LOCK_DURATION: Duration = Duration::from_secs(600);
/// How long a former standby reads the lock every check interval after losing its stamp.
const DEMOTED_WATCH: Duration = Duration::from_secs(60);

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
    /// The owner then: a graceful handoff changes it without bumping the counter.
    owner: Option<String>,
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
        let owner = lease.lease_owner.clone();
        match self.seen.get_mut(&lease.lease_key) {
            Some(seen) if seen.counter == lease.lease_counter && seen.owner == owner && seen.holder == holder => None,
            Some(seen) if seen.counter == lease.lease_counter => {
                // A handoff started (or ended) without a write of the counter: its clock starts
                // now, so a handoff is never judged by the time the lease sat before it.
                *seen = Seen { counter: lease.lease_counter, since: now, holder, owner };
                None
            }
            Some(seen) => {
                let renewed_by = (seen.holder.is_some() && seen.holder == holder).then(|| holder.clone()).flatten();
                *seen = Seen { counter: lease.lease_counter, since: now, holder, owner };
                renewed_by
            }
            None => {
                let seen = Seen { counter: lease.lease_counter, since: now, holder, owner };
                self.seen.insert(lease.lease_key.clone(), seen);
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

    /// Since when the lease's current counter has been seen (this leader's clock), if it has.
    pub fn unchanged_since(&self, lease: &Lease) -> Option<Instant> {
        self.seen.get(&lease.lease_key).filter(|seen| seen.counter == lease.lease_counter).map(|seen| seen.since)
    }

    /// Whether the lease's holder fenced itself at the lease's current counter.
    pub fn is_fenced(&self, lease: &Lease) -> bool {
        lease.lease_owner.is_some() && self.fenced.get(&lease.lease_key) == Some(&lease.lease_counter)
    }

    /// The earliest instant at which one of these owned leases would expire by its counter, if
    /// not yet expired; `by_counter` picks the leases judged so.
    pub fn next_expiry(&self, leases: &[Lease], now: Instant, by_counter: impl Fn(&Lease) -> bool) -> Option<Instant> {
        leases
            .iter()
            .filter(|l| l.lease_owner.is_some() && !l.is_finished() && by_counter(l))
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
    /// Workers whose row carries a heartbeat (heartbeat mode), with its incarnation.
    heartbeat_rows: HashMap<String, String>,
    /// Heartbeat workers confirmed dead, with the row value that was confirmed unchanged.
    confirmed_dead: HashMap<String, u64>,
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
        WorkerLiveness {
            dead_after,
            seen: HashMap::new(),
            excluded: HashMap::new(),
            trust_first_sightings: true,
            heartbeat_rows: HashMap::new(),
            confirmed_dead: HashMap::new(),
        }
    }

    /// Whether rows seen only once count as alive (see the field).
    pub fn trust_first_sightings(&mut self, trust: bool) {
        self.trust_first_sightings = trust;
    }

    pub fn observe_all(&mut self, rows: &[WorkerMetrics], now: Instant) {
        let ids: HashSet<&str> = rows.iter().map(|r| r.worker_id.as_str()).collect();
        self.seen.retain(|k, _| ids.contains(k.as_str()));
        self.heartbeat_rows = rows
            .iter()
            .filter_map(|r| r.heartbeat.as_ref().map(|h| (r.worker_id.clone(), h.incarnation.clone())))
            .collect();
        self.confirmed_dead.retain(|id, secs| rows.iter().any(|r| r.worker_id == *id && r.last_update_secs == *secs));
        self.observe_rows(rows, now);
    }

    /// Records rows without forgetting the others (a consistent read of one row).
    pub fn observe_rows(&mut self, rows: &[WorkerMetrics], now: Instant) {
        for row in rows {
            match self.seen.get_mut(&row.worker_id) {
                Some(seen) if seen.secs == row.last_update_secs => seen.last_seen = now,
                Some(seen) => {
                    let limit = Self::limit(self.dead_after, seen);
                    let watched_change = now.saturating_duration_since(seen.last_seen) < limit;
                    let step = Duration::from_secs(row.last_update_secs.saturating_sub(seen.secs));
                    // A heartbeat row's cadence is the heartbeat interval: a long step between
                    // two sightings is a gap in observation, not a slow reporter.
                    let cadence = if row.heartbeat.is_some() { Duration::ZERO } else { step.min(MAX_REPORT_CADENCE) };
                    *seen = RowSeen { secs: row.last_update_secs, since: now, watched_change, last_seen: now, cadence };
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

    /// Whether `worker`'s row carries a heartbeat: its leases are judged by the heartbeat rule,
    /// not by their counters.
    pub fn has_heartbeat(&self, worker: &str) -> bool {
        self.heartbeat_rows.contains_key(worker)
    }

    /// The heartbeat rows a `lease_duration` unchanged on this leader's clock and not yet
    /// confirmed dead: to be confirmed with a consistent read.
    pub fn heartbeat_suspects(&self, lease_duration: Duration, now: Instant) -> Vec<(String, u64)> {
        self.heartbeat_rows
            .keys()
            .filter(|id| !self.confirmed_dead.contains_key(*id))
            .filter_map(|id| self.seen.get(id).map(|seen| (id, seen)))
            .filter(|(_, seen)| now.saturating_duration_since(seen.since) >= lease_duration)
            .map(|(id, seen)| (id.clone(), seen.secs))
            .collect()
    }

    /// Records that a consistent read found `worker`'s row still at `secs`: the worker is dead.
    pub fn confirm_dead(&mut self, worker: &str, secs: u64) {
        self.confirmed_dead.insert(worker.to_owned(), secs);
    }

    /// Whether `worker` is a heartbeat worker confirmed dead (its row unchanged since).
    pub fn is_confirmed_dead(&self, worker: &str) -> bool {
        self.confirmed_dead.contains_key(worker)
    }

    /// The earliest instant a heartbeat row that has not changed would become a suspect.
    pub fn next_heartbeat_judgement(&self, lease_duration: Duration, now: Instant) -> Option<Instant> {
        self.heartbeat_rows
            .keys()
            .filter(|id| !self.confirmed_dead.contains_key(*id))
            .filter_map(|id| self.seen.get(id))
            .map(|seen| seen.since + lease_duration)
            .filter(|at| *at > now)
            .min()
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
    /// The next read of the worker rows (heartbeat mode) or assignment pass (per-lease mode).
    next_scan: Instant,
    /// No pass before this (the settling after taking office).
    first_pass_at: Instant,
    next_sync: Instant,
    /// Heartbeat mode: the next safety-net pass (a full lease-table read with nothing signalled).
    next_full_scan: Instant,
    /// Heartbeat mode: when load drift may next start a balancing pass.
    next_drift_balance: Instant,
    passes: u64,
}

/// What a read of the worker rows showed that calls for an assignment pass (heartbeat mode).
#[derive(Debug, Default)]
struct RowEvents {
    /// A pass is called for.
    pass: bool,
    /// The fleet changed (a worker joined, left, died or restarted) or its load drifted: the
    /// pass also balances.
    balance: bool,
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
    /// The lease table as the last pass read (and wrote) it.
    leases: Vec<Lease>,
    /// Per heartbeat row at the last read: its incarnation and lease-change count.
    row_marks: HashMap<String, (String, u64)>,
    /// The workers that could receive leases at the last read.
    eligible: Vec<String>,
    /// A pass is owed: the last one left work undone (a write failed, a lease found no worker)
    /// or a shard sync created leases.
    pass_owed: bool,
    /// The workers stamped as standbys.
    standbys: Vec<String>,
    /// Workers whose assignment signal failed: signalled again at the next row read.
    unsignalled: HashSet<String>,
    /// Heartbeat-mode follower: the stamp last seen on this worker's row and when it was first
    /// seen.
    stamp_seen: Option<(String, Instant)>,
    /// A stamp the lock showed to be out of date (the leader stopped stamping this worker).
    stale_stamp: Option<String>,
    /// Heartbeat-mode follower without a stamp: the lock was seen heartbeated, so the next read
    /// can wait the long check interval.
    lock_seen_changing: bool,
    /// When this worker last read the worker rows as a standby.
    last_standby_scan: Option<Instant>,
    /// Whether the last look found a stamp on this worker's row.
    had_stamp: bool,
    /// When this worker stopped being a standby.
    demoted_at: Option<Instant>,
}

impl Leader {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        let lease_duration = ctx.config.lease_duration;
        // A worker's metrics row changes every `worker_metrics_interval` (its heartbeat interval
        // in heartbeat mode); three missed reports mark it dead for assignment (it receives
        // nothing) well before its leases expire.
        let report_interval = ctx.config.heartbeat_interval().unwrap_or(ctx.config.worker_metrics_interval);
        let dead_after = (report_interval * 3).min(lease_duration);
        Leader {
            ctx,
            expiry: ExpiryTracker::new(lease_duration),
            liveness: WorkerLiveness::new(dead_after),
            held: None,
            watched: None,
            fenced_predecessor: None,
            garbage: GarbageLeases::default(),
            leases: Vec::new(),
            row_marks: HashMap::new(),
            eligible: Vec::new(),
            pass_owed: false,
            standbys: Vec::new(),
            unsignalled: HashSet::new(),
            stamp_seen: None,
            stale_stamp: None,
            lock_seen_changing: false,
            last_standby_scan: None,
            had_stamp: false,
            demoted_at: None,
        }
    }

    /// Runs until abort (drops everything) or shutdown (releases the lock).
    pub async fn run(mut self) {
        let mut signals = self.ctx.signals.subscribe();
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
                // A heartbeat-mode follower's stamp changed: look at it now.
                changed = signals.changed(), if self.held.is_none() && self.heartbeat_mode() => {
                    if changed.is_err() {
                        sleep_until(wake).await;
                    }
                }
            }
        }
    }

    fn me(&self) -> &str {
        &self.ctx.worker_id
    }

    fn heartbeat_mode(&self) -> bool {
        self.ctx.config.heartbeat().is_some()
    }

    /// One step; returns when to wake next.
    async fn step(&mut self) -> Instant {
        if self.held.is_none() {
            let wake = match self.ctx.config.heartbeat().map(|h| h.leader_check_interval) {
                Some(slow) => self.follow_in_heartbeat_mode(slow).await,
                None => self.follow().await,
            };
            if self.held.is_none() {
                return wake;
            }
        }
        let now = Instant::now();
        if self.held.as_ref().is_some_and(|h| now >= h.next_heartbeat) {
            self.heartbeat().await;
        }
        if self.held.as_ref().is_some_and(|h| Instant::now() >= h.next_sync) {
            let cached = self.heartbeat_mode() && !self.leases.is_empty();
            let leases = cached.then(|| self.leases.clone());
            match shard_sync::sync(&self.ctx, &mut self.garbage, leases).await {
                Ok(synced) if synced == Synced::default() => {}
                Ok(synced) => {
                    tracing::info!(created = synced.created, deleted = synced.deleted, "shard sync changed leases");
                    self.pass_owed = true;
                }
                Err(e) => tracing::warn!(error = %e, "shard sync failed"),
            }
            if let Some(h) = self.held.as_mut() {
                h.next_sync = Instant::now() + self.ctx.config.shard_sync_interval;
            }
        }
        if self.held.as_ref().is_some_and(|h| Instant::now() >= h.next_scan.max(h.first_pass_at)) {
            let next =
                if self.heartbeat_mode() { self.scan_rows().await } else { self.assignment_pass(None, false).await };
            if let Some(h) = self.held.as_mut() {
                h.next_scan = next;
            }
        }
        match &self.held {
            Some(h) => h.next_heartbeat.min(h.next_scan.max(h.first_pass_at)).min(h.next_sync),
            None => Instant::now() + self.ctx.config.leader_check_interval,
        }
    }

    /// A per-lease-mode follower: reads the lock every check interval and exactly when the
    /// watched version will have been unchanged for the lock's lease duration.
    async fn follow(&mut self) -> Instant {
        self.contend().await;
        let regular = Instant::now() + self.ctx.config.leader_check_interval;
        match &self.watched {
            Some((_, since, duration)) => regular.min((*since + *duration).max(Instant::now())),
            None => regular,
        }
    }

    /// A heartbeat-mode follower. The leader's standby learns the lock's version from the stamp
    /// its own heartbeat returns, and reads the lock only once that version has been unchanged
    /// for the lock's lease duration (then takes it, conditionally on that version). While the
    /// stamp looks stale it reads the worker rows every assignment interval, so a takeover judges
    /// the fleet at once. Any other follower reads the lock when it starts, a lease duration
    /// later, and then every `slow` interval: a safety net for a standby that died with the
    /// leader.
    async fn follow_in_heartbeat_mode(&mut self, slow: Duration) -> Instant {
        let now = Instant::now();
        let stamp = self.ctx.signals.borrow().standby.clone();
        let stamp = stamp.filter(|s| self.stale_stamp.as_deref() != Some(s.record_version.as_str())).map(|mut s| {
            // Read from a row: bounded, so no instant arithmetic can overflow.
            s.lease_duration = s.lease_duration.min(MAX_STAMPED_LOCK_DURATION);
            s
        });
        let Some(stamp) = stamp else {
            if std::mem::take(&mut self.had_stamp) {
                self.demoted_at = Some(now);
            }
            // A standby that just lost its stamp (the leader stamps another, or this worker's
            // heartbeat faltered) watches the lock as in per-lease mode for a while: the leader
            // may die before it stamps this worker again.
            if self.demoted_at.is_some_and(|at| now < at + DEMOTED_WATCH) {
                return self.follow().await;
            }
            let due = match &self.watched {
                Some((_, since, duration)) if !self.lock_seen_changing => (*since + *duration).max(now),
                Some((_, since, _)) => *since + slow,
                None => now,
            };
            if now >= due {
                let before = self.watched.as_ref().map(|(v, ..)| v.clone());
                self.contend().await;
                let after = self.watched.as_ref().map(|(v, ..)| v.clone());
                if before.is_some() && after.is_some() && before != after {
                    self.lock_seen_changing = true;
                }
                return match &self.watched {
                    Some((_, since, duration)) if !self.lock_seen_changing => (*since + *duration).max(now),
                    Some(_) => Instant::now() + slow,
                    // The read or the acquisition failed: try again soon, not after the long interval.
                    None => Instant::now() + self.ctx.config.leader_check_interval,
                };
            }
            return due;
        };
        self.had_stamp = true;
        let since = match &self.stamp_seen {
            Some((version, since)) if *version == stamp.record_version => *since,
            _ => {
                self.stamp_seen = Some((stamp.record_version.clone(), now));
                now
            }
        };
        self.watched = Some((stamp.record_version.clone(), since, stamp.lease_duration));
        let unchanged = now.saturating_duration_since(since);
        if unchanged >= stamp.lease_duration {
            self.contend().await;
            if self.held.is_none() && self.watched.as_ref().is_some_and(|(v, ..)| *v != stamp.record_version) {
                // The lock moved on without this worker's stamp: it is no longer the standby
                // (or the stamps fail); watch the lock by reading it from now on.
                self.stale_stamp = Some(stamp.record_version.clone());
                self.stamp_seen = None;
                self.lock_seen_changing = true;
            }
            return Instant::now() + self.ctx.config.assignment_interval();
        }
        let suspect_after = self.ctx.config.leader_heartbeat_interval * 2;
        if unchanged >= suspect_after {
            self.standby_scan().await;
            return (since + stamp.lease_duration).min(Instant::now() + self.ctx.config.assignment_interval());
        }
        (since + suspect_after).min(since + stamp.lease_duration)
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
    /// fleet is running, pass at once — or after one read of the rows if this worker has not
    /// watched them lately); otherwise the lock was free (the fleet may be starting: wait up to
    /// 2 s so workers starting together report their metrics before the first pass).
    fn become_leader(&mut self, lock: LockItem, takeover: bool, sent_at: Instant) {
        let now = Instant::now();
        // From now on every held lease ends with the lock unless it is heartbeated (the fence).
        self.ctx.fencing.set_deadline(Some(sent_at + lock.lease_duration));
        tracing::info!(worker = %self.ctx.worker_id, takeover, "became leader");
        let interval = self.ctx.config.assignment_interval();
        let watched_rows = self
            .last_standby_scan
            .is_some_and(|at| now.saturating_duration_since(at) <= self.ctx.config.leader_heartbeat_interval * 4);
        let settle = match (takeover, watched_rows || !self.heartbeat_mode()) {
            (true, true) => Duration::ZERO,
            (true, false) => interval,
            (false, _) => interval.min(Duration::from_secs(2)),
        };
        let full_scan = self.ctx.config.heartbeat().map_or(interval, |h| h.full_scan_interval);
        self.held = Some(Held {
            lock,
            last_heartbeat_ok: sent_at,
            next_heartbeat: now + self.ctx.config.leader_heartbeat_interval,
            // Heartbeat mode reads the rows at once (the settling delays only the pass).
            next_scan: if self.heartbeat_mode() { now } else { now + settle },
            first_pass_at: now + settle,
            next_sync: now,
            next_full_scan: now + full_scan,
            next_drift_balance: now,
            passes: 0,
        });
        self.pass_owed = true;
        self.watched = None;
        self.stamp_seen = None;
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
            self.standbys.clear();
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
                    self.stamp_standby().await;
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

    /// Stamps the lock as just heartbeated on the standbys' rows: the two live heartbeat workers
    /// with the smallest ids other than this one (two, so that a standby dying shortly before
    /// the leader leaves one watching). Stamps on former standbys are cleared first.
    async fn stamp_standby(&mut self) {
        let Some(held) = self.held.as_ref() else { return };
        let stamp =
            StandbyStamp { record_version: held.lock.record_version.clone(), lease_duration: held.lock.lease_duration };
        let now = Instant::now();
        let me = self.me().to_owned();
        let mut candidates: Vec<String> = self
            .eligible
            .iter()
            .filter(|w| **w != me && self.liveness.has_heartbeat(w) && self.liveness.is_alive(w, now))
            .cloned()
            .collect();
        candidates.sort();
        candidates.truncate(STANDBYS);
        let store = self.ctx.metrics_store.clone();
        for previous in self.standbys.iter().filter(|w| !candidates.contains(w)) {
            let _ = store.signal_worker(previous, &WorkerSignal::Standby(None)).await;
        }
        let mut stamped = Vec::new();
        for standby in candidates {
            match store.signal_worker(&standby, &WorkerSignal::Standby(Some(stamp.clone()))).await {
                Ok(()) => stamped.push(standby),
                Err(e) => tracing::debug!(worker = %standby, error = %e, "stamping a standby failed"),
            }
        }
        self.standbys = stamped;
    }

    async fn resign(&mut self) {
        if let Some(held) = self.held.take() {
            match self.ctx.coordinator_store.release_lock(&held.lock).await {
                Ok(()) => {
                    // Nobody will take over from a watched version: the fence is no longer needed.
                    self.ctx.fencing.set_deadline(None);
                    // A stamp with no lease duration sends the standbys to the lock at once.
                    for standby in std::mem::take(&mut self.standbys) {
                        let stamp = StandbyStamp {
                            record_version: held.lock.record_version.clone(),
                            lease_duration: Duration::ZERO,
                        };
                        let _ =
                            self.ctx.metrics_store.signal_worker(&standby, &WorkerSignal::Standby(Some(stamp))).await;
                    }
                }
                // The lock may still be taken over after its lease duration: keep the fence.
                Err(e) => tracing::warn!(error = %e, "releasing the leader lock failed"),
            }
            self.ctx.metrics.is_leader.set(0.0);
            self.ctx.set_leader(false);
        }
    }

    /// Reads the worker rows (and, in per-lease mode, the leases) only to record observations
    /// (the leader looks dead).
    async fn standby_scan(&mut self) {
        let now = Instant::now();
        if !self.heartbeat_mode()
            && let Ok(leases) = self.ctx.lease_store.list_leases().await
        {
            for worker in self.expiry.observe_all(&leases, now) {
                self.liveness.forgive(&worker);
            }
        }
        if let Ok(rows) = self.ctx.metrics_store.list_worker_metrics().await {
            self.liveness.observe_all(&rows, now);
            self.last_standby_scan = Some(now);
        }
    }

    /// Heartbeat mode: reads the worker rows, judges the heartbeats, and runs an assignment pass
    /// only when something calls for one; returns when to read the rows next.
    async fn scan_rows(&mut self) -> Instant {
        let interval = self.ctx.config.assignment_interval();
        let rows = match self.ctx.metrics_store.list_worker_metrics().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading the worker rows failed");
                return Instant::now() + interval;
            }
        };
        let now = Instant::now();
        self.liveness.observe_all(&rows, now);
        let mut events = self.row_events(&rows, now);
        if self.confirm_deaths().await {
            events.pass = true;
            events.balance = true;
        }
        let now = Instant::now();
        let Some(held) = self.held.as_mut() else { return now + interval };
        let mut balance = events.balance;
        if now >= held.next_full_scan {
            events.pass = true;
            balance = true;
        }
        if self.pass_owed || self.needs_counter_watch(now) || self.next_abandonment().is_some_and(|at| now >= at) {
            events.pass = true;
        }
        if events.pass {
            if let Some(held) = self.held.as_mut() {
                held.next_full_scan = now + self.ctx.config.heartbeat().map_or(interval, |h| h.full_scan_interval);
            }
            self.assignment_pass(Some(rows), balance).await;
        } else if !self.unsignalled.is_empty() {
            let leases = self.leases.clone();
            self.signal_assignments(&leases, HashSet::new()).await;
        }
        // The next read: the regular period, or exactly when a heartbeat row or a lease judged by
        // its counter would expire.
        let now = Instant::now();
        let lease_duration = self.ctx.config.lease_duration;
        let regular = now + interval;
        let judgement = self.liveness.next_heartbeat_judgement(lease_duration, now);
        let counters = self.next_counter_expiry(now);
        let next =
            [Some(regular), judgement.map(|at| at + Duration::from_millis(1)), counters].into_iter().flatten().min();
        next.unwrap_or(regular).max(now + Duration::from_millis(100))
    }

    /// What the rows show changed since the last read: a worker joined, restarted or left, one
    /// became eligible or not, a worker reported a change of its lease set, or — at most every
    /// `balance_interval` — the load drifted out of balance.
    fn row_events(&mut self, rows: &[WorkerMetrics], now: Instant) -> RowEvents {
        let mut events = RowEvents::default();
        let marks: HashMap<String, (String, u64)> = rows
            .iter()
            .filter_map(|r| {
                r.heartbeat.as_ref().map(|h| (r.worker_id.clone(), (h.incarnation.clone(), h.lease_changes)))
            })
            .collect();
        for (worker, (incarnation, changes)) in &marks {
            match self.row_marks.get(worker) {
                Some((seen_incarnation, _)) if seen_incarnation != incarnation => {
                    events.balance = true;
                    // The worker's process was replaced: a graceful handoff its old process was
                    // to finish never will be; it is taken as expired at its current counter.
                    for lease in self.leases.iter().filter(|l| l.is_in_handoff() && l.holder() == Some(worker)) {
                        tracing::info!(lease = %lease.lease_key, %worker, "a restarted worker's handoff is taken over");
                        self.expiry.expire_fenced(lease);
                    }
                }
                Some((_, seen_changes)) if seen_changes != changes => events.pass = true,
                Some(_) => {}
                None => events.balance = true,
            }
        }
        if self.row_marks.keys().any(|w| !marks.contains_key(w)) {
            events.balance = true;
        }
        self.row_marks = marks;
        let me = self.me().to_owned();
        let mut eligible: Vec<String> = rows
            .iter()
            .filter(|r| r.worker_id == me || self.liveness.is_alive(&r.worker_id, now))
            .map(|r| r.worker_id.clone())
            .collect();
        eligible.sort();
        if eligible != self.eligible {
            events.balance = true;
            self.eligible = eligible;
        }
        let drift_allowed = self.held.as_ref().is_some_and(|h| now >= h.next_drift_balance);
        if drift_allowed && self.load_drifted(rows) {
            events.balance = true;
            if let Some(h) = self.held.as_mut() {
                h.next_drift_balance = now + self.ctx.config.heartbeat().map_or(Duration::ZERO, |h| h.balance_interval);
            }
        }
        events.pass |= events.balance;
        events
    }

    /// Whether the eligible heartbeat workers' reported loads are out of balance: by throughput
    /// when the fleet is not idle, else by lease count (a difference of one lease is balance).
    fn load_drifted(&self, rows: &[WorkerMetrics]) -> bool {
        let loads: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| self.eligible.contains(&r.worker_id))
            .filter_map(|r| r.heartbeat.as_ref().map(|h| (h.held_leases as f64, h.throughput_kbps)))
            .collect();
        if loads.len() < 2 {
            return false;
        }
        let n = loads.len() as f64;
        let threshold = self.ctx.config.assignment.rebalance_threshold;
        let mean_kbps = loads.iter().map(|l| l.1).sum::<f64>() / n;
        if mean_kbps > self.ctx.config.assignment.idle_throughput_kbps {
            return loads.iter().any(|l| (l.1 - mean_kbps).abs() > mean_kbps * threshold);
        }
        let mean_leases = loads.iter().map(|l| l.0).sum::<f64>() / n;
        loads.iter().any(|l| (l.0 - mean_leases).abs() > (mean_leases * threshold).max(1.0))
    }

    /// Confirms with a consistent read every heartbeat row that looked unchanged for a lease
    /// duration; returns whether a worker was found dead.
    async fn confirm_deaths(&mut self) -> bool {
        let suspects = self.liveness.heartbeat_suspects(self.ctx.config.lease_duration, Instant::now());
        let mut found = false;
        for (worker, secs) in suspects {
            match self.ctx.metrics_store.get_worker_metrics(&worker).await {
                Ok(Some(row)) if row.last_update_secs != secs => self.liveness.observe_rows(&[row], Instant::now()),
                Ok(_) => {
                    tracing::info!(%worker, "heartbeat not changed for a lease duration; the worker is dead");
                    self.liveness.confirm_dead(&worker, secs);
                    found = true;
                }
                Err(e) => tracing::warn!(%worker, error = %e, "confirming a heartbeat failed"),
            }
        }
        found
    }

    /// Whether a lease is judged by its counter: its holder has no heartbeat row.
    fn judged_by_counter(&self, lease: &Lease) -> bool {
        lease.holder().is_some_and(|h| !self.liveness.has_heartbeat(h))
    }

    /// Whether some open lease is held by a worker without a heartbeat row (a Java KCL worker,
    /// or one of ours in per-lease mode): its counter must be watched every assignment interval.
    fn needs_counter_watch(&self, _now: Instant) -> bool {
        self.leases.iter().any(|l| !l.is_finished() && self.judged_by_counter(l))
    }

    /// The earliest instant a handoff in the last pass's leases counts as abandoned.
    fn next_abandonment(&self) -> Option<Instant> {
        self.leases
            .iter()
            .filter(|l| l.holder().is_some_and(|h| self.liveness.has_heartbeat(h)))
            .filter_map(|l| self.abandoned_at(l))
            .min()
    }

    fn next_counter_expiry(&self, now: Instant) -> Option<Instant> {
        self.expiry
            .next_expiry(&self.leases, now, |l| self.judged_by_counter(l))
            .map(|at| at + Duration::from_millis(1))
    }

    /// Whether `lease` is expired: its holder fenced itself (a replaced leader); a heartbeat
    /// holder was confirmed dead, or left a graceful handoff unfinished for longer than a
    /// handoff may take (see [`abandoned_at`](Self::abandoned_at)); any other holder left its
    /// counter unchanged for a lease duration.
    fn is_expired(&self, lease: &Lease, now: Instant) -> bool {
        if lease.lease_owner.is_none() {
            return false;
        }
        match lease.holder() {
            Some(holder) if self.liveness.has_heartbeat(holder) => {
                self.expiry.is_fenced(lease)
                    || self.liveness.is_confirmed_dead(holder)
                    || self.abandoned_at(lease).is_some_and(|at| now >= at)
            }
            _ => self.expiry.is_expired(lease, now),
        }
    }

    /// Heartbeat mode: when a graceful handoff held by a heartbeat worker counts as abandoned —
    /// its counter unchanged for `graceful_handoff_timeout` (by then the holder transfers the
    /// lease whatever its processor does) plus a lease duration. Nothing renews a lease in
    /// heartbeat mode, so a handoff whose holder does not hold the lease any more (its process
    /// lost it, or never took it up) would otherwise wait for ever.
    fn abandoned_at(&self, lease: &Lease) -> Option<Instant> {
        if !lease.is_in_handoff() {
            return None;
        }
        let grace = self.ctx.config.graceful_handoff_timeout + self.ctx.config.lease_duration;
        self.expiry.unchanged_since(lease).map(|since| since + grace)
    }

    /// One assignment pass (reading the leases, and the rows unless given); returns when the
    /// next one is due (per-lease mode).
    async fn assignment_pass(&mut self, rows: Option<Vec<WorkerMetrics>>, balance_now: bool) -> Instant {
        let interval = self.ctx.config.assignment_interval();
        let rows = match rows {
            Some(rows) => Ok(rows),
            None => self.ctx.metrics_store.list_worker_metrics().await,
        };
        let (leases, rows) = match (self.ctx.lease_store.list_leases().await, rows) {
            (Ok(leases), Ok(rows)) => (leases, rows),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "assignment pass could not read the stores");
                self.pass_owed = true;
                return Instant::now() + interval;
            }
        };
        self.pass_owed = false;
        let now = Instant::now();
        for worker in self.expiry.observe_all(&leases, now) {
            self.liveness.forgive(&worker);
        }
        if !self.heartbeat_mode() {
            self.liveness.observe_all(&rows, now);
            // A mixed fleet: heartbeat workers among per-lease ones are judged by their rows.
            self.confirm_deaths().await;
        }
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
        if !self.heartbeat_mode() {
            // Per-lease mode has no row reads of its own: the standbys are stamped from these.
            let mut eligible: Vec<String> = workers.iter().map(|w| w.worker_id.clone()).collect();
            eligible.sort();
            self.eligible = eligible;
        }
        let open: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
        let infos: Vec<LeaseInfo> = open
            .iter()
            .map(|l| LeaseInfo {
                lease_key: l.lease_key.clone(),
                owner: l.lease_owner.clone(),
                in_handoff: l.is_in_handoff(),
                expired: self.is_expired(l, now),
                throughput_kbps: l.throughput_kbps,
            })
            .collect();
        let frequency = u64::from(self.ctx.config.assignment.variance_balancing_frequency);
        let balance = frequency > 0 && (balance_now || passes % frequency == 0);
        let plan = assignment::assign(AssignmentInput {
            leases: &infos,
            workers: &workers,
            config: &self.ctx.config.assignment,
            balance,
        });
        // The holder of an expired lease receives nothing until it is seen writing its leases
        // again: a dead worker's load just fell, so it would look least loaded; a worker cut off
        // from the lease table still reports its metrics.
        let expired_holders: Vec<String> =
            open.iter().filter(|l| self.is_expired(l, now)).filter_map(|l| l.holder().map(str::to_owned)).collect();
        for holder in expired_holders {
            self.liveness.exclude(&holder, now);
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
                (action, lease.holder().map(str::to_owned), result)
            })
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        let now = Instant::now();
        let mut written: HashMap<String, Lease> = HashMap::new();
        let mut touched: HashSet<String> = HashSet::new();
        for (action, previous, result) in writes {
            match result {
                Ok(lease) => {
                    tracing::info!(?action, "assignment written");
                    self.ctx.metrics.reassignments.increment(1);
                    self.expiry.observe(&lease, now);
                    touched.extend(lease.lease_owner.clone());
                    touched.extend(previous);
                    written.insert(lease.lease_key.clone(), lease);
                }
                Err(e) => {
                    tracing::info!(?action, error = %e, "assignment not written");
                    self.pass_owed = true;
                    if e.is_retryable() {
                        // The write may have landed (its reply was lost): tell both workers to
                        // look, or a recipient of a landed write would never hear of it.
                        touched.insert(action.to().to_owned());
                        touched.extend(previous);
                    }
                }
            }
        }
        let leases: Vec<Lease> =
            leases.into_iter().map(|l| written.remove(&l.lease_key).unwrap_or(l)).chain(unusable).collect();
        if leases.iter().any(|l| !l.is_finished() && l.lease_owner.is_none()) {
            // A lease found no worker (none eligible yet, or all at their maximum): try again.
            self.pass_owed = true;
        }
        self.signal_assignments(&leases, touched).await;

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
        let next = match self.expiry.next_expiry(&leases, now, |l| self.judged_by_counter(l)) {
            Some(at) => regular.min(at + Duration::from_millis(1)),
            None => regular,
        };
        self.leases = leases;
        next.max(now + Duration::from_millis(100))
    }

    /// Tells every heartbeat worker whose leases this pass changed (recipients and previous
    /// holders) to look at the lease table: one write per worker, with the number of leases it
    /// now owns.
    /// A signal that fails is sent again at the next row read ([`Self::scan_rows`]).
    async fn signal_assignments(&mut self, leases: &[Lease], mut touched: HashSet<String>) {
        let store = self.ctx.metrics_store.clone();
        touched.extend(std::mem::take(&mut self.unsignalled));
        for worker in touched.into_iter().filter(|w| self.liveness.has_heartbeat(w)) {
            let owned = leases.iter().filter(|l| !l.is_finished() && l.is_owned_by(&worker)).count() as u64;
            let signal = WorkerSignal::Assignments { assigned_leases: owned };
            match store.signal_worker(&worker, &signal).await {
                Ok(()) => tracing::debug!(%worker, owned, "signalled an assignment"),
                Err(e) => {
                    tracing::debug!(%worker, error = %e, "signalling an assignment failed; again at the next row read");
                    self.unsignalled.insert(worker);
                }
            }
        }
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
        assert_eq!(t.next_expiry(&[lease("a", Some("w1"), 2)], now, |_| true), Some(start + Duration::from_secs(16)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(t.is_expired(&lease("a", Some("w1"), 2), Instant::now()));
        // A counter seen again after a gap is still the same counter: the observation holds.
        t.observe_all(&[lease("a", Some("w1"), 3)], Instant::now());
        assert!(!t.is_expired(&lease("a", Some("w1"), 3), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_follows_row_changes() {
        let row = |id: &str, secs| WorkerMetrics::new(id, secs);
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
        let row = |secs| WorkerMetrics::new("java", secs);
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
        let row = |secs| WorkerMetrics::new("w1", secs);
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

    #[tokio::test(start_paused = true)]
    async fn a_gap_in_watching_a_heartbeat_row_is_not_a_slow_reporter() {
        // A standby watches the rows only while the lock looks stale: between two such periods a
        // heartbeat row's timestamp jumps by the gap, which must not read as a 35 s report
        // interval (that kept a dead worker eligible for over a minute after a takeover).
        let row = |secs| WorkerMetrics {
            heartbeat: Some(crate::store::WorkerHeartbeat {
                incarnation: "i".into(),
                beat: secs,
                lease_changes: 0,
                held_leases: 1,
                throughput_kbps: 0.0,
            }),
            ..WorkerMetrics::new("w0", secs)
        };
        let mut l = WorkerLiveness::new(Duration::from_secs(6));
        l.trust_first_sightings(false);
        l.observe_all(&[row(100)], Instant::now());
        tokio::time::advance(Duration::from_secs(35)).await;
        l.observe_all(&[row(135)], Instant::now());
        tokio::time::advance(Duration::from_secs(35)).await;
        // The worker died right after its heartbeat at 170 s; the standby sees that value now.
        l.observe_all(&[row(170)], Instant::now());
        assert!(!l.is_alive("w0", Instant::now()), "not seen changing while watched");
        tokio::time::advance(Duration::from_secs(2)).await;
        l.observe_all(&[row(172)], Instant::now());
        assert!(l.is_alive("w0", Instant::now()), "a change watched two seconds apart");
        tokio::time::advance(Duration::from_secs(6)).await;
        l.observe_all(&[row(172)], Instant::now());
        assert!(!l.is_alive("w0", Instant::now()), "unchanged for three heartbeats");
    }
}
