//! The broker's clock: tokio's `Instant` (so paused-time tests drive it) mapped onto wall time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Maps tokio's monotonic clock onto `SystemTime`: timestamps advance exactly as tokio's clock
/// does, including when a test pauses and advances time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BrokerClock {
    origin_instant: Instant,
    origin_wall: SystemTime,
}

impl BrokerClock {
    pub fn new() -> Self {
        BrokerClock { origin_instant: Instant::now(), origin_wall: SystemTime::now() }
    }

    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    pub fn wall(&self, at: Instant) -> SystemTime {
        self.origin_wall + at.saturating_duration_since(self.origin_instant)
    }

    pub fn now_wall(&self) -> SystemTime {
        self.wall(Instant::now())
    }

    pub fn epoch_millis(time: SystemTime) -> u64 {
        time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
    }

    pub fn epoch_secs(time: SystemTime) -> u64 {
        time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
    }
}
