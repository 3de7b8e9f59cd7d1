"""Sluice driven by real Kafka clients: confluent-kafka (librdkafka), kafka-python,
kcat and KafkaJS.

Every test checks data or exact error codes against what an Apache Kafka 3.x/4.x
broker would answer. Consumer groups are not implemented yet, so consumers use
assign() with explicit offsets and never commit.
"""

from __future__ import annotations

import json
import os
import random
import re
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from conftest import (
    ConsumeError,
    Msg,
    Wire,
    as_comparable,
    build_record_batch,
    confluent_consumer,
    create_topic,
    consume_confluent,
    consume_kafka_python,
    expected_by_partition,
    http_get,
    produce_confluent,
    run_kafkajs,
    run_kcat,
    topic_partitions,
    wait_until,
    watermarks,
)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

# Kafka error codes (https://kafka.apache.org/protocol#protocol_error_codes)
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
INVALID_TOPIC_EXCEPTION = 17
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_CONFIG = 40


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def future_error(fut, timeout=20) -> KafkaError | None:
    """The KafkaError a confluent admin future failed with, or None on success."""
    try:
        fut.result(timeout=timeout)
        return None
    except KafkaException as e:
        return e.args[0]


def topic_configs(broker, topic) -> dict[str, ConfigEntry]:
    res = ConfigResource(ResourceType.TOPIC, topic)
    a = admin(broker)  # must outlive the future
    return a.describe_configs([res], request_timeout=15)[res].result(timeout=20)


def source_of(entry: ConfigEntry) -> ConfigSource:
    s = entry.source
    return s if isinstance(s, ConfigSource) else ConfigSource(s)


def list_topic_names(broker) -> set[str]:
    return set(admin(broker).list_topics(timeout=10).topics)


def sample_messages(n: int, partitions: int, seed: int, with_timestamps: bool = True,
                    null_header_values: bool = True) -> list[Msg]:
    """A varied set of records: null keys/values, binary and compressible values,
    repeated and null-valued headers, and explicit CreateTime timestamps.
    (kafka-python's producer does not accept null header values.)"""
    rnd = random.Random(seed)
    base_ts = int(time.time() * 1000) - 3_600_000
    out = []
    for i in range(n):
        key = None if i % 50 == 7 else f"key-{i % 37}-{i}".encode()
        kind = i % 4
        if i % 97 == 13:
            value = None
        elif kind == 0:
            value = rnd.randbytes(rnd.randint(0, 2000))
        elif kind == 1:
            value = (f"record {i} " * rnd.randint(1, 200)).encode()
        elif kind == 2:
            value = b""
        else:
            value = json.dumps({"i": i, "s": "x" * rnd.randint(0, 50)}).encode()
        if key is None and value is None:
            key = b"both-null-is-not-allowed-by-kafka-python"
        headers: tuple = ()
        if i % 3 == 0:
            headers = (("seq", str(i).encode()), ("dup", b"a"), ("dup", b"b"))
        elif i % 3 == 1:
            headers = (("empty", b""), ("nullv", None if null_header_values else b"-"))
        out.append(Msg(i % partitions, key, value, headers, base_ts + i if with_timestamps else None))
    return out


def assert_same_records(actual: dict, expected: dict, what: str):
    assert sorted(actual) == sorted(expected), f"{what}: partitions {sorted(actual)} != expected {sorted(expected)}"
    for p in expected:
        a, e = actual[p], expected[p]
        assert len(a) == len(e), f"{what}: partition {p} has {len(a)} records, expected {len(e)}"
        for x, y in zip(a, e):
            assert x == y, f"{what}: partition {p} differs at offset {y[0]}:\n got      {x!r:.300}\n expected {y!r:.300}"


# ---------------------------------------------------------------------------------------
# HTTP


def test_health_and_metrics(broker):
    status, body, _ = http_get(broker.http + "/health")
    assert status == 200

    # Some traffic first, so that counters exist.
    create_topic(broker, "metrics-topic", 1)
    produce_confluent(broker.bootstrap, "metrics-topic", [Msg(0, b"k", b"v")])

    status, body, headers = http_get(broker.http + "/metrics")
    assert status == 200, body[:500]
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert ctype.startswith("text/plain"), f"unexpected content type {ctype!r}"
    sample = re.compile(r"^(sluice_[a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)( -?\d+)?$")
    samples = [m.group(1) for m in map(sample.match, body.splitlines()) if m]
    assert samples, f"no sluice_* metric samples in /metrics:\n{body[:2000]}"
    # Every non-comment line must be a valid sample line.
    bad = [l for l in body.splitlines() if l and not l.startswith("#")
           and not re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? \S+( -?\d+)?$", l)]
    assert not bad, f"malformed metric lines: {bad[:5]}"


# ---------------------------------------------------------------------------------------
# Admin APIs


def test_confluent_admin_topic_lifecycle(broker):
    a = admin(broker)
    fs = a.create_topics(
        [
            NewTopic("orders", num_partitions=3, replication_factor=1,
                     config={"retention.ms": "3600000", "max.message.bytes": "200000", "cleanup.policy": "delete"}),
            NewTopic("audit", num_partitions=1, replication_factor=1),
        ],
        operation_timeout=10,
    )
    for name, f in fs.items():
        assert future_error(f) is None, f"create {name}"

    md = a.list_topics(timeout=10)
    assert sorted(md.topics["orders"].partitions) == [0, 1, 2]
    assert sorted(md.topics["audit"].partitions) == [0]
    for p in md.topics["orders"].partitions.values():
        assert p.leader == 0 and list(p.replicas) == [0] and list(p.isrs) == [0], f"partition {p.id}: {p}"
    assert [b.id for b in md.brokers.values()] == [0]
    assert md.brokers[0].host == "127.0.0.1" and md.brokers[0].port == broker.kafka_port
    assert md.cluster_id, "Metadata must carry a cluster id"
    assert md.controller_id == 0
    # DescribeCluster agrees with Metadata.
    desc = a.describe_cluster(request_timeout=10).result(timeout=15)
    assert desc.cluster_id == md.cluster_id
    assert desc.controller is not None and desc.controller.id == 0
    assert [(n.id, n.host, n.port) for n in desc.nodes] == [(0, "127.0.0.1", broker.kafka_port)]

    # Creating it again: TOPIC_ALREADY_EXISTS.
    err = future_error(a.create_topics([NewTopic("orders", 3, 1)])["orders"])
    assert err is not None and err.code() == TOPIC_ALREADY_EXISTS, err

    # DescribeConfigs: the values we set, marked as dynamic topic config, and defaults for the rest.
    cfg = topic_configs(broker, "orders")
    assert cfg["retention.ms"].value == "3600000"
    assert source_of(cfg["retention.ms"]) == ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert cfg["max.message.bytes"].value == "200000"
    assert cfg["cleanup.policy"].value == "delete"
    assert "retention.bytes" in cfg, f"retention.bytes missing from describe_configs: {sorted(cfg)}"
    assert cfg["retention.bytes"].value == "-1"
    assert source_of(cfg["retention.bytes"]) != ConfigSource.DYNAMIC_TOPIC_CONFIG

    # IncrementalAlterConfigs: SET one key, DELETE (reset to default) another.
    res = ConfigResource(ResourceType.TOPIC, "orders", incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    assert future_error(a.incremental_alter_configs([res])[res]) is None
    cfg = topic_configs(broker, "orders")
    assert cfg["retention.ms"].value == "7200000"
    assert cfg["max.message.bytes"].value != "200000"
    assert source_of(cfg["max.message.bytes"]) != ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert cfg["cleanup.policy"].value == "delete", "incremental alter must keep untouched keys"

    # Unknown config key and bad value: INVALID_CONFIG, nothing changes.
    for entry in (ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET),
                  ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)):
        res = ConfigResource(ResourceType.TOPIC, "orders", incremental_configs=[entry])
        err = future_error(a.incremental_alter_configs([res])[res])
        assert err is not None and err.code() == INVALID_CONFIG, f"{entry.name}={entry.value}: {err}"
    assert topic_configs(broker, "orders")["retention.ms"].value == "7200000"

    # CreatePartitions: grow to 5; the new partitions take data; shrinking is INVALID_PARTITIONS.
    assert future_error(a.create_partitions([NewPartitions("orders", 5)])["orders"]) is None
    assert topic_partitions(broker.bootstrap, "orders") == [0, 1, 2, 3, 4]
    acks = produce_confluent(broker.bootstrap, "orders", [Msg(4, b"k4", b"in new partition")])
    assert acks == [(4, 0)]
    got = consume_confluent(broker.bootstrap, "orders", [4])
    assert [(r.offset, r.key, r.value) for r in got[4]] == [(0, b"k4", b"in new partition")]
    err = future_error(a.create_partitions([NewPartitions("orders", 2)])["orders"])
    assert err is not None and err.code() == INVALID_PARTITIONS, err

    # DeleteTopics: gone from metadata; deleting again is UNKNOWN_TOPIC_OR_PARTITION.
    produce_confluent(broker.bootstrap, "audit", [Msg(0, None, b"old-%d" % i) for i in range(5)])
    assert future_error(a.delete_topics(["audit"], operation_timeout=10)["audit"]) is None
    wait_until(lambda: "audit" not in list_topic_names(broker), 10, what="audit to disappear")
    err = future_error(a.delete_topics(["audit"], operation_timeout=10)["audit"])
    assert err is not None and err.code() == UNKNOWN_TOPIC_OR_PARTITION, err

    # A re-created topic of the same name starts empty: old data must not leak back.
    create_topic(broker, "audit", 2)
    assert watermarks(broker.bootstrap, "audit", [0, 1]) == {0: (0, 0), 1: (0, 0)}
    produce_confluent(broker.bootstrap, "audit", [Msg(0, None, b"new")])
    got = consume_confluent(broker.bootstrap, "audit", [0, 1])
    assert [(r.offset, r.value) for r in got[0]] == [(0, b"new")] and got[1] == []
    assert "orders" in list_topic_names(broker)


def test_confluent_admin_validate_only_and_invalid_requests(broker):
    a = admin(broker)
    # validate_only: succeeds, creates nothing.
    f = a.create_topics([NewTopic("ghost", num_partitions=2, replication_factor=1, config={"retention.ms": "1000"})],
                        validate_only=True)["ghost"]
    assert future_error(f) is None
    time.sleep(0.5)
    assert "ghost" not in list_topic_names(broker)

    # Invalid names: INVALID_TOPIC_EXCEPTION (Kafka: [a-zA-Z0-9._-]{1,249}, not "." or "..").
    for name in ("bad/name", "x" * 300, "..", "has space", "bad*name"):
        for validate_only in (False, True):
            err = future_error(a.create_topics([NewTopic(name, 1, 1)], validate_only=validate_only)[name])
            assert err is not None and err.code() == INVALID_TOPIC_EXCEPTION, f"{name[:20]!r} validate_only={validate_only}: {err}"

    # Unknown config and unparsable value: INVALID_CONFIG.
    for cfg in ({"no.such.config": "1"}, {"retention.ms": "soon"}, {"cleanup.policy": "shred"}):
        err = future_error(a.create_topics([NewTopic("cfgtopic", 1, 1, config=cfg)])["cfgtopic"])
        assert err is not None and err.code() == INVALID_CONFIG, f"{cfg}: {err}"

    # A 249-character name is the longest valid one.
    long_ok = "y" * 249
    assert future_error(a.create_topics([NewTopic(long_ok, 1, 1)])[long_ok]) is None

    names = list_topic_names(broker)
    assert "ghost" not in names and "cfgtopic" not in names and "bad/name" not in names
    assert long_ok in names


def test_kafka_python_admin(broker):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource as KConfigResource

    ka = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        r = ka.create_topics({"kp-a": {"num_partitions": 2, "replication_factor": 1,
                                        "configs": {"retention.ms": "86400000"}}})
        assert [(t["name"], t["error_code"]) for t in r["topics"]] == [("kp-a", 0)]

        r = ka.create_topics({"kp-ghost": {"num_partitions": 1, "replication_factor": 1}}, validate_only=True)
        assert [(t["name"], t["error_code"]) for t in r["topics"]] == [("kp-ghost", 0)]

        cases = {
            "bad/name": ({"num_partitions": 1, "replication_factor": 1}, INVALID_TOPIC_EXCEPTION),
            "kp-badcfg": ({"num_partitions": 1, "replication_factor": 1, "configs": {"no.such.config": "x"}}, INVALID_CONFIG),
            "kp-zero": ({"num_partitions": 0, "replication_factor": 1}, INVALID_PARTITIONS),
        }
        for name, (spec, code) in cases.items():
            r = ka.create_topics({name: spec}, raise_errors=False)
            assert [(t["name"], t["error_code"]) for t in r["topics"]] == [(name, code)], f"{name}: {r}"

        topics = set(ka.list_topics())
        assert "kp-a" in topics
        assert not topics & {"kp-ghost", "bad/name", "kp-badcfg", "kp-zero"}, topics
        desc = {t["name"]: t for t in ka.describe_topics(["kp-a"])}
        assert sorted(p["partition_index"] for p in desc["kp-a"]["partitions"]) == [0, 1]

        cfg = ka.describe_configs([KConfigResource("TOPIC", "kp-a")], config_filter="all")["topic"]["kp-a"]
        assert cfg["retention.ms"]["value"] == "86400000"
        assert cfg["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"

        r = ka.alter_configs([KConfigResource("TOPIC", "kp-a", configs={"retention.ms": "5000000"})])
        assert r == {"topic": {"kp-a": "OK"}}, r
        cfg = ka.describe_configs([KConfigResource("TOPIC", "kp-a")], config_filter="all")["topic"]["kp-a"]
        assert cfg["retention.ms"]["value"] == "5000000"

        ka.create_partitions({"kp-a": 4})
        desc = {t["name"]: t for t in ka.describe_topics(["kp-a"])}
        assert sorted(p["partition_index"] for p in desc["kp-a"]["partitions"]) == [0, 1, 2, 3]

        r = ka.delete_topics(["kp-a"])
        assert [(t["name"], t["error_code"]) for t in r["topics"]] == [("kp-a", 0)]
        wait_until(lambda: "kp-a" not in ka.list_topics(), 10, what="kp-a to disappear")
    finally:
        ka.close()


def test_kafkajs_admin_and_produce(broker):
    topic = "js-topic"
    base_ts = int(time.time() * 1000) - 10_000
    batches = [
        [{"key": f"k{i}", "value": f"value {i} " * (i % 7 + 1), "partition": i % 3,
          "headers": {"src": "kafkajs", "i": str(i)}, "timestamp": base_ts + i} for i in range(b * 40, b * 40 + 40)]
        for b in range(3)
    ]
    steps = [
        {"op": "createTopics", "topics": [
            {"topic": topic, "numPartitions": 3, "configEntries": [{"name": "retention.ms", "value": "3600000"}]},
            {"topic": "js-tmp", "numPartitions": 1},
        ]},
        {"op": "createTopics", "validateOnly": True, "topics": [{"topic": "js-ghost", "numPartitions": 1}]},
        {"op": "createTopics", "topics": [{"topic": "bad/name", "numPartitions": 1}]},
        {"op": "listTopics"},
        {"op": "fetchTopicMetadata", "topics": [topic]},
        *[{"op": "produce", "topic": topic, "compression": "gzip", "idempotent": True, "messages": b} for b in batches],
        {"op": "fetchTopicOffsets", "topic": topic},
        {"op": "describeConfigs", "topic": topic, "configNames": ["retention.ms"]},
        {"op": "createPartitions", "topic": topic, "count": 4},
        {"op": "fetchTopicMetadata", "topics": [topic]},
        {"op": "deleteTopics", "topics": ["js-tmp"]},
        {"op": "listTopics"},
    ]
    res = run_kafkajs(broker.bootstrap, steps)
    names = ["createTopics", "createTopics(validateOnly)", "createTopics(bad/name)", "listTopics", "fetchTopicMetadata",
             "produce#1", "produce#2", "produce#3", "fetchTopicOffsets", "describeConfigs", "createPartitions",
             "fetchTopicMetadata#2", "deleteTopics", "listTopics#2"]
    failed = {n: r["error"] for n, r in zip(names, res) if "error" in r and n != "createTopics(bad/name)"}
    assert not failed, f"KafkaJS steps failed: {json.dumps(failed, indent=1)}"
    (created, validate, bad, listed, md, p1, p2, p3, offsets, configs, grow, md2, deleted, listed2) = res

    assert created == {"created": True}, created
    assert "error" not in validate, validate
    assert "error" in bad and "INVALID_TOPIC_EXCEPTION" in json.dumps(bad["error"]), bad
    assert topic in listed["topics"] and "js-tmp" in listed["topics"]
    assert "js-ghost" not in listed["topics"] and "bad/name" not in listed["topics"]
    parts = md["topics"][0]["partitions"]
    assert [p["partitionId"] for p in parts] == [0, 1, 2]
    assert all(p["leader"] == 0 and p["replicas"] == [0] and p["isr"] == [0] for p in parts), parts

    # Each send() hit all three partitions; base offsets advance by 40/3 records per partition.
    counts = {0: 0, 1: 0, 2: 0}
    for sent, batch in zip((p1, p2, p3), batches):
        assert "error" not in sent, sent
        for r in sent["records"]:
            assert r["errorCode"] == 0 and int(r["baseOffset"]) == counts[r["partition"]], (sent, counts)
        for m in batch:
            counts[m["partition"]] += 1
    assert offsets["offsets"] == [
        {"partition": p, "offset": str(counts[p]), "high": str(counts[p]), "low": "0"} for p in range(3)
    ], offsets
    assert configs["configs"].get("retention.ms") == "3600000", configs
    assert "error" not in grow, grow
    assert [p["partitionId"] for p in md2["topics"][0]["partitions"]] == [0, 1, 2, 3]
    assert "error" not in deleted, deleted
    assert "js-tmp" not in listed2["topics"] and topic in listed2["topics"]

    # Read everything KafkaJS wrote with librdkafka and compare.
    got = consume_confluent(broker.bootstrap, topic, [0, 1, 2])
    expected: dict[int, list] = {0: [], 1: [], 2: []}
    for batch in batches:
        for m in batch:
            p = m["partition"]
            expected[p].append((len(expected[p]), m["key"].encode(), m["value"].encode(),
                                (("src", b"kafkajs"), ("i", m["headers"]["i"].encode())), m["timestamp"]))
    actual = {p: [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in rs] for p, rs in got.items()}
    assert_same_records(actual, expected, "KafkaJS gzip data read by confluent-kafka")


# ---------------------------------------------------------------------------------------
# Produce and consume with every codec


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_produce_consume(broker, codec):
    topic = f"cf-{codec}"
    create_topic(broker, topic, 3)
    msgs = sample_messages(600, 3, seed=CODECS.index(codec))
    acks = produce_confluent(broker.bootstrap, topic, msgs, **{"compression.type": codec, "linger.ms": 20,
                                                               "batch.num.messages": 100})
    expected = expected_by_partition(msgs, acks)
    # Idempotent producer: offsets are dense and in send order per partition.
    for p, recs in expected.items():
        assert [r[0] for r in recs] == list(range(len(recs))), f"partition {p} offsets not dense/in order"
        sent = [m.content() for m in msgs if m.partition == p]
        assert [r[1:] for r in recs] == sent, f"partition {p}: acknowledged order differs from send order"

    got = consume_confluent(broker.bootstrap, topic, [0, 1, 2])
    assert_same_records(as_comparable(got), expected, f"confluent-kafka {codec} read back by confluent-kafka")
    ts = {(r.partition, r.offset): r.timestamp for rs in got.values() for r in rs}
    for m, (p, off) in zip(msgs, acks):
        assert ts[(p, off)] == m.timestamp, f"timestamp of {p}/{off}: {ts[(p, off)]} != {m.timestamp}"

    got = consume_kafka_python(broker.bootstrap, topic, [0, 1, 2])
    assert_same_records(as_comparable(got), expected, f"confluent-kafka {codec} read back by kafka-python")
    assert watermarks(broker.bootstrap, topic, [0, 1, 2]) == {p: (0, len(expected[p])) for p in range(3)}


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks_levels(broker, acks):
    """acks=0 and acks=1 (idempotence off) deliver too; offsets are dense and ordered."""
    topic = f"acks-{acks}"
    create_topic(broker, topic, 2)
    msgs = [Msg(i % 2, b"k%d" % i, b"acks=%s #%d" % (acks.encode(), i)) for i in range(200)]
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": acks, "enable.idempotence": False,
                  "max.in.flight.requests.per.connection": 1, "linger.ms": 5})
    errs = []
    for m in msgs:
        p.produce(topic, key=m.key, value=m.value, partition=m.partition, on_delivery=lambda e, _m: errs.append(e))
    assert p.flush(30) == 0
    assert errs == [None] * len(msgs), [e for e in errs if e][:3]
    # With acks=0 nothing confirms the write: wait for it to become visible.
    wait_until(lambda: watermarks(broker.bootstrap, topic, [0, 1]) == {0: (0, 100), 1: (0, 100)}, 10,
               what="all records to be visible")
    got = consume_confluent(broker.bootstrap, topic, [0, 1])
    for part in (0, 1):
        assert [(r.offset, r.key, r.value) for r in got[part]] == \
            [(i, m.key, m.value) for i, m in enumerate(x for x in msgs if x.partition == part)]


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_produce_consume(broker, codec):
    from kafka import KafkaProducer

    topic = f"kp-{codec}"
    create_topic(broker, topic, 3)
    msgs = sample_messages(300, 3, seed=7 + len(codec), null_header_values=False)
    prod = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        compression_type=None if codec == "none" else codec,
        acks="all",
        enable_idempotence=True,
        linger_ms=10,
        request_timeout_ms=20000,
    )
    try:
        futs = [prod.send(topic, key=m.key, value=m.value, partition=m.partition,
                          headers=list(m.headers), timestamp_ms=m.timestamp) for m in msgs]
        prod.flush(timeout=60)
        acks = []
        for f in futs:
            md = f.get(timeout=30)
            acks.append((md.partition, md.offset))
    finally:
        prod.close(timeout=10)
    expected = expected_by_partition(msgs, acks)
    for p, recs in expected.items():
        assert [r[0] for r in recs] == list(range(len(recs))), f"partition {p} offsets not dense/in order"

    got = consume_confluent(broker.bootstrap, topic, [0, 1, 2])
    assert_same_records(as_comparable(got), expected, f"kafka-python {codec} read back by confluent-kafka")
    for m, (p, off) in zip(msgs, acks):
        rec = got[p][off]
        assert rec.timestamp == m.timestamp, f"timestamp of {p}/{off}"
    got = consume_kafka_python(broker.bootstrap, topic, [0, 1, 2])
    assert_same_records(as_comparable(got), expected, f"kafka-python {codec} read back by kafka-python")


def _kcat_consume(bootstrap: str, topic: str) -> dict[int, list[dict]]:
    r = run_kcat("-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q")
    out: dict[int, list[dict]] = {}
    for line in r.stdout.splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        out.setdefault(m["partition"], []).append(m)
    return out


def test_kcat_produce_consume_metadata(broker):
    topic = "kcat-topic"
    create_topic(broker, topic, 2)
    lines0 = [f"key{i}|value number {i}" for i in range(100)]
    lines1 = [f"other{i}|{'z' * (i * 10)}" for i in range(50)]
    run_kcat("-b", broker.bootstrap, "-P", "-t", topic, "-p", "0", "-K", "|", "-z", "snappy",
             "-H", "src=kcat", "-X", "enable.idempotence=true", input="\n".join(lines0) + "\n")
    run_kcat("-b", broker.bootstrap, "-P", "-t", topic, "-p", "1", "-K", "|", "-z", "lz4",
             input="\n".join(lines1) + "\n")

    got = _kcat_consume(broker.bootstrap, topic)
    assert [(m["offset"], m["key"], m["payload"]) for m in got[0]] == \
        [(i, l.split("|")[0], l.split("|")[1]) for i, l in enumerate(lines0)]
    assert all(m.get("headers") == ["src", "kcat"] for m in got[0]), got[0][0]
    assert [(m["offset"], m["key"], m["payload"]) for m in got[1]] == \
        [(i, l.split("|")[0], l.split("|")[1]) for i, l in enumerate(lines1)]

    # The same data through librdkafka's consumer API.
    cf = consume_confluent(broker.bootstrap, topic, [0, 1])
    assert [(r.key, r.value, r.headers) for r in cf[0]] == \
        [(l.split("|")[0].encode(), l.split("|")[1].encode(), (("src", b"kcat"),)) for l in lines0]

    md = json.loads(run_kcat("-b", broker.bootstrap, "-L", "-J").stdout)
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics
    assert sorted(p["partition"] for p in topics[topic]["partitions"]) == [0, 1]
    assert [b["id"] for b in md["brokers"]] == [0]
    assert md["brokers"][0]["name"] == broker.bootstrap


# ---------------------------------------------------------------------------------------
# Restart


def _snapshot(broker, topics: dict[str, int]):
    data = {}
    for t, n in topics.items():
        data[t] = (watermarks(broker.bootstrap, t, range(n)),
                   {p: [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in rs]
                    for p, rs in consume_confluent(broker.bootstrap, t, range(n)).items()})
    return data


def test_restart_reads_everything_again(broker):
    from kafka import KafkaProducer

    create_topic(broker, "rs-a", 3, {"retention.ms": "604800000"})
    create_topic(broker, "rs-b", 2)
    produce_confluent(broker.bootstrap, "rs-a", sample_messages(300, 3, seed=1), **{"compression.type": "gzip"})
    produce_confluent(broker.bootstrap, "rs-a", sample_messages(300, 3, seed=2), **{"compression.type": "zstd"})
    # A few large records (beyond any small tail cache).
    big = [Msg(i % 2, b"big%d" % i, os.urandom(300_000)) for i in range(8)]
    produce_confluent(broker.bootstrap, "rs-b", big, **{"compression.type": "lz4"})
    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="snappy", acks="all")
    for i in range(100):
        prod.send("rs-b", key=b"kp%d" % i, value=b"snappy value %d" % i, partition=i % 2)
    prod.flush(30)
    prod.close()

    topics = {"rs-a": 3, "rs-b": 2}
    before = _snapshot(broker, topics)
    assert sum(len(v) for v in before["rs-a"][1].values()) == 600
    assert sum(len(v) for v in before["rs-b"][1].values()) == 108

    broker.restart()
    after = _snapshot(broker, topics)
    for t in topics:
        assert after[t][0] == before[t][0], f"{t}: watermarks changed across restart"
        assert_same_records(after[t][1], before[t][1], f"{t} after clean restart")
    assert topic_configs(broker, "rs-a")["retention.ms"].value == "604800000"
    assert topic_partitions(broker.bootstrap, "rs-a") == [0, 1, 2]

    # Crash restart too: the store must come back the same.
    broker.kill()
    broker.start()
    after = _snapshot(broker, topics)
    for t in topics:
        assert after[t][0] == before[t][0], f"{t}: watermarks changed across kill -9"
        assert_same_records(after[t][1], before[t][1], f"{t} after kill -9")

    # New records continue at the old high watermarks.
    acks = produce_confluent(broker.bootstrap, "rs-a", [Msg(p, b"after", b"restart") for p in range(3)])
    assert acks == [(p, before["rs-a"][0][p][1]) for p in range(3)]


# ---------------------------------------------------------------------------------------
# ListOffsets


def test_offsets_for_times(broker):
    topic = "times"
    create_topic(broker, topic, 3)
    base = int(time.time() * 1000) - 60_000
    ts = [base + 1000 * i for i in range(10)]

    # Partition 0: every record in its own batch. Partition 1: one uncompressed
    # batch. Partition 2: one gzip batch. Lookups must be exact to the record.
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all"})
    for i, t in enumerate(ts):
        p.produce(topic, key=b"%d" % i, value=b"v%d" % i, partition=0, timestamp=t)
        assert p.flush(10) == 0
    p.flush(10)
    for part, codec in ((1, "none"), (2, "gzip")):
        p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all",
                      "linger.ms": 500, "compression.type": codec})
        for i, t in enumerate(ts):
            p.produce(topic, key=b"%d" % i, value=b"v%d" % i, partition=part, timestamp=t)
        assert p.flush(10) == 0
    assert watermarks(broker.bootstrap, topic, range(3)) == {0: (0, 10), 1: (0, 10), 2: (0, 10)}

    # target timestamp -> first offset with timestamp >= target (-1: none)
    cases = {base - 5000: 0, base: 0, base + 1: 1, base + 2500: 3, base + 5000: 5, base + 9000: 9, base + 9001: -1}
    c = confluent_consumer(broker.bootstrap)
    try:
        for part in range(3):
            for target, want in cases.items():
                res = c.offsets_for_times([TopicPartition(topic, part, target)], timeout=10)
                assert res[0].error is None, res[0].error
                assert res[0].offset == want, f"partition {part}, ts base{target - base:+d}: offset {res[0].offset}, want {want}"
    finally:
        c.close()

    # AdminClient.list_offsets: earliest, latest, max timestamp, by timestamp (with the record's timestamp).
    a = admin(broker)
    for part in range(3):
        tp = TopicPartition(topic, part)
        specs = {
            "earliest": (OffsetSpec.earliest(), 0, None),
            "latest": (OffsetSpec.latest(), 10, None),
            "max_timestamp": (OffsetSpec.max_timestamp(), 9, ts[9]),
            "for_timestamp": (OffsetSpec.for_timestamp(base + 2500), 3, ts[3]),
        }
        for name, (spec, want_off, want_ts) in specs.items():
            info = a.list_offsets({tp: spec}, request_timeout=10)[tp].result(timeout=15)
            assert info.offset == want_off, f"partition {part} {name}: offset {info.offset}, want {want_off}"
            if want_ts is not None:
                assert info.timestamp == want_ts, f"partition {part} {name}: timestamp {info.timestamp}, want {want_ts}"

    # kafka-python offsets_for_times returns the found record's timestamp too.
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        res = kc.offsets_for_times({KTP(topic, part): base + 4500 for part in range(3)})
        for part in range(3):
            r = res[KTP(topic, part)]
            assert r is not None and (r.offset, r.timestamp) == (5, ts[5]), f"partition {part}: {r}"
        res = kc.offsets_for_times({KTP(topic, 0): base + 10_000})
        assert res[KTP(topic, 0)] is None
    finally:
        kc.close()

    # kcat -Q
    for part in range(3):
        r = run_kcat("-b", broker.bootstrap, "-Q", "-t", f"{topic}:{part}:{base + 6500}")
        m = re.search(r"\[\s*%d\]\s+offset\s+(-?\d+)" % part, r.stdout)
        assert m, f"unexpected kcat -Q output: {r.stdout!r}"
        assert int(m.group(1)) == 7, f"kcat -Q partition {part}: {r.stdout!r}"


# ---------------------------------------------------------------------------------------
# Auto-creation


def test_auto_create_topics_default_on(broker):
    # Metadata with allow_auto_topic_creation=false must not create.
    with Wire(broker.bootstrap) as w:
        res = w.metadata(["meta-no-create"], allow_auto_create=False)
        assert res["meta-no-create"][0] == UNKNOWN_TOPIC_OR_PARTITION, res
        res = w.metadata(["meta-create"], allow_auto_create=True)
        assert res["meta-create"][0] in (0, LEADER_NOT_AVAILABLE), res

        def created():
            r = w.metadata(["meta-create"], allow_auto_create=False)["meta-create"]
            return r[0] == 0 and r[1]
        assert wait_until(created, 10, what="meta-create to exist") == [0]
    assert "meta-no-create" not in list_topic_names(broker)

    # Producing to an unknown topic creates it (librdkafka and kafka-python).
    acks = produce_confluent(broker.bootstrap, "auto-cf", [Msg(0, b"k", b"hello")])
    assert acks == [(0, 0)]
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    md = prod.send("auto-kp", key=b"k", value=b"from kafka-python").get(timeout=30)
    prod.close()
    assert md.offset == 0
    names = list_topic_names(broker)
    assert {"auto-cf", "auto-kp", "meta-create"} <= names
    assert [(r.key, r.value) for r in consume_confluent(broker.bootstrap, "auto-cf", [0])[0]] == [(b"k", b"hello")]
    assert [r.value for r in consume_confluent(broker.bootstrap, "auto-kp", [0])[0]] == [b"from kafka-python"]


def test_auto_create_default_partitions(make_broker):
    b = make_broker("--default-partitions", "4")
    with Wire(b.bootstrap) as w:
        w.metadata(["four"], allow_auto_create=True)
        parts = wait_until(lambda: w.metadata(["four"], allow_auto_create=False)["four"][1], 10, what="four to exist")
    assert parts == [0, 1, 2, 3]


def test_auto_create_topics_disabled(make_broker):
    b = make_broker("--auto-create-topics", "false")
    with Wire(b.bootstrap) as w:
        for _ in range(2):
            res = w.metadata(["nope"], allow_auto_create=True)
            assert res["nope"][0] == UNKNOWN_TOPIC_OR_PARTITION, res
            time.sleep(0.3)

    p = Producer({"bootstrap.servers": b.bootstrap, "topic.metadata.propagation.max.ms": 2000,
                  "message.timeout.ms": 15000})
    errs = []
    p.produce("nope", value=b"x", on_delivery=lambda err, m: errs.append(err))
    p.flush(20)
    assert len(errs) == 1 and errs[0] is not None, errs
    assert errs[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), errs[0]
    assert "nope" not in list_topic_names(b)

    # Explicit creation still works.
    create_topic(b, "explicit", 2)
    assert produce_confluent(b.bootstrap, "explicit", [Msg(1, None, b"ok")]) == [(1, 0)]


# ---------------------------------------------------------------------------------------
# DeleteRecords


def test_delete_records(broker):
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP

    topic = "delrec"
    create_topic(broker, topic, 2)
    msgs = [Msg(i % 2, b"k%d" % i, b"value %d" % i) for i in range(60)]
    # Batches of 10 per partition, so that the deletion points fall inside batches.
    acks = produce_confluent(broker.bootstrap, topic, msgs, flush_every=20, **{"linger.ms": 200})
    expected = expected_by_partition(msgs, acks)
    assert watermarks(broker.bootstrap, topic, [0, 1]) == {0: (0, 30), 1: (0, 30)}

    a = admin(broker)
    tp0 = TopicPartition(topic, 0, 5)
    res = a.delete_records([tp0], request_timeout=15)
    deleted = list(res.values())[0].result(timeout=20)
    assert deleted.low_watermark == 5
    assert watermarks(broker.bootstrap, topic, [0]) == {0: (5, 30)}

    # Reading from the new start gives exactly the remaining records (the first
    # batch still holds offsets 0-4 on disk; they must not be returned).
    got = consume_confluent(broker.bootstrap, topic, [0])
    assert as_comparable(got)[0] == expected[0][5:]

    # Reading below the log start offset: OFFSET_OUT_OF_RANGE, or a reset with auto.offset.reset.
    with pytest.raises(ConsumeError) as ei:
        consume_confluent(broker.bootstrap, topic, [0], start=2, timeout=15)
    err = ei.value.error
    del ei  # its traceback would keep this frame (and the admin client's connections) alive
    assert err is not None and err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE), err
    got = consume_confluent(broker.bootstrap, topic, [0], start=2, **{"auto.offset.reset": "earliest"})
    assert [r.offset for r in got[0]] == list(range(5, 30))

    # kafka-python's DeleteRecords on partition 1.
    ka = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        r = ka.delete_records({KTP(topic, 1): 12})
        assert r[KTP(topic, 1)]["low_watermark"] == 12 and r[KTP(topic, 1)]["error_code"] == 0, r
        # Past the high watermark: OFFSET_OUT_OF_RANGE, nothing changes.
        from kafka.errors import OffsetOutOfRangeError

        with pytest.raises(OffsetOutOfRangeError):
            ka.delete_records({KTP(topic, 1): 31})
    finally:
        ka.close()
    assert watermarks(broker.bootstrap, topic, [1]) == {1: (12, 30)}
    got = consume_kafka_python(broker.bootstrap, topic, [1])
    assert as_comparable(got)[1] == expected[1][12:]

    # Offset -1 means "up to the high watermark".
    res = a.delete_records([TopicPartition(topic, 0, -1)], request_timeout=15)
    assert list(res.values())[0].result(timeout=20).low_watermark == 30
    assert watermarks(broker.bootstrap, topic, [0]) == {0: (30, 30)}

    # The log start offsets survive a restart, and new data continues at 30.
    broker.restart()
    assert watermarks(broker.bootstrap, topic, [0, 1]) == {0: (30, 30), 1: (12, 30)}
    assert produce_confluent(broker.bootstrap, topic, [Msg(0, b"new", b"after")]) == [(0, 30)]
    got = consume_confluent(broker.bootstrap, topic, [0, 1])
    assert [(r.offset, r.key) for r in got[0]] == [(30, b"new")]
    assert as_comparable(got)[1] == expected[1][12:]


# ---------------------------------------------------------------------------------------
# Retention


def _dir_bytes(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except FileNotFoundError:
                pass
    return total


def test_retention_ms(make_broker):
    b = make_broker("--retention-check-interval", "1s")
    create_topic(b, "short", 2, {"retention.ms": "1000"})
    create_topic(b, "keep", 1)
    produce_confluent(b.bootstrap, "keep", [Msg(0, None, b"keep %d" % i) for i in range(10)])
    produce_confluent(b.bootstrap, "short", [Msg(i % 2, None, b"x" * 1000) for i in range(40)])

    wait_until(lambda: watermarks(b.bootstrap, "short", [0, 1]) == {0: (20, 20), 1: (20, 20)}, 30,
               interval=0.5, what="retention.ms=1000 to expire all records")
    # Other topics are untouched.
    assert watermarks(b.bootstrap, "keep", [0]) == {0: (0, 10)}
    assert [r.value for r in consume_confluent(b.bootstrap, "keep", [0])[0]] == [b"keep %d" % i for i in range(10)]
    # Offsets continue after the expired ones; earliest is the new record.
    assert produce_confluent(b.bootstrap, "short", [Msg(0, b"n", b"new")]) == [(0, 20)]
    got = consume_confluent(b.bootstrap, "short", [0])
    assert [(r.offset, r.value) for r in got[0]] == [(20, b"new")]


def test_retention_deletes_objects(make_broker):
    """Objects that no partition needs any more are deleted from the object store."""
    b = make_broker("--retention-check-interval", "1s")
    objects = b.data_dir / "objects"
    create_topic(b, "bulky", 1, {"retention.ms": "2000"})
    payload = os.urandom(100_000)
    produce_confluent(b.bootstrap, "bulky", [Msg(0, None, payload) for _ in range(40)], flush_every=5,
                      **{"compression.type": "none"})
    # Uploaded from the journal within its interval (250 ms).
    wait_until(lambda: _dir_bytes(objects) >= 4_000_000, 10, interval=0.1, what=f"4 MB of objects under {objects}")
    size_full = _dir_bytes(objects)
    wait_until(lambda: watermarks(b.bootstrap, "bulky", [0])[0] == (40, 40), 30, interval=0.5,
               what="records to expire")
    wait_until(lambda: _dir_bytes(objects) < 1_000_000, 30, interval=0.5,
               what=f"expired objects to be deleted (store holds {size_full} bytes before)")


def test_retention_bytes(make_broker):
    """retention.bytes as Kafka applies it: the oldest data goes only while what
    remains is still at least retention.bytes (UnifiedLog.deleteRetentionSizeBreachedSegments)."""
    b = make_broker("--retention-check-interval", "1s")
    limit = 4096
    create_topic(b, "sized", 1, {"retention.bytes": str(limit), "retention.ms": "-1"})
    msgs = [Msg(0, b"%03d" % i, bytes([i]) * 1000) for i in range(40)]
    # One batch (and one flush, so one data object) per record, so that deletion can be per batch.
    acks = produce_confluent(b.bootstrap, "sized", msgs, flush_every=1)
    expected = expected_by_partition(msgs, acks)
    # librdkafka's uncompressed one-record batch has the same size as ours.
    sizes = [len(build_record_batch([(m.key, m.value, [])])) for m in msgs]
    # Kafka keeps the shortest suffix of batches whose size is >= retention.bytes.
    kafka_low = max(i for i in range(len(sizes)) if sum(sizes[i:]) >= limit)

    def trimmed():
        return watermarks(b.bootstrap, "sized", [0])[0][0] >= kafka_low - 4

    wait_until(trimmed, 30, interval=0.5, what="retention.bytes to trim the partition")
    time.sleep(2.5)  # let further retention passes run; the result must be stable
    lo, hi = watermarks(b.bootstrap, "sized", [0])[0]
    assert hi == 40
    retained = sum(sizes[lo:])
    assert retained >= limit, (
        f"retention.bytes={limit} trimmed to offsets [{lo}, {hi}) = {retained} bytes of batches; "
        f"Kafka never deletes below retention.bytes (it would keep [{kafka_low}, 40) = {sum(sizes[kafka_low:])} bytes)")
    assert lo >= kafka_low - 4, f"retention.bytes={limit} left offsets [{lo}, {hi}); Kafka would keep [{kafka_low}, 40)"
    got = consume_confluent(b.bootstrap, "sized", [0])
    assert as_comparable(got)[0] == expected[0][lo:]


# ---------------------------------------------------------------------------------------
# Index rebuild from object footers


def test_rebuild_index_from_objects(make_broker):
    from kafka import KafkaProducer

    b = make_broker()
    create_topic(b, "rb-a", 3)
    create_topic(b, "rb-b", 1)
    produce_confluent(b.bootstrap, "rb-a", sample_messages(300, 3, seed=11), **{"compression.type": "gzip"})
    produce_confluent(b.bootstrap, "rb-a", sample_messages(90, 3, seed=12), **{"compression.type": "none"})
    prod = KafkaProducer(bootstrap_servers=b.bootstrap, compression_type="lz4", acks="all")
    for i in range(50):
        prod.send("rb-b", key=b"%d" % i, value=b"lz4 %d" % i, headers=[("h", b"%d" % i)])
    prod.flush(30)
    prod.close()
    topics = {"rb-a": 3, "rb-b": 1}
    before = _snapshot(b, topics)

    b.stop()
    meta = b.data_dir / "meta.db"
    assert meta.exists(), f"expected the SQLite metadata store at {meta}; data dir has {sorted(os.listdir(b.data_dir))}"
    for suffix in ("", "-wal", "-shm"):
        p = b.data_dir / f"meta.db{suffix}"
        if p.exists():
            p.unlink()
    r = b.run_cli("admin", "rebuild-index", "--data-dir", str(b.data_dir), timeout=120)
    assert r.returncode == 0, f"rebuild-index failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert meta.exists(), "rebuild-index did not recreate meta.db"

    b.start()
    assert {"rb-a", "rb-b"} <= list_topic_names(b)
    assert topic_partitions(b.bootstrap, "rb-a") == [0, 1, 2]
    after = _snapshot(b, topics)
    for t in topics:
        assert after[t][0] == before[t][0], f"{t}: watermarks differ after rebuild-index"
        assert_same_records(after[t][1], before[t][1], f"{t} after rebuild-index")
    # Offsets are not reused after the rebuild.
    acks = produce_confluent(b.bootstrap, "rb-a", [Msg(p, None, b"post-rebuild") for p in range(3)])
    assert acks == [(p, before["rb-a"][0][p][1]) for p in range(3)]
