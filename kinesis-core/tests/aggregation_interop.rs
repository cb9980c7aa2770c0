//! Interop with the reference aggregation library, Python `aws-kinesis-agg`, in both directions.
//!
//! * Fixed vectors (`tests/vectors/python_aggregator.json`, written once by
//!   `tests/py/gen_vectors.py` with `RecordAggregator`) are decoded here with no Python needed, and
//!   our encoder must reproduce them byte for byte.
//! * With `KINESIS_AGG_PYTHON` pointing at a Python that has `aws-kinesis-agg` installed, random
//!   batches go both ways through `tests/py/agg_peer.py`: Rust aggregates and Python's
//!   `deaggregate_records` expands; Python's `RecordAggregator` aggregates and Rust decodes.
//!   Set `KINESIS_AGG_SEED` to replay a run; without the variable the test is skipped (or fails
//!   when `KINESIS_TEST_REQUIRE_PEERS` is set).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use kinesis_core::aggregation::{AggregateBuilder, Decoded, SubRecord, decode};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A user record as exchanged with Python.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
struct UserRecord {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data_hex: String,
}

impl UserRecord {
    fn data(&self) -> Bytes {
        Bytes::from(hex::decode(&self.data_hex).expect("hex data"))
    }
}

/// One aggregate written by Python's `RecordAggregator`.
#[derive(Debug, Deserialize)]
struct PythonAggregate {
    /// The outer record's partition key Python chose.
    partition_key: String,
    /// The outer record's explicit hash key Python chose.
    explicit_hash_key: Option<String>,
    /// How many user records it holds.
    records: usize,
    /// What Python's `get_size_bytes()` said (vectors only).
    #[serde(default)]
    reported_size: Option<usize>,
    data_hex: String,
}

#[derive(Debug, Deserialize)]
struct VectorFile {
    library: String,
    cases: Vec<VectorCase>,
}

#[derive(Debug, Deserialize)]
struct VectorCase {
    name: String,
    max_size: Option<usize>,
    input: Vec<UserRecord>,
    aggregates: Vec<PythonAggregate>,
}

fn vectors() -> VectorFile {
    serde_json::from_str(include_str!("vectors/python_aggregator.json")).expect("valid vector file")
}

fn expand(data: &Bytes, context: &str) -> Vec<SubRecord> {
    match decode(data) {
        Ok(Decoded::Aggregated(records)) => records,
        other => panic!("{context}: expected an aggregate, got {other:?}"),
    }
}

fn assert_same_records(context: &str, decoded: &[SubRecord], expected: &[UserRecord]) {
    assert_eq!(decoded.len(), expected.len(), "{context}: record count");
    for (n, (record, input)) in decoded.iter().zip(expected).enumerate() {
        assert_eq!(record.partition_key(), input.partition_key, "{context}: record {n} partition key");
        assert_eq!(record.explicit_hash_key(), input.explicit_hash_key.as_deref(), "{context}: record {n} EHK");
        assert_eq!(hex::encode(record.data()), input.data_hex, "{context}: record {n} data");
        assert_eq!(record.sub_sequence_number(), n as u64, "{context}: record {n} sub-sequence number");
    }
}

/// Encodes records with our builder.
fn encode(records: &[UserRecord]) -> Bytes {
    let mut builder = AggregateBuilder::new();
    for r in records {
        builder.add(&r.partition_key, r.explicit_hash_key.as_deref(), r.data(), &[]);
    }
    builder.finish()
}

/// Checks Python's aggregates of `input`: they decode to the input records in order, carry the
/// first record's keys outside, and our encoder writes the very same bytes for the same records.
fn check_python_aggregates(
    context: &str,
    input: &[UserRecord],
    aggregates: &[PythonAggregate],
    max_size: Option<usize>,
) {
    let mut rest = input;
    for (a, aggregate) in aggregates.iter().enumerate() {
        let context = format!("{context}, aggregate {a}");
        assert!(aggregate.records <= rest.len(), "{context}: more records than were sent");
        let (mine, tail) = rest.split_at(aggregate.records);
        rest = tail;
        let data = Bytes::from(hex::decode(&aggregate.data_hex).expect("hex aggregate"));

        assert_same_records(&context, &expand(&data, &context), mine);
        assert_eq!(aggregate.partition_key, mine[0].partition_key, "{context}: outer PK is the first record's");
        assert_eq!(
            aggregate.explicit_hash_key, mine[0].explicit_hash_key,
            "{context}: outer EHK is the first record's"
        );
        assert!(data.len() <= max_size.unwrap_or(1 << 20), "{context}: Python exceeded its size limit");
        if let Some(reported) = aggregate.reported_size {
            assert!(reported >= data.len(), "{context}: Python's size estimate is never below the real size");
        }

        let ours = encode(mine);
        assert_eq!(hex::encode(&ours), aggregate.data_hex, "{context}: our encoding differs from Python's");
    }
    assert!(rest.is_empty(), "{context}: Python dropped {} records", rest.len());
}

#[test]
fn python_vectors_decode_and_reencode_byte_for_byte() {
    let file = vectors();
    assert!(file.library.starts_with("aws-kinesis-agg"), "{}", file.library);
    assert!(file.cases.len() >= 10);
    for case in &file.cases {
        check_python_aggregates(&case.name, &case.input, &case.aggregates, case.max_size);
    }
}

#[test]
fn python_vectors_cover_the_interesting_cases() {
    let file = vectors();
    let case = |name: &str| file.cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("case {name}"));

    // The worked example of the format reference, produced identically by Python.
    let worked = case("kpl_worked_example");
    assert_eq!(
        worked.aggregates[0].data_hex,
        "f3899ac20a03706b310a03706b321a0508001a01781a0608011a02797acf235e4e46e0c5a42b0efef034c3929d"
    );
    // Python de-duplicates partition keys: one table entry per distinct key.
    let repeated = case("repeated_partition_keys");
    let data = Bytes::from(hex::decode(&repeated.aggregates[0].data_hex).expect("hex"));
    let records = expand(&data, "repeated");
    assert_eq!(records.len(), 8);
    assert!(std::sync::Arc::ptr_eq(records[0].shared_partition_key(), records[2].shared_partition_key()));
    // Python's size estimate overcounts repeated keys (it looks them up as bytes in a table of str).
    assert!(repeated.aggregates[0].reported_size.expect("size") > data.len());
    // Records with an EHK next to records without: ours decode as written.
    let mixed = case("mixed_explicit_hash_keys");
    let data = Bytes::from(hex::decode(&mixed.aggregates[0].data_hex).expect("hex"));
    let ehks: Vec<_> = expand(&data, "mixed").iter().map(|r| r.explicit_hash_key().map(str::to_owned)).collect();
    assert_eq!(ehks, [None, Some("12345".to_owned()), None, Some("12345".to_owned())]);
    // A size limit splits the batch into several aggregates.
    assert!(case("split_by_max_size").aggregates.len() > 1);
    // Indices past 127 (two-byte varints).
    assert_eq!(case("many_records_indices_past_127").input.len(), 300);
}

// ---------------------------------------------------------------------------------------------
// Live round trips with the Python library.

/// SplitMix64: a small seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn seed() -> u64 {
    let seed = std::env::var("KINESIS_AGG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("aws-kinesis-agg interop seed: KINESIS_AGG_SEED={seed}");
    seed
}

const POPULAR_KEYS: [&str; 6] = ["a", "user-1", "user-2", "ключ", "🔑", "日本"];
const KEY_CHARS: [char; 12] = ['a', 'z', 'Q', '0', '9', '-', '_', ' ', 'é', 'ß', 'ж', '😀'];

fn random_record(rng: &mut Rng, max_data: usize) -> UserRecord {
    let partition_key = if rng.chance(50) {
        POPULAR_KEYS[rng.below(POPULAR_KEYS.len())].to_owned()
    } else {
        (0..1 + rng.below(30)).map(|_| KEY_CHARS[rng.below(KEY_CHARS.len())]).collect()
    };
    let explicit_hash_key = match rng.below(10) {
        0 => Some("0".to_owned()),
        1 => Some(u128::MAX.to_string()),
        2 => Some((u128::from(rng.next()) << 64 | u128::from(rng.next())).to_string()),
        _ => None,
    };
    let len = match rng.below(100) {
        0..=84 => rng.below(200.min(max_data) + 1),
        85..=94 => rng.below(2_000.min(max_data) + 1),
        _ => rng.below(max_data + 1),
    };
    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    UserRecord { partition_key, explicit_hash_key, data_hex: hex::encode(data) }
}

fn random_batch(rng: &mut Rng, max_data: usize) -> Vec<UserRecord> {
    let count = if rng.chance(10) { 1 } else { 2 + rng.below(120) };
    (0..count).map(|_| random_record(rng, max_data)).collect()
}

/// Runs `agg_peer.py <mode>` with `request` on stdin and returns its JSON answer.
fn run_peer(python: &str, mode: &str, request: &serde_json::Value) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/agg_peer.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let input = serde_json::to_vec(request).expect("serializable request");
    // The peer reads all of stdin before writing; a write error means it died, which the exit
    // status below reports with its stderr.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&input);
    }
    let output = child.wait_with_output().expect("peer ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "agg_peer.py {mode} failed ({}); {python} needs `pip install aws-kinesis-agg six` \
         (aws-kinesis-agg imports six without declaring it):\n{stderr}",
        output.status
    );
    assert!(stderr.trim().is_empty(), "agg_peer.py {mode} reported errors:\n{stderr}");
    serde_json::from_slice(&output.stdout).expect("peer answers JSON")
}

/// A user record as Python's `deaggregate_records` returns it.
#[derive(Debug, Deserialize)]
struct PythonUserRecord {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data_hex: String,
    sub_sequence_number: Option<u64>,
    aggregated: bool,
}

#[test]
fn live_rust_aggregates_python_deaggregates() {
    let Some(python) = support::peer("KINESIS_AGG_PYTHON") else { return };
    let mut rng = Rng(seed());

    let batches: Vec<Vec<UserRecord>> = (0..60).map(|_| random_batch(&mut rng, 20_000)).collect();
    let mut sent: Vec<Bytes> = batches.iter().map(|batch| encode(batch)).collect();
    // Records that are not valid aggregates: Python must pass them through unchanged, and our
    // decoder must classify them the same way (plain, or an error the KCL passes through).
    let mut corrupt = Vec::new();
    for original in sent.iter().take(10) {
        let mut data = original.to_vec();
        let at = 4 + rng.below(data.len() - 4);
        data[at] ^= 1 << rng.below(8);
        corrupt.push(Bytes::from(data));
    }
    corrupt.push(Bytes::from_static(b"a plain record, not aggregated at all"));
    corrupt.push(Bytes::from_static(&[0xF3, 0x89, 0x9A, 0xC2, 1, 2, 3]));
    sent.extend(corrupt.iter().cloned());

    let request = json!({ "records": sent.iter().map(hex::encode).collect::<Vec<_>>() });
    let response = run_peer(&python, "deaggregate", &request);
    let results: Vec<Vec<PythonUserRecord>> =
        serde_json::from_value(response["results"].clone()).expect("deaggregate results");
    assert_eq!(results.len(), sent.len());

    for (b, (batch, expanded)) in batches.iter().zip(&results).enumerate() {
        assert_eq!(expanded.len(), batch.len(), "batch {b}: record count");
        // Python's deaggregator reads `explicit_hash_key_index` without checking that it is
        // present; an absent index reads as 0, so when the aggregate has any explicit hash key, a
        // record without one comes back with the table's first entry.
        let first_ehk = batch.iter().find_map(|r| r.explicit_hash_key.clone());
        for (n, (sent, got)) in batch.iter().zip(expanded).enumerate() {
            assert!(got.aggregated, "batch {b} record {n}: aggregated flag");
            assert_eq!(got.partition_key, sent.partition_key, "batch {b} record {n}: partition key");
            assert_eq!(got.data_hex, sent.data_hex, "batch {b} record {n}: data");
            assert_eq!(got.sub_sequence_number, Some(n as u64), "batch {b} record {n}: sub-sequence number");
            let expected_ehk = sent.explicit_hash_key.clone().or_else(|| first_ehk.clone());
            assert_eq!(got.explicit_hash_key, expected_ehk, "batch {b} record {n}: explicit hash key");
        }
    }
    for (c, (data, expanded)) in corrupt.iter().zip(&results[batches.len()..]).enumerate() {
        assert_eq!(expanded.len(), 1, "corrupt record {c}: passed through as one record");
        assert!(!expanded[0].aggregated, "corrupt record {c}");
        assert_eq!(expanded[0].data_hex, hex::encode(data), "corrupt record {c}: unchanged");
        match decode(data) {
            Ok(Decoded::NotAggregated) => {}
            Err(e) if e.kcl_passes_through() => {}
            other => panic!("corrupt record {c}: we decode it as {other:?}"),
        }
    }
}

#[test]
fn live_python_aggregates_rust_deaggregates() {
    let Some(python) = support::peer("KINESIS_AGG_PYTHON") else { return };
    let mut rng = Rng(seed());

    // Some batches with a small size limit, so Python splits them into several aggregates.
    let batches: Vec<(Option<usize>, Vec<UserRecord>)> = (0..60)
        .map(|_| {
            if rng.chance(30) {
                (Some(600 + rng.below(3_000)), random_batch(&mut rng, 300))
            } else {
                (None, random_batch(&mut rng, 20_000))
            }
        })
        .collect();
    let request = json!({
        "batches": batches
            .iter()
            .map(|(max_size, records)| json!({ "max_size": max_size, "records": records }))
            .collect::<Vec<_>>()
    });
    let response = run_peer(&python, "aggregate", &request);
    let answers: Vec<Vec<PythonAggregate>> =
        serde_json::from_value(response["batches"].clone()).expect("aggregate results");
    assert_eq!(answers.len(), batches.len());

    let mut split = 0;
    for (b, ((max_size, records), aggregates)) in batches.iter().zip(&answers).enumerate() {
        split += usize::from(aggregates.len() > 1);
        check_python_aggregates(&format!("batch {b}"), records, aggregates, *max_size);
    }
    eprintln!("{} batches, {split} split by Python into several aggregates", batches.len());
}
