//! What coordination costs in DynamoDB, estimated without DynamoDB: [`Metered`] wraps any of
//! `kcl`'s stores (in a benchmark, the in-memory ones on paused time) and charges every call
//! with the DynamoDB requests this crate's stores make for it, by table and operation: requests,
//! items, bytes, and the read and write capacity units they consume.
//!
//! The rules (Amazon DynamoDB Developer Guide, "DynamoDB item sizes and formats" and "Read and
//! write capacity" / `CapacityUnitCalculations.html`, `read-write-operations.html`):
//!
//! * An item's size is the sum of its attribute names' and values' sizes: a string its UTF-8
//!   bytes, a number 1 byte per two significant digits plus 1, a binary its raw bytes, a boolean
//!   or null 1 byte, a list or map 3 bytes plus its elements plus 1 byte per element; sets the
//!   sum of their members ([`item_size`]).
//! * A write consumes 1 write unit per started KiB of the larger of the item before and after;
//!   a write whose condition fails consumes the same. A change of the indexed attribute
//!   (`leaseOwner`) also writes the owner index: 1 unit to remove the old entry, 1 to add the
//!   new one.
//! * A consistent `GetItem` consumes 1 read unit per started 4 KiB of the item (an absent item
//!   still 1); a consistent `Scan` page 1 unit per started 4 KiB of the items it read; an
//!   eventually consistent `Scan` page, or a `Query` on the owner index (eventually consistent,
//!   as every index read is), half a unit per started 4 KiB. Pages end at 1 MB.
//! * The item an `UpdateItem` returns (`ReturnValues`, or the old item with a failed condition)
//!   costs no read units.
//!
//! The mapping from calls to requests is this crate's: consistent reads for the leader's lease
//! scans, lease reads and worker-row reads, an eventually consistent scan of the worker-metrics
//! table, `UpdateItem` for every change of a lease or the lock and for heartbeats and signals on
//! worker rows, `PutItem` for new leases, lock acquisitions and plain metrics reports. Internal
//! retries after throttling are not charged (the in-memory stores do not throttle).
//!
//! A signal's `UpdateItem` is charged for the row it lands on, whose size the caller does not
//! give: [`Metered`] remembers the size of each worker's row as it last saw it (a heartbeat's
//! answer, a listing, a read, a report) and falls back to the size of the smallest heartbeat row
//! the signal could land on (see [`Metered::signal_worker`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use kcl::Lease;
use kcl::lease::WriteToken;
use kcl::store::{
    CoordinatorStore, LeaseStore, LockItem, StoreError, WorkerHeartbeat, WorkerMetrics, WorkerMetricsStore,
    WorkerSignal, WorkerSignals,
};

use crate::StoreTable;
use crate::item::{Item, lease_attr, lease_to_item, lock_to_item, metrics_to_item};

/// The most a `Scan` or `Query` page reads before it ends.
const PAGE_BYTES: u64 = 1024 * 1024;
/// A read unit covers this many bytes.
const READ_UNIT_BYTES: u64 = 4 * 1024;
/// A write unit covers this many bytes.
const WRITE_UNIT_BYTES: u64 = 1024;

/// The DynamoDB requests the stores make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DynamoDbOperation {
    /// A consistent single-item read.
    GetItem,
    /// A whole-item write (new lease, lock acquisition, metrics row).
    PutItem,
    /// A conditional change of some attributes.
    UpdateItem,
    /// A conditional delete.
    DeleteItem,
    /// A page of the owner index.
    Query,
    /// A page of a whole table.
    Scan,
}

impl DynamoDbOperation {
    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            DynamoDbOperation::GetItem => "GetItem",
            DynamoDbOperation::PutItem => "PutItem",
            DynamoDbOperation::UpdateItem => "UpdateItem",
            DynamoDbOperation::DeleteItem => "DeleteItem",
            DynamoDbOperation::Query => "Query",
            DynamoDbOperation::Scan => "Scan",
        }
    }
}

/// What one kind of request to one table added up to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RequestCost {
    /// Requests (pages, for `Scan` and `Query`).
    pub requests: u64,
    /// Items read or written.
    pub items: u64,
    /// Bytes of those items, by DynamoDB's size rules.
    pub bytes: u64,
    /// Read capacity units consumed.
    pub read_units: f64,
    /// Write capacity units consumed, the owner index's included.
    pub write_units: f64,
}

impl RequestCost {
    fn add(&mut self, other: RequestCost) {
        self.requests += other.requests;
        self.items += other.items;
        self.bytes += other.bytes;
        self.read_units += other.read_units;
        self.write_units += other.write_units;
    }

    /// This cost scaled by `factor` (for example to an hour from a shorter run).
    pub fn scaled(&self, factor: f64) -> RequestCost {
        let scale = |n: u64| (n as f64 * factor).round() as u64;
        RequestCost {
            requests: scale(self.requests),
            items: scale(self.items),
            bytes: scale(self.bytes),
            read_units: self.read_units * factor,
            write_units: self.write_units * factor,
        }
    }
}

/// The running bill: one [`RequestCost`] per table and operation. Shared by the [`Metered`]
/// stores of a fleet; [`reset`](CostMeter::reset) starts a new measurement window.
#[derive(Debug, Default)]
pub struct CostMeter {
    costs: Mutex<BTreeMap<(StoreTable, DynamoDbOperation), RequestCost>>,
}

impl CostMeter {
    /// A meter with nothing charged.
    pub fn new() -> Arc<CostMeter> {
        Arc::new(CostMeter::default())
    }

    fn charge(&self, table: StoreTable, operation: DynamoDbOperation, cost: RequestCost) {
        let mut costs = self.costs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        costs.entry((table, operation)).or_default().add(cost);
    }

    /// Forgets everything charged so far.
    pub fn reset(&self) {
        self.costs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    /// Everything charged since the start or the last reset, by table and operation.
    pub fn snapshot(&self) -> Vec<(StoreTable, DynamoDbOperation, RequestCost)> {
        let costs = self.costs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        costs.iter().map(|(&(table, operation), &cost)| (table, operation, cost)).collect()
    }

    /// The sum over one table's operations.
    pub fn table_total(&self, table: StoreTable) -> RequestCost {
        let mut total = RequestCost::default();
        for (_, _, cost) in self.snapshot().into_iter().filter(|(t, _, _)| *t == table) {
            total.add(cost);
        }
        total
    }

    /// Wraps a store so that its calls are charged to this meter.
    pub fn meter<S>(self: &Arc<Self>, store: S) -> Metered<S> {
        Metered { inner: store, meter: self.clone(), row_sizes: Arc::default() }
    }
}

/// The size of a DynamoDB attribute value by the service's rules (without its name).
pub fn value_size(value: &AttributeValue) -> u64 {
    match value {
        AttributeValue::S(text) => text.len() as u64,
        AttributeValue::N(number) => number_size(number),
        AttributeValue::B(blob) => blob.as_ref().len() as u64,
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(texts) => texts.iter().map(|t| t.len() as u64).sum(),
        AttributeValue::Ns(numbers) => numbers.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(blobs) => blobs.iter().map(|b| b.as_ref().len() as u64).sum(),
        AttributeValue::L(values) => 3 + values.iter().map(|v| value_size(v) + 1).sum::<u64>(),
        AttributeValue::M(map) => 3 + map.iter().map(|(name, v)| name.len() as u64 + value_size(v) + 1).sum::<u64>(),
        // A type this crate never writes: counted as its debug text, an overestimate.
        other => format!("{other:?}").len() as u64,
    }
}

/// 1 byte per two significant digits, plus 1.
fn number_size(number: &str) -> u64 {
    let digits: String = number.chars().take_while(|c| *c != 'e' && *c != 'E').filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1) as u64;
    significant.div_ceil(2) + 1
}

/// The size of an item by DynamoDB's rules: its attribute names and values.
pub fn item_size(item: &Item) -> u64 {
    item.iter().map(|(name, value)| name.len() as u64 + value_size(value)).sum()
}

fn write_units(bytes: u64) -> f64 {
    bytes.div_ceil(WRITE_UNIT_BYTES).max(1) as f64
}

fn read_units(bytes: u64, consistent: bool) -> f64 {
    let units = bytes.div_ceil(READ_UNIT_BYTES).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

/// One write of an item of `before` bytes (0: new) that leaves `after` bytes, with the owner
/// index entries it removes and adds.
pub fn write_cost(before: u64, after: u64, index_writes: u64) -> RequestCost {
    RequestCost {
        requests: 1,
        items: 1,
        bytes: after.max(before),
        read_units: 0.0,
        write_units: write_units(after.max(before)) + index_writes as f64,
    }
}

/// One consistent read of an item of `size` bytes (0: absent).
pub fn get_item_cost(size: u64) -> RequestCost {
    RequestCost {
        requests: 1,
        items: u64::from(size > 0),
        bytes: size,
        read_units: read_units(size, true),
        write_units: 0.0,
    }
}

/// A `Scan` or `Query` reading items of `sizes` bytes, in pages of at most 1 MB; `consistent`
/// false for an index (half a unit per 4 KiB).
pub fn paged_read_cost(sizes: impl IntoIterator<Item = u64>, consistent: bool) -> RequestCost {
    let mut total = RequestCost::default();
    let mut page = RequestCost::default();
    let close = |page: &mut RequestCost, total: &mut RequestCost| {
        page.requests = 1;
        page.read_units = read_units(page.bytes, consistent);
        total.add(std::mem::take(page));
    };
    for size in sizes {
        if page.bytes > 0 && page.bytes + size > PAGE_BYTES {
            close(&mut page, &mut total);
        }
        page.items += 1;
        page.bytes += size;
    }
    // The last page, or the only one of an empty table (a scan still reads a page).
    close(&mut page, &mut total);
    total
}

/// The size of one owner-index entry: the index projects its keys only, `leaseOwner` and
/// `leaseKey`.
pub fn index_entry_size(owner: &str, lease_key: &str) -> u64 {
    (lease_attr::LEASE_OWNER.len() + owner.len() + lease_attr::LEASE_KEY.len() + lease_key.len()) as u64
}

fn lease_size(lease: &Lease) -> u64 {
    item_size(&lease_to_item(lease))
}

/// Owner index entries a change of owner rewrites: 1 to remove the old, 1 to add the new.
fn index_writes(before: Option<&str>, after: Option<&str>) -> u64 {
    if before == after { 0 } else { u64::from(before.is_some()) + u64::from(after.is_some()) }
}

fn metrics_size(row: &WorkerMetrics) -> u64 {
    item_size(&metrics_to_item(row))
}

/// The smallest row `signal` can land on (a heartbeat row without samples, with a
/// 32-character incarnation, as `kcl` draws them) with the signal applied: the estimate of a
/// signal's row when no row of the worker was seen.
fn signalled_row_estimate(worker_id: &str, signal: &WorkerSignal) -> u64 {
    let heartbeat = WorkerHeartbeat {
        incarnation: "0".repeat(32),
        beat: 1,
        lease_changes: 0,
        held_leases: 0,
        throughput_kbps: 0.0,
    };
    let signals = match signal {
        WorkerSignal::Assignments { assigned_leases } => {
            WorkerSignals { assignment_version: 1, assigned_leases: *assigned_leases, standby: None }
        }
        WorkerSignal::Standby(stamp) => WorkerSignals { standby: stamp.clone(), ..WorkerSignals::default() },
    };
    metrics_size(&WorkerMetrics { heartbeat: Some(heartbeat), signals, ..WorkerMetrics::new(worker_id, 0) })
}

/// A store whose calls are charged to a [`CostMeter`]; see the [module](self) for the rules.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    meter: Arc<CostMeter>,
    /// The size of each worker's row as last seen (worker-metrics stores only), for the charge of
    /// a signal, which does not see the row. Rebuilt from every listing, so it holds at most the
    /// table's rows and the few written since.
    row_sizes: Arc<Mutex<HashMap<String, u64>>>,
}

impl<S> Metered<S> {
    fn row_sizes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.row_sizes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn saw_row(&self, row: &WorkerMetrics) {
        self.row_sizes().insert(row.worker_id.clone(), metrics_size(row));
    }

    /// Charges a lease write from `expected` to what the call answered (the written lease, or on
    /// a lost condition the lease as it is now).
    fn charge_lease_update(&self, expected: &Lease, result: &Result<Lease, StoreError>) {
        let before = lease_size(expected);
        // A write that failed changed nothing, so it moved no index entry.
        let (after, index) = match result {
            Ok(written) => {
                (lease_size(written), index_writes(expected.lease_owner.as_deref(), written.lease_owner.as_deref()))
            }
            Err(StoreError::LeaseLost { current: Some(current), .. }) => (lease_size(current), 0),
            Err(_) => (before, 0),
        };
        self.meter.charge(StoreTable::Leases, DynamoDbOperation::UpdateItem, write_cost(before, after, index));
    }
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for Metered<S> {
    async fn create_lease_if_not_exists(&self, lease: &Lease) -> Result<bool, StoreError> {
        let result = self.inner.create_lease_if_not_exists(lease).await;
        let created = matches!(result, Ok(true));
        let index = u64::from(created && lease.lease_owner.is_some());
        let cost = write_cost(0, lease_size(lease), index);
        self.meter.charge(StoreTable::Leases, DynamoDbOperation::PutItem, cost);
        result
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, StoreError> {
        let result = self.inner.get_lease(lease_key).await;
        let size = result.as_ref().ok().and_then(Option::as_ref).map_or(0, lease_size);
        self.meter.charge(StoreTable::Leases, DynamoDbOperation::GetItem, get_item_cost(size));
        result
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let result = self.inner.list_leases().await;
        let sizes: Vec<u64> = result.as_ref().map(|leases| leases.iter().map(lease_size).collect()).unwrap_or_default();
        self.meter.charge(StoreTable::Leases, DynamoDbOperation::Scan, paged_read_cost(sizes, true));
        result
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        let result = self.inner.list_lease_keys_owned_by(owner).await;
        let sizes: Vec<u64> = result
            .as_ref()
            .map(|keys| keys.iter().map(|key| index_entry_size(owner, key)).collect())
            .unwrap_or_default();
        self.meter.charge(StoreTable::Leases, DynamoDbOperation::Query, paged_read_cost(sizes, false));
        result
    }

    async fn renew_lease(
        &self,
        expected: &Lease,
        throughput_kbps: Option<f64>,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        let result = self.inner.renew_lease(expected, throughput_kbps, token).await;
        self.charge_lease_update(expected, &result);
        result
    }

    async fn take_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        let result = self.inner.take_lease(expected, new_owner, token).await;
        self.charge_lease_update(expected, &result);
        result
    }

    async fn assign_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        let result = self.inner.assign_lease(expected, new_owner, token).await;
        self.charge_lease_update(expected, &result);
        result
    }

    async fn initiate_handoff(
        &self,
        expected: &Lease,
        next_owner: &str,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        let result = self.inner.initiate_handoff(expected, next_owner, token).await;
        self.charge_lease_update(expected, &result);
        result
    }

    async fn evict_lease(&self, expected: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        let result = self.inner.evict_lease(expected, token).await;
        self.charge_lease_update(expected, &result);
        result
    }

    async fn update_lease(&self, updated: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        let result = self.inner.update_lease(updated, token).await;
        self.charge_lease_update(updated, &result);
        result
    }

    async fn update_lease_meta(&self, lease: &Lease) -> Result<(), StoreError> {
        let result = self.inner.update_lease_meta(lease).await;
        let size = lease_size(lease);
        self.meter.charge(StoreTable::Leases, DynamoDbOperation::UpdateItem, write_cost(size, size, 0));
        result
    }

    async fn delete_lease(&self, lease_key: &str) -> Result<(), StoreError> {
        // The size of what is deleted: read from the wrapped store, not charged.
        let existing = self.inner.get_lease(lease_key).await.ok().flatten();
        let result = self.inner.delete_lease(lease_key).await;
        let size = existing.as_ref().map_or(0, lease_size);
        let index = u64::from(existing.as_ref().is_some_and(|lease| lease.lease_owner.is_some()));
        self.meter.charge(StoreTable::Leases, DynamoDbOperation::DeleteItem, write_cost(size, 0, index));
        result
    }
}

#[async_trait]
impl<S: CoordinatorStore> CoordinatorStore for Metered<S> {
    async fn get_lock(&self, key: &str) -> Result<Option<LockItem>, StoreError> {
        let result = self.inner.get_lock(key).await;
        let size = result.as_ref().ok().and_then(Option::as_ref).map_or(0, |lock| item_size(&lock_to_item(lock)));
        self.meter.charge(StoreTable::CoordinatorState, DynamoDbOperation::GetItem, get_item_cost(size));
        result
    }

    async fn acquire_lock(
        &self,
        key: &str,
        owner: &str,
        lease_duration: Duration,
        expected: Option<&LockItem>,
    ) -> Result<LockItem, StoreError> {
        let result = self.inner.acquire_lock(key, owner, lease_duration, expected).await;
        let size = match (&result, expected) {
            (Ok(lock), _) => item_size(&lock_to_item(lock)),
            (Err(_), Some(lock)) => item_size(&lock_to_item(lock)),
            (Err(_), None) => 0,
        };
        self.meter.charge(StoreTable::CoordinatorState, DynamoDbOperation::PutItem, write_cost(0, size, 0));
        result
    }

    async fn heartbeat_lock(&self, held: &LockItem) -> Result<LockItem, StoreError> {
        let result = self.inner.heartbeat_lock(held).await;
        let before = item_size(&lock_to_item(held));
        let after = result.as_ref().map_or(before, |lock| item_size(&lock_to_item(lock)));
        self.meter.charge(StoreTable::CoordinatorState, DynamoDbOperation::UpdateItem, write_cost(before, after, 0));
        result
    }

    async fn release_lock(&self, held: &LockItem) -> Result<(), StoreError> {
        let result = self.inner.release_lock(held).await;
        let size = item_size(&lock_to_item(held));
        self.meter.charge(StoreTable::CoordinatorState, DynamoDbOperation::DeleteItem, write_cost(size, 0, 0));
        result
    }
}

#[async_trait]
impl<S: WorkerMetricsStore> WorkerMetricsStore for Metered<S> {
    async fn put_worker_metrics(&self, metrics: &WorkerMetrics) -> Result<(), StoreError> {
        let result = self.inner.put_worker_metrics(metrics).await;
        // What the PutItem writes: a plain report, without heartbeat or signals.
        let plain = WorkerMetrics { heartbeat: None, signals: WorkerSignals::default(), ..metrics.clone() };
        let size = metrics_size(&plain);
        if result.is_ok() {
            self.saw_row(&plain);
        }
        // The row it replaces is the same worker's previous report, of about the same size.
        self.meter.charge(StoreTable::WorkerMetrics, DynamoDbOperation::PutItem, write_cost(size, size, 0));
        result
    }

    async fn list_worker_metrics(&self) -> Result<Vec<WorkerMetrics>, StoreError> {
        let result = self.inner.list_worker_metrics().await;
        let sizes: Vec<u64> = result.as_ref().map(|rows| rows.iter().map(metrics_size).collect()).unwrap_or_default();
        if let Ok(rows) = &result {
            *self.row_sizes() = rows.iter().zip(&sizes).map(|(row, &size)| (row.worker_id.clone(), size)).collect();
        }
        // Eventually consistent: half a unit per started 4 KiB of a page.
        self.meter.charge(StoreTable::WorkerMetrics, DynamoDbOperation::Scan, paged_read_cost(sizes, false));
        result
    }

    async fn get_worker_metrics(&self, worker_id: &str) -> Result<Option<WorkerMetrics>, StoreError> {
        let result = self.inner.get_worker_metrics(worker_id).await;
        let size = match &result {
            Ok(Some(row)) => {
                self.saw_row(row);
                metrics_size(row)
            }
            Ok(None) => {
                self.row_sizes().remove(worker_id);
                0
            }
            Err(_) => 0,
        };
        self.meter.charge(StoreTable::WorkerMetrics, DynamoDbOperation::GetItem, get_item_cost(size));
        result
    }

    async fn heartbeat_worker(&self, row: &WorkerMetrics, replaces: Option<&str>) -> Result<WorkerMetrics, StoreError> {
        let result = self.inner.heartbeat_worker(row, replaces).await;
        // The row before is the same worker's previous heartbeat, of about the same size as the
        // row after, which the UpdateItem returns (at no read cost).
        let (before, after) = match &result {
            Ok(written) => {
                self.saw_row(written);
                let size = metrics_size(written);
                (size, size)
            }
            // The refused write weighs the row that refused it against the row it would have written.
            Err(StoreError::HeartbeatRowTaken { current: Some(current) }) => {
                self.saw_row(current);
                (metrics_size(current), metrics_size(row))
            }
            Err(_) => (metrics_size(row), metrics_size(row)),
        };
        // A heartbeat with no heartbeat is refused before any request.
        if row.heartbeat.is_some() {
            self.meter.charge(StoreTable::WorkerMetrics, DynamoDbOperation::UpdateItem, write_cost(before, after, 0));
        }
        result
    }

    /// Charged as an `UpdateItem` of the worker's row as this wrapper last saw it, or, when it
    /// saw none, of the smallest heartbeat row the signal can land on (a 32-character
    /// incarnation, no samples, the signal applied): under 1 KiB either way for any row without
    /// large sample lists, so 1 write unit.
    async fn signal_worker(&self, worker_id: &str, signal: &WorkerSignal) -> Result<(), StoreError> {
        let result = self.inner.signal_worker(worker_id, signal).await;
        let seen = self.row_sizes().get(worker_id).copied();
        let size = seen.unwrap_or_else(|| signalled_row_estimate(worker_id, signal));
        self.meter.charge(StoreTable::WorkerMetrics, DynamoDbOperation::UpdateItem, write_cost(size, size, 0));
        result
    }

    async fn delete_worker_metrics(&self, worker_id: &str, expected_last_update_secs: u64) -> Result<(), StoreError> {
        let result = self.inner.delete_worker_metrics(worker_id, expected_last_update_secs).await;
        if result.is_ok() {
            self.row_sizes().remove(worker_id);
        }
        self.meter.charge(StoreTable::WorkerMetrics, DynamoDbOperation::DeleteItem, write_cost(0, 0, 0));
        result
    }
}

impl fmt::Display for RequestCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests, {} items, {} bytes, {:.1} RCU, {:.1} WCU",
            self.requests, self.items, self.bytes, self.read_units, self.write_units
        )
    }
}

#[cfg(test)]
mod tests {
    use kcl::store::memory::{MemoryLeaseStore, MemoryWorkerMetricsStore};
    use kinesis_core::ExtendedSequenceNumber;

    use super::*;

    fn charged(meter: &CostMeter, operation: DynamoDbOperation) -> RequestCost {
        meter.snapshot().into_iter().find(|(_, o, _)| *o == operation).map(|(_, _, cost)| cost).unwrap_or_default()
    }

    #[tokio::test]
    async fn each_call_is_charged_with_the_requests_the_dynamodb_store_makes() {
        let meter = CostMeter::new();
        let store = meter.meter(MemoryLeaseStore::new());
        let lease = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon);
        assert!(store.create_lease_if_not_exists(&lease).await.expect("create"));
        let size = lease_size(&lease);
        assert_eq!(charged(&meter, DynamoDbOperation::PutItem).bytes, size);
        assert_eq!(charged(&meter, DynamoDbOperation::PutItem).write_units, 1.0, "an unowned lease: no index entry");

        let taken = store.take_lease(&lease, "worker-1", &WriteToken::new()).await.expect("take");
        assert_eq!(charged(&meter, DynamoDbOperation::UpdateItem).write_units, 2.0, "the item and a new index entry");
        let renewed = store.renew_lease(&taken, None, &WriteToken::new()).await.expect("renew");
        let updates = charged(&meter, DynamoDbOperation::UpdateItem);
        assert_eq!((updates.requests, updates.write_units), (2, 3.0), "a renewal writes the item only");
        // A stale renewal loses its condition and still costs a write.
        assert!(store.renew_lease(&taken, None, &WriteToken::new()).await.is_err());
        assert_eq!(charged(&meter, DynamoDbOperation::UpdateItem).write_units, 4.0);
        store.assign_lease(&renewed, "worker-2", &WriteToken::new()).await.expect("assign");
        assert_eq!(
            charged(&meter, DynamoDbOperation::UpdateItem).write_units,
            7.0,
            "a new owner moves its index entry"
        );

        store.list_lease_keys_owned_by("worker-2").await.expect("query");
        assert_eq!(charged(&meter, DynamoDbOperation::Query).read_units, 0.5);
        store.list_leases().await.expect("scan");
        let scan = charged(&meter, DynamoDbOperation::Scan);
        assert_eq!((scan.requests, scan.items, scan.read_units), (1, 1, 1.0));
        store.get_lease("shardId-000000000009").await.expect("get");
        assert_eq!(charged(&meter, DynamoDbOperation::GetItem).read_units, 1.0, "an absent item still costs a read");

        meter.reset();
        assert!(meter.snapshot().is_empty());
    }

    #[tokio::test]
    async fn heartbeats_and_signals_are_updates_of_the_row() {
        let meter = CostMeter::new();
        let store = meter.meter(MemoryWorkerMetricsStore::new());
        let heartbeat = WorkerHeartbeat {
            incarnation: "a".repeat(32),
            beat: 1,
            lease_changes: 0,
            held_leases: 2,
            throughput_kbps: 10.5,
        };
        let row = WorkerMetrics {
            metric_stats: [("C".to_owned(), vec![10.0; 30])].into_iter().collect(),
            heartbeat: Some(heartbeat),
            ..WorkerMetrics::new("worker-1", 1_700_000_000)
        };
        let written = store.heartbeat_worker(&row, None).await.expect("heartbeat");
        let size = metrics_size(&written);
        let update = charged(&meter, DynamoDbOperation::UpdateItem);
        assert_eq!((update.requests, update.bytes, update.read_units, update.write_units), (1, size, 0.0, 1.0));
        assert_eq!(charged(&meter, DynamoDbOperation::GetItem), RequestCost::default(), "ReturnValues reads nothing");

        // The signal is charged for the row the heartbeat returned.
        store.signal_worker("worker-1", &WorkerSignal::Assignments { assigned_leases: 2 }).await.expect("signal");
        let update = charged(&meter, DynamoDbOperation::UpdateItem);
        assert_eq!((update.requests, update.bytes, update.write_units), (2, 2 * size, 2.0));
        // A row never seen: the estimate, a failed condition still charged.
        assert!(store.signal_worker("worker-2", &WorkerSignal::Standby(None)).await.is_err());
        let estimate = signalled_row_estimate("worker-2", &WorkerSignal::Standby(None));
        assert!(estimate > 0 && estimate < WRITE_UNIT_BYTES);
        assert_eq!(charged(&meter, DynamoDbOperation::UpdateItem).bytes, 2 * size + estimate);

        store.get_worker_metrics("worker-1").await.expect("get");
        let get = charged(&meter, DynamoDbOperation::GetItem);
        assert_eq!((get.requests, get.read_units), (1, 1.0), "a consistent read");
        assert!(get.bytes > size, "the signal made the row larger");
        store.list_worker_metrics().await.expect("scan");
        assert_eq!(charged(&meter, DynamoDbOperation::Scan).read_units, 0.5, "eventually consistent");
        // A second process refused: the stored row against the one it would have written.
        let other = WorkerMetrics {
            heartbeat: Some(WorkerHeartbeat { incarnation: "b".repeat(32), ..row.heartbeat.clone().expect("set") }),
            ..row
        };
        assert!(store.heartbeat_worker(&other, None).await.is_err());
        assert_eq!(charged(&meter, DynamoDbOperation::UpdateItem).requests, 4);
    }

    #[test]
    fn sizes_follow_dynamodbs_rules() {
        let mut item = Item::new();
        item.insert("leaseKey".into(), AttributeValue::S("shardId-000000000001".into()));
        item.insert("leaseCounter".into(), AttributeValue::N("12345".into()));
        item.insert("ok".into(), AttributeValue::Bool(true));
        item.insert(
            "l".into(),
            AttributeValue::L(vec![AttributeValue::N("0.5".into()), AttributeValue::S("ab".into())]),
        );
        // 8 + 20, 12 + (3 digits + 1), 2 + 1, 1 + (3 + (2 + 1) + (2 + 1)).
        assert_eq!(item_size(&item), 28 + 16 + 3 + 10);
        assert_eq!(number_size("100"), 2, "trailing zeroes are trimmed");
        assert_eq!(number_size("-0.00123"), 3, "leading zeroes and the sign are not digits");
        assert_eq!(number_size("0"), 2);
    }

    #[test]
    fn capacity_units_round_up_per_request_and_page() {
        assert_eq!(write_cost(0, 300, 0).write_units, 1.0);
        assert_eq!(write_cost(1500, 300, 2).write_units, 4.0, "the larger size, plus the index");
        let scan = paged_read_cost(vec![400; 5000], true);
        // 2,000,000 bytes: a full 1 MB page (2,621 items) and the rest.
        assert_eq!(scan.requests, 2);
        assert_eq!(scan.items, 5000);
        assert_eq!(scan.read_units, (2621_u64 * 400).div_ceil(4096) as f64 + (2379_u64 * 400).div_ceil(4096) as f64);
        let query = paged_read_cost(vec![50; 10], false);
        assert_eq!(query.read_units, 0.5, "an eventually consistent read is half a unit");
        assert_eq!(paged_read_cost(Vec::new(), true).requests, 1, "an empty scan still reads a page");
        assert_eq!(index_writes(Some("a"), Some("b")), 2);
        assert_eq!(index_writes(None, Some("b")), 1);
        assert_eq!(index_writes(Some("a"), Some("a")), 0);
    }
}
