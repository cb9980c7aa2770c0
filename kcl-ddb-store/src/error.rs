//! SDK errors → [`StoreError`], and the retry of throttled and transient calls.

use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use backon::{BackoffBuilder, ExponentialBuilder};
use kcl::StoreError;

use crate::OPERATION_TIMEOUT;
use crate::item::Item;

/// Maps an SDK error that is not a lost condition onto [`StoreError`].
pub(crate) fn map_sdk_error<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let message = format!("{}: {}", e.code().unwrap_or("Unknown"), e.message().unwrap_or_default());
            match e.code() {
                Some(
                    "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "LimitExceededException",
                ) => StoreError::Throttled { message },
                Some("InternalServerError" | "ServiceUnavailable" | "InternalFailure") => {
                    StoreError::Unavailable { message }
                }
                _ => StoreError::Backend { message },
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable { message: format!("{err:?}") }
        }
        _ => StoreError::Backend { message: format!("{err:?}") },
    }
}

/// Runs `call` until it succeeds, fails with a non-retryable error, or the retry budget (at most
/// 6 attempts, jittered exponential from 25 ms, no retry begun after [`OPERATION_TIMEOUT`]) is
/// spent.
pub(crate) async fn with_retry<T, F, Fut>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(25))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(6)
        .with_jitter()
        .build();
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        match call(attempt).await {
            Err(e) if e.is_retryable() => match delays.next() {
                Some(delay) if started.elapsed() + delay < OPERATION_TIMEOUT => {
                    tracing::debug!(error = %e, ?delay, "retrying DynamoDB call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                _ => return Err(e),
            },
            other => return other,
        }
    }
}

/// Reads every page of a `Scan` (or `Query`): `page(start)` sends one request from the given
/// exclusive start key and returns its items and last evaluated key.
pub(crate) async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, StoreError>
where
    F: FnMut(Option<Item>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<Item>), StoreError>>,
{
    let mut all = Vec::new();
    let mut start = None;
    loop {
        let (items, next) = page(start).await?;
        all.extend(items);
        match next {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(all),
        }
    }
}
