"""An independent producer: boto3 + the reference aws-kinesis-agg aggregator.

Writes N records in the `produce` contract's format (partition keys k0..k{K-1} round-robin, data
starting with the ASCII header "<key> <n> " padded to SIZE bytes), half of the PutRecords batches
as KPL aggregates made by aws_kinesis_agg's RecordAggregator and half as plain records. Prints one
JSON line: {"sent": N, "kinesis_records": M, "aggregated_records": A, "plain_records": P}.
"""

import argparse
import json

import boto3
from aws_kinesis_agg.aggregator import RecordAggregator


def payload(key, n, size):
    header = f"{key} {n} ".encode()
    return header + b"." * max(0, size - len(header))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=100)
    args = p.parse_args()
    kinesis = boto3.client("kinesis", endpoint_url=args.endpoint, region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")
    counters = {}
    records = []
    for i in range(args.records):
        key = f"k{i % args.keys}"
        n = counters.get(key, 0)
        counters[key] = n + 1
        records.append((key, payload(key, n, args.size)))

    kinesis_records = aggregated = plain = 0
    for start in range(0, len(records), args.batch):
        batch = records[start:start + args.batch]
        entries = []
        if (start // args.batch) % 2 == 0:
            # Aggregate per partition key so every aggregate routes like its records.
            by_key = {}
            for key, data in batch:
                by_key.setdefault(key, []).append(data)
            for key, datas in by_key.items():
                agg = RecordAggregator()
                for data in datas:
                    full = agg.add_user_record(key, data)
                    if full is not None:
                        pk, ehk, blob = full.get_contents()
                        entries.append({"PartitionKey": pk, "Data": blob})
                pk, ehk, blob = agg.clear_and_get().get_contents()
                entries.append({"PartitionKey": pk, "Data": blob})
            aggregated += len(entries)
        else:
            entries = [{"PartitionKey": key, "Data": data} for key, data in batch]
            plain += len(entries)
        pending = entries
        for _ in range(50):
            result = kinesis.put_records(StreamName=args.stream, Records=pending)
            failed = [e for e, r in zip(pending, result["Records"]) if "ErrorCode" in r]
            if not failed:
                break
            pending = failed
        else:
            raise SystemExit("records kept failing")
        kinesis_records += len(entries)
    print(json.dumps({"sent": len(records), "kinesis_records": kinesis_records,
                      "aggregated_records": aggregated, "plain_records": plain}))


if __name__ == "__main__":
    main()
