//! Overflow-safe deadline arithmetic on tokio's clock (so paused-time tests drive every timer).

use std::time::Duration;

use tokio::time::Instant;

/// Far enough to mean "never" for a producer, small enough to add to any instant.
const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `base + delay`, saturating at about thirty years instead of overflowing (a huge TTL must mean
/// "never expires", not "already expired").
pub(crate) fn after(base: Instant, delay: Duration) -> Instant {
    base.checked_add(delay.min(NEVER)).unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn huge_delays_do_not_overflow() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(after(now, Duration::from_millis(5)), now + Duration::from_millis(5));
    }
}
