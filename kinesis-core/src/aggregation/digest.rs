//! MD5 digests of several messages, computed side by side.
//!
//! One MD5 is a chain of 64 steps per 64-byte block in which every step needs the result of the
//! one before: a single message runs at the speed of that chain (about 4.7 CPU cycles per byte
//! on the machines the benchmarks run on) while most of the CPU's arithmetic units wait.
//! Independent messages have independent chains, so up to eight of them are hashed in
//! lock-step, one per SIMD lane: eight aggregates are sealed 3.6–3.9 times as fast as one after
//! another (`cargo bench -p kinesis-core --bench digest`).
//!
//! Every aggregate ends with the MD5 of its body, the largest single cost of producing
//! aggregated records, and a producer sends many aggregates per `PutRecords` request: it seals
//! them together with [`UnsealedAggregate::seal_all`](super::UnsealedAggregate::seal_all), which
//! comes here. The algorithm is RFC 1321's; the results are checked against the `md-5` crate.
//! `wide` provides the vector types, so there is no `unsafe` and no per-architecture code here.

use std::num::Wrapping;

use md5::{Digest, Md5};
use wide::{u32x4, u32x8};

/// The chaining values an MD5 starts from.
const INITIAL_STATE: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The additive constant of each step: the integer part of `|sin(step + 1)| · 2^32`.
#[rustfmt::skip]
const STEP_CONSTANTS: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// The left rotation of each step, by round (16 steps) and step within the round modulo 4.
const ROTATIONS: [[u32; 4]; 4] = [[7, 12, 17, 22], [5, 9, 14, 20], [4, 11, 16, 23], [6, 10, 15, 21]];

/// Most lanes hashed side by side: eight, two 128-bit vectors (or one 256-bit), which keep a
/// core's vector units busy through MD5's chain of dependent steps.
const MAX_LANES: usize = 8;

/// Which of the block's 16 words step `step` adds.
const fn word_of_step(step: usize) -> usize {
    match step / 16 {
        0 => step,
        1 => (5 * step + 1) % 16,
        2 => (3 * step + 5) % 16,
        _ => (7 * step) % 16,
    }
}

/// One MD5 word of each of several messages, side by side: a SIMD vector of lanes (`wide`'s
/// types compile to SSE2 on any x86-64 and NEON on ARM, and to plain arrays elsewhere), or a
/// single word for a message hashed alone.
trait Lanes:
    Copy
    + std::ops::Add<Output = Self>
    + std::ops::BitAnd<Output = Self>
    + std::ops::BitOr<Output = Self>
    + std::ops::BitXor<Output = Self>
    + std::ops::Not<Output = Self>
{
    /// Messages side by side.
    const COUNT: usize;
    /// `value` in every lane.
    fn splat(value: u32) -> Self;
    /// Lane `i` set to `value(i)`.
    fn from_fn(value: impl FnMut(usize) -> u32) -> Self;
    /// The value of lane `i` (0 past the last lane).
    fn lane(self, i: usize) -> u32;
    /// Every lane rotated left by `bits` (1–31; a constant at every call).
    fn rotate_left(self, bits: u32) -> Self;
}

macro_rules! simd_lanes {
    ($type:ty, $count:literal) => {
        impl Lanes for $type {
            const COUNT: usize = $count;
            #[inline(always)]
            fn splat(value: u32) -> Self {
                <$type>::splat(value)
            }
            #[inline(always)]
            fn from_fn(value: impl FnMut(usize) -> u32) -> Self {
                <$type>::new(std::array::from_fn(value))
            }
            #[inline(always)]
            fn lane(self, i: usize) -> u32 {
                self.to_array().get(i).copied().unwrap_or(0)
            }
            #[inline(always)]
            fn rotate_left(self, bits: u32) -> Self {
                (self << bits) | (self >> (32 - bits))
            }
        }
    };
}
simd_lanes!(u32x4, 4);
simd_lanes!(u32x8, 8);

impl Lanes for Wrapping<u32> {
    const COUNT: usize = 1;
    #[inline(always)]
    fn splat(value: u32) -> Self {
        Wrapping(value)
    }
    #[inline(always)]
    fn from_fn(mut value: impl FnMut(usize) -> u32) -> Self {
        Wrapping(value(0))
    }
    #[inline(always)]
    fn lane(self, i: usize) -> u32 {
        if i == 0 { self.0 } else { 0 }
    }
    #[inline(always)]
    fn rotate_left(self, bits: u32) -> Self {
        Wrapping(self.0.rotate_left(bits))
    }
}

/// MD5 step `STEP` in every lane: `a ← b + ((a + f(b, c, d) + constant + word) <<< s)`.
///
/// Every per-step choice is a constant of `STEP`, so each call compiles to straight-line code.
#[inline(always)]
fn step<const STEP: usize, L: Lanes>(a: &mut L, b: L, c: L, d: L, words: &[L; 16]) {
    // The four round functions, in forms with one operation fewer than RFC 1321's.
    let f = match STEP / 16 {
        0 => d ^ (b & (c ^ d)),
        1 => c ^ (d & (b ^ c)),
        2 => b ^ c ^ d,
        _ => c ^ (b | !d),
    };
    let word = words[const { word_of_step(STEP) }];
    let sum = *a + f + L::splat(const { STEP_CONSTANTS[STEP] }) + word;
    *a = b + sum.rotate_left(const { ROTATIONS[STEP / 16][STEP % 4] });
}

/// Runs one 64-byte block of each lane's message through the compression function: `words`
/// holds the blocks as 16 little-endian words, each word of every lane side by side.
#[inline(always)]
fn compress<L: Lanes>(state: &mut [L; 4], words: &[[u32; MAX_LANES]; 16]) {
    let words: [L; 16] = words.map(|word| L::from_fn(|lane| word.get(lane).copied().unwrap_or(0)));
    let [mut a, mut b, mut c, mut d] = *state;
    // Four steps per line; the registers' roles rotate from step to step.
    macro_rules! steps {
        ($($first:literal)*) => {$(
            step::<{ $first }, L>(&mut a, b, c, d, &words);
            step::<{ $first + 1 }, L>(&mut d, a, b, c, &words);
            step::<{ $first + 2 }, L>(&mut c, d, a, b, &words);
            step::<{ $first + 3 }, L>(&mut b, c, d, a, &words);
        )*};
    }
    steps!(0 4 8 12 16 20 24 28 32 36 40 44 48 52 56 60);
    for (value, added) in state.iter_mut().zip([a, b, c, d]) {
        *value = *value + added;
    }
}

/// One message being hashed: its whole blocks, read in place, and its padded end.
struct Message<'a> {
    blocks: &'a [[u8; 64]],
    /// The last partial block, the `0x80` marker, zeros and the bit length: one or two blocks.
    tail: [[u8; 64]; 2],
    tail_blocks: usize,
    state: [u32; 4],
    /// Blocks compressed so far.
    done: usize,
}

impl<'a> Message<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let (blocks, rest) = bytes.as_chunks::<64>();
        // The length field takes the last 8 bytes of a block; after the marker they must fit.
        let tail_blocks = if rest.len() < 56 { 1 } else { 2 };
        let mut tail = [[0u8; 64]; 2];
        let padded = tail.as_flattened_mut();
        if let Some(start) = padded.get_mut(..rest.len()) {
            start.copy_from_slice(rest);
        }
        if let Some(marker) = padded.get_mut(rest.len()) {
            *marker = 0x80;
        }
        let length_at = tail_blocks * 64 - 8;
        if let Some(field) = padded.get_mut(length_at..length_at + 8) {
            field.copy_from_slice(&(bytes.len() as u64).wrapping_mul(8).to_le_bytes());
        }
        Message { blocks, tail, tail_blocks, state: INITIAL_STATE, done: 0 }
    }

    fn remaining(&self) -> usize {
        self.blocks.len() + self.tail_blocks - self.done
    }

    /// Block `index` of the padded message (`index` < the block count).
    fn block(&self, index: usize) -> &[u8; 64] {
        let tail = || self.tail.get(index.wrapping_sub(self.blocks.len()));
        self.blocks.get(index).or_else(tail).unwrap_or(&[0; 64])
    }

    fn digest(&self) -> [u8; 16] {
        let mut digest = [0u8; 16];
        for (bytes, value) in digest.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
        digest
    }
}

/// Runs `count` blocks of each message in `lanes` (at most `L::COUNT`) side by side; spare lanes
/// hash zeros, which costs nothing extra: the lanes run in the same instructions.
fn run_lanes<L: Lanes>(messages: &mut [Message<'_>], lanes: &[usize], count: usize) {
    let in_lane = |lane: usize| lanes.get(lane).and_then(|&index| messages.get(index));
    let mut state: [L; 4] = std::array::from_fn(|word| L::from_fn(|lane| in_lane(lane).map_or(0, |m| m.state[word])));
    let mut words = [[0u32; MAX_LANES]; 16];
    for offset in 0..count {
        for (lane, &index) in lanes.iter().enumerate() {
            if let Some(message) = messages.get(index) {
                let (chunks, _) = message.block(message.done + offset).as_chunks::<4>();
                for (word, bytes) in words.iter_mut().zip(chunks) {
                    if let Some(value) = word.get_mut(lane) {
                        *value = u32::from_le_bytes(*bytes);
                    }
                }
            }
        }
        compress(&mut state, &words);
    }
    for (lane, &index) in lanes.iter().enumerate().take(L::COUNT) {
        if let Some(message) = messages.get_mut(index) {
            message.state = state.map(|word| word.lane(lane));
            message.done += count;
        }
    }
}

/// The MD5 digest of each message, in order.
///
/// Messages are taken up in order into eight lanes; whenever one ends, the next message takes a
/// freed lane, so lanes stay full however the lengths differ. Eight lanes run as two 128-bit
/// vectors, four as one; a lone message runs alone, through the `md-5` crate when it is the only
/// one (its single-message code is a little faster than a one-lane run here).
pub(crate) fn md5_each(messages: &[&[u8]]) -> Vec<[u8; 16]> {
    if let [only] = messages {
        return vec![Md5::digest(only).into()];
    }
    let mut hashing: Vec<Message<'_>> = messages.iter().map(|bytes| Message::new(bytes)).collect();
    let mut waiting = 0..hashing.len();
    let mut lanes: Vec<usize> = Vec::with_capacity(MAX_LANES);
    loop {
        lanes.extend(waiting.by_ref().take(MAX_LANES - lanes.len()));
        // Run until the first of these messages ends, then refill its lane.
        let count = lanes.iter().filter_map(|&index| hashing.get(index)).map(Message::remaining).min().unwrap_or(0);
        match lanes.len() {
            0 => break,
            1 => run_lanes::<Wrapping<u32>>(&mut hashing, &lanes, count),
            2..=4 => run_lanes::<u32x4>(&mut hashing, &lanes, count),
            _ => run_lanes::<u32x8>(&mut hashing, &lanes, count),
        }
        lanes.retain(|&index| hashing.get(index).is_some_and(|m| m.remaining() > 0));
    }
    hashing.iter().map(Message::digest).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(131) ^ seed.wrapping_mul(7919)) as u8).collect()
    }

    #[test]
    fn each_digest_equals_the_reference_at_every_padding_boundary() {
        // Lengths around the one- and two-block padding cases, and whole blocks.
        let lengths: Vec<usize> = (0..=200).chain([255, 256, 1000, 4096, 51_200]).collect();
        let owned: Vec<Vec<u8>> = lengths.iter().enumerate().map(|(seed, &len)| message(len, seed)).collect();
        let messages: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let digests = md5_each(&messages);
        assert_eq!(digests.len(), messages.len());
        for (bytes, digest) in messages.iter().zip(&digests) {
            assert_eq!(digest[..], Md5::digest(bytes)[..], "message of {} bytes", bytes.len());
        }
    }

    #[test]
    fn any_number_of_messages_of_mixed_lengths() {
        // Every lane count (1–8 and refills), lengths differing so lanes finish at different
        // blocks, and none at all.
        for count in 0..=9 {
            let owned: Vec<Vec<u8>> = (0..count).map(|i| message(37 + i * 300 + (i % 3) * 7000, i)).collect();
            let messages: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            let expected: Vec<Vec<u8>> = messages.iter().map(|m| Md5::digest(m).to_vec()).collect();
            let got: Vec<Vec<u8>> = md5_each(&messages).iter().map(|d| d.to_vec()).collect();
            assert_eq!(got, expected, "{count} messages");
        }
    }

    #[test]
    fn known_answers_from_rfc_1321() {
        let digests = md5_each(&[b"", b"abc", b"message digest"]);
        let hex: Vec<String> = digests.iter().map(hex::encode).collect();
        assert_eq!(
            hex,
            [
                "d41d8cd98f00b204e9800998ecf8427e",
                "900150983cd24fb0d6963f7d28e17f72",
                "f96b697d7cb7938d525a2f31aaf161d0"
            ]
        );
    }
}
