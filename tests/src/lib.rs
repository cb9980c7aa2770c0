//! Shared pieces of the cross-crate end-to-end tests in `tests/tests/`: finding the test peers,
//! building and running the example programs, and accounting for what consumers saw.
//!
//! Every end-to-end run checks the same things the same way, whether the records went through
//! the in-memory broker in one process or through kinesis-mock to several `consume` processes:
//! [`account`] turns the records the consumers saw into an [`Accounting`] — every record
//! produced seen at least once, duplicates counted, per-key order within each shard (by sequence
//! number) and across the lineage (a key's records in a parent shard all stored and processed
//! before any of its records in a child).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kcl::ProcessorError;
use kcl::processor::{ProcessRecordsInput, ShardEndedInput, ShardRecordProcessor, ShutdownRequestedInput};
use kinesis_core::{Kinesis, Shard, ShardId, StreamRef};
use tokio::time::Instant;

#[path = "../../kinesis-core/tests/support/mod.rs"]
mod support;

pub use support::{peer, unique_name};

/// One user record as a consumer processed it (one line of `consume --out`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRecord {
    /// Partition key, `k<i>`.
    pub key: String,
    /// The record's number within its key, from the `produce` header.
    pub n: u64,
    /// The shard it was read from.
    pub shard: String,
    /// Its Kinesis sequence number.
    pub seq: String,
    /// Its sub-sequence number within an aggregate (0 when not aggregated).
    pub sub: u64,
    /// The worker that processed it.
    pub worker: String,
    /// When it was processed, in milliseconds on a clock common to all workers.
    pub ts_ms: u64,
}

impl SeenRecord {
    /// Parses one `consume --out` JSON line; `None` when it is not one.
    pub fn from_json_line(line: &str) -> Option<SeenRecord> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(SeenRecord {
            key: value.get("key")?.as_str()?.to_owned(),
            n: value.get("n")?.as_u64()?,
            shard: value.get("shard")?.as_str()?.to_owned(),
            seq: value.get("seq")?.as_str()?.to_owned(),
            sub: value.get("sub")?.as_u64()?,
            worker: value.get("worker")?.as_str()?.to_owned(),
            ts_ms: value.get("ts_ms")?.as_u64()?,
        })
    }

    /// Reads every record line of `consume --out` files.
    pub fn read_out_files(paths: &[PathBuf]) -> Vec<SeenRecord> {
        paths
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|text| text.lines().filter_map(SeenRecord::from_json_line).collect::<Vec<_>>())
            .collect()
    }

    /// Distinct (key, n) pairs in `consume --out` files: how many produced records were seen.
    pub fn unique_in(paths: &[PathBuf]) -> usize {
        let seen = SeenRecord::read_out_files(paths);
        seen.iter().map(|r| (r.key.as_str(), r.n)).collect::<HashSet<_>>().len()
    }

    /// Deliveries of a stored record (shard, sequence and sub-sequence number) already
    /// delivered: a consumer's re-processing, as opposed to a producer's second copy, which has
    /// a sequence number of its own.
    pub fn reprocessed(seen: &[SeenRecord]) -> usize {
        let mut positions = HashSet::new();
        seen.iter().filter(|r| !positions.insert((&r.shard, &r.seq, r.sub))).count()
    }

    /// The record's place in its shard, ordered as [`stored_position`] orders.
    pub fn position(&self) -> (usize, &str, u64) {
        stored_position(&self.seq, self.sub)
    }
}

/// A stored position, ordered as the shard stores it: sequence numbers numerically (they are
/// decimal strings of any length), then the sub-sequence number.
pub fn stored_position(sequence_number: &str, sub_sequence_number: u64) -> (usize, &str, u64) {
    (sequence_number.len(), sequence_number, sub_sequence_number)
}

/// Prints the last 25 lines of a process's log to stderr, to explain a failure.
pub fn print_log_tail(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(25).collect();
    eprintln!("--- {} (last lines)", path.display());
    for line in tail.into_iter().rev() {
        eprintln!("{line}");
    }
}

/// A record processor for in-process runs: records every user record it is given (the
/// `produce` header parsed) into a shared list, checkpointing after each batch, at shard end
/// and before a graceful handoff — what `consume` does, without the files.
pub struct Recorder {
    shard: ShardId,
    worker: String,
    epoch: Instant,
    seen: Arc<Mutex<Vec<SeenRecord>>>,
}

impl Recorder {
    /// A processor for `shard` on `worker`, stamping records with milliseconds since `epoch`.
    pub fn new(shard: &ShardId, worker: &str, epoch: Instant, seen: &Arc<Mutex<Vec<SeenRecord>>>) -> Recorder {
        Recorder { shard: shard.clone(), worker: worker.to_owned(), epoch, seen: seen.clone() }
    }
}

#[async_trait]
impl ShardRecordProcessor for Recorder {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let ts_ms = self.epoch.elapsed().as_millis() as u64;
        {
            let mut seen = self.seen.lock().map_err(|_| "poisoned")?;
            for record in input.records {
                let (key, n) = examples::parse_payload(&record.data).ok_or("a record without the produce header")?;
                let key = key.to_owned();
                seen.push(SeenRecord {
                    key,
                    n,
                    shard: self.shard.as_str().to_owned(),
                    seq: record.sequence_number.as_str().to_owned(),
                    sub: record.sub_sequence_number,
                    worker: self.worker.clone(),
                    ts_ms,
                });
            }
        }
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        Ok(input.checkpointer.checkpoint().await?)
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        Ok(input.checkpointer.checkpoint().await?)
    }
}

/// The expected records of a `produce`-style run: `records` round-robin over keys `k0…k{keys-1}`,
/// so key `k<i>` carries n = 0, 1, … up to its share.
pub fn expected_round_robin(records: u64, keys: u64) -> HashMap<String, u64> {
    (0..keys).map(|k| (format!("k{k}"), records / keys + u64::from(k < records % keys))).collect()
}

/// What the consumers of a run saw, checked against what was produced.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Record deliveries in all.
    pub deliveries: u64,
    /// Distinct (key, n) pairs seen.
    pub unique: u64,
    /// Deliveries of a (key, n) already seen.
    pub duplicates: u64,
    /// Produced records nobody saw (up to 20 listed).
    pub missing: Vec<(String, u64)>,
    /// Number of produced records nobody saw.
    pub missing_count: u64,
    /// Records seen that were never produced.
    pub unexpected: u64,
    /// A key's records within one shard whose n does not grow with the sequence number.
    pub order_violations: u64,
    /// A key's records in a child shard stored or first processed before the same key's records
    /// in its parent shard.
    pub lineage_violations: u64,
    /// Deliveries of a record by a worker other than the first one to process it — what an
    /// un-checkpointed failover re-delivers.
    pub redelivered_by_another_worker: u64,
}

impl Accounting {
    /// True when nothing produced is missing, nothing unexpected appeared, and order held.
    pub fn is_complete_and_ordered(&self) -> bool {
        self.missing_count == 0 && self.unexpected == 0 && self.order_violations == 0 && self.lineage_violations == 0
    }
}

/// Accounts for `seen` against `expected` (key → number of records), with the stream's shards
/// (for the parent → child relation).
pub fn account(seen: &[SeenRecord], expected: &HashMap<String, u64>, shards: &[Shard]) -> Accounting {
    let mut result = Accounting { deliveries: seen.len() as u64, ..Accounting::default() };
    // The first delivery of each (key, n); later ones are duplicates.
    let mut first: HashMap<(&str, u64), &SeenRecord> = HashMap::new();
    for record in seen {
        match first.get(&(record.key.as_str(), record.n)) {
            Some(earlier) => {
                result.duplicates += 1;
                if earlier.worker != record.worker {
                    result.redelivered_by_another_worker += 1;
                }
            }
            None => {
                first.insert((record.key.as_str(), record.n), record);
            }
        }
    }
    result.unique = first.len() as u64;
    for (key, count) in expected {
        for n in 0..*count {
            if !first.contains_key(&(key.as_str(), n)) {
                result.missing_count += 1;
                if result.missing.len() < 20 {
                    result.missing.push((key.clone(), n));
                }
            }
        }
    }
    result.unexpected =
        first.keys().filter(|(key, n)| expected.get(*key).is_none_or(|count| *n >= *count)).count() as u64;

    // Per shard and key, stored order (sequence number) must follow n.
    let mut by_shard_key: BTreeMap<(&str, &str), Vec<&SeenRecord>> = BTreeMap::new();
    for record in first.values() {
        by_shard_key.entry((record.shard.as_str(), record.key.as_str())).or_default().push(record);
    }
    for records in by_shard_key.values_mut() {
        records.sort_by(|a, b| a.position().cmp(&b.position()));
        result.order_violations += records.windows(2).filter(|pair| pair[0].n >= pair[1].n).count() as u64;
    }

    // Across the lineage: a key's records in a parent precede (n and processing time) its
    // records in each child.
    let parents: HashMap<&str, Vec<&str>> = shards
        .iter()
        .map(|s| {
            let parents = [s.parent_shard_id.as_ref(), s.adjacent_parent_shard_id.as_ref()];
            (s.shard_id.as_str(), parents.into_iter().flatten().map(|p| p.as_str()).collect())
        })
        .collect();
    let keys: HashSet<&str> = first.keys().map(|(key, _)| *key).collect();
    for key in keys {
        for (child, child_parents) in &parents {
            let Some(in_child) = by_shard_key.get(&(*child, key)) else { continue };
            let child_min_n = in_child.iter().map(|r| r.n).min().unwrap_or(u64::MAX);
            let child_first_ts = in_child.iter().map(|r| r.ts_ms).min().unwrap_or(u64::MAX);
            for parent in child_parents {
                let Some(in_parent) = by_shard_key.get(&(*parent, key)) else { continue };
                let parent_max_n = in_parent.iter().map(|r| r.n).max().unwrap_or(0);
                let parent_last_ts = in_parent.iter().map(|r| r.ts_ms).max().unwrap_or(0);
                if parent_max_n >= child_min_n || parent_last_ts > child_first_ts {
                    result.lineage_violations += 1;
                }
            }
        }
    }
    result
}

/// How long after `killed_at_ms` the shards the killed worker had been processing were
/// processed again by another worker: the longest such gap over its shards that had records
/// after the kill. `None` if the killed worker processed nothing or no shard of its saw records
/// afterwards.
pub fn failover_ms(seen: &[SeenRecord], killed_worker: &str, killed_at_ms: u64) -> Option<u64> {
    let victim_shards: HashSet<&str> =
        seen.iter().filter(|r| r.worker == killed_worker).map(|r| r.shard.as_str()).collect();
    victim_shards
        .iter()
        .filter_map(|shard| {
            seen.iter()
                .filter(|r| r.shard == *shard && r.worker != killed_worker && r.ts_ms >= killed_at_ms)
                .map(|r| r.ts_ms - killed_at_ms)
                .min()
        })
        .max()
}

/// Every shard of a stream, parents included.
pub async fn all_shards(kinesis: &impl Kinesis, stream: &StreamRef) -> Vec<Shard> {
    kinesis.list_all_shards(stream, None).await.expect("list shards")
}

/// Builds the `examples` programs in the profile these tests were built with and returns the
/// path of one of them. The build covers the whole workspace's examples so that cargo resolves
/// dependency features as `cargo test --workspace` does and reuses its artifacts (building
/// `-p examples` alone would resolve them differently and recompile every dependency).
pub fn example_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>").to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "--workspace", "--examples", "--target-dir"]).arg(&target_dir);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building the {name} example failed");
    profile_dir.join("examples").join(name)
}

/// The last line of a program's stdout that parses as a JSON object.
pub fn last_json_line(stdout: &[u8]) -> Option<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok().filter(|v| v.is_object()))
}

/// Milliseconds since the Unix epoch (the clock `consume` stamps records with).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
