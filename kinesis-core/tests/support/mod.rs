//! Helpers shared by the integration tests: finding test peers started by `scripts/test.sh`.

#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

/// The value of a peer's environment variable. When it is missing: fails the test if the test
/// script asked for peers (`KINESIS_TEST_REQUIRE_PEERS`), else prints a skip notice and returns
/// `None` so a plain `cargo test` still runs everything that needs no peer.
pub fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var_os("KINESIS_TEST_REQUIRE_PEERS").is_none(),
                "{var} is not set but KINESIS_TEST_REQUIRE_PEERS is: run the tests with scripts/test.sh"
            );
            eprintln!("skipping: {var} is not set (scripts/test.sh starts the test peers)");
            None
        }
    }
}

/// A stream name no other test run uses.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}
