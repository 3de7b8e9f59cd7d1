#!/usr/bin/env python3
"""The broker's own view of a benchmark step's tail, from its Prometheus histograms.

    broker_tail.py snapshot URL > before.txt     # before the step
    broker_tail.py diff URL before.txt           # after it: JSON on stdout

For the step alone (the difference of the two scrapes) it reports how many Produce
requests the broker answered, and how many took over 5 ms, and the same for the
journal's write and sync (`sluice_log_flush_stage_seconds{stage="journal_sync"}`,
the disk's part alone). Beside a client's p99 this tells whether the disk's syncs
or the rest of the broker made the slow answers.
"""

import json
import re
import sys
import urllib.request

# (metric, label) pairs to report, under a short name.
SERIES = {
    "produce": ("sluice_kafka_request_seconds_bucket", 'api="Produce"'),
    "journal_sync": ("sluice_log_flush_stage_seconds_bucket", 'stage="journal_sync"'),
}
SLOW_S = 0.005


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def buckets(text: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts per series: name -> {upper bound: count}."""
    out: dict[str, dict[float, float]] = {name: {} for name in SERIES}
    for line in text.splitlines():
        m = re.match(r'(\w+)\{(.*)le="([^"]+)"\} (\S+)$', line)
        if not m:
            continue
        metric, labels, le, value = m.groups()
        for name, (want, label) in SERIES.items():
            if metric == want and label in labels:
                out[name][float("inf") if le == "+Inf" else float(le)] = float(value)
    return out


def summary(before: dict[float, float], after: dict[float, float]) -> dict:
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    if not delta:
        return {"count": 0, "over_5ms": 0}
    total = delta[float("inf")]
    within = delta.get(SLOW_S)
    if within is None:
        raise SystemExit(f"no {SLOW_S} s bucket in the broker's histogram")
    return {"count": int(total), "over_5ms": int(total - within)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "snapshot":
        sys.stdout.write(scrape(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        with open(sys.argv[3]) as f:
            before = buckets(f.read())
        after = buckets(scrape(sys.argv[2]))
        print(json.dumps({name: summary(before[name], after[name]) for name in SERIES}))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
