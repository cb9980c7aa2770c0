//! The service's 56-digit sequence-number layout.
//!
//! A sequence number is a 188-bit integer written in decimal. Read as 47 hex digits it holds,
//! from the most significant end: the constant `2`; the shard's creation time (epoch seconds, 9
//! hex digits); the low hex digit of the shard index; a 64-bit per-shard counter; a zero byte;
//! the record's arrival time (epoch seconds, 9 hex digits); the 32-bit shard index; and the
//! layout version `2`. This layout decodes real sequence numbers to their documented arrival
//! times and shard ids, so numbers from the broker look and order like the service's: they grow
//! within a shard, and children (created later) sort after their parents.

use crate::sequence::SequenceNumber;

/// The fields packed into one sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SequenceFields {
    /// Shard creation time, epoch seconds (36 bits).
    pub shard_created_secs: u64,
    /// The shard's index (32 bits).
    pub shard_index: u32,
    /// Per-shard counter (63 bits used).
    pub counter: u64,
    /// Record arrival time, epoch seconds (36 bits).
    pub arrival_secs: u64,
}

/// The counter value of a closed shard's ending sequence number.
pub(crate) const ENDING_COUNTER: u64 = 0x7fff_ffff_ffff_ffff;
const SECS_MASK: u64 = (1 << 36) - 1;
const TEN_POW_19: u128 = 10_000_000_000_000_000_000;

impl SequenceFields {
    fn to_limbs(self) -> (u64, u128) {
        let created = self.shard_created_secs & SECS_MASK;
        let arrival = u128::from(self.arrival_secs & SECS_MASK);
        let hi = (2u64 << 56) | (created << 20) | (u64::from(self.shard_index & 0xf) << 16) | (self.counter >> 48);
        let lo = (u128::from(self.counter & ((1 << 48) - 1)) << 80)
            | (arrival << 36)
            | (u128::from(self.shard_index) << 4)
            | 2;
        (hi, lo)
    }

    /// Encodes the fields as the decimal sequence number.
    pub fn encode(self) -> SequenceNumber {
        let (hi, lo) = self.to_limbs();
        let mut limbs = [hi, (lo >> 64) as u64, lo as u64];
        // Three rounds of division by 10^19 reduce a 188-bit value to zero.
        let mut chunks = [0u64; 3];
        for chunk in chunks.iter_mut().rev() {
            let mut rem: u128 = 0;
            for limb in limbs.iter_mut() {
                let cur = (rem << 64) | u128::from(*limb);
                *limb = (cur / TEN_POW_19) as u64;
                rem = cur % TEN_POW_19;
            }
            *chunk = rem as u64;
        }
        let text = if chunks[0] > 0 {
            format!("{}{:019}{:019}", chunks[0], chunks[1], chunks[2])
        } else {
            format!("{}{:019}", chunks[1], chunks[2])
        };
        // The text is digits without leading zeros by construction.
        SequenceNumber::parse(&text).unwrap_or_else(|_| SequenceNumber::from_u128(0))
    }

    /// Decodes a sequence number of this layout; `None` for any other number.
    pub fn decode(seq: &SequenceNumber) -> Option<SequenceFields> {
        let text = seq.as_str();
        if text.len() > 58 {
            return None;
        }
        let mut limbs = [0u64; 3];
        for digit in text.bytes() {
            let mut carry = u128::from(digit - b'0');
            for limb in limbs.iter_mut().rev() {
                let cur = u128::from(*limb) * 10 + carry;
                *limb = cur as u64;
                carry = cur >> 64;
            }
            if carry != 0 {
                return None;
            }
        }
        let hi = limbs[0];
        let lo = (u128::from(limbs[1]) << 64) | u128::from(limbs[2]);
        if hi >> 56 != 2 || lo & 0xf != 2 || (lo >> 72) & 0xff != 0 {
            return None;
        }
        let counter = ((hi & 0xffff) << 48) | ((lo >> 80) as u64 & ((1 << 48) - 1));
        Some(SequenceFields {
            shard_created_secs: (hi >> 20) & SECS_MASK,
            shard_index: ((lo >> 4) & 0xffff_ffff) as u32,
            counter,
            arrival_secs: ((lo >> 36) as u64) & SECS_MASK,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_real_service_numbers() {
        // Real numbers with documented arrival timestamps and shard ids (reference/broker.md §b.1).
        let lambda = SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898").expect("digits");
        let fields = SequenceFields::decode(&lambda).expect("v2 layout");
        assert_eq!(fields.arrival_secs, 1_545_084_650);
        assert_eq!(fields.shard_index, 6);
        assert_eq!(fields.counter, 1_734_642_199);
        let sdk = SequenceNumber::parse("49596795095695876171182093741842742029222840488857436178").expect("digits");
        let fields = SequenceFields::decode(&sdk).expect("v2 layout");
        assert_eq!(fields.arrival_secs, 1_560_944_718);
        assert_eq!(fields.shard_index, 1);
        assert_eq!(fields.counter, 10);
        // And they re-encode to the same text.
        assert_eq!(fields.encode(), sdk);
    }

    #[test]
    fn encode_decode_round_trip_and_order() {
        let base = SequenceFields {
            shard_created_secs: 1_700_000_000,
            shard_index: 3,
            counter: 0,
            arrival_secs: 1_700_000_005,
        };
        let mut previous = base.encode();
        assert_eq!(previous.as_str().len(), 56);
        for counter in [1u64, 2, 1000, 1 << 40, 1 << 48, (1 << 50) + 7, ENDING_COUNTER] {
            let fields = SequenceFields { counter, arrival_secs: base.arrival_secs + 1, ..base };
            let seq = fields.encode();
            assert_eq!(SequenceFields::decode(&seq), Some(fields));
            assert!(previous < seq, "counter order is numeric order");
            previous = seq;
        }
        // A child created a second later sorts after every record of its parent.
        let parent_end = SequenceFields { counter: ENDING_COUNTER, ..base }.encode();
        let child_start = SequenceFields {
            shard_created_secs: base.shard_created_secs + 1,
            shard_index: 4,
            counter: 0,
            arrival_secs: 0,
        }
        .encode();
        assert!(parent_end < child_start);
        assert_eq!(SequenceFields::decode(&SequenceNumber::from_u128(12345)), None);
    }
}
