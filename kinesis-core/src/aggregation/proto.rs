//! The protobuf messages of the aggregation format, derived with `prost` by hand.
//!
//! The schema is the KPL's `messages.proto` (proto2, package `aws.kinesis.protobuf`):
//!
//! ```proto
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! message Tag {
//!   required string key   = 1;
//!   optional string value = 2;
//! }
//! ```
//!
//! The `required` fields are declared as `Option` here. On the wire this is the same (a present
//! field is encoded exactly as a required one), but it lets the decoder see a *missing* required
//! field, which the Java protobuf runtime used by the KCL rejects as a parse error; prost's own
//! `required` would silently read it as zero or empty. Fields are declared in field-number order,
//! so `prost` encodes them in the order the KPL's C++ protobuf does.
//!
//! The [`AggregateBuilder`](super::AggregateBuilder) does not build these structs: it writes the
//! same bytes directly, which is much faster. They serve decoding, and tests that compare the
//! hand-written encoder with `prost`'s.

use bytes::Bytes;

/// The protobuf body of an aggregated record: key tables and the user records.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedRecord {
    /// Distinct partition keys; records refer to them by index.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Distinct explicit hash keys (decimal text); records refer to them by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records, in sub-sequence order.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<Record>,
}

/// The same body with each user record left as its encoded bytes (an embedded message and a
/// `bytes` field look alike on the wire): the decoder counts the records before it decodes any,
/// and decodes them one at a time, so a body of millions of tiny records cannot make it build
/// millions of messages at once.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedRecordLazy {
    /// Distinct partition keys; records refer to them by index.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Distinct explicit hash keys (decimal text); records refer to them by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records, each still encoded (slices of the input, no copy).
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub records: Vec<Bytes>,
}

/// One user record inside an aggregate.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// Index into `partition_key_table` (required by the schema).
    #[prost(uint64, optional, tag = "1")]
    pub partition_key_index: Option<u64>,
    /// Index into `explicit_hash_key_table`, when the record has an explicit hash key.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The record's payload (required by the schema). Decoding from [`Bytes`] slices the input
    /// instead of copying it.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub data: Option<Bytes>,
    /// Key/value tags; the KPL never writes them and the KCL ignores them.
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// A key/value tag on a user record, as it appears on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tag {
    /// The tag's key (required by the schema).
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// The tag's value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}
