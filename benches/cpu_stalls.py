#!/usr/bin/env python3
"""How steady this machine's CPU is: times a fixed chunk of work (about 50 µs)
over and over, with a short sleep between chunks, and reports how often a chunk
took more than twice the median, and in how many 100 ms windows most chunks did.
Prints JSON.

    python3 benches/cpu_stalls.py [--seconds S]

On the 2-core VMs these benchmarks run on, the CPU runs at a fifth of its speed
for about 100 ms every 1.3-1.8 s, idle or not. Every
flush in such a window takes five times as long, so this is the floor under the
produce path's p99, as fsync_latency.py is for the disk.
"""
import argparse
import json
import statistics
import time


def chunk(n: int) -> int:
    x = 1
    for i in range(n):
        x = (x * 6364136223846793005 + i) & 0xFFFFFFFFFFFFFFFF
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    # Size the chunk to about 50 µs on this machine.
    n = 100
    while True:
        t = time.perf_counter()
        chunk(n)
        if time.perf_counter() - t > 50e-6:
            break
        n *= 2
    samples = []  # (start s, duration µs)
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < a.seconds:
        chunk(n)
        samples.append((now - start, (time.perf_counter() - now) * 1e6))
        time.sleep(0.0002)
    durations = sorted(d for _, d in samples)
    median = statistics.median(durations)
    slow = [(t, d) for t, d in samples if d > 2 * median]
    windows: dict[int, list[float]] = {}
    for t, d in samples:
        windows.setdefault(int(t * 10), []).append(d)
    # A window is slow when a quarter of its chunks are (a steady machine: a few per cent).
    slow_windows = sum(1 for ds in windows.values() if sum(d > 2 * median for d in ds) * 4 >= len(ds))
    q = lambda p: round(durations[min(len(durations) - 1, int(len(durations) * p))], 1)
    print(json.dumps({
        "seconds": round(a.seconds, 1),
        "chunks": len(samples),
        "chunk_us": {"p50": round(median, 1), "p99": q(0.99), "p999": q(0.999), "max": round(durations[-1], 1)},
        "slow_fraction": round(len(slow) / len(samples), 4),
        "slow_windows": slow_windows,
        "windows": len(windows),
    }))


if __name__ == "__main__":
    main()
