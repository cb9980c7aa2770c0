//! How a worker finds the leases the leader gave it: every `lease_discovery_interval` it asks the
//! lease store for the keys it owns (`list_lease_keys_owned_by`, a possibly lagging index), reads
//! each new one (`get_lease`, consistent), and starts a shard task for it when it is really
//! owned by this worker, not in a handoff (the previous owner may still checkpoint), not
//! finished, not quarantined by this worker's leader fence, and keyed by a shard id (a key that
//! names no shard is skipped and logged — `kcl` never guesses a shard). It renews the lease once
//! before starting, which both checks the ownership and starts the lease's local expiry clock.
//!
//! In heartbeat mode ([`LeaseMode::WorkerHeartbeat`](crate::config::LeaseMode)) the query runs
//! only when the worker's heartbeat row says the leader changed its assignments (the assignment
//! version moved), when its heartbeat recovers after a lapse, and every `discovery_interval`
//! (15 minutes) as a safety net; while the heartbeat is not current nothing is taken up. Since
//! nothing renews the held leases there, the same pass checks every held lease the index no
//! longer lists as this worker's with one write: a refusal shows the graceful handoff the
//! leader started (the shard stops gracefully) or the loss. A pass that finds fewer leases than
//! the leader says it assigned (the index lags behind the table), or a lease still in handoff to
//! this worker, asks for another pass with the next heartbeat.

use std::sync::Arc;

use std::sync::atomic::Ordering;

use tokio::time::MissedTickBehavior;

use crate::context::WorkerContext;
use crate::lease_renewer::RenewOutcome;
use crate::shard_consumer;

/// Passes after one assignment change that may retry because the index listed fewer leases than
/// the leader assigned.
const MAX_SHORTFALL_RETRIES: u32 = 5;

/// Discovers leases until shutdown or abort.
pub(crate) async fn run(ctx: Arc<WorkerContext>) {
    let interval = ctx.config.heartbeat().map_or(ctx.config.lease_discovery_interval, |h| h.discovery_interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = ctx.abort.cancelled() => return,
            () = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            () = ctx.discovery_wanted.notified() => {}
        }
        discover(&ctx).await;
    }
}

/// One discovery pass.
pub(crate) async fn discover(ctx: &Arc<WorkerContext>) {
    // The leader fence is ending every held lease: take up nothing until it has.
    if ctx.fencing.has_passed() {
        return;
    }
    let heartbeat_mode = ctx.config.heartbeat().is_some();
    // Heartbeat mode: no lease is held without a current heartbeat.
    if heartbeat_mode && !ctx.fencing.heartbeat_is_current() {
        tracing::debug!("no current heartbeat; discovery waits for one");
        return;
    }
    let keys = match ctx.lease_store.list_lease_keys_owned_by(&ctx.worker_id).await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::warn!(error = %e, "listing owned leases failed");
            ctx.discovery_incomplete.store(heartbeat_mode, Ordering::Relaxed);
            return;
        }
    };
    tracing::debug!(owned = keys.len(), held = ctx.registry.len(), "discovery pass");
    if heartbeat_mode {
        check_unlisted(ctx, &keys).await;
        let short = (keys.len() as u64) < ctx.signals.borrow().assigned_leases;
        if short && ctx.shortfall_retries.fetch_add(1, Ordering::Relaxed) < MAX_SHORTFALL_RETRIES {
            ctx.discovery_incomplete.store(true, Ordering::Relaxed);
        }
    }
    for key in keys {
        if ctx.registry.contains(&key) || ctx.shutdown.is_cancelled() || ctx.abort.is_cancelled() {
            continue;
        }
        let lease = match ctx.lease_store.get_lease(&key).await {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(lease = %key, error = %e, "reading a discovered lease failed");
                ctx.discovery_incomplete.store(heartbeat_mode, Ordering::Relaxed);
                continue;
            }
        };
        if lease.is_owned_by(&ctx.worker_id) && lease.is_in_handoff() && heartbeat_mode {
            // Its previous owner is still checkpointing; look again with the next heartbeat.
            ctx.discovery_incomplete.store(true, Ordering::Relaxed);
        }
        if !lease.is_owned_by(&ctx.worker_id) || lease.is_in_handoff() || lease.is_finished() {
            continue;
        }
        if ctx.fencing.is_quarantined(&lease, &ctx.worker_id) {
            tracing::debug!(lease = %key, "lease quarantined by the leader fence; waiting for a new assignment");
            continue;
        }
        let Some(shard_id) = lease.shard_id() else {
            tracing::warn!(lease = %key, "lease key is not a shard id; not processing it");
            continue;
        };
        let held = Arc::new(ctx.hold(lease, shard_id));
        match held.renew(&*ctx.lease_store).await {
            RenewOutcome::Renewed => {}
            RenewOutcome::Failed(e) => {
                // Heartbeat mode: nothing else brings discovery back to it soon; try again with
                // the next heartbeat.
                tracing::debug!(lease = %key, error = %e, "taking up a discovered lease failed");
                ctx.discovery_incomplete.store(heartbeat_mode, Ordering::Relaxed);
                continue;
            }
            outcome => {
                tracing::debug!(lease = %key, ?outcome, "discovered lease not taken up");
                continue;
            }
        }
        tracing::info!(lease = %key, "starting to process lease");
        ctx.registry.insert(held.clone());
        ctx.metrics.current_leases.set(ctx.registry.len() as f64);
        ctx.add_shard(&key);
        shard_consumer::spawn(ctx.clone(), held);
    }
}

/// Heartbeat mode: every held lease the owner index no longer lists as this worker's is checked
/// with a write (a renewal). It lands when only the index lagged; a refusal shows a graceful
/// handoff (adopted: the shard stops gracefully and hands the lease on) or the loss (the shard
/// stops at once).
async fn check_unlisted(ctx: &Arc<WorkerContext>, keys: &[String]) {
    let listed: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    for held in ctx.registry.all() {
        if listed.contains(held.key.as_str()) || held.handoff_to().is_some() {
            continue;
        }
        let outcome = held.renew(&*ctx.lease_store).await;
        tracing::debug!(lease = %held.key, ?outcome, "checked a held lease the index no longer lists");
    }
}
