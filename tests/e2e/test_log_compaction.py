"""Log compaction (`cleanup.policy=compact`): the cleaner keeps the newest record of each
key at its offset, tombstones go after `delete.retention.ms`, records without keys are
refused, and a SIGKILL in the middle of cleaning loses nothing and leaves no garbage.
Produced with librdkafka (confluent-kafka) and kafka-python, read back with both."""

from __future__ import annotations

import random
import re
import sqlite3
import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from conftest import (Msg, consume_confluent, consume_kafka_python, create_topic, http_get, produce_confluent,
                      wait_until, watermarks)

# Everything written is cleanable at once, however little is dirty.
EAGER = {"cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"}


def cleaning_broker(make_broker, *extra):
    return make_broker("--retention-check-interval", "300ms", *extra)


def alter(broker, topic: str, **configs) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()])
    a.incremental_alter_configs([res])[res].result(20)


def metric(broker, name: str) -> float:
    _, body, _ = http_get(broker.http + "/metrics")
    m = re.search(rf"^{name}\s+([0-9.e+]+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def newest_per_key(msgs: list[Msg], acks: list[tuple[int, int]]) -> dict[int, list[tuple]]:
    """What a fully compacted log holds: per partition, each key's newest record."""
    newest: dict[tuple[int, bytes], tuple] = {}
    for m, (p, off) in zip(msgs, acks):
        if (p, m.key) not in newest or newest[(p, m.key)][0] < off:
            newest[(p, m.key)] = (off, m.key, m.value)
    out: dict[int, list[tuple]] = {}
    for (p, _), rec in newest.items():
        out.setdefault(p, []).append(rec)
    return {p: sorted(recs) for p, recs in out.items()}


def read_all(broker, topic: str, partitions) -> dict[int, list[tuple]]:
    got = consume_confluent(broker.bootstrap, topic, partitions)
    return {p: [(r.offset, r.key, r.value) for r in recs] for p, recs in got.items() if recs}


def produce_end(broker, topic: str, partitions: int, key: bytes = b"end"):
    """One record per partition, in a batch of its own: the log's last batch is never
    cleaned, so this makes every key's newest record before it cleanable (and its own key
    supersedes nothing yet)."""
    time.sleep(0.3)
    ends = [Msg(p, key, b"end") for p in range(partitions)]
    return ends, produce_confluent(broker.bootstrap, topic, ends)


def produce_then_end(broker, topic: str, msgs: list[Msg], partitions: int, end_key: bytes = b"end"):
    acks = produce_confluent(broker.bootstrap, topic, msgs)
    ends, end_acks = produce_end(broker, topic, partitions, end_key)
    return msgs + ends, acks + end_acks


def test_compaction_keeps_the_newest_value_per_key_and_drops_old_tombstones(make_broker):
    broker = cleaning_broker(make_broker)
    topic = "changelog"
    create_topic(broker, topic, 3, config={**EAGER, "delete.retention.ms": "3600000"})
    msgs = [Msg(k % 3, b"key-%d" % k, b"v%d-%d" % (r, k)) for r in range(20) for k in range(60)]
    msgs += [Msg(k % 3, b"key-%d" % k, None) for k in range(0, 60, 6)]
    msgs, acks = produce_then_end(broker, topic, msgs, 3)
    marks = watermarks(broker.bootstrap, topic, range(3))
    expected = newest_per_key(msgs, acks)
    assert sum(len(v) for v in expected.values()) == 63

    wait_until(lambda: read_all(broker, topic, range(3)) == expected, 30, interval=0.5,
               what="the newest record per key, at its offset")
    # Offsets have gaps; the watermarks stay where they were.
    assert watermarks(broker.bootstrap, topic, range(3)) == marks
    # kafka-python reads the same gapped log.
    kp = consume_kafka_python(broker.bootstrap, topic, range(3))
    assert {p: [(r.offset, r.key, r.value) for r in recs] for p, recs in kp.items()} == expected
    assert metric(broker, "sluice_log_cleaner_records_removed_total") >= 1200 - 60

    # Tombstones go once delete.retention.ms has passed; the other records stay.
    alter(broker, topic, delete_retention_ms="0")
    live = {p: [r for r in recs if r[2] is not None] for p, recs in expected.items()}
    wait_until(lambda: read_all(broker, topic, range(3)) == live, 30, interval=0.5, what="tombstones removed")

    # A cold read after a restart (nothing from the tail cache) sees the same.
    broker.restart()
    assert read_all(broker, topic, range(3)) == live


def test_records_without_keys_are_refused_with_invalid_record(make_broker):
    from kafka import KafkaProducer
    from kafka.errors import InvalidRecordError

    broker = cleaning_broker(make_broker)
    topic = "keyed-only"
    create_topic(broker, topic, 1, config={"cleanup.policy": "compact"})
    results = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False, "acks": "1", "retries": 0})
    p.produce(topic, value=b"no key", partition=0, on_delivery=lambda err, m: results.append(err))
    assert p.flush(20) == 0
    assert results[0] is not None and results[0].code() == KafkaError.INVALID_RECORD, results

    # In a batch of keyed and keyless records, the response names the keyless ones
    # (record_errors): librdkafka fails those with INVALID_RECORD, the rest of the batch
    # with _INVALID_DIFFERENT_RECORD.
    mixed = {}
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False, "acks": "1", "retries": 0,
                  "linger.ms": 1000})
    for i in range(10):
        p.produce(topic, value=b"v%d" % i, key=None if i % 3 == 0 else b"k%d" % i, partition=0,
                  on_delivery=lambda err, m, i=i: mixed.__setitem__(i, err.code() if err else None))
    assert p.flush(20) == 0
    assert mixed == {i: KafkaError.INVALID_RECORD if i % 3 == 0 else KafkaError._INVALID_DIFFERENT_RECORD
                     for i in range(10)}, mixed

    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, retries=0)
    with pytest.raises(InvalidRecordError):
        kp.send(topic, value=b"no key either", partition=0).get(timeout=20)
    # Keyed records are taken, and nothing of the refused batches was stored.
    kp.send(topic, key=b"k", value=b"kept", partition=0).get(timeout=20)
    kp.close()
    assert read_all(broker, topic, [0]) == {0: [(0, b"k", b"kept")]}

    # A topic switched to compact refuses them from then on; delete takes them again.
    create_topic(broker, "switching", 1)
    produce_confluent(broker.bootstrap, "switching", [Msg(0, None, b"fine")])
    alter(broker, "switching", cleanup_policy="compact,delete")
    with pytest.raises(AssertionError, match="deliveries failed"):
        produce_confluent(broker.bootstrap, "switching", [Msg(0, None, b"refused")],
                           **{"enable.idempotence": False, "retries": 0})
    alter(broker, "switching", cleanup_policy="delete")
    produce_confluent(broker.bootstrap, "switching", [Msg(0, None, b"fine again")])
    assert [r[2] for r in read_all(broker, "switching", [0])[0]] == [b"fine", b"fine again"]


@pytest.mark.parametrize("config", [
    {"cleanup.policy": "compacted"},
    {"cleanup.policy": "compact,"},
    {"min.cleanable.dirty.ratio": "1.5"},
    {"delete.retention.ms": "-1"},
    {"segment.ms": "0"},
])
def test_invalid_compaction_configs_are_refused(broker, config):
    with pytest.raises(KafkaException) as e:
        create_topic(broker, "bad-config", 1, config=config)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG, e.value


def test_a_consumer_reads_while_compaction_runs(make_broker):
    broker = cleaning_broker(make_broker)
    topic = "busy-changelog"
    create_topic(broker, topic, 2, config=EAGER)
    stop = threading.Event()
    sent: list[tuple[Msg, tuple[int, int]]] = []
    problems: list[str] = []

    def write():
        r = 0
        while not stop.is_set():
            batch = [Msg(k % 2, b"key-%d" % k, b"%d" % r) for k in range(100)]
            sent.extend(zip(batch, produce_confluent(broker.bootstrap, topic, batch)))
            r += 1

    def read():
        while not stop.is_set():
            for p, recs in read_all(broker, topic, range(2)).items():
                offsets = [o for o, _, _ in recs]
                if offsets != sorted(set(offsets)):
                    problems.append(f"partition {p}: offsets out of order")
                last: dict[bytes, int] = {}
                for _, k, v in recs:
                    if int(v) < last.get(k, -1):
                        problems.append(f"partition {p}: {k!r} went back from round {last[k]} to {v!r}")
                    last[k] = int(v)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: metric(broker, "sluice_log_cleaner_records_removed_total") >= 1000, 40, interval=0.5,
                   what="cleaning while records are written and read")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not problems, problems[:5]
    ends, end_acks = produce_end(broker, topic, 2)
    expected = newest_per_key([m for m, _ in sent] + ends, [a for _, a in sent] + end_acks)
    wait_until(lambda: read_all(broker, topic, range(2)) == expected, 30, interval=0.5,
               what="the newest record per key")


def stored_objects(broker) -> set[str]:
    return {p.name for p in (broker.data_dir / "objects" / "data").iterdir() if not p.name.startswith(".")}


def referenced_objects(broker) -> set[str]:
    db = sqlite3.connect(f"file:{broker.data_dir / 'meta.db'}?mode=ro", uri=True)
    try:
        return {k.rsplit("/", 1)[-1] for (k,) in db.execute("SELECT DISTINCT object_key FROM batches")}
    finally:
        db.close()


PAUSED = "log cleaner pausing before its commit"


def test_sigkill_during_compaction_loses_nothing_and_leaves_no_garbage(make_broker):
    # The cleaner pauses between writing each rewritten object and committing it.
    broker = make_broker("--retention-check-interval", "300ms", "--gc-orphan-grace", "1s",
                         env={"SLUICE_TEST_CLEANER_PAUSE_MS": "700"})
    topic = "killed-while-cleaning"
    # Written uncompacted, then switched to compact: every pass has the whole log to clean.
    create_topic(broker, topic, 3, config={"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"})
    payload = b"x" * 150
    msgs = [Msg(k % 3, b"key-%d" % k, b"%d-%d-" % (r, k) + payload) for r in range(60) for k in range(1500)]
    msgs, acks = produce_then_end(broker, topic, msgs, 3)
    expected = newest_per_key(msgs, acks)
    alter(broker, topic, cleanup_policy="compact")
    # Killed twice between a rewrite's object and its commit, then at random moments.
    for _ in range(2):
        seen = broker.log().count(PAUSED)
        wait_until(lambda: broker.log().count(PAUSED) > seen, 30, what="a rewrite waiting for its commit")
        broker.kill()
        assert stored_objects(broker) - referenced_objects(broker), "the kill left no rewrite behind"
        broker.start()
    rng = random.Random(7)
    for _ in range(3):
        time.sleep(rng.uniform(0.1, 1.5))
        broker.kill()
        broker.start()
    wait_until(lambda: read_all(broker, topic, range(3)) == expected, 60, interval=1,
               what="the newest record per key after the kills")
    # Old objects are collected, and so are rewrites a kill left unreferenced.
    wait_until(lambda: stored_objects(broker) == referenced_objects(broker), 30, interval=0.5,
               what="only referenced objects stored")
    broker.restart()
    assert read_all(broker, topic, range(3)) == expected


def test_aborted_transactions_are_removed_and_never_shadow_committed_values(make_broker):
    broker = cleaning_broker(make_broker)
    topic = "txn-changelog"
    create_topic(broker, topic, 1, config=EAGER)
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "cleaner-txn", "linger.ms": 5})
    p.init_transactions(20)
    for value, commit in [(b"committed", True), (b"aborted", False)]:
        p.begin_transaction()
        for k in range(10):
            p.produce(topic, key=b"key-%d" % k, value=value, partition=0)
        # librdkafka purges what it has not sent when it aborts: send it all first.
        assert p.flush(20) == 0
        (p.commit_transaction if commit else p.abort_transaction)(20)
    _, end_acks = produce_end(broker, topic, 1)
    # Offsets 0-9 committed, 10 its marker, 11-20 aborted, 21 the abort marker, 22 the end.
    assert end_acks == [(0, 22)]
    expected = [(k, b"key-%d" % k, b"committed") for k in range(10)] + [(22, b"end", b"end")]
    for isolation in ["read_uncommitted", "read_committed"]:
        wait_until(lambda: read_all_isolated(broker, topic, isolation) == expected, 30, interval=0.5,
                   what=f"committed values only, {isolation}")


def read_all_isolated(broker, topic: str, isolation: str) -> list[tuple]:
    got = consume_confluent(broker.bootstrap, topic, [0], **{"isolation.level": isolation})
    return [(r.offset, r.key, r.value) for r in got[0]]
