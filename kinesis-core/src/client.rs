//! The [`Kinesis`] client trait: every call `kpl` and `kcl` make, with typed requests and
//! responses, implemented by the in-memory broker and by [`AwsKinesis`](crate::AwsKinesis).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::KinesisError;
use crate::hash_key::HashKey;
use crate::sequence::{SequenceNumber, StartingPosition};
use crate::shard::{ChildShard, Shard, ShardId};

/// Names a stream by name or by ARN; APIs accept either.
///
/// `From<&str>` treats text starting with `arn:` as an ARN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamRef {
    /// The stream's name.
    Name(String),
    /// The stream's ARN (`arn:aws:kinesis:<region>:<account>:stream/<name>`).
    Arn(String),
}

impl StreamRef {
    /// The stream's name: the name itself, or the part of the ARN after `stream/`.
    pub fn name(&self) -> &str {
        match self {
            StreamRef::Name(name) => name,
            StreamRef::Arn(arn) => arn.rsplit_once("stream/").map_or(arn.as_str(), |(_, name)| name),
        }
    }
}

impl From<&str> for StreamRef {
    fn from(value: &str) -> Self {
        if value.starts_with("arn:") { StreamRef::Arn(value.to_owned()) } else { StreamRef::Name(value.to_owned()) }
    }
}

impl From<String> for StreamRef {
    fn from(value: String) -> Self {
        if value.starts_with("arn:") { StreamRef::Arn(value) } else { StreamRef::Name(value) }
    }
}

impl From<&String> for StreamRef {
    fn from(value: &String) -> Self {
        StreamRef::from(value.as_str())
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamRef::Name(s) | StreamRef::Arn(s) => f.write_str(s),
        }
    }
}

/// A stream's capacity mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StreamMode {
    /// A fixed number of shards, changed by resharding.
    #[default]
    Provisioned,
    /// The service adds shards as write throughput grows.
    OnDemand,
}

/// A stream's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamStatus {
    /// Being created; not usable yet.
    Creating,
    /// Being deleted.
    Deleting,
    /// Usable.
    Active,
    /// Usable, with a reshard or setting change in progress.
    Updating,
}

/// What `CreateStream` is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateStreamRequest {
    /// The new stream's name.
    pub stream_name: String,
    /// Initial shard count (provisioned mode; the service defaults to 4 for on-demand).
    pub shard_count: Option<u32>,
    /// Capacity mode.
    pub mode: StreamMode,
    /// Maximum record size in KiB, 1024–10240; `None` keeps the 1 MiB default.
    pub max_record_size_kib: Option<u32>,
}

impl CreateStreamRequest {
    /// A provisioned stream with `shard_count` shards.
    pub fn provisioned(stream_name: impl Into<String>, shard_count: u32) -> Self {
        CreateStreamRequest {
            stream_name: stream_name.into(),
            shard_count: Some(shard_count),
            mode: StreamMode::Provisioned,
            max_record_size_kib: None,
        }
    }

    /// An on-demand stream.
    pub fn on_demand(stream_name: impl Into<String>) -> Self {
        CreateStreamRequest {
            stream_name: stream_name.into(),
            shard_count: None,
            mode: StreamMode::OnDemand,
            max_record_size_kib: None,
        }
    }

    /// Sets the stream's maximum record size in KiB (1024–10240).
    pub fn max_record_size_kib(mut self, kib: u32) -> Self {
        self.max_record_size_kib = Some(kib);
        self
    }
}

/// What `DescribeStreamSummary` tells about a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream's name.
    pub stream_name: String,
    /// The stream's ARN.
    pub stream_arn: String,
    /// Lifecycle state.
    pub status: StreamStatus,
    /// Capacity mode.
    pub mode: StreamMode,
    /// Number of open shards.
    pub open_shard_count: u32,
    /// Retention period in hours.
    pub retention_period_hours: u32,
    /// Registered enhanced fan-out consumers, when reported.
    pub consumer_count: Option<u32>,
    /// Maximum record size (partition key + data) in KiB; 1024 when the service omits it.
    pub max_record_size_kib: u32,
    /// When the stream was created.
    pub creation_timestamp: SystemTime,
}

/// Which shards `ListShards` returns (the service's `ShardFilter`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardFilter {
    /// Shards created after this one, by id.
    AfterShardId(ShardId),
    /// Shards open at the trim horizon.
    AtTrimHorizon,
    /// All shards from the trim horizon on (the service's default).
    FromTrimHorizon,
    /// Only shards open now.
    AtLatest,
    /// Shards open at this time.
    AtTimestamp(SystemTime),
    /// Shards open at or after this time.
    FromTimestamp(SystemTime),
}

/// A `ListShards` call: the first page names the stream; later pages pass the token only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListShardsRequest {
    /// The stream.
    pub stream: StreamRef,
    /// Which shards to return.
    pub filter: Option<ShardFilter>,
    /// Page size (the service allows 1–10000 and caps at 1000).
    pub max_results: Option<u32>,
    /// Continue after a previous page.
    pub next_token: Option<String>,
    /// Start after this shard id.
    pub exclusive_start_shard_id: Option<ShardId>,
}

impl ListShardsRequest {
    /// The first page of a stream's shards, unfiltered.
    pub fn new(stream: impl Into<StreamRef>) -> Self {
        ListShardsRequest {
            stream: stream.into(),
            filter: None,
            max_results: None,
            next_token: None,
            exclusive_start_shard_id: None,
        }
    }

    /// Restricts the listing with a shard filter.
    pub fn filter(mut self, filter: ShardFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Sets the page size.
    pub fn max_results(mut self, max_results: u32) -> Self {
        self.max_results = Some(max_results);
        self
    }

    /// Continues from a previous page's token.
    pub fn next_token(mut self, token: impl Into<String>) -> Self {
        self.next_token = Some(token.into());
        self
    }
}

/// One page of `ListShards`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListShardsPage {
    /// The shards on this page.
    pub shards: Vec<Shard>,
    /// Token for the next page, if there is one.
    pub next_token: Option<String>,
}

/// A `PutRecord` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecordRequest {
    /// The stream.
    pub stream: StreamRef,
    /// Routes the record (MD5) unless an explicit hash key is given; counts toward the record size.
    pub partition_key: String,
    /// Routes the record to the shard owning this key, overriding the partition key's hash.
    pub explicit_hash_key: Option<HashKey>,
    /// The payload.
    pub data: Bytes,
    /// Strictly order this record after the record with this sequence number (same partition key).
    pub sequence_number_for_ordering: Option<SequenceNumber>,
}

/// Where a record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordPlacement {
    /// The shard that stored it.
    pub shard_id: ShardId,
    /// Its sequence number in that shard.
    pub sequence_number: SequenceNumber,
}

/// One entry of a `PutRecords` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecordsEntry {
    /// Routes the record unless an explicit hash key is given; counts toward the sizes.
    pub partition_key: String,
    /// Overrides the partition key's hash for routing.
    pub explicit_hash_key: Option<HashKey>,
    /// The payload.
    pub data: Bytes,
}

impl PutRecordsEntry {
    /// The bytes this entry counts toward the record and request limits: partition key + data.
    pub fn billed_size(&self) -> usize {
        self.partition_key.len() + self.data.len()
    }
}

/// The result of `PutRecords`: one outcome per entry, in request order. Partial failure is normal
/// and is not an error of the call.
#[derive(Debug)]
pub struct PutRecordsOutput {
    /// Per entry: where it landed, or why it failed (`Throttled` or `InternalFailure`).
    pub records: Vec<Result<RecordPlacement, KinesisError>>,
}

impl PutRecordsOutput {
    /// How many entries failed.
    pub fn failed_record_count(&self) -> usize {
        self.records.iter().filter(|r| r.is_err()).count()
    }
}

/// An opaque position handle returned by `GetShardIterator` and `GetRecords`; valid five minutes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ShardIterator(pub Arc<str>);

impl ShardIterator {
    /// The iterator's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ShardIterator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(16).collect();
        write!(f, "ShardIterator({shown}…)")
    }
}

impl From<String> for ShardIterator {
    fn from(value: String) -> Self {
        ShardIterator(Arc::from(value))
    }
}

/// A record as read from a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number in the shard.
    pub sequence_number: SequenceNumber,
    /// When the service accepted it.
    pub approximate_arrival_timestamp: SystemTime,
    /// The payload (for a KPL aggregate: the whole aggregated record).
    pub data: Bytes,
    /// The partition key it was written with.
    pub partition_key: String,
}

/// The result of `GetRecords`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetRecordsOutput {
    /// Records read, in sequence order; may be empty even when more data lies further on.
    pub records: Vec<Record>,
    /// Where to continue; `None` once a closed shard has been read to its end.
    pub next_shard_iterator: Option<ShardIterator>,
    /// How far the returned position is behind the tip of the shard, in milliseconds.
    pub millis_behind_latest: Option<u64>,
    /// At the end of a closed shard: its children.
    pub child_shards: Vec<ChildShard>,
}

/// An enhanced fan-out consumer's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsumerStatus {
    /// Being registered; cannot subscribe yet.
    Creating,
    /// Being deregistered.
    Deleting,
    /// Ready for `SubscribeToShard`.
    Active,
}

/// A registered enhanced fan-out consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConsumer {
    /// Its name, unique in the stream.
    pub consumer_name: String,
    /// Its ARN, used to subscribe.
    pub consumer_arn: String,
    /// Its state.
    pub status: ConsumerStatus,
    /// When it was registered.
    pub creation_timestamp: SystemTime,
}

/// One event pushed by a `SubscribeToShard` subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeToShardEvent {
    /// Records pushed with this event (may be empty: a heartbeat).
    pub records: Vec<Record>,
    /// Resume after this position (`AFTER_SEQUENCE_NUMBER`); `None` once the shard ended.
    pub continuation_sequence_number: Option<SequenceNumber>,
    /// How far the subscription is behind the tip, in milliseconds.
    pub millis_behind_latest: u64,
    /// At the end of a closed shard: its children.
    pub child_shards: Vec<ChildShard>,
}

/// The events of one subscription. It ends after at most five minutes, or with an error such as
/// `ResourceInUse` when another subscription took over.
pub type SubscriptionStream = BoxStream<'static, Result<SubscribeToShardEvent, KinesisError>>;

/// The result of `UpdateShardCount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateShardCountOutput {
    /// Open shards before the call.
    pub current_shard_count: u32,
    /// Open shards the stream is scaling to.
    pub target_shard_count: u32,
}

/// The Kinesis Data Streams calls that `kpl` and `kcl` make.
///
/// Implemented by the in-memory broker (for tests and local runs) and by
/// [`AwsKinesis`](crate::AwsKinesis) (real Kinesis, LocalStack, kinesis-mock). Every method is
/// cancellation safe in the sense that dropping the future leaves the client usable; a dropped
/// write may or may not have taken effect, as with any network call.
#[async_trait]
pub trait Kinesis: Send + Sync {
    /// `CreateStream`.
    async fn create_stream(&self, request: CreateStreamRequest) -> Result<(), KinesisError>;

    /// `DeleteStream`; with `enforce_consumer_deletion` registered consumers are removed too.
    async fn delete_stream(&self, stream: &StreamRef, enforce_consumer_deletion: bool) -> Result<(), KinesisError>;

    /// `DescribeStreamSummary`.
    async fn describe_stream_summary(&self, stream: &StreamRef) -> Result<StreamSummary, KinesisError>;

    /// `ListShards`, one page.
    async fn list_shards(&self, request: ListShardsRequest) -> Result<ListShardsPage, KinesisError>;

    /// `PutRecord`.
    async fn put_record(&self, request: PutRecordRequest) -> Result<RecordPlacement, KinesisError>;

    /// `PutRecords`: 1–500 entries; per-entry failures are in the output, not the error.
    async fn put_records(
        &self,
        stream: &StreamRef,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsOutput, KinesisError>;

    /// `GetShardIterator` for any starting position.
    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<ShardIterator, KinesisError>;

    /// `GetRecords`: up to `limit` records (10000 at most) from the iterator's position.
    async fn get_records(&self, iterator: &ShardIterator, limit: Option<u32>)
    -> Result<GetRecordsOutput, KinesisError>;

    /// `RegisterStreamConsumer`: registers an enhanced fan-out consumer.
    async fn register_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, KinesisError>;

    /// `DescribeStreamConsumer`.
    async fn describe_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, KinesisError>;

    /// `DeregisterStreamConsumer`.
    async fn deregister_stream_consumer(&self, stream_arn: &str, consumer_name: &str) -> Result<(), KinesisError>;

    /// `SubscribeToShard`: a stream of pushed events for up to five minutes.
    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<SubscriptionStream, KinesisError>;

    /// `SplitShard` at `new_starting_hash_key`.
    async fn split_shard(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        new_starting_hash_key: HashKey,
    ) -> Result<(), KinesisError>;

    /// `MergeShards` of two adjacent shards.
    async fn merge_shards(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        adjacent_shard_id: &ShardId,
    ) -> Result<(), KinesisError>;

    /// `UpdateShardCount` with uniform scaling.
    async fn update_shard_count(
        &self,
        stream: &StreamRef,
        target_shard_count: u32,
    ) -> Result<UpdateShardCountOutput, KinesisError>;

    /// `UpdateMaxRecordSize`: the stream's maximum record size in KiB (1024–10240).
    async fn update_max_record_size(&self, stream: &StreamRef, max_record_size_kib: u32) -> Result<(), KinesisError>;

    /// Every shard of the stream matching `filter`, following `ListShards` pages.
    async fn list_all_shards(
        &self,
        stream: &StreamRef,
        filter: Option<ShardFilter>,
    ) -> Result<Vec<Shard>, KinesisError> {
        let mut request = ListShardsRequest::new(stream.clone());
        request.filter = filter;
        let mut shards = Vec::new();
        loop {
            let page = self.list_shards(request.clone()).await?;
            shards.extend(page.shards);
            match page.next_token {
                Some(token) => {
                    request.next_token = Some(token);
                }
                None => return Ok(shards),
            }
        }
    }

    /// Polls `DescribeStreamSummary` until the stream is `ACTIVE` (or `UPDATING`, which accepts
    /// reads and writes), for at most `timeout`.
    async fn wait_for_stream_active(
        &self,
        stream: &StreamRef,
        timeout: Duration,
    ) -> Result<StreamSummary, KinesisError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.describe_stream_summary(stream).await {
                Ok(summary) if matches!(summary.status, StreamStatus::Active | StreamStatus::Updating) => {
                    return Ok(summary);
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_retryable() => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KinesisError::Timeout {
                    message: format!("stream {stream} did not become ACTIVE within {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl<K: Kinesis + ?Sized> Kinesis for Arc<K> {
    async fn create_stream(&self, request: CreateStreamRequest) -> Result<(), KinesisError> {
        (**self).create_stream(request).await
    }
    async fn delete_stream(&self, stream: &StreamRef, enforce_consumer_deletion: bool) -> Result<(), KinesisError> {
        (**self).delete_stream(stream, enforce_consumer_deletion).await
    }
    async fn describe_stream_summary(&self, stream: &StreamRef) -> Result<StreamSummary, KinesisError> {
        (**self).describe_stream_summary(stream).await
    }
    async fn list_shards(&self, request: ListShardsRequest) -> Result<ListShardsPage, KinesisError> {
        (**self).list_shards(request).await
    }
    async fn put_record(&self, request: PutRecordRequest) -> Result<RecordPlacement, KinesisError> {
        (**self).put_record(request).await
    }
    async fn put_records(
        &self,
        stream: &StreamRef,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsOutput, KinesisError> {
        (**self).put_records(stream, entries).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<ShardIterator, KinesisError> {
        (**self).get_shard_iterator(stream, shard_id, position).await
    }
    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: Option<u32>,
    ) -> Result<GetRecordsOutput, KinesisError> {
        (**self).get_records(iterator, limit).await
    }
    async fn register_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, KinesisError> {
        (**self).register_stream_consumer(stream_arn, consumer_name).await
    }
    async fn describe_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, KinesisError> {
        (**self).describe_stream_consumer(stream_arn, consumer_name).await
    }
    async fn deregister_stream_consumer(&self, stream_arn: &str, consumer_name: &str) -> Result<(), KinesisError> {
        (**self).deregister_stream_consumer(stream_arn, consumer_name).await
    }
    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<SubscriptionStream, KinesisError> {
        (**self).subscribe_to_shard(consumer_arn, shard_id, position).await
    }
    async fn split_shard(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        new_starting_hash_key: HashKey,
    ) -> Result<(), KinesisError> {
        (**self).split_shard(stream, shard_id, new_starting_hash_key).await
    }
    async fn merge_shards(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        adjacent_shard_id: &ShardId,
    ) -> Result<(), KinesisError> {
        (**self).merge_shards(stream, shard_id, adjacent_shard_id).await
    }
    async fn update_shard_count(
        &self,
        stream: &StreamRef,
        target_shard_count: u32,
    ) -> Result<UpdateShardCountOutput, KinesisError> {
        (**self).update_shard_count(stream, target_shard_count).await
    }
    async fn update_max_record_size(&self, stream: &StreamRef, max_record_size_kib: u32) -> Result<(), KinesisError> {
        (**self).update_max_record_size(stream, max_record_size_kib).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ref_from_text() {
        assert_eq!(StreamRef::from("orders"), StreamRef::Name("orders".into()));
        let arn = StreamRef::from("arn:aws:kinesis:us-east-1:123456789012:stream/orders");
        assert!(matches!(arn, StreamRef::Arn(_)));
        assert_eq!(arn.name(), "orders");
    }
}
