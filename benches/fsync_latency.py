#!/usr/bin/env python3
"""Latency distribution of the write a flush does on a file:// store: create a
file, write it, fsync it, fsync its directory. Prints JSON (milliseconds).

    python3 benches/fsync_latency.py DIR [--count N] [--size BYTES]

The produce path's tail latency cannot be lower than this write's tail: every
record waiting on a slow flush waits for it whole.
"""
import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=16384)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    data = os.urandom(a.size)
    ms = []
    for i in range(a.count):
        path = os.path.join(a.dir, f"f{i}")
        t = time.perf_counter()
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        d = os.open(a.dir, os.O_RDONLY)
        os.fsync(d)
        os.close(d)
        ms.append((time.perf_counter() - t) * 1000)
        os.unlink(path)
    ms.sort()
    q = lambda p: round(ms[min(len(ms) - 1, int(len(ms) * p))], 3)
    print(json.dumps({"count": a.count, "size": a.size, "latency_ms": {
        "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": round(ms[-1], 3),
        "mean": round(sum(ms) / len(ms), 3)}}))


if __name__ == "__main__":
    main()
