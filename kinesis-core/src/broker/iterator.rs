//! Shard iterators: opaque, self-describing position handles that expire after five minutes.
//!
//! The broker keeps no state per iterator (so iterators cannot leak memory): the text encodes
//! the stream, its incarnation, the shard, the absolute record position and the issue time.

use std::fmt::Write as _;

use crate::client::ShardIterator;

/// What a broker iterator points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IteratorPosition {
    pub stream: String,
    pub incarnation: u64,
    pub shard_index: u32,
    pub position: u64,
    pub issued_at_ms: u64,
}

/// Header like the service's iterators (`AAAAAAAAAAE…` when base64-encoded).
const PREFIX: &str = "AAAAAAAAAAE";

impl IteratorPosition {
    pub fn encode(&self) -> ShardIterator {
        let mut text = String::with_capacity(PREFIX.len() + 64 + self.stream.len() * 2);
        text.push_str(PREFIX);
        let _ = write!(
            text,
            "{:016x}{:08x}{:016x}{:016x}",
            self.incarnation, self.shard_index, self.position, self.issued_at_ms
        );
        for byte in self.stream.bytes() {
            let _ = write!(text, "{byte:02x}");
        }
        ShardIterator::from(text)
    }

    pub fn decode(iterator: &ShardIterator) -> Option<IteratorPosition> {
        let body = iterator.as_str().strip_prefix(PREFIX)?;
        if body.len() < 56 || body.len() % 2 != 0 || !body.is_ascii() {
            return None;
        }
        let hex = |range: std::ops::Range<usize>| u64::from_str_radix(body.get(range)?, 16).ok();
        let incarnation = hex(0..16)?;
        let shard_index = u32::try_from(hex(16..24)?).ok()?;
        let position = hex(24..40)?;
        let issued_at_ms = hex(40..56)?;
        let name_hex = body.get(56..)?;
        let mut name = Vec::with_capacity(name_hex.len() / 2);
        for i in (0..name_hex.len()).step_by(2) {
            name.push(u8::from_str_radix(name_hex.get(i..i + 2)?, 16).ok()?);
        }
        let stream = String::from_utf8(name).ok()?;
        if stream.is_empty() {
            return None;
        }
        Some(IteratorPosition { stream, incarnation, shard_index, position, issued_at_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let pos = IteratorPosition {
            stream: "orders.v1".into(),
            incarnation: 3,
            shard_index: 12,
            position: 9_999,
            issued_at_ms: 1_700_000_000_123,
        };
        let it = pos.encode();
        assert!(it.as_str().starts_with("AAAAAAAAAAE"));
        assert!(it.as_str().len() <= 512);
        assert_eq!(IteratorPosition::decode(&it), Some(pos));
        for bad in [
            "",
            "AAAAAAAAAAE",
            "garbage",
            "AAAAAAAAAAEzz",
            "AAAAAAAAAAE00000000000000030000000c000000000000270f0000018bcfe56800",
        ] {
            assert_eq!(IteratorPosition::decode(&ShardIterator::from(bad.to_string())), None, "{bad}");
        }
    }
}
