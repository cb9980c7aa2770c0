//! [`KinesisError`]: what went wrong in a call to Kinesis, and whether retrying can help.

use std::error::Error as StdError;

use thiserror::Error;

use crate::limits::ValidationError;

/// The error of every [`Kinesis`](crate::Kinesis) call, whichever backend answered.
///
/// Variants follow the service's exception names, each keeping the service's own message, so a
/// program can match on what happened and still log what the service said. Use
/// [`is_retryable`](KinesisError::is_retryable) to decide whether trying again can help.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KinesisError {
    /// The input broke a limit and was refused before anything was sent.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] ValidationError),
    /// `ResourceNotFoundException`: the stream, shard or consumer does not exist.
    #[error("ResourceNotFoundException: {message}")]
    ResourceNotFound {
        /// The service's message.
        message: String,
    },
    /// `ResourceInUseException`: the resource exists or is in a state that refuses the call.
    #[error("ResourceInUseException: {message}")]
    ResourceInUse {
        /// The service's message.
        message: String,
    },
    /// `InvalidArgumentException`: an argument the service understood but refused.
    #[error("InvalidArgumentException: {message}")]
    InvalidArgument {
        /// The service's message.
        message: String,
    },
    /// `ValidationException`: the request does not satisfy the API's constraints.
    #[error("ValidationException: {message}")]
    Validation {
        /// The service's message.
        message: String,
    },
    /// `LimitExceededException`: an account or control-plane limit, or a rate limit on a
    /// control-plane call.
    #[error("LimitExceededException: {message}")]
    LimitExceeded {
        /// The service's message.
        message: String,
    },
    /// `ProvisionedThroughputExceededException`: the shard's read or write rate was exceeded.
    #[error("ProvisionedThroughputExceededException: {message}")]
    Throttled {
        /// The service's message.
        message: String,
    },
    /// `ExpiredIteratorException`: the shard iterator is older than five minutes.
    #[error("ExpiredIteratorException: {message}")]
    ExpiredIterator {
        /// The service's message.
        message: String,
    },
    /// `ExpiredNextTokenException`: a `ListShards` pagination token expired.
    #[error("ExpiredNextTokenException: {message}")]
    ExpiredNextToken {
        /// The service's message.
        message: String,
    },
    /// `AccessDeniedException`: the credentials are not allowed to make the call.
    #[error("AccessDeniedException: {message}")]
    AccessDenied {
        /// The service's message.
        message: String,
    },
    /// One of the `KMS*Exception`s of an encrypted stream.
    #[error("{code}: {message}")]
    Kms {
        /// The exception name, e.g. `KMSThrottlingException`.
        code: String,
        /// The service's message.
        message: String,
    },
    /// `InternalFailure` / `InternalFailureException`: the service failed; retry.
    #[error("InternalFailure: {message}")]
    InternalFailure {
        /// The service's message.
        message: String,
    },
    /// The call did not complete in time (the request may still have taken effect).
    #[error("timed out: {message}")]
    Timeout {
        /// What timed out.
        message: String,
    },
    /// The request never got an answer: connection, DNS, TLS or I/O failure.
    #[error("transport error: {message}")]
    Transport {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
    /// Any other error the service returned, with its code and message.
    #[error("{code}: {message}")]
    Service {
        /// The exception name.
        code: String,
        /// The service's message.
        message: String,
    },
}

impl KinesisError {
    /// Builds the variant for a service exception name, keeping its message. Unknown names become
    /// [`KinesisError::Service`].
    pub fn from_code(code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        // Some protocols send `namespace#Name` or `Name:extra`.
        let name = code.rsplit('#').next().unwrap_or(code);
        let name = name.split(':').next().unwrap_or(name);
        match name {
            "ResourceNotFoundException" => KinesisError::ResourceNotFound { message },
            "ResourceInUseException" => KinesisError::ResourceInUse { message },
            "InvalidArgumentException" => KinesisError::InvalidArgument { message },
            "ValidationException" => KinesisError::Validation { message },
            "LimitExceededException" => KinesisError::LimitExceeded { message },
            "ProvisionedThroughputExceededException" => KinesisError::Throttled { message },
            "ExpiredIteratorException" => KinesisError::ExpiredIterator { message },
            "ExpiredNextTokenException" => KinesisError::ExpiredNextToken { message },
            "AccessDeniedException" => KinesisError::AccessDenied { message },
            "InternalFailure" | "InternalFailureException" | "InternalServerError" | "ServiceUnavailable" => {
                KinesisError::InternalFailure { message }
            }
            kms if kms.starts_with("KMS") => KinesisError::Kms { code: kms.to_owned(), message },
            other => KinesisError::Service { code: other.to_owned(), message },
        }
    }

    /// The service's exception name for this error (`ProvisionedThroughputExceededException`,
    /// ...), or a short name for errors that never reached the service.
    pub fn code(&self) -> &str {
        match self {
            KinesisError::InvalidInput(_) => "InvalidInput",
            KinesisError::ResourceNotFound { .. } => "ResourceNotFoundException",
            KinesisError::ResourceInUse { .. } => "ResourceInUseException",
            KinesisError::InvalidArgument { .. } => "InvalidArgumentException",
            KinesisError::Validation { .. } => "ValidationException",
            KinesisError::LimitExceeded { .. } => "LimitExceededException",
            KinesisError::Throttled { .. } => "ProvisionedThroughputExceededException",
            KinesisError::ExpiredIterator { .. } => "ExpiredIteratorException",
            KinesisError::ExpiredNextToken { .. } => "ExpiredNextTokenException",
            KinesisError::AccessDenied { .. } => "AccessDeniedException",
            KinesisError::Kms { code, .. } | KinesisError::Service { code, .. } => code,
            KinesisError::InternalFailure { .. } => "InternalFailure",
            KinesisError::Timeout { .. } => "Timeout",
            KinesisError::Transport { .. } => "Transport",
        }
    }

    /// The service's message (or a description, for errors that never reached it).
    pub fn message(&self) -> String {
        match self {
            KinesisError::InvalidInput(e) => e.to_string(),
            KinesisError::ResourceNotFound { message }
            | KinesisError::ResourceInUse { message }
            | KinesisError::InvalidArgument { message }
            | KinesisError::Validation { message }
            | KinesisError::LimitExceeded { message }
            | KinesisError::Throttled { message }
            | KinesisError::ExpiredIterator { message }
            | KinesisError::ExpiredNextToken { message }
            | KinesisError::AccessDenied { message }
            | KinesisError::Kms { message, .. }
            | KinesisError::InternalFailure { message }
            | KinesisError::Timeout { message }
            | KinesisError::Transport { message, .. }
            | KinesisError::Service { message, .. } => message.clone(),
        }
    }

    /// Whether the same call may succeed if made again later: throttling, rate limits, internal
    /// failures, time-outs, transport failures and KMS throttling. Bad input, missing resources,
    /// expired iterators (which need a new iterator, not a retry) and access errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            KinesisError::Throttled { .. }
            | KinesisError::LimitExceeded { .. }
            | KinesisError::InternalFailure { .. }
            | KinesisError::Timeout { .. }
            | KinesisError::Transport { .. } => true,
            KinesisError::Kms { code, .. } => code == "KMSThrottlingException",
            _ => false,
        }
    }

    /// Whether this is a rate limit (shard throughput, control-plane rate or KMS throttling),
    /// which should also slow the caller down.
    pub fn is_throttling(&self) -> bool {
        match self {
            KinesisError::Throttled { .. } | KinesisError::LimitExceeded { .. } => true,
            KinesisError::Kms { code, .. } => code == "KMSThrottlingException",
            _ => false,
        }
    }

    /// Whether the stream, shard or consumer named in the call does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KinesisError::ResourceNotFound { .. })
    }

    /// Whether a write that failed with this error may have been applied anyway: a time-out, a
    /// lost connection, an internal failure or an unknown service error leave it open; a refusal
    /// the service stated (throttling, bad input, missing stream, access, KMS) does not. A
    /// producer that retries such a write may store its records twice.
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(
            self,
            KinesisError::InternalFailure { .. }
                | KinesisError::Timeout { .. }
                | KinesisError::Transport { .. }
                | KinesisError::Service { .. }
        )
    }

    /// A transport error wrapping `source`.
    pub fn transport(message: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        KinesisError::Transport { message: message.into(), source: Some(Box::new(source)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_variants_and_back() {
        for code in [
            "ResourceNotFoundException",
            "ResourceInUseException",
            "InvalidArgumentException",
            "ValidationException",
            "LimitExceededException",
            "ProvisionedThroughputExceededException",
            "ExpiredIteratorException",
            "ExpiredNextTokenException",
            "AccessDeniedException",
            "KMSThrottlingException",
            "SomethingNewException",
        ] {
            let err = KinesisError::from_code(code, "msg");
            assert_eq!(err.code(), code);
            assert_eq!(err.message(), "msg");
        }
        assert!(matches!(
            KinesisError::from_code("com.amazonaws.kinesis#ResourceNotFoundException", "x"),
            KinesisError::ResourceNotFound { .. }
        ));
        assert!(matches!(KinesisError::from_code("InternalFailure", "x"), KinesisError::InternalFailure { .. }));
    }

    #[test]
    fn retry_classification() {
        assert!(KinesisError::from_code("ProvisionedThroughputExceededException", "").is_retryable());
        assert!(KinesisError::from_code("ProvisionedThroughputExceededException", "").is_throttling());
        assert!(KinesisError::from_code("InternalFailure", "").is_retryable());
        assert!(KinesisError::from_code("KMSThrottlingException", "").is_retryable());
        assert!(!KinesisError::from_code("KMSAccessDeniedException", "").is_retryable());
        assert!(!KinesisError::from_code("ValidationException", "").is_retryable());
        assert!(!KinesisError::from_code("AccessDeniedException", "").is_retryable());
        assert!(!KinesisError::from_code("ResourceNotFoundException", "").is_retryable());
        assert!(!KinesisError::from_code("ExpiredIteratorException", "").is_retryable());
        assert!(!KinesisError::InvalidInput(ValidationError::EmptyPartitionKey).is_retryable());
        assert!(KinesisError::Timeout { message: "t".into() }.is_retryable());
    }
}
