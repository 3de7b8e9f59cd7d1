"""Kafka semantics that librdkafka's own test suite checks: fetch size limits (KIP-74),
the topic configs Kafka still accepts, list configs, and deleting a topic under load."""

import struct
import threading
import time

import pytest

from conftest import (
    Msg,
    Wire,
    consume_confluent,
    create_topic,
    expected_by_partition,
    as_comparable,
    kstring,
    karray,
    produce_confluent,
    wait_until,
)

API_FETCH = 1
PARTITIONS = 6
# Batches of about 200 KB: librdkafka closes a batch at batch.size.
RECORD = 40_000
RECORDS_PER_PARTITION = 25


@pytest.fixture
def large_batches(broker):
    create_topic(broker, "big", PARTITIONS)
    msgs = [
        Msg(p, b"k%d-%d" % (p, i), bytes([p + 1]) * (RECORD - 8) + struct.pack(">q", i))
        for i in range(RECORDS_PER_PARTITION)
        for p in range(PARTITIONS)
    ]
    acks = produce_confluent(broker.bootstrap, "big", msgs, **{"linger.ms": 200, "batch.size": 200_000,
                                                             "compression.type": "none"})
    return broker, expected_by_partition(msgs, acks)


def batch_sizes(records: bytes) -> list[int]:
    """The sizes of the whole record batches in a Fetch response's records."""
    sizes, pos = [], 0
    while pos + 12 <= len(records):
        (length,) = struct.unpack(">i", records[pos + 8:pos + 12])
        assert pos + 12 + length <= len(records), "a partial batch in the response"
        sizes.append(12 + length)
        pos += 12 + length
    assert pos == len(records), "trailing bytes after the last batch"
    return sizes


def raw_fetch(bootstrap: str, topic: str, offsets: dict[int, int], max_bytes: int, partition_max: int) -> dict:
    """Fetch v4 of several partitions -> {partition: [batch sizes]}."""
    parts = [struct.pack(">iqi", p, o, partition_max) for p, o in sorted(offsets.items())]
    body = struct.pack(">iiiib", -1, 0, 1, max_bytes, 0) + karray([kstring(topic) + karray(parts)])
    with Wire(bootstrap) as w:
        r = w.request(API_FETCH, 4, body)
        r.i32()  # throttle
        topics = r.array(lambda r: (r.string(), r.array(lambda r: (
            r.i32(), r.i16(), r.i64(), r.i64(), r.array(lambda r: (r.i64(), r.i64())), r.bytes_() or b""))))
    out = {}
    for _, partitions in topics:
        for p, err, _hw, _lso, _aborted, records in partitions:
            assert err == 0, f"partition {p}: error {err}"
            out[p] = batch_sizes(records)
    return out


def test_a_fetch_keeps_within_max_bytes_across_partitions(large_batches):
    """KIP-74: the response's record bytes stay within the request's max_bytes; only
    the first batch of the first partition with data may exceed it."""
    broker, _ = large_batches
    start = {p: 0 for p in range(PARTITIONS)}
    got = raw_fetch(broker.bootstrap, "big", start, max_bytes=500_000, partition_max=20_000_000)
    sizes = [s for p in sorted(got) for s in got[p]]
    assert sizes, "no data at all"
    assert sum(sizes) <= 500_000, f"{sum(sizes)} bytes of records for max_bytes 500000: {got}"
    # Smaller than one batch: exactly one batch, of the first partition.
    got = raw_fetch(broker.bootstrap, "big", start, max_bytes=1_000, partition_max=20_000_000)
    assert len(got[0]) == 1 and all(got[p] == [] for p in range(1, PARTITIONS)), got
    # The partition limit, smaller than a batch: only the first partition answers, one batch.
    got = raw_fetch(broker.bootstrap, "big", start, max_bytes=50_000_000, partition_max=1_000)
    assert len(got[0]) == 1 and all(got[p] == [] for p in range(1, PARTITIONS)), got
    # The partition limit holds for every partition.
    got = raw_fetch(broker.bootstrap, "big", start, max_bytes=50_000_000, partition_max=450_000)
    assert all(0 < sum(got[p]) <= 450_000 for p in range(PARTITIONS)), got


def test_librdkafka_with_a_small_receive_limit_reads_everything(large_batches):
    """librdkafka refuses any response over receive.message.max.bytes (test 0082's
    settings); a consumer over many partitions of large batches reads all of them."""
    broker, want = large_batches
    got = consume_confluent(broker.bootstrap, "big", range(PARTITIONS), timeout=60, **{
        "fetch.max.bytes": 1_000_000,
        "max.partition.fetch.bytes": 20_000_000,
        "receive.message.max.bytes": 1_000_512,
    })
    assert as_comparable(got) == want


def test_a_partition_limit_below_one_batch_still_makes_progress(large_batches):
    broker, want = large_batches
    got = consume_confluent(broker.bootstrap, "big", range(PARTITIONS), timeout=60, **{
        "fetch.max.bytes": 100_000,
        "message.max.bytes": 50_000,  # librdkafka wants fetch.max.bytes at least this
        "max.partition.fetch.bytes": 10_000,
    })
    assert as_comparable(got) == want


def test_kafka_python_with_small_fetch_limits_reads_everything(large_batches):
    from kafka import KafkaConsumer, TopicPartition

    broker, want = large_batches
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                      fetch_max_bytes=300_000, max_partition_fetch_bytes=10_000, fetch_max_wait_ms=100)
    tps = [TopicPartition("big", p) for p in range(PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning()
    got: dict[int, list] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 60
    try:
        while sum(map(len, got.values())) < PARTITIONS * RECORDS_PER_PARTITION:
            assert time.monotonic() < deadline, f"read only {sum(map(len, got.values()))} records"
            for tp, records in c.poll(timeout_ms=200).items():
                got[tp.partition] += [(r.offset, r.key, r.value, ()) for r in records]
    finally:
        c.close()
    assert got == want


# --------------------------------------------------------------------------------------
# Topic configs

# What `kafka-configs --describe --all` lists for a topic on Kafka 4.x, and the
# deprecated ones older tools still send.
KAFKA_TOPIC_CONFIGS = {
    "cleanup.policy": "delete",
    "compression.gzip.level": "-1",
    "compression.lz4.level": "9",
    "compression.type": "producer",
    "compression.zstd.level": "3",
    "delete.retention.ms": "86400000",
    "file.delete.delay.ms": "60000",
    "flush.messages": "9223372036854775807",
    "flush.ms": "9223372036854775807",
    "follower.replication.throttled.replicas": "",
    "index.interval.bytes": "4096",
    "leader.replication.throttled.replicas": "",
    "local.retention.bytes": "-2",
    "local.retention.ms": "-2",
    "max.compaction.lag.ms": "9223372036854775807",
    "max.message.bytes": "1048588",
    "message.downconversion.enable": "true",
    "message.format.version": "3.0-IV1",
    "message.timestamp.after.max.ms": "9223372036854775807",
    "message.timestamp.before.max.ms": "9223372036854775807",
    "message.timestamp.difference.max.ms": "9223372036854775807",
    "message.timestamp.type": "CreateTime",
    "min.cleanable.dirty.ratio": "0.5",
    "min.compaction.lag.ms": "0",
    "min.insync.replicas": "1",
    "preallocate": "false",
    "remote.log.copy.disable": "false",
    "remote.log.delete.on.disable": "false",
    "remote.storage.enable": "false",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.index.bytes": "10485760",
    "segment.jitter.ms": "0",
    "segment.ms": "604800000",
    "unclean.leader.election.enable": "false",
}

LEGACY = {
    "message.format.version": "2.8",
    "message.downconversion.enable": "false",
    "unclean.leader.election.enable": "true",
    "min.insync.replicas": "2",
    "preallocate": "true",
    "follower.replication.throttled.replicas": "0:1",
    "leader.replication.throttled.replicas": "*",
    "index.interval.bytes": "8192",
    "segment.index.bytes": "20971520",
    "segment.jitter.ms": "10",
    "flush.messages": "1000",
    "flush.ms": "1000",
}


def confluent_configs(broker, topic: str) -> dict:
    from confluent_kafka.admin import AdminClient, ConfigResource

    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = a.describe_configs([res], request_timeout=15)[res].result(timeout=20)
    return {name: e.value for name, e in entries.items()}


def kafka_python_configs(broker, topic: str) -> dict:
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        got = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    finally:
        a.close()
    return {name: c["value"] for name, c in got["topic"][topic].items()}


def test_every_kafka_topic_config_is_described_with_its_default(broker):
    create_topic(broker, "described", 1)
    for describe in (confluent_configs, kafka_python_configs):
        got = describe(broker, "described")
        missing = sorted(set(KAFKA_TOPIC_CONFIGS) - set(got))
        assert not missing, f"{describe.__name__}: missing {missing}"
        wrong = {k: (got[k], v) for k, v in KAFKA_TOPIC_CONFIGS.items() if (got[k] or "") != v}
        assert not wrong, f"{describe.__name__}: (got, Kafka's default) {wrong}"


def test_legacy_topic_configs_are_accepted_and_reported(broker):
    """AlterConfigs with message.format.version (librdkafka's test 0092) and the other
    configs Kafka still accepts succeed, and DescribeConfigs reports the values set."""
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic("legacy", 1, 1, config=LEGACY)])["legacy"].result(timeout=20)
    got = confluent_configs(broker, "legacy")
    assert {k: got[k] for k in LEGACY} == LEGACY

    res = ConfigResource(ConfigResource.Type.TOPIC, "legacy", set_config={"message.format.version": "0.10.0"})
    a.alter_configs([res])[res].result(timeout=20)
    assert confluent_configs(broker, "legacy")["message.format.version"] == "0.10.0"

    from kafka.admin import ConfigResource as KpResource, ConfigResourceType, KafkaAdminClient

    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        resp = kp.alter_configs([KpResource(ConfigResourceType.TOPIC, "legacy",
                                            configs={"message.downconversion.enable": "true"})])
        assert resp == {"topic": {"legacy": "OK"}}, resp
    finally:
        kp.close()
    assert kafka_python_configs(broker, "legacy")["message.downconversion.enable"] == "true"
    # Data still flows on such a topic.
    assert produce_confluent(broker.bootstrap, "legacy", [Msg(0, b"k", b"v")]) == [(0, 0)]


def test_cleanup_policy_is_a_list_config(broker):
    """IncrementalAlterConfigs APPEND and SUBTRACT on cleanup.policy edit it as a list
    (librdkafka's test 0011); on a config that is not a list they are refused."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    create_topic(broker, "policy", 1)
    a = AdminClient({"bootstrap.servers": broker.bootstrap})

    def alter(name: str, value: str, op):
        res = ConfigResource(ConfigResource.Type.TOPIC, "policy",
                             incremental_configs=[ConfigEntry(name, value, incremental_operation=op)])
        a.incremental_alter_configs([res])[res].result(timeout=20)

    alter("cleanup.policy", "compact", AlterConfigOpType.APPEND)
    assert confluent_configs(broker, "policy")["cleanup.policy"] == "delete,compact"
    alter("cleanup.policy", "compact", AlterConfigOpType.APPEND)
    assert confluent_configs(broker, "policy")["cleanup.policy"] == "delete,compact"
    alter("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT)
    assert confluent_configs(broker, "policy")["cleanup.policy"] == "compact"
    alter("leader.replication.throttled.replicas", "0:1", AlterConfigOpType.APPEND)
    assert confluent_configs(broker, "policy")["leader.replication.throttled.replicas"] == "0:1"
    with pytest.raises(KafkaException) as e:
        alter("retention.ms", "1000", AlterConfigOpType.APPEND)
    assert e.value.args[0].name() == "INVALID_CONFIG"
    with pytest.raises(KafkaException) as e:
        alter("cleanup.policy", "compact", AlterConfigOpType.SUBTRACT)  # nothing left
    assert e.value.args[0].name() == "INVALID_CONFIG"
    assert confluent_configs(broker, "policy")["cleanup.policy"] == "compact"


# --------------------------------------------------------------------------------------
# Deleting a topic under load


def raw_produce_error(bootstrap: str, topic: str) -> int:
    from conftest import build_record_batch

    with Wire(bootstrap) as w:
        return w.produce(topic, 0, build_record_batch([(b"k", b"v", [])]))["error_code"]


def test_deleting_and_recreating_a_topic_under_load(make_broker):
    """Producers writing while their topic is deleted and recreated: writes to the deleted
    topic fail with UNKNOWN_TOPIC_OR_PARTITION, nothing is logged as an error, the new
    topic holds exactly what was written to it, and no object outlives the topics."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    # No auto-creation: the running producers' metadata requests would bring the topic back.
    broker = make_broker("--retention-check-interval", "1s", "--gc-orphan-grace", "2s",
                         "--upload-interval", "50ms", "--auto-create-topics", "false")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    stop = threading.Event()
    failures: list[str] = []

    def produce_forever():
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 2, "acks": "all",
                      "message.timeout.ms": 3000, "topic.metadata.refresh.interval.ms": 500})

        def on_delivery(err, _m):
            if err is not None:
                failures.append(err.name())

        while not stop.is_set():
            try:
                for i in range(200):
                    p.produce("churn", key=b"k%d" % i, value=b"x" * 500, on_delivery=on_delivery)
            except BufferError:
                pass
            p.poll(0.01)
        p.flush(10)

    for round in range(3):
        create_topic(broker, "churn", 3)
        threads = [threading.Thread(target=produce_forever) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        admin.delete_topics(["churn"], operation_timeout=10)["churn"].result(timeout=20)
        wait_until(lambda: raw_produce_error(broker.bootstrap, "churn") == 3, 10,
                   what="UNKNOWN_TOPIC_OR_PARTITION for the deleted topic")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        stop.clear()
    print(f"delivery failures by error: { {f: failures.count(f) for f in set(failures)} }")

    # The topic recreated once more holds exactly what is written to it now.
    create_topic(broker, "churn", 3)
    msgs = [Msg(i % 3, b"k%d" % i, b"v%d" % i) for i in range(30)]
    acks = produce_confluent(broker.bootstrap, "churn", msgs)
    assert as_comparable(consume_confluent(broker.bootstrap, "churn", range(3))) == expected_by_partition(msgs, acks)

    errors = [line for line in broker.log().splitlines() if " ERROR " in line]
    assert not errors, "errors logged:\n" + "\n".join(errors[:10])

    # Once every topic is gone, so is every object (after the orphan grace).
    admin.delete_topics(["churn"], operation_timeout=10)["churn"].result(timeout=20)
    objects = lambda: sorted(p.name for p in (broker.data_dir / "objects").rglob("*") if p.is_file())  # noqa: E731
    wait_until(lambda: not objects(), 30, interval=0.5, what="every object to be collected")
    broker.assert_alive()
