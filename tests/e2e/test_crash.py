"""kill -9 durability: acknowledged means durable; crash leftovers are collected.

Both write paths are covered: the single-node journal (the default: appends are
acknowledged once synced to the local journal and uploaded later) and
`--journal false` (every flush writes an object and commits before it is acknowledged).
With the journal, flushes of 1 MiB or more go to the store and the journal records a
reference to their object; the "journal-and-direct" case produces large records fast
enough that flushes of both kinds follow each other, and checks that both kinds happened;
it also writes large objects with O_DIRECT (`--direct-io true`).

An idempotent acks=all producer (librdkafka) writes numbered records to several
partitions while the broker is SIGKILLed and restarted repeatedly at random
moments. Afterwards every acknowledged record must be in the log exactly once,
at the offset it was acknowledged with, and each partition must keep send
order. No record may appear twice (idempotence survives the restarts).

Set SLUICE_CRASH_SEED to replay a particular kill schedule.
"""

from __future__ import annotations

import json
import os
import pytest
import random
import re
import shutil
import time
import uuid
from collections import Counter

from conftest import (
    Msg,
    http_get,
    consume_confluent,
    consume_kafka_python,
    create_topic,
    produce_confluent,
    topic_partitions,
    wait_until,
    watermarks,
)
from loadgen import LoadProducer, check_exactly_once

PARTITIONS = 4
KILLS = 5
PRODUCE_RATE = 2000  # records/s, all partitions together


# (journal, records/s, value repeat (bytes / ~16), flush interval, more broker args)
LOADS = {
    "journal": ("true", PRODUCE_RATE, 4, "2ms", []),
    "objects": ("false", PRODUCE_RATE, 4, "2ms", []),
    # ~16 KB records at 5,000/s (80 MB/s), gathered for 8 ms or while a write runs:
    # flushes around 1 MiB. Objects of 1 MiB or more are written with O_DIRECT.
    "journal-and-direct": ("true", 5000, 1000, "8ms", ["--direct-io", "true"]),
}


def flush_stage_counts(broker) -> dict[str, float]:
    """How many flushes went through each stage (journal, put, ...) since the broker started."""
    status, body, _ = http_get(broker.http + "/metrics")
    assert status == 200
    counts = {}
    for line in body.splitlines():
        m = re.match(r'sluice_log_flush_stage_seconds_count\{stage="(\w+)"\} (\S+)', line)
        if m:
            counts[m.group(1)] = float(m.group(2))
    return counts


@pytest.mark.parametrize("load_kind", list(LOADS))
def test_kill9_during_idempotent_load_loses_nothing(make_broker, load_kind):
    journal, rate, repeat, flush_interval, more = LOADS[load_kind]
    seed = int(os.environ.get("SLUICE_CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    print(f"SLUICE_CRASH_SEED={seed}")
    started = time.monotonic()

    broker = make_broker("--flush-interval", flush_interval, "--journal", journal, *more)
    topic = "crash"
    create_topic(broker, topic, PARTITIONS)

    load = LoadProducer(broker.bootstrap, topic, PARTITIONS, rate, repeat=repeat)
    load.start()
    time.sleep(1.0)

    kills = []
    # Flushes per stage, summed over the broker's lives (each kill resets its metrics).
    stages: Counter[str] = Counter()
    for i in range(KILLS):
        time.sleep(rnd.uniform(0.3, 1.5))
        with load.lock:
            acked_before = len(load.acked)
        stages.update(flush_stage_counts(broker))
        broker.kill()
        kills.append((round(time.monotonic() - started, 2), load.sent, acked_before))
        broker.start()
    sent_at_last_start = load.sent
    time.sleep(1.5)
    stages.update(flush_stage_counts(broker))
    print(f"flushes per stage: {dict(stages)}")
    if load_kind == "journal-and-direct":
        # Every flush is journaled (large ones as a reference to their object in the store).
        # Each journal append is timed as its sync alone, then with the hand-over (a read
        # between the two sees one more of the first).
        assert stages["journal_sync"] >= stages["journal"] > stages["put"] > 0, stages

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
    problems, log = check_exactly_once(broker.bootstrap, topic, PARTITIONS, load)
    wm = watermarks(broker.bootstrap, topic, range(PARTITIONS))
    assert all(low == 0 for low, _ in wm.values()), f"log start offset moved: {wm}"
    assert not problems, f"seed {seed}, kills {kills}:\n" + "\n".join(problems)

    # The store restarts cleanly once more and serves the same log.
    broker.restart()
    assert watermarks(broker.bootstrap, topic, range(PARTITIONS)) == wm
    again = consume_confluent(broker.bootstrap, topic, range(PARTITIONS), timeout=60)
    for p in range(PARTITIONS):
        assert [(r.offset, r.key, r.value) for r in again[p]] == [(r.offset, r.key, r.value) for r in log[p]]
    elapsed = time.monotonic() - started
    assert elapsed < 90, f"crash test took {elapsed:.0f}s (budget 90s)"


def data_objects(broker) -> list:
    return sorted(p for p in (broker.data_dir / "objects").rglob("*") if p.is_file())


def test_kill9_before_upload_loses_nothing(make_broker):
    """Appends acknowledged from the journal and not yet uploaded (the upload interval
    is an hour) are in the log after a kill -9, at the offsets they were acknowledged
    with, and writing goes on after them (the unit tests check that an idempotent
    producer's state comes back from the journal too)."""
    broker = make_broker("--upload-interval", "1h")
    create_topic(broker, "jrnl", 3)
    msgs = [Msg(i % 3, b"k%d" % i, b"v%d" % i) for i in range(600)]
    acked = produce_confluent(broker.bootstrap, "jrnl", msgs, flush_every=50)
    assert data_objects(broker) == [], "nothing may be uploaded within the hour"
    broker.kill()
    broker.start()
    assert data_objects(broker), "the restart uploads the journal"
    got = consume_kafka_python(broker.bootstrap, "jrnl", range(3))
    want = {p: [] for p in range(3)}
    for m, (p, offset) in zip(msgs, acked):
        assert p == m.partition
        want[p].append((offset, m.key, m.value))
    for p in range(3):
        assert [(r.offset, r.key, r.value) for r in got[p]] == sorted(want[p])
        assert [o for o, _, _ in sorted(want[p])] == list(range(200))
    # Writing goes on after the recovered records, and is recovered again.
    more = produce_confluent(broker.bootstrap, "jrnl", [Msg(0, b"k", b"after")])
    assert more == [(0, 200)]
    broker.kill()
    broker.start()
    assert watermarks(broker.bootstrap, "jrnl", range(3)) == {0: (0, 201), 1: (0, 200), 2: (0, 200)}


def test_kill9_after_compaction_collected_large_flushes_loses_nothing(make_broker):
    """A large flush goes to the store and the journal keeps a reference to its object
    after it is indexed; compaction then copies it into a segment and collects it. The
    broker must still restart after a kill -9 (it used to read every referenced object
    at start, the whole history since the journal's segment began, and refused to start
    once one was gone) and serve every acknowledged record."""
    # Runs of any length are compacted (by default a partition's 512 KiB in one object stay).
    broker = make_broker("--compaction-min-age", "1s", "--retention-check-interval", "1s",
                         "--compaction-keep-run-bytes", str(1 << 40))
    create_topic(broker, "big", 4)
    # ~64 KB records to four partitions: a request carries up to 1 MB per partition, so
    # flushes are over the 1 MiB that goes to the store directly.
    msgs = [Msg(i % 4, b"k%d" % i, (b"%06d" % i) * 10_000) for i in range(400)]
    acked = produce_confluent(broker.bootstrap, "big", msgs, **{"linger.ms": 50})
    assert sorted(acked) == sorted((p, n) for p in range(4) for n in range(100))
    assert flush_stage_counts(broker).get("put", 0) > 0, "no flush went to the store directly"
    first = {p.name for p in data_objects(broker) if p.suffix == ".sobj"}
    wait_until(lambda: not first & {p.name for p in data_objects(broker)}, 30, interval=0.5,
               what="the flush objects to be compacted and collected")
    broker.kill()
    started = time.monotonic()
    broker.start()
    print(f"restarted in {time.monotonic() - started:.2f}s")
    assert watermarks(broker.bootstrap, "big", range(4)) == {p: (0, 100) for p in range(4)}
    got = consume_confluent(broker.bootstrap, "big", range(4), timeout=60)
    for p in range(4):
        want = [(o, m.key, m.value) for m, (_, o) in sorted(zip(msgs, acked), key=lambda x: x[1]) if m.partition == p]
        assert [(r.offset, r.key, r.value) for r in got[p]] == want
    assert produce_confluent(broker.bootstrap, "big", [Msg(0, b"k", b"after")]) == [(0, 100)]


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


def produce_expecting_failure(bootstrap: str, topic: str, value: bytes) -> str:
    """Produce one record with no retries; return the delivery error's name."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0, "message.max.bytes": 8 << 20,
                  "message.timeout.ms": 10000})
    errors = []
    p.produce(topic, value=value, partition=0, on_delivery=lambda err, m: errors.append(err))
    assert p.flush(20) == 0
    assert errors and errors[0] is not None, "the record was acknowledged"
    return errors[0].name()


def test_a_failed_flush_makes_the_broker_unhealthy_until_a_restart(make_broker):
    """With the journal, a flush whose write fails (here: a large flush's object, with a
    file where the store's data directory goes) fails with KAFKA_STORAGE_ERROR, and every
    later write fails too until a restart (offsets handed out again would not follow what
    the journal may hold); /health says so with 503, so that a supervisor restarts the
    broker. The restart recovers every acknowledged record, and writing goes on."""
    broker = make_broker()
    create_topic(broker, "fail", 1, {"max.message.bytes": str(8 << 20)})
    msgs = [Msg(0, b"k%d" % i, b"v%d" % i) for i in range(10)]
    assert produce_confluent(broker.bootstrap, "fail", msgs) == [(0, i) for i in range(10)]
    data = broker.data_dir / "objects" / "data"
    wait_until(data.exists, 10, what="the first upload")
    moved = data.with_name("data.moved")
    data.rename(moved)
    data.write_bytes(b"in the way")

    assert produce_expecting_failure(broker.bootstrap, "fail", b"x" * (2 << 20)) == "KAFKA_STORAGE_ERROR"
    status, body, _ = http_get(broker.http + "/health")
    assert status == 503, body
    health = json.loads(body)
    assert health["status"] == "failed" and "restart" in health["reason"] and "data" in health["reason"], health
    # A small record, which the journal alone could take, is refused too.
    assert produce_expecting_failure(broker.bootstrap, "fail", b"small") == "KAFKA_STORAGE_ERROR"

    broker.kill()
    data.unlink()
    moved.rename(data)
    broker.start()
    assert http_get(broker.http + "/health")[0] == 200
    assert produce_confluent(broker.bootstrap, "fail", [Msg(0, b"k", b"after")]) == [(0, 10)]
    got = consume_confluent(broker.bootstrap, "fail", [0])
    assert [(r.offset, r.value) for r in got[0]] == [(i, b"v%d" % i) for i in range(10)] + [(10, b"after")]
