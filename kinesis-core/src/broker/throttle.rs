//! Token buckets for the per-shard write and read limits.

use tokio::time::Instant;

/// A token bucket refilled continuously at `rate` tokens per second up to `capacity`.
///
/// `floor` lets the balance go negative (a debt): reads may take a large response at once and
/// then wait until the debt is repaid, which is how a 10 MiB read locks a shard out for seconds.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    rate: f64,
    floor: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, rate: f64, now: Instant) -> Self {
        TokenBucket { capacity, rate, floor: 0.0, tokens: capacity, last: now }
    }

    /// A full bucket whose balance may fall to `floor` (≤ 0).
    pub fn with_floor(capacity: f64, rate: f64, floor: f64, now: Instant) -> Self {
        TokenBucket { floor, ..TokenBucket::new(capacity, rate, now) }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Whether `amount` tokens are available now (without taking them).
    pub fn can_take(&mut self, amount: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= amount
    }

    /// Takes `amount` tokens if available.
    pub fn try_take(&mut self, amount: f64, now: Instant) -> bool {
        if self.can_take(amount, now) {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }

    /// Whether the balance is positive (for debt-style buckets).
    pub fn is_positive(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens > 0.0
    }

    /// Takes `amount` tokens unconditionally, down to the floor.
    pub fn charge(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - amount).max(self.floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn refills_at_rate_up_to_capacity() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, 1000.0, start);
        assert!(bucket.try_take(1000.0, start));
        assert!(!bucket.try_take(1.0, start));
        let half = start + Duration::from_millis(500);
        assert!(bucket.try_take(500.0, half));
        assert!(!bucket.try_take(1.0, half));
        let later = start + Duration::from_secs(10);
        assert!(bucket.can_take(1000.0, later));
        assert!(!bucket.can_take(1000.5, later), "never above capacity");
    }

    #[tokio::test(start_paused = true)]
    async fn debt_blocks_until_repaid() {
        let start = Instant::now();
        let mut bucket = TokenBucket::with_floor(2.0, 2.0, -8.0, start);
        assert!(bucket.is_positive(start));
        bucket.charge(10.0, start);
        assert!(!bucket.is_positive(start + Duration::from_secs(4)));
        assert!(bucket.is_positive(start + Duration::from_millis(4001)));
    }
}
