#!/usr/bin/env python3
"""Durable produce throughput with librdkafka's own C benchmark tool.

Runs librdkafka's examples/rdkafka_performance (built by
benches/rdkafka_performance_build.sh) as a producer: 1 KiB records, acks=all,
enable.idempotence=true, librdkafka's defaults otherwise, into a topic of 8
partitions (created here). Unlike benches/librdkafka_produce.py, no Python runs
per record, so on these two cores the client leaves the broker more CPU.
Prints one JSON object, with the client's own view of its Produce requests (from
its statistics, once a second): the round trip and how many were in flight. With
--mock it produces to librdkafka's in-process mock broker instead: the C client's
own ceiling here.

The idempotent producer keeps at most one Produce request in flight per partition
(librdkafka's `RD_KAFKA_IDEMP_MAX_INFLIGHT - rktp_msgs_inflight` in
rdkafka_broker.c counts messages, not requests), and its sticky partitioner fills one
partition at a time, so its throughput is about one batch (up to batch.size, 1 MB)
per round trip.

With --rate R --duration S it produces R records/s for S seconds instead, with
linger.ms 0 (as benches/librdkafka_produce.py's --rate), in the tool's latency mode
(`-l -A FILE`: each record carries its send time, and the delivery report callback
writes its latency, so no Python runs per record here either), and reports latency
percentiles. The first second's records are left out: they wait for the metadata and
the producer id.

    python3 benches/rdkafka_performance.py --bin PATH --bootstrap 127.0.0.1:9092 --topic t --count 3000000
    python3 benches/rdkafka_performance.py --bin PATH --mock --topic t --count 3000000
    python3 benches/rdkafka_performance.py --bin PATH --bootstrap 127.0.0.1:9092 --topic t --rate 2000 --duration 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from librdkafka_produce import ensure_topic, latency_summary  # noqa: E402

# rdkafka_performance's summary line, e.g. "% 500000 messages produced (512000000 bytes),
# 500000 delivered (offset 62529, 0 failed) in 4389ms: 113917 msgs/s and 116.65 MB/s, ..."
SUMMARY = re.compile(
    r"% (\d+) messages produced \((\d+) bytes\), (\d+) delivered \(offset -?\d+, (\d+) failed\) in (\d+)ms: "
    r"(\d+) msgs/s and ([\d.]+) MB/s"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="rdkafka_performance binary")
    ap.add_argument("--bootstrap")
    ap.add_argument("--mock", action="store_true", help="librdkafka's mock broker instead of --bootstrap")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--count", type=int, default=3_000_000)
    ap.add_argument("--rate", type=int, default=0, help="records/s, with --duration: latency mode")
    ap.add_argument("--duration", type=int, default=20, help="seconds, with --rate")
    args = ap.parse_args()
    if args.rate > 0:
        args.count = args.rate * args.duration
    cmd = [args.bin, "-P", "-t", args.topic, "-s", str(args.record_size), "-c", str(args.count), "-a", "-1",
           "-X", "enable.idempotence=true", "-i", "600000", "-T", "1000"]
    latency_file = None
    if args.rate > 0:
        latency_file = tempfile.NamedTemporaryFile(prefix="rdkafka-latency-", suffix=".txt")
        cmd += ["-X", "linger.ms=0", "-r", str(args.rate), "-l", "-A", latency_file.name]
    if args.mock:
        # The mock creates the topic on first use, with its default partition count.
        cmd += ["-X", "test.mock.num.brokers=1"]
    else:
        ensure_topic(args.bootstrap, args.topic, args.partitions)
        cmd += ["-b", args.bootstrap]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [m for m in (SUMMARY.search(line) for line in out.stdout.splitlines()) if m]
    if out.returncode != 0 or not lines:
        sys.exit(f"rdkafka_performance failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    produced, nbytes, delivered, failed, ms, rate, mbs = lines[-1].groups()
    if int(delivered) != args.count or int(failed):
        sys.exit(f"rdkafka_performance delivered {delivered} of {args.count} records, {failed} failed")
    result = {
        "tool": "librdkafka examples/rdkafka_performance",
        "command": " ".join(cmd),
        "records": int(delivered),
        "bytes": int(nbytes),
        "elapsed_s": int(ms) / 1000,
        "records_per_sec": int(delivered) / (int(ms) / 1000),
        "mb_per_sec": int(nbytes) / 1e6 / (int(ms) / 1000),
        "reported_mb_per_sec": float(mbs),
    }
    trips = round_trips(out.stdout + out.stderr)
    if trips:
        result["round_trip"] = trips
    if latency_file:
        # Microseconds, one line per delivered record, in the order they were delivered.
        with open(latency_file.name) as f:
            micros = [int(line) for line in f if line.strip()]
        if len(micros) != args.count:
            sys.exit(f"rdkafka_performance wrote {len(micros)} latencies for {args.count} records")
        result["rate"] = args.rate
        result["latency_ms"] = latency_summary([m / 1000 for m in micros[args.rate:]])
    print(json.dumps(result))


def round_trips(output: str) -> dict | None:
    """Medians over the statistics windows (the first, warming up, skipped) of the
    broker's Produce round trip as the client measures it, and of the requests waiting
    for their response when the window closed."""
    windows = []
    for line in output.splitlines():
        start = line.find('{ "name"')
        if start < 0:
            continue
        try:
            stats = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        brokers = [b for b in stats.get("brokers", {}).values() if b.get("nodeid", -1) >= 0 and b["rtt"]["cnt"]]
        if brokers:
            b = max(brokers, key=lambda b: b["rtt"]["cnt"])
            windows.append((b["rtt"]["avg"] / 1000, b["rtt"]["p99"] / 1000, b["waitresp_cnt"]))
    windows = windows[1:] or windows
    if not windows:
        return None
    return {
        "windows": len(windows),
        "median_avg_ms": round(statistics.median(w[0] for w in windows), 3),
        "median_p99_ms": round(statistics.median(w[1] for w in windows), 3),
        "median_in_flight": statistics.median(w[2] for w in windows),
    }


if __name__ == "__main__":
    main()
