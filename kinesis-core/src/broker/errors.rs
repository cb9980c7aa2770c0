//! The service's error texts (reference/broker.md §b.4), so programs that log or match them see
//! what they would see from Kinesis.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::KinesisError;
use crate::shard::ShardId;

pub(crate) fn stream_not_found(name: &str, account: &str) -> KinesisError {
    KinesisError::ResourceNotFound { message: format!("Stream {name} under account {account} not found.") }
}

pub(crate) fn stream_exists(name: &str, account: &str) -> KinesisError {
    KinesisError::ResourceInUse { message: format!("Stream {name} under account {account} already exists.") }
}

pub(crate) fn shard_not_found(shard: &str, name: &str, account: &str) -> KinesisError {
    KinesisError::ResourceNotFound {
        message: format!("Shard {shard} in stream {name} under account {account} does not exist"),
    }
}

pub(crate) fn reshard_shard_not_found(shard: &str, name: &str, account: &str) -> KinesisError {
    KinesisError::ResourceNotFound {
        message: format!("Could not find shard {shard} in stream {name} under account {account}."),
    }
}

pub(crate) fn write_throttled(shard: &ShardId, name: &str, account: &str) -> KinesisError {
    KinesisError::Throttled {
        message: format!("Rate exceeded for shard {shard} in stream {name} under account {account}."),
    }
}

pub(crate) fn read_throttled(shard: &ShardId, name: &str, account: &str) -> KinesisError {
    KinesisError::Throttled { message: format!("Rate exceeded for Shard - {account}/{name}/{shard}") }
}

pub(crate) fn invalid_iterator() -> KinesisError {
    KinesisError::InvalidArgument { message: "Invalid ShardIterator.".to_owned() }
}

pub(crate) fn expired_iterator(created: SystemTime, now: SystemTime) -> KinesisError {
    KinesisError::ExpiredIterator {
        message: format!(
            "Iterator expired. The iterator was created at time {} while right now it is {} which is further in the future than the tolerated delay of 300000 milliseconds.",
            http_date(created),
            http_date(now)
        ),
    }
}

pub(crate) fn already_resharded(shard: &ShardId, name: &str, account: &str) -> KinesisError {
    KinesisError::InvalidArgument {
        message: format!(
            "Shard {shard} in stream {name} under account {account} has already been merged or split, and thus is not eligible for merging or splitting."
        ),
    }
}

pub(crate) fn validation(count: usize, details: &str) -> KinesisError {
    let plural = if count == 1 { "" } else { "s" };
    KinesisError::Validation { message: format!("{count} validation error{plural} detected: {details}") }
}

pub(crate) fn on_demand_reshard(name: &str, account: &str) -> KinesisError {
    KinesisError::Validation {
        message: format!("Request is invalid. Stream {name} under account {account} is in On-Demand mode."),
    }
}

pub(crate) fn shard_limit(account: &str, region: &str, current: u32, limit: u32, additional: u32) -> KinesisError {
    KinesisError::LimitExceeded {
        message: format!(
            "This request would exceed the shard limit for the account {account} in {region}. Current shard count for the account: {current}. Limit: {limit}. Number of additional shards that would have resulted from this request: {additional}. Refer to the AWS Service Limits page (http://docs.aws.amazon.com/general/latest/gr/aws_service_limits.html) for current limits and how to request higher limits."
        ),
    }
}

/// Formats a time like the service's messages: `Thu Jan 22 01:22:02 UTC 2015`.
pub(crate) fn http_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{} {} {:02} {:02}:{:02}:{:02} UTC {}",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_like_the_service() {
        // 2015-01-22T01:22:02Z, the time in the service's captured message.
        let t = UNIX_EPOCH + Duration::from_secs(1_421_889_722);
        assert_eq!(http_date(t), "Thu Jan 22 01:22:02 UTC 2015");
        assert_eq!(http_date(UNIX_EPOCH), "Thu Jan 01 00:00:00 UTC 1970");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(leap), "Tue Feb 29 00:00:00 UTC 2000");
    }
}
