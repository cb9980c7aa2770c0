//! Step 4: pace each shard. Two token buckets per shard — Kinesis records and bytes — refill at
//! `rate_limit`% of the shard's write limit (1000 records/s, 1 MiB/s) and are charged per Kinesis
//! record (an aggregate counts once), as in the KPL.
//!
//! Unlike the KPL's limiter, this one listens to the service (AIMD): a throttled write cuts the
//! shard's rate by [`DECREASE`] (at most once per [`DECREASE_INTERVAL`], so one burst of
//! throttled entries counts once), and every successful write afterwards adds back
//! [`RECOVERY_PER_SEC`] of the configured rate per second elapsed, up to the configured rate.
//! Under sustained overload the rate settles just around what the shard accepts, instead of
//! overshooting by 50 % and retrying the difference.

use std::time::Duration;

use kinesis_core::limits::{SHARD_WRITE_BYTES_PER_SEC, SHARD_WRITE_RECORDS_PER_SEC};
use tokio::time::Instant;

/// Factor applied to the rate on a throttled write.
pub(crate) const DECREASE: f64 = 0.75;
/// Throttles closer together than this are one congestion event.
pub(crate) const DECREASE_INTERVAL: Duration = Duration::from_millis(200);
/// Share of the configured rate regained per second of successful writes.
pub(crate) const RECOVERY_PER_SEC: f64 = 0.1;
/// The rate never falls below this share of the configured rate.
pub(crate) const MIN_FACTOR: f64 = 0.05;

/// One token bucket: `capacity` is one second's worth at the full configured rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    rate: f64,
}

impl Bucket {
    fn refill(&mut self, elapsed: f64, factor: f64) {
        self.tokens = (self.tokens + elapsed * self.rate * factor).min(self.capacity * factor);
    }

    /// Seconds until `needed` tokens are there at the current rate.
    fn wait_for(&self, needed: f64, factor: f64) -> f64 {
        ((needed - self.tokens) / (self.rate * factor)).max(0.0)
    }
}

/// The pace of one shard.
#[derive(Debug)]
pub(crate) struct Limiter {
    records: Bucket,
    bytes: Bucket,
    /// Share of the configured rate currently allowed (AIMD).
    factor: f64,
    adaptive: bool,
    last_refill: Instant,
    last_decrease: Option<Instant>,
    last_increase: Instant,
}

impl Limiter {
    /// A full limiter at `rate_limit` percent of the shard's limits.
    pub fn new(rate_limit: u32, adaptive: bool, now: Instant) -> Self {
        let share = f64::from(rate_limit) / 100.0;
        let records = f64::from(SHARD_WRITE_RECORDS_PER_SEC) * share;
        let bytes = SHARD_WRITE_BYTES_PER_SEC as f64 * share;
        Limiter {
            records: Bucket { tokens: records, capacity: records, rate: records },
            bytes: Bucket { tokens: bytes, capacity: bytes, rate: bytes },
            factor: 1.0,
            adaptive,
            last_refill: now,
            last_decrease: None,
            last_increase: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_refill).as_secs_f64();
        if elapsed > 0.0 {
            self.records.refill(elapsed, self.factor);
            self.bytes.refill(elapsed, self.factor);
            self.last_refill = now;
        }
    }

    /// Takes the tokens for one Kinesis record of `size` bytes, or says when to try again.
    ///
    /// A record larger than the byte bucket goes once the bucket is full and leaves it in debt,
    /// so large records still average out to the rate.
    pub fn try_acquire(&mut self, size: usize, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        let size = size as f64;
        let bytes_needed = size.min(self.bytes.capacity * self.factor);
        if self.records.tokens >= 1.0 && self.bytes.tokens >= bytes_needed {
            self.records.tokens -= 1.0;
            self.bytes.tokens -= size;
            return Ok(());
        }
        let wait = self.records.wait_for(1.0, self.factor).max(self.bytes.wait_for(bytes_needed, self.factor));
        Err(now + Duration::from_secs_f64(wait.min(60.0)).max(Duration::from_millis(1)))
    }

    /// The shard throttled a write: slow down (once per congestion event).
    pub fn on_throttled(&mut self, now: Instant) {
        if !self.adaptive {
            return;
        }
        if self.last_decrease.is_some_and(|t| now.saturating_duration_since(t) < DECREASE_INTERVAL) {
            return;
        }
        self.refill(now);
        self.factor = (self.factor * DECREASE).max(MIN_FACTOR);
        // Drop the burst the old rate allowed.
        self.records.tokens = self.records.tokens.min(self.records.capacity * self.factor);
        self.bytes.tokens = self.bytes.tokens.min(self.bytes.capacity * self.factor);
        self.last_decrease = Some(now);
        self.last_increase = now;
    }

    /// Writes to the shard succeeded without throttling: regain rate for the time elapsed.
    pub fn on_success(&mut self, now: Instant) {
        if !self.adaptive || self.factor >= 1.0 {
            self.last_increase = now;
            return;
        }
        self.refill(now);
        let elapsed = now.saturating_duration_since(self.last_increase).as_secs_f64();
        self.factor = (self.factor + RECOVERY_PER_SEC * elapsed).min(1.0);
        self.last_increase = now;
    }

    /// Share of the configured rate currently allowed.
    #[cfg(test)]
    pub fn factor(&self) -> f64 {
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(limiter: &mut Limiter, size: usize, start: Instant, seconds: u64, step: Duration) -> usize {
        let mut now = start;
        let mut n = 0;
        while now < start + Duration::from_secs(seconds) {
            while limiter.try_acquire(size, now).is_ok() {
                n += 1;
            }
            now += step;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn records_per_second_at_the_rate_limit() {
        let start = Instant::now();
        let mut limiter = Limiter::new(150, true, start);
        // A full bucket (1500) plus 10 s at 1500/s.
        let n = admitted(&mut limiter, 10, start, 10, Duration::from_millis(10));
        assert!((16_400..=16_600).contains(&n), "{n}");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_per_second_and_large_records() {
        let start = Instant::now();
        let mut limiter = Limiter::new(100, false, start);
        // 100 KiB records: 1 MiB/s is about 10 per second, after the 1 MiB burst.
        let n = admitted(&mut limiter, 100 * 1024, start, 10, Duration::from_millis(10));
        assert!((108..=112).contains(&n), "{n}");
        // A 5 MiB record is admitted from a full bucket and then repaid.
        let mut limiter = Limiter::new(100, false, start);
        assert!(limiter.try_acquire(5 << 20, start).is_ok());
        let retry = limiter.try_acquire(10, start).expect_err("in debt");
        assert!(retry >= start + Duration::from_secs(3), "{:?}", retry - start);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_cuts_the_rate_and_success_restores_it() {
        let start = Instant::now();
        let mut limiter = Limiter::new(150, true, start);
        limiter.on_throttled(start);
        limiter.on_throttled(start + Duration::from_millis(50));
        assert!((limiter.factor() - DECREASE).abs() < 1e-9, "one event within the interval");
        limiter.on_throttled(start + Duration::from_millis(300));
        assert!((limiter.factor() - DECREASE * DECREASE).abs() < 1e-9);
        let mut now = start + Duration::from_millis(300);
        for _ in 0..100 {
            now += Duration::from_millis(100);
            limiter.on_success(now);
        }
        assert!((limiter.factor() - 1.0).abs() < 1e-9, "recovered: {}", limiter.factor());
        let mut fixed = Limiter::new(150, false, start);
        fixed.on_throttled(start);
        assert!((fixed.factor() - 1.0).abs() < 1e-9, "not adaptive");
    }
}
