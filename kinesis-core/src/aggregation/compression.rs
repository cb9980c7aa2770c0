//! Opt-in compression of aggregated records.
//!
//! The KPL format has no compression field, so a compressed aggregate gets its own envelope:
//!
//! ```text
//! F3 89 9A C3          COMPRESSED_MAGIC (the KPL magic with its last byte + 1)
//! 01                   codec: 1 = zlib (RFC 1950, deflate with an Adler-32 trailer)
//! <zlib stream>        the complete KPL aggregated record (magic + protobuf + MD5)
//! ```
//!
//! [`decode_record`] undoes it transparently. A consumer that does not know the envelope (the
//! Java KCL, Lambda's deaggregation modules, Firehose) sees one plain record per Kinesis record
//! whose data starts with `F3 89 9A C3 01`; it can inflate the rest with any zlib library and
//! de-aggregate the result with any KPL deaggregator.

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

use super::{AggregationError, DecodeLimits, Decoded, decode_with_limits};

/// The four bytes a compressed aggregate starts with.
pub const COMPRESSED_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC3];
/// Codec byte for zlib.
pub const CODEC_ZLIB: u8 = 1;

/// Compresses an encoded aggregate (as produced by
/// [`AggregateBuilder::finish`](super::AggregateBuilder::finish)) at zlib `level` (0–9).
pub fn compress(aggregate: &[u8], level: u32) -> Bytes {
    let mut out = Vec::with_capacity(aggregate.len() / 2 + 16);
    out.extend_from_slice(&COMPRESSED_MAGIC);
    out.push(CODEC_ZLIB);
    let mut encoder = ZlibEncoder::new(out, Compression::new(level.min(9)));
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(aggregate);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// Whether `data` carries the compressed-aggregate envelope.
pub fn is_compressed(data: &[u8]) -> bool {
    data.len() > COMPRESSED_MAGIC.len() + 1 && data.starts_with(&COMPRESSED_MAGIC)
}

/// Inflates a compressed aggregate back to the KPL aggregated record it wraps, refusing one that
/// inflates beyond `max_inflated_bytes` ([`AggregationError::OverLimit`]; the inflating stops
/// there, so a decompression bomb costs at most that much memory).
pub fn decompress(data: &[u8], max_inflated_bytes: usize) -> Result<Bytes, AggregationError> {
    let body =
        data.strip_prefix(&COMPRESSED_MAGIC).ok_or(AggregationError::Compression { reason: "missing envelope" })?;
    let (&codec, stream) = body.split_first().ok_or(AggregationError::Compression { reason: "missing codec" })?;
    if codec != CODEC_ZLIB {
        return Err(AggregationError::Compression { reason: "unknown codec" });
    }
    let mut inflated = Vec::new();
    let mut decoder = ZlibDecoder::new(stream).take(max_inflated_bytes as u64 + 1);
    decoder.read_to_end(&mut inflated).map_err(|_| AggregationError::Compression { reason: "corrupt zlib stream" })?;
    if inflated.len() > max_inflated_bytes {
        return Err(AggregationError::OverLimit { what: "inflated bytes", limit: max_inflated_bytes });
    }
    Ok(Bytes::from(inflated))
}

/// Decodes a record's data whether it is plain, a KPL aggregate, or a compressed aggregate.
///
/// This is what a consumer calls on every record: plain records come back as
/// [`Decoded::NotAggregated`]; compressed aggregates are inflated and expanded like any other.
/// The [`DecodeLimits::default`] apply; see [`decode_record_with_limits`].
pub fn decode_record(data: &Bytes) -> Result<Decoded, AggregationError> {
    decode_record_with_limits(data, &DecodeLimits::default())
}

/// [`decode_record`] with explicit limits: a consumer passes its stream's maximum record size.
pub fn decode_record_with_limits(data: &Bytes, limits: &DecodeLimits) -> Result<Decoded, AggregationError> {
    if is_compressed(data) {
        let inflated = decompress(data, limits.max_inflated_bytes)?;
        match decode_with_limits(&inflated, limits)? {
            Decoded::NotAggregated => {
                Err(AggregationError::Compression { reason: "inflated payload is not an aggregate" })
            }
            aggregated => Ok(aggregated),
        }
    } else {
        decode_with_limits(data, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregation::AggregateBuilder;

    #[test]
    fn round_trip_and_ratio() {
        let mut builder = AggregateBuilder::new();
        for i in 0..200 {
            builder.add(
                &format!("key-{}", i % 10),
                None,
                Bytes::from(format!("{{\"event\":\"click\",\"n\":{i},\"page\":\"/home\"}}")),
                &[],
            );
        }
        let plain = builder.finish();
        let packed = compress(&plain, 6);
        assert!(is_compressed(&packed));
        assert!(packed.len() * 3 < plain.len(), "repetitive JSON compresses well: {} -> {}", plain.len(), packed.len());
        let Decoded::Aggregated(records) = decode_record(&packed).expect("decodes") else { panic!("aggregated") };
        assert_eq!(records.len(), 200);
        assert_eq!(&records[7].data()[..], b"{\"event\":\"click\",\"n\":7,\"page\":\"/home\"}");
        assert_eq!(records[7].sub_sequence_number(), 7);
        // Plain records and plain aggregates go through unchanged.
        assert_eq!(decode_record(&Bytes::from_static(b"hello")), Ok(Decoded::NotAggregated));
        assert!(matches!(decode_record(&plain), Ok(Decoded::Aggregated(r)) if r.len() == 200));
    }

    #[test]
    fn corrupt_envelopes_are_errors_not_panics() {
        let mut bad = COMPRESSED_MAGIC.to_vec();
        bad.extend_from_slice(&[CODEC_ZLIB, 1, 2, 3, 4]);
        assert!(matches!(decode_record(&Bytes::from(bad)), Err(AggregationError::Compression { .. })));
        let mut unknown = COMPRESSED_MAGIC.to_vec();
        unknown.extend_from_slice(&[9, 0, 0]);
        assert!(matches!(
            decode_record(&Bytes::from(unknown)),
            Err(AggregationError::Compression { reason: "unknown codec" })
        ));
        let not_aggregate = compress(b"just some bytes", 6);
        assert!(decode_record(&not_aggregate).is_err());
        let err = decode_record(&not_aggregate).expect_err("not an aggregate");
        assert!(err.kcl_passes_through());
    }
}
