"""Record timestamps per topic: `message.timestamp.type=LogAppendTime` (the broker
stamps each batch with its append time, and clients report that time and type) and
KIP-937's bounds (`message.timestamp.before.max.ms`, `...after.max.ms`: records too
far from the broker's clock get INVALID_TIMESTAMP). Checked with librdkafka
(confluent-kafka) and kafka-python."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, Producer, TopicPartition
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME

from conftest import create_topic

HOUR_MS = 3_600_000


def produce(broker, topic: str, values_and_timestamps: list[tuple[bytes, int]]) -> list:
    """Produce each (value, timestamp); the delivery reports' (error, timestamp) in order."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    reports = []
    for value, ts in values_and_timestamps:
        p.produce(topic, value=value, timestamp=ts,
                  on_delivery=lambda err, msg: reports.append((err, msg.timestamp())))
        p.flush(20)
    return reports


def consume_timestamps(broker, topic: str, n: int) -> list[tuple[bytes, tuple[int, int]]]:
    """(value, (timestamp type, timestamp)) of the first n records of partition 0, by librdkafka."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ts-reader", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.monotonic() + 20
    try:
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out.append((m.value(), m.timestamp()))
    finally:
        c.close()
    assert len(out) == n, out
    return out


def test_log_append_time_replaces_the_producers_timestamp(broker):
    topic = "appended"
    create_topic(broker, topic, config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    reports = produce(broker, topic, [(b"old", 1_000), (b"future", before + 10 * HOUR_MS)])
    after = int(time.time() * 1000)
    # The delivery reports carry the broker's append time (ProduceResponse log_append_time_ms).
    for err, (kind, ts) in reports:
        assert err is None, err
        assert kind == TIMESTAMP_LOG_APPEND_TIME and before <= ts <= after, (kind, ts, before, after)
    got = consume_timestamps(broker, topic, 2)
    assert [v for v, _ in got] == [b"old", b"future"]
    for _, (kind, ts) in got:
        assert kind == TIMESTAMP_LOG_APPEND_TIME and before <= ts <= after, (kind, ts)

    # kafka-python reports the same type (1: LogAppendTime) and time.
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTopicPartition

    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=10000)
    kc.assign([KTopicPartition(topic, 0)])
    kc.seek_to_beginning()
    recs = [r for _, r in zip(range(2), kc)]
    kc.close()
    assert [(r.value, r.timestamp_type) for r in recs] == [(b"old", 1), (b"future", 1)]
    assert [r.timestamp for r in recs] == [ts for _, (_, ts) in got]


def test_switching_a_topic_to_log_append_time_takes_effect(broker):
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    topic = "switched"
    create_topic(broker, topic)
    produce(broker, topic, [(b"created", 1_000)])
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res])[res].result(20)
    now = int(time.time() * 1000)
    produce(broker, topic, [(b"appended", 1_000)])
    (v1, (k1, t1)), (v2, (k2, t2)) = consume_timestamps(broker, topic, 2)
    # The record written before the change keeps its own timestamp.
    assert (v1, k1, t1) == (b"created", TIMESTAMP_CREATE_TIME, 1_000)
    assert v2 == b"appended" and k2 == TIMESTAMP_LOG_APPEND_TIME and t2 >= now


def test_timestamps_outside_the_topic_bounds_are_refused(broker):
    topic = "bounded"
    create_topic(broker, topic, config={"message.timestamp.before.max.ms": str(HOUR_MS),
                                        "message.timestamp.after.max.ms": "60000"})
    now = int(time.time() * 1000)
    reports = produce(broker, topic, [
        (b"now", now),
        (b"two-hours-ago", now - 2 * HOUR_MS),
        (b"half-an-hour-ago", now - HOUR_MS // 2),
        (b"in-ten-minutes", now + 600_000),
    ])
    errors = [None if err is None else err.code() for err, _ in reports]
    assert errors == [None, KafkaError.INVALID_TIMESTAMP, None, KafkaError.INVALID_TIMESTAMP], reports
    # Only the accepted records are in the log, with their own timestamps.
    got = consume_timestamps(broker, topic, 2)
    assert got == [(b"now", (TIMESTAMP_CREATE_TIME, now)),
                   (b"half-an-hour-ago", (TIMESTAMP_CREATE_TIME, now - HOUR_MS // 2))]
