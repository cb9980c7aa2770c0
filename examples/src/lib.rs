//! Shared pieces of the example programs: flag parsing, building clients by the AWS conventions,
//! and the record format the `produce` and `consume` programs agree on.
//!
//! The programs themselves are in `examples/examples/`; run them from the repository root with
//! `cargo run --release --example <name> -- <flags>`.

use std::collections::HashMap;
use std::process::ExitCode;

use kinesis_core::{AwsKinesis, KinesisError};

/// Exit codes shared by the programs.
pub mod exit {
    /// Some records were not delivered or a check failed.
    pub const FAILED: u8 = 1;
    /// Bad command-line flags.
    pub const USAGE: u8 = 2;
    /// The endpoint could not be reached or refused the credentials.
    pub const UNREACHABLE: u8 = 3;
    /// The stream does not exist.
    pub const NO_STREAM: u8 = 4;
}

/// Parsed `--flag value` and `--switch` arguments.
#[derive(Debug, Default)]
pub struct Flags {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

/// A command-line problem, printed with the usage text.
#[derive(Debug)]
pub struct UsageError(pub String);

impl Flags {
    /// Parses the process arguments. `switches` are the flags that take no value; every other
    /// flag must be in `valued`.
    pub fn parse(valued: &[&str], switches: &[&str]) -> Result<Flags, UsageError> {
        let mut flags = Flags::default();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(UsageError(format!("unexpected argument {arg:?}")));
            };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (name.to_owned(), None),
            };
            if switches.contains(&name.as_str()) {
                flags.switches.push(name);
            } else if valued.contains(&name.as_str()) {
                let value = match inline {
                    Some(v) => v,
                    None => args.next().ok_or_else(|| UsageError(format!("--{name} needs a value")))?,
                };
                flags.values.insert(name, value);
            } else {
                return Err(UsageError(format!("unknown flag --{name}")));
            }
        }
        Ok(flags)
    }

    /// A flag's text value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A required flag's text value.
    pub fn required(&self, name: &str) -> Result<&str, UsageError> {
        self.get(name).ok_or_else(|| UsageError(format!("--{name} is required")))
    }

    /// A flag's numeric value, or `default`.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, UsageError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| UsageError(format!("--{name} must be a number, not {text:?}"))),
        }
    }

    /// Whether a switch was given.
    pub fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

/// Prints a usage error and returns the usage exit code.
pub fn usage_failure(program: &str, usage: &str, error: &UsageError) -> ExitCode {
    eprintln!("{program}: {}\n\nusage: {usage}", error.0);
    ExitCode::from(exit::USAGE)
}

/// The Kinesis client for `--endpoint` / `--region`, following the AWS conventions: with no
/// endpoint flag the standard chain applies (`AWS_ENDPOINT_URL`, `AWS_REGION`, profiles,
/// instance metadata). With an endpoint and no credentials configured (no `AWS_ACCESS_KEY_ID`,
/// no `AWS_PROFILE`) static test credentials are used, as local emulators accept any.
pub async fn kinesis_client(endpoint: Option<&str>, region: Option<&str>) -> AwsKinesis {
    let has_credentials = std::env::var_os("AWS_ACCESS_KEY_ID").is_some() || std::env::var_os("AWS_PROFILE").is_some();
    match (endpoint, region) {
        (Some(url), _) if !has_credentials && region.is_none_or(|r| r == "us-east-1") => AwsKinesis::local(url).await,
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
