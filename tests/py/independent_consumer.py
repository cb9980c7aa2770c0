"""An independent consumer: boto3 + the reference aws-kinesis-agg deaggregator.

Reads every shard of a stream from TRIM_HORIZON (parents before children, as listed), de-aggregates
with aws_kinesis_agg, and checks the `produce` header ("<key> <n> ") of every user record. Prints
one JSON line: {"records", "unique", "duplicates", "order_violations", "bad_headers", "keys"}.
An order violation is a record whose n is not greater than the previous n of its key within the
same shard.
"""

import argparse
import base64
import json
import time

import boto3
from aws_kinesis_agg.deaggregator import deaggregate_records


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
    seen = {}
    records = duplicates = order_violations = bad_headers = 0
    while True:
        shards = kinesis.list_shards(StreamName=args.stream)["Shards"]
        records = duplicates = order_violations = bad_headers = 0
        seen = {}
        for shard in shards:
            last_n = {}
            it = kinesis.get_shard_iterator(StreamName=args.stream, ShardId=shard["ShardId"],
                                            ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            while it:
                out = kinesis.get_records(ShardIterator=it, Limit=10000)
                events = [{"kinesis": {"kinesisSchemaVersion": "1.0",
                                       "partitionKey": r["PartitionKey"],
                                       "sequenceNumber": r["SequenceNumber"],
                                       "data": base64.b64encode(r["Data"]).decode(),
                                       "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp()}}
                          for r in out["Records"]]
                for user in deaggregate_records(events):
                    data = base64.b64decode(user["kinesis"]["data"])
                    records += 1
                    parts = data.split(b" ", 2)
                    try:
                        key, n = parts[0].decode(), int(parts[1])
                    except (IndexError, ValueError, UnicodeDecodeError):
                        bad_headers += 1
                        continue
                    if (key, n) in seen:
                        duplicates += 1
                    seen[(key, n)] = True
                    if key in last_n and n <= last_n[key]:
                        order_violations += 1
                    last_n[key] = n
                if not out["Records"]:
                    break
                it = out.get("NextShardIterator")
        if len(seen) >= args.expect or time.time() > deadline:
            break
        time.sleep(0.5)
    keys = sorted({k for k, _ in seen})
    print(json.dumps({"records": records, "unique": len(seen), "duplicates": duplicates,
                      "order_violations": order_violations, "bad_headers": bad_headers, "keys": len(keys)}))


if __name__ == "__main__":
    main()
