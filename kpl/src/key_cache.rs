//! A small per-thread memo of partition key → hash key (MD5 of the key).
//!
//! Hashing the partition key is one MD5 block per record, about as much work as the record's
//! share of the aggregate's checksum. Producers reuse keys (users, devices, tenants), so `send`
//! looks the key up here first. MD5 of a key is a pure function, so the memo is shared by every
//! producer on the thread and needs no lock.
//!
//! The memo is bounded: 4-way set associative, [`SETS`] × [`WAYS`] entries of keys up to
//! [`MAX_CACHED_KEY_BYTES`] bytes (longer keys are hashed every time). Each entry holds its key
//! inline in one 64-byte cache line, so a hit reads two cache lines (the set's quick hashes and
//! the entry) and nothing else: 288 KiB per thread that sends, allocated on first use. A key whose
//! set is full replaces the oldest key of the set, so a working set larger than the memo
//! degrades to hashing, never to more memory.

use std::cell::RefCell;

use kinesis_core::HashKey;

/// Number of sets (a power of two).
const SETS: usize = 1024;
/// Entries per set.
const WAYS: usize = 4;
/// Longest partition key remembered: what fits one cache line beside its hash and length (a
/// UUID's 36 characters do).
const MAX_CACHED_KEY_BYTES: usize = 47;

/// One remembered key, laid out to fill one cache line: hash key 16, length 1, key bytes 47.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Entry {
    hash: HashKey,
    /// Length of the key; 0 marks an empty entry (keys are never empty).
    len: u8,
    key: [u8; MAX_CACHED_KEY_BYTES],
}

impl Entry {
    const EMPTY: Entry = Entry { hash: HashKey::new(0), len: 0, key: [0; MAX_CACHED_KEY_BYTES] };

    fn holds(&self, key: &[u8]) -> bool {
        self.len != 0 && usize::from(self.len) == key.len() && self.key.get(..key.len()) == Some(key)
    }
}

struct Memo {
    /// Per set, the quick hash of each way's key, checked before the entries themselves (one
    /// cache line per lookup instead of one per way).
    quick: Vec<[u64; WAYS]>,
    /// `SETS * WAYS` entries; the ways of a set are contiguous.
    entries: Vec<Entry>,
    /// Per set, the way the next new key replaces (first in, first out: a hit writes nothing).
    next: Vec<u8>,
}

impl Memo {
    fn new() -> Self {
        Memo { quick: vec![[0; WAYS]; SETS], entries: vec![Entry::EMPTY; SETS * WAYS], next: vec![0; SETS] }
    }

    fn get_or_insert(&mut self, partition_key: &str) -> HashKey {
        let key = partition_key.as_bytes();
        let quick = fast_hash(key);
        let set = set_of(quick);
        let (Some(quicks), Some(next)) = (self.quick.get_mut(set), self.next.get_mut(set)) else {
            return HashKey::from_partition_key(partition_key);
        };
        for (way, &q) in quicks.iter().enumerate() {
            if q == quick
                && let Some(entry) = self.entries.get(set * WAYS + way)
                && entry.holds(key)
            {
                return entry.hash;
            }
        }
        let hash = HashKey::from_partition_key(partition_key);
        let way = usize::from(*next) % WAYS;
        *next = ((way + 1) % WAYS) as u8;
        if let (Some(q), Some(entry), Ok(len)) =
            (quicks.get_mut(way), self.entries.get_mut(set * WAYS + way), u8::try_from(key.len()))
            && let Some(slot) = entry.key.get_mut(..key.len())
        {
            slot.copy_from_slice(key);
            entry.len = len;
            entry.hash = hash;
            *q = quick;
        }
        hash
    }
}

thread_local! {
    static MEMO: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

/// The hash key of `partition_key`: MD5 of its bytes, remembered per thread.
pub(crate) fn hash_partition_key(partition_key: &str) -> HashKey {
    if partition_key.len() > MAX_CACHED_KEY_BYTES {
        return HashKey::from_partition_key(partition_key);
    }
    MEMO.try_with(|memo| match memo.try_borrow_mut() {
        Ok(mut memo) => memo.get_or_insert_with(Memo::new).get_or_insert(partition_key),
        Err(_) => HashKey::from_partition_key(partition_key),
    })
    .unwrap_or_else(|_| HashKey::from_partition_key(partition_key))
}

/// A quick multiplicative hash to pick the set (FxHash-like; keys only choose a set, and a
/// collision only costs a recomputation).
fn fast_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    if let Some(dst) = tail.get_mut(..rest.len()) {
        dst.copy_from_slice(rest);
    }
    (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K)
}

/// The set of a key from its [`fast_hash`]: the top bits (the bits a multiplication mixes best;
/// the low bits of a product depend only on the low bits of the key, often a common prefix).
fn set_of(quick: u64) -> usize {
    (quick >> (64 - SETS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_md5_for_hits_misses_evictions_and_long_keys() {
        // More keys than the memo holds, twice over, so sets evict and keys come back.
        for round in 0..2 {
            for i in 0..(SETS * WAYS + 500) {
                let key = format!("key-{i}");
                assert_eq!(hash_partition_key(&key), HashKey::from_partition_key(&key), "round {round}: {key}");
            }
        }
        assert_eq!(std::mem::size_of::<Entry>(), 64, "an entry is one cache line");
        let longest = "y".repeat(MAX_CACHED_KEY_BYTES);
        assert_eq!(hash_partition_key(&longest), HashKey::from_partition_key(&longest));
        assert_eq!(hash_partition_key(&longest), HashKey::from_partition_key(&longest), "and again, from the memo");
        let long = "x".repeat(200);
        assert_eq!(hash_partition_key(&long), HashKey::from_partition_key(&long));
        assert_eq!(hash_partition_key("é"), HashKey::from_partition_key("é"));
    }

    #[test]
    fn keys_with_a_common_prefix_spread_over_the_sets() {
        let mut used = vec![0u32; SETS];
        for i in 0..1000 {
            used[set_of(fast_hash(format!("key-{i}").as_bytes()))] += 1;
        }
        let overfull: u32 = used.iter().map(|&n| n.saturating_sub(WAYS as u32)).sum();
        assert!(overfull <= 10, "{overfull} of 1000 keys do not fit their set");
    }

    #[test]
    fn a_full_set_replaces_its_oldest_key() {
        let mut memo = Memo::new();
        let keys: Vec<String> = (0..100_000).map(|i| format!("k{i}")).collect();
        // Find WAYS + 1 keys that share a set.
        let set_of_key = |k: &str| set_of(fast_hash(k.as_bytes()));
        let target = set_of_key(&keys[0]);
        let same: Vec<&String> = keys.iter().filter(|k| set_of_key(k) == target).take(WAYS + 1).collect();
        assert_eq!(same.len(), WAYS + 1);
        for key in &same {
            assert_eq!(memo.get_or_insert(key), HashKey::from_partition_key(key));
        }
        let cached = |memo: &Memo, key: &str| {
            memo.entries[target * WAYS..(target + 1) * WAYS].iter().any(|e| e.holds(key.as_bytes()))
        };
        assert!(!cached(&memo, same[0]), "the oldest key was replaced");
        assert!(same[1..].iter().all(|k| cached(&memo, k)));
        // It comes back in place of the next oldest.
        assert_eq!(memo.get_or_insert(same[0]), HashKey::from_partition_key(same[0]));
        assert!(cached(&memo, same[0]) && !cached(&memo, same[1]));
    }
}
