//! A KPL-style producer for Kinesis Data Streams, in process: no daemon, no IPC.
//!
//! Hand [`UserRecord`]s to a [`Producer`] one at a time; each [`send`](Producer::send) returns a
//! [`DeliveryFuture`] that resolves to where the record was stored ([`RecordMetadata`]: shard,
//! sequence number, sub-sequence number, attempts) or to why it could not be, with the record
//! handed back (`Err((ProduceError, UserRecord))`). Behind it, records are aggregated per shard
//! in the KPL's wire format, collected into `PutRecords` requests, paced per shard, retried
//! with backoff until their time to live, and held within a fixed memory bound.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use kinesis_core::{CreateStreamRequest, Kinesis, MemoryBroker};
//! use kpl::{Producer, ProducerConfig, UserRecord};
//!
//! let broker = MemoryBroker::new();
//! broker.create_stream(CreateStreamRequest::provisioned("events", 4)).await?;
//! let producer = Producer::builder(broker.clone(), "events")
//!     .config(ProducerConfig::default().record_max_buffered_time(Duration::from_millis(20)))
//!     .build()
//!     .await?;
//!
//! let mut deliveries = Vec::new();
//! for n in 0..1000 {
//!     deliveries.push(producer.send(UserRecord::new(format!("user-{}", n % 10), format!("event {n}"))).await?);
//! }
//! producer.flush().await;
//! for delivery in deliveries {
//!     let metadata = delivery.await.map_err(|(error, _record)| error)?;
//!     assert!(metadata.aggregated());
//! }
//! assert_eq!(producer.stats().user_records_delivered, 1000);
//! producer.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Pipeline
//!
//! One task per producer owns every buffer; the modules follow a record through it:
//!
//! 1. `validate` (on the caller's task) — partition key 1–256 characters,
//!    explicit hash key, partition key + data within the stream's maximum record size as read
//!    with `DescribeStreamSummary` (1–10 MiB); the hash key is computed once, here. Bad input
//!    fails at `send` with [`SendError::Invalid`] and nothing is buffered.
//! 2. `shard_map` — the open shards' hash ranges (`ListShards`, `AT_LATEST`), binary search.
//! 3. `aggregator` — one aggregate per predicted shard, closed on count, size, or its oldest
//!    record's `record_max_buffered_time`.
//! 4. `limiter` — per-shard token buckets for records and bytes at `rate_limit`% of the shard
//!    limits, lowered on throttling and recovering on success.
//! 5. `collector` — `PutRecords` requests of ≤ 500 entries and ≤ the request byte limit.
//! 6. `sender` — one task per request, under `request_timeout`, within the in-flight caps.
//! 7. `retrier` — per entry: delivered; retried with jittered exponential backoff (throttling,
//!    internal failures, time-outs, transport errors); failed for good (anything else); or
//!    expired once `record_ttl` has passed, with its last error.
//!
//! # Ordering
//!
//! What a consumer reading a stream (parents before children, as the KCL does) sees for the
//! records of one partition key (one hash key), sent from one task one after another, by
//! [`RecordOrder`] ([`ProducerConfig::ordering`]):
//!
//! * **[`RecordOrder::PerKey`], the default: send order**, duplicates and gaps aside — the first
//!   stored copy of each record comes after the first copy of every record of its key sent
//!   before it. A Kinesis record is not sent while an earlier record of one of its keys for the
//!   same shard is in flight or waiting out a retry backoff, so requests in flight together never
//!   share a key (a partial failure or a reordered answer cannot matter) and a retried record
//!   keeps its place: it goes back into its shard's queue by take-in order, ahead of every newer
//!   record. After a reshard a child shard waits until its parents' requests have finished, and
//!   nothing is sent while an aggregate that landed on a shard the map does not know awaits
//!   judgement. Records of different keys still travel in parallel; an aggregate that has to wait
//!   behind an earlier record of its keys keeps filling (up to 1 MiB) instead of waiting small, so
//!   one round trip carries more — on a healthy endpoint this costs no throughput (see the
//!   README's figures).
//! * **[`RecordOrder::Unordered`]: the KPL's "coarse ordering".** Without failures, in send order
//!   if they travel in one aggregate or one request (the service stores a request's entries in
//!   order). With `max_in_flight_per_shard` > 1 (default 4) two requests for one shard can be in
//!   flight together and be stored either way round, and a retried record may be stored after
//!   records sent after it.
//!
//! In both modes:
//!
//! * **Retries can duplicate.** A timed-out request may have been stored; retrying it stores its
//!   records again (the late copy may land after newer records). An aggregate that lands on a
//!   shard that does not own all of its records' hash keys (the shard split while it was on its
//!   way) has all its records re-sent: the KCL drops such an aggregate whole, so re-sending is the
//!   only way it loses nothing; consumers that do not filter by hash range see those records
//!   twice.
//! * **Failures leave gaps, as far as the producer knows.** A record that expires or is rejected
//!   resolves with an error and comes back; later records of the key are still delivered. An
//!   error means *not known to be stored*: [`ProduceError::may_be_stored`] says whether an
//!   attempt (a timed-out request, an aggregate stored on a shard it could not judge in time)
//!   may have stored it after all. A record is never reported delivered unless a shard that owns
//!   its hash key stored it.
//! * **Congestion control.** The number of requests in flight, their size and their time-outs
//!   follow the endpoint's measured latency (AIMD; see `congestion`), so a slow endpoint gets
//!   fewer, smaller requests instead of time-outs whose re-sends slow it further.
//!
//! If the producer's task panics, every record it had not finished resolves with
//! [`ProduceError::Aborted`] and comes back whole, and `send` fails at once with
//! [`SendError::Closed`].
//!
//! # Memory
//!
//! [`ProducerConfig::max_buffered_bytes`] (default 64 MiB) bounds the bytes of accepted,
//! unfinished records: each counts its keys and data plus [`RECORD_OVERHEAD_BYTES`] of
//! bookkeeping. `send` waits when the next record would pass the bound, `try_send` fails with
//! [`SendError::Full`], so memory cannot grow without bound under overload. Once aggregated,
//! a record's data lives only in its encoded aggregate (the record keeps where it lies, not a
//! copy), so data is held once; a compressed aggregate adds its smaller compressed copy. Beyond
//! the bound there are fixed amounts: up to 4 MiB of emptied per-aggregate lists kept for
//! reuse, and a memo of recent partition keys' hash keys of about 160 KiB per thread that sends
//! (`RECORD_OVERHEAD_BYTES` covers each record's bookkeeping). The overload benchmark
//! (`cargo bench -p kinesis-kpl --bench producer -- overload`) measures the peak resident memory under
//! ten times the load a stream accepts.
//!
//! # Compression
//!
//! Off by default. With [`Compression::Zlib`], every aggregate — even one of a single record —
//! is deflated into `kinesis_core`'s compressed envelope (`F3 89 9A C3`, codec byte, zlib
//! stream), which `kinesis_core::aggregation::decode_record` (and so this workspace's `kcl`)
//! undoes transparently. Any other consumer — the Java KCL, Lambda's deaggregation modules,
//! Firehose — sees one opaque record per Kinesis record starting with `F3 89 9A C3 01`; it can
//! inflate the rest with any zlib library and then de-aggregate it with any KPL deaggregator.
//! Compression needs aggregation; a record whose envelope would pass the stream's maximum record
//! size is sent plain.
//!
//! # Metrics and tracing
//!
//! The KPL's metrics through the `metrics` facade, listed in [`telemetry`]; one `tracing` span
//! (`kpl.put_records`) per request. The producer installs no recorder and no subscriber.
//! [`Producer::stats`] gives cumulative counters without either.
//!
//! # Shutdown
//!
//! [`flush`](Producer::flush) and [`shutdown`](Producer::shutdown) finish every accepted
//! record: delivered, or failed with its error and handed back — none is silently dropped. If
//! all handles are dropped without `shutdown`, the producer still finishes its records in the
//! background. Only if the tokio runtime itself shuts down first do pending records resolve to
//! [`ProduceError::Aborted`] (still with the record).

mod aggregator;
mod collector;
mod completion;
mod config;
mod congestion;
mod error;
mod key_cache;
mod limiter;
mod pipeline;
mod producer;
mod record;
mod retrier;
mod sender;
mod shard_map;
mod slot;
mod stats;
pub mod telemetry;
mod time;
mod validate;

pub use config::{Compression, ConfigError, ProducerConfig, RecordOrder};
pub use error::{BuildError, ProduceError, SendError};
pub use producer::{Producer, ProducerBuilder};
pub use record::{DeliveryFuture, DeliveryResult, RecordMetadata, UserRecord};
pub use stats::ProducerStats;
pub use validate::RECORD_OVERHEAD_BYTES;

/// The crate's README (its page on crates.io), compiled and run as doctests so that its example
/// stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
