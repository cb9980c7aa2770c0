//! The record a processor receives: one user record, de-aggregated from a KPL aggregate or read
//! as a plain Kinesis record.
//!
//! # From Kinesis records to user records
//!
//! * A plain Kinesis record becomes one [`KinesisClientRecord`] with sub-sequence number 0.
//! * A KPL aggregate (magic `F3 89 9A C2`, protobuf, MD5) becomes one record per user record, in
//!   order, sharing the aggregate's sequence number, with sub-sequence numbers 0, 1, 2, …. The
//!   `kpl` crate's compressed aggregates are decompressed first, transparently.
//! * A record that carries the magic but fails its checksum or does not parse is delivered as a
//!   plain record (as the Java KCL does); an aggregate that parses but is inconsistent (refers
//!   to missing keys) is not delivered, and counted in `DeaggregationErrors`.
//! * Resuming from a checkpoint inside an aggregate skips the sub-records it covers.
//!
//! ## Sub-records outside the shard's hash range
//!
//! Kinesis routes a record by its own partition key (or explicit hash key); for an aggregate
//! that is one key chosen for the whole aggregate, and the service knows nothing about the user
//! records inside. A producer that aggregated with a stale shard map (the shard split while
//! records were buffered) can therefore put user records into a shard whose hash range does not
//! contain their keys; the KPL notices ("wrong shard") and sends them again to the right shard.
//!
//! This crate drops a user record **only where the service would not have put it into this
//! shard**: a sub-record of an aggregate whose effective hash key — its explicit hash key, else
//! the MD5 of its partition key — lies outside the lease's hash range. The other sub-records of
//! the same aggregate are delivered (the Java KCL drops the whole aggregate, which loses them
//! when the producer does not re-send). Dropped sub-records are counted in
//! `DroppedOutOfRangeSubRecords`. Plain records are never dropped, whatever their key: the
//! service routed them here itself. Leases without a recorded hash range filter nothing.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use kinesis_core::{ExtendedSequenceNumber, SequenceNumber};

/// One user record as delivered to a processor.
///
/// Records of one KPL aggregate share the aggregate's sequence number and differ in their
/// sub-sequence number (their index in the aggregate); a plain record has sub-sequence number 0.
/// Cloning is cheap: the key, sequence number and data are shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisClientRecord {
    /// The Kinesis record's sequence number.
    pub sequence_number: SequenceNumber,
    /// The index of this user record inside its aggregate; 0 for plain records.
    pub sub_sequence_number: u64,
    /// Whether the record came out of a KPL aggregate.
    pub aggregated: bool,
    /// When Kinesis accepted the (aggregated) record.
    pub approximate_arrival_timestamp: SystemTime,
    /// The user record's partition key.
    pub partition_key: Arc<str>,
    /// The explicit hash key the producer gave the user record, if any (decimal text).
    pub explicit_hash_key: Option<Arc<str>>,
    /// The payload.
    pub data: Bytes,
}

impl KinesisClientRecord {
    /// The record's position: what a checkpoint at this record stores.
    pub fn extended_sequence_number(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::at_sub(self.sequence_number.clone(), self.sub_sequence_number)
    }
}
