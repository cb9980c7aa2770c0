"""Runs our `produce` example and another producer with the same workload against one Kinesis
endpoint, alternating, ROUNDS times each, each run into a fresh stream of SHARDS shards; reads
every stream back (boto3 + aws_kinesis_agg, parents first) and prints, per run and as a
markdown table: delivered, expired, failed, records stored twice or more, retries, per-key order
inversions among first copies, records per second, CPU seconds per million records and peak
resident memory (the producer process and the children it waited for — the Java KPL's native
daemon included — from wait4). `--busy N` keeps N CPU-burning processes running during each
run, as on a busy machine.

The other producer (`--peer`): `aiokpl` (a pure-Python KPL; aiokpl_produce.py, with
`--aiokpl-python`) or `java-kpl` (the Java KPL, tests/java's `produce` mode, with
`--java-classpath`; it speaks TLS only, to `--tls-endpoint`). Used by scripts/bench-vs-aiokpl.sh
and scripts/bench-vs-java-kpl.sh.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import uuid

import boto3
from aws_kinesis_agg.deaggregator import deaggregate_records


def client(endpoint):
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test", verify=False)


def create(kinesis, stream, shards):
    kinesis.create_stream(StreamName=stream, ShardCount=shards)
    for _ in range(600):
        if kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: stream {stream} did not become active")


def read_back(kinesis, stream):
    """(unique, stored twice or more, inversions among first copies) over every shard."""
    copies = {}
    last = {}
    inversions = 0
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            out = kinesis.get_records(ShardIterator=it, Limit=10000)
            for record in out["Records"]:
                event = {"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": record["PartitionKey"],
                                     "sequenceNumber": record["SequenceNumber"],
                                     "data": base64.b64encode(record["Data"]).decode(),
                                     "approximateArrivalTimestamp": record["ApproximateArrivalTimestamp"].timestamp()}}
                for user in deaggregate_records([event]):
                    parts = base64.b64decode(user["kinesis"]["data"]).split(b" ", 2)
                    try:
                        key, n = parts[0].decode(), int(parts[1])
                    except (IndexError, ValueError, UnicodeDecodeError):
                        continue
                    seen = copies.get((key, n), 0)
                    copies[(key, n)] = seen + 1
                    if seen == 0:
                        if key in last and n < last[key]:
                            inversions += 1
                        last[key] = max(n, last.get(key, n))
            if not out["Records"]:
                break
            it = out.get("NextShardIterator")
    duplicates = sum(1 for c in copies.values() if c > 1)
    return len(copies), duplicates, inversions


def run(command):
    """Runs a producer; returns (its last stdout line as JSON, CPU seconds, wall seconds, peak RSS
    in MiB of the process and the children it waited for)."""
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    lines = [line for line in output.decode(errors="replace").splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"bench: {command[0]} printed no summary (exit status {status})")
    return json.loads(lines[-1]), usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", default=os.environ.get("KINESIS_MOCK_ENDPOINT"),
                   help="the Kinesis endpoint (default: $KINESIS_MOCK_ENDPOINT, set by scripts/test.sh)")
    p.add_argument("--produce", required=True, help="our produce binary")
    p.add_argument("--peer", choices=["aiokpl", "java-kpl"], default="aiokpl", help="the other producer")
    p.add_argument("--aiokpl-python", help="a python with aiokpl installed (--peer aiokpl)")
    p.add_argument("--java-classpath", default=os.environ.get("JAVA_PEER_CLASSPATH"),
                   help="the Java peer's classpath (--peer java-kpl; default: $JAVA_PEER_CLASSPATH)")
    p.add_argument("--tls-endpoint", default=os.environ.get("KINESIS_MOCK_TLS_ENDPOINT"),
                   help="the endpoint's TLS address for the Java KPL (default: $KINESIS_MOCK_TLS_ENDPOINT)")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ours-args", default="", help="extra flags for produce, e.g. --ours-args=--unordered")
    p.add_argument("--busy", type=int, default=0,
                   help="keep this many CPU-burning processes running during each run (a busy machine)")
    args = p.parse_args()
    if not args.endpoint:
        raise SystemExit("bench: no --endpoint and no KINESIS_MOCK_ENDPOINT")
    if args.peer == "aiokpl" and not args.aiokpl_python:
        raise SystemExit("bench: --peer aiokpl needs --aiokpl-python")
    if args.peer == "java-kpl" and not (args.java_classpath and args.tls_endpoint):
        raise SystemExit("bench: --peer java-kpl needs --java-classpath and --tls-endpoint")
    here = os.path.dirname(os.path.abspath(__file__))
    kinesis = client(args.endpoint)
    workload = ["--records", str(args.records), "--size", str(args.size), "--keys", str(args.keys)]
    rows = []
    for round_ in range(1, args.rounds + 1):
        tools = ["ours", args.peer] if round_ % 2 else [args.peer, "ours"]
        for tool in tools:
            stream = f"bench-{tool}-{round_}-{uuid.uuid4().hex[:8]}"
            create(kinesis, stream, args.shards)
            if tool == "ours":
                command = [args.produce, "--stream", stream, "--endpoint", args.endpoint, *workload,
                           *args.ours_args.split()]
            elif tool == "aiokpl":
                command = [args.aiokpl_python, os.path.join(here, "aiokpl_produce.py"), "--stream", stream,
                           "--endpoint", args.endpoint, *workload]
            else:
                command = ["java", "-cp", args.java_classpath, "kinesispeer.Main", "produce", "--stream", stream,
                           "--endpoint", args.tls_endpoint, *workload]
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
            try:
                summary, cpu, wall, rss_mib = run(command)
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()
            unique, duplicates, inversions = read_back(kinesis, stream)
            row = {
                "round": round_, "producer": tool,
                "delivered": summary.get("delivered", 0), "expired": summary.get("expired", 0),
                "failed": summary.get("failed", 0), "stored": unique, "duplicates": duplicates,
                "retries": summary.get("retries", 0), "inversions": inversions,
                "records_per_s": round(summary.get("delivered", 0) / max(wall, 1e-9)),
                "cpu_s_per_million": round(cpu / max(args.records, 1) * 1e6, 1),
                "peak_rss_mib": round(rss_mib),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
    columns = ["round", "producer", "delivered", "expired", "failed", "stored", "duplicates", "retries",
               "inversions", "records_per_s", "cpu_s_per_million", "peak_rss_mib"]
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns) + " |")
    sys.exit(0)


if __name__ == "__main__":
    main()
