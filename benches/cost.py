"""What a cluster costs per GB: three brokers on PostgreSQL and an S3 API server (moto),
librdkafka producing and consuming through every broker, and the broker's own counts.

    python3 benches/cost.py --mb 1024           # needs tests/e2e/requirements.txt
    SLUICE_BIN=... python3 benches/cost.py --mb 256 --flush-interval 250ms

Reports, per GB produced:
- PUTs and GETs the brokers made (their object_store wrapper, sluice_store_requests_total),
  while producing, while consuming the data just produced, and for a cold read of it;
- bytes written to the store, and bytes stored once the background work settles
  (the bucket listed), per byte produced;
- bytes the brokers sent each other over TCP (sampled with `ss` on the brokers' sockets
  every half second; a broker replicates nothing to another, so this is zero unless
  something else crosses: MQTT forwarding, transaction markers).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import services  # noqa: E402
from conftest import Broker, sluice_bin  # noqa: E402
from s3_economy import metrics as broker_metrics  # noqa: E402


def metrics(brokers) -> dict:
    """The object-store counts of every broker, summed."""
    per_broker = [broker_metrics(b.http) for b in brokers]
    return {k: sum(m[k] for m in per_broker) for k in ("puts", "gets", "written", "read")}


class PeerTraffic:
    """Bytes sent on TCP sockets between broker processes, from `ss -tinp`: the largest
    `bytes_sent` seen per socket, summed. Sampled, so a connection opened and closed
    between two samples is missed; brokers keep their connections open."""

    def __init__(self, brokers) -> None:
        self.pids = {b.pid for b in brokers}
        self.ports = set()
        for b in brokers:
            self.ports |= {b.kafka_port, b.http_port, b.registry_port, b.mqtt_port}
        self.sent: dict[tuple, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True).stdout
        lines = out.splitlines()
        for head, info in zip(lines[::2], lines[1::2]):
            pid = re.search(r"pid=(\d+)", head)
            if not pid or int(pid.group(1)) not in self.pids:
                continue
            cols = head.split()
            local, peer = cols[2], cols[3]
            if int(peer.rsplit(":", 1)[1]) not in self.ports:
                continue
            sent = re.search(r"bytes_sent:(\d+)", info)
            if sent:
                key = (local, peer)
                self.sent[key] = max(self.sent.get(key, 0), int(sent.group(1)))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.5)

    def finish(self) -> tuple[int, int]:
        self.stop.set()
        self.thread.join()
        self.sample()
        return len(self.sent), sum(self.sent.values())


def bucket_bytes(s3, bucket: str) -> tuple[int, int]:
    n = size = 0
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            n += 1
            size += o["Size"]
    return n, size


def produce(bootstrap: str, topic: str, mb: int) -> tuple[int, float]:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5, "compression.type": "none"})
    value = b"x" * 1024
    n = mb * 1_000_000 // 1024
    failed = []
    started = time.monotonic()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value, key=str(i % 1000).encode(),
                          on_delivery=lambda err, _m: err and failed.append(err))
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    p.flush(120)
    if failed:
        raise SystemExit(f"{len(failed)} records failed: {failed[0]}")
    keys = sum(len(str(i % 1000)) for i in range(n))
    return n * 1024 + keys, time.monotonic() - started


def consume(bootstrap: str, topic: str, records: int) -> float:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"cost-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    seen, started = 0, time.monotonic()
    while seen < records and time.monotonic() - started < 300:
        for m in c.consume(10000, 1.0):
            if not m.error():
                seen += 1
    c.close()
    if seen < records:
        raise SystemExit(f"consumed {seen} of {records} records")
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024, help="MB of 1 KiB records to produce")
    ap.add_argument("--brokers", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--flush-interval", default="5ms")
    args = ap.parse_args()
    from confluent_kafka.admin import AdminClient, NewTopic

    pg, s3 = services.postgres(), services.s3()
    meta, bucket = pg.create_database(), s3.create_bucket()
    work = Path(tempfile.mkdtemp(prefix="sluice-cost-"))
    brokers = [
        Broker(sluice_bin(), work / f"node{i}", name=f"node{i}", node_id=i, extra_env=s3.env(), extra_args=[
            "--meta", meta, "--store", f"s3://{bucket}/sluice", "--flush-interval", args.flush_interval,
            "--compaction-min-age", "5s", "--retention-check-interval", "5s"])
        for i in range(1, args.brokers + 1)
    ]
    for b in brokers:
        b.start()
    try:
        bootstrap = ",".join(b.bootstrap for b in brokers)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("cost", args.partitions, 1)])["cost"].result(30)
        time.sleep(3)  # the controller spreads the partitions over the brokers
        peers = PeerTraffic(brokers)
        m0 = metrics(brokers)
        produced, produce_s = produce(bootstrap, "cost", args.mb)
        m1 = metrics(brokers)
        records = args.mb * 1_000_000 // 1024
        consume(bootstrap, "cost", records)
        m2 = metrics(brokers)
        # Background work (segment compaction, collection of the flush objects it empties).
        time.sleep(20)
        m3 = metrics(brokers)
        objects, stored = bucket_bytes(s3, bucket)
        # A cold read: every broker restarted, so no tail cache holds the data.
        for b in brokers:
            b.stop()
            b.start()
        time.sleep(3)
        m4 = metrics(brokers)
        consume(bootstrap, "cost", records)
        m5 = metrics(brokers)
        connections, peer_bytes = peers.finish()
        gb = produced / 1e9
        print(json.dumps({
            "brokers": args.brokers,
            "partitions": args.partitions,
            "flush_interval": args.flush_interval,
            "produced_MB": round(produced / 1e6, 1),
            "produce_MB_per_s": round(produced / 1e6 / produce_s, 1),
            "puts_per_GB_producing": round((m1["puts"] - m0["puts"]) / gb),
            "gets_per_GB_consuming_fresh": round((m2["gets"] - m1["gets"]) / gb),
            "puts_per_GB_background": round((m3["puts"] - m2["puts"]) / gb),
            "gets_per_GB_cold_read": round((m5["gets"] - m4["gets"]) / gb),
            "store_written_per_produced_byte": round((m3["written"] - m0["written"]) / produced, 3),
            "stored_per_produced_byte": round(stored / produced, 3),
            "objects_stored": objects,
            "broker_to_broker_connections": connections,
            "broker_to_broker_bytes": peer_bytes,
        }))
    finally:
        for b in brokers:
            if b.running():
                b.kill()


if __name__ == "__main__":
    main()
