#!/usr/bin/env python3
"""The partition-count targets against a fresh broker: resident memory with
1,000 idle partitions, then a 10,000-partition topic and how fast Metadata for
every partition is answered. Prints one JSON object.

    python3 benches/partitions_scale.py --bootstrap HOST:PORT --pid BROKER_PID
        [--topics 10] [--partitions 100] [--big 10000] [--repeats 10]

Metadata is timed two ways: a Metadata v4 request for all topics on a plain
socket (tests/e2e/conftest.py's `Wire`; the broker's answer, from sending the
request to having read the response whole, decoding not included), and
confluent-kafka's `list_topics()` (the same plus librdkafka's and Python's
decoding). Both check that every partition is in the answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from conftest import Wire  # noqa: E402


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} for pid {pid}")


def create(admin: AdminClient, topics: list[NewTopic]) -> None:
    for name, fut in admin.create_topics(topics, operation_timeout=60, request_timeout=120).items():
        fut.result()  # raises on any error


def metadata(wire: Wire) -> tuple[int, int, float]:
    """Metadata for all topics: this script's partitions in the answer, how many of them
    have a leader, and the round trip in ms (sent to read whole, not decoded)."""
    topics = wire.metadata_partitions(None, allow_auto_create=False)
    ours = [parts for name, (err, parts) in topics.items() if name == "wide" or name.startswith("idle-")]
    for name, (err, _) in topics.items():
        if err:
            raise SystemExit(f"Metadata error {err} for topic {name}")
    led = sum(err == 0 and leader >= 0 for parts in ours for _, err, leader in parts)
    return sum(map(len, ours)), led, wire.last_round_trip_s * 1000


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

    raw = []
    with Wire(a.bootstrap, timeout=30, client_id="partitions-scale") as wire:
        # Creation returns before every partition has a leader, as in Kafka: wait for them.
        while True:
            n, led, _ = metadata(wire)
            if n == total and led == total:
                break
            if time.perf_counter() - started > 60:
                raise SystemExit(f"after 60 s Metadata lists {n} of {total} partitions, {led} with a leader")
            time.sleep(0.05)
        out["all_led_s"] = round(time.perf_counter() - started, 3)
        for _ in range(a.repeats):
            n, led, ms = metadata(wire)
            raw.append(ms)
            if (n, led) != (total, total):
                raise SystemExit(f"Metadata listed {n} partitions ({led} with a leader), expected {total}")
        out["metadata_bytes"] = wire.last_response_bytes
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
