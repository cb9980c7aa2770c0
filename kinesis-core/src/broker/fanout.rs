//! Enhanced fan-out: consumer registration and `SubscribeToShard` subscriptions.
//!
//! A subscription pushes an event as soon as records are available (at most 10,000 records and
//! the consumer's 2 MiB/s per-shard budget per event) and a heartbeat event every second
//! otherwise. It ends after the configured duration (five minutes), when the shard's end has been
//! delivered, or with `ResourceInUseException` when a newer subscription for the same consumer
//! and shard takes over. A second subscription within five seconds of the current one is refused.
//! Subscriptions are tracked by one slot per consumer and shard, released when the event stream
//! is dropped, so nothing accumulates.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::clock::BrokerClock;
use super::throttle::TokenBucket;
use super::{MemoryBroker, errors};
use crate::client::{ConsumerStatus, StreamConsumer, StreamRef, SubscribeToShardEvent, SubscriptionStream};
use crate::error::KinesisError;
use crate::limits;
use crate::sequence::{SequenceNumber, StartingPosition};
use crate::shard::ShardId;

const HEARTBEAT: Duration = Duration::from_secs(1);
const TAKEOVER_GRACE: Duration = Duration::from_secs(5);

fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn consumer_not_found(name: &str, stream: &str, account: &str) -> KinesisError {
    KinesisError::ResourceNotFound {
        message: format!("Consumer {name} under stream {stream} under account {account} not found."),
    }
}

pub(super) fn register(
    broker: &MemoryBroker,
    stream_arn: &str,
    consumer_name: &str,
) -> Result<StreamConsumer, KinesisError> {
    if !valid_consumer_name(consumer_name) {
        return Err(errors::validation(
            1,
            &format!(
                "Value '{consumer_name}' at 'consumerName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
            ),
        ));
    }
    let account = broker.account().to_owned();
    let max = broker.inner.config.max_consumers_per_stream;
    let created_at = broker.inner.clock.now_wall();
    broker.with_stream(&StreamRef::Arn(stream_arn.to_owned()), |s, _| {
        if s.consumers.iter().any(|c| c.name == consumer_name) {
            return Err(KinesisError::ResourceInUse {
                message: format!(
                    "Consumer {consumer_name} under stream {} already exists for account {account}.",
                    s.name
                ),
            });
        }
        if s.consumers.len() >= max {
            return Err(KinesisError::LimitExceeded {
                message: format!("Consumer limit of {max} exceeded for stream {} under account {account}.", s.name),
            });
        }
        let arn = format!("{}/consumer/{consumer_name}:{}", s.arn, BrokerClock::epoch_secs(created_at));
        s.consumers.push(super::stream::ConsumerState { name: consumer_name.to_owned(), arn: arn.clone(), created_at });
        Ok(StreamConsumer {
            consumer_name: consumer_name.to_owned(),
            consumer_arn: arn,
            status: ConsumerStatus::Active,
            creation_timestamp: created_at,
        })
    })
}

pub(super) fn describe(
    broker: &MemoryBroker,
    stream_arn: &str,
    consumer_name: &str,
) -> Result<StreamConsumer, KinesisError> {
    let account = broker.account().to_owned();
    broker.with_stream(&StreamRef::Arn(stream_arn.to_owned()), |s, _| {
        let c = s
            .consumers
            .iter()
            .find(|c| c.name == consumer_name)
            .ok_or_else(|| consumer_not_found(consumer_name, &s.name, &account))?;
        Ok(StreamConsumer {
            consumer_name: c.name.clone(),
            consumer_arn: c.arn.clone(),
            status: ConsumerStatus::Active,
            creation_timestamp: c.created_at,
        })
    })
}

pub(super) fn deregister(broker: &MemoryBroker, stream_arn: &str, consumer_name: &str) -> Result<(), KinesisError> {
    let account = broker.account().to_owned();
    let notifies = broker.with_stream(&StreamRef::Arn(stream_arn.to_owned()), |s, _| {
        let pos = s
            .consumers
            .iter()
            .position(|c| c.name == consumer_name)
            .ok_or_else(|| consumer_not_found(consumer_name, &s.name, &account))?;
        let removed = s.consumers.remove(pos);
        s.subscriptions.retain(|(arn, _), _| *arn != removed.arn);
        Ok(s.shards.iter().map(|sh| sh.notify.clone()).collect::<Vec<_>>())
    })?;
    for n in notifies {
        n.notify_waiters();
    }
    Ok(())
}

/// The state behind one subscription's event stream.
struct Subscription {
    broker: MemoryBroker,
    stream_name: String,
    incarnation: u64,
    consumer_arn: String,
    shard_index: u32,
    generation: u64,
    position: u64,
    last_delivered: Option<SequenceNumber>,
    deadline: Instant,
    budget: TokenBucket,
    done: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.broker.lock();
        if let Some(s) = state.streams.get_mut(&self.stream_name) {
            let key = (self.consumer_arn.clone(), self.shard_index);
            if s.subscriptions.get(&key).is_some_and(|(generation, _)| *generation == self.generation) {
                s.subscriptions.remove(&key);
            }
        }
    }
}

enum Step {
    Event(Result<SubscribeToShardEvent, KinesisError>),
    End,
    Wait(std::sync::Arc<tokio::sync::Notify>, Option<Instant>),
}

impl Subscription {
    fn step(&mut self, first: bool, heartbeat_due: bool) -> Step {
        let broker = self.broker.clone();
        let account = broker.account().to_owned();
        let now = broker.inner.clock.instant();
        let mut state = broker.lock();
        let Some(s) = state.streams.get_mut(&self.stream_name).filter(|s| s.incarnation == self.incarnation) else {
            return Step::Event(Err(errors::stream_not_found(&self.stream_name, &account)));
        };
        s.trim(now);
        let key = (self.consumer_arn.clone(), self.shard_index);
        match s.subscriptions.get(&key) {
            Some((generation, _)) if *generation == self.generation => {}
            _ => {
                if !s.consumers.iter().any(|c| c.arn == self.consumer_arn) {
                    return Step::Event(Err(KinesisError::ResourceNotFound {
                        message: format!("Consumer {} not found.", self.consumer_arn),
                    }));
                }
                return Step::Event(Err(KinesisError::ResourceInUse {
                    message: format!("Another active subscription exists for this consumer: {}", self.consumer_arn),
                }));
            }
        }
        if now >= self.deadline {
            return Step::End;
        }
        let index = self.shard_index as usize;
        let throttling = broker.inner.config.throttling;
        let shard = &s.shards[index];
        self.position = self.position.max(shard.trim_horizon());
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let has_budget = !throttling || self.budget.is_positive(now);
        while has_budget && records.len() < limits::MAX_GET_RECORDS_LIMIT as usize {
            let Some(record) = shard.record_at(self.position) else { break };
            let size = record.billed_size();
            if !records.is_empty()
                && (bytes + size > limits::MAX_GET_RECORDS_BYTES
                    || (throttling && !self.budget.can_take(size as f64 + bytes as f64, now)))
            {
                break;
            }
            bytes += size;
            records.push(record.to_record());
            self.position += 1;
        }
        if throttling {
            self.budget.charge(bytes as f64, now);
        }
        let at_end = self.position >= shard.end_position();
        let shard_finished = !shard.is_open() && at_end;
        if let Some(last) = records.last() {
            self.last_delivered = Some(last.sequence_number.clone());
        }
        if records.is_empty() && !shard_finished && !first && !heartbeat_due {
            let wake = (!has_budget).then(|| now + Duration::from_millis(100));
            return Step::Wait(shard.notify.clone(), wake);
        }
        let continuation = if shard_finished {
            None
        } else {
            Some(self.last_delivered.clone().unwrap_or_else(|| {
                self.position
                    .checked_sub(1)
                    .and_then(|p| shard.record_at(p))
                    .map(|r| r.sequence_number.clone())
                    .unwrap_or_else(|| shard.starting_sequence_number.clone())
            }))
        };
        let event = SubscribeToShardEvent {
            millis_behind_latest: shard.millis_behind(self.position, now),
            child_shards: if shard_finished { s.child_shards_of(index) } else { Vec::new() },
            records,
            continuation_sequence_number: continuation,
        };
        if shard_finished {
            self.done = true;
        }
        Step::Event(Ok(event))
    }
}

pub(super) fn subscribe(
    broker: &MemoryBroker,
    consumer_arn: &str,
    shard_id: &ShardId,
    position: StartingPosition,
) -> Result<SubscriptionStream, KinesisError> {
    let account = broker.account().to_owned();
    let (stream_arn, _) = consumer_arn
        .split_once("/consumer/")
        .ok_or_else(|| KinesisError::InvalidArgument { message: format!("Invalid ConsumerARN {consumer_arn}") })?;
    let now = broker.inner.clock.instant();
    let config = &broker.inner.config;
    let (stream_name, incarnation, start, generation) =
        broker.with_stream(&StreamRef::Arn(stream_arn.to_owned()), |s, _| {
            if !s.consumers.iter().any(|c| c.arn == consumer_arn) {
                return Err(KinesisError::ResourceNotFound { message: format!("Consumer {consumer_arn} not found.") });
            }
            let index = s
                .live_shard_index(shard_id, broker.inner.clock.now_wall())
                .ok_or_else(|| errors::shard_not_found(shard_id.as_str(), &s.name, &account))?;
            let start = broker.resolve_position(s, &s.shards[index], &position)?;
            let key = (consumer_arn.to_owned(), index as u32);
            if let Some((_, started)) = s.subscriptions.get(&key)
                && now.saturating_duration_since(*started) < TAKEOVER_GRACE
            {
                return Err(KinesisError::ResourceInUse {
                    message: format!("Another active subscription exists for this consumer: {consumer_arn}"),
                });
            }
            Ok((s.name.clone(), s.incarnation, start, index as u32))
        })?;
    let generation_id = {
        let mut state = broker.lock();
        let id = state.next_subscription;
        state.next_subscription += 1;
        if let Some(s) = state.streams.get_mut(&stream_name) {
            s.subscriptions.insert((consumer_arn.to_owned(), generation), (id, now));
            for shard in &s.shards {
                shard.notify.notify_waiters();
            }
        }
        id
    };
    let read_rate = limits::SHARD_READ_BYTES_PER_SEC as f64 * config.throughput_scale;
    let subscription = Subscription {
        broker: broker.clone(),
        stream_name,
        incarnation,
        consumer_arn: consumer_arn.to_owned(),
        shard_index: generation,
        generation: generation_id,
        position: start,
        last_delivered: None,
        deadline: now + config.subscription_duration,
        budget: TokenBucket::with_floor(read_rate, read_rate, read_rate - limits::MAX_GET_RECORDS_BYTES as f64, now),
        done: false,
    };
    let events = futures::stream::unfold((subscription, true), |(mut sub, first)| async move {
        if sub.done {
            return None;
        }
        let mut heartbeat_at = Instant::now() + HEARTBEAT;
        loop {
            let heartbeat_due = Instant::now() >= heartbeat_at;
            match sub.step(first, heartbeat_due) {
                Step::Event(Ok(event)) => return Some((Ok(event), (sub, false))),
                Step::Event(Err(e)) => {
                    sub.done = true;
                    return Some((Err(e), (sub, false)));
                }
                Step::End => return None,
                Step::Wait(notify, wake) => {
                    let notified = notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Re-check after registering for wake-ups, so a write in between is not missed.
                    if let Step::Event(result) = sub.step(false, false) {
                        let done = result.is_err();
                        sub.done |= done;
                        return Some((result, (sub, false)));
                    }
                    let until = wake.unwrap_or(heartbeat_at).min(sub.deadline).min(heartbeat_at);
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                    if Instant::now() >= heartbeat_at {
                        heartbeat_at = Instant::now();
                    }
                }
            }
        }
    });
    Ok(events.boxed())
}
