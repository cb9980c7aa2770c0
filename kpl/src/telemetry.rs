//! Metrics, through the `metrics` facade, under the KPL's names.
//!
//! The producer never installs a recorder: with none installed every metric costs next to
//! nothing; install any `metrics` exporter (Prometheus, CloudWatch EMF, ...) in the application
//! to see them. Labels: `stream` on every metric, `shard` on per-shard ones, `error_code` on
//! [`ERRORS_BY_CODE`]. Handles are resolved once per shard, not per record.
//!
//! | metric | kind | labels | recorded |
//! |---|---|---|---|
//! | [`USER_RECORDS_RECEIVED`] | counter | stream | records taken in by the producer |
//! | [`USER_RECORDS_PENDING`] | gauge | stream | records accepted and not finished |
//! | [`USER_RECORDS_PUT`] | counter | stream, shard | user records delivered |
//! | [`USER_RECORDS_DATA_PUT`] | counter (bytes) | stream, shard | their data bytes |
//! | [`KINESIS_RECORDS_PUT`] | counter | stream, shard | Kinesis records stored |
//! | [`KINESIS_RECORDS_DATA_PUT`] | counter (bytes) | stream, shard | their bytes (key + data) |
//! | [`ERRORS_BY_CODE`] | counter | stream, shard, error_code | failed Kinesis records (failed requests count once per record) |
//! | [`ALL_ERRORS`] | counter | stream, shard | the same, any code |
//! | [`RETRIES_PER_RECORD`] | histogram | stream, shard | attempts − 1, per finished user record |
//! | [`USER_RECORD_EXPIRED`] | counter | stream, shard | user records failed by TTL |
//! | [`BUFFERING_TIME`] | histogram (ms) | stream, shard | per user record: arrival → first send, and failure → next send on each retry |
//! | [`REQUEST_TIME`] | histogram (ms) | stream | duration of each `PutRecords` |
//! | [`USER_RECORDS_PER_KINESIS_RECORD`] | histogram | stream, shard | per stored Kinesis record |
//! | [`KINESIS_RECORDS_PER_PUT_RECORDS_REQUEST`] | histogram | stream | per request |
//! | [`USER_RECORDS_PER_PUT_RECORDS_REQUEST`] | histogram | stream | per request |
//!
//! Where the KPL records 1 for success and 0 for failure (`UserRecordsPut`,
//! `KinesisRecordsPut`), the counters here count successes; failures are in the error metrics.

use std::sync::Once;

use metrics::{Counter, Gauge, Histogram, Unit, counter, gauge, histogram};

/// User records taken in by the producer.
pub const USER_RECORDS_RECEIVED: &str = "UserRecordsReceived";
/// User records accepted and not yet finished (gauge).
pub const USER_RECORDS_PENDING: &str = "UserRecordsPending";
/// User records delivered.
pub const USER_RECORDS_PUT: &str = "UserRecordsPut";
/// Data bytes of the user records delivered.
pub const USER_RECORDS_DATA_PUT: &str = "UserRecordsDataPut";
/// Kinesis records (aggregates or plain records) stored.
pub const KINESIS_RECORDS_PUT: &str = "KinesisRecordsPut";
/// Bytes (partition key + data) of the Kinesis records stored.
pub const KINESIS_RECORDS_DATA_PUT: &str = "KinesisRecordsDataPut";
/// Failed Kinesis records, by error code.
pub const ERRORS_BY_CODE: &str = "ErrorsByCode";
/// Failed Kinesis records, any code.
pub const ALL_ERRORS: &str = "AllErrors";
/// Retries of each finished user record.
pub const RETRIES_PER_RECORD: &str = "RetriesPerRecord";
/// User records failed because their TTL passed.
pub const USER_RECORD_EXPIRED: &str = "UserRecordExpired";
/// Milliseconds a user record waited in the producer: from its arrival to its first send, and
/// from each failed attempt to the next (as the KPL's `BufferingTime`).
pub const BUFFERING_TIME: &str = "BufferingTime";
/// Milliseconds each `PutRecords` call took.
pub const REQUEST_TIME: &str = "RequestTime";
/// User records per stored Kinesis record.
pub const USER_RECORDS_PER_KINESIS_RECORD: &str = "UserRecordsPerKinesisRecord";
/// Kinesis records per `PutRecords` request.
pub const KINESIS_RECORDS_PER_PUT_RECORDS_REQUEST: &str = "KinesisRecordsPerPutRecordsRequest";
/// User records per `PutRecords` request.
pub const USER_RECORDS_PER_PUT_RECORDS_REQUEST: &str = "UserRecordsPerPutRecordsRequest";

/// Label with the stream's name.
pub const LABEL_STREAM: &str = "stream";
/// Label with the shard id.
pub const LABEL_SHARD: &str = "shard";
/// Label with the error code of [`ERRORS_BY_CODE`].
pub const LABEL_ERROR_CODE: &str = "error_code";

/// Describes every metric to whatever recorder is installed (once per process).
pub(crate) fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(USER_RECORDS_RECEIVED, Unit::Count, "User records taken in by the producer");
        describe_gauge!(USER_RECORDS_PENDING, Unit::Count, "User records accepted and not yet finished");
        describe_counter!(USER_RECORDS_PUT, Unit::Count, "User records delivered");
        describe_counter!(USER_RECORDS_DATA_PUT, Unit::Bytes, "Data bytes of user records delivered");
        describe_counter!(KINESIS_RECORDS_PUT, Unit::Count, "Kinesis records stored");
        describe_counter!(KINESIS_RECORDS_DATA_PUT, Unit::Bytes, "Bytes of Kinesis records stored");
        describe_counter!(ERRORS_BY_CODE, Unit::Count, "Failed Kinesis records by error code");
        describe_counter!(ALL_ERRORS, Unit::Count, "Failed Kinesis records");
        describe_histogram!(RETRIES_PER_RECORD, Unit::Count, "Retries of each finished user record");
        describe_counter!(USER_RECORD_EXPIRED, Unit::Count, "User records failed by their time to live");
        describe_histogram!(BUFFERING_TIME, Unit::Milliseconds, "Time user records waited to be sent or retried");
        describe_histogram!(REQUEST_TIME, Unit::Milliseconds, "Duration of PutRecords calls");
        describe_histogram!(USER_RECORDS_PER_KINESIS_RECORD, Unit::Count, "User records per Kinesis record");
        describe_histogram!(KINESIS_RECORDS_PER_PUT_RECORDS_REQUEST, Unit::Count, "Kinesis records per request");
        describe_histogram!(USER_RECORDS_PER_PUT_RECORDS_REQUEST, Unit::Count, "User records per request");
    });
}

/// Per-stream metric handles.
pub(crate) struct StreamMetrics {
    pub user_records_received: Counter,
    pub user_records_pending: Gauge,
    pub request_time: Histogram,
    pub kinesis_records_per_request: Histogram,
    pub user_records_per_request: Histogram,
}

impl StreamMetrics {
    pub fn new(stream: &str) -> Self {
        let s = stream.to_owned();
        StreamMetrics {
            user_records_received: counter!(USER_RECORDS_RECEIVED, LABEL_STREAM => s.clone()),
            user_records_pending: gauge!(USER_RECORDS_PENDING, LABEL_STREAM => s.clone()),
            request_time: histogram!(REQUEST_TIME, LABEL_STREAM => s.clone()),
            kinesis_records_per_request: histogram!(KINESIS_RECORDS_PER_PUT_RECORDS_REQUEST, LABEL_STREAM => s.clone()),
            user_records_per_request: histogram!(USER_RECORDS_PER_PUT_RECORDS_REQUEST, LABEL_STREAM => s),
        }
    }
}

/// Per-shard metric handles.
pub(crate) struct ShardMetrics {
    stream: String,
    shard: String,
    pub user_records_put: Counter,
    pub user_records_data_put: Counter,
    pub kinesis_records_put: Counter,
    pub kinesis_records_data_put: Counter,
    pub all_errors: Counter,
    pub retries_per_record: Histogram,
    pub user_record_expired: Counter,
    pub buffering_time: Histogram,
    pub user_records_per_kinesis_record: Histogram,
    /// `ErrorsByCode` handles, resolved the first time each code is seen.
    errors_by_code: Vec<(String, Counter)>,
}

impl ShardMetrics {
    pub fn new(stream: &str, shard: &str) -> Self {
        let (st, sh) = (stream.to_owned(), shard.to_owned());
        macro_rules! labelled {
            ($kind:ident, $name:expr) => {
                $kind!($name, LABEL_STREAM => st.clone(), LABEL_SHARD => sh.clone())
            };
        }
        ShardMetrics {
            user_records_put: labelled!(counter, USER_RECORDS_PUT),
            user_records_data_put: labelled!(counter, USER_RECORDS_DATA_PUT),
            kinesis_records_put: labelled!(counter, KINESIS_RECORDS_PUT),
            kinesis_records_data_put: labelled!(counter, KINESIS_RECORDS_DATA_PUT),
            all_errors: labelled!(counter, ALL_ERRORS),
            retries_per_record: labelled!(histogram, RETRIES_PER_RECORD),
            user_record_expired: labelled!(counter, USER_RECORD_EXPIRED),
            buffering_time: labelled!(histogram, BUFFERING_TIME),
            user_records_per_kinesis_record: labelled!(histogram, USER_RECORDS_PER_KINESIS_RECORD),
            errors_by_code: Vec::new(),
            stream: st,
            shard: sh,
        }
    }

    /// Counts `n` failed Kinesis records with `code`.
    pub fn error(&mut self, code: &str, n: u64) {
        self.all_errors.increment(n);
        if let Some((_, handle)) = self.errors_by_code.iter().find(|(c, _)| c == code) {
            handle.increment(n);
            return;
        }
        let handle = counter!(
            ERRORS_BY_CODE,
            LABEL_STREAM => self.stream.clone(),
            LABEL_SHARD => self.shard.clone(),
            LABEL_ERROR_CODE => code.to_owned()
        );
        handle.increment(n);
        self.errors_by_code.push((code.to_owned(), handle));
    }
}
