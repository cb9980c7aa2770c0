//! Property tests of the aggregation format: the decoder classifies any input without panicking,
//! and whatever the encoder writes decodes back to what it was given, at exactly the size it
//! predicted.

use bytes::Bytes;
use kinesis_core::aggregation::{
    AggregateBuilder, AggregationError, Decoded, FIXED_OVERHEAD, MAGIC, Tag, UnsealedAggregate, decode, is_aggregated,
    proto,
};
use md5::{Digest, Md5};
use proptest::prelude::*;
use prost::Message;

/// A user record as the tests generate it.
#[derive(Clone, Debug)]
struct Input {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: Vec<u8>,
    tags: Vec<Tag>,
}

fn seal(body: &[u8]) -> Bytes {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(&Md5::digest(body));
    Bytes::from(out)
}

fn partition_key() -> impl Strategy<Value = String> {
    prop_oneof![
        // A few popular keys, so the tables de-duplicate.
        3 => prop::sample::select(vec!["a", "b", "user-1", "ключ", "🔑"]).prop_map(str::to_owned),
        1 => "\\PC{1,40}",
        1 => "[a-z]{120,140}",
    ]
}

fn explicit_hash_key() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        1 => prop::sample::select(vec![0u128, 1, 127, 128, u128::MAX]).prop_map(|k| Some(k.to_string())),
        1 => any::<u128>().prop_map(|k| Some(k.to_string())),
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..200),
        1 => prop::collection::vec(any::<u8>(), 16_370..16_400),
    ]
}

fn tags() -> impl Strategy<Value = Vec<Tag>> {
    prop_oneof![
        6 => Just(Vec::new()),
        1 => prop::collection::vec(
            ("\\PC{0,10}", prop::option::of("\\PC{0,10}")).prop_map(|(key, value)| Tag { key, value }),
            1..4,
        ),
    ]
}

fn record() -> impl Strategy<Value = Input> {
    (partition_key(), explicit_hash_key(), data(), tags()).prop_map(|(partition_key, explicit_hash_key, data, tags)| {
        Input { partition_key, explicit_hash_key, data, tags }
    })
}

fn batch() -> impl Strategy<Value = Vec<Input>> {
    prop::collection::vec(record(), 1..60)
}

/// Encodes a batch, checking the size accounting after every record.
fn encode(batch: &[Input]) -> Bytes {
    let mut builder = AggregateBuilder::new();
    for input in batch {
        let predicted =
            builder.size_with(&input.partition_key, input.explicit_hash_key.as_deref(), input.data.len(), &input.tags);
        builder.add(
            &input.partition_key,
            input.explicit_hash_key.as_deref(),
            Bytes::from(input.data.clone()),
            &input.tags,
        );
        assert_eq!(builder.encoded_len(), predicted);
    }
    let len = builder.encoded_len();
    let encoded = builder.finish();
    assert_eq!(encoded.len(), len);
    encoded
}

/// A valid aggregate to corrupt: at least two records so its body is never trivially short.
fn valid_aggregate() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(record(), 2..10).prop_map(|batch| encode(&batch))
}

/// Checks the invariants of any decoding result for `data`.
fn check_classification(data: &Bytes) -> Result<Decoded, AggregationError> {
    let result = decode(data);
    if !is_aggregated(data) {
        assert_eq!(result, Ok(Decoded::NotAggregated));
    }
    if let Ok(Decoded::Aggregated(records)) = &result {
        for (position, record) in records.iter().enumerate() {
            assert_eq!(record.sub_sequence_number(), position as u64);
            // Infallible once decoded.
            let _ = record.hash_key();
        }
    }
    result
}

/// A message with arbitrary tables and indices, to test index and key validation.
#[derive(Clone, Debug)]
struct RawAggregate {
    partition_keys: Vec<String>,
    explicit_hash_keys: Vec<String>,
    records: Vec<RawRecord>,
}

/// A record's partition-key index, explicit-hash-key index and data, each possibly absent.
type RawRecord = (Option<u64>, Option<u64>, Option<Vec<u8>>);

fn raw_aggregate() -> impl Strategy<Value = RawAggregate> {
    let index = prop_oneof![4 => (0u64..4).prop_map(Some), 1 => any::<u64>().prop_map(Some), 1 => Just(None)];
    let ehk_index = prop_oneof![2 => Just(None), 2 => (0u64..4).prop_map(Some), 1 => any::<u64>().prop_map(Some)];
    let ehk_text = prop_oneof![
        2 => any::<u128>().prop_map(|k| k.to_string()),
        1 => "[0-9]{0,41}",
        1 => "\\PC{0,8}",
    ];
    (
        prop::collection::vec("\\PC{0,8}", 0..4),
        prop::collection::vec(ehk_text, 0..4),
        prop::collection::vec(
            (index, ehk_index, prop::option::weighted(0.9, prop::collection::vec(any::<u8>(), 0..8))),
            0..6,
        ),
    )
        .prop_map(|(partition_keys, explicit_hash_keys, records)| RawAggregate {
            partition_keys,
            explicit_hash_keys,
            records,
        })
}

/// What decoding a `RawAggregate` must give: the first broken record's error, else its records.
fn expected_outcome(raw: &RawAggregate) -> Result<usize, fn(&AggregationError) -> bool> {
    for (pk, ehk, data) in &raw.records {
        let Some(pk) = pk else { return Err(|e| matches!(e, AggregationError::MissingField { .. })) };
        if usize::try_from(*pk).map_or(true, |pk| pk >= raw.partition_keys.len()) {
            return Err(|e| matches!(e, AggregationError::PartitionKeyIndexOutOfRange { .. }));
        }
        if let Some(ehk) = ehk {
            match usize::try_from(*ehk).ok().and_then(|ehk| raw.explicit_hash_keys.get(ehk)) {
                None => return Err(|e| matches!(e, AggregationError::ExplicitHashKeyIndexOutOfRange { .. })),
                Some(text) if text.parse::<u128>().is_err() || (text.len() > 1 && text.starts_with('0')) => {
                    return Err(|e| matches!(e, AggregationError::InvalidExplicitHashKey { .. }));
                }
                Some(_) => {}
            }
        }
        if data.is_none() {
            return Err(|e| matches!(e, AggregationError::MissingField { .. }));
        }
    }
    Ok(raw.records.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_classified(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = check_classification(&Bytes::from(data));
    }

    #[test]
    fn arbitrary_bytes_behind_the_magic_are_classified(tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let data = Bytes::from([MAGIC.as_slice(), &tail].concat());
        let result = check_classification(&data);
        if data.len() <= FIXED_OVERHEAD {
            prop_assert_eq!(result, Ok(Decoded::NotAggregated));
        } else {
            prop_assert!(matches!(result, Err(AggregationError::ChecksumMismatch { .. })), "{:?}", result);
        }
    }

    #[test]
    fn arbitrary_bodies_with_a_valid_digest_are_classified(body in prop::collection::vec(any::<u8>(), 1..300)) {
        let result = check_classification(&seal(&body));
        let classified = !matches!(result, Ok(Decoded::NotAggregated) | Err(AggregationError::ChecksumMismatch { .. }));
        prop_assert!(classified, "{:?}", result);
    }

    #[test]
    fn bit_flips_are_detected(aggregate in valid_aggregate(), position in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut data = aggregate.to_vec();
        let at = position.index(data.len());
        data[at] ^= 1 << bit;
        let result = check_classification(&Bytes::from(data));
        if at < MAGIC.len() {
            prop_assert_eq!(result, Ok(Decoded::NotAggregated));
        } else {
            prop_assert!(matches!(result, Err(AggregationError::ChecksumMismatch { .. })), "{:?}", result);
        }
    }

    #[test]
    fn truncations_are_detected(aggregate in valid_aggregate(), cut in any::<prop::sample::Index>()) {
        let len = cut.index(aggregate.len());
        let result = check_classification(&aggregate.slice(..len));
        if len <= FIXED_OVERHEAD {
            prop_assert_eq!(result, Ok(Decoded::NotAggregated));
        } else {
            prop_assert!(matches!(result, Err(AggregationError::ChecksumMismatch { .. })), "{:?}", result);
        }
    }

    #[test]
    fn resealed_bodies_with_bad_indices_are_classified(raw in raw_aggregate()) {
        let message = proto::AggregatedRecord {
            partition_key_table: raw.partition_keys.clone(),
            explicit_hash_key_table: raw.explicit_hash_keys.clone(),
            records: raw
                .records
                .iter()
                .map(|(pk, ehk, data)| proto::Record {
                    partition_key_index: *pk,
                    explicit_hash_key_index: *ehk,
                    data: data.clone().map(Bytes::from),
                    tags: Vec::new(),
                })
                .collect(),
        };
        let body = message.encode_to_vec();
        let data = seal(&body);
        let result = check_classification(&data);
        if data.len() <= FIXED_OVERHEAD {
            prop_assert_eq!(result, Ok(Decoded::NotAggregated));
            return Ok(());
        }
        match (expected_outcome(&raw), result) {
            (Ok(count), Ok(Decoded::Aggregated(records))) => prop_assert_eq!(records.len(), count),
            (Err(expected), Err(error)) => prop_assert!(expected(&error), "unexpected {:?}", error),
            (expected, actual) => prop_assert!(false, "expected {:?}, got {:?}", expected.map_err(|_| "error"), actual),
        }
    }

    #[test]
    fn batches_round_trip(batch in batch()) {
        let encoded = encode(&batch);
        let Ok(Decoded::Aggregated(records)) = decode(&encoded) else {
            return Err(TestCaseError::fail("a built aggregate must decode"));
        };
        prop_assert_eq!(records.len(), batch.len());
        for (position, (record, input)) in records.iter().zip(&batch).enumerate() {
            prop_assert_eq!(record.partition_key(), input.partition_key.as_str());
            prop_assert_eq!(record.explicit_hash_key(), input.explicit_hash_key.as_deref());
            prop_assert_eq!(&record.data()[..], input.data.as_slice());
            prop_assert_eq!(record.tags(), input.tags.as_slice());
            prop_assert_eq!(record.sub_sequence_number(), position as u64);
        }
        // The body parses with prost into the same tables and records.
        let message = proto::AggregatedRecord::decode(&encoded[MAGIC.len()..encoded.len() - 16]).expect("valid body");
        prop_assert_eq!(encoded.len(), FIXED_OVERHEAD + message.encoded_len());
        let mut distinct: Vec<&str> = batch.iter().map(|i| i.partition_key.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(message.partition_key_table.len(), distinct.len(), "partition keys are stored once each");
    }

    #[test]
    fn try_add_never_exceeds_the_limit(batch in batch(), limit in 20usize..2_000) {
        let mut builder = AggregateBuilder::new();
        for input in &batch {
            let before = builder.encoded_len();
            let data = Bytes::from(input.data.clone());
            match builder.try_add(&input.partition_key, input.explicit_hash_key.as_deref(), data, &input.tags, limit) {
                Ok(_) => prop_assert!(builder.encoded_len() <= limit),
                Err(back) => {
                    prop_assert_eq!(&back[..], input.data.as_slice());
                    prop_assert_eq!(builder.encoded_len(), before);
                }
            }
        }
        let len = builder.encoded_len();
        prop_assert!(len <= limit.max(FIXED_OVERHEAD));
        prop_assert_eq!(builder.take().len(), len);
        prop_assert!(builder.is_empty());
    }
}

proptest! {
    // Fewer cases: each seals up to ten aggregates, and the digest runs unoptimized in tests.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn aggregates_sealed_together_equal_each_finished_alone(batches in prop::collection::vec(batch(), 0..11)) {
        // Up to eight digests run side by side, lanes refilled as messages of different lengths
        // end: every aggregate must come out byte for byte as `finish` makes it.
        let mut unsealed = Vec::new();
        let mut predicted = Vec::new();
        for batch in &batches {
            let mut builder = AggregateBuilder::new();
            for input in batch {
                builder.add(&input.partition_key, input.explicit_hash_key.as_deref(), Bytes::from(input.data.clone()), &input.tags);
            }
            let aggregate = builder.take_unsealed_with_data_ranges(&mut Vec::new());
            predicted.push(aggregate.sealed_len());
            unsealed.push(aggregate);
        }
        let sealed = UnsealedAggregate::seal_all(unsealed);
        prop_assert_eq!(sealed.len(), batches.len());
        for ((aggregate, batch), len) in sealed.iter().zip(&batches).zip(predicted) {
            prop_assert_eq!(aggregate, &encode(batch));
            prop_assert_eq!(aggregate.len(), len);
        }
    }
}
