//! The service's limits, and the validation of records and requests against them.
//!
//! The same checks run in the producer (so bad input fails at `send`, before anything is
//! buffered) and in the in-memory broker (so it refuses what the service refuses).

use thiserror::Error;

/// Longest partition key the service accepts, in Unicode scalar values.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Most entries in one `PutRecords` request.
pub const MAX_PUT_RECORDS_ENTRIES: usize = 500;
/// The default maximum record size (partition key + data) of a stream: 1 MiB.
pub const DEFAULT_MAX_RECORD_SIZE_KIB: u32 = 1024;
/// The smallest maximum record size a stream can be configured with, in KiB.
pub const MIN_MAX_RECORD_SIZE_KIB: u32 = 1024;
/// The largest maximum record size a stream can be configured with: 10 MiB.
pub const MAX_MAX_RECORD_SIZE_KIB: u32 = 10240;
/// Largest `PutRecords` request, partition keys included: 10 MiB.
pub const MAX_PUT_RECORDS_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// Most records one `GetRecords` call returns.
pub const MAX_GET_RECORDS_LIMIT: u32 = 10_000;
/// Largest `GetRecords` response in bytes.
pub const MAX_GET_RECORDS_BYTES: usize = 10 * 1024 * 1024;
/// Per-shard write limit in records per second.
pub const SHARD_WRITE_RECORDS_PER_SEC: u32 = 1000;
/// Per-shard write limit in bytes per second (1 MiB).
pub const SHARD_WRITE_BYTES_PER_SEC: u64 = 1024 * 1024;
/// Per-shard read limit in `GetRecords` calls per second.
pub const SHARD_READ_CALLS_PER_SEC: u32 = 5;
/// Per-shard read limit in bytes per second (2 MiB).
pub const SHARD_READ_BYTES_PER_SEC: u64 = 2 * 1024 * 1024;

/// Bad input, found before any request is sent: the record or request breaks a service limit.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidationError {
    /// The partition key is empty; the service requires 1 to 256 characters.
    #[error("partition key must not be empty")]
    EmptyPartitionKey,
    /// The partition key is longer than 256 characters.
    #[error("partition key has {chars} characters; at most {MAX_PARTITION_KEY_CHARS} are allowed")]
    PartitionKeyTooLong {
        /// Its length in Unicode scalar values.
        chars: usize,
    },
    /// The explicit hash key is not a decimal integer in `[0, 2^128 − 1]`.
    #[error("Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {value}")]
    InvalidExplicitHashKey {
        /// The rejected text.
        value: String,
    },
    /// A hash-key range whose start lies after its end.
    #[error("invalid hash key range [{start}, {end}]")]
    InvalidHashKeyRange {
        /// Starting key as given.
        start: String,
        /// Ending key as given.
        end: String,
    },
    /// A split point outside `(start + 1, end)` of the shard's range.
    #[error(
        "NewStartingHashKey {new_starting_hash_key} is not both greater than one plus the shard's StartingHashKey {start} and less than the shard's EndingHashKey {end}"
    )]
    InvalidSplitPoint {
        /// The requested new starting hash key.
        new_starting_hash_key: String,
        /// The shard's starting hash key.
        start: String,
        /// The shard's ending hash key.
        end: String,
    },
    /// Partition key plus data exceed the stream's maximum record size.
    #[error("record of {size} bytes (partition key + data) exceeds the stream's maximum record size of {max} bytes")]
    RecordTooLarge {
        /// Partition key bytes + data bytes.
        size: usize,
        /// The stream's limit in bytes.
        max: usize,
    },
    /// A `PutRecords` request with no entries.
    #[error("a PutRecords request needs at least one record")]
    EmptyRequest,
    /// A `PutRecords` request with more than 500 entries.
    #[error("a PutRecords request carries at most {MAX_PUT_RECORDS_ENTRIES} records; this one has {count}")]
    TooManyEntries {
        /// Entries in the request.
        count: usize,
    },
    /// A `PutRecords` request whose partition keys and data exceed the request limit.
    #[error("a PutRecords request of {size} bytes exceeds the limit of {max} bytes")]
    RequestTooLarge {
        /// Sum of partition-key and data bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A maximum record size outside 1024–10240 KiB.
    #[error("maximum record size {kib} KiB is outside {MIN_MAX_RECORD_SIZE_KIB}..={MAX_MAX_RECORD_SIZE_KIB} KiB")]
    InvalidMaxRecordSize {
        /// The rejected size.
        kib: u32,
    },
    /// A sequence number that is not a decimal integer.
    #[error("invalid sequence number {value:?}")]
    InvalidSequenceNumber {
        /// The rejected text.
        value: String,
    },
    /// A shard id that does not have the `shardId-` form.
    #[error("invalid shard id {value:?}")]
    InvalidShardId {
        /// The rejected text.
        value: String,
    },
}

/// Validates a partition key: 1 to 256 Unicode characters.
pub fn validate_partition_key(partition_key: &str) -> Result<(), ValidationError> {
    if partition_key.is_empty() {
        return Err(ValidationError::EmptyPartitionKey);
    }
    // Byte length bounds the char count from above; only count chars when it could matter.
    if partition_key.len() > MAX_PARTITION_KEY_CHARS {
        let chars = partition_key.chars().count();
        if chars > MAX_PARTITION_KEY_CHARS {
            return Err(ValidationError::PartitionKeyTooLong { chars });
        }
    }
    Ok(())
}

/// The size limits of one stream, derived from its maximum-record-size setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Largest record, partition key + data, in bytes.
    pub max_record_bytes: usize,
    /// Largest `PutRecords` request, partition keys + data, in bytes.
    pub max_request_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits::from_max_record_size_kib(DEFAULT_MAX_RECORD_SIZE_KIB)
    }
}

impl StreamLimits {
    /// Limits for a stream whose `MaxRecordSizeInKiB` is `kib`.
    pub fn from_max_record_size_kib(kib: u32) -> Self {
        StreamLimits {
            max_record_bytes: kib as usize * 1024,
            max_request_bytes: MAX_PUT_RECORDS_REQUEST_BYTES.max(kib as usize * 1024),
        }
    }

    /// Validates a stream's maximum record size setting, in KiB.
    pub fn validate_max_record_size_kib(kib: u32) -> Result<u32, ValidationError> {
        if (MIN_MAX_RECORD_SIZE_KIB..=MAX_MAX_RECORD_SIZE_KIB).contains(&kib) {
            Ok(kib)
        } else {
            Err(ValidationError::InvalidMaxRecordSize { kib })
        }
    }

    /// Validates one record: the partition key, the optional explicit hash key, and the size of
    /// partition key plus data against the stream's maximum.
    pub fn validate_record(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> Result<(), ValidationError> {
        validate_partition_key(partition_key)?;
        if let Some(ehk) = explicit_hash_key {
            crate::HashKey::parse_explicit(ehk)?;
        }
        let size = partition_key.len() + data_len;
        if size > self.max_record_bytes {
            return Err(ValidationError::RecordTooLarge { size, max: self.max_record_bytes });
        }
        Ok(())
    }

    /// Validates the shape of a `PutRecords` request: 1 to 500 entries whose partition keys and
    /// data together fit the request limit. `sizes` yields `partition key bytes + data bytes` of
    /// each entry.
    pub fn validate_put_records(&self, sizes: impl ExactSizeIterator<Item = usize>) -> Result<(), ValidationError> {
        let count = sizes.len();
        if count == 0 {
            return Err(ValidationError::EmptyRequest);
        }
        if count > MAX_PUT_RECORDS_ENTRIES {
            return Err(ValidationError::TooManyEntries { count });
        }
        let size: usize = sizes.sum();
        if size > self.max_request_bytes {
            return Err(ValidationError::RequestTooLarge { size, max: self.max_request_bytes });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_bounds() {
        assert_eq!(validate_partition_key(""), Err(ValidationError::EmptyPartitionKey));
        assert!(validate_partition_key("k").is_ok());
        assert!(validate_partition_key(&"k".repeat(256)).is_ok());
        assert_eq!(validate_partition_key(&"k".repeat(257)), Err(ValidationError::PartitionKeyTooLong { chars: 257 }));
        // 256 two-byte characters: 512 bytes but within the character limit.
        assert!(validate_partition_key(&"é".repeat(256)).is_ok());
        assert!(validate_partition_key(&"é".repeat(257)).is_err());
    }

    #[test]
    fn record_size_counts_partition_key_and_data() {
        let limits = StreamLimits::default();
        assert_eq!(limits.max_record_bytes, 1 << 20);
        assert!(limits.validate_record("ab", None, (1 << 20) - 2).is_ok());
        assert_eq!(
            limits.validate_record("ab", None, (1 << 20) - 1),
            Err(ValidationError::RecordTooLarge { size: (1 << 20) + 1, max: 1 << 20 })
        );
        let large = StreamLimits::from_max_record_size_kib(10240);
        assert!(large.validate_record("ab", None, 5 << 20).is_ok());
        assert!(limits.validate_record("ab", Some("12x"), 1).is_err());
    }

    #[test]
    fn put_records_shape() {
        let limits = StreamLimits::default();
        assert_eq!(limits.validate_put_records(std::iter::empty()), Err(ValidationError::EmptyRequest));
        assert!(limits.validate_put_records(std::iter::repeat_n(10, 500)).is_ok());
        assert_eq!(
            limits.validate_put_records(std::iter::repeat_n(10, 501)),
            Err(ValidationError::TooManyEntries { count: 501 })
        );
        assert_eq!(
            limits.validate_put_records(std::iter::repeat_n(1 << 20, 11)),
            Err(ValidationError::RequestTooLarge { size: 11 << 20, max: 10 << 20 })
        );
        assert!(StreamLimits::validate_max_record_size_kib(1023).is_err());
        assert!(StreamLimits::validate_max_record_size_kib(10241).is_err());
        assert_eq!(StreamLimits::validate_max_record_size_kib(2048), Ok(2048));
    }
}
