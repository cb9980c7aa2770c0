#!/usr/bin/env python3
"""Peer for the live interop test `aggregation_interop`: runs the reference Python library
(`aws-kinesis-agg`) on batches the Rust test sends as JSON on stdin, and answers as JSON on stdout.

    agg_peer.py deaggregate   {"records": ["<hex of a Kinesis record's data>", ...]}
                           -> {"results": [[{"partition_key", "explicit_hash_key", "data_hex",
                                             "sub_sequence_number", "aggregated"}, ...], ...]}
    agg_peer.py aggregate     {"batches": [{"max_size": int|null,
                                            "records": [{"partition_key", "explicit_hash_key",
                                                         "data_hex"}, ...]}, ...]}
                           -> {"batches": [[{"partition_key", "explicit_hash_key", "records",
                                             "data_hex"}, ...], ...]}

Deaggregation goes through `deaggregate_records` with Lambda-shaped events
(`{"kinesis": {"data": base64, "partitionKey": ...}}`), as a Lambda consumer would call it.
"""

import base64
import json
import sys

# The aggregator module must be imported first: it puts the package folder on sys.path so that the
# generated messages_pb2 can `import config_pb2`.
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import deaggregate_records


def lambda_event(data, n):
    return {
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": "shardId-000000000000:%d" % n,
        "eventName": "aws:kinesis:record",
        "awsRegion": "us-east-1",
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "a",
            "sequenceNumber": str(49590338271490256608559692538361571095921575989136588898 + n),
            "approximateArrivalTimestamp": 1545084650.987,
            "data": base64.b64encode(data).decode("ascii"),
        },
    }


def deaggregate(request):
    results = []
    for n, data_hex in enumerate(request["records"]):
        out = []
        for user in deaggregate_records([lambda_event(bytes.fromhex(data_hex), n)]):
            k = user["kinesis"]
            out.append(
                {
                    "partition_key": k["partitionKey"],
                    "explicit_hash_key": k.get("explicitHashKey"),
                    "data_hex": base64.b64decode(k["data"]).hex(),
                    "sub_sequence_number": k.get("subSequenceNumber"),
                    "aggregated": bool(k.get("aggregated", False)),
                }
            )
        results.append(out)
    return {"results": results}


def aggregate(request):
    batches = []
    for batch in request["batches"]:
        max_size = batch.get("max_size")
        aggregator = RecordAggregator(max_size) if max_size else RecordAggregator()
        out = []

        def emit(agg):
            pk, ehk, data = agg.get_contents()
            out.append(
                {
                    "partition_key": pk,
                    "explicit_hash_key": ehk,
                    "records": agg.get_num_user_records(),
                    "data_hex": data.hex(),
                }
            )

        for r in batch["records"]:
            full = aggregator.add_user_record(r["partition_key"], bytes.fromhex(r["data_hex"]), r["explicit_hash_key"])
            if full is not None:
                emit(full)
        last = aggregator.clear_and_get()
        if last is not None:
            emit(last)
        batches.append(out)
    return {"batches": batches}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("deaggregate", "aggregate"):
        sys.exit("usage: agg_peer.py deaggregate|aggregate < request.json")
    request = json.load(sys.stdin)
    response = deaggregate(request) if sys.argv[1] == "deaggregate" else aggregate(request)
    json.dump(response, sys.stdout)


if __name__ == "__main__":
    main()
