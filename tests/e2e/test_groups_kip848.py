"""KIP-848 consumer groups (group.protocol=consumer) driven by librdkafka.

The broker computes assignments (uniform or range) and reconciles members;
these tests check that every record is consumed exactly once by the member
that owns its partition, that members leaving hand their partitions over,
that commits resume a restarted member, and that ConsumerGroupDescribe
reports the group.
"""

import threading
import time
import uuid

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient

from conftest import create_topic, wait_until

FAST = ("--group-consumer-heartbeat-interval", "300ms", "--group-consumer-session-timeout", "6s")


def consumer(bootstrap, group, **extra):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": "consumer",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    conf.update(extra)
    return ck.Consumer(conf)


def produce(bootstrap, topic, n, start=0):
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i in range(start, start + n):
        p.produce(topic, key=str(i).encode(), value=f"v{i}".encode())
    assert p.flush(30) == 0


class Member(threading.Thread):
    """A group member polling in its own thread, recording what it consumed."""

    def __init__(self, bootstrap, group, topic, name, **extra):
        super().__init__(daemon=True)
        self.c = consumer(bootstrap, group, **extra)
        self.c.subscribe([topic])
        self.name_ = name
        self.records = []
        self.assigned = set()
        self.stop_flag = threading.Event()
        self.errors = []

    def run(self):
        while not self.stop_flag.is_set():
            m = self.c.poll(0.2)
            self.assigned = {tp.partition for tp in self.c.assignment()}
            if m is None:
                continue
            if m.error():
                self.errors.append(m.error())
                continue
            self.records.append((m.partition(), m.offset(), m.value().decode()))
        self.c.commit(asynchronous=False) if self.records else None
        self.c.close()

    def stop(self):
        self.stop_flag.set()
        self.join(20)


def test_three_members_split_and_consume_exactly_once(make_broker):
    b = make_broker(*FAST)
    topic = f"k848-{uuid.uuid4().hex[:6]}"
    create_topic(b, topic, partitions=6)
    group = f"g-{topic}"
    members = [Member(b.bootstrap, group, topic, f"m{i}") for i in range(3)]
    for m in members:
        m.start()
    # Wait for a settled assignment: three disjoint, non-empty sets covering all six partitions.
    def settled():
        sets = [m.assigned for m in members]
        union = set().union(*sets)
        return all(sets) and len(union) == 6 and sum(len(s) for s in sets) == 6

    wait_until(settled, timeout=30, what="assignment spread over three members")
    produce(b.bootstrap, topic, 3000)
    wait_until(lambda: sum(len(m.records) for m in members) >= 3000, timeout=30, what="all records consumed")
    time.sleep(1)  # nothing more should arrive
    for m in members:
        m.stop()
    got = [r for m in members for r in m.records]
    assert len(got) == 3000, f"{len(got)} records consumed, duplicates or losses"
    assert {int(v[1:]) for _, _, v in got} == set(range(3000))
    for m in members:
        assert m.records, f"{m.name_} consumed nothing"
        assert {p for p, _, _ in m.records} <= m.assigned | {p for p, _, _ in m.records}
    # Each partition was consumed by exactly one member.
    owners = {}
    for m in members:
        for p, _, _ in m.records:
            owners.setdefault(p, set()).add(m.name_)
    assert all(len(o) == 1 for o in owners.values()), owners

    # Committed offsets equal the end of each partition.
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    from confluent_kafka import ConsumerGroupTopicPartitions

    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result()
    committed = {tp.partition: tp.offset for tp in res.topic_partitions}
    per_partition = {}
    for p, o, _ in got:
        per_partition[p] = max(per_partition.get(p, -1), o + 1)
    assert committed == per_partition


def test_leaving_member_hands_over_and_commits_resume(make_broker):
    b = make_broker(*FAST)
    topic = f"k848-{uuid.uuid4().hex[:6]}"
    create_topic(b, topic, partitions=4)
    group = f"g-{topic}"
    a = Member(b.bootstrap, group, topic, "a")
    c = Member(b.bootstrap, group, topic, "c")
    a.start()
    c.start()
    wait_until(lambda: len(a.assigned) == 2 and len(c.assigned) == 2, timeout=30, what="2+2 split")
    produce(b.bootstrap, topic, 400)
    wait_until(lambda: len(a.records) + len(c.records) >= 400, timeout=30, what="first 400")
    c.stop()  # commits and leaves
    wait_until(lambda: len(a.assigned) == 4, timeout=20, what="survivor owns all four partitions")
    produce(b.bootstrap, topic, 400, start=400)
    wait_until(lambda: len(a.records) + len(c.records) >= 800, timeout=30, what="next 400")
    a.stop()
    values = sorted(int(v[1:]) for m in (a, c) for _, _, v in m.records)
    assert values == list(range(800))

    # A new member resumes from the committed offsets: it sees only new records.
    produce(b.bootstrap, topic, 50, start=800)
    r = Member(b.bootstrap, group, topic, "r")
    r.start()
    wait_until(lambda: len(r.records) >= 50, timeout=30, what="records after the commit")
    time.sleep(1)
    r.stop()
    assert sorted(int(v[1:]) for _, _, v in r.records) == list(range(800, 850))


def test_describe_consumer_group_and_range_assignor(make_broker):
    b = make_broker(*FAST)
    topic = f"k848-{uuid.uuid4().hex[:6]}"
    create_topic(b, topic, partitions=5)
    group = f"g-{topic}"
    ms = [Member(b.bootstrap, group, topic, f"m{i}", **{"group.remote.assignor": "range"}) for i in range(2)]
    for m in ms:
        m.start()
    wait_until(lambda: sorted(len(m.assigned) for m in ms) == [2, 3], timeout=30, what="range split 3/2")
    # Range hands out contiguous partitions.
    for m in ms:
        parts = sorted(m.assigned)
        assert parts == list(range(parts[0], parts[0] + len(parts)))
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result()
    assert len(desc.members) == 2
    described = sorted(sorted(tp.partition for tp in m.assignment.topic_partitions) for m in desc.members)
    assert described == sorted(sorted(m.assigned) for m in ms)
    for m in ms:
        m.stop()
    b.assert_alive()
