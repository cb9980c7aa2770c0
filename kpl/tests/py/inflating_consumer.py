"""A consumer that knows kpl's compressed envelope but nothing else of kpl: boto3 reads every
shard from TRIM_HORIZON; a record starting with F3 89 9A C3 01 (kpl's compressed envelope) is
inflated with zlib, as kpl's documentation tells other consumers to do; then the reference
aws_kinesis_agg de-aggregates it. Checks the "<key> <n> " header of every user record and prints
one JSON line: {"records", "unique", "duplicates", "order_violations", "bad_headers",
"compressed_records", "plain_records"}.
"""

import argparse
import base64
import json
import time
import zlib

import boto3
from aws_kinesis_agg.deaggregator import deaggregate_records

ENVELOPE = b"\xf3\x89\x9a\xc3\x01"


def read_all(kinesis, stream):
    """Every Kinesis record of every shard, parents first (as listed), in order."""
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            out = kinesis.get_records(ShardIterator=it, Limit=10000)
            yield from out["Records"]
            if not out["Records"]:
                break
            it = out.get("NextShardIterator")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    kinesis = boto3.client("kinesis", endpoint_url=args.endpoint, region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")
    deadline = time.time() + args.timeout
    while True:
        summary = {"records": 0, "unique": 0, "duplicates": 0, "order_violations": 0, "bad_headers": 0,
                   "compressed_records": 0, "plain_records": 0}
        seen = set()
        last_n = {}
        for record in read_all(kinesis, args.stream):
            data = record["Data"]
            if data.startswith(ENVELOPE):
                summary["compressed_records"] += 1
                data = zlib.decompress(data[len(ENVELOPE):])
            else:
                summary["plain_records"] += 1
            event = {"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": record["PartitionKey"],
                                 "sequenceNumber": record["SequenceNumber"],
                                 "data": base64.b64encode(data).decode(),
                                 "approximateArrivalTimestamp": record["ApproximateArrivalTimestamp"].timestamp()}}
            for user in deaggregate_records([event]):
                payload = base64.b64decode(user["kinesis"]["data"])
                summary["records"] += 1
                parts = payload.split(b" ", 2)
                try:
                    key, n = parts[0].decode(), int(parts[1])
                except (IndexError, ValueError, UnicodeDecodeError):
                    summary["bad_headers"] += 1
                    continue
                if (key, n) in seen:
                    summary["duplicates"] += 1
                seen.add((key, n))
                if key in last_n and n <= last_n[key]:
                    summary["order_violations"] += 1
                last_n[key] = n
        summary["unique"] = len(seen)
        if len(seen) >= args.expect or time.time() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
