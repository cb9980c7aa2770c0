//! What a fleet's coordination costs in DynamoDB per hour on an idle stream: requests and capacity
//! units for the lease, coordinator-state and worker-metrics tables, for `kcl` as configured by
//! default, next to the same figures computed for the Java KCL 3.x defaults.
//!
//! Ours is measured: N workers share S leases of an S-shard stream on the in-memory broker,
//! through the in-memory stores wrapped in `kcl_ddb_store::cost::Metered` (every call charged
//! with the DynamoDB requests `kcl-ddb-store` makes for it, items sized by DynamoDB's rules), on
//! paused time. Once every lease is held (the start is not counted), a window of simulated time
//! is counted and scaled to an hour. Both lease modes are measured: per-lease renewal and worker
//! heartbeats.
//!
//! The Java KCL's is computed from its default timers (`reference/kcl.md` §c.1, §c.3, §f, from
//! the KCL sources named there), with the same item sizes (the same schema) as measured in
//! per-lease mode, whose items are shaped as the Java KCL's (leases renewed with their
//! throughput, metrics rows without heartbeat attributes); `COST_MODE=heartbeat` alone sizes
//! them from heartbeat mode's items instead:
//!
//! * lease table: one renewal `UpdateItem` per lease every 3.308 s (`failoverTimeMillis / 3 −
//!   25 ms`); the leader's lease assignment scans the table every 20 s (counted eventually
//!   consistent, the SDK's default); every worker queries the owner index every 9.975 s;
//! * coordinator state: the leader's lock heartbeat every 30 s, each other worker's lock read
//!   every 30 s;
//! * worker metrics: each worker's report every 30 s; the leader reads the table at each
//!   assignment run (20 s).
//!
//! Not counted on either side: shard syncs' and cleanups' reads, checkpoints (there are no
//! records), table creation. The Java side is therefore a lower bound.
//!
//! With `COST_PEER=1` the same fleet runs in real time against the DynamoDB peer at
//! `DYNAMODB_ENDPOINT` (`scripts/test.sh --exec` sets it) through `kcl-ddb-store`'s own stores,
//! still metered; the requests the stores actually sent (their `StoreStats`, retries included)
//! are printed beside the model's, per table, as a check of the model (default size 4/3, a 60 s
//! window).
//!
//! Run: `cargo bench -p kinesis-kcl-ddb-store --bench coordination_cost` (sizes 4/3, 100/4,
//! 1000/10; `COST_SIZES=100/4` picks some, `COST_WINDOW_SECS` sets the counted window, 3,600 s by
//! default; `COST_MODE=heartbeat|per-lease|both`, both by default, picks `kcl`'s lease modes).
//! Prints a table per size and mode and one JSON line each.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kcl::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor};
use kcl::store::memory::{MemoryCoordinatorStore, MemoryLeaseStore, MemoryWorkerMetricsStore};
use kcl::store::{CoordinatorStore, LeaseStore, WorkerMetricsStore};
use kcl::{CpuMetrics, InitialPosition, LeaseMode, ProcessorError, Scheduler, SchedulerConfig, SchedulerHandle};
use kcl_ddb_store::cost::{self, CostMeter, DynamoDbOperation, RequestCost};
use kcl_ddb_store::{DynamoDbStores, StoreStats, StoreTable};
use kinesis_core::broker::{BrokerConfig, MemoryBroker};
use kinesis_core::{CreateStreamRequest, Kinesis, ShardId, StreamRef};

const TABLES: [(StoreTable, &str); 3] = [
    (StoreTable::Leases, "lease table"),
    (StoreTable::CoordinatorState, "coordinator state"),
    (StoreTable::WorkerMetrics, "worker metrics"),
];

struct Idle;

#[async_trait]
impl ShardRecordProcessor for Idle {
    async fn process_records(&mut self, _input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        Ok(input.checkpointer.checkpoint().await?)
    }
}

/// One size's measurement: the fleet's cost per hour by table and operation, and the mean item
/// sizes seen (for the Java figures).
struct Measured {
    per_hour: Vec<(StoreTable, DynamoDbOperation, RequestCost)>,
    lease_item_bytes: u64,
    metrics_item_bytes: u64,
    lock_item_bytes: u64,
    /// With the DynamoDB peer: the requests the stores sent per hour, per table (reads, writes).
    sent_per_hour: Option<Vec<(StoreTable, f64, f64)>>,
}

/// Where the stores keep their items.
enum Backend {
    /// kcl's in-memory stores, on paused time.
    Memory,
    /// kcl-ddb-store's stores on a DynamoDB endpoint, in real time.
    Peer(String),
}

/// One table's and operation's cost.
type CostLine = (StoreTable, DynamoDbOperation, RequestCost);

type Stores = (Arc<dyn LeaseStore>, Arc<dyn CoordinatorStore>, Arc<dyn WorkerMetricsStore>);

async fn stores(backend: &Backend, meter: &Arc<CostMeter>) -> Result<(Stores, Option<DynamoDbStores>), String> {
    match backend {
        Backend::Memory => Ok((
            (
                Arc::new(meter.meter(MemoryLeaseStore::new())),
                Arc::new(meter.meter(MemoryCoordinatorStore::new())),
                Arc::new(meter.meter(MemoryWorkerMetricsStore::new())),
            ),
            None,
        )),
        Backend::Peer(endpoint) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let app = format!("cost-{}-{}", std::process::id(), nanos % 1_000_000_000);
            let built = DynamoDbStores::builder().local(endpoint.clone()).await.application_name(app).build().await;
            let stores = built.map_err(|e| format!("the DynamoDB peer at {endpoint}: {e}"))?;
            Ok((
                (
                    Arc::new(meter.meter(stores.lease_store())),
                    Arc::new(meter.meter(stores.coordinator_store())),
                    Arc::new(meter.meter(stores.worker_metrics_store())),
                ),
                Some(stores),
            ))
        }
    }
}

/// The requests the stores sent so far, per table: (table, reads, writes).
fn sent(stats: &StoreStats) -> Vec<(StoreTable, u64, u64)> {
    TABLES.iter().map(|(t, _)| (*t, stats.table_reads(*t), stats.table_writes(*t))).collect()
}

async fn measure(
    leases: u32,
    workers: usize,
    window: Duration,
    backend: &Backend,
    mode: &LeaseMode,
) -> Result<Measured, String> {
    let broker = MemoryBroker::with_config(BrokerConfig::default().without_throttling());
    broker.create_stream(CreateStreamRequest::provisioned("cost", leases)).await.map_err(|e| e.to_string())?;
    let stream = StreamRef::from("cost");
    let meter = CostMeter::new();
    let ((lease_store, coordinator_store, metrics_store), peer) = stores(backend, &meter).await?;
    let mut handles: Vec<SchedulerHandle> = Vec::new();
    for i in 0..workers {
        let handle = Scheduler::builder("cost-app", stream.clone(), Arc::new(broker.clone()))
            .worker_id(format!("worker-{i}"))
            .initial_position(InitialPosition::TrimHorizon)
            .lease_store(lease_store.clone())
            .coordinator_store(coordinator_store.clone())
            .worker_metrics_store(metrics_store.clone())
            .config(SchedulerConfig::default().with_cpu_metrics(CpuMetrics::Disabled).with_lease_mode(mode.clone()))
            .processor_factory(|_: &ShardId| Idle)
            .build()
            .map_err(|e| e.to_string())?
            .start();
        handles.push(handle);
    }

    // The start: until every lease is held and has stayed so for a while.
    let mut settled_for = Duration::ZERO;
    let mut waited = Duration::ZERO;
    let step = Duration::from_secs(1);
    while settled_for < Duration::from_secs(30) {
        tokio::time::sleep(step).await;
        waited += step;
        let held: usize = handles.iter().map(|h| h.state().shards.len()).sum();
        settled_for = if held == leases as usize { settled_for + step } else { Duration::ZERO };
        if waited > Duration::from_secs(600) {
            return Err(format!("only {held} of {leases} leases held after {} s", waited.as_secs()));
        }
    }

    meter.reset();
    let sent_before = peer.as_ref().map(|stores| sent(stores.stats()));
    tokio::time::sleep(window).await;
    let factor = 3600.0 / window.as_secs_f64();
    let snapshot = meter.snapshot();
    let sent_per_hour = peer.as_ref().zip(sent_before).map(|(peer, before)| {
        sent(peer.stats())
            .into_iter()
            .zip(before)
            .map(|((table, reads, writes), (_, reads_before, writes_before))| {
                (table, (reads - reads_before) as f64 * factor, (writes - writes_before) as f64 * factor)
            })
            .collect()
    });
    for handle in handles {
        handle.kill().await;
    }

    let mean = |table: StoreTable, operation: DynamoDbOperation| {
        snapshot
            .iter()
            .find(|(t, o, _)| *t == table && *o == operation)
            .map_or(0, |(_, _, cost)| cost.bytes / cost.items.max(1))
    };
    Ok(Measured {
        per_hour: snapshot.iter().map(|(t, o, cost)| (*t, *o, cost.scaled(factor))).collect(),
        lease_item_bytes: mean(StoreTable::Leases, DynamoDbOperation::Scan),
        // Plain reports (per-lease mode) are PutItems; in heartbeat-lease mode there are none, and
        // the rows as listed stand in (a few heartbeat attributes larger than a Java KCL row).
        metrics_item_bytes: match mean(StoreTable::WorkerMetrics, DynamoDbOperation::PutItem) {
            0 => mean(StoreTable::WorkerMetrics, DynamoDbOperation::Scan),
            bytes => bytes,
        },
        lock_item_bytes: mean(StoreTable::CoordinatorState, DynamoDbOperation::UpdateItem),
        sent_per_hour,
    })
}

/// The Java KCL 3.x defaults' cost per hour (see the file's documentation for the sources),
/// charged by the same rules as ours.
fn java_kcl(leases: u32, workers: usize, measured: &Measured) -> Vec<(StoreTable, DynamoDbOperation, RequestCost)> {
    let (s, w) = (f64::from(leases), workers as f64);
    let per_hour = |period_secs: f64| 3600.0 / period_secs;
    let rewrite = |bytes: u64| cost::write_cost(bytes, bytes, 0);
    let table_scan = |rows: u64, bytes: u64| cost::paged_read_cost((0..rows).map(|_| bytes), false);
    // One worker's share of the leases, as its owner-index query returns them.
    let owned_keys = (s / w).ceil() as u64;
    let owner_query = cost::paged_read_cost(
        (0..owned_keys).map(|_| cost::index_entry_size("worker-0", "shardId-000000000000")),
        false,
    );
    vec![
        (
            StoreTable::Leases,
            DynamoDbOperation::UpdateItem,
            rewrite(measured.lease_item_bytes).scaled(s * per_hour(3.308)),
        ),
        (
            StoreTable::Leases,
            DynamoDbOperation::Scan,
            table_scan(u64::from(leases), measured.lease_item_bytes).scaled(per_hour(20.0)),
        ),
        (StoreTable::Leases, DynamoDbOperation::Query, owner_query.scaled(w * per_hour(9.975))),
        (
            StoreTable::CoordinatorState,
            DynamoDbOperation::UpdateItem,
            rewrite(measured.lock_item_bytes).scaled(per_hour(30.0)),
        ),
        (
            StoreTable::CoordinatorState,
            DynamoDbOperation::GetItem,
            cost::get_item_cost(measured.lock_item_bytes).scaled((w - 1.0) * per_hour(30.0)),
        ),
        (
            StoreTable::WorkerMetrics,
            DynamoDbOperation::UpdateItem,
            rewrite(measured.metrics_item_bytes).scaled(w * per_hour(30.0)),
        ),
        (
            StoreTable::WorkerMetrics,
            DynamoDbOperation::Scan,
            table_scan(workers as u64, measured.metrics_item_bytes).scaled(per_hour(20.0)),
        ),
    ]
}

fn totals(lines: &[(StoreTable, DynamoDbOperation, RequestCost)], table: Option<StoreTable>) -> (u64, u64, f64, f64) {
    let mut reads = 0;
    let mut writes = 0;
    let (mut rcu, mut wcu) = (0.0, 0.0);
    for (_, operation, cost) in lines.iter().filter(|(t, _, _)| table.is_none_or(|wanted| *t == wanted)) {
        match operation {
            DynamoDbOperation::GetItem | DynamoDbOperation::Query | DynamoDbOperation::Scan => reads += cost.requests,
            _ => writes += cost.requests,
        }
        rcu += cost.read_units;
        wcu += cost.write_units;
    }
    (reads, writes, rcu, wcu)
}

fn print_size(
    leases: u32,
    workers: usize,
    mode: &str,
    ours: &Measured,
    java: &[(StoreTable, DynamoDbOperation, RequestCost)],
) {
    println!("\n{leases} leases, {workers} workers, idle stream, ours in {mode} mode: per hour");
    println!("| table | operation | ours: requests | RCU | WCU | Java KCL 3.x: requests | RCU | WCU |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut keys: Vec<(StoreTable, DynamoDbOperation)> =
        ours.per_hour.iter().chain(java.iter()).map(|(t, o, _)| (*t, *o)).collect();
    keys.sort_by_key(|(t, o)| (TABLES.iter().position(|(table, _)| table == t), *o));
    keys.dedup();
    let find = |lines: &[(StoreTable, DynamoDbOperation, RequestCost)], t: StoreTable, o: DynamoDbOperation| {
        lines.iter().find(|(lt, lo, _)| *lt == t && *lo == o).map(|(_, _, c)| *c).unwrap_or_default()
    };
    for (table, operation) in keys {
        let name = TABLES.iter().find(|(t, _)| *t == table).map_or("?", |(_, n)| n);
        let (a, b) = (find(&ours.per_hour, table, operation), find(java, table, operation));
        println!(
            "| {name} | {} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} |",
            operation.name(),
            a.requests,
            a.read_units,
            a.write_units,
            b.requests,
            b.read_units,
            b.write_units
        );
    }
    for (table, name) in TABLES.iter().map(|(t, n)| (Some(*t), *n)).chain([(None, "all tables")]) {
        let (ours_reads, ours_writes, ours_rcu, ours_wcu) = totals(&ours.per_hour, table);
        let (java_reads, java_writes, java_rcu, java_wcu) = totals(java, table);
        println!(
            "| **{name}** | reads / writes | {ours_reads} / {ours_writes} | {ours_rcu:.0} | {ours_wcu:.0} | {java_reads} / {java_writes} | {java_rcu:.0} | {java_wcu:.0} |"
        );
    }
    if let Some(sent) = &ours.sent_per_hour {
        println!(
            "\nsent to the DynamoDB peer (the stores' own counters, retries included) beside the model, per hour:"
        );
        println!("| table | sent: reads / writes | model: reads / writes |");
        println!("|---|---:|---:|");
        for (table, reads, writes) in sent {
            let name = TABLES.iter().find(|(t, _)| t == table).map_or("?", |(_, n)| n);
            let (model_reads, model_writes, _, _) = totals(&ours.per_hour, Some(*table));
            println!("| {name} | {reads:.0} / {writes:.0} | {model_reads} / {model_writes} |");
        }
    }
    let (ours_reads, ours_writes, ours_rcu, ours_wcu) = totals(&ours.per_hour, None);
    let (java_reads, java_writes, java_rcu, java_wcu) = totals(java, None);
    println!(
        "{{\"leases\": {leases}, \"workers\": {workers}, \"mode\": \"{mode}\", \"ours\": {{\"reads_per_hour\": {ours_reads}, \"writes_per_hour\": {ours_writes}, \"rcu_per_hour\": {ours_rcu:.0}, \"wcu_per_hour\": {ours_wcu:.0}}}, \"java_kcl\": {{\"reads_per_hour\": {java_reads}, \"writes_per_hour\": {java_writes}, \"rcu_per_hour\": {java_rcu:.0}, \"wcu_per_hour\": {java_wcu:.0}}}, \"lease_item_bytes\": {}, \"metrics_item_bytes\": {}, \"lock_item_bytes\": {}}}",
        ours.lease_item_bytes, ours.metrics_item_bytes, ours.lock_item_bytes
    );
}

fn sizes(peer: bool) -> Vec<(u32, usize)> {
    let default = if peer { vec![(4, 3)] } else { vec![(4, 3), (100, 4), (1000, 10)] };
    let Ok(text) = std::env::var("COST_SIZES") else { return default };
    let parsed: Option<Vec<(u32, usize)>> = text
        .split(',')
        .map(|pair| {
            let (leases, workers) = pair.trim().split_once('/')?;
            Some((leases.parse().ok()?, workers.parse().ok()?))
        })
        .collect();
    match parsed {
        Some(sizes) if !sizes.is_empty() && sizes.iter().all(|&(l, w)| (1..=1000).contains(&l) && w > 0) => sizes,
        _ => {
            eprintln!("coordination_cost: COST_SIZES is leases/workers pairs (1 to 1000 leases), e.g. 100/4,1000/10");
            std::process::exit(2);
        }
    }
}

fn main() {
    let backend = match std::env::var("COST_PEER").ok().filter(|v| !v.is_empty() && v != "0") {
        None => Backend::Memory,
        Some(_) => match std::env::var("DYNAMODB_ENDPOINT") {
            Ok(endpoint) if !endpoint.is_empty() => Backend::Peer(endpoint),
            _ => {
                eprintln!("coordination_cost: COST_PEER needs DYNAMODB_ENDPOINT (run it under scripts/test.sh --exec)");
                std::process::exit(2);
            }
        },
    };
    let peer = matches!(backend, Backend::Peer(_));
    // An hour of paused time, so heartbeat mode's 15-minute safety nets are counted.
    let default_window = if peer { 60 } else { 3600 };
    let window = std::env::var("COST_WINDOW_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_window);
    let window = Duration::from_secs(window);
    let heartbeat = LeaseMode::WorkerHeartbeat(kcl::HeartbeatConfig::default());
    let modes: Vec<(&str, LeaseMode)> = match std::env::var("COST_MODE").as_deref() {
        Ok("heartbeat") => vec![("heartbeat", heartbeat)],
        Ok("per-lease") => vec![("per-lease", LeaseMode::PerLease)],
        // Per-lease first: its items (leases renewed with their throughput, plain metrics rows)
        // are the Java KCL's, and size the Java figures of both.
        Ok("both") | Err(_) => vec![("per-lease", LeaseMode::PerLease), ("heartbeat", heartbeat)],
        Ok(other) => {
            eprintln!("coordination_cost: COST_MODE is heartbeat, per-lease or both, not {other}");
            std::process::exit(2);
        }
    };
    let mut java_figures: std::collections::HashMap<(u32, usize), Vec<CostLine>> = std::collections::HashMap::new();
    for ((leases, workers), (mode_name, mode)) in
        sizes(peer).into_iter().flat_map(|size| modes.iter().map(move |mode| (size, mode.clone())))
    {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all().start_paused(!peer);
        let runtime = match builder.build() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("coordination_cost: cannot start a runtime: {e}");
                std::process::exit(1);
            }
        };
        let started = std::time::Instant::now();
        match runtime.block_on(measure(leases, workers, window, &backend, &mode)) {
            Ok(ours) => {
                let java =
                    java_figures.entry((leases, workers)).or_insert_with(|| java_kcl(leases, workers, &ours)).clone();
                print_size(leases, workers, mode_name, &ours, &java);
                eprintln!(
                    "coordination_cost: {leases}/{workers} ({mode_name}) took {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                eprintln!("coordination_cost: {leases} leases, {workers} workers: {e}");
                std::process::exit(1);
            }
        }
    }
}
