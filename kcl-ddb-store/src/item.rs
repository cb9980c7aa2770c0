//! Items ⇄ values: the KCL 3.x attribute names and types of the three tables.
//!
//! Lease table `<app>` (key `leaseKey`), coordinator state `<app>-CoordinatorState` (key `key`),
//! worker metrics `<app>-WorkerMetricStats` (key `wid`), as the Java KCL 3.0–3.4 writes them
//! (reference/kcl.md §b). Reading also accepts items of the KCL 3.5 single-table layout: items
//! whose `entityType` is not `LEASE` are not leases and are skipped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use kcl::Lease;
use kcl::lease::WriteToken;
use kcl::store::{LockItem, StandbyStamp, StoreError, WorkerHeartbeat, WorkerMetrics, WorkerSignals};
use kinesis_core::{ExtendedSequenceNumber, HashKeyRange};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Lease table attribute names (Java KCL `DynamoDBLeaseSerializer`).
pub mod lease_attr {
    /// Partition key: the shard id (single-stream applications).
    pub const LEASE_KEY: &str = "leaseKey";
    /// Holder of the lease; the GSI's partition key.
    pub const LEASE_OWNER: &str = "leaseOwner";
    /// Optimistic-lock and heartbeat counter.
    pub const LEASE_COUNTER: &str = "leaseCounter";
    /// Checkpoint: a sequence number or a sentinel.
    pub const CHECKPOINT: &str = "checkpoint";
    /// Sub-sequence number of the checkpoint.
    pub const CHECKPOINT_SUB: &str = "checkpointSubSequenceNumber";
    /// Prepared checkpoint.
    pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
    /// Sub-sequence number of the prepared checkpoint.
    pub const PENDING_CHECKPOINT_SUB: &str = "pendingCheckpointSubSequenceNumber";
    /// Application state of the prepared checkpoint.
    pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
    /// Owner changes since the last checkpoint.
    pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
    /// Parent shard ids (string set).
    pub const PARENT_SHARD_IDS: &str = "parentShardId";
    /// Child shard ids (string set).
    pub const CHILD_SHARD_IDS: &str = "childShardIds";
    /// Start of the shard's hash range (decimal).
    pub const STARTING_HASH_KEY: &str = "startingHashKey";
    /// End of the shard's hash range (decimal).
    pub const ENDING_HASH_KEY: &str = "endingHashKey";
    /// Throughput delivered to the processor, KB/s.
    pub const THROUGHPUT: &str = "throughputKBps";
    /// Previous owner during a graceful handoff.
    pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
    /// KCL 3.5 single-table entity type.
    pub const ENTITY_TYPE: &str = "entityType";
    /// The token of the last write `kcl` made (not a Java KCL attribute; the Java KCL ignores it).
    pub const LAST_WRITE_TOKEN: &str = "lastWriteToken";
}

/// Coordinator-state (lock) attribute names (DynamoDB lock client).
pub mod lock_attr {
    /// Partition key of the coordinator-state table.
    pub const KEY: &str = "key";
    /// Lock holder.
    pub const OWNER_NAME: &str = "ownerName";
    /// Version rewritten on every heartbeat.
    pub const RECORD_VERSION: &str = "recordVersionNumber";
    /// Lease duration in milliseconds, as a string.
    pub const LEASE_DURATION: &str = "leaseDuration";
    /// Set when the holder released the lock without deleting it.
    pub const IS_RELEASED: &str = "isReleased";
    /// Set by `kcl` leaders: the holder stops its shards when it cannot heartbeat the lock (not a
    /// lock-client attribute; the Java KCL ignores it).
    pub const HOLDER_FENCES_LEASES: &str = "holderFencesLeases";
}

/// Worker-metrics attribute names (Java KCL `WorkerMetricStats`).
pub mod metrics_attr {
    /// Partition key: the worker id.
    pub const WORKER_ID: &str = "wid";
    /// Last update, epoch seconds.
    pub const LAST_UPDATE: &str = "lut";
    /// Metric samples: map of metric name to list of numbers.
    pub const STATS: &str = "sts";
    /// Operating range: map of metric name to list of numbers.
    pub const OPERATING_RANGE: &str = "opr";

    // The heartbeat and the leader's signals of a worker in heartbeat-lease mode. None of these
    // is a Java KCL attribute: the Java KCL ignores attributes it does not know, and reads such a
    // row as a plain report.

    /// Heartbeat: the incarnation of the process that heartbeats the row (S). A row has a
    /// heartbeat exactly when it has this attribute.
    pub const HB_INCARNATION: &str = "hbInc";
    /// Heartbeat: the process's heartbeat count (N).
    pub const HB_BEAT: &str = "hbBeat";
    /// Heartbeat: the worker's count of lease-set changes the leader must act on (N).
    pub const HB_LEASE_CHANGES: &str = "hbChanges";
    /// Heartbeat: how many leases the worker holds (N).
    pub const HB_HELD_LEASES: &str = "hbLeases";
    /// Heartbeat: the held leases' summed throughput, KB/s (N).
    pub const HB_THROUGHPUT: &str = "hbKbps";
    /// Signal (written by the leader only): the assignment version, raised on every change of the
    /// worker's leases (N; absent = 0).
    pub const HB_ASSIGNMENT_VERSION: &str = "hbAsv";
    /// Signal: how many leases the leader had the worker own when it last raised the version (N;
    /// absent = 0).
    pub const HB_ASSIGNED_LEASES: &str = "hbAssigned";
    /// Signal: on the leader's standby, the leader lock's record version as last heartbeated (S;
    /// absent = no stamp).
    pub const HB_STANDBY_VERSION: &str = "hbStandby";
    /// Signal: with [`HB_STANDBY_VERSION`], the lock's lease duration in milliseconds (N).
    pub const HB_STANDBY_MILLIS: &str = "hbStandbyMs";
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn malformed(table: &str, details: impl Into<String>) -> StoreError {
    StoreError::Malformed { table: table.to_owned(), details: details.into() }
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str, table: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(text)) => {
            text.parse().map(Some).map_err(|_| malformed(table, format!("{name} is not a number: {text}")))
        }
        Some(_) => Err(malformed(table, format!("{name} is not of type N"))),
    }
}

fn get_ss(item: &Item, name: &str) -> Vec<String> {
    let mut values = match item.get(name) {
        Some(AttributeValue::Ss(values)) => values.clone(),
        Some(AttributeValue::L(values)) => values.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
        _ => Vec::new(),
    };
    values.sort();
    values
}

/// The full item the lease table holds for `lease` (what `create_lease_if_not_exists` writes).
pub fn lease_to_item(lease: &Lease) -> Item {
    use lease_attr::*;
    let mut item = Item::new();
    item.insert(LEASE_KEY.into(), s(&lease.lease_key));
    if let Some(owner) = &lease.lease_owner {
        item.insert(LEASE_OWNER.into(), s(owner));
    }
    item.insert(LEASE_COUNTER.into(), n(lease.lease_counter));
    item.insert(CHECKPOINT.into(), s(lease.checkpoint.checkpoint_text()));
    item.insert(CHECKPOINT_SUB.into(), n(lease.checkpoint.sub_sequence_number()));
    if let Some(pending) = &lease.pending_checkpoint {
        item.insert(PENDING_CHECKPOINT.into(), s(pending.checkpoint_text()));
        item.insert(PENDING_CHECKPOINT_SUB.into(), n(pending.sub_sequence_number()));
    }
    if let Some(state) = &lease.pending_checkpoint_state {
        item.insert(PENDING_CHECKPOINT_STATE.into(), AttributeValue::B(Blob::new(state.to_vec())));
    }
    item.insert(OWNER_SWITCHES.into(), n(lease.owner_switches_since_checkpoint));
    if !lease.parent_shard_ids.is_empty() {
        item.insert(PARENT_SHARD_IDS.into(), AttributeValue::Ss(lease.parent_shard_ids.clone()));
    }
    if !lease.child_shard_ids.is_empty() {
        item.insert(CHILD_SHARD_IDS.into(), AttributeValue::Ss(lease.child_shard_ids.clone()));
    }
    if let Some(range) = &lease.hash_key_range {
        item.insert(STARTING_HASH_KEY.into(), s(range.start().to_string()));
        item.insert(ENDING_HASH_KEY.into(), s(range.end().to_string()));
    }
    if let Some(tp) = lease.throughput_kbps {
        item.insert(THROUGHPUT.into(), n(tp));
    }
    if let Some(owner) = &lease.checkpoint_owner {
        item.insert(CHECKPOINT_OWNER.into(), s(owner));
    }
    if let Some(token) = &lease.last_write {
        item.insert(LAST_WRITE_TOKEN.into(), s(token.as_str()));
    }
    item
}

/// Reads a lease item; `Ok(None)` for items of another entity type (KCL 3.5 single table).
pub fn item_to_lease(item: &Item, table: &str) -> Result<Option<Lease>, StoreError> {
    use lease_attr::*;
    if get_s(item, ENTITY_TYPE).is_some_and(|t| t != "LEASE") {
        return Ok(None);
    }
    let key = get_s(item, LEASE_KEY).ok_or_else(|| malformed(table, "item without leaseKey"))?;
    let sub = get_n::<u64>(item, CHECKPOINT_SUB, table)?.unwrap_or(0);
    let checkpoint = match get_s(item, CHECKPOINT) {
        Some(text) => ExtendedSequenceNumber::parse(text, sub)
            .map_err(|e| malformed(table, format!("lease {key}: checkpoint: {e}")))?,
        None => ExtendedSequenceNumber::TrimHorizon,
    };
    let pending_checkpoint = match get_s(item, PENDING_CHECKPOINT) {
        Some(text) => {
            let sub = get_n::<u64>(item, PENDING_CHECKPOINT_SUB, table)?.unwrap_or(0);
            Some(
                ExtendedSequenceNumber::parse(text, sub)
                    .map_err(|e| malformed(table, format!("lease {key}: pendingCheckpoint: {e}")))?,
            )
        }
        None => None,
    };
    let pending_checkpoint_state = match item.get(PENDING_CHECKPOINT_STATE) {
        Some(AttributeValue::B(blob)) => Some(Bytes::copy_from_slice(blob.as_ref())),
        _ => None,
    };
    let hash_key_range = match (get_s(item, STARTING_HASH_KEY), get_s(item, ENDING_HASH_KEY)) {
        (Some(start), Some(end)) => Some(
            HashKeyRange::parse(start, end).map_err(|e| malformed(table, format!("lease {key}: hash range: {e}")))?,
        ),
        _ => None,
    };
    Ok(Some(Lease {
        lease_key: key.to_owned(),
        lease_owner: get_s(item, LEASE_OWNER).map(str::to_owned),
        lease_counter: get_n(item, LEASE_COUNTER, table)?.unwrap_or(0),
        checkpoint,
        pending_checkpoint,
        pending_checkpoint_state,
        owner_switches_since_checkpoint: get_n(item, OWNER_SWITCHES, table)?.unwrap_or(0),
        parent_shard_ids: get_ss(item, PARENT_SHARD_IDS),
        child_shard_ids: get_ss(item, CHILD_SHARD_IDS),
        hash_key_range,
        throughput_kbps: get_n(item, THROUGHPUT, table)?,
        checkpoint_owner: get_s(item, CHECKPOINT_OWNER).map(str::to_owned),
        last_write: get_s(item, LAST_WRITE_TOKEN).map(WriteToken::from_stored),
    }))
}

/// The lock item the coordinator-state table holds.
pub fn lock_to_item(lock: &LockItem) -> Item {
    use lock_attr::*;
    let mut item = Item::new();
    item.insert(KEY.into(), s(&lock.key));
    item.insert(OWNER_NAME.into(), s(&lock.owner));
    item.insert(RECORD_VERSION.into(), s(&lock.record_version));
    item.insert(LEASE_DURATION.into(), s(lock.lease_duration.as_millis().to_string()));
    if lock.is_released {
        item.insert(IS_RELEASED.into(), AttributeValue::Bool(true));
    }
    if lock.holder_fences_leases {
        item.insert(HOLDER_FENCES_LEASES.into(), AttributeValue::Bool(true));
    }
    item
}

/// Reads a lock item.
pub fn item_to_lock(item: &Item, table: &str) -> Result<LockItem, StoreError> {
    use lock_attr::*;
    let key = get_s(item, KEY).ok_or_else(|| malformed(table, "lock item without key"))?;
    let duration_ms: u64 = match item.get(LEASE_DURATION) {
        Some(AttributeValue::S(text)) | Some(AttributeValue::N(text)) => {
            text.parse().map_err(|_| malformed(table, format!("lock {key}: leaseDuration {text}")))?
        }
        _ => 0,
    };
    let is_released = match item.get(IS_RELEASED) {
        Some(AttributeValue::Bool(b)) => *b,
        Some(AttributeValue::S(text)) => text == "1" || text == "true",
        _ => false,
    };
    Ok(LockItem {
        key: key.to_owned(),
        owner: get_s(item, OWNER_NAME).unwrap_or_default().to_owned(),
        record_version: get_s(item, RECORD_VERSION).unwrap_or_default().to_owned(),
        lease_duration: Duration::from_millis(duration_ms),
        is_released,
        holder_fences_leases: matches!(item.get(HOLDER_FENCES_LEASES), Some(AttributeValue::Bool(true))),
    })
}

pub(crate) fn number_lists(map: &BTreeMap<String, Vec<f64>>) -> AttributeValue {
    AttributeValue::M(map.iter().map(|(k, v)| (k.clone(), AttributeValue::L(v.iter().map(n).collect()))).collect())
}

fn read_number_lists(item: &Item, name: &str, table: &str) -> Result<BTreeMap<String, Vec<f64>>, StoreError> {
    let Some(AttributeValue::M(map)) = item.get(name) else { return Ok(BTreeMap::new()) };
    map.iter()
        .map(|(k, v)| {
            let list = v.as_l().map_err(|_| malformed(table, format!("{name}.{k} is not a list")))?;
            let values = list
                .iter()
                .map(|x| {
                    x.as_n()
                        .ok()
                        .and_then(|t| t.parse::<f64>().ok())
                        .ok_or_else(|| malformed(table, format!("{name}.{k} holds a non-number")))
                })
                .collect::<Result<Vec<f64>, _>>()?;
            Ok((k.clone(), values))
        })
        .collect()
}

/// The item the worker-metrics table holds: the Java KCL's attributes, plus the heartbeat's when
/// there is one and the signals that differ from their defaults.
pub fn metrics_to_item(metrics: &WorkerMetrics) -> Item {
    use metrics_attr::*;
    let mut item = Item::new();
    item.insert(WORKER_ID.into(), s(&metrics.worker_id));
    item.insert(LAST_UPDATE.into(), n(metrics.last_update_secs));
    item.insert(STATS.into(), number_lists(&metrics.metric_stats));
    item.insert(OPERATING_RANGE.into(), number_lists(&metrics.operating_range));
    if let Some(heartbeat) = &metrics.heartbeat {
        item.extend(heartbeat_attributes(heartbeat));
    }
    let signals = &metrics.signals;
    if signals.assignment_version != 0 {
        item.insert(HB_ASSIGNMENT_VERSION.into(), n(signals.assignment_version));
    }
    if signals.assigned_leases != 0 {
        item.insert(HB_ASSIGNED_LEASES.into(), n(signals.assigned_leases));
    }
    if let Some(stamp) = &signals.standby {
        item.extend(standby_attributes(stamp));
    }
    item
}

/// The attributes a heartbeat writes (besides `lut`, `sts` and `opr`).
pub(crate) fn heartbeat_attributes(heartbeat: &WorkerHeartbeat) -> [(String, AttributeValue); 5] {
    use metrics_attr::*;
    [
        (HB_INCARNATION.into(), s(&heartbeat.incarnation)),
        (HB_BEAT.into(), n(heartbeat.beat)),
        (HB_LEASE_CHANGES.into(), n(heartbeat.lease_changes)),
        (HB_HELD_LEASES.into(), n(heartbeat.held_leases)),
        (HB_THROUGHPUT.into(), n(heartbeat.throughput_kbps)),
    ]
}

/// The attributes of a standby stamp.
pub(crate) fn standby_attributes(stamp: &StandbyStamp) -> [(String, AttributeValue); 2] {
    use metrics_attr::*;
    [
        (HB_STANDBY_VERSION.into(), s(&stamp.record_version)),
        (HB_STANDBY_MILLIS.into(), n(stamp.lease_duration.as_millis())),
    ]
}

/// A string attribute that must be of type S when present.
fn get_s_strict<'a>(item: &'a Item, name: &str, table: &str) -> Result<Option<&'a str>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(text)) => Ok(Some(text)),
        Some(_) => Err(malformed(table, format!("{name} is not of type S"))),
    }
}

/// Reads a worker-metrics item. An item without `hbInc` (every item the Java KCL writes) has no
/// heartbeat; absent signal attributes read as the defaults.
pub fn item_to_metrics(item: &Item, table: &str) -> Result<WorkerMetrics, StoreError> {
    use metrics_attr::*;
    let heartbeat = match get_s_strict(item, HB_INCARNATION, table)? {
        None => None,
        Some(incarnation) => Some(WorkerHeartbeat {
            incarnation: incarnation.to_owned(),
            beat: get_n(item, HB_BEAT, table)?.unwrap_or(0),
            lease_changes: get_n(item, HB_LEASE_CHANGES, table)?.unwrap_or(0),
            held_leases: get_n(item, HB_HELD_LEASES, table)?.unwrap_or(0),
            throughput_kbps: get_n(item, HB_THROUGHPUT, table)?.unwrap_or(0.0),
        }),
    };
    let standby = match get_s_strict(item, HB_STANDBY_VERSION, table)? {
        None => None,
        Some(record_version) => Some(StandbyStamp {
            record_version: record_version.to_owned(),
            lease_duration: Duration::from_millis(get_n(item, HB_STANDBY_MILLIS, table)?.unwrap_or(0)),
        }),
    };
    Ok(WorkerMetrics {
        worker_id: get_s(item, WORKER_ID).ok_or_else(|| malformed(table, "metrics item without wid"))?.to_owned(),
        last_update_secs: get_n(item, LAST_UPDATE, table)?.unwrap_or(0),
        metric_stats: read_number_lists(item, STATS, table)?,
        operating_range: read_number_lists(item, OPERATING_RANGE, table)?,
        heartbeat,
        signals: WorkerSignals {
            assignment_version: get_n(item, HB_ASSIGNMENT_VERSION, table)?.unwrap_or(0),
            assigned_leases: get_n(item, HB_ASSIGNED_LEASES, table)?.unwrap_or(0),
            standby,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat_row() -> WorkerMetrics {
        WorkerMetrics {
            metric_stats: [("C".to_owned(), vec![41.5, -1.0])].into_iter().collect(),
            operating_range: [("C".to_owned(), vec![100.0])].into_iter().collect(),
            heartbeat: Some(WorkerHeartbeat {
                incarnation: "0123456789abcdef".into(),
                beat: 42,
                lease_changes: 3,
                held_leases: 7,
                throughput_kbps: 512.25,
            }),
            signals: WorkerSignals {
                assignment_version: 9,
                assigned_leases: 7,
                standby: Some(StandbyStamp {
                    record_version: "v-17".into(),
                    lease_duration: Duration::from_millis(10_500),
                }),
            },
            ..WorkerMetrics::new("worker-a", 1_763_900_000)
        }
    }

    #[test]
    fn heartbeat_rows_round_trip() {
        let row = heartbeat_row();
        let item = metrics_to_item(&row);
        assert_eq!(item.get("hbInc"), Some(&s("0123456789abcdef")));
        assert_eq!(item.get("hbStandbyMs"), Some(&n(10_500)));
        assert_eq!(item_to_metrics(&item, "t").expect("readable"), row);

        // Default signals write nothing; a heartbeat without them round-trips too.
        let plain_signals = WorkerMetrics { signals: WorkerSignals::default(), ..row };
        let item = metrics_to_item(&plain_signals);
        for absent in ["hbAsv", "hbAssigned", "hbStandby", "hbStandbyMs"] {
            assert!(!item.contains_key(absent), "{absent} is written only when set");
        }
        assert_eq!(item_to_metrics(&item, "t").expect("readable"), plain_signals);
    }

    #[test]
    fn java_rows_have_no_heartbeat() {
        let java = WorkerMetrics {
            metric_stats: [("C".to_owned(), vec![10.0])].into_iter().collect(),
            ..WorkerMetrics::new("java-worker", 1_763_900_000)
        };
        let item = metrics_to_item(&java);
        assert_eq!(
            item.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(),
            ["lut", "opr", "sts", "wid"].into()
        );
        let read = item_to_metrics(&item, "t").expect("readable");
        assert_eq!(read.heartbeat, None);
        assert_eq!(read.signals, WorkerSignals::default());
        assert_eq!(read, java);
    }

    #[test]
    fn partial_and_malformed_heartbeat_attributes() {
        let mut item = metrics_to_item(&WorkerMetrics::new("w", 1));
        item.insert("hbInc".into(), s("inc"));
        let read = item_to_metrics(&item, "t").expect("missing counters read as 0");
        assert_eq!(
            read.heartbeat,
            Some(WorkerHeartbeat {
                incarnation: "inc".into(),
                beat: 0,
                lease_changes: 0,
                held_leases: 0,
                throughput_kbps: 0.0
            })
        );
        item.insert("hbBeat".into(), s("7"));
        assert!(matches!(item_to_metrics(&item, "t"), Err(StoreError::Malformed { .. })), "hbBeat of type S");
        item.insert("hbBeat".into(), n(7));
        item.insert("hbInc".into(), n(1));
        assert!(matches!(item_to_metrics(&item, "t"), Err(StoreError::Malformed { .. })), "hbInc of type N");
        item.insert("hbInc".into(), s("inc"));
        item.insert("hbStandby".into(), s("v"));
        item.insert("hbStandbyMs".into(), AttributeValue::N("-5".into()));
        assert!(matches!(item_to_metrics(&item, "t"), Err(StoreError::Malformed { .. })), "negative duration");
    }
}
