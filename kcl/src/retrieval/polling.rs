//! Polling retrieval: `GetRecords` in a loop.
//!
//! * After a read that returned records while the shard is behind its tip, the next read follows
//!   after `min_time_between_reads` (200 ms: a shard serves 5 reads/s to all its consumers).
//! * After an empty read, or a read at the tip, it waits `idle_time_between_reads` (1 s default,
//!   never less than 200 ms).
//! * An expired iterator (`ExpiredIteratorException`: the processor held the fetcher back for
//!   more than five minutes, so the iterator it kept was too old) is re-created from the
//!   position after the last record read (or the original starting position when nothing was
//!   read yet), counted in `ExpiredIterator`; the read with the new iterator keeps the
//!   catching-up pace (`min_time_between_reads`, at least 200 ms). No record is read twice and
//!   none after the last one read is skipped.
//! * Throttling (`ProvisionedThroughputExceededException`) and transient errors back off
//!   exponentially with jitter (`PollingConfig::error_backoff`, 200 ms doubling to 10 s) and
//!   retry with the same iterator; the schedule restarts after the next successful read.
//!   Throttling is expected and only logged; other errors are also reported in the scheduler's
//!   state ([`ShardError::Retrieval`](crate::ShardError::Retrieval)) and retried with the same
//!   backoff — with a fresh iterator when the error is not retryable (an iterator the service
//!   refused).
//! * A read that returns no next iterator is the end of a closed shard: its last batch carries the
//!   child shards and the fetcher stops. So does a `GetShardIterator` answered with
//!   `ResourceNotFoundException` for a shard a listing no longer shows (expired past retention).

use std::time::Duration;

use kinesis_core::sequence::StartingPosition;
use kinesis_core::{KinesisError, ShardIterator};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{Batch, FetchContext, Prefetch};

/// Reads the shard until its end or until `token` is cancelled.
pub(crate) async fn run(ctx: FetchContext, queue: Prefetch, token: CancellationToken) {
    let idle = ctx.config.idle_time_between_reads();
    let busy = ctx.config.polling.min_time_between_reads;
    let max_records = ctx.config.polling.max_records.clamp(1, 10_000);
    let mut position = ctx.starting_position();
    let mut deagg = ctx.deaggregator();
    let mut iterator: Option<ShardIterator> = None;
    let mut backoff = ctx.config.polling.error_backoff.iter(ctx.seed);
    let mut reported = false;
    loop {
        if token.is_cancelled() {
            return;
        }
        let current = match iterator.take() {
            Some(it) => it,
            None => {
                let result = tokio::select! {
                    () = token.cancelled() => return,
                    r = ctx.kinesis.get_shard_iterator(&ctx.stream, &ctx.shard_id, position.clone()) => r,
                };
                match result {
                    Ok(it) => it,
                    Err(e) => {
                        if e.is_not_found()
                            && let Some(children) = ctx.children_if_gone().await
                        {
                            let _ = queue.send(Batch::end(children)).await;
                            return;
                        }
                        report_error(&ctx, &e, &mut reported);
                        if !pause(&token, backoff.next()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let started = Instant::now();
        let result = tokio::select! {
            () = token.cancelled() => return,
            r = ctx.kinesis.get_records(&current, Some(max_records)) => r,
        };
        match result {
            Ok(out) => {
                backoff = ctx.config.polling.error_backoff.iter(ctx.seed);
                if reported {
                    (ctx.report)(None);
                    reported = false;
                }
                let read = out.records.len();
                if let Some(last) = out.records.last() {
                    position = StartingPosition::AfterSequenceNumber(last.sequence_number.clone());
                }
                let at_end = out.next_shard_iterator.is_none();
                let child_shards = at_end.then_some(out.child_shards);
                let at_tip = read == 0 || out.millis_behind_latest == Some(0);
                if !ctx.queue_read(&mut deagg, &queue, out.records, out.millis_behind_latest, child_shards).await {
                    return;
                }
                if at_end {
                    return;
                }
                iterator = out.next_shard_iterator;
                let wait_until = started + if at_tip { idle } else { busy };
                tokio::select! {
                    () = token.cancelled() => return,
                    () = sleep_until(wait_until) => {}
                }
            }
            Err(KinesisError::ExpiredIterator { .. }) => {
                ctx.metrics.expired_iterator.increment(1);
                tracing::info!(shard = %ctx.shard_id, "shard iterator expired; re-creating it from the last record read");
                // The next read (with a fresh iterator) keeps the catching-up pace, so a run of
                // expired iterators cannot turn into a busy loop.
                tokio::select! {
                    () = token.cancelled() => return,
                    () = sleep_until(started + busy.max(Duration::from_millis(200))) => {}
                }
            }
            Err(e) => {
                if !e.is_throttling() {
                    report_error(&ctx, &e, &mut reported);
                }
                if !e.is_retryable() {
                    // A new iterator may help (e.g. after an invalid-iterator answer).
                    iterator = None;
                } else {
                    iterator = Some(current);
                }
                if !pause(&token, backoff.next()).await {
                    return;
                }
            }
        }
    }
}

fn report_error(ctx: &FetchContext, e: &KinesisError, reported: &mut bool) {
    tracing::warn!(shard = %ctx.shard_id, error = %e, "reading the shard failed; retrying");
    (ctx.report)(Some(e.to_string()));
    *reported = true;
}

/// Sleeps `delay` unless cancelled first; false when cancelled.
pub(crate) async fn pause(token: &CancellationToken, delay: Option<Duration>) -> bool {
    let delay = delay.unwrap_or(Duration::from_secs(1));
    tokio::select! {
        () = token.cancelled() => false,
        () = sleep(delay) => true,
    }
}
