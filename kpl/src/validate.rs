//! Step 1: validation at `send`. A record Kinesis would refuse is refused here, before anything
//! is buffered, with the same rules (`kinesis_core::limits`) and the stream's own maximum record
//! size; its hash key (explicit, or MD5 of the partition key) is computed once, here.

use kinesis_core::limits::validate_partition_key;
use kinesis_core::{HashKey, StreamLimits, ValidationError};

use crate::completion::CELL_BYTES;
use crate::record::{Pending, UserRecord};
use crate::slot::ORDER_KEY_BYTES;

/// Bytes each accepted record counts against
/// [`max_buffered_bytes`](crate::ProducerConfig::max_buffered_bytes) on top of its keys and data:
/// the producer's bookkeeping of it, the channel its outcome travels on, and what per-key
/// ordering notes of its key.
pub const RECORD_OVERHEAD_BYTES: usize = std::mem::size_of::<Pending>() + CELL_BYTES + ORDER_KEY_BYTES;

/// A record that passed validation: its hash key and the bytes it holds of the buffer bound.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Validated {
    pub hash_key: HashKey,
    pub charge: u32,
}

/// Checks a record against the service's rules and the stream's limits.
pub(crate) fn validate(record: &UserRecord, limits: &StreamLimits) -> Result<Validated, ValidationError> {
    let partition_key = record.partition_key();
    validate_partition_key(partition_key)?;
    let size = record.size();
    if size > limits.max_record_bytes {
        return Err(ValidationError::RecordTooLarge { size, max: limits.max_record_bytes });
    }
    let hash_key = match record.explicit_hash_key() {
        Some(text) => HashKey::parse_explicit(text)?,
        None => crate::key_cache::hash_partition_key(partition_key),
    };
    let footprint = size + record.explicit_hash_key().map_or(0, str::len) + RECORD_OVERHEAD_BYTES;
    // Records are at most 10 MiB, so this never saturates in practice.
    let charge = u32::try_from(footprint).unwrap_or(u32::MAX);
    Ok(Validated { hash_key, charge })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_rules() {
        let limits = StreamLimits::default();
        assert_eq!(validate(&UserRecord::new("", "x"), &limits).err(), Some(ValidationError::EmptyPartitionKey));
        assert_eq!(
            validate(&UserRecord::new("k".repeat(257), "x"), &limits).err(),
            Some(ValidationError::PartitionKeyTooLong { chars: 257 })
        );
        assert!(validate(&UserRecord::new("é".repeat(256), "x"), &limits).is_ok());
        let bad_ehk = UserRecord::new("k", "x").with_explicit_hash_key("01");
        assert!(matches!(validate(&bad_ehk, &limits), Err(ValidationError::InvalidExplicitHashKey { .. })));
        let too_big = UserRecord::new("kk", vec![0u8; (1 << 20) - 1]);
        assert_eq!(
            validate(&too_big, &limits).err(),
            Some(ValidationError::RecordTooLarge { size: (1 << 20) + 1, max: 1 << 20 })
        );
        let large = StreamLimits::from_max_record_size_kib(10 * 1024);
        assert!(validate(&too_big, &large).is_ok());
    }

    #[test]
    fn hash_key_and_charge() {
        let limits = StreamLimits::default();
        let v = validate(&UserRecord::new("abc", "data"), &limits).expect("valid");
        assert_eq!(v.hash_key.value(), 0x900150983cd24fb0d6963f7d28e17f72);
        assert_eq!(v.charge as usize, 7 + RECORD_OVERHEAD_BYTES);
        let v = validate(&UserRecord::new("abc", "data").with_explicit_hash_key("42"), &limits).expect("valid");
        assert_eq!(v.hash_key.value(), 42);
        assert_eq!(v.charge as usize, 9 + RECORD_OVERHEAD_BYTES);
    }
}
