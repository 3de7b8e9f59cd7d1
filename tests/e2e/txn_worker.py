"""A consume-transform-produce worker with exactly-once semantics (librdkafka).

    python3 txn_worker.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID TOTAL

Reads INPUT as a member of GROUP (read_committed), and for each batch runs one
transaction: the batch's records, transformed ("out:" + value, same key), go to
OUTPUT, and the consumer's positions are sent as the group's offsets, so that
output and progress commit together. Exits 0 once GROUP's committed offsets cover
TOTAL input records; on any error it exits 3 without cleaning up, like a crash,
and the test starts it again. A restarted worker's init_transactions fences the
last instance and aborts its open transaction; the consumer resumes from the
offsets that committed.
"""

from __future__ import annotations

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def committed_total(consumer: Consumer, topic: str, partitions: list[int]) -> int:
    tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    return sum(max(tp.offset, 0) for tp in tps)


def main() -> int:
    bootstrap, src, dst, group, txid, total = sys.argv[1:7]
    total = int(total)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
    })
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": txid,
        "transaction.timeout.ms": 10000,
        "linger.ms": 5,
    })
    producer.init_transactions(30)
    consumer.subscribe([src])
    partitions = None
    idle_since = time.monotonic()
    while True:
        msgs = consumer.consume(num_messages=25, timeout=0.5)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            if partitions is None:
                md = consumer.list_topics(src, timeout=10)
                partitions = sorted(md.topics[src].partitions)
            if time.monotonic() - idle_since > 0.5 and committed_total(consumer, src, partitions) >= total:
                return 0
            continue
        idle_since = time.monotonic()
        producer.begin_transaction()
        next_offsets: dict[int, int] = {}
        for m in msgs:
            producer.produce(dst, key=m.key(), value=b"out:" + m.value())
            next_offsets[m.partition()] = m.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(src, p, o) for p, o in next_offsets.items()], consumer.consumer_group_metadata(), 30
        )
        producer.commit_transaction(30)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as e:
        print(f"txn_worker: {e}", file=sys.stderr)
        sys.exit(3)
