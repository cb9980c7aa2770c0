//! The producer's errors: refusing a record at [`send`](crate::Producer::send) ([`SendError`]),
//! failing one after it was accepted ([`ProduceError`]), and failing to start ([`BuildError`]).

use std::sync::Arc;

use kinesis_core::{KinesisError, StreamRef, ValidationError};
use thiserror::Error;

use crate::config::ConfigError;
use crate::record::UserRecord;

/// Why `send` or `try_send` did not accept a record. The record is handed back untouched, and
/// nothing of it was buffered.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The record breaks a service limit: partition key empty or over 256 characters, explicit
    /// hash key not a decimal in `[0, 2^128 − 1]`, or partition key + data over the stream's
    /// maximum record size. Kinesis would refuse it, so it is refused here.
    #[error("invalid record: {error}")]
    Invalid {
        /// What is wrong.
        error: ValidationError,
        /// The record (boxed so a `Result` carrying this error stays small).
        record: Box<UserRecord>,
    },
    /// The buffer is full (`try_send` only; `send` waits instead).
    #[error("the producer's buffer is full")]
    Full {
        /// The record (boxed so a `Result` carrying this error stays small).
        record: Box<UserRecord>,
    },
    /// The producer was shut down.
    #[error("the producer is shut down")]
    Closed {
        /// The record (boxed so a `Result` carrying this error stays small).
        record: Box<UserRecord>,
    },
}

impl SendError {
    /// The refused record.
    pub fn record(&self) -> &UserRecord {
        match self {
            SendError::Invalid { record, .. } | SendError::Full { record } | SendError::Closed { record } => record,
        }
    }

    /// Takes the refused record back.
    pub fn into_record(self) -> UserRecord {
        match self {
            SendError::Invalid { record, .. } | SendError::Full { record } | SendError::Closed { record } => *record,
        }
    }
}

/// Why an accepted record was not delivered. Comes with the record itself, in a
/// [`DeliveryResult`](crate::DeliveryResult).
///
/// Kinesis errors are shared ([`Arc`]) because one failed request or aggregate fails many records
/// with the same error.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The record's time to live (`record_ttl`) passed before it could be delivered; the last
    /// error says what kept it (throttling, failures), if it was sent at all.
    #[error("record expired after {attempts} attempt(s){}", last_error_suffix(.last_error.as_deref()))]
    Expired {
        /// Requests that carried it.
        attempts: u32,
        /// The error of its last attempt, if it had one.
        last_error: Option<Arc<KinesisError>>,
    },
    /// Kinesis refused the record with an error that retrying cannot fix (validation, access
    /// denied, stream not found, KMS access, ...).
    #[error("Kinesis refused the record after {attempts} attempt(s): {error}")]
    Rejected {
        /// Requests that carried it.
        attempts: u32,
        /// The error.
        error: Arc<KinesisError>,
    },
    /// The record's write was throttled and `fail_if_throttled` is set.
    #[error("throttled after {attempts} attempt(s) and fail_if_throttled is set: {error}")]
    Throttled {
        /// Requests that carried it.
        attempts: u32,
        /// The throttling error.
        error: Arc<KinesisError>,
    },
    /// The producer's task stopped before the record finished: its runtime shut down.
    #[error("the producer stopped before the record was delivered")]
    Aborted,
}

fn last_error_suffix(error: Option<&KinesisError>) -> String {
    error.map(|e| format!("; last error: {e}")).unwrap_or_default()
}

impl ProduceError {
    /// Requests that carried the record.
    pub fn attempts(&self) -> u32 {
        match self {
            ProduceError::Expired { attempts, .. }
            | ProduceError::Rejected { attempts, .. }
            | ProduceError::Throttled { attempts, .. } => *attempts,
            ProduceError::Aborted => 0,
        }
    }

    /// The last Kinesis error the record met, if any.
    pub fn last_error(&self) -> Option<&KinesisError> {
        match self {
            ProduceError::Expired { last_error, .. } => last_error.as_deref(),
            ProduceError::Rejected { error, .. } | ProduceError::Throttled { error, .. } => Some(error),
            ProduceError::Aborted => None,
        }
    }

    /// A short code for metrics and logs: `Expired`, `Aborted`, or the Kinesis error code.
    pub fn code(&self) -> &str {
        match self {
            ProduceError::Expired { .. } => "Expired",
            ProduceError::Aborted => "Aborted",
            ProduceError::Rejected { error, .. } | ProduceError::Throttled { error, .. } => error.code(),
        }
    }
}

/// Why a producer could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// An option is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `DescribeStreamSummary` failed (the stream's maximum record size is read at start).
    #[error("DescribeStreamSummary of {stream} failed: {source}")]
    DescribeStream {
        /// The stream.
        stream: StreamRef,
        /// The error.
        #[source]
        source: KinesisError,
    },
    /// `ListShards` failed, or kept returning shards that do not cover the hash-key space.
    #[error("ListShards of {stream} failed: {source}")]
    ListShards {
        /// The stream.
        stream: StreamRef,
        /// The error.
        #[source]
        source: KinesisError,
    },
    /// `build` was not called inside a tokio runtime, which the producer's task needs.
    #[error("the producer must be built inside a tokio runtime")]
    NoRuntime,
}
