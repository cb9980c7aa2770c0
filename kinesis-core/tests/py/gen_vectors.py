#!/usr/bin/env python3
"""Generates kinesis-core/tests/vectors/python_aggregator.json with the reference Python library.

The vectors were generated once and committed; the Rust test `aggregation_interop` decodes them
without needing Python. Regenerate (the output is deterministic) with:

    /work/main/.peers/venv/bin/python kinesis-core/tests/py/gen_vectors.py

which needs `pip install aws-kinesis-agg six` (aws-kinesis-agg imports `six` without declaring it).
"""

import json
import os
import sys
from importlib import metadata

# aws_kinesis_agg.aggregator must be imported before messages_pb2: it puts the package folder on
# sys.path so that the generated messages_pb2 can `import config_pb2`.
from aws_kinesis_agg.aggregator import RecordAggregator

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vectors", "python_aggregator.json")

MAX_HASH_KEY = str(2**128 - 1)


def rec(pk, data, ehk=None):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return {"partition_key": pk, "explicit_hash_key": ehk, "data": data}


def pattern(length, seed):
    return bytes((i * 31 + seed) % 251 for i in range(length))


CASES = [
    ("kpl_worked_example", None, [rec("pk1", "x"), rec("pk2", "yz")]),
    ("distinct_partition_keys", None, [rec("alpha", "first"), rec("beta", "second"), rec("gamma", "third")]),
    (
        "repeated_partition_keys",
        None,
        [rec(["hot", "cold"][i % 2] if i < 5 else "hot", "value %d" % i) for i in range(8)],
    ),
    (
        "explicit_hash_keys",
        None,
        [
            rec("a", "zero", "0"),
            rec("b", "max", MAX_HASH_KEY),
            rec("c", "mid", "170141183460469231731687303715884105728"),
            rec("d", "zero again", "0"),
        ],
    ),
    (
        "mixed_explicit_hash_keys",
        None,
        [rec("a", "no ehk"), rec("b", "with ehk", "12345"), rec("c", "no ehk either"), rec("a", "again", "12345")],
    ),
    ("empty_data", None, [rec("e1", b""), rec("e2", b""), rec("e1", b"not empty"), rec("e3", b"")]),
    (
        "unicode_partition_keys",
        None,
        [rec("ключ", "cyrillic"), rec("🔑", "emoji"), rec("日本語のキー", "japanese"), rec("é", "latin"), rec("ключ", "again")],
    ),
    ("binary_data", None, [rec("bin", bytes(range(256))), rec("bin", bytes(range(255, -1, -1)))]),
    (
        "large_record",
        None,
        [rec("small", "before"), rec("large", pattern(20000, 7)), rec("small", "after"), rec("medium", pattern(200, 3))],
    ),
    ("long_partition_key", None, [rec("k" * 256, "max-length key"), rec("k" * 128, "128-byte key")]),
    ("many_records_indices_past_127", None, [rec("key-%d" % (i % 150), pattern(i % 40, i)) for i in range(300)]),
    ("single_record", None, [rec("lonely", "just one")]),
    ("split_by_max_size", 200, [rec("s%d" % (i % 3), pattern(30, i)) for i in range(20)]),
]


def run_case(name, max_size, records):
    aggregator = RecordAggregator(max_size) if max_size else RecordAggregator()
    aggregates = []
    consumed = 0

    def emit(agg):
        nonlocal consumed
        pk, ehk, data = agg.get_contents()
        count = agg.get_num_user_records()
        aggregates.append(
            {
                "partition_key": pk,
                "explicit_hash_key": ehk,
                "records": count,
                "reported_size": agg.get_size_bytes(),
                "data_hex": data.hex(),
            }
        )
        consumed += count

    for r in records:
        full = aggregator.add_user_record(r["partition_key"], r["data"], r["explicit_hash_key"])
        if full is not None:
            emit(full)
    last = aggregator.clear_and_get()
    if last is not None:
        emit(last)
    assert consumed == len(records), name
    return {
        "name": name,
        "max_size": max_size,
        "input": [
            {"partition_key": r["partition_key"], "explicit_hash_key": r["explicit_hash_key"], "data_hex": r["data"].hex()}
            for r in records
        ],
        "aggregates": aggregates,
    }


def main():
    out = {
        "generator": "kinesis-core/tests/py/gen_vectors.py",
        "library": "aws-kinesis-agg %s, protobuf %s, Python %s"
        % (metadata.version("aws-kinesis-agg"), metadata.version("protobuf"), sys.version.split()[0]),
        "cases": [run_case(*case) for case in CASES],
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote %s (%d cases)" % (os.path.normpath(OUT), len(out["cases"])))


if __name__ == "__main__":
    main()
