"""Object-store economy on a real S3 API (moto's server): PUTs per GB written
at several flush.interval settings with produce latency (without the journal,
so each flush is a PUT), and with the single-node journal (a PUT per upload),
then objects per GB and GETs per GB of a cold read before and after compaction
into segments.

    python3 benches/s3_economy.py            # needs tests/e2e/requirements.txt
    SLUICE_BIN=... python3 benches/s3_economy.py --duration 8 --rate 5000

Counts come from the broker's own object_store wrapper
(sluice_store_requests_total, sluice_store_bytes_total on /metrics), so they
are the requests the broker made, whatever the store.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import services  # noqa: E402
from conftest import free_port, sluice_bin  # noqa: E402


def metrics(http: str) -> dict:
    text = urllib.request.urlopen(http + "/metrics").read().decode()

    def total(pattern: str) -> float:
        return sum(float(m) for m in re.findall(pattern + r"\s+([0-9.e+]+)", text))

    return {
        "puts": total(r'sluice_store_requests_total\{op="put"\}'),
        "gets": total(r'sluice_store_requests_total\{op="get"\}'),
        "written": total(r'sluice_store_bytes_total\{direction="written"\}'),
        "read": total(r'sluice_store_bytes_total\{direction="read"\}'),
    }


def bench(bin: Path, env: dict, *args: str) -> dict:
    out = subprocess.run([str(bin), "bench", *args, "--json"], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def run(interval: str, args, s3, workdir: Path, compact: bool, journal: bool = False) -> dict:
    bin = sluice_bin()
    kafka, http_port = free_port(), free_port()
    http = f"http://127.0.0.1:{http_port}"
    bucket = s3.create_bucket()
    env = dict(os.environ, **s3.env())
    data = workdir / f"{interval}-{'compacted' if compact else 'flushed'}-{'journal' if journal else 'direct'}"
    data.mkdir()
    broker = subprocess.Popen(
        [str(bin), "serve", "--data-dir", str(data), "--kafka-listen", f"127.0.0.1:{kafka}",
         "--http-listen", f"127.0.0.1:{http_port}", "--store", f"s3://{bucket}/sluice",
         "--flush-interval", interval, "--tail-cache-bytes", "1048576",
         "--compaction-min-age", "1s" if compact else "1h", "--retention-check-interval", "2s",
         "--journal", "true" if journal else "false"],
        env=env, stderr=open(data / "broker.log", "w"))
    try:
        time.sleep(1.5)
        boot = f"127.0.0.1:{kafka}"
        m0 = metrics(http)
        produced = bench(bin, env, "produce", "--bootstrap", boot, "--topic", "t", "--rate", str(args.rate),
                         "--duration", f"{args.duration}s")
        m1 = metrics(http)
        gb_written = (m1["written"] - m0["written"]) / 1e9
        objects_flushed = s3.count_objects(bucket)
        if compact:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and s3.count_objects(bucket) > 2 * 8:
                time.sleep(1)
        objects = s3.count_objects(bucket)
        m2 = metrics(http)
        consumed = bench(bin, env, "consume", "--bootstrap", boot, "--topic", "t", "--from-beginning")
        m3 = metrics(http)
        gb_read = (m3["read"] - m2["read"]) / 1e9
        return {
            "flush_interval": interval,
            "journal": journal,
            "compacted": compact,
            "produce_p50_ms": produced["latency_ms"]["p50"],
            "produce_p99_ms": produced["latency_ms"]["p99"],
            "written_MB": round(gb_written * 1e3, 1),
            "puts_per_GB": round((m1["puts"] - m0["puts"]) / gb_written),
            "objects_per_GB_flushed": round(objects_flushed / gb_written),
            "objects_per_GB_now": round(objects / gb_written),
            "cold_read_gets_per_GB": round((m3["gets"] - m2["gets"]) / gb_read) if gb_read else None,
            "cold_read_MB_per_s": round(consumed["mb_per_sec"], 1),
        }
    finally:
        broker.kill()
        broker.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rate", type=int, default=5000, help="records/s of 1 KiB")
    args = ap.parse_args()
    s3 = services.s3()
    workdir = Path(tempfile.mkdtemp(prefix="sluice-s3-bench-"))
    try:
        rows = [run(i, args, s3, workdir, compact=False) for i in ("5ms", "50ms", "250ms")]
        rows.append(run("50ms", args, s3, workdir, compact=True))
        rows.append(run("0s", args, s3, workdir, compact=False, journal=True))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
