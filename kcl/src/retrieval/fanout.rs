//! Enhanced fan-out retrieval: `SubscribeToShard` subscriptions, renewed for as long as the
//! lease is held.
//!
//! * The consumer is resolved once per worker and shared by all shards: describe it; register it
//!   if it does not exist yet; wait until it is `ACTIVE` (`registration_attempts` tries, 1 s
//!   apart; two workers registering at once both end up with the one consumer). When a
//!   subscription is refused because the consumer is not found (deregistered meanwhile), the
//!   ARN is forgotten and resolved — re-registered — again.
//! * A subscription lasts at most five minutes; when it ends the next one starts at once, after
//!   the last delivered sequence number (`AFTER_SEQUENCE_NUMBER` of the event's continuation
//!   sequence number).
//! * A subscription that fails (`ResourceInUse` because the previous one is still inside the
//!   service's 5 s takeover window, throttling, transport) is retried with exponential backoff
//!   starting at 1 s; one that delivers no event for `max_time_between_events` is dropped and
//!   renewed (the service sends at least one event every 5 s).
//! * An event without a continuation sequence number is the shard's end: its batch carries the
//!   child shards and the fetcher stops. So does a subscription refused with
//!   `ResourceNotFoundException` for a shard a listing no longer shows (expired past retention).

use std::sync::Arc;

use futures::StreamExt;
use kinesis_core::sequence::StartingPosition;
use kinesis_core::{ConsumerStatus, Kinesis, KinesisError, StreamRef};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::polling::pause;
use super::{Batch, FetchContext, Prefetch};

/// The worker's registered enhanced fan-out consumer, resolved on first use.
pub(crate) struct FanOutConsumer {
    kinesis: Arc<dyn Kinesis>,
    stream: StreamRef,
    consumer_name: String,
    attempts: u32,
    /// The resolved ARN; held while resolving, so shards starting together register once.
    arn: Mutex<Option<String>>,
}

impl FanOutConsumer {
    pub fn new(kinesis: Arc<dyn Kinesis>, stream: StreamRef, consumer_name: String, attempts: u32) -> Self {
        FanOutConsumer { kinesis, stream, consumer_name, attempts: attempts.max(1), arn: Mutex::new(None) }
    }

    /// The consumer's ARN: describes it, registers it if it does not exist, waits until active.
    pub async fn arn(&self) -> Result<String, KinesisError> {
        let mut arn = self.arn.lock().await;
        if let Some(arn) = arn.as_ref() {
            return Ok(arn.clone());
        }
        let resolved = self.resolve().await?;
        *arn = Some(resolved.clone());
        Ok(resolved)
    }

    /// Forgets `stale` (the service no longer knows it, e.g. the consumer was deregistered), so
    /// the next [`arn`](Self::arn) describes — and if need be registers — the consumer again.
    pub async fn invalidate(&self, stale: &str) {
        let mut arn = self.arn.lock().await;
        if arn.as_deref() == Some(stale) {
            tracing::info!(consumer = %self.consumer_name, "enhanced fan-out consumer not found; resolving it again");
            *arn = None;
        }
    }

    async fn resolve(&self) -> Result<String, KinesisError> {
        let mut last = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            match self.try_resolve().await {
                Ok(Some(arn)) => return Ok(arn),
                Ok(None) => {}
                Err(e) if e.is_retryable() || matches!(e, KinesisError::ResourceInUse { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| KinesisError::Timeout {
            message: format!("consumer {} did not become ACTIVE", self.consumer_name),
        }))
    }

    /// `Some(arn)` once the consumer is active.
    async fn try_resolve(&self) -> Result<Option<String>, KinesisError> {
        let stream_arn = match &self.stream {
            StreamRef::Arn(arn) => arn.clone(),
            StreamRef::Name(_) => self.kinesis.describe_stream_summary(&self.stream).await?.stream_arn,
        };
        let consumer = match self.kinesis.describe_stream_consumer(&stream_arn, &self.consumer_name).await {
            Ok(c) => c,
            Err(e) if e.is_not_found() => {
                tracing::info!(consumer = %self.consumer_name, "registering the enhanced fan-out consumer");
                self.kinesis.register_stream_consumer(&stream_arn, &self.consumer_name).await?
            }
            Err(e) => return Err(e),
        };
        Ok((consumer.status == ConsumerStatus::Active).then_some(consumer.consumer_arn))
    }
}

/// Reads the shard through subscriptions until its end or until `token` is cancelled.
pub(crate) async fn run(ctx: FetchContext, consumer: Arc<FanOutConsumer>, queue: Prefetch, token: CancellationToken) {
    let settings = ctx.config.fan_out.clone();
    let mut backoff = settings.resubscribe_backoff.iter(ctx.seed);
    let mut position = ctx.starting_position();
    let mut deagg = ctx.deaggregator();
    let mut reported = false;
    let report = |e: &KinesisError, reported: &mut bool| {
        tracing::warn!(shard = %ctx.shard_id, error = %e, "enhanced fan-out failed; retrying");
        (ctx.report)(Some(e.to_string()));
        *reported = true;
    };
    loop {
        let arn = tokio::select! {
            () = token.cancelled() => return,
            r = consumer.arn() => r,
        };
        let arn = match arn {
            Ok(arn) => arn,
            Err(e) => {
                report(&e, &mut reported);
                if !pause(&token, backoff.next()).await {
                    return;
                }
                continue;
            }
        };
        let subscribed = tokio::select! {
            () = token.cancelled() => return,
            r = ctx.kinesis.subscribe_to_shard(&arn, &ctx.shard_id, position.clone()) => r,
        };
        let mut events = match subscribed {
            Ok(events) => events,
            Err(e) => {
                if e.is_not_found() {
                    if let Some(children) = ctx.children_if_gone().await {
                        let _ = queue.send(Batch::end(children)).await;
                        return;
                    }
                    consumer.invalidate(&arn).await;
                }
                if matches!(e, KinesisError::ResourceInUse { .. }) || e.is_throttling() {
                    tracing::debug!(shard = %ctx.shard_id, error = %e, "subscription refused; backing off");
                } else {
                    report(&e, &mut reported);
                }
                if !pause(&token, backoff.next()).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = token.cancelled() => return,
                r = tokio::time::timeout(settings.max_time_between_events, events.next()) => r,
            };
            match next {
                Err(_) => {
                    tracing::warn!(shard = %ctx.shard_id, "no event from the subscription in time; subscribing again");
                    break;
                }
                // The subscription's five minutes are over: subscribe again at once.
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    if e.is_not_found() {
                        consumer.invalidate(&arn).await;
                    }
                    if matches!(e, KinesisError::ResourceInUse { .. }) {
                        tracing::debug!(shard = %ctx.shard_id, error = %e, "subscription taken over; backing off");
                    } else {
                        report(&e, &mut reported);
                    }
                    drop(events);
                    if !pause(&token, backoff.next()).await {
                        return;
                    }
                    break;
                }
                Ok(Some(Ok(event))) => {
                    backoff = settings.resubscribe_backoff.iter(ctx.seed);
                    if reported {
                        (ctx.report)(None);
                        reported = false;
                    }
                    let last = event.records.last().map(|r| r.sequence_number.clone());
                    match (&event.continuation_sequence_number, last) {
                        (Some(continuation), _) => {
                            position = StartingPosition::AfterSequenceNumber(continuation.clone());
                        }
                        (None, Some(last)) => position = StartingPosition::AfterSequenceNumber(last),
                        (None, None) => {}
                    }
                    let at_end = event.continuation_sequence_number.is_none();
                    let child_shards = at_end.then_some(event.child_shards);
                    let millis = Some(event.millis_behind_latest);
                    if !ctx.queue_read(&mut deagg, &queue, event.records, millis, child_shards).await {
                        return;
                    }
                    if at_end {
                        return;
                    }
                }
            }
        }
    }
}
