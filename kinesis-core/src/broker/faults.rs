//! Fault injection: latency, failed calls, failed `PutRecords` entries and forced throttling, per
//! operation and per shard, from a seeded random source so runs are repeatable.

use std::sync::Mutex;
use std::time::Duration;

use crate::shard::ShardId;

/// The broker operations a [`FaultRule`] can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Every operation.
    Any,
    /// `PutRecord`.
    PutRecord,
    /// `PutRecords`.
    PutRecords,
    /// `GetShardIterator`.
    GetShardIterator,
    /// `GetRecords`.
    GetRecords,
    /// `ListShards`.
    ListShards,
    /// `DescribeStreamSummary`.
    DescribeStreamSummary,
    /// `SubscribeToShard`.
    SubscribeToShard,
}

/// One fault: which calls it hits and what it does to them.
///
/// ```
/// use std::time::Duration;
/// use kinesis_core::broker::{FaultRule, Operation};
/// // 20 % of PutRecords entries fail with InternalFailure, and every call takes 50 ms longer.
/// let rule = FaultRule::on(Operation::PutRecords).fail_entries(0.2).latency(Duration::from_millis(50));
/// ```
#[derive(Clone, Debug)]
pub struct FaultRule {
    operation: Operation,
    shard: Option<ShardId>,
    latency: Option<Duration>,
    latency_per_mib: Option<Duration>,
    jitter: Option<Duration>,
    fail_calls: Option<(String, f64)>,
    fail_entries: Option<f64>,
    throttle: Option<f64>,
    remaining: Option<u32>,
}

impl FaultRule {
    /// A rule for `operation` that does nothing until given an effect.
    pub fn on(operation: Operation) -> Self {
        FaultRule {
            operation,
            shard: None,
            latency: None,
            latency_per_mib: None,
            jitter: None,
            fail_calls: None,
            fail_entries: None,
            throttle: None,
            remaining: None,
        }
    }

    /// Limits the rule to records and reads of one shard (entry failures, throttling).
    pub fn on_shard(mut self, shard: ShardId) -> Self {
        self.shard = Some(shard);
        self
    }

    /// Adds `latency` before the call is served.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Adds `per_mib` of latency for every MiB of a `PutRecords` request (its records' data and
    /// partition keys): an endpoint that takes longer the larger the request. Other operations
    /// get only the fixed latency.
    pub fn latency_per_mib(mut self, per_mib: Duration) -> Self {
        self.latency_per_mib = Some(per_mib);
        self
    }

    /// Adds a random latency between zero and `max` to every call it hits (seeded), so calls made
    /// together can finish in any order.
    pub fn jitter(mut self, max: Duration) -> Self {
        self.jitter = Some(max);
        self
    }

    /// Fails a fraction of whole calls with the service exception `code` (e.g. `InternalFailure`).
    pub fn fail_calls(mut self, code: impl Into<String>, probability: f64) -> Self {
        self.fail_calls = Some((code.into(), probability));
        self
    }

    /// Fails a fraction of `PutRecords` entries with `InternalFailure`.
    pub fn fail_entries(mut self, probability: f64) -> Self {
        self.fail_entries = Some(probability);
        self
    }

    /// Throttles a fraction of writes (per record) and reads (per call) as if the shard's limit
    /// were exceeded.
    pub fn throttle(mut self, probability: f64) -> Self {
        self.throttle = Some(probability);
        self
    }

    /// Stops applying the rule after it fired `times` times.
    pub fn times(mut self, times: u32) -> Self {
        self.remaining = Some(times);
        self
    }

    fn matches(&self, operation: Operation, shard: Option<&ShardId>) -> bool {
        let op = self.operation == Operation::Any || self.operation == operation;
        let shard_ok = match (&self.shard, shard) {
            (None, _) => true,
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => false,
        };
        op && shard_ok && self.remaining != Some(0)
    }
}

/// What the injector decided for one record or read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EntryFault {
    Fail,
    Throttle,
}

/// The broker's fault injector; reach it through [`MemoryBroker::faults`](super::MemoryBroker::faults).
#[derive(Debug)]
pub struct FaultInjector {
    rules: Mutex<Vec<FaultRule>>,
    rng: Mutex<fastrand::Rng>,
}

impl FaultInjector {
    pub(crate) fn new(seed: u64) -> Self {
        FaultInjector { rules: Mutex::new(Vec::new()), rng: Mutex::new(fastrand::Rng::with_seed(seed)) }
    }

    /// Adds a rule; rules apply together.
    pub fn add(&self, rule: FaultRule) {
        self.lock_rules().push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock_rules().clear();
    }

    /// Reseeds the random source that decides which calls and entries fail.
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = fastrand::Rng::with_seed(seed);
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, Vec<FaultRule>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn roll(&self, probability: f64) -> bool {
        probability >= 1.0
            || (probability > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64() < probability)
    }

    /// Extra latency and an optional whole-call failure code for one call carrying
    /// `request_bytes`.
    pub(crate) fn on_call(&self, operation: Operation, request_bytes: usize) -> (Duration, Option<String>) {
        let mut rules = self.lock_rules();
        if rules.is_empty() {
            return (Duration::ZERO, None);
        }
        let mut latency = Duration::ZERO;
        let mut failure = None;
        for rule in rules.iter_mut().filter(|r| r.matches(operation, None)) {
            let mut fired = false;
            if let Some(l) = rule.latency {
                latency += l;
                fired = true;
            }
            if let Some(per_mib) = rule.latency_per_mib {
                latency += per_mib.mul_f64(request_bytes as f64 / (1024.0 * 1024.0));
                fired = true;
            }
            if let Some(max) = rule.jitter {
                let share = self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64();
                latency += max.mul_f64(share);
                fired = true;
            }
            if let Some((code, p)) = &rule.fail_calls
                && failure.is_none()
                && self.roll(*p)
            {
                failure = Some(code.clone());
                fired = true;
            }
            if fired
                && rule.shard.is_none()
                && let Some(n) = rule.remaining.as_mut()
            {
                *n = n.saturating_sub(1);
            }
        }
        (latency, failure)
    }

    /// A failure or throttle for one record written to, or one read from, `shard`.
    pub(crate) fn on_entry(&self, operation: Operation, shard: &ShardId) -> Option<EntryFault> {
        let mut rules = self.lock_rules();
        if rules.is_empty() {
            return None;
        }
        for rule in rules.iter_mut().filter(|r| r.matches(operation, Some(shard))) {
            let fault = if rule.throttle.is_some_and(|p| self.roll(p)) {
                Some(EntryFault::Throttle)
            } else if rule.fail_entries.is_some_and(|p| self.roll(p)) {
                Some(EntryFault::Fail)
            } else {
                None
            };
            if fault.is_some() {
                if let Some(n) = rule.remaining.as_mut() {
                    *n = n.saturating_sub(1);
                }
                return fault;
            }
        }
        None
    }
}
