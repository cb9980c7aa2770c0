//! Request counting, to keep DynamoDB cost visible and minimal.

use std::sync::atomic::{AtomicU64, Ordering};

/// Kind of request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    Read,
    Write,
}

/// One of the three KCL 3.x tables, to break the counts down by table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreTable {
    /// The lease table (`<app>`): renewals, checkpoints, takes, handoffs, shard sync.
    Leases,
    /// `<app>-CoordinatorState`: the leader lock.
    CoordinatorState,
    /// `<app>-WorkerMetricStats`: the workers' load reports.
    WorkerMetrics,
}

impl StoreTable {
    const ALL: [StoreTable; 3] = [StoreTable::Leases, StoreTable::CoordinatorState, StoreTable::WorkerMetrics];

    fn index(self) -> usize {
        match self {
            StoreTable::Leases => 0,
            StoreTable::CoordinatorState => 1,
            StoreTable::WorkerMetrics => 2,
        }
    }
}

/// Requests the stores made (retries included), by table and kind.
#[derive(Debug, Default)]
pub struct StoreStats {
    reads: [AtomicU64; 3],
    writes: [AtomicU64; 3],
    malformed: AtomicU64,
}

impl StoreStats {
    pub(crate) fn record(&self, table: StoreTable, op: Op) {
        let counters = match op {
            Op::Read => &self.reads,
            Op::Write => &self.writes,
        };
        counters[table.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    /// Lease items the scan skipped because they could not be read as leases.
    pub fn malformed_items(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Read requests (GetItem, Query, Scan pages) so far, all tables.
    pub fn reads(&self) -> u64 {
        StoreTable::ALL.iter().map(|&t| self.table_reads(t)).sum()
    }

    /// Write requests (PutItem, UpdateItem, DeleteItem) so far, all tables.
    pub fn writes(&self) -> u64 {
        StoreTable::ALL.iter().map(|&t| self.table_writes(t)).sum()
    }

    /// Read requests made to one table so far.
    pub fn table_reads(&self, table: StoreTable) -> u64 {
        self.reads[table.index()].load(Ordering::Relaxed)
    }

    /// Write requests made to one table so far.
    pub fn table_writes(&self, table: StoreTable) -> u64 {
        self.writes[table.index()].load(Ordering::Relaxed)
    }
}
