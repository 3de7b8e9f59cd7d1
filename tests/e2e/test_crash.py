"""kill -9 durability: acknowledged means durable; crash leftovers are collected.

An idempotent acks=all producer (librdkafka) writes numbered records to several
partitions while the broker is SIGKILLed and restarted repeatedly at random
moments. Afterwards every acknowledged record must be in the log exactly once,
at the offset it was acknowledged with, and each partition must keep send
order. No record may appear twice (idempotence survives the restarts).

Set SLUICE_CRASH_SEED to replay a particular kill schedule.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
import uuid
from collections import Counter

from confluent_kafka import Producer

from conftest import (
    Msg,
    consume_confluent,
    create_topic,
    produce_confluent,
    topic_partitions,
    wait_until,
    watermarks,
)

PARTITIONS = 4
KILLS = 5
PRODUCE_RATE = 2000  # records/s, all partitions together


class LoadProducer(threading.Thread):
    """Produces key "p-n" / value "record p-n ..." round-robin over partitions
    and records each acknowledged (partition, n) -> offset."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True, name="crash-producer")
        self.topic = topic
        self.stop_flag = threading.Event()
        self.acked: dict[tuple[int, int], int] = {}  # (partition, n) -> offset
        self.failed: dict[tuple[int, int], str] = {}
        self.sent = 0
        self.lock = threading.Lock()
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": 60000,
            "request.timeout.ms": 10000,
            "retry.backoff.ms": 50,
            "retry.backoff.max.ms": 500,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "socket.connection.setup.timeout.ms": 5000,
            "topic.metadata.refresh.interval.ms": 1000,
        })
        self.error: BaseException | None = None

    def _on_delivery(self, part: int, n: int):
        def cb(err, msg):
            with self.lock:
                if err is not None:
                    self.failed[(part, n)] = str(err)
                else:
                    assert msg.partition() == part
                    self.acked[(part, n)] = msg.offset()
        return cb

    def run(self):
        try:
            seq = [0] * PARTITIONS
            interval = 1.0 / PRODUCE_RATE
            next_t = time.monotonic()
            while not self.stop_flag.is_set():
                part = self.sent % PARTITIONS
                n = seq[part]
                try:
                    self.producer.produce(
                        self.topic,
                        key=f"{part}-{n}".encode(),
                        value=f"record {part}-{n} ".encode() * 4,
                        partition=part,
                        on_delivery=self._on_delivery(part, n),
                    )
                except BufferError:
                    self.producer.poll(0.05)
                    continue
                seq[part] += 1
                self.sent += 1
                self.producer.poll(0)
                next_t += interval
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_t = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def finish(self, timeout: float) -> int:
        self.stop_flag.set()
        self.join(10)
        left = self.producer.flush(timeout)
        # Drop the handle now (the delivery callbacks form a reference cycle with
        # self), so that librdkafka does not keep reconnecting after the test.
        self.producer = None
        return left


def test_kill9_during_idempotent_load_loses_nothing(make_broker):
    seed = int(os.environ.get("SLUICE_CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    print(f"SLUICE_CRASH_SEED={seed}")
    started = time.monotonic()

    broker = make_broker("--flush-interval", "2ms")
    topic = "crash"
    create_topic(broker, topic, PARTITIONS)

    load = LoadProducer(broker.bootstrap, topic)
    load.start()
    time.sleep(1.0)

    kills = []
    for i in range(KILLS):
        time.sleep(rnd.uniform(0.3, 1.5))
        with load.lock:
            acked_before = len(load.acked)
        broker.kill()
        kills.append((round(time.monotonic() - started, 2), load.sent, acked_before))
        broker.start()
    sent_at_last_start = load.sent
    time.sleep(1.5)

    left = load.finish(timeout=45)
    assert load.error is None, f"producer thread failed: {load.error!r}"
    assert left == 0, f"{left} records neither acknowledged nor failed after 45 s"
    print(f"kills at (t, sent, acked): {kills}")
    print(f"sent {load.sent}, acknowledged {len(load.acked)}, failed {len(load.failed)}")
    if load.failed:
        print("first failures:", list(load.failed.items())[:5])

    # Progress must have been made after the last restart, or the test proves little.
    assert len(load.acked) > 0.5 * load.sent, (
        f"only {len(load.acked)} of {load.sent} records acknowledged; "
        f"failures: {list(load.failed.items())[:5]}")
    # Records are sent round-robin, so (partition, n) was the (n * PARTITIONS + partition)-th send.
    acked_after_last_start = sum(1 for (p, n) in load.acked if n * PARTITIONS + p >= sent_at_last_start)
    assert acked_after_last_start > 0, "no record sent after the last restart was acknowledged"

    assert topic_partitions(broker.bootstrap, topic) == list(range(PARTITIONS))
    wm = watermarks(broker.bootstrap, topic, range(PARTITIONS))
    log = consume_confluent(broker.bootstrap, topic, range(PARTITIONS), timeout=60)

    problems = []
    for p in range(PARTITIONS):
        recs = log[p]
        low, high = wm[p]
        assert low == 0, f"partition {p}: log start offset moved to {low}"
        offsets = [r.offset for r in recs]
        if offsets != list(range(low, high)):
            problems.append(f"partition {p}: offsets not dense: {len(offsets)} records for [{low},{high})")
        by_offset = {r.offset: r for r in recs}
        # No duplicates at all: the idempotent producer's retries must be deduplicated.
        dups = {k for k, c in Counter(r.key for r in recs).items() if c > 1}
        if dups:
            problems.append(f"partition {p}: {len(dups)} duplicated keys, e.g. {sorted(dups)[:5]}")
        # Every acknowledged record is at its acknowledged offset.
        acked = sorted((n, off) for (pp, n), off in load.acked.items() if pp == p)
        missing = []
        for n, off in acked:
            r = by_offset.get(off)
            want_key = f"{p}-{n}".encode()
            if r is None or r.key != want_key or r.value != f"record {p}-{n} ".encode() * 4:
                missing.append((n, off, None if r is None else r.key))
        if missing:
            problems.append(f"partition {p}: {len(missing)} acknowledged records missing or wrong, e.g. {missing[:5]}")
        # Send order is kept: acknowledged offsets increase with the sequence number,
        # and so do all records in the log.
        ack_offsets = [off for _, off in acked]
        if ack_offsets != sorted(ack_offsets) or len(set(ack_offsets)) != len(ack_offsets):
            problems.append(f"partition {p}: acknowledged offsets not increasing with send order")
        seqs = [int(r.key.split(b"-")[1]) for r in recs]
        if seqs != sorted(seqs):
            bad = next(i for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1])
            problems.append(f"partition {p}: log order differs from send order at offset {recs[bad].offset}: "
                            f"{seqs[max(0, bad - 3):bad + 3]}")
    assert not problems, f"seed {seed}, kills {kills}:\n" + "\n".join(problems)

    # The store restarts cleanly once more and serves the same log.
    broker.restart()
    assert watermarks(broker.bootstrap, topic, range(PARTITIONS)) == wm
    again = consume_confluent(broker.bootstrap, topic, range(PARTITIONS), timeout=60)
    for p in range(PARTITIONS):
        assert [(r.offset, r.key, r.value) for r in again[p]] == [(r.offset, r.key, r.value) for r in log[p]]
    elapsed = time.monotonic() - started
    assert elapsed < 90, f"crash test took {elapsed:.0f}s (budget 90s)"


def test_orphaned_objects_are_collected(make_broker):
    """An object written but never committed (what a crash between the object
    write and the metadata commit leaves) is deleted after --gc-orphan-grace,
    and never shows up in the log."""
    broker = make_broker("--retention-check-interval", "1s", "--gc-orphan-grace", "2s")
    create_topic(broker, "orph", 1)
    produce_confluent(broker.bootstrap, "orph", [Msg(0, b"k%d" % i, b"v%d" % i) for i in range(20)])
    before = consume_confluent(broker.bootstrap, "orph", [0])
    broker.stop()

    objects = sorted(p for p in (broker.data_dir / "objects").rglob("*") if p.is_file())
    assert objects, f"no data objects under {broker.data_dir / 'objects'}"
    committed = set(objects)
    orphan = objects[-1].with_name(f"{int(time.time() * 1000)}-0-{uuid.uuid4().hex}{objects[-1].suffix}")
    shutil.copyfile(objects[-1], orphan)

    broker.start()
    wait_until(lambda: not orphan.exists(), 30, interval=0.5, what=f"orphan {orphan.name} to be collected")
    remaining = {p for p in (broker.data_dir / "objects").rglob("*") if p.is_file()}
    assert committed <= remaining, f"committed objects were deleted: {sorted(committed - remaining)}"
    assert watermarks(broker.bootstrap, "orph", [0]) == {0: (0, 20)}
    after = consume_confluent(broker.bootstrap, "orph", [0])
    assert [(r.offset, r.key, r.value) for r in after[0]] == [(r.offset, r.key, r.value) for r in before[0]]
