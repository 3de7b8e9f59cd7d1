"""Compaction: flush objects are merged into per-partition segments, and
consumers read exactly the same records afterwards (librdkafka, cold reads
after a restart so that nothing comes from the tail cache)."""

from __future__ import annotations

import re
import time

from conftest import Msg, consume_confluent, create_topic, http_get, produce_confluent, wait_until


def metric(broker, name: str) -> float:
    _, body, _ = http_get(broker.http + "/metrics")
    m = re.search(rf"^{name}\s+([0-9.e+]+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def test_compacted_history_reads_back_identically(make_broker):
    # Without the journal every flush is an object of its own: many small ones to merge.
    broker = make_broker("--compaction-min-age", "1s", "--retention-check-interval", "1s",
                         "--tail-cache-bytes", "0", "--journal", "false")
    create_topic(broker, "hist", 3)
    msgs = [Msg(i % 3, b"k%d" % i, b"value-%d" % i) for i in range(600)]
    # Many small flushes: one produce call per few records.
    produce_confluent(broker.bootstrap, "hist", msgs, flush_every=20)
    before = consume_confluent(broker.bootstrap, "hist", range(3))
    flush_objects = sorted(p.name for p in (broker.data_dir / "objects" / "data").iterdir())
    assert len(flush_objects) >= 10, flush_objects

    wait_until(lambda: metric(broker, "sluice_log_compactions_total") >= 3, 30, what="three partitions compacted")
    wait_until(lambda: len(list((broker.data_dir / "objects" / "data").iterdir())) <= 3, 30, interval=0.5,
               what="flush objects collected")
    objects = sorted(p.name for p in (broker.data_dir / "objects" / "data").iterdir())
    assert all(o.endswith(".segment") for o in objects), objects

    broker.restart()
    after = consume_confluent(broker.bootstrap, "hist", range(3))
    for p in range(3):
        assert [(r.offset, r.key, r.value) for r in after[p]] == [(r.offset, r.key, r.value) for r in before[p]]
        assert len(after[p]) == 200
    # Appends carry on at the next offsets.
    acks = produce_confluent(broker.bootstrap, "hist", [Msg(0, b"k", b"new")])
    assert acks == [(0, 200)]


def test_long_runs_stay_in_place_while_small_ones_are_compacted(make_broker):
    """A partition's batches that make a long run in one flush object (a busy producer's)
    are not copied: a cold read takes them with one request anyway, and copying would
    write them twice. A trickle's small runs around them are still compacted."""
    broker = make_broker("--compaction-min-age", "1s", "--retention-check-interval", "1s",
                         "--tail-cache-bytes", "0", "--journal", "false")
    data = broker.data_dir / "objects" / "data"
    create_topic(broker, "bulk", 2)
    create_topic(broker, "trickle", 2)
    # librdkafka fills 1 MB batches from a queue it holds for a second: runs of ~900 KB.
    bulk = [Msg(i % 2, b"k%d" % i, (b"%07d" % i) * 14_000) for i in range(80)]
    produce_confluent(broker.bootstrap, "bulk", bulk, **{"linger.ms": 1000, "batch.size": 1_000_000})
    bulk_objects = {p.name for p in data.iterdir()}
    assert len(bulk_objects) >= 4, bulk_objects
    bulk_before = consume_confluent(broker.bootstrap, "bulk", range(2))

    produce_confluent(broker.bootstrap, "trickle", [Msg(i % 2, b"k%d" % i, b"v%d" % i) for i in range(200)],
                      flush_every=10)
    trickle_before = consume_confluent(broker.bootstrap, "trickle", range(2))
    wait_until(lambda: any(p.name.endswith(".segment") for p in data.iterdir()) and
               metric(broker, "sluice_log_compactions_total") >= 2, 30, interval=0.5,
               what="the trickle's partitions compacted")
    # The bulk topic's objects were older than the minimum age in the same passes.
    time.sleep(3)
    objects = {p.name for p in data.iterdir()}
    assert bulk_objects <= objects, f"bulk objects copied and collected: {sorted(bulk_objects - objects)}"

    broker.restart()
    for topic, before in (("bulk", bulk_before), ("trickle", trickle_before)):
        after = consume_confluent(broker.bootstrap, topic, range(2))
        for p in range(2):
            assert [(r.offset, r.key, r.value) for r in after[p]] == [(r.offset, r.key, r.value) for r in before[p]]
    assert [len(bulk_before[p]) for p in range(2)] == [40, 40]
