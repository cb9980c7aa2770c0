//! Sealing aggregates (their MD5 digest): one after another with `UnsealedAggregate::seal`, and
//! several at once with `UnsealedAggregate::seal_all`, which hashes up to eight side by side.
//! Aggregates of about 51 KB, as the producer fills them with 100-byte records.
//!
//! Run: `cargo bench -p kinesis-core --bench digest`. Prints one JSON line: bytes sealed per
//! nanosecond for each way.

use std::time::{Duration, Instant};

use kinesis_core::aggregation::{AggregateBuilder, UnsealedAggregate};

/// Aggregates per `seal_all` call: about what one `PutRecords` request of the producer carries.
const AGGREGATES: usize = 8;
const AGGREGATE_BYTES: usize = 51_000;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
/// then a scaled-down smoke run checks the benchmark still works without spending minutes.
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn aggregates() -> Vec<UnsealedAggregate> {
    (0..AGGREGATES)
        .map(|n| {
            let mut builder = AggregateBuilder::new();
            let mut i = 0usize;
            while builder.encoded_len() < AGGREGATE_BYTES {
                let data: Vec<u8> = (0..100).map(|b| (b + i + n) as u8).collect();
                builder.add(&format!("key-{}", i % 1000), None, data, &[]);
                i += 1;
            }
            builder.take_unsealed_with_data_ranges(&mut Vec::new())
        })
        .collect()
}

/// Seals copies of `aggregates` with `seal` for about `span` of sealing time (making the copies
/// is not timed); returns bytes sealed per nanosecond.
fn rate(aggregates: &[UnsealedAggregate], span: Duration, seal: impl Fn(Vec<UnsealedAggregate>) -> usize) -> f64 {
    let (mut bytes, mut sealing) = (0usize, Duration::ZERO);
    while sealing < span {
        let copies = aggregates.to_vec();
        let start = Instant::now();
        bytes += seal(copies);
        sealing += start.elapsed();
    }
    bytes as f64 / sealing.as_nanos() as f64
}

fn main() {
    let span = if smoke_run() { Duration::from_millis(50) } else { Duration::from_secs(2) };
    let aggregates = aggregates();
    let one_by_one = rate(&aggregates, span, |batch| batch.into_iter().map(|a| a.seal().len()).sum());
    let together = rate(&aggregates, span, |batch| UnsealedAggregate::seal_all(batch).iter().map(|b| b.len()).sum());
    println!(
        "{{\"bench\": \"digest\", \"aggregates\": {AGGREGATES}, \"aggregate_bytes\": {}, \"seal_bytes_per_ns\": {one_by_one:.3}, \"seal_all_bytes_per_ns\": {together:.3}, \"speedup\": {:.2}}}",
        aggregates.first().map_or(0, UnsealedAggregate::sealed_len),
        together / one_by_one
    );
}
