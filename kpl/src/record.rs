//! What goes in and what comes out: [`UserRecord`], [`RecordMetadata`] and the per-record
//! [`DeliveryFuture`]; and the producer's own bookkeeping of an accepted record.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use std::sync::Arc;

use kinesis_core::{ExtendedSequenceNumber, HashKey, RecordPlacement, SequenceNumber, ShardId};
use tokio::time::Instant;

use crate::completion::{Completer, Receiver};
use crate::error::ProduceError;

/// One record as the application hands it to the producer.
///
/// The partition key (1–256 characters) decides the shard, through its MD5 hash, unless an
/// explicit hash key is given. Cloning is cheap for the data (shared [`Bytes`]) and copies the
/// keys.
///
/// ```
/// use kpl::UserRecord;
/// let record = UserRecord::new("user-42", "clicked").with_explicit_hash_key("12345");
/// assert_eq!(record.partition_key(), "user-42");
/// assert_eq!(record.size(), 7 + 7);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserRecord {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: Bytes,
}

impl UserRecord {
    /// A record with a partition key and a payload.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        UserRecord { partition_key: partition_key.into(), explicit_hash_key: None, data: data.into() }
    }

    /// Routes the record by this explicit hash key (a decimal in `[0, 2^128 − 1]`) instead of
    /// its partition key's hash.
    pub fn with_explicit_hash_key(mut self, explicit_hash_key: impl Into<String>) -> Self {
        self.explicit_hash_key = Some(explicit_hash_key.into());
        self
    }

    /// The partition key.
    pub fn partition_key(&self) -> &str {
        &self.partition_key
    }

    /// The explicit hash key, if one was given.
    pub fn explicit_hash_key(&self) -> Option<&str> {
        self.explicit_hash_key.as_deref()
    }

    /// The payload.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// What Kinesis counts against the stream's maximum record size: partition key + data bytes.
    pub fn size(&self) -> usize {
        self.partition_key.len() + self.data.len()
    }

    /// Takes the record apart: partition key, explicit hash key, data.
    pub fn into_parts(self) -> (String, Option<String>, Bytes) {
        (self.partition_key, self.explicit_hash_key, self.data)
    }
}

impl fmt::Debug for UserRecord {
    /// Shows the keys and the data's length, never the data itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("partition_key", &self.partition_key)
            .field("explicit_hash_key", &self.explicit_hash_key)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// Where a user record was stored.
///
/// The user records of one Kinesis record share its shard and sequence number: they are held
/// once, so resolving an aggregate of hundreds of records costs one reference count each.
///
/// ```
/// # fn show(metadata: &kpl::RecordMetadata) {
/// println!(
///     "shard {} sequence {} sub-sequence {} after {} attempt(s)",
///     metadata.shard_id(),
///     metadata.sequence_number(),
///     metadata.sub_sequence_number(),
///     metadata.attempts(),
/// );
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    placement: Arc<RecordPlacement>,
    sub_sequence_number: u64,
    aggregated: bool,
    attempts: u32,
}

impl RecordMetadata {
    pub(crate) fn new(
        placement: Arc<RecordPlacement>,
        sub_sequence_number: u64,
        aggregated: bool,
        attempts: u32,
    ) -> Self {
        RecordMetadata { placement, sub_sequence_number, aggregated, attempts }
    }

    /// The shard that stored it.
    pub fn shard_id(&self) -> &ShardId {
        &self.placement.shard_id
    }

    /// The sequence number of the Kinesis record that carries it.
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.placement.sequence_number
    }

    /// Its position inside the aggregate (what a consumer checkpoints with the sequence number);
    /// 0 for a record sent on its own.
    pub fn sub_sequence_number(&self) -> u64 {
        self.sub_sequence_number
    }

    /// Its full position in the shard: sequence number and sub-sequence number, as a consumer
    /// checkpoints it.
    pub fn extended_sequence_number(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::at_sub(self.placement.sequence_number.clone(), self.sub_sequence_number)
    }

    /// Whether it was sent inside an aggregate (compressed or not).
    pub fn aggregated(&self) -> bool {
        self.aggregated
    }

    /// How many `PutRecords` requests carried it, this last one included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// The outcome of one user record: where it was stored, or why it was not, with the record
/// handed back.
pub type DeliveryResult = Result<RecordMetadata, (ProduceError, UserRecord)>;

/// Resolves to the outcome of one accepted record. Returned by
/// [`Producer::send`](crate::Producer::send) and [`Producer::try_send`](crate::Producer::try_send).
///
/// Every accepted record resolves: delivered, failed with its reason (expired, rejected, ...),
/// or — only if the runtime running the producer shuts down first — [`ProduceError::Aborted`].
/// Dropping the future does not cancel the record; it is still sent. Polling it again after it
/// resolved gives [`ProduceError::Aborted`] with an empty record.
#[must_use = "the future resolves to the record's outcome; dropping it still sends the record"]
pub struct DeliveryFuture {
    rx: Receiver,
}

impl fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryFuture").finish_non_exhaustive()
    }
}

impl DeliveryFuture {
    pub(crate) fn new(rx: Receiver) -> Self {
        DeliveryFuture { rx }
    }
}

impl Future for DeliveryFuture {
    type Output = DeliveryResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(self.rx.poll(cx)) {
            Ok(metadata) => Poll::Ready(Ok(metadata)),
            Err(failure) => Poll::Ready(Err(*failure)),
        }
    }
}

/// An accepted user record inside the producer, from `send` until its outcome is delivered.
///
/// Dropping it without [`complete`](Pending::complete) (the pipeline task was dropped with the
/// runtime) still resolves its future, with [`ProduceError::Aborted`] and the record.
pub(crate) struct Pending {
    pub record: UserRecord,
    pub hash_key: HashKey,
    /// When the pipeline took the record in; TTL and buffering time count from here.
    pub arrival: Instant,
    /// Bytes it holds of the buffer bound.
    pub charge: u32,
    /// Flush epoch the record was accepted in.
    pub epoch: u64,
    /// Its place in the order the pipeline took records in: Kinesis records are queued by
    /// their first record's place, so a retried or re-packed one goes before newer ones.
    pub order: u64,
    /// Where its data lies in the encoded aggregate that carries it (offset, length), while
    /// `record.data` is empty: see [`KinesisRecord`](crate::aggregator::KinesisRecord).
    span: Option<(u32, u32)>,
    /// Where its partition key lies in that aggregate's key table (offset, length), while
    /// `record.partition_key` is empty.
    key_span: Option<(u32, u16)>,
    cell: Option<Completer>,
}

impl Pending {
    /// A pending record whose outcome goes to `cell`.
    pub fn new(record: UserRecord, hash_key: HashKey, charge: u32, placeholder: Instant, cell: Completer) -> Self {
        Pending {
            record,
            hash_key,
            arrival: placeholder,
            charge,
            epoch: 0,
            order: 0,
            span: None,
            key_span: None,
            cell: Some(cell),
        }
    }

    /// The explicit hash key as written, if any.
    pub fn explicit_hash_key(&self) -> Option<&str> {
        self.record.explicit_hash_key.as_deref()
    }

    /// The partition key (empty while it is lent to an aggregate: see
    /// [`lend_partition_key`](Self::lend_partition_key)).
    pub fn partition_key(&self) -> &str {
        &self.record.partition_key
    }

    /// The payload.
    pub fn data(&self) -> &Bytes {
        &self.record.data
    }

    /// Lets go of the payload, noting where the same bytes lie in an encoded aggregate: the
    /// record holds no reference to it until [`restore_data`](Self::restore_data).
    pub fn lend_data(&mut self, range: std::ops::Range<usize>) {
        // Records are at most 10 MiB, so this always holds; if not, keeping the data is correct.
        if let (Ok(start), Ok(len)) = (u32::try_from(range.start), u32::try_from(range.len())) {
            self.record.data = Bytes::new();
            self.span = Some((start, len));
        }
    }

    /// Lets go of the partition key, noting where the same bytes lie in the aggregate that
    /// carries the record (its key table), like [`lend_data`](Self::lend_data): a delivered
    /// record then frees nothing of its own, and the key's buffer is freed while it is still in
    /// the CPU's cache.
    pub fn lend_partition_key(&mut self, range: std::ops::Range<usize>) {
        // Partition keys are at most 256 characters, so this always holds.
        if let (Ok(start), Ok(len)) = (u32::try_from(range.start), u16::try_from(range.len())) {
            self.record.partition_key = String::new();
            self.key_span = Some((start, len));
        }
    }

    /// Takes the payload and the partition key back from the aggregate they were lent to.
    pub fn restore_data(&mut self, aggregate: &Bytes) {
        if let Some((start, len)) = self.span.take() {
            let (start, end) = (start as usize, start as usize + len as usize);
            if end <= aggregate.len() {
                self.record.data = aggregate.slice(start..end);
            }
        }
        if let Some((start, len)) = self.key_span.take() {
            let (start, end) = (start as usize, start as usize + usize::from(len));
            if let Some(key) = aggregate.get(start..end) {
                // The bytes are the key's own UTF-8, copied into the aggregate by the builder.
                self.record.partition_key = String::from_utf8_lossy(key).into_owned();
            }
        }
    }

    /// The payload's length, lent or not.
    pub fn data_len(&self) -> usize {
        match self.span {
            Some((_, len)) => len as usize,
            None => self.record.data.len(),
        }
    }

    /// Resolves the record's future. A future whose receiver was dropped is simply skipped.
    pub fn complete(mut self, outcome: Result<RecordMetadata, ProduceError>) {
        match outcome {
            Ok(metadata) => self.deliver_in_place(metadata),
            Err(error) => {
                if let Some(cell) = self.cell.take() {
                    cell.complete(Err(Box::new((error, std::mem::take(&mut self.record)))));
                }
            }
        }
    }

    /// Resolves the record's future as delivered without moving the record (it is dropped
    /// where it lies, with the list that holds it).
    pub fn deliver_in_place(&mut self, metadata: RecordMetadata) {
        if let Some(cell) = self.cell.take() {
            cell.complete(Ok(metadata));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            cell.complete(Err(Box::new((ProduceError::Aborted, std::mem::take(&mut self.record)))));
        }
    }
}
