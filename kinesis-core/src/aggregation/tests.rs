use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use super::*;
use crate::hash_key::HashKey;

/// Wraps a protobuf body into an aggregate: magic, body, MD5 of the body.
fn seal(body: &[u8]) -> Bytes {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(&Md5::digest(body));
    Bytes::from(out)
}

/// The protobuf body of an aggregate.
fn body(aggregate: &[u8]) -> &[u8] {
    &aggregate[MAGIC.len()..aggregate.len() - DIGEST_LEN]
}

fn aggregated(data: &Bytes) -> Vec<SubRecord> {
    match decode(data) {
        Ok(Decoded::Aggregated(records)) => records,
        other => panic!("expected an aggregate, got {other:?}"),
    }
}

/// A record for the table-driven tests: (pk, ehk, data, tags).
type Input = (String, Option<String>, Bytes, Vec<Tag>);

/// Builds the same aggregate with prost's encoder, de-duplicating keys in first-seen order.
fn prost_reference(inputs: &[Input]) -> Vec<u8> {
    let mut message = proto::AggregatedRecord::default();
    for (pk, ehk, data, tags) in inputs {
        let pk_index = match message.partition_key_table.iter().position(|k| k == pk) {
            Some(i) => i,
            None => {
                message.partition_key_table.push(pk.clone());
                message.partition_key_table.len() - 1
            }
        };
        let ehk_index = ehk.as_ref().map(|ehk| match message.explicit_hash_key_table.iter().position(|k| k == ehk) {
            Some(i) => i as u64,
            None => {
                message.explicit_hash_key_table.push(ehk.clone());
                (message.explicit_hash_key_table.len() - 1) as u64
            }
        });
        message.records.push(proto::Record {
            partition_key_index: Some(pk_index as u64),
            explicit_hash_key_index: ehk_index,
            data: Some(data.clone()),
            tags: tags.iter().map(|t| proto::Tag { key: Some(t.key.clone()), value: t.value.clone() }).collect(),
        });
    }
    message.encode_to_vec()
}

/// Adds every input, checking `size_with` and `encoded_len` against each other at every step.
fn build(inputs: &[Input]) -> Bytes {
    let mut builder = AggregateBuilder::new();
    assert_eq!(builder.encoded_len(), FIXED_OVERHEAD);
    for (n, (pk, ehk, data, tags)) in inputs.iter().enumerate() {
        let predicted = builder.size_with(pk, ehk.as_deref(), data.len(), tags);
        let sub = builder.add(pk, ehk.as_deref(), data.clone(), tags);
        assert_eq!(sub, n as u64);
        assert_eq!(builder.encoded_len(), predicted, "size_with must predict encoded_len (record {n})");
        assert_eq!(builder.len(), n + 1);
    }
    let expected_len = builder.encoded_len();
    let encoded = builder.finish();
    assert_eq!(encoded.len(), expected_len, "encoded_len must be exact");
    encoded
}

fn input(pk: &str, ehk: Option<&str>, data: impl Into<Bytes>) -> Input {
    (pk.to_owned(), ehk.map(str::to_owned), data.into(), Vec::new())
}

#[test]
fn kpl_worked_vector_is_byte_exact() {
    let encoded = build(&[input("pk1", None, &b"x"[..]), input("pk2", None, &b"yz"[..])]);
    let expected = "f3899ac2\
                    0a03706b310a03706b321a0508001a01781a0608011a02797a\
                    cf235e4e46e0c5a42b0efef034c3929d";
    assert_eq!(hex::encode(&encoded), expected);
    assert_eq!(encoded.len(), 45);

    let records = aggregated(&encoded);
    assert_eq!(records.len(), 2);
    assert_eq!((records[0].partition_key(), &records[0].data()[..]), ("pk1", &b"x"[..]));
    assert_eq!((records[1].partition_key(), &records[1].data()[..]), ("pk2", &b"yz"[..]));
    assert_eq!(records[1].sub_sequence_number(), 1);
    assert_eq!(records[0].explicit_hash_key(), None);
}

#[test]
fn constants() {
    assert_eq!(MAGIC, [0xF3, 0x89, 0x9A, 0xC2]);
    assert_eq!(FIXED_OVERHEAD, 20);
    assert_eq!(DIGEST_LEN, 16);
}

#[test]
fn varint_lengths_at_boundaries() {
    for (value, len) in [
        (0u64, 1usize),
        (1, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (2_097_151, 3),
        (2_097_152, 4),
        (u64::from(u32::MAX), 5),
        (u64::MAX >> 1, 9),
        (u64::MAX, 10),
    ] {
        assert_eq!(varint_len(value), len, "varint_len({value})");
        assert_eq!(prost::encoding::encoded_len_varint(value), len);
    }
}

#[test]
fn hand_encoder_matches_prost() {
    let big = Bytes::from(vec![0xAB; 20_000]);
    let cases: Vec<Vec<Input>> = vec![
        vec![input("only", None, &b"one record"[..])],
        vec![input("a", None, &b"1"[..]), input("b", None, &b"2"[..]), input("a", None, &b"3"[..])],
        vec![
            input("a", Some("0"), &b""[..]),
            input("b", None, &b"no ehk"[..]),
            input("c", Some("340282366920938463463374607431768211455"), &b"max"[..]),
            input("a", Some("0"), &b"same ehk"[..]),
        ],
        vec![input("ключ", None, big.clone()), input("🔑", Some("42"), &b"x"[..])],
        vec![
            ("t".into(), None, Bytes::from_static(b"tagged"), vec![Tag::new("k", "v"), Tag::key_only("flag")]),
            ("t".into(), None, Bytes::from_static(b"untagged"), vec![]),
            ("u".into(), Some("7".into()), Bytes::new(), vec![Tag::new("", ""), Tag::new("long", "é".repeat(100))]),
        ],
    ];
    for inputs in &cases {
        let encoded = build(inputs);
        assert_eq!(body(&encoded), prost_reference(inputs).as_slice());
        assert_eq!(&encoded[..4], &MAGIC);
        assert_eq!(&encoded[encoded.len() - 16..], Md5::digest(body(&encoded)).as_slice());
    }
}

#[test]
fn size_accounting_is_exact_across_varint_boundaries() {
    // Data lengths around each varint boundary, for the data length and for the record length.
    let mut lengths = vec![0usize, 1, 100, 117, 118, 119, 120, 121, 122, 125, 126, 127, 128, 129, 255, 256];
    lengths.extend([16_360, 16_370, 16_371, 16_372, 16_373, 16_380, 16_383, 16_384, 16_385, 2_097_140, 2_097_152]);
    let mut inputs = Vec::new();
    for (i, len) in lengths.iter().enumerate() {
        let pk = format!("key-{}", i % 5);
        let ehk = (i % 3 == 0).then(|| (i * 1_000_003).to_string());
        inputs.push(input(&pk, ehk.as_deref(), vec![i as u8; *len]));
    }
    // Many distinct keys so table indices cross 127 (two-byte varints) and reuse old ones.
    for i in 0..400 {
        let pk = format!("pk-{}", i % 300);
        let ehk = (i % 2 == 0).then(|| (i % 260).to_string());
        inputs.push(input(&pk, ehk.as_deref(), vec![0x5A; i % 130]));
    }
    // Partition keys whose own lengths cross 127.
    for len in [126, 127, 128, 129, 256] {
        inputs.push(input(&"p".repeat(len), None, &b"d"[..]));
    }
    let encoded = build(&inputs);
    assert_eq!(body(&encoded), prost_reference(&inputs).as_slice());

    let records = aggregated(&encoded);
    assert_eq!(records.len(), inputs.len());
    for (record, (pk, ehk, data, _)) in records.iter().zip(&inputs) {
        assert_eq!(record.partition_key(), pk);
        assert_eq!(record.explicit_hash_key(), ehk.as_deref());
        assert_eq!(record.data(), data);
    }
}

#[test]
fn keys_are_deduplicated() {
    let inputs: Vec<Input> = (0..10).map(|i| input(["x", "y"][i % 2], Some("5"), vec![i as u8])).collect();
    let encoded = build(&inputs);
    let message = proto::AggregatedRecord::decode(body(&encoded)).expect("valid body");
    assert_eq!(message.partition_key_table, ["x", "y"]);
    assert_eq!(message.explicit_hash_key_table, ["5"]);
    let indices: Vec<_> = message.records.iter().map(|r| r.partition_key_index).collect();
    assert_eq!(indices, (0..10).map(|i| Some(i % 2)).collect::<Vec<_>>());
    assert!(message.records.iter().all(|r| r.explicit_hash_key_index == Some(0)));

    // A repeated key costs only its index.
    let mut builder = AggregateBuilder::new();
    builder.add("repeated", None, Bytes::from_static(b"abc"), &[]);
    let one = builder.encoded_len();
    assert_eq!(builder.size_with("repeated", None, 3, &[]) - one, 1 + 1 + 1 + 1 + 1 + 1 + 3);
    assert_eq!(builder.size_with("new key!", None, 3, &[]) - one, (1 + 1 + 8) + (1 + 1 + 1 + 1 + 1 + 1 + 3));
}

#[test]
fn tags_round_trip() {
    let tags = vec![Tag::new("source", "test"), Tag::key_only("flag"), Tag::new("unicode", "✓")];
    let mut builder = AggregateBuilder::new();
    builder.add("a", None, Bytes::from_static(b"1"), &tags);
    builder.add("b", None, Bytes::from_static(b"2"), &[]);
    builder.add("c", None, Bytes::from_static(b"3"), &tags[1..]);
    let records = aggregated(&builder.finish());
    assert_eq!(records[0].tags(), tags.as_slice());
    assert!(records[1].tags().is_empty());
    assert_eq!(records[2].tags(), &tags[1..]);
}

#[test]
fn try_add_respects_the_limit_and_hands_data_back() {
    let mut builder = AggregateBuilder::new();
    let limit = 100;
    let mut accepted = 0;
    loop {
        let before = builder.encoded_len();
        let data = Bytes::from_static(b"0123456789");
        let predicted = builder.size_with("k", None, data.len(), &[]);
        match builder.try_add("k", None, data.clone(), &[], limit) {
            Ok(sub) => {
                assert_eq!(sub, accepted);
                accepted += 1;
                assert!(predicted <= limit);
                assert_eq!(builder.encoded_len(), predicted);
            }
            Err(back) => {
                assert_eq!(back, data);
                assert!(predicted > limit);
                assert_eq!(builder.encoded_len(), before, "a refused record leaves the builder unchanged");
                break;
            }
        }
    }
    // 20 overhead + 3 for the key + 16 per record (tag, length, 2 for the index, 12 for the data).
    assert_eq!(accepted, 4);
    assert_eq!(builder.finish().len(), 20 + 3 + 4 * 16);
}

#[test]
fn take_empties_the_builder_for_reuse() {
    let mut builder = AggregateBuilder::new();
    builder.add("pk1", None, Bytes::from_static(b"old"), &[Tag::key_only("t")]);
    builder.add("pk9", Some("9"), Bytes::from_static(b"old"), &[]);
    let first = builder.take();
    assert_eq!(aggregated(&first).len(), 2);
    assert!(builder.is_empty());
    assert_eq!(builder.encoded_len(), FIXED_OVERHEAD);

    builder.add("pk1", None, Bytes::from_static(b"x"), &[]);
    builder.add("pk2", None, Bytes::from_static(b"yz"), &[]);
    let second = builder.take();
    assert_eq!(&second[4..29], hex::decode("0a03706b310a03706b321a0508001a01781a0608011a02797a").expect("hex"));
    assert_eq!(second.len(), 45);
}

#[test]
fn empty_and_recordless_aggregates() {
    // No records at all: 20 bytes, which consumers read as a plain record.
    let empty = AggregateBuilder::new().finish();
    assert_eq!(empty.len(), FIXED_OVERHEAD);
    assert_eq!(decode(&empty), Ok(Decoded::NotAggregated));
    // Tables but no records: a valid aggregate of nothing.
    let tables_only = seal(&hex::decode("0a0161").expect("hex"));
    assert_eq!(decode(&tables_only), Ok(Decoded::Aggregated(Vec::new())));
}

#[test]
fn decoding_is_zero_copy() {
    let mut builder = AggregateBuilder::new();
    builder.add("a", None, Bytes::from(vec![1u8; 300]), &[]);
    builder.add("a", None, Bytes::from(vec![2u8; 10]), &[]);
    let encoded = builder.finish();
    let range = encoded.as_ptr_range();
    for record in aggregated(&encoded) {
        let data = record.data().as_ptr_range();
        assert!(range.start <= data.start && data.end <= range.end, "data must point into the input");
    }
}

#[test]
fn hash_key_uses_the_explicit_hash_key_when_present() {
    let mut builder = AggregateBuilder::new();
    builder.add("abc", None, Bytes::new(), &[]);
    builder.add("abc", Some("12345"), Bytes::new(), &[]);
    let records = aggregated(&builder.finish());
    assert_eq!(records[0].hash_key(), HashKey::new(0x900150983cd24fb0d6963f7d28e17f72));
    assert_eq!(records[1].hash_key(), HashKey::new(12345));
    assert_eq!(records[1].explicit_hash_key(), Some("12345"));
    assert_eq!(records[0].shared_partition_key(), records[1].shared_partition_key());
}

#[test]
fn plain_records_are_not_aggregated() {
    let mut magic_and_16 = MAGIC.to_vec();
    magic_and_16.extend([0u8; 16]);
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xF3],
        vec![0xF3, 0x89, 0x9A],
        MAGIC.to_vec(),
        MAGIC[..3].iter().copied().chain([0xC3; 40]).collect(),
        b"just some ordinary record data, longer than twenty bytes".to_vec(),
        MAGIC.iter().copied().chain([7u8; 15]).collect(),
        magic_and_16,
    ];
    for data in cases {
        assert!(!is_aggregated(&data));
        assert_eq!(decode(&Bytes::from(data.clone())), Ok(Decoded::NotAggregated), "{data:02x?}");
    }
}

#[test]
fn corrupt_aggregates_are_classified() {
    let good = build(&[input("pk1", Some("1"), &b"x"[..]), input("pk2", None, &b"yz"[..])]);

    // A flipped bit in the body breaks the checksum.
    let mut flipped = good.to_vec();
    flipped[10] ^= 0x01;
    let err = decode(&Bytes::from(flipped)).expect_err("checksum");
    assert!(matches!(err, AggregationError::ChecksumMismatch { .. }), "{err}");
    assert!(err.kcl_passes_through());

    // A truncated record: the checksum no longer matches.
    let truncated = good.slice(..good.len() - 1);
    assert!(matches!(decode(&truncated), Err(AggregationError::ChecksumMismatch { .. })));

    /// (name, protobuf body, expected error, whether the KCL passes the raw record through)
    type Case = (&'static str, Vec<u8>, fn(&AggregationError) -> bool, bool);
    let cases: Vec<Case> = vec![
        // Garbage behind the magic, with a correct digest: not protobuf.
        ("garbage", vec![0xFF; 8], |e| matches!(e, AggregationError::Protobuf(_)), true),
        // A length-delimited field running past the end.
        ("overrun", hex::decode("0a0570").expect("hex"), |e| matches!(e, AggregationError::Protobuf(_)), true),
        // Invalid UTF-8 in the partition-key table.
        ("utf8", hex::decode("0a01ff").expect("hex"), |e| matches!(e, AggregationError::Protobuf(_)), true),
        // Record without partition_key_index.
        (
            "no pk index",
            hex::decode("0a0161" /* pk "a" */)
                .expect("hex")
                .into_iter()
                .chain([0x1A, 0x03, 0x1A, 0x01, 0x78])
                .collect(),
            |e| matches!(e, AggregationError::MissingField { record: 0, field: "partition_key_index" }),
            true,
        ),
        // Record without data.
        (
            "no data",
            vec![0x0A, 0x01, 0x61, 0x1A, 0x02, 0x08, 0x00],
            |e| matches!(e, AggregationError::MissingField { record: 0, field: "data" }),
            true,
        ),
        // Tag without key.
        (
            "no tag key",
            vec![0x0A, 0x01, 0x61, 0x1A, 0x09, 0x08, 0x00, 0x1A, 0x01, 0x78, 0x22, 0x02, 0x12, 0x00],
            |e| matches!(e, AggregationError::MissingField { record: 0, field: "tags.key" }),
            true,
        ),
        // Partition-key index past the table.
        (
            "pk index",
            vec![0x0A, 0x01, 0x61, 0x1A, 0x05, 0x08, 0x01, 0x1A, 0x01, 0x78],
            |e| matches!(e, AggregationError::PartitionKeyIndexOutOfRange { record: 0, index: 1, table_len: 1 }),
            false,
        ),
        // Huge partition-key index (does not fit usize on 32-bit, never panics anywhere).
        (
            "huge pk index",
            [vec![0x0A, 0x01, 0x61, 0x1A, 0x0E, 0x08], vec![0xFF; 9], vec![0x01, 0x1A, 0x01, 0x78]].concat(),
            |e| matches!(e, AggregationError::PartitionKeyIndexOutOfRange { index: u64::MAX, .. }),
            false,
        ),
        // Explicit-hash-key index with an empty table.
        (
            "ehk index",
            vec![0x0A, 0x01, 0x61, 0x1A, 0x07, 0x08, 0x00, 0x10, 0x00, 0x1A, 0x01, 0x78],
            |e| matches!(e, AggregationError::ExplicitHashKeyIndexOutOfRange { record: 0, index: 0, table_len: 0 }),
            false,
        ),
        // Explicit hash key that is not a number.
        (
            "bad ehk",
            vec![0x0A, 0x01, 0x61, 0x12, 0x01, 0x78, 0x1A, 0x07, 0x08, 0x00, 0x10, 0x00, 0x1A, 0x01, 0x78],
            |e| matches!(e, AggregationError::InvalidExplicitHashKey { record: 0, .. }),
            false,
        ),
    ];
    for (name, body, expected, passes_through) in cases {
        let err = decode(&seal(&body)).expect_err(name);
        assert!(expected(&err), "{name}: unexpected {err:?}");
        assert_eq!(err.kcl_passes_through(), passes_through, "{name}");
        assert!(!err.to_string().is_empty());
    }

    // The second record is the broken one: its position is reported.
    let body =
        vec![0x0A, 0x01, 0x61, 0x1A, 0x05, 0x08, 0x00, 0x1A, 0x01, 0x78, 0x1A, 0x05, 0x08, 0x03, 0x1A, 0x01, 0x78];
    assert!(matches!(
        decode(&seal(&body)),
        Err(AggregationError::PartitionKeyIndexOutOfRange { record: 1, index: 3, table_len: 1 })
    ));
}

#[test]
fn unused_invalid_explicit_hash_keys_are_ignored() {
    // The table holds a bad key no record refers to.
    let body = vec![0x0A, 0x01, 0x61, 0x12, 0x01, 0x78, 0x1A, 0x05, 0x08, 0x00, 0x1A, 0x01, 0x78];
    let records = aggregated(&seal(&body));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].explicit_hash_key(), None);
}

#[test]
fn unknown_fields_are_skipped() {
    // Field 15 (varint) in the aggregate and field 9 (len) in a record: what a newer writer might add.
    let body = vec![0x78, 0x01, 0x0A, 0x01, 0x61, 0x1A, 0x08, 0x4A, 0x01, 0x00, 0x08, 0x00, 0x1A, 0x01, 0x78];
    let records = aggregated(&seal(&body));
    assert_eq!((records[0].partition_key(), &records[0].data()[..]), ("a", &b"x"[..]));
}

#[test]
fn data_ranges_point_at_each_records_data() {
    let mut builder = AggregateBuilder::new();
    let inputs: [&[u8]; 3] = [b"x", b"", b"yz"];
    for (n, data) in inputs.iter().enumerate() {
        builder.add(&format!("pk{n}"), (n == 2).then_some("42"), Bytes::copy_from_slice(data), &[]);
    }
    let mut ranges = Vec::new();
    let encoded = builder.take_with_data_ranges(&mut ranges);
    assert!(builder.is_empty());
    assert_eq!(ranges.len(), 3);
    for (range, data) in ranges.iter().zip(inputs) {
        assert_eq!(&encoded[range.clone()], data);
    }
    assert_eq!(aggregated(&encoded).len(), 3);
}

#[test]
fn the_last_partition_key_range_stays_valid_as_records_are_added() {
    let mut builder = AggregateBuilder::new();
    assert_eq!(builder.last_partition_key_range(), None);
    let mut ranges = Vec::new();
    for key in ["first", "second", "first", "third"] {
        builder.add(key, (key == "third").then_some("7"), Bytes::from_static(b"data"), &[]);
        ranges.push((key, builder.last_partition_key_range().expect("a record was added")));
    }
    let encoded = builder.finish();
    for (key, range) in ranges {
        assert_eq!(&encoded[range], key.as_bytes());
    }
}

/// An aggregate body of `n` minimal user records (key index 0, empty data) under one key: six
/// bytes each, the smallest a user record can be.
fn minimal_records_body(n: usize) -> Vec<u8> {
    let mut body = vec![0x0a, 0x01, b'k'];
    body.reserve(n * 6);
    for _ in 0..n {
        body.extend_from_slice(&[0x1a, 0x04, 0x08, 0x00, 0x1a, 0x00]);
    }
    body
}

#[test]
fn an_aggregate_of_too_many_user_records_is_refused_before_it_is_expanded() {
    let limits = DecodeLimits { max_user_records: 1000, ..DecodeLimits::default() };
    let at_limit = seal(&minimal_records_body(1000));
    match decode_with_limits(&at_limit, &limits) {
        Ok(Decoded::Aggregated(records)) => assert_eq!(records.len(), 1000),
        other => panic!("{other:?}"),
    }
    let over = seal(&minimal_records_body(1001));
    let err = decode_with_limits(&over, &limits).expect_err("over the limit");
    assert_eq!(err, AggregationError::OverLimit { what: "user records", limit: 1000 });
    assert!(!err.kcl_passes_through(), "not delivered as a plain record either");
    assert!(matches!(decode(&seal(&minimal_records_body(300_000))), Err(AggregationError::OverLimit { .. })));
}

#[test]
fn a_compressed_aggregate_inflates_at_most_to_the_limit() {
    // 12 MiB of minimal records compress to a few kilobytes.
    let inflated = seal(&minimal_records_body(2 * 1024 * 1024));
    let bomb = compression::compress(&inflated, 9);
    assert!(bomb.len() < inflated.len() / 100, "{} bytes compressed", bomb.len());
    let small = DecodeLimits { max_inflated_bytes: 1024 * 1024, max_user_records: usize::MAX };
    let err = decode_record_with_limits(&bomb, &small).expect_err("inflates past 1 MiB");
    assert_eq!(err, AggregationError::OverLimit { what: "inflated bytes", limit: 1024 * 1024 });
    assert!(!err.kcl_passes_through());
    assert!(matches!(decode_record(&bomb), Err(AggregationError::OverLimit { .. })), "10 MiB by default");
    // Within both limits it decodes.
    let roomy = DecodeLimits { max_inflated_bytes: 16 * 1024 * 1024, max_user_records: usize::MAX };
    match decode_record_with_limits(&bomb, &roomy) {
        Ok(Decoded::Aggregated(records)) => assert_eq!(records.len(), 2 * 1024 * 1024),
        other => panic!("{other:?}"),
    }
}
