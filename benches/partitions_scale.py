#!/usr/bin/env python3
"""Issue 5's partition-count targets against a fresh broker: resident memory with
1,000 idle partitions, then a 10,000-partition topic and how fast Metadata for
every partition is answered. Prints one JSON object.

    python3 benches/partitions_scale.py --bootstrap HOST:PORT --pid BROKER_PID
        [--topics 10] [--partitions 100] [--big 10000] [--repeats 10]

Metadata is timed two ways: a Metadata v1 request for all topics on a plain
socket (the broker's answer, from the request's first byte to the response's
last), and confluent-kafka's `list_topics()` (the same plus librdkafka's and
Python's decoding). Both check that every partition is in the answer.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import time

from confluent_kafka.admin import AdminClient, NewTopic


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} for pid {pid}")


def create(admin: AdminClient, topics: list[NewTopic]) -> None:
    for name, fut in admin.create_topics(topics, operation_timeout=60, request_timeout=120).items():
        fut.result()  # raises on any error


class Reader:
    def __init__(self, buf: bytes):
        self.b, self.i = buf, 0

    def take(self, fmt: str):
        v = struct.unpack_from(fmt, self.b, self.i)
        self.i += struct.calcsize(fmt)
        return v[0]

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.b[self.i:self.i + n].decode()
        self.i += n
        return s


def metadata_v1(sock: socket.socket, correlation: int) -> tuple[int, int, int]:
    """Sends Metadata v1 for all topics; returns this script's partitions in the answer,
    how many of them have a leader, and the response's size in bytes."""
    client = b"partitions-scale"
    body = struct.pack(">hhih", 3, 1, correlation, len(client)) + client + struct.pack(">i", -1)
    sock.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    r = Reader(recv_exact(sock, size))
    if r.take(">i") != correlation:
        raise SystemExit("Metadata answer with the wrong correlation id")
    for _ in range(r.take(">i")):  # brokers
        r.take(">i"), r.string(), r.take(">i"), r.string()
    r.take(">i")  # controller
    partitions = led = 0
    for _ in range(r.take(">i")):  # topics
        err = r.take(">h")
        name = r.string()
        if err:
            raise SystemExit(f"Metadata error {err} for topic {name}")
        r.take(">b")
        ours = name == "wide" or name.startswith("idle-")
        for _ in range(r.take(">i")):
            err, _, leader = r.take(">h"), r.take(">i"), r.take(">i")
            led += ours and err == 0 and leader >= 0
            for _ in range(2):  # replicas, isr
                n = r.take(">i")
                r.i += 4 * n
            partitions += ours
    return partitions, led, size + 4


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("broker closed the connection")
        buf += chunk
    return bytes(buf)


def summary(ms: list[float]) -> dict:
    return {"p50": round(statistics.median(ms), 3), "max": round(max(ms), 3), "min": round(min(ms), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--topics", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=100)
    ap.add_argument("--big", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    out: dict = {"rss_start_mib": round(status_kb(a.pid, "VmRSS") / 1024, 1)}

    idle = [NewTopic(f"idle-{i}", num_partitions=a.partitions, replication_factor=1) for i in range(a.topics)]
    create(admin, idle)
    time.sleep(2)  # let the creation's work settle before reading memory
    out["idle_partitions"] = a.topics * a.partitions
    out["rss_idle_mib"] = round(status_kb(a.pid, "VmRSS") / 1024, 1)

    started = time.perf_counter()
    create(admin, [NewTopic("wide", num_partitions=a.big, replication_factor=1)])
    out["create_big_s"] = round(time.perf_counter() - started, 3)
    total = a.topics * a.partitions + a.big
    out["partitions_total"] = total

    host, port = a.bootstrap.rsplit(":", 1)
    raw = []
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Creation returns before every partition has a leader, as in Kafka: wait for them.
        correlation = 0
        while True:
            correlation += 1
            n, led, _ = metadata_v1(sock, correlation)
            if n == total and led == total:
                break
            if time.perf_counter() - started > 60:
                raise SystemExit(f"after 60 s Metadata lists {n} of {total} partitions, {led} with a leader")
            time.sleep(0.05)
        out["all_led_s"] = round(time.perf_counter() - started, 3)
        for i in range(a.repeats):
            correlation += 1
            t = time.perf_counter()
            n, led, size = metadata_v1(sock, correlation)
            raw.append((time.perf_counter() - t) * 1000)
            if (n, led) != (total, total):
                raise SystemExit(f"Metadata listed {n} partitions ({led} with a leader), expected {total}")
    out["metadata_bytes"] = size
    out["metadata_ms"] = summary(raw)

    client = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        md = admin.list_topics(timeout=30)
        client.append((time.perf_counter() - t) * 1000)
        n = sum(len(md.topics[x].partitions) for x in md.topics if x == "wide" or x.startswith("idle-"))
        if n != total:
            raise SystemExit(f"list_topics listed {n} partitions, expected {total}")
    out["list_topics_ms"] = summary(client)
    out["rss_after_mib"] = round(status_kb(a.pid, "VmRSS") / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
