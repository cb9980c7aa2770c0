//! Congestion control of `PutRecords` requests: how many may be in flight, how large each may be,
//! and how long to wait for each one's answer — adapted to what the endpoint shows, so that a
//! slow endpoint is not flooded with requests it cannot answer in time (each time-out re-sends
//! records that were probably stored, and the re-sends add load: a retry storm).
//!
//! The rule is AIMD, as TCP's, on a window of requests in flight, with the request size and the
//! time-out following the measured latency:
//!
//! * **Latency model.** An endpoint's latency grows with the request's size: `latency = fixed +
//!   per_byte × bytes`, fitted to the recent answers by exponentially weighted least squares
//!   (each answer counts 10 % more than the one before), with the mean deviation of the answers
//!   from the fit. While the sizes seen are too alike to tell the two terms apart, the model
//!   takes the mean latency for any smaller request and scales it up for a larger one.
//! * **Time-out** of a request: twice its predicted latency plus four deviations, within a floor
//!   (half the ceiling, at least 1 s: a fast endpoint's occasional pause must not cut requests
//!   short) and the configured `request_timeout` as the ceiling; the ceiling until the first
//!   answer.
//! * **Size.** Requests start at 256 KiB and double after each answer that came as fast as
//!   predicted, up to the collection size, but never beyond the size whose time-out the model puts
//!   at 80 % of the ceiling (so no request's time-out is cut short by the ceiling). A time-out
//!   halves the size.
//! * **Window.** Starts at 4 requests and grows by one per answer that came as fast as predicted
//!   (slow start) up to a threshold, then by one per window of answers, up to
//!   `max_in_flight_requests`. A time-out halves it (and sets the threshold); an answer half as
//!   slow again as predicted (plus four deviations) — the latency rising with the load, still
//!   short of the time-out — shrinks it by a third. Each
//!   decrease counts once per window: requests sent before a decrease cannot cause another.
//!
//! Why AIMD rather than a delay-based rule alone: the signal that matters here is the time-out
//! itself (it is what causes duplicates), and halving on it is the rule known to converge and to
//! share an endpoint fairly among producers; the latency-rise decrease backs off before a
//! time-out is reached. A request that timed out is retried only after the window has shrunk,
//! since every request needs a free place in it.

use std::time::Duration;

/// Requests in flight at first.
const START_WINDOW: f64 = 4.0;
/// Request size at first, and the least it shrinks to.
const START_BYTES: usize = 256 * 1024;
const MIN_BYTES: usize = 64 * 1024;
/// The least time-out, whatever the model says: half the ceiling, and at least this. An endpoint
/// that answers fast most of the time still pauses now and then (a collection, a failover), and
/// a time-out cut shorter than such a pause re-sends a request that is stored after all.
const FLOOR: Duration = Duration::from_secs(1);
/// How much each older answer counts less than the next in the fit.
const DECAY: f64 = 0.9;
/// A request's time-out is this many times its predicted latency (plus four deviations).
const TIMEOUT_FACTOR: f64 = 2.0;
/// The share of the ceiling the time-out of the largest request built may reach.
const CEILING_SHARE: f64 = 0.8;

/// What a request was sent with; handed back with its outcome.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub bytes: usize,
    pub timeout: Duration,
    /// The latency the model predicted for it, and the model's deviation then (`None` before the
    /// first answer).
    expected: Option<(f64, f64)>,
    epoch: u64,
}

/// Exponentially weighted sums of (request bytes, seconds) pairs, for the least-squares fit.
#[derive(Clone, Copy, Debug, Default)]
struct Fit {
    weight: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    /// Mean absolute deviation of the answers from the prediction made before each.
    deviation: f64,
}

impl Fit {
    fn add(&mut self, bytes: f64, seconds: f64) {
        if self.weight > 0.0 {
            let miss = (seconds - self.predict(bytes)).abs();
            self.deviation = 0.75 * self.deviation + 0.25 * miss;
        } else {
            self.deviation = seconds / 2.0;
        }
        self.weight = DECAY * self.weight + 1.0;
        self.x = DECAY * self.x + bytes;
        self.y = DECAY * self.y + seconds;
        self.xx = DECAY * self.xx + bytes * bytes;
        self.xy = DECAY * self.xy + bytes * seconds;
    }

    /// The fixed and per-byte terms, when the sizes seen differ enough to tell them apart.
    fn line(&self) -> Option<(f64, f64)> {
        let mean_x = self.x / self.weight;
        let variance = self.xx / self.weight - mean_x * mean_x;
        // Sizes within a few percent of each other do not separate the terms.
        if self.weight <= 0.0 || variance <= (0.05 * mean_x).powi(2) {
            return None;
        }
        let covariance = self.xy / self.weight - mean_x * (self.y / self.weight);
        let per_byte = (covariance / variance).max(0.0);
        let fixed = (self.y / self.weight - per_byte * mean_x).max(0.0);
        Some((fixed, per_byte))
    }

    /// Predicted seconds for a request of `bytes`.
    fn predict(&self, bytes: f64) -> f64 {
        if self.weight <= 0.0 {
            return 0.0;
        }
        match self.line() {
            Some((fixed, per_byte)) => fixed + per_byte * bytes,
            None => {
                let (mean_x, mean_y) = (self.x / self.weight, self.y / self.weight);
                mean_y * (bytes / mean_x.max(1.0)).max(1.0)
            }
        }
    }
}

/// The congestion state of one producer.
#[derive(Debug)]
pub(crate) struct Congestion {
    max_window: usize,
    max_bytes: usize,
    ceiling: Duration,
    window: f64,
    threshold: f64,
    size_cap: usize,
    fit: Fit,
    /// Counts decreases; a request sent in an older epoch does not decrease again.
    epoch: u64,
}

impl Congestion {
    /// At most `max_window` requests of `max_bytes`, never waiting longer than `ceiling`.
    pub fn new(max_window: usize, max_bytes: usize, ceiling: Duration) -> Self {
        let max_window = max_window.max(1);
        let max_bytes = max_bytes.max(1);
        Congestion {
            max_window,
            max_bytes,
            ceiling,
            window: START_WINDOW.min(max_window as f64),
            threshold: max_window as f64,
            size_cap: START_BYTES.min(max_bytes),
            fit: Fit::default(),
            epoch: 0,
        }
    }

    /// Requests that may be in flight now.
    pub fn window(&self) -> usize {
        (self.window.floor() as usize).clamp(1, self.max_window)
    }

    /// The largest request to build now (a single larger record still goes alone).
    pub fn request_bytes(&self) -> usize {
        self.size_cap
    }

    /// Notes a request of `bytes` going out; gives its time-out.
    pub fn send(&self, bytes: usize) -> Sent {
        let expected = (self.fit.weight > 0.0).then(|| (self.fit.predict(bytes as f64), self.fit.deviation));
        Sent { bytes, timeout: self.timeout(bytes), expected, epoch: self.epoch }
    }

    fn timeout_seconds(&self, bytes: usize) -> f64 {
        TIMEOUT_FACTOR * self.fit.predict(bytes as f64) + 4.0 * self.fit.deviation
    }

    fn timeout(&self, bytes: usize) -> Duration {
        if self.fit.weight <= 0.0 {
            return self.ceiling;
        }
        Duration::try_from_secs_f64(self.timeout_seconds(bytes))
            .unwrap_or(self.ceiling)
            .clamp(FLOOR.max(self.ceiling / 2).min(self.ceiling), self.ceiling)
    }

    /// The largest request whose time-out the model puts within [`CEILING_SHARE`] of the ceiling.
    fn model_bytes(&self) -> usize {
        let limit = CEILING_SHARE * self.ceiling.as_secs_f64();
        if self.fit.weight <= 0.0 || self.timeout_seconds(self.max_bytes) <= limit {
            return self.max_bytes;
        }
        // The time-out grows with the size: bisect for the largest size within the limit.
        let (mut low, mut high) = (0usize, self.max_bytes);
        while high - low > 1024 {
            let mid = low + (high - low) / 2;
            if self.timeout_seconds(mid) <= limit { low = mid } else { high = mid }
        }
        low
    }

    fn bound_size(&mut self) {
        let least = MIN_BYTES.min(self.max_bytes);
        self.size_cap = self.size_cap.min(self.model_bytes()).clamp(least, self.max_bytes);
    }

    /// A request was answered (whatever its entries' results) after `elapsed`.
    pub fn answered(&mut self, sent: Sent, elapsed: Duration) {
        self.fit.add(sent.bytes as f64, elapsed.as_secs_f64());
        let seconds = elapsed.as_secs_f64();
        // Comfortable: about as fast as predicted. Rising: well slower, though inside the
        // time-out (twice the prediction), so the window shrinks before requests time out.
        let (comfortable, rising) = match sent.expected {
            Some((predicted, deviation)) => {
                (seconds <= 1.25 * predicted + 2.0 * deviation, seconds > 1.5 * predicted + 4.0 * deviation)
            }
            None => (elapsed * 2 <= sent.timeout, elapsed * 2 > sent.timeout),
        };
        if comfortable {
            self.window += if self.window < self.threshold { 1.0 } else { 1.0 / self.window };
            self.window = self.window.min(self.max_window as f64);
            if sent.bytes * 2 > self.size_cap {
                self.size_cap = (self.size_cap * 2).min(self.max_bytes);
            }
        } else if rising && sent.epoch == self.epoch {
            // The latency rises with the load: back off before a time-out is reached.
            self.window = (self.window * 2.0 / 3.0).max(1.0);
            self.threshold = self.window;
            self.epoch += 1;
        }
        self.bound_size();
    }

    /// A request timed out: it may well have been stored, and the endpoint is overloaded.
    pub fn timed_out(&mut self, sent: Sent) {
        // It took at least its time-out; count it as half as long again, so the next time-outs
        // are longer and the sizes smaller until answers say otherwise.
        self.fit.add(sent.bytes as f64, 1.5 * sent.timeout.as_secs_f64());
        if sent.epoch == self.epoch {
            self.threshold = (self.window / 2.0).max(1.0);
            self.window = self.threshold;
            self.size_cap /= 2;
            self.epoch += 1;
        }
        self.bound_size();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn a_fast_endpoint_opens_the_window_and_the_size_at_once() {
        let mut c = Congestion::new(24, 5 * MIB, Duration::from_secs(6));
        assert_eq!((c.window(), c.request_bytes()), (4, 256 * 1024));
        assert_eq!(c.send(1000).timeout, Duration::from_secs(6), "the ceiling until the first answer");
        for _ in 0..40 {
            let sent = c.send(c.request_bytes());
            c.answered(sent, Duration::from_millis(20));
        }
        assert_eq!(c.window(), 24);
        assert_eq!(c.request_bytes(), 5 * MIB);
        assert_eq!(c.send(5 * MIB).timeout, Duration::from_secs(3), "the floor: half the ceiling");
    }

    #[test]
    fn time_outs_halve_and_answers_set_time_outs_and_sizes() {
        let mut c = Congestion::new(24, 5 * MIB, Duration::from_secs(6));
        for _ in 0..20 {
            let sent = c.send(c.request_bytes());
            c.answered(sent, Duration::from_millis(20));
        }
        let before = c.window();
        let sent = c.send(5 * MIB);
        let also_sent = c.send(5 * MIB);
        c.timed_out(sent);
        assert_eq!(c.window(), before / 2);
        c.timed_out(also_sent);
        assert_eq!(c.window(), before / 2, "a second time-out of the same window does not halve again");
        // An endpoint that answers in 1 s + 2 s per MiB: requests shrink until they are answered
        // well inside the ceiling, and every time-out stays above the latency.
        for i in 0..60 {
            let bytes = c.request_bytes().min(c.request_bytes() - (i % 3) * 4096);
            let elapsed = Duration::from_secs_f64(1.0 + 2.0 * bytes as f64 / MIB as f64);
            let sent = c.send(bytes);
            if i > 10 {
                assert!(sent.timeout > elapsed, "{:?} for a request of {bytes} taking {elapsed:?}", sent.timeout);
            }
            c.answered(sent, elapsed);
        }
        let bytes = c.request_bytes();
        let elapsed = 1.0 + 2.0 * bytes as f64 / MIB as f64;
        assert!(TIMEOUT_FACTOR * elapsed <= 6.0 * CEILING_SHARE + 0.5, "{bytes} bytes take {elapsed} s");
        assert!(c.window() > before / 2, "latency that does not grow with the load lets the window open again");
        assert!(bytes >= MIN_BYTES);
    }

    #[test]
    fn the_fit_separates_the_fixed_and_the_per_byte_cost() {
        let mut fit = Fit::default();
        for bytes in [100_000.0, 1_000_000.0, 300_000.0, 2_000_000.0, 50_000.0] {
            fit.add(bytes, 2.0 + bytes / 1_000_000.0);
        }
        let (fixed, per_byte) = fit.line().expect("sizes differ");
        assert!((fixed - 2.0).abs() < 1e-6 && (per_byte - 1e-6).abs() < 1e-12, "{fixed} {per_byte}");
        // Equal sizes: the mean for smaller requests, scaled up for larger ones.
        let mut same = Fit::default();
        for _ in 0..5 {
            same.add(1_000_000.0, 3.0);
        }
        assert!(same.line().is_none());
        assert!((same.predict(10_000.0) - 3.0).abs() < 1e-9);
        assert!((same.predict(2_000_000.0) - 6.0).abs() < 1e-9);
    }
}
