#!/usr/bin/env python3
"""Print the table of benches/run.sh from its result directories (one per run).

Every figure is shown with its reference from the same run and the ratio;
with several runs, the value and the ratio are medians over the runs (the
median ratio is the median of the per-run ratios), and each run's figure is
listed. Targets are the project's performance targets (docs/benchmarks.md).

    python3 benches/summarize.py [--quick] [--out FILE] RESULTS_DIR...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

STEPS = ["machine", "dd", "dd_long", "dsync", "fsync", "journal_floor", "cpu", "rdkafka_mock_2000", "rdkafka_mock", "rdkafka_c_mock", "rdkafka_c_mock_2000", "produce", "consume", "produce_2000", "e2e_2000", "produce_txn", "rdkafka",
         "rdkafka_consume", "rdkafka_2000", "rdkafka_txn", "rdkafka_c", "rdkafka_c_2000", "consume_restart", "broker", "partitions"]
MQTT_CLIENTS = [200, 1000, 10000]
STEPS += [f"mqtt_{server}_{n}" for n in MQTT_CLIENTS for server in ("mosquitto", "sluice")]


def load(d: str) -> dict:
    r = {}
    for n in STEPS:
        p = os.path.join(d, n + ".json")
        r[n] = json.load(open(p)) if os.path.exists(p) else None
        # The broker's histograms over the step (benches/broker_tail.py), where it ran.
        p = os.path.join(d, n + ".broker.json")
        r[n + ".broker"] = json.load(open(p)) if os.path.exists(p) else None
    return r


def dsync_ms(r: dict) -> float | None:
    x = r["dsync"]
    if not x:
        return None
    writes = x["bytes"] / 4096
    return x["elapsed_s"] / writes * 1000 if writes else None


class Row:
    """One figure: per-run values and ratios to a same-run reference."""

    def __init__(self, label, unit, ref_label="", target=None, kind="ratio"):
        self.label, self.unit, self.ref_label, self.target, self.kind = label, unit, ref_label, target, kind
        self.values: list[float] = []
        self.x_dd: list[float] = []
        self.x_dd_long: list[float] = []
        self.ratios: list[float] = []
        self.detail: list[str] = []

    def median(self, xs):
        return statistics.median(xs) if xs else None

    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.kind == "ratio":
            m = self.median(self.ratios)
            if m is None:
                return ""
            if m >= self.target:
                return "met"
            # The 1 GiB dd swings with the host's write cache: say so when
            # the sustained (4 GiB) reference would be met.
            m4 = self.median(self.x_dd_long)
            if self.ref_label == "dd" and m4 is not None and m4 >= self.target:
                return "met vs dd 4G only"
            return "NOT met"
        m = self.median(self.values)
        return "" if m is None else ("met" if m < self.target else "NOT met")

    def target_text(self) -> str:
        if self.target is None:
            return ""
        if self.kind == "ratio":
            return f">= {self.target:g} x {self.ref_label}"
        return f"< {self.target:g} {self.unit.split()[0]}"


def build(runs: list[dict]) -> list[Row]:
    rows = {}

    def row(key, *a, **k):
        if key not in rows:
            rows[key] = Row(*a, **k)
        return rows[key]

    for r in runs:
        dd = r["dd"]["mb_per_sec"]
        ref_mbs = {"dd": dd}
        rw = row("dd", "dd conv=fdatasync sequential write", "MB/s")
        rw.values.append(dd)
        rw.x_dd.append(1.0)
        dd_long = r["dd_long"]["mb_per_sec"] if r.get("dd_long") else None
        if dd_long:
            rw = row("dd_long", "dd 4 GiB conv=fdatasync (sustained)", "MB/s")
            rw.values.append(dd_long)
            rw.x_dd.append(dd_long / dd)
            rw.x_dd_long.append(1.0)
        ds = dsync_ms(r)
        if ds is not None:
            rw = row("dsync", "dd 4k oflag=dsync, one synchronous write", "ms")
            rw.values.append(ds)

        def thr(key, label, ref_label=None, target=None, row_key=None):
            rw = row(row_key or key, label, "MB/s", ref_label or "", target)
            x = r[key]
            if x is None:
                return None
            v = x["mb_per_sec"]
            rw.values.append(v)
            rw.x_dd.append(v / dd)
            if dd_long:
                rw.x_dd_long.append(v / dd_long)
            rw.detail.append(f"{x['records_per_sec']:.0f} rec/s")
            if ref_label and ref_mbs.get(ref_label):
                rw.ratios.append(v / ref_mbs[ref_label])
            return v

        ref_mbs["librdkafka, mock broker"] = thr("rdkafka_mock", "librdkafka produce against its own mock broker (no disk)")
        ref_mbs["librdkafka produce"] = thr("rdkafka", "librdkafka produce, idempotent, acks=all", "dd", 0.6)
        thr("rdkafka", "  the same against the client's own ceiling", "librdkafka, mock broker", row_key="rdkafka_vs_mock")
        ref_mbs["librdkafka C, mock broker"] = thr(
            "rdkafka_c_mock", "librdkafka C (rdkafka_performance) against its own mock broker (no disk)")
        if thr("rdkafka_c", "librdkafka C (rdkafka_performance) produce, idempotent, acks=all", "dd", 0.6):
            t = r["rdkafka_c"].get("round_trip")
            if t:
                rows["rdkafka_c"].detail[-1] += (f", rtt avg {t['median_avg_ms']:.2f} ms p99 {t['median_p99_ms']:.2f},"
                                                 f" {t['median_in_flight']:g} in flight")
        thr("rdkafka_c", "  the same against the C client's own ceiling", "librdkafka C, mock broker",
            row_key="rdkafka_c_vs_mock")
        ref_mbs["sluice bench produce"] = thr("produce", "sluice bench produce, acks=all", "dd", 0.6)
        thr("rdkafka_consume", "consume just produced (librdkafka's data)", "librdkafka produce", 1.0)
        thr("consume", "consume just produced (sluice bench's data)", "sluice bench produce", 1.0)
        thr("consume_restart", "consume after broker restart (tail cache empty)", "dd")
        ref_mbs["sluice bench produce, idempotent phase"] = (
            r["produce_txn"]["idempotent_mb_per_sec"] if r["produce_txn"] else None)
        thr("produce_txn", "sluice bench produce --transactional, 100 ms transactions",
            "sluice bench produce, idempotent phase", 0.8)
        thr("rdkafka_txn", "librdkafka transactional produce, 100 ms transactions", "librdkafka produce", 0.8)

        def lat(key, label, field, target=None, row_key=None):
            rw = row(row_key or key, label, "ms p99", "", target, kind="latency")
            x = r[key]
            if x is None or field not in x:
                return
            l = x[field]
            rw.values.append(l["p99"])
            rw.detail.append(f"p50 {l['p50']:.1f} p99.9 {l['p999']:.1f} max {l['max']:.1f}")
            b = r.get(key + ".broker")
            if b:
                # Disk or the rest of the broker: its slow answers beside its slow syncs.
                p, j = b["produce"], b["journal_sync"]
                rw.detail[-1] += (f"; broker > 5 ms: {p['over_5ms']:,} of {p['count']:,} Produce,"
                                  f" {j['over_5ms']:,} of {j['count']:,} journal syncs")

        lat("fsync", "new file + fsync + dir fsync (a flush's write)", "latency_ms")
        lat("journal_floor", "the journal's write @ 2000 rec/s (C model, no broker)", "latency_ms")
        x = r["cpu"]
        if x:
            rw = row("cpu", "CPU slow (100 ms windows with a quarter of 50 µs chunks > 2× median)", "% of time")
            rw.values.append(100 * x["slow_windows"] / x["windows"])
            c = x["chunk_us"]
            rw.detail.append(f"chunk p50 {c['p50']:.0f} p99 {c['p99']:.0f} max {c['max']:.0f} µs")
        lat("rdkafka_mock_2000", "librdkafka @ 2000 rec/s against its own mock broker (no disk)", "latency_ms")
        lat("rdkafka_2000", "librdkafka produce @ 2000 rec/s, linger 0", "latency_ms", 5.0)
        x = r["rdkafka_2000"]
        if x and "librdkafka_rtt_ms" in x:
            rw = row("rdkafka_rtt", "  librdkafka's own Produce rtt (its stats)", "ms p99", "", 5.0, kind="latency")
            t = x["librdkafka_rtt_ms"]
            rw.values.append(t["median_window_p99"])
            rw.detail.append(f"p50 {t['median_window_p50']:.1f} (median of 1 s windows) max {t['max']:.1f}")
        lat("rdkafka_c_mock_2000", "librdkafka C @ 2000 rec/s against its own mock broker (no disk)", "latency_ms")
        lat("rdkafka_c_2000", "librdkafka C (rdkafka_performance) produce @ 2000 rec/s, linger 0", "latency_ms", 5.0)
        lat("produce_2000", "sluice bench produce @ 2000 rec/s, linger 0", "latency_ms", 5.0)
        lat("e2e_2000", "sluice bench e2e @ 2000 rec/s (produce to consume)", "e2e_latency_ms")
        lat("produce_txn", "sluice bench: commit (EndTxn) latency", "commit_latency_ms", 10.0,
            row_key="produce_txn_commit")
        lat("rdkafka_txn", "librdkafka: commit_transaction() latency", "commit_latency_ms", 10.0,
            row_key="rdkafka_txn_commit")
        if r["broker"]:
            rw = row("rss", "broker peak RSS (produce/consume steps)", "MiB")
            rw.values.append(r["broker"]["peak_rss_kb"] / 1024)
            if r["broker"].get("peak_step"):
                rw.detail.append(f"reached in step {r['broker']['peak_step']}")
        x = r["partitions"]
        if x:
            n = x["idle_partitions"]
            rw = row("rss_idle", f"broker RSS with {n:,} idle partitions (fresh broker)", "MiB", "", 300.0, kind="max")
            rw.values.append(x["rss_idle_mib"])
            rw.detail.append(f"at start {x['rss_start_mib']:.0f}; after the wide topic {x['rss_after_mib']:.0f}")
            big = x["partitions_total"] - n
            rw = row("metadata", f"Metadata for all {x['partitions_total']:,} partitions (v4, plain socket)", "ms max",
                     "", 100.0, kind="max")
            m = x["metadata_ms"]
            rw.values.append(m["max"])
            l = x["list_topics_ms"]
            rw.detail.append(f"p50 {m['p50']:.1f}; confluent list_topics p50 {l['p50']:.1f} max {l['max']:.1f}; "
                             f"{x['metadata_bytes'] // 1024} KiB")
            rw = row("create_wide", f"create a {big:,}-partition topic, until all are led", "s")
            rw.values.append(x["all_led_s"])
            rw.detail.append(f"CreateTopics answered in {x['create_big_s']:.2f} s")
        for n in MQTT_CLIENTS:
            m, sl = r[f"mqtt_mosquitto_{n}"], r[f"mqtt_sluice_{n}"]
            if not (m and sl):
                continue
            rw = row(f"mqtt_{n}", f"MQTT QoS 1 publishes, {n:,} clients (Sluice durable vs mosquitto in memory)",
                     "msg/s", "mosquitto", 1.0)
            rw.values.append(sl["messages_per_sec"])
            if m["messages_per_sec"]:
                rw.ratios.append(sl["messages_per_sec"] / m["messages_per_sec"])
            mib = lambda x: (x.get("server_rss_kb") or 0) / 1024
            rw.detail.append(f"mosquitto {m['messages_per_sec']:,.0f} msg/s; failed clients {sl['failed']} "
                             f"(mosquitto {m['failed']}); RSS {mib(sl):.0f} MiB (mosquitto {mib(m):.0f})")
    return list(rows.values())


def num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()
    runs = [load(d) for d in args.dirs]
    rows = build(runs)
    n = len(runs)
    hdr = ("figure", "median" if n > 1 else "value", "unit", "x dd", "x dd 4G", "reference", "ratio", "target", "",
           "per run")
    table = [hdr]
    for rw in rows:
        if not rw.values:
            table.append((rw.label, "-", rw.unit, "", "", rw.ref_label, "", rw.target_text(), "skipped", ""))
            continue
        per_run = ", ".join(num(v) for v in rw.values) if n > 1 else ""
        if rw.detail and n == 1:
            per_run = rw.detail[0]
        table.append((
            rw.label,
            num(rw.median(rw.values)),
            rw.unit,
            num(rw.median(rw.x_dd)) if rw.x_dd else "",
            num(rw.median(rw.x_dd_long)) if rw.x_dd_long else "",
            rw.ref_label,
            num(rw.median(rw.ratios)) if rw.ratios else "",
            rw.target_text(),
            rw.verdict(),
            per_run,
        ))
    w = [max(len(str(row[i])) for row in table) for i in range(len(hdr))]
    print()
    if args.quick:
        print("QUICK run: the figures only show that the benchmark runs")
    else:
        print(f"{n} full run(s)" + (": medians over the runs; ratios are medians of same-run ratios" if n > 1 else ""))
    for i, row in enumerate(table):
        cells = [str(c).rjust(w[k]) if k in (1, 3, 4, 6) and i else str(c).ljust(w[k]) for k, c in enumerate(row)]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * x for x in w))
    loads = [r["machine"]["loadavg_before"] for r in runs if r.get("machine")]
    if loads:
        print("load average before each run: " + "; ".join(loads))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": runs}, f, indent=2)
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
