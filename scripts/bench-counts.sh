#!/usr/bin/env bash
# Instructions and cache misses per user record of the producer's throughput benchmark, counted
# by valgrind's cachegrind: the same figures on every run, however loaded the machine is (the
# benchmark's records per second vary by ±15 % on a shared machine; these by well under 1 %).
#
# Usage: scripts/bench-counts.sh [records per run, default 300000]
# Needs valgrind. Both throughput runs (own payload buffers, shared payload) count, so the totals
# are divided by twice the records per run. BENCH_ORDER=unordered counts the producer without
# per-key ordering (default: per-key, the producer's default).
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-300000}"
command -v valgrind >/dev/null || { echo "bench-counts: valgrind is not installed" >&2; exit 1; }
binary="$(cargo bench -p kinesis-kpl --bench producer --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*producer-[^"]*\)".*/\1/p' | tail -1)"
[ -x "$binary" ] || { echo "bench-counts: could not build the producer benchmark" >&2; exit 1; }
BENCH_ORDER="${BENCH_ORDER:-per-key}" BENCH_RECORDS="$records" valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file=/dev/null \
  "$binary" --bench throughput 2>&1 >/dev/null \
  | awk -v n="$((records * 2))" '
      /I *refs:/      { gsub(",", "", $4); ir = $4 }
      /D1  misses:/   { gsub(",", "", $4); d1 = $4 }
      /LLd misses:/   { gsub(",", "", $4); ll = $4 }
      END {
        if (ir == "") { print "bench-counts: no counts from valgrind" > "/dev/stderr"; exit 1 }
        printf "{\"records\": %d, \"instructions_per_record\": %.0f, \"d1_misses_per_record\": %.2f, \"lld_misses_per_record\": %.3f}\n", n, ir / n, d1 / n, ll / n
      }'
