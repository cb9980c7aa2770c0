#!/usr/bin/env bash
# Our producer against the Java KPL on one kinesis-mock: the `produce` example and the Java KPL
# (tests/java's `produce` mode: aggregation on, metrics off, its native daemon) run alternately,
# three rounds each, each into a fresh stream, with the same records (100 B, 1,000 keys by
# default); every stream is read back. Prints a JSON line per run and a markdown table:
# delivered, expired, failed, stored, records stored twice or more, retries, per-key order
# inversions (first copies), records per second, CPU seconds per million records and peak RSS
# (for the KPL: the JVM and its daemon).
#
# Usage: scripts/bench-vs-java-kpl.sh [--records N] [--size B] [--keys K] [--shards S] [--rounds R]
#                                     [--ours-args=--unordered] [--busy N]
# The Java peer is installed by scripts/peers.sh; the peers are started through scripts/test.sh --exec.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/peers.sh"
cargo build --release --quiet -p examples --example produce
exec "$ROOT/scripts/test.sh" --exec "$ROOT/.peers/venv/bin/python" "$ROOT/scripts/bench/vs_producer.py" \
  --peer java-kpl --produce "$ROOT/target/release/examples/produce" "$@"
