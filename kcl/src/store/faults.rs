//! Fault injection for stores: [`WithFaults`] wraps any lease, coordinator-state or
//! worker-metrics store and applies the [`StoreFaultRule`]s of a shared [`StoreFaults`] to the
//! calls that pass through it — added latency, a hang, a retryable error, throttling, and the lost
//! reply (the call is served, so a write lands, but the caller gets an error or no answer at all).
//!
//! Rules are decided from a seeded random source, so a test run is repeatable. Give each worker
//! its own wrapper (and its own [`StoreFaults`]) around one shared store to cut a single worker off
//! from the store while the others carry on, as a network partition would.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kcl::store::faults::{StoreFaultRule, StoreFaults, StoreOperation, WithFaults};
//! use kcl::store::memory::MemoryLeaseStore;
//!
//! let shared = MemoryLeaseStore::new();
//! let faults = Arc::new(StoreFaults::new(7));
//! // This worker's renewals hang three times, then its checkpoints lose their replies half the time.
//! faults.add(StoreFaultRule::on(StoreOperation::RenewLease).hang().times(3));
//! faults.add(StoreFaultRule::on(StoreOperation::UpdateLease).lose_reply().probability(0.5));
//! // Every call of this worker to the lease table takes 200 ms longer.
//! faults.add(StoreFaultRule::on(StoreOperation::AnyLease).latency(Duration::from_millis(200)));
//! let store_for_one_worker = WithFaults::new(shared.clone(), faults);
//! # let _ = store_for_one_worker;
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::StoreError;
pub use super::layer::StoreOperation;
use super::layer::{Layered, StoreLayer};

/// What a rule does to a call it fires on, besides any latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// `Unavailable`; the call is not served.
    Fail,
    /// `Throttled`; the call is not served.
    Throttle,
    /// Never answers; the call is not served.
    Hang,
    /// The call is served (a write lands), then `Unavailable`.
    LoseReply,
    /// The call is served, then never answers.
    LoseReplyAndHang,
}

/// One store fault: which calls it hits, how likely, how often, and what it does to them.
#[derive(Clone, Debug)]
pub struct StoreFaultRule {
    operation: StoreOperation,
    key: Option<String>,
    latency: Duration,
    effect: Option<Effect>,
    probability: f64,
    remaining: Option<u32>,
}

impl StoreFaultRule {
    /// A rule for `operation` that does nothing until given an effect or a latency.
    pub fn on(operation: StoreOperation) -> Self {
        StoreFaultRule {
            operation,
            key: None,
            latency: Duration::ZERO,
            effect: None,
            probability: 1.0,
            remaining: None,
        }
    }

    /// Limits the rule to calls about one item: a lease key, a lock key, or a worker id.
    pub fn on_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds `latency` before the call is served.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Fails the call with [`StoreError::Unavailable`] without serving it.
    pub fn fail(mut self) -> Self {
        self.effect = Some(Effect::Fail);
        self
    }

    /// Fails the call with [`StoreError::Throttled`] without serving it.
    pub fn throttle(mut self) -> Self {
        self.effect = Some(Effect::Throttle);
        self
    }

    /// The call never answers and is not served (a partition, a stuck connection without a
    /// timeout).
    pub fn hang(mut self) -> Self {
        self.effect = Some(Effect::Hang);
        self
    }

    /// The call is served — a write lands — but the caller gets [`StoreError::Unavailable`]: the
    /// reply was lost.
    pub fn lose_reply(mut self) -> Self {
        self.effect = Some(Effect::LoseReply);
        self
    }

    /// The call is served — a write lands — and then never answers.
    pub fn lose_reply_and_hang(mut self) -> Self {
        self.effect = Some(Effect::LoseReplyAndHang);
        self
    }

    /// Fires on this fraction of the matching calls (default 1: every one).
    pub fn probability(mut self, probability: f64) -> Self {
        self.probability = probability;
        self
    }

    /// Stops applying the rule after it fired `times` times.
    pub fn times(mut self, times: u32) -> Self {
        self.remaining = Some(times);
        self
    }

    fn matches(&self, operation: StoreOperation, key: Option<&str>) -> bool {
        self.remaining != Some(0)
            && self.operation.covers(operation)
            && self.key.as_deref().is_none_or(|want| key == Some(want))
    }
}

/// What the injector decided for one call.
#[derive(Debug, Default)]
struct Decision {
    latency: Duration,
    effect: Option<Effect>,
}

/// A set of store fault rules with a seeded random source, shared by the [`WithFaults`] wrappers
/// it is given to.
#[derive(Debug)]
pub struct StoreFaults {
    rules: Mutex<Vec<StoreFaultRule>>,
    rng: Mutex<fastrand::Rng>,
    fired: AtomicU64,
}

impl StoreFaults {
    /// No rules yet; `seed` seeds the choice of which calls a probabilistic rule hits.
    pub fn new(seed: u64) -> Self {
        StoreFaults {
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            fired: AtomicU64::new(0),
        }
    }

    /// Adds a rule; rules apply together (latencies add up; the first effect that fires wins).
    pub fn add(&self, rule: StoreFaultRule) {
        lock(&self.rules).push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// Reseeds the random source.
    pub fn reseed(&self, seed: u64) {
        *lock(&self.rng) = fastrand::Rng::with_seed(seed);
    }

    /// How many times a rule fired so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    fn decide(&self, operation: StoreOperation, key: Option<&str>) -> Decision {
        let mut rules = lock(&self.rules);
        let mut decision = Decision::default();
        if rules.is_empty() {
            return decision;
        }
        let mut rng = lock(&self.rng);
        for rule in rules.iter_mut().filter(|r| r.matches(operation, key)) {
            let roll = rule.probability >= 1.0 || (rule.probability > 0.0 && rng.f64() < rule.probability);
            if !roll {
                continue;
            }
            let mut fired = !rule.latency.is_zero();
            decision.latency += rule.latency;
            if decision.effect.is_none() && rule.effect.is_some() {
                decision.effect = rule.effect;
                fired = true;
            }
            if fired {
                self.fired.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = rule.remaining.as_mut() {
                    *n = n.saturating_sub(1);
                }
            }
        }
        decision
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A store whose calls pass through a [`StoreFaults`] first. Implements whichever of
/// [`LeaseStore`](super::LeaseStore), [`CoordinatorStore`](super::CoordinatorStore) and
/// [`WorkerMetricsStore`](super::WorkerMetricsStore) the wrapped store does; build it with
/// `WithFaults::new(store, faults)`.
pub type WithFaults<S> = Layered<S, Arc<StoreFaults>>;

impl StoreLayer for Arc<StoreFaults> {
    async fn call<T: Send>(
        &self,
        operation: StoreOperation,
        key: Option<&str>,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let decision = self.decide(operation, key);
        if !decision.latency.is_zero() {
            tokio::time::sleep(decision.latency).await;
        }
        let name = operation.name();
        match decision.effect {
            None => call.await,
            Some(Effect::Fail) => Err(StoreError::Unavailable { message: format!("injected fault: {name} failed") }),
            Some(Effect::Throttle) => {
                Err(StoreError::Throttled { message: format!("injected fault: {name} throttled") })
            }
            Some(Effect::Hang) => std::future::pending().await,
            Some(Effect::LoseReply) => {
                let _served = call.await;
                Err(StoreError::Unavailable { message: format!("injected fault: the reply to {name} was lost") })
            }
            Some(Effect::LoseReplyAndHang) => {
                let _served = call.await;
                std::future::pending().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kinesis_core::ExtendedSequenceNumber;

    use super::*;
    use crate::lease::{Lease, WriteToken};
    use crate::store::LeaseStore;
    use crate::store::memory::MemoryLeaseStore;

    #[tokio::test(start_paused = true)]
    async fn a_lost_reply_still_writes() {
        let shared = MemoryLeaseStore::new();
        let faults = Arc::new(StoreFaults::new(1));
        let store = WithFaults::new(shared.clone(), faults.clone());
        let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
        store.create_lease_if_not_exists(&lease).await.expect("create");
        faults.add(StoreFaultRule::on(StoreOperation::TakeLease).lose_reply().times(1));
        let token = WriteToken::new();
        let result = store.take_lease(&lease, "w1", &token).await;
        assert!(matches!(result, Err(StoreError::Unavailable { .. })), "{result:?}");
        let stored = shared.get_lease(&lease.lease_key).await.expect("get").expect("exists");
        assert!(stored.is_owned_by("w1"), "the write landed");
        assert!(stored.shows_write(&token, 1));
        assert_eq!(faults.fired(), 1);
        // Used up: the next call is served normally.
        let again = store.take_lease(&stored, "w2", &WriteToken::new()).await.expect("served");
        assert!(again.is_owned_by("w2"));
    }

    #[tokio::test(start_paused = true)]
    async fn hangs_fail_and_latency_apply_per_operation_and_key() {
        let shared = MemoryLeaseStore::new();
        let faults = Arc::new(StoreFaults::new(2));
        let store = WithFaults::new(shared.clone(), faults.clone());
        for i in 0..2 {
            let lease = Lease::new(format!("shardId-00000000000{i}"), ExtendedSequenceNumber::TrimHorizon);
            store.create_lease_if_not_exists(&lease).await.expect("create");
        }
        faults.add(StoreFaultRule::on(StoreOperation::GetLease).on_key("shardId-000000000001").hang());
        faults.add(StoreFaultRule::on(StoreOperation::AnyLease).latency(Duration::from_millis(300)));
        let started = tokio::time::Instant::now();
        assert!(store.get_lease("shardId-000000000000").await.expect("served").is_some());
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let hung = tokio::time::timeout(Duration::from_secs(60), store.get_lease("shardId-000000000001")).await;
        assert!(hung.is_err(), "the call never answers");
        faults.clear();
        faults.add(StoreFaultRule::on(StoreOperation::ListLeases).throttle());
        assert!(matches!(store.list_leases().await, Err(StoreError::Throttled { .. })));
        assert!(store.get_lease("shardId-000000000001").await.is_ok(), "other operations are untouched");
    }

    #[tokio::test(start_paused = true)]
    async fn probabilistic_rules_repeat_with_the_seed() {
        let pattern = |seed| async move {
            let faults = Arc::new(StoreFaults::new(seed));
            let store = WithFaults::new(MemoryLeaseStore::new(), faults.clone());
            faults.add(StoreFaultRule::on(StoreOperation::ListLeases).fail().probability(0.5));
            let mut outcomes = Vec::new();
            for _ in 0..64 {
                outcomes.push(store.list_leases().await.is_ok());
            }
            outcomes
        };
        let a = pattern(11).await;
        assert_eq!(a, pattern(11).await);
        assert_ne!(a, pattern(12).await);
        assert!(a.iter().any(|ok| *ok) && a.iter().any(|ok| !*ok));
    }
}
