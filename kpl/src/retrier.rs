//! Step 7: decide what a failed Kinesis record does next.
//!
//! * Throttling, internal failures, time-outs and transport errors are retried after a jittered
//!   exponential backoff (`backon`'s schedule: `retry_base_delay` doubling up to
//!   `retry_max_delay`, plus up to the same again at random), until the records' TTL passes.
//!   Throttling also slows the shard's limiter. With `fail_if_throttled` a throttled record
//!   fails at once instead.
//! * Everything else — validation, access denied, KMS access, stream not found, unknown service
//!   errors — fails the records at once: retrying cannot fix them (the KPL retries these until
//!   the TTL, amazon-kinesis-producer#680).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use kinesis_core::KinesisError;

/// What to do with a failed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Try again after a backoff; `throttled` says whether to slow the shard down too.
    Retry {
        /// The failure was throttling.
        throttled: bool,
    },
    /// Fail the records with this error as a rejection.
    Reject,
    /// Fail the records as throttled (`fail_if_throttled`).
    FailThrottled,
}

/// Classifies a Kinesis error for a record.
pub(crate) fn classify(error: &KinesisError, fail_if_throttled: bool) -> Disposition {
    if error.is_throttling() {
        if fail_if_throttled { Disposition::FailThrottled } else { Disposition::Retry { throttled: true } }
    } else if error.is_retryable() {
        Disposition::Retry { throttled: false }
    } else {
        Disposition::Reject
    }
}

/// The retry schedule: exponential with jitter, from `backon`.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    base: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl RetryPolicy {
    /// A schedule from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        RetryPolicy { base, max, rng: fastrand::Rng::new() }
    }

    /// The delay before attempt `attempts + 1` of a record that has been sent `attempts` times.
    pub fn delay(&mut self, attempts: u32) -> Duration {
        let step = attempts.saturating_sub(1).min(64) as usize;
        ExponentialBuilder::new()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .with_jitter_seed(self.rng.u64(..))
            .without_max_times()
            .build()
            .nth(step)
            .unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let throttled = KinesisError::from_code("ProvisionedThroughputExceededException", "slow down");
        assert_eq!(classify(&throttled, false), Disposition::Retry { throttled: true });
        assert_eq!(classify(&throttled, true), Disposition::FailThrottled);
        for code in ["InternalFailure", "KMSThrottlingException"] {
            assert!(matches!(classify(&KinesisError::from_code(code, ""), false), Disposition::Retry { .. }), "{code}");
        }
        assert_eq!(
            classify(&KinesisError::Timeout { message: "t".into() }, false),
            Disposition::Retry { throttled: false }
        );
        for code in [
            "ValidationException",
            "AccessDeniedException",
            "ResourceNotFoundException",
            "KMSAccessDeniedException",
            "InvalidArgumentException",
        ] {
            assert_eq!(classify(&KinesisError::from_code(code, ""), false), Disposition::Reject, "{code}");
        }
    }

    #[test]
    fn exponential_with_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut policy = RetryPolicy::new(base, max);
        for attempts in 1..=20u32 {
            let nominal = (base * 2u32.pow((attempts - 1).min(10))).min(max);
            for _ in 0..20 {
                let d = policy.delay(attempts);
                assert!(
                    d >= nominal.mul_f64(0.999) && d <= nominal.mul_f64(2.001),
                    "attempt {attempts}: {d:?} vs {nominal:?}"
                );
            }
        }
    }
}
