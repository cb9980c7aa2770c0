//! Sequence numbers and extended sequence numbers.
//!
//! Kinesis sequence numbers are decimal strings (56 digits in today's layout, up to 129 allowed).
//! They must be compared numerically: comparing text of different lengths gives the wrong order.
//! An [`ExtendedSequenceNumber`] adds the sub-sequence number of a KPL sub-record and the
//! sentinels a consumer checkpoints before it has read anything or after a shard ended.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::limits::ValidationError;

/// A record's position in its shard: a non-negative decimal integer of any length.
///
/// Ordering is numeric, and cloning is cheap (shared text).
///
/// ```
/// use kinesis_core::SequenceNumber;
/// let a: SequenceNumber = "99".parse().unwrap();
/// let b: SequenceNumber = "100".parse().unwrap();
/// assert!(a < b); // as text, "99" > "100"
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Arc<str>);

impl SequenceNumber {
    /// Parses a sequence number: one or more ASCII digits (at most 129), no leading zeros unless it
    /// is `0`.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let b = text.as_bytes();
        let ok = !b.is_empty() && b.len() <= 129 && b.iter().all(u8::is_ascii_digit) && (b[0] != b'0' || b.len() == 1);
        if ok {
            Ok(SequenceNumber(Arc::from(text)))
        } else {
            Err(ValidationError::InvalidSequenceNumber { value: text.to_owned() })
        }
    }

    /// Builds a sequence number from an integer (used by the in-memory broker and in tests).
    pub fn from_u128(value: u128) -> Self {
        SequenceNumber(Arc::from(value.to_string()))
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as an integer when it fits in 128 bits (today's 56-digit numbers do not:
    /// they need about 185 bits).
    pub fn to_u128(&self) -> Option<u128> {
        self.0.parse().ok()
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        // Canonical decimals without leading zeros: longer is larger, equal lengths compare as text.
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({})", self.0)
    }
}

impl FromStr for SequenceNumber {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SequenceNumber::parse(s)
    }
}

impl AsRef<str> for SequenceNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A consumer's position: a sequence number with the sub-sequence number of a KPL sub-record, or
/// one of the sentinels the KCL stores in its lease table.
///
/// Order: `AtTimestamp` < `TrimHorizon` < `Latest` < every sequence number < `ShardEnd`. Between
/// sequence numbers the order is numeric on the sequence number, then on the sub-sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExtendedSequenceNumber {
    /// Start from the oldest record still retained (`TRIM_HORIZON`).
    TrimHorizon,
    /// Start after the newest record at the time of the first read (`LATEST`).
    Latest,
    /// Start from the first record at or after a timestamp (`AT_TIMESTAMP`). The lease table
    /// stores only the sentinel; the timestamp comes from configuration.
    AtTimestamp,
    /// A concrete position: the record's sequence number and, for a KPL sub-record, its index
    /// inside the aggregate (0 for plain records).
    Sequence {
        /// The Kinesis record's sequence number.
        sequence_number: SequenceNumber,
        /// The sub-record's index inside an aggregated record; 0 for plain records.
        sub_sequence_number: u64,
    },
    /// The shard is closed and every record in it has been processed (`SHARD_END`).
    ShardEnd,
}

impl ExtendedSequenceNumber {
    /// The text the KCL stores for the `TRIM_HORIZON` sentinel.
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    /// The text the KCL stores for the `LATEST` sentinel.
    pub const LATEST: &'static str = "LATEST";
    /// The text the KCL stores for the `AT_TIMESTAMP` sentinel.
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";
    /// The text the KCL stores for the `SHARD_END` sentinel.
    pub const SHARD_END: &'static str = "SHARD_END";

    /// A position at a plain (non-aggregated) record.
    pub fn at(sequence_number: SequenceNumber) -> Self {
        ExtendedSequenceNumber::Sequence { sequence_number, sub_sequence_number: 0 }
    }

    /// A position at a sub-record of an aggregated record.
    pub fn at_sub(sequence_number: SequenceNumber, sub_sequence_number: u64) -> Self {
        ExtendedSequenceNumber::Sequence { sequence_number, sub_sequence_number }
    }

    /// Parses the lease table's `checkpoint` text (a sentinel or a sequence number) with its
    /// `checkpointSubSequenceNumber`.
    pub fn parse(checkpoint: &str, sub_sequence_number: u64) -> Result<Self, ValidationError> {
        Ok(match checkpoint {
            Self::TRIM_HORIZON => ExtendedSequenceNumber::TrimHorizon,
            Self::LATEST => ExtendedSequenceNumber::Latest,
            Self::AT_TIMESTAMP => ExtendedSequenceNumber::AtTimestamp,
            Self::SHARD_END => ExtendedSequenceNumber::ShardEnd,
            seq => ExtendedSequenceNumber::at_sub(SequenceNumber::parse(seq)?, sub_sequence_number),
        })
    }

    /// The text stored in the lease table's `checkpoint` attribute.
    pub fn checkpoint_text(&self) -> &str {
        match self {
            ExtendedSequenceNumber::TrimHorizon => Self::TRIM_HORIZON,
            ExtendedSequenceNumber::Latest => Self::LATEST,
            ExtendedSequenceNumber::AtTimestamp => Self::AT_TIMESTAMP,
            ExtendedSequenceNumber::ShardEnd => Self::SHARD_END,
            ExtendedSequenceNumber::Sequence { sequence_number, .. } => sequence_number.as_str(),
        }
    }

    /// The sub-sequence number (0 for sentinels and plain records).
    pub fn sub_sequence_number(&self) -> u64 {
        match self {
            ExtendedSequenceNumber::Sequence { sub_sequence_number, .. } => *sub_sequence_number,
            _ => 0,
        }
    }

    /// The sequence number, if this is a concrete position.
    pub fn sequence_number(&self) -> Option<&SequenceNumber> {
        match self {
            ExtendedSequenceNumber::Sequence { sequence_number, .. } => Some(sequence_number),
            _ => None,
        }
    }

    /// Whether this is one of the sentinels rather than a concrete position.
    pub fn is_sentinel(&self) -> bool {
        !matches!(self, ExtendedSequenceNumber::Sequence { .. })
    }

    fn rank(&self) -> u8 {
        match self {
            ExtendedSequenceNumber::AtTimestamp => 0,
            ExtendedSequenceNumber::TrimHorizon => 1,
            ExtendedSequenceNumber::Latest => 2,
            ExtendedSequenceNumber::Sequence { .. } => 3,
            ExtendedSequenceNumber::ShardEnd => 4,
        }
    }
}

impl Ord for ExtendedSequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                ExtendedSequenceNumber::Sequence { sequence_number: a, sub_sequence_number: sa },
                ExtendedSequenceNumber::Sequence { sequence_number: b, sub_sequence_number: sb },
            ) => a.cmp(b).then(sa.cmp(sb)),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for ExtendedSequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtendedSequenceNumber::Sequence { sequence_number, sub_sequence_number } => {
                write!(f, "{sequence_number}/{sub_sequence_number}")
            }
            other => f.write_str(other.checkpoint_text()),
        }
    }
}

/// Where to start reading a shard: the shard-iterator types of `GetShardIterator` and the
/// starting positions of `SubscribeToShard`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still retained.
    TrimHorizon,
    /// Just after the newest record: only records written from now on.
    Latest,
    /// The record with exactly this sequence number.
    AtSequenceNumber(SequenceNumber),
    /// The record right after this sequence number.
    AfterSequenceNumber(SequenceNumber),
    /// The first record that arrived at or after this time.
    AtTimestamp(SystemTime),
}

impl StartingPosition {
    /// The API name of the iterator type (`TRIM_HORIZON`, `AT_SEQUENCE_NUMBER`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            StartingPosition::TrimHorizon => "TRIM_HORIZON",
            StartingPosition::Latest => "LATEST",
            StartingPosition::AtSequenceNumber(_) => "AT_SEQUENCE_NUMBER",
            StartingPosition::AfterSequenceNumber(_) => "AFTER_SEQUENCE_NUMBER",
            StartingPosition::AtTimestamp(_) => "AT_TIMESTAMP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).expect("valid")
    }

    #[test]
    fn numeric_order_across_lengths() {
        assert!(seq("9") < seq("10"));
        assert!(seq("99") < seq("100"));
        let real_a = seq("49590338271490256608559692538361571095921575989136588898");
        let real_b = seq("49596795095695876171182093741842742029222840488857436178");
        assert!(real_a < real_b);
        assert!(seq("0") < seq("1"));
        assert_eq!(seq("123").cmp(&seq("123")), Ordering::Equal);
    }

    #[test]
    fn rejects_non_decimal() {
        for bad in ["", "01", "-1", "1a", " 1", &"1".repeat(130)] {
            assert!(SequenceNumber::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SequenceNumber::parse(&"1".repeat(129)).is_ok());
    }

    #[test]
    fn extended_order_and_sentinels() {
        let a = ExtendedSequenceNumber::at_sub(seq("100"), 0);
        let b = ExtendedSequenceNumber::at_sub(seq("100"), 3);
        let c = ExtendedSequenceNumber::at(seq("101"));
        assert!(a < b && b < c);
        assert!(ExtendedSequenceNumber::AtTimestamp < ExtendedSequenceNumber::TrimHorizon);
        assert!(ExtendedSequenceNumber::TrimHorizon < ExtendedSequenceNumber::Latest);
        assert!(ExtendedSequenceNumber::Latest < a);
        assert!(c < ExtendedSequenceNumber::ShardEnd);
        for sentinel in ["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "SHARD_END"] {
            let parsed = ExtendedSequenceNumber::parse(sentinel, 0).expect("sentinel");
            assert!(parsed.is_sentinel());
            assert_eq!(parsed.checkpoint_text(), sentinel);
        }
        let parsed = ExtendedSequenceNumber::parse("4959", 7).expect("number");
        assert_eq!(parsed.sub_sequence_number(), 7);
        assert_eq!(parsed.sequence_number(), Some(&seq("4959")));
        assert!(ExtendedSequenceNumber::parse("LATESTX", 0).is_err());
    }
}
