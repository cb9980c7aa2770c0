//! Shard discovery: lists the stream's shards and creates the leases the lineage rules call for
//! ([`lineage::leases_to_create`](crate::lineage)). Run by the leader when it takes office and
//! every `shard_sync_interval`; a shard reaching its end also creates its children's leases at
//! once (in the shard consumer), so resharding does not wait for the periodic sync.
//!
//! It also cleans up garbage leases, as the Java KCL does: a lease whose shard is missing from
//! the listing (the shard expired past retention, or never existed) is deleted once it has been
//! missing from every listing for `garbage_lease_cleanup_delay`. The lease table is read *before*
//! the shards are listed, so every lease judged was created before the listing began: a lease for
//! a shard newer than the listing is never mistaken for garbage.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;

use crate::context::WorkerContext;
use crate::error::KclError;
use crate::lineage;

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Synced {
    /// Leases created.
    pub created: usize,
    /// Garbage leases deleted.
    pub deleted: usize,
}

/// The leases a leader found without a shard, and since when (its own clock).
#[derive(Debug, Default)]
pub(crate) struct GarbageLeases {
    missing_since: HashMap<String, Instant>,
}

/// Lists shards, creates missing leases and deletes garbage leases.
/// `cached`: the lease table as the leader last read it (heartbeat mode, where the leader reads
/// it only on a change); `None` reads it now. A cached lease list is still read before the
/// listing, and creation is conditional, so a stale one creates nothing twice.
pub(crate) async fn sync(
    ctx: &WorkerContext,
    garbage: &mut GarbageLeases,
    cached: Option<Vec<crate::lease::Lease>>,
) -> Result<Synced, KclError> {
    let leases = match cached {
        Some(leases) => leases,
        None => ctx.lease_store.list_leases().await?,
    };
    let shards = ctx.kinesis.list_all_shards(&ctx.stream, None).await?;
    let now = Instant::now();
    let existing: HashSet<String> = leases.iter().map(|l| l.lease_key.clone()).collect();
    let mut synced = Synced::default();
    for lease in lineage::leases_to_create(&shards, &existing, ctx.initial_position) {
        if ctx.lease_store.create_lease_if_not_exists(&lease).await? {
            tracing::info!(lease = %lease.lease_key, checkpoint = %lease.checkpoint, "created lease");
            synced.created += 1;
        }
    }
    let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    let missing: HashSet<&str> = leases
        .iter()
        .filter(|l| l.shard_id().is_some() && !listed.contains(l.lease_key.as_str()))
        .map(|l| l.lease_key.as_str())
        .collect();
    garbage.missing_since.retain(|key, _| missing.contains(key.as_str()));
    for key in missing {
        let since = *garbage.missing_since.entry(key.to_owned()).or_insert(now);
        if now.saturating_duration_since(since) >= ctx.config.garbage_lease_cleanup_delay {
            ctx.lease_store.delete_lease(key).await?;
            garbage.missing_since.remove(key);
            tracing::info!(lease = %key, "deleted a lease whose shard no longer exists");
            synced.deleted += 1;
        }
    }
    Ok(synced)
}
