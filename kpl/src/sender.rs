//! Step 6: send one `PutRecords` request, in a task of its own, under the request timeout and a
//! `tracing` span. The records stay with the pipeline; the task only carries the entries and
//! brings back the per-entry results.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kinesis_core::{Kinesis, KinesisError, PutRecordsEntry, PutRecordsOutput, StreamRef};
use tokio::time::Instant;
use tracing::Instrument;

/// What came back for one request.
pub(crate) struct RequestOutcome {
    pub id: u64,
    pub result: Result<PutRecordsOutput, KinesisError>,
    pub elapsed: Duration,
}

/// A request ready to go.
pub(crate) struct Request {
    pub id: u64,
    pub entries: Vec<PutRecordsEntry>,
    pub user_records: usize,
    pub bytes: usize,
}

/// Sends the request and waits for its answer, at most `timeout`. A panic inside the client
/// becomes a transport error, so the records always come back to the pipeline.
pub(crate) fn send(
    client: Arc<dyn Kinesis>,
    stream: StreamRef,
    request: Request,
    timeout: Duration,
) -> impl Future<Output = RequestOutcome> + Send + 'static {
    let Request { id, entries, user_records, bytes } = request;
    let span = tracing::info_span!(
        "kpl.put_records",
        stream = %stream,
        request = id,
        kinesis_records = entries.len(),
        user_records,
        bytes,
        failed = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    async move {
        let start = Instant::now();
        let call = AssertUnwindSafe(client.put_records(&stream, entries)).catch_unwind();
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                Err(KinesisError::Transport { message: "the Kinesis client panicked".to_owned(), source: None })
            }
            Err(_) => Err(KinesisError::Timeout { message: format!("PutRecords did not complete within {timeout:?}") }),
        };
        let span = tracing::Span::current();
        match &result {
            Ok(output) => {
                span.record("failed", output.failed_record_count());
            }
            Err(error) => {
                span.record("error", tracing::field::display(error));
                tracing::debug!(%error, "PutRecords failed");
            }
        }
        RequestOutcome { id, result, elapsed: start.elapsed() }
    }
    .instrument(span)
}
