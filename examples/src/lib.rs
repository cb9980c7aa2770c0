//! Shared pieces of the example programs: their common command-line options, building clients by
//! the AWS conventions, and the record format the `produce` and `consume` programs agree on.
//!
//! The programs themselves are in `examples/examples/`; run them from the repository root with
//! `cargo run --release --example <name> -- <flags>` (`--help` lists each one's flags).

use std::process::ExitCode;

use kcl_ddb_store::{DynamoDbStores, DynamoDbStoresBuilder};
use kinesis_core::{AwsKinesis, KinesisError};

/// Exit codes shared by the programs.
pub mod exit {
    /// Some records were not delivered or a check failed.
    pub const FAILED: u8 = 1;
    /// Bad command-line flags (clap's own exit code for usage errors, too).
    pub const USAGE: u8 = 2;
    /// The endpoint could not be reached or refused the credentials.
    pub const UNREACHABLE: u8 = 3;
    /// The stream does not exist.
    pub const NO_STREAM: u8 = 4;
}

/// The options every program that talks to Kinesis shares: where the endpoint is and which
/// region. Both follow the AWS conventions when the flag is absent.
#[derive(Debug, Clone, clap::Args)]
pub struct AwsArgs {
    /// Kinesis endpoint URL, e.g. a LocalStack or kinesis-mock address. Without the flag:
    /// `AWS_ENDPOINT_URL_KINESIS`, then `AWS_ENDPOINT_URL`, then the service's own endpoint.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// AWS region, of Kinesis and DynamoDB; without the flag and the variable, the SDK's chain
    /// (profile, instance metadata).
    #[arg(long, value_name = "REGION", env = "AWS_REGION")]
    pub region: Option<String>,
}

impl AwsArgs {
    /// The Kinesis endpoint in effect: the flag, else `AWS_ENDPOINT_URL_KINESIS`, else
    /// `AWS_ENDPOINT_URL` (the service-specific variable wins, as in the AWS SDKs).
    pub fn kinesis_endpoint(&self) -> Option<String> {
        self.endpoint.clone().or_else(|| env_endpoint("AWS_ENDPOINT_URL_KINESIS"))
    }

    /// The Kinesis client for these options; see [`kinesis_client`].
    pub async fn kinesis_client(&self) -> AwsKinesis {
        kinesis_client(self.kinesis_endpoint().as_deref(), self.region()).await
    }

    /// The region flag (or `AWS_REGION`), if it says one.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref().filter(|r| !r.trim().is_empty())
    }
}

/// A non-empty endpoint from `service_variable`, else from `AWS_ENDPOINT_URL`.
pub fn env_endpoint(service_variable: &str) -> Option<String> {
    [service_variable, "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.trim().is_empty()))
}

/// Whether an endpoint is taken for a local emulator: no credentials are configured (no
/// `AWS_ACCESS_KEY_ID`, no `AWS_PROFILE`) and the region is unset or `us-east-1`. Emulators accept
/// any credentials, so static test ones are used for them.
fn is_emulator(region: Option<&str>) -> bool {
    let has_credentials = std::env::var_os("AWS_ACCESS_KEY_ID").is_some() || std::env::var_os("AWS_PROFILE").is_some();
    !has_credentials && region.is_none_or(|r| r == "us-east-1")
}

/// The Kinesis client for an endpoint and region, following the AWS conventions: with no
/// endpoint the standard chain applies (profiles, instance metadata); with one, the chain's
/// credentials, or test credentials for an emulator (see `is_emulator`).
pub async fn kinesis_client(endpoint: Option<&str>, region: Option<&str>) -> AwsKinesis {
    match (endpoint, region) {
        (Some(url), _) if is_emulator(region) => AwsKinesis::local(url).await,
        (Some(url), region) => AwsKinesis::with_endpoint(url, region.unwrap_or("us-east-1")).await,
        (None, Some(region)) => {
            // Region from the flag, everything else from the chain.
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region.to_owned()))
                .load()
                .await;
            AwsKinesis::from_sdk_config(&config)
        }
        (None, None) => AwsKinesis::from_env().await,
    }
}

/// The DynamoDB stores' builder for an endpoint and region, by the same rules as
/// [`kinesis_client`].
pub async fn dynamodb_stores(endpoint: Option<&str>, region: Option<&str>) -> DynamoDbStoresBuilder {
    let builder = DynamoDbStores::builder();
    match (endpoint, region) {
        (Some(url), _) if is_emulator(region) => builder.local(url).await,
        (Some(url), region) => builder.endpoint(url, region.unwrap_or("us-east-1")).await,
        (None, Some(region)) => builder.from_env_with_region(region).await,
        (None, None) => builder.from_env().await,
    }
}

/// The exit code and message for a Kinesis error met while starting up.
pub fn startup_failure(program: &str, what: &str, error: &KinesisError) -> ExitCode {
    eprintln!("{program}: {what}: {error}");
    let code = match error {
        KinesisError::ResourceNotFound { .. } => exit::NO_STREAM,
        KinesisError::Transport { .. } | KinesisError::Timeout { .. } | KinesisError::AccessDenied { .. } => {
            exit::UNREACHABLE
        }
        _ => exit::FAILED,
    };
    ExitCode::from(code)
}

/// The data of record `n` of `key`: the ASCII header `"<key> <n> "` padded with `.` to `size`
/// bytes (never cut shorter than the header).
pub fn payload(key: &str, n: u64, size: usize) -> Vec<u8> {
    let mut data = format!("{key} {n} ").into_bytes();
    if data.len() < size {
        data.resize(size, b'.');
    }
    data
}

/// The `(key, n)` of a payload written by [`payload`], or `None` if the header is malformed.
pub fn parse_payload(data: &[u8]) -> Option<(&str, u64)> {
    let mut parts = data.splitn(3, |&b| b == b' ');
    let key = std::str::from_utf8(parts.next()?).ok()?;
    let n = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    parts.next()?;
    (!key.is_empty()).then_some((key, n))
}

/// Peak resident memory of this process in bytes (`VmHWM`), where the platform tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let data = payload("k3", 41, 32);
        assert_eq!(data.len(), 32);
        assert!(data.starts_with(b"k3 41 ."));
        assert_eq!(parse_payload(&data), Some(("k3", 41)));
        assert_eq!(payload("k1", 7, 2), b"k1 7 ".to_vec(), "never shorter than the header");
        assert_eq!(parse_payload(b"k1 7 "), Some(("k1", 7)));
        assert_eq!(parse_payload(b"garbage"), None);
        assert_eq!(parse_payload(b"k1 x "), None);
    }
}
