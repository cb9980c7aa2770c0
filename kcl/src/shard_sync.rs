//! Shard discovery: lists the stream's shards and creates the leases the lineage rules call for
//! ([`lineage::leases_to_create`](crate::lineage)). Run by the leader when it takes office and
//! every `shard_sync_interval`; a shard reaching its end also creates its children's leases at
//! once (in the shard consumer), so resharding does not wait for the periodic sync.

use std::collections::HashSet;

use crate::error::KclError;
use crate::lineage;
use crate::scheduler::WorkerContext;

/// Lists shards and creates missing leases; returns how many were created.
pub(crate) async fn sync(ctx: &WorkerContext) -> Result<usize, KclError> {
    let shards = ctx.kinesis.list_all_shards(&ctx.stream, None).await?;
    let existing: HashSet<String> = ctx.lease_store.list_leases().await?.into_iter().map(|l| l.lease_key).collect();
    let mut created = 0;
    for lease in lineage::leases_to_create(&shards, &existing, ctx.initial_position) {
        if ctx.lease_store.create_lease_if_not_exists(&lease).await? {
            tracing::info!(lease = %lease.lease_key, checkpoint = %lease.checkpoint, "created lease");
            created += 1;
        }
    }
    Ok(created)
}
