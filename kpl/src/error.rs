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
/// An error means the record is *not known to be stored*, not that it is known to be missing:
/// an attempt whose request timed out, lost its connection or failed inside the service may
/// have stored it, and so may an aggregate that landed on a shard the producer could not judge
/// in time. [`may_be_stored`](Self::may_be_stored) says whether any attempt could have; when it
/// is `false`, every attempt was refused outright and the record is not in the stream.
///
/// Kinesis errors are shared ([`Arc`]) because one failed request or aggregate fails many records
/// with the same error.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The record's time to live (`record_ttl`) passed before it was known to be stored; the
    /// last error says what kept it (throttling, failures), if it was sent at all.
    #[error(
        "record not known to be stored: its time to live passed after {attempts} attempt(s){}{}",
        stored_suffix(*.may_be_stored),
        last_error_suffix(.last_error.as_deref())
    )]
    Expired {
        /// Requests that carried it.
        attempts: u32,
        /// The error of its last attempt, if it had one.
        last_error: Option<Arc<KinesisError>>,
        /// Whether an attempt may have stored it (see [`ProduceError::may_be_stored`]).
        may_be_stored: bool,
    },
    /// Kinesis refused the record with an error that retrying cannot fix (validation, access
    /// denied, stream not found, KMS access, ...).
    #[error("Kinesis refused the record after {attempts} attempt(s){}: {error}", stored_suffix(*.may_be_stored))]
    Rejected {
        /// Requests that carried it.
        attempts: u32,
        /// The error.
        error: Arc<KinesisError>,
        /// Whether an earlier attempt may have stored it.
        may_be_stored: bool,
    },
    /// The record's write was throttled and `fail_if_throttled` is set.
    #[error(
        "throttled after {attempts} attempt(s) and fail_if_throttled is set{}: {error}",
        stored_suffix(*.may_be_stored)
    )]
    Throttled {
        /// Requests that carried it.
        attempts: u32,
        /// The throttling error.
        error: Arc<KinesisError>,
        /// Whether an earlier attempt may have stored it.
        may_be_stored: bool,
    },
    /// The producer's task stopped before the record finished: its runtime shut down, or the
    /// task failed. Whether an attempt stored it is not known.
    #[error("the producer stopped before the record was delivered")]
    Aborted,
}

fn last_error_suffix(error: Option<&KinesisError>) -> String {
    error.map(|e| format!("; last error: {e}")).unwrap_or_default()
}

fn stored_suffix(may_be_stored: bool) -> &'static str {
    if may_be_stored { " (an attempt may have stored it)" } else { "" }
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

    /// Whether the record may be in the stream after all: an attempt's request timed out, lost
    /// its connection or failed inside the service ([`KinesisError::may_have_taken_effect`]), or
    /// it was stored on a shard the producer could not confirm in time. `false`: every attempt
    /// was refused outright (or none was made), so re-sending it cannot make a duplicate.
    /// [`Aborted`](Self::Aborted) cannot tell, and says `true`.
    pub fn may_be_stored(&self) -> bool {
        match self {
            ProduceError::Expired { may_be_stored, .. }
            | ProduceError::Rejected { may_be_stored, .. }
            | ProduceError::Throttled { may_be_stored, .. } => *may_be_stored,
            ProduceError::Aborted => true,
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
