"""Cold tiering (KIP-405's names): with `--tier-store`, a topic with
`remote.storage.enable=true` keeps `local.retention.ms` / `local.retention.bytes` in the main
store and moves older batches to the tier store. Reads stay transparent from any offset,
after a restart and in a cluster; ListOffsets answers earliest-local (-4); a SIGKILL in the middle of a move loses nothing and duplicates nothing. Produced with
librdkafka (confluent-kafka), read back with it and with kafka-python."""

from __future__ import annotations

import random
import re
import sqlite3
import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from conftest import (Msg, consume_confluent, consume_kafka_python, create_topic, http_get, produce_confluent,
                      wait_until)

PAUSED = "tiering pausing before its commit"


def tiered_broker(make_broker, tmp_path, *extra, env=None):
    return make_broker("--tier-store", f"file://{tmp_path}/tier", "--retention-check-interval", "300ms",
                       "--gc-orphan-grace", "1s", *extra, env=env or {})


def local_starts(broker, topic: str) -> list[int]:
    """ListOffsets earliest-local (-4) per partition, through `sluice topic describe`
    (librdkafka's list_offsets refuses offsets below -3)."""
    return [int(r["LocalLogStartOffset"]) for r in describe_partitions(broker, topic)]


def metric(broker, name: str) -> float:
    _, body, _ = http_get(broker.http + "/metrics")
    m = re.search(rf"^{name}\s+([0-9.e+]+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def contents(got: dict) -> dict[int, list[tuple]]:
    return {p: [(r.offset, r.key, r.value) for r in recs] for p, recs in got.items()}


def expected_of(msgs: list[Msg], acks: list[tuple[int, int]]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    for m, (p, off) in zip(msgs, acks):
        out.setdefault(p, []).append((off, m.key, m.value))
    return {p: sorted(v) for p, v in out.items()}


def tier_files(tmp_path) -> set[str]:
    root = tmp_path / "tier"
    return {str(p.relative_to(root)) for p in root.rglob("*.segment")} if root.exists() else set()


def referenced(broker) -> set[str]:
    db = sqlite3.connect(f"file:{broker.data_dir / 'meta.db'}?mode=ro", uri=True)
    try:
        return {k for (k,) in db.execute("SELECT DISTINCT object_key FROM batches")}
    finally:
        db.close()


def stored_data(broker) -> set[str]:
    return {"data/" + p.name for p in (broker.data_dir / "objects" / "data").iterdir() if not p.name.startswith(".")}


def describe_partitions(broker, topic: str) -> list[dict]:
    r = broker.run_cli("topic", "describe", topic, "--bootstrap", broker.bootstrap, check=True)
    rows = []
    for line in r.stdout.splitlines():
        if line.startswith("\tPartition:"):
            rows.append(dict(f.split(": ", 1) for f in line.strip().split("\t")))
    return rows


def test_tiered_topic_moves_old_data_and_reads_stay_transparent(make_broker, tmp_path):
    broker = tiered_broker(make_broker, tmp_path)
    topic = "tiered"
    create_topic(broker, topic, 2, config={"remote.storage.enable": "true", "local.retention.ms": "1500"})
    old = [Msg(i % 2, b"k%d" % i, b"old-%d-" % i + b"x" * 200) for i in range(4000)]
    old_acks = produce_confluent(broker.bootstrap, topic, old)
    # Everything produced so far passes local retention, then moves.
    wait_until(lambda: local_starts(broker, topic) == [2000, 2000], 30,
               interval=0.5, what="every old batch in the tier store")
    new = [Msg(i % 2, b"n%d" % i, b"new-%d" % i) for i in range(100)]
    new_acks = produce_confluent(broker.bootstrap, topic, new)
    expected = expected_of(old + new, old_acks + new_acks)

    assert tier_files(tmp_path), "segments in the tier store"
    # The main store no longer holds the moved batches once GC has run.
    wait_until(lambda: stored_data(broker) <= referenced(broker), 20, interval=0.5, what="moved objects collected")
    assert all(k.startswith("tier/") or k in stored_data(broker) for k in referenced(broker))

    assert contents(consume_confluent(broker.bootstrap, topic, range(2))) == expected
    assert contents(consume_kafka_python(broker.bootstrap, topic, range(2))) == expected
    # Bytes per tier: in the CLI (DescribeLogDirs: the main store, then the tier store) and
    # in the metrics.
    parts = describe_partitions(broker, topic)
    assert all(r["LogStartOffset"] == "0" and int(r["LocalLogStartOffset"]) >= 2000 for r in parts), parts
    # (The recent records may have passed local retention too by now, on a slow machine.)
    assert all(int(r["TierBytes"]) > 400_000 and int(r["LocalBytes"]) < 100_000 for r in parts), parts
    assert metric(broker, "sluice_log_tier_bytes_total") >= 800_000
    assert metric(broker, "sluice_log_tier_errors_total") == 0

    broker.restart()
    assert contents(consume_confluent(broker.bootstrap, topic, range(2))) == expected
    # Consumers starting in the middle of the tiered range read on into the local part.
    assert contents(consume_confluent(broker.bootstrap, topic, [0], start={0: 1500}))[0] == \
        [r for r in expected[0] if r[0] >= 1500]
    assert contents(consume_kafka_python(broker.bootstrap, topic, [1], start={1: 1999}))[1] == \
        [r for r in expected[1] if r[0] >= 1999]


def test_tiering_configs_are_checked_as_kafka_checks_them(make_broker, tmp_path):
    plain = make_broker(name="no-tier")
    a = AdminClient({"bootstrap.servers": plain.bootstrap})
    f = a.create_topics([NewTopic("t1", 1, 1, config={"remote.storage.enable": "true"})])["t1"]
    with pytest.raises(KafkaException) as e:
        f.result(20)
    assert e.value.args[0].code() == 40 and "Tiered Storage" in e.value.args[0].str()  # INVALID_CONFIG

    broker = tiered_broker(make_broker, tmp_path)
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    bad = {
        "t2": {"remote.storage.enable": "true", "cleanup.policy": "compact"},
        "t3": {"remote.storage.enable": "true", "retention.ms": "1000", "local.retention.ms": "5000"},
        "t4": {"remote.storage.enable": "maybe"},
        "t5": {"local.retention.bytes": "-3"},
    }
    for name, config in bad.items():
        with pytest.raises(KafkaException) as e:
            a.create_topics([NewTopic(name, 1, 1, config=config)])[name].result(20)
        assert e.value.args[0].code() == 40, (name, e.value)
    # A plain topic turned into a tiered one with IncrementalAlterConfigs: its data moves.
    create_topic(broker, "later", 1)
    msgs = [Msg(0, None, b"v%d" % i) for i in range(500)]
    acks = produce_confluent(broker.bootstrap, "later", msgs)
    from test_log_compaction import alter
    alter(broker, "later", remote_storage_enable="true", local_retention_ms="0")
    wait_until(lambda: local_starts(broker, "later") == [500], 30, interval=0.5,
               what="the topic's data tiered after the config change")
    res = ConfigResource(ResourceType.TOPIC, "later")
    configs = a.describe_configs([res])[res].result(20)
    assert configs["remote.storage.enable"].value == "true"
    assert configs["local.retention.ms"].value == "0"
    assert contents(consume_kafka_python(broker.bootstrap, "later", [0])) == expected_of(msgs, acks)


def test_sigkill_during_a_tier_move_loses_nothing(make_broker, tmp_path):
    broker = tiered_broker(make_broker, tmp_path, "--segment-bytes", "65536",
                           env={"SLUICE_TEST_TIER_PAUSE_MS": "700"})
    topic = "killed-while-tiering"
    create_topic(broker, topic, 3, config={"remote.storage.enable": "true", "local.retention.ms": "0"})
    msgs = [Msg(i % 3, b"k%d" % i, b"%d-" % i + b"y" * 300) for i in range(6000)]
    acks = produce_confluent(broker.bootstrap, topic, msgs)
    expected = expected_of(msgs, acks)
    # Killed twice between a verified tier copy and its commit, then at random moments.
    for _ in range(2):
        seen = broker.log().count(PAUSED)
        wait_until(lambda: broker.log().count(PAUSED) > seen, 30, what="a tier move waiting for its commit")
        broker.kill()
        assert {"tier/" + f for f in tier_files(tmp_path)} - referenced(broker), "the kill left a copy behind"
        broker.start()
    rng = random.Random(11)
    for _ in range(3):
        time.sleep(rng.uniform(0.1, 1.5))
        broker.kill()
        broker.start()
    wait_until(lambda: local_starts(broker, topic) == [2000, 2000, 2000], 60,
               interval=0.5, what="everything tiered after the kills")
    assert contents(consume_confluent(broker.bootstrap, topic, range(3))) == expected
    broker.restart()
    assert contents(consume_kafka_python(broker.bootstrap, topic, range(3))) == expected
