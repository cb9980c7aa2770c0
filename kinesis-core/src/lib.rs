//! The foundation shared by `kpl` and `kcl`: the Kinesis Data Streams model, the KPL aggregation
//! wire format, the [`Kinesis`] client trait and its backends.
//!
//! * [`hash_key`] — 128-bit hash keys, partition-key hashing, hash-key ranges.
//! * [`shard`] — shard ids, shards and their lineage.
//! * [`sequence`] — sequence numbers and extended (sub-)sequence numbers with sentinels.
//! * [`limits`] — the service's limits and the validation of records and requests against them.
//! * [`aggregation`] — the KPL aggregated-record format, byte-exact, encode and decode.
//! * [`broker`] — [`MemoryBroker`], the in-memory Kinesis with the service's semantics.
//! * [`client`] — the async [`Kinesis`] trait, its request and response types.
//! * [`error`] — [`KinesisError`], the one error type of every client call.
//! * `aws` — [`AwsKinesis`], the trait over `aws-sdk-kinesis` (feature `aws`, on by default).

pub mod aggregation;
pub mod broker;
pub mod client;
pub mod error;
pub mod hash_key;
pub mod limits;
pub mod sequence;
pub mod shard;

#[cfg(feature = "aws")]
pub mod aws;

pub use broker::MemoryBroker;
pub use client::*;
pub use error::KinesisError;
pub use hash_key::{HashKey, HashKeyRange};
pub use limits::{StreamLimits, ValidationError};
pub use sequence::{ExtendedSequenceNumber, SequenceNumber};
pub use shard::{Shard, ShardId};

#[cfg(feature = "aws")]
pub use aws::AwsKinesis;

/// The crate's README (its page on crates.io), compiled and run as doctests so that its example
/// stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
