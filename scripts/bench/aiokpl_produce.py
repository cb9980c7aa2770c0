"""The `produce` example's workload, written with aiokpl (a pure-Python KPL): N records keyed
k0..k{K-1} round robin, each record's data the ASCII header "<key> <n> " padded with '.' to SIZE
bytes. Prints one JSON line like `produce`'s: sent, delivered, failed, expired, retries,
elapsed_s, records_per_s. Used by scripts/bench-vs-aiokpl.sh.
"""

import argparse
import asyncio
import json
import time

from aiokpl import Config, Producer


def payload(key: str, n: int, size: int) -> bytes:
    data = f"{key} {n} ".encode()
    return data + b"." * max(0, size - len(data))


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--keys", type=int, default=1000)
    args = p.parse_args()
    config = Config(
        region="us-east-1",
        endpoint_url=args.endpoint,
        verify_ssl=False,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    started = time.monotonic()
    outcomes = []
    counters = [0] * args.keys
    async with Producer(config) as producer:
        for i in range(args.records):
            k = i % args.keys
            key = f"k{k}"
            n = counters[k]
            counters[k] += 1
            outcomes.append(await producer.put_record(stream=args.stream, partition_key=key, data=payload(key, n, args.size)))
        await producer.flush()
        delivered = failed = expired = retries = 0
        for outcome in outcomes:
            result = await outcome.wait()
            retries += max(0, len(result.attempts) - 1)
            if result.success:
                delivered += 1
            else:
                failed += 1
                if result.attempts and result.attempts[-1].error_code == "Expired":
                    expired += 1
    elapsed = time.monotonic() - started
    print(json.dumps({
        "sent": args.records,
        "delivered": delivered,
        "failed": failed,
        "expired": expired,
        "retries": retries,
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(delivered / max(elapsed, 1e-9)),
    }))


if __name__ == "__main__":
    asyncio.run(main())
