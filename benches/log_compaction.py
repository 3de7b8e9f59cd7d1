#!/usr/bin/env python3
"""Log compaction throughput and memory, against the machine's durable write rate.

Starts a fresh `sluice serve` in a temporary directory, writes a log with librdkafka
(idempotent, acks=all) to a `cleanup.policy=delete` topic, then switches the topic to
`compact` and times the cleaner's first pass from the broker's log line
("cleaned compacted partitions ... bytes_read elapsed_ms"). Reports:

- log MB/s: bytes of log cleaned per second of the pass (the log is read twice: once for
  the key map, once to rewrite it);
- MB/s per core: the same bytes per CPU second the broker spent in the pass;
- the broker's RSS before and its peak during the pass (`--compaction-memory` bounds the
  key map; the rest is the read buffers of a 16 MiB rewrite group and the tail cache);
- the reference: `dd bs=1M count=256 conv=fdatasync` in the same directory.

    benches/log_compaction.py --bin target/release/sluice [--mb 256] [--keys 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dd_mb_s(directory: Path) -> float:
    out = subprocess.run(["dd", "if=/dev/zero", f"of={directory / 'dd.bin'}", "bs=1M", "count=256",
                          "conv=fdatasync"], capture_output=True, text=True, check=True).stderr
    (directory / "dd.bin").unlink()
    secs = float(re.search(r"copied, ([0-9.]+) s", out).group(1))
    return 256 * 1048576 / secs / 1e6


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("SLUICE_BIN", "target/release/sluice"))
    ap.add_argument("--mb", type=int, default=256, help="log size to write (MB)")
    ap.add_argument("--keys", type=int, default=100_000, help="distinct keys")
    ap.add_argument("--value-bytes", type=int, default=200)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--compaction-memory", type=int, default=128 << 20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

    with tempfile.TemporaryDirectory(prefix="sluice-compaction-") as tmp:
        tmp = Path(tmp)
        reference = dd_mb_s(tmp)
        port, log_path = free_port(), tmp / "broker.log"
        with open(log_path, "w") as log:
            broker = subprocess.Popen(
                [args.bin, "serve", "--data-dir", str(tmp / "data"), "--kafka-listen", f"127.0.0.1:{port}",
                 "--advertise", f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{free_port()}",
                 "--registry-listen", f"127.0.0.1:{free_port()}", "--mqtt-listen", f"127.0.0.1:{free_port()}",
                 "--retention-check-interval", "1s", "--compaction-memory", str(args.compaction_memory)],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            bootstrap = f"127.0.0.1:{port}"
            deadline = time.time() + 30
            while "sluice is serving" not in log_path.read_text():
                if time.time() > deadline or broker.poll() is not None:
                    sys.exit("the broker did not start:\n" + log_path.read_text())
                time.sleep(0.1)
            admin = AdminClient({"bootstrap.servers": bootstrap})
            topic = "bench-compaction"
            admin.create_topics([NewTopic(topic, args.partitions, 1, config={
                "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"})])[topic].result(20)
            p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                          "batch.size": 1 << 20, "compression.type": "none"})
            value = b"v" * args.value_bytes
            n = args.mb * 1_000_000 // (args.value_bytes + 20)
            for i in range(n):
                while True:
                    try:
                        p.produce(topic, key=b"key-%09d" % (i % args.keys), value=value)
                        break
                    except BufferError:
                        p.poll(0.05)
            assert p.flush(120) == 0
            time.sleep(0.5)
            for part in range(args.partitions):  # each partition's last batch stays dirty
                p.produce(topic, key=b"end", value=b"end", partition=part)
            assert p.flush(30) == 0
            time.sleep(1.5)

            rss_before, peak, stop = rss_bytes(broker.pid), [0], threading.Event()

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_bytes(broker.pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            cpu0 = cpu_seconds(broker.pid)
            res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
                ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([res])[res].result(20)
            line, deadline = None, time.time() + 600
            while line is None and time.time() < deadline:
                line = re.search(r"cleaned compacted partitions.*", log_path.read_text())
                time.sleep(0.2)
            cpu = cpu_seconds(broker.pid) - cpu0
            stop.set()
            sampler.join()
            if line is None:
                sys.exit("no cleaning pass in 600 s")
            fields = dict(re.findall(r"(\w+)=(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", line.group(0))))
            log_bytes = int(fields["bytes_read"]) / 2
            secs = int(fields["elapsed_ms"]) / 1000
            result = {
                "log_mb": round(log_bytes / 1e6, 1),
                "keys": args.keys,
                "records_removed": int(fields["records_removed"]),
                "bytes_written_mb": round(int(fields["bytes_written"]) / 1e6, 1),
                "pass_s": secs,
                "log_mb_s": round(log_bytes / 1e6 / secs, 1),
                "log_mb_s_per_core": round(log_bytes / 1e6 / cpu, 1) if cpu > 0 else None,
                "broker_cpu_s": round(cpu, 2),
                "rss_before_mb": round(rss_before / 1e6),
                "rss_peak_mb": round(peak[0] / 1e6),
                "compaction_memory_mb": round(args.compaction_memory / 1e6),
                "reference_dd_fdatasync_mb_s": round(reference, 1),
            }
            result["ratio_to_reference"] = round(result["log_mb_s"] / reference, 2)
        finally:
            broker.kill()
            broker.wait()
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:32} {v}")


if __name__ == "__main__":
    main()
