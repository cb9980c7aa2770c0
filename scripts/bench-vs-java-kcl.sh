#!/usr/bin/env bash
# Our consumer against the Java KCL 3.x (tests/java's `consume` mode), same lease duration (10 s),
# on one kinesis-mock and one DynamoDB peer (moto by default), one side after the other: DynamoDB requests per
# lease-hour on an idle stream (counted by a proxy in front of DynamoDB), CPU seconds per million
# records consumed, and failover after SIGKILL of a worker and of the leader. Prints a JSON line
# per measurement and a markdown table. Takes about 20 minutes (the Java KCL's leader failover
# alone takes minutes).
#
# Usage: scripts/bench-vs-java-kcl.sh [--only cost|cpu|failover]... [--records N] [--rate R]
#                                     [--idle-seconds S]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/peers.sh"
cargo build --release --quiet -p examples --example produce --example consume
exec "$ROOT/scripts/test.sh" --exec "$ROOT/.peers/venv/bin/python" "$ROOT/scripts/bench/vs_consumer.py" \
  --produce "$ROOT/target/release/examples/produce" --consume "$ROOT/target/release/examples/consume" "$@"
