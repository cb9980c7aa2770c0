//! Shard lineage rules as pure functions: which shards get leases and at what position, and
//! which finished leases may be deleted.
//!
//! * **Creation.** A shard gets a lease unless it has one. A shard whose parent already had a
//!   lease before this pass is a child of resharding and starts at `TRIM_HORIZON` (every record
//!   after its parents' ends). Other shards start at the configured initial position — including
//!   descendants of shards created in the same pass, so an `AT_TIMESTAMP` start does not deliver
//!   older records from a child. With `LATEST`, closed shards without a leased parent get no lease
//!   (there is nothing after their end). A closed shard that has a leased descendant gets no
//!   lease either: its data was handled before (its own lease may have been cleaned up), and
//!   re-creating it would process it again.
//! * **Blocking.** A child is processed only once every parent lease is finished (`SHARD_END`)
//!   or absent; a parent without a lease does not block (see the shard consumer).
//! * **Cleanup.** A finished lease is deleted once each of its children has a lease that has
//!   started — checkpointed past its starting sentinel, or owned by a worker while every one of
//!   its parents is finished or gone (so the worker is past waiting and processing it; a child
//!   that has not checkpointed yet, e.g. an idle shard, still counts) — or whose lease is
//!   already gone. A merge child waiting for its other parent has not started: the finished
//!   parent's lease stays until then. (Deleting it earlier would not break the blocking rule —
//!   a missing parent does not block — but the KCL keeps parents until their children run, and
//!   so does this crate.)

use std::collections::{HashMap, HashSet};

use kinesis_core::{ExtendedSequenceNumber, Shard};

use crate::config::InitialPosition;
use crate::lease::Lease;

/// The checkpoint a new lease starts at for an initial position.
pub(crate) fn initial_checkpoint(position: InitialPosition) -> ExtendedSequenceNumber {
    match position {
        InitialPosition::Latest => ExtendedSequenceNumber::Latest,
        InitialPosition::TrimHorizon => ExtendedSequenceNumber::TrimHorizon,
        InitialPosition::AtTimestamp(_) => ExtendedSequenceNumber::AtTimestamp,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Decision {
    Existing,
    Created,
    Skipped,
}

/// The leases to create for `shards`, given the keys of the leases that exist.
pub(crate) fn leases_to_create(shards: &[Shard], existing: &HashSet<String>, initial: InitialPosition) -> Vec<Lease> {
    let by_id: HashMap<&str, &Shard> = shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for shard in shards {
        for parent in shard.parents() {
            children.entry(parent.as_str()).or_default().push(shard.shard_id.as_str());
        }
    }
    let mut leased_descendant: HashMap<&str, bool> = HashMap::new();
    let mut decisions: HashMap<&str, Decision> = HashMap::new();
    let mut created = Vec::new();
    for shard in shards {
        decide(
            shard.shard_id.as_str(),
            &by_id,
            &children,
            existing,
            initial,
            &mut leased_descendant,
            &mut decisions,
            &mut created,
        );
    }
    created
}

fn has_leased_descendant<'a>(
    id: &'a str,
    children: &HashMap<&'a str, Vec<&'a str>>,
    existing: &HashSet<String>,
    memo: &mut HashMap<&'a str, bool>,
) -> bool {
    if let Some(&known) = memo.get(id) {
        return known;
    }
    // Guard against cycles in malformed listings.
    memo.insert(id, false);
    let found = children.get(id).is_some_and(|kids| {
        kids.iter().any(|kid| existing.contains(*kid) || has_leased_descendant(kid, children, existing, memo))
    });
    memo.insert(id, found);
    found
}

#[allow(clippy::too_many_arguments)]
fn decide<'a>(
    id: &'a str,
    by_id: &HashMap<&'a str, &'a Shard>,
    children: &HashMap<&'a str, Vec<&'a str>>,
    existing: &HashSet<String>,
    initial: InitialPosition,
    leased_descendant: &mut HashMap<&'a str, bool>,
    decisions: &mut HashMap<&'a str, Decision>,
    created: &mut Vec<Lease>,
) -> Decision {
    if let Some(&d) = decisions.get(id) {
        return d;
    }
    // Provisional, against cycles.
    decisions.insert(id, Decision::Skipped);
    // A lease whose shard is no longer listed (expired past retention) still makes its children
    // children of resharding: they start at TRIM_HORIZON, never at the initial position.
    if existing.contains(id) {
        decisions.insert(id, Decision::Existing);
        return Decision::Existing;
    }
    let Some(shard) = by_id.get(id) else { return Decision::Skipped };
    let decision = if shard.is_closed() && has_leased_descendant(id, children, existing, leased_descendant) {
        Decision::Skipped
    } else {
        let parents: Vec<Decision> = shard
            .parents()
            .map(|p| decide(p.as_str(), by_id, children, existing, initial, leased_descendant, decisions, created))
            .collect();
        let checkpoint = if parents.contains(&Decision::Existing) {
            Some(ExtendedSequenceNumber::TrimHorizon)
        } else if parents.contains(&Decision::Created) {
            Some(initial_checkpoint(initial))
        } else if shard.is_closed() && initial == InitialPosition::Latest {
            None
        } else {
            Some(initial_checkpoint(initial))
        };
        match checkpoint {
            Some(checkpoint) => {
                let mut lease = Lease::new(id, checkpoint);
                lease.parent_shard_ids = shard.parents().map(|p| p.to_string()).collect();
                lease.hash_key_range = Some(shard.hash_key_range);
                created.push(lease);
                Decision::Created
            }
            None => Decision::Skipped,
        }
    };
    decisions.insert(id, decision);
    decision
}

/// Keys of finished leases whose children have all started (see the module docs).
pub(crate) fn finished_leases_to_delete(leases: &[Lease]) -> Vec<String> {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
    let mut deletable = Vec::new();
    for lease in leases.iter().filter(|l| l.is_finished()) {
        let children: Vec<&str> = if lease.child_shard_ids.is_empty() {
            leases
                .iter()
                .filter(|l| l.parent_shard_ids.iter().any(|p| p == &lease.lease_key))
                .map(|l| l.lease_key.as_str())
                .collect()
        } else {
            lease.child_shard_ids.iter().map(String::as_str).collect()
        };
        if children.is_empty() {
            continue;
        }
        let started = children.iter().all(|child| match by_key.get(child) {
            None => !lease.child_shard_ids.is_empty(),
            Some(c) => {
                let parents_done =
                    c.parent_shard_ids.iter().all(|p| by_key.get(p.as_str()).is_none_or(|p| p.is_finished()));
                !c.checkpoint.is_sentinel() || c.is_finished() || (c.lease_owner.is_some() && parents_done)
            }
        });
        if started {
            deletable.push(lease.lease_key.clone());
        }
    }
    deletable
}

#[cfg(test)]
mod tests {
    use kinesis_core::shard::SequenceNumberRange;
    use kinesis_core::{HashKeyRange, SequenceNumber, ShardId};

    use super::*;

    fn shard(index: u64, parents: &[u64], closed: bool) -> Shard {
        let mut ps = parents.iter().map(|p| ShardId::from_index(*p));
        Shard {
            shard_id: ShardId::from_index(index),
            parent_shard_id: ps.next(),
            adjacent_parent_shard_id: ps.next(),
            hash_key_range: HashKeyRange::FULL,
            sequence_number_range: SequenceNumberRange {
                starting: SequenceNumber::from_u128(1),
                ending: closed.then(|| SequenceNumber::from_u128(9)),
            },
        }
    }

    fn keys(leases: &[Lease]) -> Vec<(String, ExtendedSequenceNumber)> {
        leases.iter().map(|l| (l.lease_key.clone(), l.checkpoint.clone())).collect()
    }

    fn id(i: u64) -> String {
        ShardId::from_index(i).to_string()
    }

    // 0 split into 1 and 2; 1 and 2 merged into 3.
    fn resharded() -> Vec<Shard> {
        vec![shard(0, &[], true), shard(1, &[0], true), shard(2, &[0], true), shard(3, &[1, 2], false)]
    }

    #[test]
    fn trim_horizon_creates_the_whole_lineage() {
        let created = leases_to_create(&resharded(), &HashSet::new(), InitialPosition::TrimHorizon);
        let th = ExtendedSequenceNumber::TrimHorizon;
        assert_eq!(keys(&created), vec![(id(0), th.clone()), (id(1), th.clone()), (id(2), th.clone()), (id(3), th)]);
        assert_eq!(created[3].parent_shard_ids, vec![id(1), id(2)]);
    }

    #[test]
    fn latest_skips_closed_shards() {
        let created = leases_to_create(&resharded(), &HashSet::new(), InitialPosition::Latest);
        assert_eq!(keys(&created), vec![(id(3), ExtendedSequenceNumber::Latest)]);
    }

    #[test]
    fn children_of_leased_shards_start_at_trim_horizon() {
        let existing: HashSet<String> = [id(0)].into_iter().collect();
        let shards = vec![shard(0, &[], true), shard(1, &[0], false), shard(2, &[0], false)];
        let created = leases_to_create(&shards, &existing, InitialPosition::Latest);
        let th = ExtendedSequenceNumber::TrimHorizon;
        assert_eq!(keys(&created), vec![(id(1), th.clone()), (id(2), th)]);
    }

    #[test]
    fn at_timestamp_descendants_created_together_keep_the_timestamp() {
        let shards = vec![shard(0, &[], true), shard(1, &[0], false)];
        let created =
            leases_to_create(&shards, &HashSet::new(), InitialPosition::AtTimestamp(std::time::SystemTime::UNIX_EPOCH));
        assert!(created.iter().all(|l| l.checkpoint == ExtendedSequenceNumber::AtTimestamp));
    }

    #[test]
    fn children_of_a_leased_parent_that_expired_start_at_trim_horizon() {
        // 0 split into 1 and 2 and expired past retention: the listing no longer shows it, but
        // its unfinished lease is still there.
        let existing: HashSet<String> = [id(0)].into_iter().collect();
        let shards = vec![shard(1, &[0], false), shard(2, &[0], false)];
        let created = leases_to_create(&shards, &existing, InitialPosition::Latest);
        let th = ExtendedSequenceNumber::TrimHorizon;
        assert_eq!(keys(&created), vec![(id(1), th.clone()), (id(2), th)]);
    }

    #[test]
    fn cleaned_up_ancestors_are_not_recreated() {
        // 0, 1 and 2 finished and were deleted; 3 has a lease.
        let existing: HashSet<String> = [id(3)].into_iter().collect();
        let created = leases_to_create(&resharded(), &existing, InitialPosition::TrimHorizon);
        assert!(created.is_empty(), "{:?}", keys(&created));
    }

    #[test]
    fn finished_parents_are_deleted_once_children_started() {
        let mut parent = Lease::new(id(0), ExtendedSequenceNumber::ShardEnd);
        parent.child_shard_ids = vec![id(1), id(2)];
        let mut c1 = Lease::new(id(1), ExtendedSequenceNumber::TrimHorizon);
        c1.parent_shard_ids = vec![id(0)];
        let mut c2 = c1.clone();
        c2.lease_key = id(2);
        assert!(finished_leases_to_delete(&[parent.clone(), c1.clone(), c2.clone()]).is_empty());
        c1.checkpoint = ExtendedSequenceNumber::at(SequenceNumber::from_u128(5));
        assert!(finished_leases_to_delete(&[parent.clone(), c1.clone(), c2.clone()]).is_empty());
        c2.lease_owner = Some("w1".into());
        assert_eq!(finished_leases_to_delete(&[parent.clone(), c1.clone(), c2.clone()]), vec![id(0)]);
        // A merge child owned by a worker but still waiting for its other (unfinished) parent
        // has not started: the finished parent stays.
        let mut a = Lease::new(id(1), ExtendedSequenceNumber::ShardEnd);
        a.child_shard_ids = vec![id(3)];
        let b = Lease::new(id(2), ExtendedSequenceNumber::at(SequenceNumber::from_u128(4)));
        let mut merged = Lease::new(id(3), ExtendedSequenceNumber::TrimHorizon);
        merged.parent_shard_ids = vec![id(1), id(2)];
        merged.lease_owner = Some("w1".into());
        assert!(finished_leases_to_delete(&[a.clone(), b.clone(), merged.clone()]).is_empty());
        // Once the other parent finished, the owned child is processing: both parents go.
        let mut b = b;
        b.checkpoint = ExtendedSequenceNumber::ShardEnd;
        b.child_shard_ids = vec![id(3)];
        assert_eq!(finished_leases_to_delete(&[a, b, merged]), vec![id(1), id(2)]);
        // An unfinished lease is never deleted.
        let open = Lease::new(id(7), ExtendedSequenceNumber::TrimHorizon);
        assert!(finished_leases_to_delete(&[open]).is_empty());
    }
}
