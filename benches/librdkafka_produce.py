#!/usr/bin/env python3
"""Produce with librdkafka (confluent-kafka) and report throughput, and per-record
latency (produce() call to delivery report) when --rate is given.

Settings as in the produce targets: enable.idempotence=true, acks=all, 1 KiB
records, 8 partitions (the topic is created if missing). Prints one JSON object
with --json, else a line of text.

    python3 benches/librdkafka_produce.py --bootstrap 127.0.0.1:9092 --topic t --duration 10
    python3 benches/librdkafka_produce.py --bootstrap ... --topic t --rate 2000 --linger-ms 0
    python3 benches/librdkafka_produce.py --mock --topic t --rate 2000 --linger-ms 0
    python3 benches/librdkafka_produce.py --bootstrap ... --topic t --transactional --transaction-ms 100

--mock produces to librdkafka's own in-process mock broker (real TCP on loopback, no
disk, no fsync) instead: the p99 that this client reaches on this machine when the
broker costs next to nothing, the reference for a broker's p99.

--transactional sets a transactional.id and commits every --transaction-ms; the
report adds the transactions committed and the commit_transaction() latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def ensure_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=10)
    if topic in md.topics and md.topics[topic].error is None:
        return
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in futures.values():
        try:
            f.result(timeout=30)
        except Exception as e:  # noqa: BLE001 - already exists is fine
            if "TOPIC_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
                raise
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) > 0:
            return
        time.sleep(0.05)
    raise SystemExit(f"topic {topic} did not appear")


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def latency_summary(lat_ms: list[float]) -> dict:
    """Count, percentiles, max and mean of latencies in milliseconds (not empty)."""
    lat = sorted(lat_ms)
    return {
        "count": len(lat),
        "p50": round(percentile(lat, 0.5), 3),
        "p99": round(percentile(lat, 0.99), 3),
        "p999": round(percentile(lat, 0.999), 3),
        "max": round(lat[-1], 3),
        "mean": round(sum(lat) / len(lat), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("SLUICE_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds to produce")
    ap.add_argument("--rate", type=float, default=0.0, help="records/s; 0 = as fast as possible")
    ap.add_argument("--linger-ms", type=float, default=None, help="linger.ms (default: librdkafka's, 5)")
    ap.add_argument("--acks", default="all")
    ap.add_argument("--no-idempotence", action="store_true")
    ap.add_argument("--transactional", action="store_true", help="commit a transaction every --transaction-ms")
    ap.add_argument("--transaction-ms", type=float, default=100.0)
    ap.add_argument("--mock", action="store_true", help="librdkafka's in-process mock broker (test.mock.num.brokers)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    conf = {
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": not args.no_idempotence,
        "acks": args.acks,
        "compression.type": "none",
    }
    if args.mock:
        # The mock creates topics on first use (with its default partition count).
        conf["test.mock.num.brokers"] = 1
    else:
        ensure_topic(args.bootstrap, args.topic, args.partitions)
    if args.linger_ms is not None:
        conf["linger.ms"] = args.linger_ms
    if args.transactional:
        if args.rate > 0 or args.no_idempotence:
            raise SystemExit("--transactional runs as fast as possible, idempotent")
        conf["transactional.id"] = f"librdkafka-bench-{os.getpid()}"
    # librdkafka's own request round-trip times (Produce request sent to
    # response read, per stats window), free of this script's callback delay.
    rtt_windows: list[dict] = []
    if args.rate > 0:
        def on_stats(js: str) -> None:
            st = json.loads(js)
            for b in st.get("brokers", {}).values():
                rtt = b.get("rtt", {})
                if b.get("nodeid", -1) >= 0 and rtt.get("cnt", 0) > 0:
                    rtt_windows.append(rtt)

        conf["statistics.interval.ms"] = 1000
        conf["stats_cb"] = on_stats
    value = os.urandom(args.record_size)

    delivered = 0
    errors = 0
    first_error = None
    latencies: list[float] = []

    def on_delivery(err, _msg):
        nonlocal delivered, errors, first_error
        if err is None:
            delivered += 1
        else:
            errors += 1
            first_error = first_error or str(err)

    def timed(t0: float):
        def cb(err, _msg):
            on_delivery(err, _msg)
            if err is None:
                latencies.append(time.perf_counter() - t0)

        return cb

    if args.rate <= 0:
        # Only failed deliveries call back: a Python callback for every record would make
        # this script's thread, not librdkafka or the broker, the bound (it ran at 100 %
        # of a core at 190,000 records/s). Delivered = sent - failed - still queued.
        conf["delivery.report.only.error"] = True
        conf["on_delivery"] = on_delivery
    p = Producer(conf)

    # Warm up: metadata and producer id (idempotence) before the clock starts.
    if args.transactional:
        p.init_transactions(30)
        p.begin_transaction()
    p.produce(args.topic, value)
    p.flush(30)
    commits: list[float] = []
    if args.transactional:
        p.commit_transaction(30)
        p.begin_transaction()
    delivered = 0

    produce = p.produce
    poll = p.poll
    topic = args.topic
    sent = 0
    start = time.perf_counter()
    end = start + args.duration
    if args.rate > 0:
        interval = 1.0 / args.rate
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due = start + sent * interval
            if due > now:
                # Serve delivery reports while waiting for the next send time.
                poll(min(due - now, 0.001))
                continue
            produce(topic, value, on_delivery=timed(time.perf_counter()))
            sent += 1
            poll(0)
    else:
        txn_every = args.transaction_ms / 1000
        txn_start = start
        while True:
            for _ in range(1000):
                try:
                    produce(topic, value)
                    sent += 1
                except BufferError:
                    poll(0.005)
            poll(0)
            now = time.perf_counter()
            if args.transactional and (now - txn_start >= txn_every or now >= end):
                # commit_transaction() flushes first: time only the commit itself.
                p.flush(60)
                t0 = time.perf_counter()
                p.commit_transaction(60)
                commits.append(time.perf_counter() - t0)
                txn_start = time.perf_counter()
                if txn_start >= end:
                    break
                p.begin_transaction()
            if now >= end:
                break
    remaining = p.flush(60)
    elapsed = time.perf_counter() - start
    if args.rate <= 0:
        delivered = sent - errors - remaining
    out = {
        "client": "librdkafka " + __import__("confluent_kafka").libversion()[0],
        "records": delivered,
        "bytes": delivered * args.record_size,
        "elapsed_s": round(elapsed, 3),
        "records_per_sec": round(delivered / elapsed, 1),
        "mb_per_sec": round(delivered * args.record_size / 1e6 / elapsed, 3),
        "errors": errors + remaining,
        "settings": {
            "enable.idempotence": not args.no_idempotence,
            "acks": args.acks,
            "linger.ms": args.linger_ms if args.linger_ms is not None else "default",
            "record_size": args.record_size,
            "partitions": args.partitions,
            "rate": args.rate,
            "mock_broker": args.mock,
            "transactional": args.transactional,
        },
    }
    if args.transactional:
        out["settings"]["transaction_ms"] = args.transaction_ms
        out["transactions"] = len(commits)
        if commits:
            out["commit_latency_ms"] = latency_summary([x * 1000 for x in commits])
    if first_error:
        out["first_error"] = first_error
    if latencies:
        out["latency_ms"] = latency_summary([x * 1000 for x in latencies])
    if rtt_windows:
        # Skip the warm-up window; each window's percentiles are in µs.
        ws = rtt_windows[1:] or rtt_windows
        p99s = sorted(w["p99"] / 1000 for w in ws)
        out["librdkafka_rtt_ms"] = {
            "windows": len(ws),
            "median_window_p50": round(sorted(w["p50"] / 1000 for w in ws)[len(ws) // 2], 3),
            "median_window_p99": round(p99s[len(p99s) // 2], 3),
            "max_window_p99": round(p99s[-1], 3),
            "max": round(max(w["max"] for w in ws) / 1000, 3),
        }
    if args.json:
        print(json.dumps(out))
    else:
        line = f"librdkafka: {delivered} records in {elapsed:.2f} s: {out['records_per_sec']:.1f} records/s, {out['mb_per_sec']:.2f} MB/s"
        if latencies:
            l = out["latency_ms"]
            line += f"; latency ms p50 {l['p50']} p99 {l['p99']} p99.9 {l['p999']} max {l['max']}"
        if commits:
            l = out["commit_latency_ms"]
            line += f"; {len(commits)} transactions, commit ms p50 {l['p50']} p99 {l['p99']} max {l['max']}"
        if "librdkafka_rtt_ms" in out:
            line += f"; librdkafka rtt ms {out['librdkafka_rtt_ms']}"
        print(line)
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
