#!/usr/bin/env bash
# Our producer against aiokpl (a pure-Python KPL) on one kinesis-mock: the `produce` example and
# the same workload written with aiokpl (scripts/bench/aiokpl_produce.py) run alternately, three
# rounds each, each into a fresh stream; every stream is read back. Prints a JSON line per run
# and a markdown table: delivered, expired, failed, stored, records stored twice or more,
# retries, per-key order inversions (first copies), records per second, CPU seconds per million
# records (the producer process's user + system time), peak RSS.
#
# Usage: scripts/bench-vs-aiokpl.sh [--records N] [--size B] [--keys K] [--shards S] [--rounds R]
#                                   [--ours-args=--unordered] [--busy N]
# Defaults: 200,000 records of 100 bytes, 1,000 keys, 4 shards, 3 rounds. --busy N keeps N
# CPU-burning processes running during each run (a busy machine, where kinesis-mock answers
# large requests slowly).
#
# Installs aiokpl and its dependencies (pinned below) into the git-ignored .peers/bench-venv,
# once; starts kinesis-mock and the other test peers through scripts/test.sh --exec.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BENCH_VENV="$ROOT/.peers/bench-venv"
REQUIREMENTS="aiokpl==0.2.0
aiobotocore==3.10.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aioitertools==0.13.0
aiosignal==1.4.0
anyio==4.16.0
attrs==26.1.0
botocore==1.43.117
frozenlist==1.8.0
idna==3.20
jmespath==1.1.0
multidict==7.2.1
propcache==0.5.4
python-dateutil==2.9.0.post0
six==1.17.0
sortedcontainers==2.4.0
typing_extensions==4.16.0
urllib3==2.8.0
wrapt==2.5.2
yarl==1.25.1"

"$ROOT/scripts/peers.sh"
mkdir -p "$ROOT/.peers"
if [ ! -x "$BENCH_VENV/bin/python" ] || [ "$(cat "$BENCH_VENV/requirements.txt" 2>/dev/null)" != "$REQUIREMENTS" ]; then
  echo "[bench] installing aiokpl into .peers/bench-venv"
  rm -rf "$BENCH_VENV"
  "${PYTHON:-python3}" -m venv "$BENCH_VENV"
  printf '%s\n' "$REQUIREMENTS" >"$BENCH_VENV/requirements.in"
  "$BENCH_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$BENCH_VENV/requirements.in"
  printf '%s' "$REQUIREMENTS" >"$BENCH_VENV/requirements.txt"
fi

cargo build --release --quiet -p examples --example produce
PRODUCE="$ROOT/target/release/examples/produce"
exec "$ROOT/scripts/test.sh" --exec "$ROOT/.peers/venv/bin/python" "$ROOT/scripts/bench/vs_producer.py" \
  --peer aiokpl --produce "$PRODUCE" --aiokpl-python "$BENCH_VENV/bin/python" "$@"
