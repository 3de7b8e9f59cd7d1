"""Compaction: flush objects are merged into per-partition segments, and
consumers read exactly the same records afterwards (librdkafka, cold reads
after a restart so that nothing comes from the tail cache)."""

from __future__ import annotations

import re

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
