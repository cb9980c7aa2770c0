//! Each worker's metrics row: written every `worker_metrics_interval`, read by the leader.
//!
//! The row is also the worker's liveness signal: the leader takes a worker as live while its
//! `last_update_secs` keeps changing (judged on the leader's own clock, see
//! [`leader`](crate::leader)). It carries CPU utilization under metric `C` when available (the
//! last 10 samples, `-1` for a failed sample, operating range `[100]`), measured as:
//!
//! * cgroup v2 (`/sys/fs/cgroup/cpu.stat` `usage_usec` against `cpu.max`) or cgroup v1
//!   (`cpuacct.usage` against `cpu.cfs_quota_us`) when the process's cgroup has a CPU limit —
//!   a container's share;
//! * otherwise the host's `/proc/stat` (busy / total jiffies);
//! * nothing on platforms without either, or with [`CpuMetrics::Disabled`](crate::config::CpuMetrics).
//!
//! Per-lease throughput is not in the row: each lease's renewal writes it (`throughput_kbps`).
//! On graceful shutdown the worker deletes its row, so the leader stops assigning to it at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use tokio::time::{Instant, MissedTickBehavior};

use crate::config::CpuMetrics;
use crate::context::WorkerContext;
use crate::store::{StoreError, WorkerHeartbeat, WorkerMetrics};

/// Samples kept in the row (the Java KCL's `noOfPersistedMetricsPerWorkerMetrics`).
const SAMPLES: usize = 10;
/// The CPU metric's short name.
pub(crate) const CPU: &str = "C";

/// One reading of cumulative CPU counters.
#[derive(Clone, Copy, Debug)]
enum Reading {
    /// `/proc/stat`: busy and total jiffies.
    Host { busy: u64, total: u64 },
    /// A cgroup: CPU time used (µs) when read, the wall time, and the CPUs it may use.
    Cgroup { usage_us: u64, at: std::time::Instant, cpus: f64 },
}

/// A CPU-utilization source.
pub(crate) struct CpuSource {
    config: CpuMetrics,
    previous: Option<Reading>,
}

impl CpuSource {
    pub fn new(config: CpuMetrics) -> Self {
        CpuSource { config, previous: None }
    }

    /// Whether this source reports CPU at all.
    pub fn enabled(&self) -> bool {
        !matches!(self.config, CpuMetrics::Disabled)
    }

    /// Utilization in percent since the previous call (`None` on the first call or failure).
    pub fn sample(&mut self) -> Option<f64> {
        match &self.config {
            CpuMetrics::Disabled => None,
            CpuMetrics::Custom(f) => f().filter(|v| v.is_finite()).map(|v| v.clamp(0.0, 100.0)),
            CpuMetrics::Auto => {
                let now = read_cgroup().or_else(read_proc_stat)?;
                let previous = self.previous.replace(now)?;
                utilization(previous, now)
            }
        }
    }
}

fn utilization(previous: Reading, now: Reading) -> Option<f64> {
    let value = match (previous, now) {
        (Reading::Host { busy: b0, total: t0 }, Reading::Host { busy: b1, total: t1 }) => {
            let total = t1.checked_sub(t0)?;
            if total == 0 {
                return None;
            }
            b1.saturating_sub(b0) as f64 / total as f64 * 100.0
        }
        (Reading::Cgroup { usage_us: u0, at: a0, .. }, Reading::Cgroup { usage_us: u1, at: a1, cpus }) => {
            let wall = a1.checked_duration_since(a0)?.as_micros() as f64 * cpus;
            if wall <= 0.0 {
                return None;
            }
            u1.saturating_sub(u0) as f64 / wall * 100.0
        }
        _ => return None,
    };
    Some(value.clamp(0.0, 100.0))
}

fn read_proc_stat() -> Option<Reading> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&text)
}

/// Parses the aggregate `cpu` line: user nice system idle iowait irq softirq steal.
fn parse_proc_stat(text: &str) -> Option<Reading> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(Reading::Host { busy: total.saturating_sub(idle), total })
}

fn read_cgroup() -> Option<Reading> {
    // cgroup v2
    if let Ok(max) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        let cpus = parse_cpu_max(&max)?;
        let stat = std::fs::read_to_string("/sys/fs/cgroup/cpu.stat").ok()?;
        let usage_us = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
        return Some(Reading::Cgroup { usage_us, at: std::time::Instant::now(), cpus });
    }
    // cgroup v1
    let quota: i64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").ok()?.trim().parse().ok()?;
    let period: i64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_period_us").ok()?.trim().parse().ok()?;
    if quota <= 0 || period <= 0 {
        return None;
    }
    let usage_ns: u64 = std::fs::read_to_string("/sys/fs/cgroup/cpuacct/cpuacct.usage").ok()?.trim().parse().ok()?;
    Some(Reading::Cgroup {
        usage_us: usage_ns / 1000,
        at: std::time::Instant::now(),
        cpus: quota as f64 / period as f64,
    })
}

/// `cpu.max`: `"<quota> <period>"` or `"max <period>"` (no limit: not a container share).
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// The leader's reading of a row's CPU: an EMA (α = 0.5) of its samples, ignoring failed ones.
pub(crate) fn cpu_of(row: &WorkerMetrics) -> Option<f64> {
    let samples = row.metric_stats.get(CPU)?;
    let mut ema: Option<f64> = None;
    for &s in samples.iter().filter(|s| **s >= 0.0 && s.is_finite()) {
        ema = Some(match ema {
            Some(prev) => 0.5 * s + 0.5 * prev,
            None => s,
        });
    }
    ema
}

/// The operating-range maximum for CPU (100 when absent).
pub(crate) fn max_cpu_of(row: &WorkerMetrics) -> f64 {
    row.operating_range.get(CPU).and_then(|r| r.first()).copied().filter(|v| *v > 0.0).unwrap_or(100.0)
}

/// The CPU samples a row carries, kept between reports.
struct Samples {
    cpu: CpuSource,
    samples: VecDeque<f64>,
}

impl Samples {
    fn new(config: CpuMetrics) -> Self {
        Samples { cpu: CpuSource::new(config), samples: VecDeque::with_capacity(SAMPLES) }
    }

    /// Takes a sample and returns the row's metric stats and operating range. `reported`: a row
    /// was written before (the first `Auto` sample has no previous reading and is skipped rather
    /// than reported as a failure).
    fn next(&mut self, reported: bool) -> (BTreeMap<String, Vec<f64>>, BTreeMap<String, Vec<f64>>) {
        let mut metric_stats = BTreeMap::new();
        let mut operating_range = BTreeMap::new();
        if self.cpu.enabled() {
            if self.samples.len() == SAMPLES {
                self.samples.pop_front();
            }
            match self.cpu.sample() {
                Some(v) => self.samples.push_back(v),
                None if reported => self.samples.push_back(-1.0),
                None => {}
            }
            if !self.samples.is_empty() {
                metric_stats.insert(CPU.to_owned(), self.samples.iter().copied().collect());
                operating_range.insert(CPU.to_owned(), vec![100.0]);
            }
        }
        (metric_stats, operating_range)
    }
}

/// Writes the worker's row every period — in heartbeat mode as its heartbeat — until the worker
/// stops (then deletes it) or aborts.
pub(crate) async fn run(ctx: Arc<WorkerContext>) {
    match ctx.config.heartbeat_interval() {
        Some(period) => heartbeat(ctx, period).await,
        None => report(ctx).await,
    }
}

/// A ticker that skips missed ticks rather than bursting.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// The row's `last_update_secs`: now, but strictly above the last one written, so the leader
/// sees every report as a change.
fn next_secs(ctx: &WorkerContext, last_written: Option<u64>) -> u64 {
    ctx.wall.now_secs().max(last_written.map_or(0, |s| s + 1))
}

/// Per-lease mode: a plain report every `worker_metrics_interval`; deleted at shutdown.
async fn report(ctx: Arc<WorkerContext>) {
    let mut samples = Samples::new(ctx.config.cpu_metrics.clone());
    let mut last_written: Option<u64> = None;
    let mut ticker = ticker(ctx.config.worker_metrics_interval.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            biased;
            () = ctx.abort.cancelled() => return,
            () = ctx.shutdown.cancelled() => {
                if let Some(secs) = last_written {
                    let _ = ctx.metrics_store.delete_worker_metrics(&ctx.worker_id, secs).await;
                }
                return;
            }
            _ = ticker.tick() => {}
        }
        let (metric_stats, operating_range) = samples.next(last_written.is_some());
        let secs = next_secs(&ctx, last_written);
        let row = WorkerMetrics { metric_stats, operating_range, ..WorkerMetrics::new(&*ctx.worker_id, secs) };
        match ctx.metrics_store.put_worker_metrics(&row).await {
            Ok(()) => last_written = Some(secs),
            Err(e) => tracing::warn!(error = %e, "writing worker metrics failed"),
        }
    }
}

/// Heartbeat mode: the row is the worker's heartbeat, written conditionally on this process's
/// incarnation every `period`. Each one that lands moves the heartbeat fence to a lease duration
/// after it was sent, and returns the leader's signals (a changed assignment version asks
/// discovery for a pass). The heartbeat goes on through a graceful shutdown until every shard has
/// let go (a shard checkpointing at shutdown still holds its lease), then the row is deleted.
async fn heartbeat(ctx: Arc<WorkerContext>, period: Duration) {
    let incarnation = crate::store::new_record_version();
    let mut samples = Samples::new(ctx.config.cpu_metrics.clone());
    let mut last_written: Option<u64> = None;
    let mut beat = 0_u64;
    let mut replaces: Option<String> = None;
    let mut assignment_version: Option<u64> = None;
    let mut shut_out = false;
    let mut ticker = ticker(period);
    loop {
        tokio::select! {
            biased;
            () = ctx.abort.cancelled() => return,
            () = ctx.stop_renewer.cancelled() => {
                if let Some(secs) = last_written.filter(|_| !shut_out) {
                    let _ = ctx.metrics_store.delete_worker_metrics(&ctx.worker_id, secs).await;
                }
                return;
            }
            _ = ticker.tick() => {}
        }
        if shut_out {
            continue;
        }
        let (metric_stats, operating_range) = samples.next(last_written.is_some());
        let secs = next_secs(&ctx, last_written);
        let held = ctx.registry.all();
        let row = WorkerMetrics {
            metric_stats,
            operating_range,
            heartbeat: Some(WorkerHeartbeat {
                incarnation: incarnation.clone(),
                beat: beat + 1,
                lease_changes: ctx.lease_changes.load(Ordering::Relaxed),
                held_leases: held.len() as u64,
                throughput_kbps: held.iter().filter_map(|l| l.throughput_kbps()).sum(),
            }),
            ..WorkerMetrics::new(&*ctx.worker_id, secs)
        };
        let sent_at = Instant::now();
        tracing::trace!(beat, "heartbeat");
        match ctx.metrics_store.heartbeat_worker(&row, replaces.as_deref()).await {
            Ok(current) => {
                ctx.metrics.heartbeat_success.increment(1);
                beat += 1;
                last_written = Some(secs);
                let recovered = !ctx.fencing.heartbeat_is_current();
                ctx.fencing.lapse_if_passed(&ctx.registry);
                ctx.fencing.set_heartbeat_deadline(Some(sent_at + ctx.config.lease_duration));
                let version = current.signals.assignment_version;
                let changed = assignment_version.replace(version) != Some(version);
                if changed {
                    tracing::debug!(
                        version,
                        assigned = current.signals.assigned_leases,
                        "the leader changed this worker's assignments"
                    );
                }
                ctx.signals.send_if_modified(|signals| {
                    let modified = *signals != current.signals;
                    *signals = current.signals;
                    modified
                });
                if changed || recovered || ctx.discovery_incomplete.swap(false, Ordering::Relaxed) {
                    ctx.discovery_wanted.notify_one();
                }
            }
            Err(StoreError::HeartbeatRowTaken { current }) if beat == 0 && replaces.is_none() => {
                // The row of this worker id's previous process: take it over at once.
                replaces = current.and_then(|row| row.heartbeat).map(|h| h.incarnation);
                if replaces.is_none() {
                    replaces = Some(String::new());
                }
                ticker.reset_immediately();
            }
            Err(StoreError::HeartbeatRowTaken { .. }) => {
                tracing::error!(
                    "another process with this worker id took over the heartbeat row; stopping every shard and \
                     heartbeating no more"
                );
                shut_out = true;
                ctx.fencing.set_heartbeat_deadline(Some(Instant::now()));
            }
            Err(e) => {
                ctx.metrics.heartbeat_failure.increment(1);
                tracing::warn!(error = %e, "heartbeat failed; retrying next period");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_utilization() {
        let a = parse_proc_stat("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n").expect("parse");
        let b = parse_proc_stat("cpu  150 0 150 900 0 0 0 0 0 0\n").expect("parse");
        assert_eq!(utilization(a, b), Some(50.0));
        assert!(parse_proc_stat("intr 1 2 3").is_none());
    }

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn ema_ignores_failed_samples() {
        let row = WorkerMetrics {
            metric_stats: [(CPU.to_owned(), vec![10.0, -1.0, 30.0])].into_iter().collect(),
            operating_range: [(CPU.to_owned(), vec![80.0])].into_iter().collect(),
            ..WorkerMetrics::new("w", 1)
        };
        assert_eq!(cpu_of(&row), Some(20.0));
        assert_eq!(max_cpu_of(&row), 80.0);
        let empty = WorkerMetrics { metric_stats: BTreeMap::new(), operating_range: BTreeMap::new(), ..row };
        assert_eq!(cpu_of(&empty), None);
        assert_eq!(max_cpu_of(&empty), 100.0);
    }
}
