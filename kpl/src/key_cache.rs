//! A small per-thread memo of partition key → hash key (MD5 of the key).
//!
//! Hashing the partition key is one MD5 block per record, about as much work as the record's
//! share of the aggregate's checksum. Producers reuse keys (users, devices, tenants), so `send`
//! looks the key up here first. MD5 of a key is a pure function, so the memo is shared by every
//! producer on the thread and needs no lock.
//!
//! The memo is bounded: [`SLOTS`] entries of keys up to [`MAX_CACHED_KEY_BYTES`] bytes (longer
//! keys are hashed every time). Each entry holds its key inline in one 64-byte cache line, and a
//! key may live in one of two slots (both picked by a quick hash of the key), so a hit reads one
//! cache line, rarely two, and nothing else: 256 KiB per thread that sends, allocated on first
//! use. A new key takes a free slot of its two, else moves a key there to that key's other slot
//! if it is free, else replaces one of the keys there; so a working set larger than the memo
//! degrades to hashing, never to more memory.

use std::cell::RefCell;

use kinesis_core::HashKey;

/// Number of entries (a power of two).
const SLOTS: usize = 4096;
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

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Memo {
    /// `SLOTS` entries.
    entries: Vec<Entry>,
    /// Which of its two slots the next new key replaces when both are taken (alternates, so
    /// neither slot's key is always the one to go).
    replace_second: bool,
}

impl Memo {
    fn new() -> Self {
        Memo { entries: vec![Entry::EMPTY; SLOTS], replace_second: false }
    }

    fn get_or_insert(&mut self, partition_key: &str) -> HashKey {
        let key = partition_key.as_bytes();
        let (first, second) = slots_of(fast_hash(key));
        for slot in [first, second] {
            if let Some(entry) = self.entries.get(slot)
                && entry.holds(key)
            {
                return entry.hash;
            }
        }
        let hash = HashKey::from_partition_key(partition_key);
        let slot = self.make_room(first, second);
        if let (Some(entry), Ok(len)) = (self.entries.get_mut(slot), u8::try_from(key.len()))
            && let Some(bytes) = entry.key.get_mut(..key.len())
        {
            bytes.copy_from_slice(key);
            entry.len = len;
            entry.hash = hash;
        }
        hash
    }

    /// Picks the slot a new key with these two slots goes to: a free one, else one whose key
    /// can move to its own other slot (moved there), else one of the two in turn (its key is
    /// forgotten).
    fn make_room(&mut self, first: usize, second: usize) -> usize {
        let free = |memo: &Memo, slot: usize| memo.entries.get(slot).is_some_and(Entry::is_empty);
        for slot in [first, second] {
            if free(self, slot) {
                return slot;
            }
        }
        for slot in [first, second] {
            let Some(&occupant) = self.entries.get(slot) else { continue };
            let key = occupant.key.get(..usize::from(occupant.len)).unwrap_or_default();
            let (a, b) = slots_of(fast_hash(key));
            let other = if a == slot { b } else { a };
            if free(self, other)
                && let Some(entry) = self.entries.get_mut(other)
            {
                *entry = occupant;
                return slot;
            }
        }
        self.replace_second = !self.replace_second;
        if self.replace_second { second } else { first }
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

/// A quick multiplicative hash to pick the slots (FxHash-like; keys only choose slots, and a
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

/// The two slots a key may live in, from its [`fast_hash`]: the top bits and the bits below
/// them (the bits a multiplication mixes best; the low bits of a product depend only on the low
/// bits of the key, often a common prefix). The second slot differs from the first.
fn slots_of(quick: u64) -> (usize, usize) {
    const BITS: u32 = SLOTS.trailing_zeros();
    let mask = SLOTS - 1;
    let first = (quick >> (64 - BITS)) as usize & mask;
    let second = (quick >> (64 - 2 * BITS)) as usize & mask;
    (first, if second == first { (first + 1) & mask } else { second })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(memo: &Memo, key: &str) -> bool {
        let (first, second) = slots_of(fast_hash(key.as_bytes()));
        memo.entries[first].holds(key.as_bytes()) || memo.entries[second].holds(key.as_bytes())
    }

    #[test]
    fn matches_md5_for_hits_misses_evictions_and_long_keys() {
        // More keys than the memo holds, twice over, so slots are replaced and keys come back.
        for round in 0..2 {
            for i in 0..(SLOTS + 500) {
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
    fn a_thousand_keys_with_a_common_prefix_are_all_remembered() {
        let mut memo = Memo::new();
        let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
        for key in &keys {
            memo.get_or_insert(key);
        }
        let forgotten = keys.iter().filter(|k| !cached(&memo, k)).count();
        assert!(forgotten <= 5, "{forgotten} of 1000 keys were pushed out");
        let firsts: std::collections::HashSet<usize> =
            keys.iter().map(|k| slots_of(fast_hash(k.as_bytes())).0).collect();
        assert!(firsts.len() > 850, "first slots spread: {} distinct", firsts.len());
    }

    /// An entry holding `key`, as `get_or_insert` writes it.
    fn entry_of(key: &str) -> Entry {
        let mut entry = Entry::EMPTY;
        entry.key[..key.len()].copy_from_slice(key.as_bytes());
        entry.len = key.len() as u8;
        entry.hash = HashKey::from_partition_key(key);
        entry
    }

    /// A key and two other keys whose own first slots are the key's two slots.
    fn key_and_two_rivals() -> (String, String, String) {
        let candidates: Vec<String> = (0..200_000).map(|i| format!("k{i}")).collect();
        let key = candidates[0].clone();
        let (first, second) = slots_of(fast_hash(key.as_bytes()));
        assert_ne!(first, second);
        let first_slot_of = |k: &String| slots_of(fast_hash(k.as_bytes())).0;
        let a = candidates[1..].iter().find(|k| first_slot_of(k) == first).expect("a key for the first slot");
        let b = candidates[1..].iter().find(|k| first_slot_of(k) == second).expect("a key for the second slot");
        (key, a.clone(), b.clone())
    }

    #[test]
    fn a_key_whose_two_slots_are_taken_moves_a_key_to_its_other_slot() {
        let mut memo = Memo::new();
        let (key, a, b) = key_and_two_rivals();
        assert_eq!(memo.get_or_insert(&a), HashKey::from_partition_key(&a));
        assert_eq!(memo.get_or_insert(&b), HashKey::from_partition_key(&b));
        let (first, second) = slots_of(fast_hash(key.as_bytes()));
        assert!(memo.entries[first].holds(a.as_bytes()) && memo.entries[second].holds(b.as_bytes()));

        assert_eq!(memo.get_or_insert(&key), HashKey::from_partition_key(&key));
        assert!(cached(&memo, &key) && cached(&memo, &a) && cached(&memo, &b), "a key moved; none forgotten");
        assert_eq!(memo.entries.iter().filter(|e| !e.is_empty()).count(), 3);
        let moved = slots_of(fast_hash(a.as_bytes())).1;
        assert!(memo.entries[moved].holds(a.as_bytes()) && memo.entries[first].holds(key.as_bytes()));
    }

    #[test]
    fn in_a_full_memo_a_new_key_replaces_one_of_the_keys_in_its_slots() {
        let mut memo = Memo::new();
        memo.entries.fill(entry_of("#"));
        let (key, a, b) = key_and_two_rivals();
        let (first, second) = slots_of(fast_hash(key.as_bytes()));
        memo.entries[first] = entry_of(&a);
        memo.entries[second] = entry_of(&b);

        assert_eq!(memo.get_or_insert(&key), HashKey::from_partition_key(&key));
        assert!(cached(&memo, &key), "the new key is remembered");
        assert_eq!(cached(&memo, &a) as u8 + cached(&memo, &b) as u8, 1, "exactly one old key made room");
        // A hit changes nothing.
        let before: Vec<u8> = memo.entries.iter().map(|e| e.len).collect();
        assert_eq!(memo.get_or_insert(&key), HashKey::from_partition_key(&key));
        assert_eq!(before, memo.entries.iter().map(|e| e.len).collect::<Vec<_>>());
        // The forgotten key comes back in place of the other one: they take turns.
        let forgotten = if cached(&memo, &a) { &b } else { &a };
        assert_eq!(memo.get_or_insert(forgotten), HashKey::from_partition_key(forgotten));
        assert!(cached(&memo, forgotten) && !cached(&memo, &key));
    }
}
