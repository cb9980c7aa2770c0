//! The KPL aggregated-record wire format, byte-exact: encode ([`AggregateBuilder`]) and decode
//! ([`decode`]).
//!
//! The KPL packs many user records into one Kinesis record to get past the per-shard limit of
//! 1000 records per second. Such a record's data is
//!
//! ```text
//! F3 89 9A C2          magic (MAGIC)
//! <protobuf>           AggregatedRecord: partition-key table, explicit-hash-key table, records
//! <16 bytes>           MD5 of the protobuf bytes only
//! ```
//!
//! so an aggregate costs [`FIXED_OVERHEAD`] = 20 bytes plus the protobuf framing of its records.
//! The schema is in [`proto`]. Consumers (the KCL, and [`decode`] here) tell aggregated records
//! from plain ones by the magic and the length, verify the checksum, and expand the records in
//! order; a user record's position in the aggregate is its *sub-sequence number*.
//!
//! ```
//! use bytes::Bytes;
//! use kinesis_core::aggregation::{decode, AggregateBuilder, Decoded};
//!
//! let mut builder = AggregateBuilder::new();
//! builder.add("pk1", None, Bytes::from_static(b"x"), &[]);
//! builder.add("pk2", None, Bytes::from_static(b"yz"), &[]);
//! assert_eq!(builder.encoded_len(), 45);
//! let data = builder.finish();
//! assert_eq!(data.len(), 45);
//!
//! let Ok(Decoded::Aggregated(records)) = decode(&data) else { panic!("not an aggregate") };
//! assert_eq!(records[1].partition_key(), "pk2");
//! assert_eq!(&records[1].data()[..], b"yz");
//! assert_eq!(records[1].sub_sequence_number(), 1);
//! ```

pub mod compression;
mod decode;
mod digest;
mod encode;
pub mod proto;

#[cfg(test)]
mod tests;

use thiserror::Error;

use crate::limits::ValidationError;

pub use compression::{decode_record, decode_record_with_limits};
pub use decode::{DecodeLimits, Decoded, SubRecord, decode, decode_with_limits, is_aggregated};
pub use encode::{AggregateBuilder, UnsealedAggregate};

/// The four bytes every aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 digest that ends every aggregated record.
pub const DIGEST_LEN: usize = 16;

/// Bytes an aggregate carries besides its protobuf body: the magic and the MD5 digest.
pub const FIXED_OVERHEAD: usize = MAGIC.len() + DIGEST_LEN;

/// A key/value tag on a user record.
///
/// The format has room for tags, but the KPL never writes them and the KCL ignores them; they are
/// kept here so that aggregates written by other tools round-trip.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tag {
    /// The tag's key.
    pub key: String,
    /// The tag's value, if it has one.
    pub value: Option<String>,
}

impl Tag {
    /// A tag with a key and a value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Tag { key: key.into(), value: Some(value.into()) }
    }

    /// A tag with only a key.
    pub fn key_only(key: impl Into<String>) -> Self {
        Tag { key: key.into(), value: None }
    }
}

/// Why a record that carries the aggregation magic could not be expanded into user records.
///
/// The KCL treats these two ways (see [`AggregationError::kcl_passes_through`]): a bad checksum or
/// an unparsable body means "this was not an aggregate after all" and the raw record is delivered
/// as is; a well-formed aggregate whose records refer to keys that do not exist is broken and is
/// not delivered.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AggregationError {
    /// The MD5 digest at the end does not match the protobuf body.
    #[error("aggregated record checksum mismatch: trailer {expected:02x?}, computed {actual:02x?}")]
    ChecksumMismatch {
        /// The digest stored in the record's last 16 bytes.
        expected: [u8; DIGEST_LEN],
        /// The digest computed over the body.
        actual: [u8; DIGEST_LEN],
    },
    /// The body is not a valid `AggregatedRecord` protobuf message.
    #[error("aggregated record body is not a valid protobuf message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A field the schema marks `required` is absent.
    #[error("user record {record} of the aggregate lacks the required field {field}")]
    MissingField {
        /// Position of the user record in the aggregate.
        record: usize,
        /// The missing field (`partition_key_index`, `data` or `tags.key`).
        field: &'static str,
    },
    /// A user record's partition-key index points past the partition-key table.
    #[error("user record {record} refers to partition key {index}, but the table has {table_len} entries")]
    PartitionKeyIndexOutOfRange {
        /// Position of the user record in the aggregate.
        record: usize,
        /// The index it carries.
        index: u64,
        /// Entries in the partition-key table.
        table_len: usize,
    },
    /// A user record's explicit-hash-key index points past the explicit-hash-key table.
    #[error("user record {record} refers to explicit hash key {index}, but the table has {table_len} entries")]
    ExplicitHashKeyIndexOutOfRange {
        /// Position of the user record in the aggregate.
        record: usize,
        /// The index it carries.
        index: u64,
        /// Entries in the explicit-hash-key table.
        table_len: usize,
    },
    /// A compressed aggregate (see [`compression`]) could not be inflated.
    #[error("compressed aggregated record: {reason}")]
    Compression {
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The record is over a decoding limit ([`DecodeLimits`]): it inflates beyond the largest
    /// record the stream can hold, or holds more user records than allowed. Expanding it could
    /// exhaust memory, so it is not expanded (and, unlike a record that only fails to parse, not
    /// delivered raw either).
    #[error("aggregated record over the decoding limit: {what} over {limit}")]
    OverLimit {
        /// The limit broken: `inflated bytes` or `user records`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A user record's explicit hash key is not a decimal number in `[0, 2^128 − 1]`.
    #[error("user record {record} has an invalid explicit hash key: {source}")]
    InvalidExplicitHashKey {
        /// Position of the user record in the aggregate.
        record: usize,
        /// What is wrong with the key.
        #[source]
        source: ValidationError,
    },
}

impl AggregationError {
    /// Whether the KCL would deliver the raw record unchanged, as if it were not aggregated.
    ///
    /// True for a checksum mismatch and for a body that fails to parse (including a missing
    /// required field, which Java's protobuf rejects while parsing). False for key-index and
    /// explicit-hash-key errors: the KCL fails while expanding such an aggregate and delivers
    /// neither the raw record nor the rest of its user records.
    pub fn kcl_passes_through(&self) -> bool {
        matches!(
            self,
            AggregationError::ChecksumMismatch { .. }
                | AggregationError::Protobuf(_)
                | AggregationError::MissingField { .. }
                | AggregationError::Compression { .. }
        )
    }
}

/// Bytes a protobuf varint of `value` takes: 1 to 10.
#[inline]
pub(crate) const fn varint_len(value: u64) -> usize {
    // Bits needed (at least one), rounded up to groups of seven.
    let bits = (u64::BITS - (value | 1).leading_zeros()) as usize;
    bits.div_ceil(7)
}

/// Bytes a length-delimited field with a one-byte tag and `len` bytes of payload takes.
#[inline]
pub(crate) const fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}
