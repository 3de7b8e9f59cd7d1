"""Cold reads through an S3 API server that answers each GET slowly and scales with the
requests in flight, as S3 does (s3s-fs, built by benches/s3s_fs_build.sh).

`sluice bench produce` writes for a while into the store, the broker stops cleanly and
starts again (its tail cache empty), and `sluice bench consume --from-beginning` reads
everything back. The reference, measured in the same run: the server's own rate for
1 MiB ranged GETs from Python (boto3) at 8 and 16 in flight.

    python3 benches/s3_cold_read.py            # needs tests/e2e/requirements.txt
    SLUICE_BIN=... python3 benches/s3_cold_read.py --duration 8

Request counts come from the broker's object_store wrapper (/metrics).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from conftest import free_port, sluice_bin, wait_until  # noqa: E402

KEYS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true"}


def metric(http: str, pattern: str) -> float:
    text = urllib.request.urlopen(http + "/metrics").read().decode()
    return sum(float(m) for m in re.findall(pattern + r"\s+([0-9.e+]+)", text))


def bench(bin: Path, env: dict, *args: str) -> dict:
    out = subprocess.run([str(bin), "bench", *args, "--json"], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def server_rate(endpoint: str, bucket: str, key: str, size: int, in_flight: int, gets: int = 200) -> float:
    """MB/s of 1 MiB ranged GETs of one object, `in_flight` at a time, one client per thread."""
    import boto3

    local = threading.local()

    def get(i: int) -> int:
        if not hasattr(local, "c"):
            local.c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                                   aws_secret_access_key="test", region_name="us-east-1")
        start = (i << 20) % max(1, size - (1 << 20))
        body = local.c.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + (1 << 20) - 1}")["Body"]
        return len(body.read())

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        total = sum(pool.map(get, range(gets)))
    return total / (time.monotonic() - started) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8, help="seconds of produce")
    args = ap.parse_args()
    s3s_fs = subprocess.run([str(ROOT / "benches" / "s3s_fs_build.sh")], capture_output=True, text=True,
                            check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="sluice-s3-cold-"))
    s3_port, kafka, http_port = free_port(), free_port(), free_port()
    endpoint, http, boot = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{http_port}", f"127.0.0.1:{kafka}"
    (work / "s3" / "bench").mkdir(parents=True)
    server = subprocess.Popen([s3s_fs, "--host", "127.0.0.1", "--port", str(s3_port), "--access-key", "test",
                               "--secret-key", "test", str(work / "s3")], stdout=subprocess.DEVNULL,
                              stderr=open(work / "s3s-fs.log", "w"))
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, **KEYS)
    cmd = [str(sluice_bin()), "serve", "--data-dir", str(work / "data"), "--kafka-listen", boot,
           "--http-listen", f"127.0.0.1:{http_port}", "--store", "s3://bench/sluice"]
    broker = None

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stderr=open(work / "broker.log", "a"))
        wait_until(lambda: urllib.request.urlopen(http + "/health").status == 200, 60, what="broker")
        return proc

    try:
        broker = start()
        produced = bench(sluice_bin(), env, "produce", "--bootstrap", boot, "--topic", "cold",
                         "--duration", f"{args.duration}s")
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=60)
        restart = time.monotonic()
        broker = start()
        restart_s = time.monotonic() - restart
        gets0 = metric(http, r'sluice_store_requests_total\{op="get"\}')
        consumed = bench(sluice_bin(), env, "consume", "--bootstrap", boot, "--topic", "cold", "--from-beginning")
        gets = metric(http, r'sluice_store_requests_total\{op="get"\}') - gets0
        read = metric(http, r'sluice_store_bytes_total\{direction="read"\}')
        objects = sorted((work / "s3" / "bench" / "sluice" / "data").iterdir(), key=lambda p: p.stat().st_size)
        largest = objects[-1]
        reference = {n: round(server_rate(endpoint, "bench", f"sluice/data/{largest.name}", largest.stat().st_size, n))
                     for n in (8, 16)}
        print(json.dumps({
            "produce_MB_per_s": round(produced["mb_per_sec"], 1),
            "restart_s": round(restart_s, 2),
            "cold_read_MB_per_s": round(consumed["mb_per_sec"], 1),
            "cold_read_MB": round(read / 1e6),
            "cold_read_gets_per_GB": round(gets / (read / 1e9)) if read else None,
            "read_aheads": metric(http, "sluice_log_read_aheads_total"),
            "reads_answered_ahead": metric(http, "sluice_log_read_ahead_hits_total"),
            "server_MB_per_s_at_in_flight": reference,
        }))
    finally:
        for proc in (broker, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
