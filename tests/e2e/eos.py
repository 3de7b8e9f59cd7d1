"""Exactly-once checks shared by the single-node and cluster tests: a
consume-transform-produce worker (txn_worker.py) run through SIGKILLs, and
readers at either isolation level."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from conftest import Msg, create_topic, produce_confluent

WORKER = Path(__file__).resolve().parent / "txn_worker.py"


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def read_all(bootstrap: str, topic: str, partitions: list[int], isolation: str, timeout: float = 30) -> dict[int, list[tuple]]:
    """Every record of the partitions up to their end (the LSO for read_committed):
    partition -> [(offset, key, value)], read with librdkafka."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "sluice-e2e-assign-only",
        "isolation.level": isolation,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
    })
    out: dict[int, list[tuple]] = {p: [] for p in partitions}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in partitions])
        eof: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(eof) < len(partitions):
            assert time.monotonic() < deadline, f"timed out reading {topic} ({isolation}): eof {eof}"
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, f"consume error {m.error()}"
                eof.add(m.partition())
                continue
            eof.discard(m.partition())
            out[m.partition()].append((m.offset(), m.key(), m.value()))
    finally:
        c.close()
    return out


def values(recs: dict[int, list[tuple]]) -> dict[int, list[bytes]]:
    return {p: [v for _, _, v in rs] for p, rs in recs.items()}


def group_committed(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def run_exactly_once(broker, bootstrap: Callable[[], str], disrupt: Callable[[subprocess.Popen, str], subprocess.Popen | None],
                     workdir: Path, total: int = 2000, disruptions: int = 3) -> int:
    """Feeds `total` records through txn_worker.py, calling `disrupt(worker, txid)` at
    random moments (it may SIGKILL the worker, returning None, or brokers); checks the
    output holds every input record exactly once, each key in input order, and the
    group's committed offsets cover the input. Returns how many workers ran."""
    src, dst = name("eos-in"), name("eos-out")
    create_topic(broker, src, partitions=3)
    create_topic(broker, dst, partitions=3)
    # Key k always lands in input partition k % 3, so each key has one order to keep.
    msgs = [Msg(i % 3, b"key%d" % (i % 48), b"%06d" % i) for i in range(total)]
    produce_confluent(bootstrap(), src, msgs)
    group, txid = name("eos-group"), name("eos-tx")
    rng = random.Random(7)
    started = 0
    disrupted = 0

    def start() -> subprocess.Popen:
        nonlocal started
        started += 1
        # librdkafka logs every disconnect to stderr: a file, never a pipe nobody reads.
        with open(workdir / f"txn_worker.{started}.log", "w") as log:
            return subprocess.Popen([sys.executable, str(WORKER), bootstrap(), src, dst, group, txid, str(total)],
                                    stdout=log, stderr=log)

    w = start()
    try:
        for _ in range(disruptions):
            time.sleep(rng.uniform(1.5, 3.0))
            if w.poll() is not None:
                w = start()
                continue
            disrupted += 1
            if disrupt(w, txid) is None:
                w.wait()
                w = start()
        deadline = time.monotonic() + 180
        while True:
            rc = w.wait(timeout=max(1, deadline - time.monotonic()))
            if rc == 0:
                break
            assert time.monotonic() < deadline, "the worker never finished"
            w = start()
    finally:
        if w.poll() is None:
            w.kill()
    assert disrupted >= 1, "the worker finished before any disruption; make the input larger"

    out = read_all(bootstrap(), dst, [0, 1, 2], "read_committed", timeout=60)
    got = [(k, v) for p in out.values() for _, k, v in p]
    expected = [(m.key, b"out:" + m.value) for m in msgs]
    assert len(got) == len(expected), f"{len(got)} records out for {len(expected)} in"
    assert sorted(got) == sorted(expected)
    by_key: dict[bytes, list[bytes]] = {}
    for p in sorted(out):
        for _, k, v in out[p]:
            by_key.setdefault(k, []).append(v)
    for k, vs in by_key.items():
        assert vs == sorted(vs), f"key {k!r} out of order"
    assert group_committed(bootstrap(), group, src, [0, 1, 2]) == {
        p: sum(1 for m in msgs if m.partition == p) for p in (0, 1, 2)
    }
    return started
