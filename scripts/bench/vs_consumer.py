"""The Java KCL 3.x and our `consume` side by side, same lease duration (10 s, the Java KCL's
default failover time), same kinesis-mock and DynamoDB peer (moto by default), one side after the other:

  cost    an idle 4-shard stream, two workers: DynamoDB requests per lease-hour over a window
          after every lease is held, counted by a proxy in front of DynamoDB, by operation;
  cpu     one worker reads RECORDS records (100 B, 1,000 keys, aggregated by our producer):
          CPU seconds per million records (the worker process, startup included) and wall time;
  failover  three workers on a stream written at RATE records/s: SIGKILL a worker that is not
          the leader, then the leader; for each, the time until every shard the killed worker
          was processing is processed again by another worker.

Prints a JSON line per measurement and a markdown table. Used by scripts/bench-vs-java-kcl.sh,
which starts the peers.
"""

import argparse
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import boto3

LEASE_MS = 10_000


class CountingProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to DynamoDB and counts them by X-Amz-Target while `counting`."""

    daemon_threads = True

    def __init__(self, upstream):
        self.upstream = upstream
        self.counts = {}
        self.counting = False
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ProxyHandler)


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        target = self.headers.get("X-Amz-Target", "?").split(".")[-1]
        server = self.server
        if server.counting:
            with server.lock:
                server.counts[target] = server.counts.get(target, 0) + 1
        connection = getattr(self, "_upstream", None)
        for attempt in range(2):
            if connection is None:
                connection = http.client.HTTPConnection(server.upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request("POST", self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = None
                if attempt:
                    self.send_error(502)
                    return
        self._upstream = connection
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def kinesis_client(endpoint):
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def ddb_client(endpoint):
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def create_stream(kinesis, name, shards=4):
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    for _ in range(600):
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: stream {name} did not become active")


class Bench:
    def __init__(self, args):
        self.args = args
        self.kinesis = kinesis_client(args.endpoint)
        self.ddb = ddb_client(args.ddb_endpoint)
        self.dir = os.path.join(args.work_dir, f"vs-consumer-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.dir)

    def consumer(self, side, stream, app, worker, ddb_endpoint, extra=()):
        out = os.path.join(self.dir, f"{app}-{worker}.jsonl")
        log = open(os.path.join(self.dir, f"{app}-{worker}.log"), "w")
        if side == "java":
            command = ["java", "-cp", self.args.java_classpath, "kinesispeer.Main", "consume",
                       "--lease-duration-ms", str(LEASE_MS)]
        else:
            command = [self.args.consume, "--idle-exit", "3600"]
        command += ["--stream", stream, "--app", app, "--endpoint", self.args.endpoint,
                    "--ddb-endpoint", ddb_endpoint, "--worker-id", worker, "--out", out, *extra]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        return {"worker": worker, "out": out, "child": child}

    def produce(self, stream, records, rate=0):
        command = [self.args.produce, "--stream", stream, "--endpoint", self.args.endpoint,
                   "--records", str(records), "--keys", "1000", "--size", "100"]
        if rate:
            command += ["--rate", str(rate)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def owners(self, app):
        try:
            items = self.ddb.scan(TableName=app, ConsistentRead=True)["Items"]
        except self.ddb.exceptions.ResourceNotFoundException:
            return {}
        return {i["leaseKey"]["S"]: i.get("leaseOwner", {}).get("S") for i in items}

    def leader(self, app):
        try:
            item = self.ddb.get_item(TableName=f"{app}-CoordinatorState", Key={"key": {"S": "Leader"}},
                                     ConsistentRead=True).get("Item")
        except self.ddb.exceptions.ResourceNotFoundException:
            return None
        return item and item.get("ownerName", {}).get("S")

    def wait_all_leased(self, app, shards, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owners = self.owners(app)
            if len(owners) >= shards and all(owners.values()):
                return True
            time.sleep(1)
        return False

    @staticmethod
    def stop(consumer):
        child = consumer["child"]
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=90)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    @staticmethod
    def read_out(paths):
        records = []
        for path in paths:
            try:
                with open(path) as f:
                    for line in f:
                        try:
                            records.append(json.loads(line))
                        except ValueError:
                            pass
            except FileNotFoundError:
                pass
        return records

    # ---- the measurements -------------------------------------------------------------------

    def cost(self, side):
        proxy = CountingProxy(self.args.ddb_endpoint.split("//", 1)[1])
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        proxy_endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
        name = f"cost-{side}-{uuid.uuid4().hex[:6]}"
        create_stream(self.kinesis, name)
        workers = [self.consumer(side, name, name, f"{side}-{i}", proxy_endpoint) for i in range(2)]
        try:
            if not self.wait_all_leased(name, 4):
                raise SystemExit(f"bench: {side} workers did not take the 4 leases")
            time.sleep(30)  # settle: assignment done, balancing over
            proxy.counts.clear()
            proxy.counting = True
            time.sleep(self.args.idle_seconds)
            proxy.counting = False
        finally:
            for w in workers:
                self.stop(w)
            proxy.shutdown()
        total = sum(proxy.counts.values())
        per_lease_hour = total / 4 / self.args.idle_seconds * 3600
        return {"side": side, "measure": "idle DynamoDB requests per lease-hour",
                "value": round(per_lease_hour), "by_operation": dict(sorted(proxy.counts.items())),
                "window_s": self.args.idle_seconds}

    def cpu(self, side):
        name = f"cpu-{side}-{uuid.uuid4().hex[:6]}"
        create_stream(self.kinesis, name)
        producer = self.produce(name, self.args.records)
        producer.wait()
        started = time.monotonic()
        worker = self.consumer(side, name, name, f"{side}-cpu", self.args.ddb_endpoint,
                               ["--expect", str(self.args.records)])
        _, status, usage = os.wait4(worker["child"].pid, 0)
        wall = time.monotonic() - started
        seen = len(self.read_out([worker["out"]]))
        cpu = usage.ru_utime + usage.ru_stime
        return {"side": side, "measure": "CPU s per million records consumed",
                "value": round(cpu / max(seen, 1) * 1e6, 1), "records": seen, "wall_s": round(wall, 1),
                "peak_rss_mib": round(usage.ru_maxrss / 1024), "exit": status}

    def failover(self, side):
        name = f"failover-{side}-{uuid.uuid4().hex[:6]}"
        create_stream(self.kinesis, name)
        workers = [self.consumer(side, name, name, f"{side}-{i}", self.args.ddb_endpoint) for i in range(3)]
        results = []
        producer = None
        try:
            if not self.wait_all_leased(name, 4):
                raise SystemExit(f"bench: {side} workers did not take the 4 leases")
            producer = self.produce(name, self.args.rate * 900, self.args.rate)
            time.sleep(20)
            for kind in ("worker", "leader"):
                leader = self.leader(name)
                owners = self.owners(name)
                alive = [w for w in workers if w["child"].poll() is None]
                holding = [w for w in alive if w["worker"] in owners.values()]
                if kind == "leader":
                    victims = [w for w in alive if w["worker"] == leader]
                else:
                    victims = [w for w in holding if w["worker"] != leader]
                if not victims:
                    results.append({"side": side, "measure": f"{kind} failover after SIGKILL", "value": None,
                                    "note": f"no {kind} to kill (leader {leader}, owners {owners})"})
                    continue
                victim = victims[0]
                victim_shards = {s for s, o in owners.items() if o == victim["worker"]}
                if not victim_shards:
                    results.append({"side": side, "measure": f"{kind} failover after SIGKILL", "value": None,
                                    "note": f"{victim['worker']} held no lease"})
                    continue
                killed_at = time.time() * 1000
                victim["child"].kill()
                victim["child"].wait()
                deadline = time.monotonic() + 420
                took = None
                while time.monotonic() < deadline:
                    seen = self.read_out([w["out"] for w in workers])
                    firsts = {}
                    for r in seen:
                        if r["shard"] in victim_shards and r["worker"] != victim["worker"] and r["ts_ms"] >= killed_at:
                            firsts[r["shard"]] = min(firsts.get(r["shard"], r["ts_ms"]), r["ts_ms"])
                    if len(firsts) == len(victim_shards):
                        took = max(firsts.values()) - killed_at
                        break
                    time.sleep(1)
                results.append({"side": side, "measure": f"{kind} failover after SIGKILL",
                                "value": None if took is None else round(took / 1000, 1),
                                "killed": victim["worker"], "shards": sorted(victim_shards)})
                time.sleep(20)
        finally:
            if producer:
                producer.kill()
                producer.wait()
            for w in workers:
                self.stop(w)
        return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", default=os.environ.get("KINESIS_MOCK_ENDPOINT"))
    p.add_argument("--ddb-endpoint", default=os.environ.get("DYNAMODB_ENDPOINT"))
    p.add_argument("--java-classpath", default=os.environ.get("JAVA_PEER_CLASSPATH"))
    p.add_argument("--consume", required=True, help="our consume binary")
    p.add_argument("--produce", required=True, help="our produce binary")
    p.add_argument("--records", type=int, default=200_000, help="records for the CPU measurement")
    p.add_argument("--rate", type=int, default=200, help="records/s during the failover measurement")
    p.add_argument("--idle-seconds", type=int, default=120, help="the idle cost window")
    p.add_argument("--only", choices=["cost", "cpu", "failover"], action="append",
                   help="run only these measurements (repeatable)")
    p.add_argument("--work-dir", default="/tmp")
    args = p.parse_args()
    if not (args.endpoint and args.ddb_endpoint and args.java_classpath):
        raise SystemExit("bench: needs the kinesis-mock, DynamoDB and Java peer environment (scripts/test.sh)")
    bench = Bench(args)
    rows = []
    for measure in args.only or ["cost", "cpu", "failover"]:
        for side in ("java", "ours"):
            result = getattr(bench, measure)(side)
            for row in result if isinstance(result, list) else [result]:
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| measure | Java KCL 3.x | ours |")
    print("|---|---|---|")
    measures = []
    for row in rows:
        if row["measure"] not in measures:
            measures.append(row["measure"])
    for measure in measures:
        cells = []
        for side in ("java", "ours"):
            values = [r["value"] for r in rows if r["measure"] == measure and r["side"] == side]
            cells.append(", ".join("n/a" if v is None else f"{v:,}" for v in values))
        print(f"| {measure} | {cells[0]} | {cells[1]} |")
    sys.exit(0)


if __name__ == "__main__":
    main()
