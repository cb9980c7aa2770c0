//! `quickstart`: the whole system in one process, no AWS account.
//!
//! A stream of 4 shards on the in-memory broker with the service's throttling on; a `kpl`
//! producer sending 200,000 records over 2,000 partition keys; three `kcl` workers sharing the
//! shards through in-memory lease stores. Mid-run a shard splits and one worker is killed (it
//! stops without releasing its leases, like a crashed host). Live progress goes to stderr once
//! a second; at the end a table: sent, delivered, received, unique, duplicates, lost (must be 0,
//! else the exit code is 1), per-key order violations, throttles absorbed, aggregation ratio
//! (user records per Kinesis record) and failover time (from the kill until every shard the
//! dead worker held is processed again by a live worker).
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Parser;
use examples::{parse_payload, payload};
use kcl::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor, ShutdownRequestedInput};
use kcl::store::memory::{MemoryCoordinatorStore, MemoryLeaseStore, MemoryWorkerMetricsStore};
use kcl::{InitialPosition, Scheduler, SchedulerHandle};
use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker, ShardId, StreamRef};
use kpl::{Producer, UserRecord};

const RECORDS: u64 = 200_000;
const KEYS: u64 = 2_000;
const RECORD_BYTES: usize = 100;
const SHARDS: u32 = 4;
const WORKERS: usize = 3;

#[derive(Default)]
struct Tally {
    records: u64,
    seen: HashSet<(String, u64)>,
    duplicates: u64,
    order_violations: u64,
    last_n: HashMap<String, u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Checker {
    tally: Arc<Mutex<Tally>>,
}

#[async_trait]
impl ShardRecordProcessor for Checker {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), kcl::ProcessorError> {
        {
            let mut t = lock(&self.tally);
            for record in input.records {
                t.records += 1;
                let Some((key, n)) = parse_payload(&record.data) else { continue };
                if !t.seen.insert((key.to_owned(), n)) {
                    t.duplicates += 1;
                    continue;
                }
                let last = *t.last_n.entry(key.to_owned()).or_insert(n);
                if n < last {
                    t.order_violations += 1;
                }
                t.last_n.insert(key.to_owned(), last.max(n));
            }
        }
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), kcl::ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), kcl::ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

fn leases_line(workers: &[Option<SchedulerHandle>]) -> String {
    workers
        .iter()
        .enumerate()
        .map(|(i, w)| match w {
            Some(h) => {
                let state = h.state();
                format!("w{i}:{}{}", state.shards.len(), if state.is_leader { "*" } else { "" })
            }
            None => format!("w{i}:dead"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The whole system in one process, no AWS account: a kpl producer and three kcl workers on the
/// in-memory broker, a shard split and a killed worker mid-run, and a table of what arrived.
///
/// Exit code 0 when no record was lost, 1 otherwise, 2 for bad flags.
#[derive(Debug, Parser)]
#[command(name = "quickstart", version)]
struct Args {}

#[tokio::main]
async fn main() -> ExitCode {
    Args::parse();
    let started = Instant::now();
    let broker = MemoryBroker::new();
    let stream = StreamRef::from("quickstart");
    if let Err(e) = broker.create_stream(CreateStreamRequest::provisioned("quickstart", SHARDS)).await {
        eprintln!("quickstart: {e}");
        return ExitCode::FAILURE;
    }

    // Consumers: three workers sharing in-memory stores.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (leases, coordinator, metrics) = (
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(MemoryCoordinatorStore::new()),
        Arc::new(MemoryWorkerMetricsStore::new()),
    );
    let mut workers: Vec<Option<SchedulerHandle>> = Vec::new();
    for i in 0..WORKERS {
        let tally = tally.clone();
        let scheduler = Scheduler::builder("quickstart-app", stream.clone(), Arc::new(broker.clone()))
            .worker_id(format!("w{i}"))
            .initial_position(InitialPosition::TrimHorizon)
            .lease_store(leases.clone())
            .coordinator_store(coordinator.clone())
            .worker_metrics_store(metrics.clone())
            .processor_factory(move |_: &ShardId| Checker { tally: tally.clone() })
            .build();
        match scheduler {
            Ok(s) => workers.push(Some(s.start())),
            Err(e) => {
                eprintln!("quickstart: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    // Producer.
    let producer = match Producer::builder(broker.clone(), stream.clone()).build().await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("quickstart: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut counters = vec![0u64; KEYS as usize];
            let mut deliveries = Vec::with_capacity(RECORDS as usize);
            for i in 0..RECORDS {
                let k = (i % KEYS) as usize;
                let key = format!("k{k}");
                let n = counters[k];
                counters[k] += 1;
                match producer.send(UserRecord::new(key.clone(), payload(&key, n, RECORD_BYTES))).await {
                    Ok(d) => deliveries.push(d),
                    Err(e) => {
                        eprintln!("quickstart: send refused: {e}");
                        break;
                    }
                }
            }
            producer.flush().await;
            let mut failed = 0u64;
            for d in deliveries {
                if d.await.is_err() {
                    failed += 1;
                }
            }
            failed
        })
    };

    // Progress, the split, the kill, failover measurement.
    let mut split_done = false;
    let mut killed: Option<(Instant, BTreeSet<String>)> = None;
    let mut failover: Option<Duration> = None;
    let mut last_report = Instant::now();
    let deadline = started + Duration::from_secs(55);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = producer.stats();
        let unique = lock(&tally).seen.len() as u64;
        if !split_done && stats.user_records_delivered >= RECORDS / 4 {
            let shards = broker.list_all_shards(&stream, None).await.unwrap_or_default();
            if let Some(first) = shards.iter().find(|s| !s.is_closed()) {
                let at = first.hash_key_range.midpoint();
                match broker.split_shard(&stream, &first.shard_id, at).await {
                    Ok(()) => eprintln!("quickstart: split {} at its midpoint", first.shard_id),
                    Err(e) => eprintln!("quickstart: split failed: {e}"),
                }
            }
            split_done = true;
        }
        if killed.is_none() && split_done && unique >= RECORDS * 2 / 5 {
            // Kill a worker that is processing shards, preferring one that is not the leader.
            let victim = (0..WORKERS)
                .filter_map(|i| workers[i].as_ref().map(|h| (i, h.state())))
                .filter(|(_, state)| state.shards.values().any(|s| s.phase == kcl::ShardPhase::Processing))
                .max_by_key(|(_, state)| (!state.is_leader, state.shards.len()))
                .map(|(i, _)| i);
            if let Some(handle) = victim.and_then(|i| workers[i].take().map(|h| (i, h))) {
                let (victim, handle) = handle;
                let held: BTreeSet<String> = handle.state().shards.keys().cloned().collect();
                eprintln!(
                    "quickstart: killing worker w{victim} (holding {})",
                    held.iter().cloned().collect::<Vec<_>>().join(", ")
                );
                handle.kill().await;
                killed = Some((Instant::now(), held));
            }
        }
        if let (Some((at, held)), None) = (&killed, failover) {
            let live: BTreeSet<String> = workers
                .iter()
                .flatten()
                .flat_map(|h| {
                    h.state()
                        .shards
                        .into_iter()
                        .filter(|(_, s)| {
                            s.records_processed > 0
                                || matches!(s.phase, kcl::ShardPhase::Processing | kcl::ShardPhase::ShardEnded)
                        })
                        .map(|(k, _)| k)
                })
                .collect();
            // A held shard counts as recovered when a live worker processes it, or it finished.
            let finished: BTreeSet<String> = leases_finished(&leases).await;
            if held.iter().all(|k| live.contains(k) || finished.contains(k)) {
                failover = Some(at.elapsed());
                eprintln!("quickstart: failover complete after {:.1} s", at.elapsed().as_secs_f64());
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "quickstart: {:>5.1}s produced {:>7} consumed {:>7} throttled {:>5} leases [{}]",
                started.elapsed().as_secs_f64(),
                stats.user_records_delivered,
                unique,
                stats.throttles,
                leases_line(&workers)
            );
            last_report = Instant::now();
        }
        let done_producing = sender.is_finished();
        if done_producing && unique >= stats.user_records_delivered && (killed.is_none() || failover.is_some()) {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("quickstart: stopping at the time limit");
            break;
        }
    }
    let failed = if sender.is_finished() {
        sender.await.unwrap_or(RECORDS)
    } else {
        sender.abort();
        RECORDS
    };
    producer.shutdown().await;
    for handle in workers.into_iter().flatten() {
        handle.shutdown().await;
    }
    let stats = producer.stats();
    let t = lock(&tally);
    let unique = t.seen.len() as u64;
    let lost = stats.user_records_delivered.saturating_sub(unique);
    let ratio = stats.user_records_delivered as f64 / stats.kinesis_records_put.max(1) as f64;
    let rows = [
        ("sent", stats.user_records_sent.to_string()),
        ("delivered", stats.user_records_delivered.to_string()),
        ("failed (producer)", failed.to_string()),
        ("received", t.records.to_string()),
        ("unique", unique.to_string()),
        ("duplicates", t.duplicates.to_string()),
        ("lost", lost.to_string()),
        ("order violations (per key)", t.order_violations.to_string()),
        ("throttles absorbed", stats.throttles.to_string()),
        ("aggregation ratio", format!("{ratio:.1} user records / Kinesis record")),
        ("failover time", failover.map_or("n/a".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))),
        ("elapsed", format!("{:.1} s", started.elapsed().as_secs_f64())),
    ];
    println!();
    println!("+-----------------------------+------------------------------------------+");
    for (name, value) in rows {
        println!("| {name:<27} | {value:<40} |");
    }
    println!("+-----------------------------+------------------------------------------+");
    if lost == 0 && t.order_violations == 0 && failed == 0 && stats.user_records_delivered == RECORDS {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn leases_finished(store: &MemoryLeaseStore) -> BTreeSet<String> {
    use kcl::LeaseStore;
    store.list_leases().await.unwrap_or_default().into_iter().filter(|l| l.is_finished()).map(|l| l.lease_key).collect()
}
