//! How a worker finds the leases the leader gave it: every `lease_discovery_interval` it asks the
//! lease store for the keys it owns (`list_lease_keys_owned_by`, a possibly lagging index), reads
//! each new one (`get_lease`, consistent), and starts a shard task for it when it is really
//! owned by this worker, not in a handoff (the previous owner may still checkpoint), not
//! finished, not quarantined by this worker's leader fence, and keyed by a shard id (a key that
//! names no shard is skipped and logged — `kcl` never guesses a shard). It renews the lease once
//! before starting, which both checks the ownership and starts the lease's local expiry clock.

use std::sync::Arc;

use tokio::time::MissedTickBehavior;

use crate::context::WorkerContext;
use crate::lease_renewer::RenewOutcome;
use crate::shard_consumer;

/// Discovers leases until shutdown or abort.
pub(crate) async fn run(ctx: Arc<WorkerContext>) {
    let mut ticker = tokio::time::interval(ctx.config.lease_discovery_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = ctx.abort.cancelled() => return,
            () = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
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
    let keys = match ctx.lease_store.list_lease_keys_owned_by(&ctx.worker_id).await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::warn!(error = %e, "listing owned leases failed");
            return;
        }
    };
    for key in keys {
        if ctx.registry.contains(&key) || ctx.shutdown.is_cancelled() || ctx.abort.is_cancelled() {
            continue;
        }
        let lease = match ctx.lease_store.get_lease(&key).await {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(lease = %key, error = %e, "reading a discovered lease failed");
                continue;
            }
        };
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
