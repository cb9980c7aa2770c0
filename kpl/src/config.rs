//! [`ProducerConfig`]: the producer's options, with the KPL's names and defaults.
//!
//! Every option of the KPL that still means something for an in-process library is here, under
//! its snake-case name, with the KPL's default (`KinesisProducerConfiguration`). Options the KPL
//! does not have (the memory bound, per-shard in-flight cap, compression, record ordering,
//! shard-map refresh, retry backoff) have defaults chosen and explained on their fields.
//!
//! ```
//! use std::time::Duration;
//! use kpl::{Compression, ProducerConfig};
//!
//! let config = ProducerConfig::default()
//!     .record_max_buffered_time(Duration::from_millis(50))
//!     .max_buffered_bytes(32 << 20)
//!     .compression(Compression::Zlib { level: 6 });
//! assert_eq!(config.collection_max_count, 500);
//! ```

use std::time::Duration;

use kinesis_core::StreamLimits;
use kinesis_core::limits::{MAX_MAX_RECORD_SIZE_KIB, MAX_PUT_RECORDS_ENTRIES};
use thiserror::Error;

/// Largest aggregate the KPL allows (`AggregationMaxSize` ≤ 10 MiB).
const MAX_AGGREGATION_SIZE: usize = MAX_MAX_RECORD_SIZE_KIB as usize * 1024;
/// Smallest `CollectionMaxSize` the KPL accepts.
const MIN_COLLECTION_MAX_SIZE: usize = 52_224;

/// What order the producer stores records in (see the crate documentation's ordering section).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordOrder {
    /// Each partition key's records are stored in send order, also under retries and
    /// resharding (duplicates and gaps aside): a record is not sent while an earlier record of
    /// its key (same shard) is in flight or waiting out a retry backoff, so requests in flight
    /// together never share a key; a child shard waits for its parents' requests; and nothing is
    /// sent while an aggregate that landed on an unexpected shard awaits judgement. Records of
    /// different keys still travel in parallel, and an aggregate held back behind an earlier
    /// record of its keys keeps filling (up to 1 MiB) instead of waiting small.
    #[default]
    PerKey,
    /// No order beyond what one request keeps: several requests in flight for one shard may carry
    /// records of one key and be stored either way round, and retries overtake (the KPL's
    /// behaviour). It skips the per-key bookkeeping; see the README for what that gains.
    Unordered,
}

/// Whether and how aggregates are compressed before they are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Send aggregates as the KPL does: readable by every KPL deaggregator (the default).
    #[default]
    None,
    /// Wrap every aggregate in `kinesis_core`'s compressed envelope, deflated with zlib at
    /// `level` (0–9). See the crate documentation for what consumers see.
    Zlib {
        /// zlib level: 0 stores, 1 is fastest, 9 compresses most; 6 is a good default.
        level: u32,
    },
}

/// The producer's options. `Default` gives the KPL's defaults.
///
/// Fields are public to read; set them with the chainable methods of the same name, so new
/// options can be added without breaking code that builds a configuration.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// Pack user records for one shard into KPL aggregated records (`AggregationEnabled`, true).
    pub aggregation_enabled: bool,
    /// Most user records in one aggregate (`AggregationMaxCount`, 4294967295).
    pub aggregation_max_count: usize,
    /// Most bytes in one aggregate, magic and checksum included (`AggregationMaxSize`, 51200).
    /// Clamped to the stream's maximum record size; a user record that does not fit an empty
    /// aggregate is sent on its own. With per-key ordering, an aggregate that could not be sent
    /// before an earlier record of one of its keys is answered anyway keeps filling past this,
    /// up to 1 MiB (and what the endpoint currently takes in one request), rather than wait small.
    pub aggregation_max_size: usize,
    /// Most Kinesis records in one `PutRecords` request (`CollectionMaxCount`, 500).
    pub collection_max_count: usize,
    /// Most bytes (partition keys + data) in one `PutRecords` request (`CollectionMaxSize`,
    /// 5 MiB). Clamped to the stream's request limit.
    pub collection_max_size: usize,
    /// Longest a record waits in the producer's buffers before it is sent
    /// (`RecordMaxBufferedTime`, 100 ms): the latency paid for batching. Rate limiting, retries
    /// and the in-flight caps can hold a record longer.
    pub record_max_buffered_time: Duration,
    /// A record not delivered this long after it was accepted fails with
    /// [`ProduceError::Expired`](crate::ProduceError::Expired) and its last error (`RecordTtl`,
    /// 30 s).
    pub record_ttl: Duration,
    /// Per-shard send rate, in percent of the shard's write limit of 1000 records/s and 1 MiB/s
    /// (`RateLimit`, 150). Throttling lowers the rate below this, and it recovers while writes
    /// succeed.
    pub rate_limit: u32,
    /// Fail records whose write was throttled instead of retrying them (`FailIfThrottled`, false).
    pub fail_if_throttled: bool,
    /// Longest one `PutRecords` call may take (`RequestTimeout`, 6 s): the ceiling of each
    /// request's time-out, which otherwise follows the endpoint's measured latency for the
    /// request's size (2 × predicted + 4 deviations, at least half the ceiling). A timed-out request is
    /// retried once the congestion window has shrunk; it may have succeeded, so retrying it can
    /// duplicate records.
    pub request_timeout: Duration,
    /// Most `PutRecords` requests in flight at once (24, the KPL's `MaxConnections`): the ceiling
    /// of the congestion window, which starts at 4, grows while answers come as fast as
    /// predicted, halves on a time-out and shrinks by a third when latency rises.
    pub max_in_flight_requests: usize,
    /// Most requests in flight that carry records for one shard (4).
    pub max_in_flight_per_shard: usize,
    /// The memory bound: bytes of accepted, unfinished user records the producer holds (64 MiB).
    /// Each record counts its partition key, explicit hash key and data plus
    /// [`RECORD_OVERHEAD_BYTES`](crate::RECORD_OVERHEAD_BYTES). `send` waits and `try_send` fails
    /// while the bound would be exceeded. Must hold at least one record of the stream's maximum
    /// size.
    pub max_buffered_bytes: usize,
    /// Compression of aggregates (off).
    pub compression: Compression,
    /// What order records are stored in ([`RecordOrder::PerKey`]: each partition key's records
    /// in send order, also under retries and resharding). See the crate documentation.
    pub ordering: RecordOrder,
    /// How often the shard map is re-read with `ListShards` (30 s). It is also re-read at once
    /// when a record lands on a shard the map did not predict.
    pub shard_map_refresh_interval: Duration,
    /// First retry delay of a failed record (100 ms); each further attempt doubles it, with
    /// random jitter of up to the delay again.
    pub retry_base_delay: Duration,
    /// Longest retry delay (5 s).
    pub retry_max_delay: Duration,
    /// Lower a shard's send rate when it is throttled and raise it back while writes succeed
    /// (on). Off gives the KPL's fixed-rate limiter.
    pub adaptive_rate: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            aggregation_enabled: true,
            aggregation_max_count: u32::MAX as usize,
            aggregation_max_size: 51_200,
            collection_max_count: MAX_PUT_RECORDS_ENTRIES,
            collection_max_size: 5 * 1024 * 1024,
            record_max_buffered_time: Duration::from_millis(100),
            record_ttl: Duration::from_secs(30),
            rate_limit: 150,
            fail_if_throttled: false,
            request_timeout: Duration::from_secs(6),
            max_in_flight_requests: 24,
            max_in_flight_per_shard: 4,
            max_buffered_bytes: 64 * 1024 * 1024,
            compression: Compression::None,
            ordering: RecordOrder::PerKey,
            shard_map_refresh_interval: Duration::from_secs(30),
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(5),
            adaptive_rate: true,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.$name = value;
                self
            }
        )*
    };
}

impl ProducerConfig {
    setters! {
        /// Sets [`aggregation_enabled`](Self::aggregation_enabled).
        aggregation_enabled: bool;
        /// Sets [`aggregation_max_count`](Self::aggregation_max_count).
        aggregation_max_count: usize;
        /// Sets [`aggregation_max_size`](Self::aggregation_max_size).
        aggregation_max_size: usize;
        /// Sets [`collection_max_count`](Self::collection_max_count).
        collection_max_count: usize;
        /// Sets [`collection_max_size`](Self::collection_max_size).
        collection_max_size: usize;
        /// Sets [`record_max_buffered_time`](Self::record_max_buffered_time).
        record_max_buffered_time: Duration;
        /// Sets [`record_ttl`](Self::record_ttl).
        record_ttl: Duration;
        /// Sets [`rate_limit`](Self::rate_limit).
        rate_limit: u32;
        /// Sets [`fail_if_throttled`](Self::fail_if_throttled).
        fail_if_throttled: bool;
        /// Sets [`request_timeout`](Self::request_timeout).
        request_timeout: Duration;
        /// Sets [`max_in_flight_requests`](Self::max_in_flight_requests).
        max_in_flight_requests: usize;
        /// Sets [`max_in_flight_per_shard`](Self::max_in_flight_per_shard).
        max_in_flight_per_shard: usize;
        /// Sets [`max_buffered_bytes`](Self::max_buffered_bytes).
        max_buffered_bytes: usize;
        /// Sets [`compression`](Self::compression).
        compression: Compression;
        /// Sets [`ordering`](Self::ordering).
        ordering: RecordOrder;
        /// Sets [`shard_map_refresh_interval`](Self::shard_map_refresh_interval).
        shard_map_refresh_interval: Duration;
        /// Sets [`retry_base_delay`](Self::retry_base_delay).
        retry_base_delay: Duration;
        /// Sets [`retry_max_delay`](Self::retry_max_delay).
        retry_max_delay: Duration;
        /// Sets [`adaptive_rate`](Self::adaptive_rate).
        adaptive_rate: bool;
    }

    /// Checks every option against its allowed range (the KPL's ranges where it has one).
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, field: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            if ok { Ok(()) } else { Err(ConfigError { field, reason: reason.into() }) }
        }
        check(self.aggregation_max_count >= 1, "aggregation_max_count", "must be at least 1")?;
        check(
            (64..=MAX_AGGREGATION_SIZE).contains(&self.aggregation_max_size),
            "aggregation_max_size",
            format!("must be within 64..={MAX_AGGREGATION_SIZE}"),
        )?;
        check(
            (1..=MAX_PUT_RECORDS_ENTRIES).contains(&self.collection_max_count),
            "collection_max_count",
            format!("must be within 1..={MAX_PUT_RECORDS_ENTRIES}"),
        )?;
        check(
            self.collection_max_size >= MIN_COLLECTION_MAX_SIZE,
            "collection_max_size",
            format!("must be at least {MIN_COLLECTION_MAX_SIZE}"),
        )?;
        check(self.record_ttl >= Duration::from_millis(100), "record_ttl", "must be at least 100 ms")?;
        check(self.rate_limit >= 1, "rate_limit", "must be at least 1 (percent)")?;
        check(
            (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.request_timeout),
            "request_timeout",
            "must be within 100 ms..=600 s",
        )?;
        check(self.max_in_flight_requests >= 1, "max_in_flight_requests", "must be at least 1")?;
        check(self.max_in_flight_per_shard >= 1, "max_in_flight_per_shard", "must be at least 1")?;
        if let Compression::Zlib { level } = self.compression {
            check(level <= 9, "compression", "zlib level must be within 0..=9")?;
        }
        check(
            self.shard_map_refresh_interval >= Duration::from_secs(1),
            "shard_map_refresh_interval",
            "must be at least 1 s",
        )?;
        check(!self.retry_base_delay.is_zero(), "retry_base_delay", "must not be zero")?;
        check(self.retry_max_delay >= self.retry_base_delay, "retry_max_delay", "must not be below retry_base_delay")?;
        Ok(())
    }

    /// Resolves the options against the stream's limits.
    pub(crate) fn resolve(&self, limits: StreamLimits) -> Result<Settings, ConfigError> {
        self.validate()?;
        let needed = limits.max_record_bytes + crate::RECORD_OVERHEAD_BYTES;
        if self.max_buffered_bytes < needed {
            return Err(ConfigError {
                field: "max_buffered_bytes",
                reason: format!(
                    "must hold one record of the stream's maximum size: at least {needed} bytes (the stream allows \
                     records of {} bytes)",
                    limits.max_record_bytes
                ),
            });
        }
        Ok(Settings {
            aggregation: self.aggregation_enabled,
            aggregation_max_count: self.aggregation_max_count,
            // An aggregate's partition key is "a", which counts towards the record size.
            aggregation_max_size: self.aggregation_max_size.min(limits.max_record_bytes.saturating_sub(1)),
            collection_max_count: self.collection_max_count,
            collection_max_size: self.collection_max_size.min(limits.max_request_bytes),
            max_buffered_time: self.record_max_buffered_time,
            ttl: self.record_ttl,
            rate_limit: self.rate_limit,
            fail_if_throttled: self.fail_if_throttled,
            request_timeout: self.request_timeout,
            max_in_flight: self.max_in_flight_requests,
            max_in_flight_per_shard: self.max_in_flight_per_shard,
            compression: match self.compression {
                Compression::None => None,
                Compression::Zlib { level } => Some(level),
            },
            ordering: self.ordering,
            refresh_interval: self.shard_map_refresh_interval,
            retry_base: self.retry_base_delay,
            retry_max: self.retry_max_delay,
            adaptive: self.adaptive_rate,
            max_record_bytes: limits.max_record_bytes,
        })
    }
}

/// An option outside its allowed range.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("invalid producer option {field}: {reason}")]
pub struct ConfigError {
    /// The option's name, as in [`ProducerConfig`].
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

/// The configuration resolved against the stream: what the pipeline reads.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub aggregation: bool,
    pub aggregation_max_count: usize,
    pub aggregation_max_size: usize,
    pub collection_max_count: usize,
    pub collection_max_size: usize,
    pub max_buffered_time: Duration,
    pub ttl: Duration,
    pub rate_limit: u32,
    pub fail_if_throttled: bool,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    pub max_in_flight_per_shard: usize,
    pub compression: Option<u32>,
    pub ordering: RecordOrder,
    pub refresh_interval: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub adaptive: bool,
    pub max_record_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_kpl_defaults() {
        let c = ProducerConfig::default();
        assert!(c.aggregation_enabled);
        assert_eq!(c.aggregation_max_count, 4_294_967_295);
        assert_eq!(c.aggregation_max_size, 51_200);
        assert_eq!(c.collection_max_count, 500);
        assert_eq!(c.collection_max_size, 5_242_880);
        assert_eq!(c.record_max_buffered_time, Duration::from_millis(100));
        assert_eq!(c.record_ttl, Duration::from_secs(30));
        assert_eq!(c.rate_limit, 150);
        assert!(!c.fail_if_throttled);
        assert_eq!(c.request_timeout, Duration::from_secs(6));
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.ordering, RecordOrder::PerKey);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn out_of_range_options_are_refused() {
        let bad = [
            ProducerConfig::default().collection_max_count(0),
            ProducerConfig::default().collection_max_count(501),
            ProducerConfig::default().aggregation_max_size(63),
            ProducerConfig::default().collection_max_size(1000),
            ProducerConfig::default().record_ttl(Duration::from_millis(10)),
            ProducerConfig::default().rate_limit(0),
            ProducerConfig::default().request_timeout(Duration::from_secs(601)),
            ProducerConfig::default().compression(Compression::Zlib { level: 10 }),
            ProducerConfig::default().retry_max_delay(Duration::from_millis(1)),
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn resolve_clamps_to_the_stream() {
        let limits = StreamLimits::default();
        let s = ProducerConfig::default()
            .aggregation_max_size(8 << 20)
            .collection_max_size(64 << 20)
            .resolve(limits)
            .expect("valid");
        assert_eq!(s.aggregation_max_size, (1 << 20) - 1);
        assert_eq!(s.collection_max_size, limits.max_request_bytes);
        let err = ProducerConfig::default().max_buffered_bytes(1 << 20).resolve(limits).expect_err("too small");
        assert_eq!(err.field, "max_buffered_bytes");
    }
}
