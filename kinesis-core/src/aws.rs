//! [`AwsKinesis`]: the [`Kinesis`] trait over `aws-sdk-kinesis`, for real Kinesis, LocalStack
//! and kinesis-mock.

use std::fmt::Debug;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::config::{Credentials, Region};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types as sdk;
use bytes::Bytes;
use futures::StreamExt;

use crate::client::*;
use crate::error::KinesisError;
use crate::hash_key::{HashKey, HashKeyRange};
use crate::sequence::{SequenceNumber, StartingPosition};
use crate::shard::{ChildShard, SequenceNumberRange, Shard, ShardId};

/// The [`Kinesis`] trait implemented over the official `aws-sdk-kinesis` client.
///
/// Build it from the standard AWS configuration chain ([`AwsKinesis::from_env`]), from an
/// explicit endpoint such as LocalStack ([`AwsKinesis::with_endpoint`]), or from a client you
/// configured yourself ([`AwsKinesis::from_client`]). SDK errors become [`KinesisError`]s that
/// keep the service's exception name and message.
///
/// The SDK retries whole calls that fail with throttling or transient errors (standard retry
/// mode, 3 attempts by default); per-entry `PutRecords` failures are returned, not retried.
#[derive(Clone, Debug)]
pub struct AwsKinesis {
    client: Client,
}

impl AwsKinesis {
    /// Builds a client from the standard chain: environment (`AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// credentials), shared config and credentials files, profiles, and instance metadata.
    pub async fn from_env() -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        AwsKinesis::from_sdk_config(&config)
    }

    /// Builds a client for an explicit endpoint (LocalStack, kinesis-mock) and region; credentials
    /// still come from the standard chain.
    pub async fn with_endpoint(endpoint_url: impl Into<String>, region: impl Into<String>) -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint_url)
            .region(Region::new(region.into()))
            .load()
            .await;
        AwsKinesis::from_sdk_config(&config)
    }

    /// Builds a client for a local emulator: the given endpoint, region `us-east-1` and static
    /// test credentials, so nothing from the host's AWS setup is needed.
    pub async fn local(endpoint_url: impl Into<String>) -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint_url)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "kinesis-core-local"))
            .load()
            .await;
        AwsKinesis::from_sdk_config(&config)
    }

    /// Builds a client from a loaded `aws_config::SdkConfig`.
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Self {
        AwsKinesis { client: Client::new(config) }
    }

    /// Wraps a ready SDK client.
    pub fn from_client(client: Client) -> Self {
        AwsKinesis { client }
    }

    /// The underlying SDK client, for calls this trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn stream_arn(&self, stream: &StreamRef) -> Result<String, KinesisError> {
        match stream {
            StreamRef::Arn(arn) => Ok(arn.clone()),
            StreamRef::Name(_) => Ok(self.describe_stream_summary(stream).await?.stream_arn),
        }
    }
}

/// Maps an operation's SDK error onto [`KinesisError`], keeping the service's code and message.
/// A server error whose body cannot be read (some emulators send an empty 500) is an internal
/// failure rather than a transport problem.
fn map_error<E>(err: SdkError<E, HttpResponse>) -> KinesisError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::ResponseError(response) = &err {
        let status = response.raw().status();
        if status.is_server_error() {
            return KinesisError::InternalFailure {
                message: format!("HTTP {} with an unreadable body", status.as_u16()),
            };
        }
    }
    map_any_error(err)
}

/// Maps any SDK error (operations and event streams) onto [`KinesisError`].
fn map_any_error<E, R>(err: SdkError<E, R>) -> KinesisError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let message = e.message().unwrap_or_default().to_owned();
            match e.code() {
                Some(code) => KinesisError::from_code(code, message),
                None => KinesisError::Service { code: "Unknown".to_owned(), message: format!("{e}: {message}") },
            }
        }
        SdkError::TimeoutError(_) => KinesisError::Timeout { message: "the request timed out".to_owned() },
        SdkError::DispatchFailure(ref failure) => {
            let message = error_chain(&err);
            if failure.is_timeout() {
                KinesisError::Timeout { message }
            } else {
                KinesisError::Transport { message, source: Some(Box::new(err)) }
            }
        }
        SdkError::ConstructionFailure(failure) => {
            KinesisError::Service { code: "ConstructionFailure".to_owned(), message: format!("{failure:?}") }
        }
        other => KinesisError::Transport { message: format!("{other}"), source: Some(Box::new(other)) },
    }
}

/// An error and its sources in words: `dispatch failure: io error: Connection refused (os error 111)`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

fn bad_response(what: impl std::fmt::Display) -> KinesisError {
    KinesisError::Service {
        code: "InvalidResponse".to_owned(),
        message: format!("unexpected response from Kinesis: {what}"),
    }
}

fn parse_seq(text: &str) -> Result<SequenceNumber, KinesisError> {
    SequenceNumber::parse(text).map_err(bad_response)
}

fn parse_shard_id(text: &str) -> Result<ShardId, KinesisError> {
    ShardId::new(text).map_err(bad_response)
}

fn to_system_time(dt: &DateTime) -> SystemTime {
    SystemTime::try_from(*dt).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn convert_range(range: Option<&sdk::HashKeyRange>) -> Result<HashKeyRange, KinesisError> {
    let range = range.ok_or_else(|| bad_response("shard without a hash key range"))?;
    HashKeyRange::parse(range.starting_hash_key(), range.ending_hash_key()).map_err(bad_response)
}

fn convert_shard(shard: &sdk::Shard) -> Result<Shard, KinesisError> {
    let seq = shard.sequence_number_range().ok_or_else(|| bad_response("shard without a sequence number range"))?;
    Ok(Shard {
        shard_id: parse_shard_id(shard.shard_id())?,
        parent_shard_id: shard.parent_shard_id().map(parse_shard_id).transpose()?,
        adjacent_parent_shard_id: shard.adjacent_parent_shard_id().map(parse_shard_id).transpose()?,
        hash_key_range: convert_range(shard.hash_key_range())?,
        sequence_number_range: SequenceNumberRange {
            starting: parse_seq(seq.starting_sequence_number())?,
            ending: seq.ending_sequence_number().map(parse_seq).transpose()?,
        },
    })
}

fn convert_child(child: &sdk::ChildShard) -> Result<ChildShard, KinesisError> {
    Ok(ChildShard {
        shard_id: parse_shard_id(child.shard_id())?,
        parent_shards: child.parent_shards().iter().map(|p| parse_shard_id(p)).collect::<Result<_, _>>()?,
        hash_key_range: convert_range(child.hash_key_range())?,
    })
}

fn convert_record(record: sdk::Record) -> Result<Record, KinesisError> {
    Ok(Record {
        sequence_number: parse_seq(record.sequence_number())?,
        approximate_arrival_timestamp: record
            .approximate_arrival_timestamp()
            .map_or(SystemTime::UNIX_EPOCH, to_system_time),
        partition_key: record.partition_key().unwrap_or_default().to_owned(),
        data: Bytes::from(record.data.into_inner()),
    })
}

fn convert_mode(details: Option<&sdk::StreamModeDetails>) -> StreamMode {
    match details.map(|d| d.stream_mode()) {
        Some(sdk::StreamMode::OnDemand) => StreamMode::OnDemand,
        _ => StreamMode::Provisioned,
    }
}

fn sdk_mode(mode: StreamMode) -> sdk::StreamMode {
    match mode {
        StreamMode::Provisioned => sdk::StreamMode::Provisioned,
        StreamMode::OnDemand => sdk::StreamMode::OnDemand,
    }
}

fn convert_consumer_status(status: &sdk::ConsumerStatus) -> ConsumerStatus {
    match status {
        sdk::ConsumerStatus::Active => ConsumerStatus::Active,
        sdk::ConsumerStatus::Deleting => ConsumerStatus::Deleting,
        _ => ConsumerStatus::Creating,
    }
}

fn sdk_shard_filter(filter: &ShardFilter) -> Result<sdk::ShardFilter, KinesisError> {
    let builder = sdk::ShardFilter::builder();
    let builder = match filter {
        ShardFilter::AfterShardId(id) => builder.r#type(sdk::ShardFilterType::AfterShardId).shard_id(id.as_str()),
        ShardFilter::AtTrimHorizon => builder.r#type(sdk::ShardFilterType::AtTrimHorizon),
        ShardFilter::FromTrimHorizon => builder.r#type(sdk::ShardFilterType::FromTrimHorizon),
        ShardFilter::AtLatest => builder.r#type(sdk::ShardFilterType::AtLatest),
        ShardFilter::AtTimestamp(t) => builder.r#type(sdk::ShardFilterType::AtTimestamp).timestamp(DateTime::from(*t)),
        ShardFilter::FromTimestamp(t) => {
            builder.r#type(sdk::ShardFilterType::FromTimestamp).timestamp(DateTime::from(*t))
        }
    };
    builder.build().map_err(|e| KinesisError::Service { code: "ConstructionFailure".into(), message: e.to_string() })
}

fn iterator_type(position: &StartingPosition) -> sdk::ShardIteratorType {
    match position {
        StartingPosition::TrimHorizon => sdk::ShardIteratorType::TrimHorizon,
        StartingPosition::Latest => sdk::ShardIteratorType::Latest,
        StartingPosition::AtSequenceNumber(_) => sdk::ShardIteratorType::AtSequenceNumber,
        StartingPosition::AfterSequenceNumber(_) => sdk::ShardIteratorType::AfterSequenceNumber,
        StartingPosition::AtTimestamp(_) => sdk::ShardIteratorType::AtTimestamp,
    }
}

fn position_sequence(position: &StartingPosition) -> Option<String> {
    match position {
        StartingPosition::AtSequenceNumber(s) | StartingPosition::AfterSequenceNumber(s) => Some(s.to_string()),
        _ => None,
    }
}

fn position_timestamp(position: &StartingPosition) -> Option<DateTime> {
    match position {
        StartingPosition::AtTimestamp(t) => Some(DateTime::from(*t)),
        _ => None,
    }
}

fn convert_event(event: sdk::SubscribeToShardEvent) -> Result<SubscribeToShardEvent, KinesisError> {
    let continuation = match event.continuation_sequence_number() {
        "" => None,
        text => Some(parse_seq(text)?),
    };
    let millis_behind_latest = u64::try_from(event.millis_behind_latest()).unwrap_or(0);
    let child_shards = event.child_shards().iter().map(convert_child).collect::<Result<_, _>>()?;
    let records = event.records.into_iter().map(convert_record).collect::<Result<_, _>>()?;
    Ok(SubscribeToShardEvent {
        records,
        continuation_sequence_number: continuation,
        millis_behind_latest,
        child_shards,
    })
}

/// Builds a [`StreamConsumer`] from the SDK's `Consumer` or `ConsumerDescription` (same accessors).
macro_rules! stream_consumer {
    ($c:expr) => {
        StreamConsumer {
            consumer_name: $c.consumer_name().to_owned(),
            consumer_arn: $c.consumer_arn().to_owned(),
            status: convert_consumer_status($c.consumer_status()),
            creation_timestamp: to_system_time($c.consumer_creation_timestamp()),
        }
    };
}

/// Applies a stream reference to an SDK builder that has `stream_name` and `stream_arn`.
macro_rules! with_stream {
    ($builder:expr, $stream:expr) => {
        match $stream {
            StreamRef::Name(name) => $builder.stream_name(name),
            StreamRef::Arn(arn) => $builder.stream_arn(arn),
        }
    };
}

#[async_trait]
impl Kinesis for AwsKinesis {
    async fn create_stream(&self, request: CreateStreamRequest) -> Result<(), KinesisError> {
        let mut call = self.client.create_stream().stream_name(&request.stream_name);
        if let Some(count) = request.shard_count {
            call = call.shard_count(i32::try_from(count).unwrap_or(i32::MAX));
        }
        if request.mode == StreamMode::OnDemand {
            let details = sdk::StreamModeDetails::builder()
                .stream_mode(sdk_mode(request.mode))
                .build()
                .map_err(|e| KinesisError::Service { code: "ConstructionFailure".into(), message: e.to_string() })?;
            call = call.stream_mode_details(details);
        }
        if let Some(kib) = request.max_record_size_kib {
            call = call.max_record_size_in_kib(i32::try_from(kib).unwrap_or(i32::MAX));
        }
        call.send().await.map_err(map_error)?;
        Ok(())
    }

    async fn delete_stream(&self, stream: &StreamRef, enforce_consumer_deletion: bool) -> Result<(), KinesisError> {
        let call = self.client.delete_stream().enforce_consumer_deletion(enforce_consumer_deletion);
        with_stream!(call, stream).send().await.map_err(map_error)?;
        Ok(())
    }

    async fn describe_stream_summary(&self, stream: &StreamRef) -> Result<StreamSummary, KinesisError> {
        let call = self.client.describe_stream_summary();
        let output = with_stream!(call, stream).send().await.map_err(map_error)?;
        let summary = output.stream_description_summary().ok_or_else(|| bad_response("no StreamDescriptionSummary"))?;
        let status = match summary.stream_status() {
            sdk::StreamStatus::Creating => StreamStatus::Creating,
            sdk::StreamStatus::Deleting => StreamStatus::Deleting,
            sdk::StreamStatus::Updating => StreamStatus::Updating,
            _ => StreamStatus::Active,
        };
        Ok(StreamSummary {
            stream_name: summary.stream_name().to_owned(),
            stream_arn: summary.stream_arn().to_owned(),
            status,
            mode: convert_mode(summary.stream_mode_details()),
            open_shard_count: u32::try_from(summary.open_shard_count()).unwrap_or(0),
            retention_period_hours: u32::try_from(summary.retention_period_hours()).unwrap_or(0),
            consumer_count: summary.consumer_count().and_then(|c| u32::try_from(c).ok()),
            max_record_size_kib: summary
                .max_record_size_in_kib()
                .and_then(|k| u32::try_from(k).ok())
                .unwrap_or(crate::limits::DEFAULT_MAX_RECORD_SIZE_KIB),
            creation_timestamp: to_system_time(summary.stream_creation_timestamp()),
        })
    }

    async fn list_shards(&self, request: ListShardsRequest) -> Result<ListShardsPage, KinesisError> {
        let mut call = self.client.list_shards();
        if let Some(token) = &request.next_token {
            // The service refuses a stream name together with a NextToken.
            call = call.next_token(token);
        } else {
            call = with_stream!(call, &request.stream);
            if let Some(filter) = &request.filter {
                call = call.shard_filter(sdk_shard_filter(filter)?);
            }
            if let Some(start) = &request.exclusive_start_shard_id {
                call = call.exclusive_start_shard_id(start.as_str());
            }
        }
        if let Some(max) = request.max_results {
            call = call.max_results(i32::try_from(max).unwrap_or(i32::MAX));
        }
        let output = call.send().await.map_err(map_error)?;
        let shards = output.shards().iter().map(convert_shard).collect::<Result<_, _>>()?;
        Ok(ListShardsPage { shards, next_token: output.next_token().map(str::to_owned) })
    }

    async fn put_record(&self, request: PutRecordRequest) -> Result<RecordPlacement, KinesisError> {
        let mut call =
            self.client.put_record().partition_key(request.partition_key).data(Blob::new(request.data.to_vec()));
        call = with_stream!(call, &request.stream);
        if let Some(ehk) = request.explicit_hash_key {
            call = call.explicit_hash_key(ehk.to_string());
        }
        if let Some(seq) = request.sequence_number_for_ordering {
            call = call.sequence_number_for_ordering(seq.to_string());
        }
        let output = call.send().await.map_err(map_error)?;
        Ok(RecordPlacement {
            shard_id: parse_shard_id(output.shard_id())?,
            sequence_number: parse_seq(output.sequence_number())?,
        })
    }

    async fn put_records(
        &self,
        stream: &StreamRef,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsOutput, KinesisError> {
        let count = entries.len();
        let mut call = self.client.put_records();
        call = with_stream!(call, stream);
        for entry in entries {
            let mut builder = sdk::PutRecordsRequestEntry::builder()
                .partition_key(entry.partition_key)
                .data(Blob::new(Vec::from(entry.data)));
            if let Some(ehk) = entry.explicit_hash_key {
                builder = builder.explicit_hash_key(ehk.to_string());
            }
            let built = builder
                .build()
                .map_err(|e| KinesisError::Service { code: "ConstructionFailure".into(), message: e.to_string() })?;
            call = call.records(built);
        }
        let output = call.send().await.map_err(map_error)?;
        if output.records().len() != count {
            return Err(bad_response(format!("{} results for {count} PutRecords entries", output.records().len())));
        }
        let records = output
            .records()
            .iter()
            .map(|entry| match entry.error_code() {
                Some(code) => Ok(Err(KinesisError::from_code(code, entry.error_message().unwrap_or_default()))),
                None => Ok(Ok(RecordPlacement {
                    shard_id: parse_shard_id(entry.shard_id().unwrap_or_default())?,
                    sequence_number: parse_seq(entry.sequence_number().unwrap_or_default())?,
                })),
            })
            .collect::<Result<Vec<_>, KinesisError>>()?;
        Ok(PutRecordsOutput { records })
    }

    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<ShardIterator, KinesisError> {
        let mut call =
            self.client.get_shard_iterator().shard_id(shard_id.as_str()).shard_iterator_type(iterator_type(&position));
        call = with_stream!(call, stream);
        if let Some(seq) = position_sequence(&position) {
            call = call.starting_sequence_number(seq);
        }
        if let Some(ts) = position_timestamp(&position) {
            call = call.timestamp(ts);
        }
        let output = call.send().await.map_err(map_error)?;
        output
            .shard_iterator()
            .map(|s| ShardIterator::from(s.to_owned()))
            .ok_or_else(|| bad_response("GetShardIterator returned no iterator"))
    }

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: Option<u32>,
    ) -> Result<GetRecordsOutput, KinesisError> {
        let mut call = self.client.get_records().shard_iterator(iterator.as_str());
        if let Some(limit) = limit {
            call = call.limit(i32::try_from(limit).unwrap_or(i32::MAX));
        }
        let output = call.send().await.map_err(map_error)?;
        let child_shards = output.child_shards().iter().map(convert_child).collect::<Result<_, _>>()?;
        let next_shard_iterator = output.next_shard_iterator().map(|s| ShardIterator::from(s.to_owned()));
        let millis_behind_latest = output.millis_behind_latest().and_then(|m| u64::try_from(m).ok());
        let records = output.records.into_iter().map(convert_record).collect::<Result<_, _>>()?;
        Ok(GetRecordsOutput { records, next_shard_iterator, millis_behind_latest, child_shards })
    }

    async fn register_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, KinesisError> {
        let output = self
            .client
            .register_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(consumer_name)
            .send()
            .await
            .map_err(map_error)?;
        let consumer = output.consumer().ok_or_else(|| bad_response("RegisterStreamConsumer returned no consumer"))?;
        Ok(stream_consumer!(consumer))
    }

    async fn describe_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, KinesisError> {
        let output = self
            .client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(consumer_name)
            .send()
            .await
            .map_err(map_error)?;
        let consumer = output
            .consumer_description()
            .ok_or_else(|| bad_response("DescribeStreamConsumer returned no description"))?;
        Ok(stream_consumer!(consumer))
    }

    async fn deregister_stream_consumer(&self, stream_arn: &str, consumer_name: &str) -> Result<(), KinesisError> {
        self.client
            .deregister_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(consumer_name)
            .send()
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &ShardId,
        position: StartingPosition,
    ) -> Result<SubscriptionStream, KinesisError> {
        let mut start = sdk::StartingPosition::builder().r#type(iterator_type(&position));
        if let Some(seq) = position_sequence(&position) {
            start = start.sequence_number(seq);
        }
        if let Some(ts) = position_timestamp(&position) {
            start = start.timestamp(ts);
        }
        let start = start
            .build()
            .map_err(|e| KinesisError::Service { code: "ConstructionFailure".into(), message: e.to_string() })?;
        let output = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id.as_str())
            .starting_position(start)
            .send()
            .await
            .map_err(map_error)?;
        let events = futures::stream::unfold(Some(output.event_stream), |receiver| async move {
            let mut receiver = receiver?;
            loop {
                match receiver.recv().await {
                    Ok(Some(sdk::SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                        return Some((convert_event(event), Some(receiver)));
                    }
                    // A variant newer than this SDK: skip it.
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(e) => return Some((Err(map_any_error(e)), None)),
                }
            }
        });
        Ok(events.boxed())
    }

    async fn split_shard(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        new_starting_hash_key: HashKey,
    ) -> Result<(), KinesisError> {
        let call = self
            .client
            .split_shard()
            .shard_to_split(shard_id.as_str())
            .new_starting_hash_key(new_starting_hash_key.to_string());
        with_stream!(call, stream).send().await.map_err(map_error)?;
        Ok(())
    }

    async fn merge_shards(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        adjacent_shard_id: &ShardId,
    ) -> Result<(), KinesisError> {
        let call = self
            .client
            .merge_shards()
            .shard_to_merge(shard_id.as_str())
            .adjacent_shard_to_merge(adjacent_shard_id.as_str());
        with_stream!(call, stream).send().await.map_err(map_error)?;
        Ok(())
    }

    async fn update_shard_count(
        &self,
        stream: &StreamRef,
        target_shard_count: u32,
    ) -> Result<UpdateShardCountOutput, KinesisError> {
        let call = self
            .client
            .update_shard_count()
            .target_shard_count(i32::try_from(target_shard_count).unwrap_or(i32::MAX))
            .scaling_type(sdk::ScalingType::UniformScaling);
        let output = with_stream!(call, stream).send().await.map_err(map_error)?;
        Ok(UpdateShardCountOutput {
            current_shard_count: output.current_shard_count().and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
            target_shard_count: output
                .target_shard_count()
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(target_shard_count),
        })
    }

    async fn update_max_record_size(&self, stream: &StreamRef, max_record_size_kib: u32) -> Result<(), KinesisError> {
        let arn = self.stream_arn(stream).await?;
        self.client
            .update_max_record_size()
            .stream_arn(arn)
            .max_record_size_in_kib(i32::try_from(max_record_size_kib).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(map_error)?;
        Ok(())
    }
}
