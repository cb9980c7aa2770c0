//! `consume`: a real `kcl` worker that checks what `produce` wrote.
//!
//! ```text
//! cargo run --release --example consume -- --stream S --app A [--endpoint URL] [--ddb-endpoint URL]
//!     [--worker-id W] [--expect N] [--idle-exit SECS] [--efo] [--no-cpu-metrics] [--out FILE]
//! ```
//!
//! Leases live in DynamoDB (through `kcl-ddb-store`, tables named after the application) when a
//! DynamoDB endpoint is given (`--ddb-endpoint`, `AWS_ENDPOINT_URL_DYNAMODB` or `AWS_ENDPOINT_URL`)
//! or when no Kinesis endpoint is (real AWS); otherwise in memory, for a single worker. Several
//! `consume` processes with different `--worker-id`s and the same `--app` share a stream's
//! shards. New leases start at TRIM_HORIZON.
//!
//! Every record's data must start with the `produce` header `"<key> <n> "`. `--out` appends one
//! JSON line per record: `key`, `n`, `shard`, `seq`, `sub`, `worker`, `ts_ms` (when processed,
//! Unix ms). The worker exits (gracefully: checkpoints, releases its leases) when N unique
//! records were seen, after SECS without a new record, or on Ctrl-C/SIGTERM. The last stdout
//! line is one JSON object: `records`, `unique`, `duplicates`, `order_violations`,
//! `shards_finished`, `bad_headers`, `elapsed_s`.
//!
//! Exit codes: 0 done, 1 a check failed, 2 bad flags, 3 endpoint unreachable, 4 no stream.
//! `--help` lists the flags with their defaults; `--version` prints the version.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use clap::Parser;
use examples::{AwsArgs, env_endpoint, exit, parse_payload, startup_failure};
use kcl::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor, ShutdownRequestedInput};
use kcl::{CpuMetrics, InitialPosition, RetrievalMode, Scheduler, SchedulerConfig, StoreError};
use kinesis_core::{Kinesis, ShardId, StreamRef};

/// A `kcl` worker that reads a stream `produce` wrote and checks every record: duplicates,
/// per-key order, headers.
///
/// Several processes with the same --app and different --worker-id share the stream's shards.
/// The last stdout line is a JSON summary. Exit codes: 0 done, 1 a check failed, 2 bad flags,
/// 3 endpoint unreachable, 4 no stream.
#[derive(Debug, Parser)]
#[command(name = "consume", version)]
struct Args {
    /// The stream to read (a name or an ARN).
    #[arg(long, value_name = "NAME")]
    stream: String,
    /// The application name: the lease tables are named after it.
    #[arg(long, value_name = "NAME")]
    app: String,
    #[command(flatten)]
    aws: AwsArgs,
    /// DynamoDB endpoint URL for the lease tables. Without the flag: `AWS_ENDPOINT_URL_DYNAMODB`,
    /// then `AWS_ENDPOINT_URL`; with none of them and a Kinesis endpoint, leases stay in memory.
    #[arg(long, value_name = "URL")]
    ddb_endpoint: Option<String>,
    /// This worker's id (default: worker-<pid>).
    #[arg(long, value_name = "ID")]
    worker_id: Option<String>,
    /// Exit once this many unique records were seen (0: no such limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    expect: u64,
    /// Exit after this many seconds without a new record (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    idle_exit: f64,
    /// Read with enhanced fan-out (SubscribeToShard) instead of polling.
    #[arg(long)]
    efo: bool,
    /// Do not report CPU utilization to the leader (needed off EC2/ECS in a fleet shared with
    /// Java KCL workers, which would otherwise see no CPU figure from this one).
    #[arg(long)]
    no_cpu_metrics: bool,
    /// How the worker proves it holds its leases: one heartbeat row for all of them (the
    /// default, a tenth of the Java KCL's DynamoDB bill), or a renewal per lease — required in a
    /// fleet shared with Java KCL workers.
    #[arg(long, value_enum, default_value_t = LeaseModeArg::Heartbeat)]
    lease_mode: LeaseModeArg,
    /// Append one JSON line per record to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

/// `--lease-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LeaseModeArg {
    /// Worker heartbeats (`LeaseMode::WorkerHeartbeat`).
    Heartbeat,
    /// A renewal per lease (`LeaseMode::PerLease`), as the Java KCL.
    PerLease,
}

/// What this worker saw, shared by its shard processors.
#[derive(Default)]
struct Tally {
    records: u64,
    seen: HashSet<(String, u64)>,
    duplicates: u64,
    order_violations: u64,
    bad_headers: u64,
    shards_finished: u64,
    /// Highest n seen per key, to spot a record of a key arriving after a later one.
    last_n: HashMap<String, u64>,
    last_new_record: Option<Instant>,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

struct Checker {
    shard: ShardId,
    worker: Arc<str>,
    tally: Arc<Mutex<Tally>>,
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl ShardRecordProcessor for Checker {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), kcl::ProcessorError> {
        {
            let mut tally = lock(&self.tally);
            let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            for record in input.records {
                tally.records += 1;
                let Some((key, n)) = parse_payload(&record.data) else {
                    tally.bad_headers += 1;
                    continue;
                };
                if !tally.seen.insert((key.to_owned(), n)) {
                    tally.duplicates += 1;
                } else {
                    tally.last_new_record = Some(Instant::now());
                    let last = *tally.last_n.entry(key.to_owned()).or_insert(n);
                    if n < last {
                        tally.order_violations += 1;
                    }
                    tally.last_n.insert(key.to_owned(), last.max(n));
                }
                if let Some(out) = tally.out.as_mut() {
                    let line = serde_json::json!({
                        "key": key, "n": n, "shard": self.shard.as_str(),
                        "seq": record.sequence_number.as_str(), "sub": record.sub_sequence_number,
                        "worker": &*self.worker, "ts_ms": ts_ms,
                    });
                    writeln!(out, "{line}")?;
                }
            }
            if let Some(out) = tally.out.as_mut() {
                out.flush()?;
            }
        }
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), kcl::ProcessorError> {
        input.checkpointer.checkpoint().await?;
        lock(&self.tally).shards_finished += 1;
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), kcl::ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (stream_name, app, expect, idle_exit) = (args.stream.clone(), args.app.clone(), args.expect, args.idle_exit);
    let worker_id = args.worker_id.clone().unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let out = match &args.out {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("consume: cannot open --out {}: {e}", path.display());
                return ExitCode::from(exit::USAGE);
            }
        },
        None => None,
    };

    let client = args.aws.kinesis_client().await;
    let stream = StreamRef::from(stream_name.as_str());
    if let Err(e) = client.describe_stream_summary(&stream).await {
        return startup_failure("consume", &format!("stream {stream}"), &e);
    }

    let tally = Arc::new(Mutex::new(Tally { out, ..Tally::default() }));
    let worker: Arc<str> = Arc::from(worker_id.as_str());
    let factory = {
        let (tally, worker) = (tally.clone(), worker.clone());
        move |shard: &ShardId| Checker { shard: shard.clone(), worker: worker.clone(), tally: tally.clone() }
    };
    let mut builder = Scheduler::builder(app.clone(), stream.clone(), Arc::new(client))
        .worker_id(worker_id.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .processor_factory(factory);
    if args.efo {
        builder = builder.retrieval(RetrievalMode::FanOut { consumer_name: None });
    }
    let mut config = SchedulerConfig::default();
    if args.no_cpu_metrics {
        config = config.with_cpu_metrics(CpuMetrics::Disabled);
    }
    if args.lease_mode == LeaseModeArg::PerLease {
        config = config.per_lease();
    }
    builder = builder.config(config);
    let ddb_endpoint = args.ddb_endpoint.clone().or_else(|| env_endpoint("AWS_ENDPOINT_URL_DYNAMODB"));
    let use_dynamodb = ddb_endpoint.is_some() || args.aws.kinesis_endpoint().is_none();
    builder = if use_dynamodb {
        let stores = examples::dynamodb_stores(ddb_endpoint.as_deref(), args.aws.region())
            .await
            .application_name(app.clone())
            .build()
            .await;
        match stores {
            Ok(stores) => builder
                .lease_store(Arc::new(stores.lease_store()))
                .coordinator_store(Arc::new(stores.coordinator_store()))
                .worker_metrics_store(Arc::new(stores.worker_metrics_store())),
            Err(e) => {
                eprintln!("consume: lease tables: {e}");
                let code = if matches!(e, StoreError::Unavailable { .. }) { exit::UNREACHABLE } else { exit::FAILED };
                return ExitCode::from(code);
            }
        }
    } else {
        builder.memory_stores()
    };
    let scheduler = match builder.build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("consume: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let handle = scheduler.start();
    let started = Instant::now();
    lock(&tally).last_new_record = Some(started);
    let mut last_report = Instant::now();
    let stop = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let (unique, idle) = {
            let t = lock(&tally);
            (t.seen.len() as u64, t.last_new_record.map_or(Duration::ZERO, |l| l.elapsed()))
        };
        if expect > 0 && unique >= expect {
            break;
        }
        if idle_exit > 0.0 && idle.as_secs_f64() >= idle_exit {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let state = handle.state();
            eprintln!(
                "consume[{worker_id}]: unique {unique}, leases {}, leader {}",
                state.shards.len(),
                state.is_leader
            );
            last_report = Instant::now();
        }
    }
    handle.shutdown().await;
    let t = lock(&tally);
    let summary = serde_json::json!({
        "records": t.records,
        "unique": t.seen.len(),
        "duplicates": t.duplicates,
        "order_violations": t.order_violations,
        "shards_finished": t.shards_finished,
        "bad_headers": t.bad_headers,
        "worker": worker_id,
        "elapsed_s": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    });
    println!("{summary}");
    let ok = t.bad_headers == 0 && (expect == 0 || t.seen.len() as u64 >= expect);
    if ok { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) }
}
