"""Consumer groups: the classic group protocol, committed offsets and the group
admin APIs, driven by librdkafka (confluent-kafka-python), kafka-python and
KafkaJS, plus hand-made requests for the error paths.

Every test asserts on data (which records each member got, committed offsets,
error codes) against what an Apache Kafka 3.x/4.x broker does. The KIP-848
protocol (group.protocol=consumer) is tested in test_groups_kip848.py.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from conftest import (
    Msg,
    Reader,
    Wire,
    create_topic,
    http_get,
    karray,
    kbytes,
    kstring,
    produce_confluent,
    run_kafkajs,
    wait_until,
    watermarks,
)

# Kafka error codes (https://kafka.apache.org/protocol#protocol_error_codes)
NONE = 0
OFFSET_METADATA_TOO_LARGE = 12
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82
GROUP_SUBSCRIBED_TO_TOPIC = 86

API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9
API_JOIN_GROUP = 11
API_HEARTBEAT = 12
API_LEAVE_GROUP = 13
API_SYNC_GROUP = 14
API_LIST_GROUPS = 16

FAST = ("--group-initial-rebalance-delay", "200ms")


@pytest.fixture
def fb(make_broker):
    """A broker whose first rebalance of an empty group waits 200 ms, not 3 s."""
    return make_broker(*FAST)


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def describe_group(broker, group):
    a = admin(broker)  # must outlive the future
    return a.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)


def future_error(fut, timeout=20) -> KafkaError | None:
    try:
        fut.result(timeout=timeout)
        return None
    except KafkaException as e:
        return e.args[0]


def make_msgs(partitions: int, per_partition: int, tag: str) -> list[Msg]:
    return [Msg(p, f"k{p}".encode(), f"{tag}-p{p}-{i}".encode()) for i in range(per_partition) for p in range(partitions)]


def rebalances_total(broker) -> float:
    status, body, _ = http_get(broker.http + "/metrics")
    assert status == 200, f"/metrics -> {status}"
    m = re.search(r"^sluice_group_rebalances_total\s+(\S+)$", body, re.M)
    assert m, "sluice_group_rebalances_total missing from /metrics"
    return float(m.group(1))


# --------------------------------------------------------------------------------------
# confluent-kafka group members


class Member:
    """A confluent-kafka group consumer polled by the test thread, recording
    its rebalance callbacks and every record it receives."""

    def __init__(self, broker, group: str, name: str, assignor: str = "range", **extra):
        from confluent_kafka import Consumer

        self.name = name
        self.conf = {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "client.id": name,
            "partition.assignment.strategy": assignor,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            "topic.metadata.refresh.interval.ms": 2000,
        }
        self.conf.update(extra)
        self.cooperative = assignor == "cooperative-sticky"
        self.c = Consumer(self.conf)
        self.events: list[tuple[float, str, list[int]]] = []  # (time, assign|revoke|lost, partitions)
        self.records: list[tuple[int, int, bytes]] = []  # (partition, offset, value)
        self.errors: list = []
        self.closed = False

    def subscribe(self, topics: list[str]):
        def ev(kind):
            def cb(consumer, parts):
                self.events.append((time.monotonic(), kind, sorted(p.partition for p in parts)))
            return cb

        self.c.subscribe(topics, on_assign=ev("assign"), on_revoke=ev("revoke"), on_lost=ev("lost"))

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.c.assignment()}

    def poll(self, t: float = 0.05):
        m = self.c.poll(t)
        if m is None:
            return
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                self.errors.append(m.error())
            return
        self.records.append((m.partition(), m.offset(), m.value()))

    def revoked_since(self, t0: float) -> set[int]:
        out = set()
        for t, kind, parts in self.events:
            if t >= t0 and kind in ("revoke", "lost"):
                out |= set(parts)
        return out

    def close(self):
        if not self.closed:
            self.closed = True
            self.c.close()


def poll_until(members: list[Member], cond, timeout: float, what: str):
    """Poll every live member in turn until cond() holds; raise after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            if not m.closed:
                m.poll(0.02)
        if cond():
            return
        if time.monotonic() > deadline:
            state = {m.name: (sorted(m.assigned()) if not m.closed else "closed", len(m.records), m.errors[-3:])
                     for m in members}
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; members: {state}")


def poll_for(members: list[Member], seconds: float):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in members:
            if not m.closed:
                m.poll(0.02)


def owns_disjoint(members, partitions: int, each: int | None = None) -> bool:
    sets = [m.assigned() for m in members]
    if each is not None and any(len(s) != each for s in sets):
        return False
    allp = [p for s in sets for p in s]
    return len(allp) == len(set(allp)) == partitions


def close_all(members):
    for m in members:
        try:
            m.close()
        except Exception:  # noqa: BLE001 - best effort in cleanup
            pass


def check_exactly_once(got: list[tuple[int, int, bytes]], msgs: list[Msg], acks: list[tuple[int, int]]):
    """got holds (partition, offset, value); each acknowledged record must be in it exactly once."""
    expected = {ack: m.value for m, ack in zip(msgs, acks)}
    seen: dict[tuple[int, int], int] = {}
    for p, o, _ in got:
        seen[(p, o)] = seen.get((p, o), 0) + 1
    dups = {k: n for k, n in seen.items() if n > 1}
    assert not dups, f"{len(dups)} records delivered more than once, e.g. {sorted(dups.items())[:5]}"
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    assert not missing, f"{len(missing)} records never consumed, e.g. {missing[:10]}"
    assert not extra, f"records consumed that were not produced: {extra[:10]}"
    wrong = [(p, o, v, expected[(p, o)]) for p, o, v in got if expected[(p, o)] != v]
    assert not wrong, f"values differ from what was produced: {wrong[:5]}"


# --------------------------------------------------------------------------------------
# librdkafka: three members split six partitions


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_confluent_three_members_split_six_partitions(fb, assignor):
    topic, group = f"split-{assignor}", f"g-split-{assignor}"
    create_topic(fb, topic, 6)
    members = [Member(fb, group, f"m{i}", assignor) for i in range(3)]
    try:
        for m in members:
            m.subscribe([topic])
        poll_until(members, lambda: owns_disjoint(members, 6, each=2), 30, "3 members owning 2 partitions each")

        # The assignor's layout, as computed by the leader and handed out through SyncGroup.
        by_id = sorted(members, key=lambda m: m.c.memberid())
        layouts = [sorted(m.assigned()) for m in by_id]
        if assignor == "range":
            assert layouts == [[0, 1], [2, 3], [4, 5]], layouts
        elif assignor == "roundrobin":
            assert layouts == [[0, 3], [1, 4], [2, 5]], layouts

        msgs = make_msgs(6, 50, assignor)
        acks = produce_confluent(fb.bootstrap, topic, msgs)
        poll_until(members, lambda: sum(len(m.records) for m in members) >= len(msgs), 30, "every record")
        poll_for(members, 1.0)  # anything delivered twice would show up now

        for m in members:
            foreign = {p for p, _, _ in m.records} - m.assigned()
            assert not foreign, f"{m.name} got records of partitions it does not own: {foreign}"
            assert not m.errors, f"{m.name} consumer errors: {m.errors}"
        check_exactly_once([r for m in members for r in m.records], msgs, acks)

        # DescribeGroups reports the same members, protocol and assignments.
        a = admin(fb)
        desc = a.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
        assert desc.state == ConsumerGroupState.STABLE, desc.state
        assert desc.partition_assignor == assignor
        assert not desc.is_simple_consumer_group
        got = {md.member_id: sorted(tp.partition for tp in md.assignment.topic_partitions) for md in desc.members}
        want = {m.c.memberid(): sorted(m.assigned()) for m in members}
        assert got == want
        assert {md.client_id for md in desc.members} == {"m0", "m1", "m2"}
    finally:
        close_all(members)


# --------------------------------------------------------------------------------------
# A member that dies (SIGKILL, no LeaveGroup) or closes


CHILD = r"""
import json, signal, sys, time
from confluent_kafka import Consumer, KafkaError
cfg = json.loads(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
c = Consumer(cfg["conf"])
c.subscribe([cfg["topic"]])
def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()
last = None
while not stop:
    m = c.poll(0.05)
    a = sorted(tp.partition for tp in c.assignment())
    if a != last:
        last = a
        out(ev="assignment", parts=a, member=c.memberid())
    if m is None or m.error():
        continue
    c.commit(message=m, asynchronous=False)
    out(ev="msg", p=m.partition(), o=m.offset(), v=m.value().decode())
c.close()
out(ev="closed")
"""


class ChildMember:
    """A group member in its own process, so that it can die without close()."""

    def __init__(self, broker, group, topic, assignor, **extra):
        conf = {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "client.id": "child",
            "partition.assignment.strategy": assignor,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
        conf.update(extra)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps({"conf": conf, "topic": topic})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.q: queue.Queue = queue.Queue()
        self.assignment: list[int] = []
        self.records: list[tuple[int, int, bytes]] = []
        self.closed_ok = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put(json.loads(line))

    def drain(self):
        while True:
            try:
                ev = self.q.get_nowait()
            except queue.Empty:
                return
            if ev["ev"] == "assignment":
                self.assignment = ev["parts"]
            elif ev["ev"] == "msg":
                self.records.append((ev["p"], ev["o"], ev["v"].encode()))
            elif ev["ev"] == "closed":
                self.closed_ok = True

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stderr(self) -> str:
        try:
            return self.proc.stderr.read()[-3000:]
        except Exception:  # noqa: BLE001
            return ""


@pytest.mark.parametrize(
    "how,assignor",
    [("kill", "range"), ("kill", "cooperative-sticky"), ("close", "roundrobin"), ("close", "cooperative-sticky")],
)
def test_member_departure_hands_partitions_over(fb, how, assignor):
    """A member killed without close() is dropped after its session timeout
    (6 s); one that closes leaves at once (LeaveGroup), so with a 30 s session
    timeout the handover is still prompt. Its partitions continue from its
    commits on the survivors; nothing is lost or consumed twice."""
    topic, group = f"depart-{how}-{assignor}", f"g-depart-{how}-{assignor}"
    create_topic(fb, topic, 6)
    session_ms = 6000 if how == "kill" else 30000
    members = [Member(fb, group, f"m{i}", assignor, **{"session.timeout.ms": session_ms}) for i in range(2)]
    child = ChildMember(fb, group, topic, assignor, **{"session.timeout.ms": session_ms})
    try:
        for m in members:
            m.subscribe([topic])

        def settled():
            child.drain()
            sets = [m.assigned() for m in members] + [set(child.assignment)]
            allp = [p for s in sets for p in s]
            return all(len(s) == 2 for s in sets) and len(set(allp)) == 6

        poll_until(members, settled, 40, "2 local members and the child owning 2 partitions each")
        child_parts = set(child.assignment)

        # Batch A: consumed by the three owners; the child commits each record, we commit at the end.
        msgs_a = make_msgs(6, 20, "A")
        acks_a = produce_confluent(fb.bootstrap, topic, msgs_a)

        def a_done():
            child.drain()
            return sum(len(m.records) for m in members) + len(child.records) >= len(msgs_a)

        poll_until(members, a_done, 30, "batch A")
        for m in members:
            m.c.commit(asynchronous=False)
        assert {p for p, _, _ in child.records} == child_parts

        t0 = time.monotonic()
        if how == "kill":
            child.kill()
        else:
            child.proc.send_signal(signal.SIGTERM)
        poll_until(members, lambda: owns_disjoint(members, 6), 30, "the survivors owning all 6 partitions")
        elapsed = time.monotonic() - t0
        if how == "close":
            child.proc.wait(timeout=10)
            child.drain()
            assert child.closed_ok, f"child did not close cleanly: {child.stderr()}"
            # LeaveGroup makes this prompt; waiting for the 30 s session would take >= ~25 s.
            assert elapsed < 8, f"rebalance after close() took {elapsed:.1f}s"
        else:
            # Not before the session timeout (less the up-to-0.5 s since its last heartbeat), not much after.
            assert 4.5 <= elapsed <= 20, f"dead member replaced after {elapsed:.1f}s (session timeout 6 s)"
        if assignor == "cooperative-sticky":
            # Incremental rebalance: survivors keep what they had and only gain partitions.
            for m in members:
                assert not m.revoked_since(t0), f"{m.name} lost partitions {m.revoked_since(t0)}"

        # Batch B, produced once the survivors own everything: continues after every commit.
        msgs_b = make_msgs(6, 20, "B")
        acks_b = produce_confluent(fb.bootstrap, topic, msgs_b)
        poll_until(members, lambda: sum(len(m.records) for m in members) + len(child.records)
                   >= len(msgs_a) + len(msgs_b), 30, "batch B")
        poll_for(members, 1.0)
        got = [r for m in members for r in m.records] + child.records
        check_exactly_once(got, msgs_a + msgs_b, acks_a + acks_b)
        # The dead member's partitions were consumed by the others.
        taken_over = {p for m in members for p, o, _ in m.records if p in child_parts}
        assert taken_over == child_parts

        desc = describe_group(fb, group)
        assert len(desc.members) == 2 and desc.state == ConsumerGroupState.STABLE
        assert {md.client_id for md in desc.members} == {"m0", "m1"}
    finally:
        child.kill()
        close_all(members)


# --------------------------------------------------------------------------------------
# Committed offsets across consumer and broker restarts


def consume_to_end(m: Member, ends: dict[int, int], timeout=30):
    def done():
        pos = {}
        for p, o, _ in m.records:
            pos[p] = max(pos.get(p, -1), o + 1)
        return all(pos.get(p, 0) >= e for p, e in ends.items() if e > 0)

    poll_until([m], done, timeout, f"{m.name} reaching {ends}")
    poll_for([m], 0.5)


def test_committed_offsets_survive_consumer_and_broker_restart(fb):
    topic, group = "resume", "g-resume"
    create_topic(fb, topic, 3)
    msgs = make_msgs(3, 30, "one")
    produce_confluent(fb.bootstrap, topic, msgs)
    a = admin(fb)

    # 1. Consume everything but commit chosen offsets, with metadata.
    c1 = Member(fb, group, "c1")
    c1.subscribe([topic])
    consume_to_end(c1, {0: 30, 1: 30, 2: 30})
    chosen = {0: 10, 1: 17, 2: 30}
    c1.c.commit(offsets=[TopicPartition(topic, p, o, metadata=f"c1-{p}") for p, o in chosen.items()], asynchronous=False)
    c1.close()

    # 2. A new consumer in the group resumes exactly there.
    c2 = Member(fb, group, "c2")
    committed = c2.c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    assert {tp.partition: tp.offset for tp in committed} == chosen
    assert {tp.partition: tp.metadata for tp in committed} == {p: f"c1-{p}" for p in range(3)}
    c2.subscribe([topic])
    consume_to_end(c2, {0: 30, 1: 30})
    for p in range(3):
        offs = sorted(o for q, o, _ in c2.records if q == p)
        assert offs == list(range(chosen[p], 30)), f"partition {p}: c2 read {offs[:3]}..{offs[-3:]}"
    c2.c.commit(offsets=[TopicPartition(topic, p, 30, metadata=f"c2-{p}") for p in range(3)], asynchronous=False)
    c2.close()

    # 3. Broker restart: offsets and metadata come back from the metadata store.
    fb.restart()
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)[group].result(timeout=20)
    assert {tp.partition: (tp.offset, tp.metadata) for tp in res.topic_partitions if tp.topic == topic} == \
        {p: (30, f"c2-{p}") for p in range(3)}
    more = make_msgs(3, 10, "two")
    produce_confluent(fb.bootstrap, topic, more)
    c3 = Member(fb, group, "c3")
    try:
        c3.subscribe([topic])
        consume_to_end(c3, {0: 40, 1: 40, 2: 40})
        assert sorted((p, o) for p, o, _ in c3.records) == [(p, o) for p in range(3) for o in range(30, 40)]
        assert {v for _, _, v in c3.records} == {m.value for m in more}

        c3.c.commit(asynchronous=False)
    finally:
        c3.close()
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)[group].result(timeout=20)
    assert {tp.partition: tp.offset for tp in res.topic_partitions if tp.topic == topic} == {0: 40, 1: 40, 2: 40}


def test_live_member_rides_through_broker_restart(fb):
    """A member that keeps polling while the broker restarts. Nothing may be
    lost and it must be able to commit again. Kafka also keeps the group
    itself: the coordinator reloads members, generation and assignment from
    __consumer_offsets and reschedules their session timers
    (GroupCoordinator.onGroupLoaded), so the member carries on in its
    generation, with no rebalance and no re-delivery of records consumed
    since its last commit."""
    topic, group = "ride", "g-ride"
    create_topic(fb, topic, 3)
    msgs = make_msgs(3, 10, "one")
    acks = produce_confluent(fb.bootstrap, topic, msgs)
    c = Member(fb, group, "rider", **{"session.timeout.ms": 30000})
    try:
        c.subscribe([topic])
        consume_to_end(c, {0: 10, 1: 10, 2: 10})
        c.c.commit(offsets=[TopicPartition(topic, p, 5) for p in range(3)], asynchronous=False)
        t_restart = time.monotonic()
        fb.restart()
        more = make_msgs(3, 5, "two")
        acks += produce_confluent(fb.bootstrap, topic, more)
        msgs += more
        consume_to_end(c, {0: 15, 1: 15, 2: 15}, timeout=40)
        poll_for([c], 2.0)
        assert {(p, o) for p, o, _ in c.records} == {a for a in acks}, "records lost across the restart"

        def commit_ok():
            c.poll(0.05)
            try:
                c.c.commit(offsets=[TopicPartition(topic, p, 15) for p in range(3)], asynchronous=False)
                return True
            except KafkaException:
                return False

        wait_until(commit_ok, 30, interval=0.2, what="a commit after the broker restart")
        a = admin(fb)
        res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)[group].result(timeout=20)
        assert {tp.partition: tp.offset for tp in res.topic_partitions} == {0: 15, 1: 15, 2: 15}
        # What Kafka does beyond that: no rebalance, so nothing delivered twice.
        assert not c.revoked_since(t_restart), f"the broker restart forced a rebalance: {c.events}"
        check_exactly_once(c.records, msgs, acks)
    finally:
        c.close()


# --------------------------------------------------------------------------------------
# Static membership


def test_static_member_restart_keeps_assignment_without_rebalance(fb):
    topic, group = "static", "g-static"
    create_topic(fb, topic, 6)
    extra = {"session.timeout.ms": 10000}
    members = [Member(fb, group, f"s{i}", "range", **{"group.instance.id": f"inst-{i}"}, **extra) for i in range(3)]
    try:
        for m in members:
            m.subscribe([topic])
        poll_until(members, lambda: owns_disjoint(members, 6, each=2), 30, "3 static members with 2 partitions each")
        poll_for(members, 1.0)
        before = {m.conf["group.instance.id"]: sorted(m.assigned()) for m in members}
        rebalances = rebalances_total(fb)
        assert rebalances >= 1  # the metric counts the rebalance(s) that formed the group
        a = admin(fb)
        desc0 = a.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
        ids0 = {md.group_instance_id: md.member_id for md in desc0.members}
        assert set(ids0) == set(before)

        # Restart every member in turn (so the leader restarts too), well within the session timeout.
        for i in range(3):
            t0 = time.monotonic()
            old = members[i]
            old.close()  # a static member does not send LeaveGroup
            new = Member(fb, group, f"s{i}b", "range", **{"group.instance.id": f"inst-{i}"}, **extra)
            members[i] = new
            new.subscribe([topic])
            poll_until(members, lambda: len(new.assigned()) > 0, 20, f"restarted inst-{i} getting its partitions")
            poll_for(members, 1.5)
            assert sorted(new.assigned()) == before[f"inst-{i}"], f"inst-{i} came back with a different assignment"
            for m in members:
                if m is not new:
                    evs = [e for e in m.events if e[0] >= t0]
                    assert not evs, f"{m.name} saw rebalance callbacks {evs} when inst-{i} restarted"
                    assert sorted(m.assigned()) == before[m.conf["group.instance.id"]]

        assert rebalances_total(fb) == rebalances, "restarting static members caused a rebalance"
        desc = a.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
        assert desc.state == ConsumerGroupState.STABLE
        got = {md.group_instance_id: sorted(tp.partition for tp in md.assignment.topic_partitions) for md in desc.members}
        assert got == before
        # Each instance carries a new member id now.
        assert all(md.member_id != ids0[md.group_instance_id] for md in desc.members)

        # Records still flow to the restarted members, once each.
        msgs = make_msgs(6, 10, "static")
        acks = produce_confluent(fb.bootstrap, topic, msgs)
        poll_until(members, lambda: sum(len(m.records) for m in members) >= len(msgs), 30, "records after restarts")
        check_exactly_once([r for m in members for r in m.records], msgs, acks)
    finally:
        close_all(members)


# --------------------------------------------------------------------------------------
# kafka-python


def test_kafka_python_group_and_admin(fb):
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.errors import GroupIdNotFoundError

    topic, group = "kp-group", "g-kafka-python"
    create_topic(fb, topic, 4)

    class KpMember(threading.Thread):
        """A kafka-python group consumer in its own thread (it is not thread-safe)."""

        def __init__(self, i):
            super().__init__(daemon=True)
            self.c = KafkaConsumer(
                bootstrap_servers=fb.bootstrap, group_id=group, client_id=f"kp{i}",
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=10000, heartbeat_interval_ms=500, fetch_max_wait_ms=100,
            )
            self.records: list[tuple[int, int, bytes]] = []
            self.assigned: set[int] = set()
            self.commit_req = threading.Event()
            self.committed = threading.Event()
            self.stop = threading.Event()
            self.error = None

        def run(self):
            try:
                self.c.subscribe([topic])
                while not self.stop.is_set():
                    for tp, recs in self.c.poll(timeout_ms=100).items():
                        self.records.extend((r.partition, r.offset, r.value) for r in recs)
                    self.assigned = {tp.partition for tp in self.c.assignment()}
                    if self.commit_req.is_set() and not self.committed.is_set():
                        self.c.commit()
                        self.committed.set()
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.error = e
            finally:
                self.c.close()

    members = [KpMember(i) for i in range(2)]
    ka = KafkaAdminClient(bootstrap_servers=fb.bootstrap)
    try:
        for m in members:
            m.start()

        def settled():
            sets = [m.assigned for m in members]
            assert not any(m.error for m in members), [m.error for m in members]
            return all(len(s) == 2 for s in sets) and sets[0] | sets[1] == {0, 1, 2, 3}

        wait_until(settled, 40, what="2 kafka-python members owning 2 partitions each")
        msgs = make_msgs(4, 25, "kp")
        acks = produce_confluent(fb.bootstrap, topic, msgs)
        wait_until(lambda: sum(len(m.records) for m in members) >= len(msgs), 30, what="all records")
        for m in members:
            m.commit_req.set()
        for m in members:
            assert m.committed.wait(10), f"commit did not happen: {m.error}"
        for m in members:
            assert {p for p, _, _ in m.records} <= m.assigned
        check_exactly_once(members[0].records + members[1].records, msgs, acks)

        listed = ka.list_groups()
        assert any(g["group_id"] == group for g in _as_dicts(listed)), listed
        stable = _as_dicts(ka.list_groups(states_filter=["Stable"]))
        assert [g["group_id"] for g in stable if g["group_id"] == group] == [group]
        desc = ka.describe_groups([group])[group]
        assert desc["group_state"] == "Stable" and desc["protocol_type"] == "consumer"
        described = desc["members"]
        assert len(described) == 2
        assert {m["client_id"] for m in described} == {"kp0", "kp1"}
        by_client = {m["client_id"]: sorted(p for t in _assigned(m) for p in t[1]) for m in described}
        assert by_client == {f"kp{i}": sorted(m.assigned) for i, m in enumerate(members)}, described
        offsets = ka.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic} == {p: 25 for p in range(4)}
    finally:
        for m in members:
            m.stop.set()
        for m in members:
            m.join(15)
    assert not any(m.error for m in members), [m.error for m in members]
    try:
        empty = _as_dicts(ka.list_groups(states_filter=["Empty"]))
        assert group in [g["group_id"] for g in empty]
        res = dict(ka.delete_groups([group, "g-kp-never-existed"]))
        assert res == {group: "OK", "g-kp-never-existed": "GroupIdNotFoundError"}, res
        assert group not in [g["group_id"] for g in _as_dicts(ka.list_groups())]
        try:
            after = ka.list_group_offsets({group: [KTP(topic, p) for p in range(4)]})[group]
            assert all(om.offset == -1 for om in after.values()), after
        except GroupIdNotFoundError:
            pass
    finally:
        ka.close()


def _as_dicts(listed) -> list[dict]:
    """kafka-python's list_groups entries, as dicts with at least group_id."""
    out = []
    for g in listed:
        if isinstance(g, dict):
            out.append(g)
        elif isinstance(g, tuple):
            out.append({"group_id": g[0], "protocol_type": g[1] if len(g) > 1 else None})
        else:
            out.append({"group_id": getattr(g, "group_id", None)})
    return out


def _assigned(member: dict) -> list[tuple[str, list[int]]]:
    """(topic, partitions) pairs of a described member's decoded assignment."""
    a = member.get("member_assignment")
    if a is None:
        return []
    if isinstance(a, dict):
        parts = a.get("assigned_partitions") or a.get("assignment") or []
    else:
        parts = getattr(a, "assigned_partitions", None) or getattr(a, "assignment", [])
        if callable(parts):
            parts = parts()
    out = []
    for tp in parts:
        if isinstance(tp, dict):
            out.append((tp.get("topic"), list(tp.get("partitions", []))))
        else:
            out.append((tp[0], list(tp[1])))
    return out


# --------------------------------------------------------------------------------------
# KafkaJS


def test_kafkajs_group_consume_and_admin(fb):
    topic, group = "js-group", "g-kafkajs"
    create_topic(fb, topic, 4)
    produce = [{"key": f"k{i}", "value": f"js-{i}", "partition": i % 4} for i in range(200)]
    r = run_kafkajs(fb.bootstrap, [
        {"op": "groupConsume", "groupId": group, "topic": topic, "consumers": 2, "partitions": 4,
         "produce": produce, "expect": len(produce), "timeoutMs": 60000},
    ], timeout=90)[0]
    assert "error" not in r, r
    assert not r["crashes"], r["crashes"]
    owned = [sorted(a["assignment"][topic]) for a in r["assignments"]]
    assert sorted(p for o in owned for p in o) == [0, 1, 2, 3] and all(owned), owned
    recs = r["records"]
    keys = [(x["partition"], int(x["offset"])) for x in recs]
    assert len(keys) == len(set(keys)) == 200, f"{len(keys)} records, {len(set(keys))} distinct"
    assert sorted(x["value"] for x in recs) == sorted(m["value"] for m in produce)
    for x in recs:
        assert int(x["value"].split("-")[1]) % 4 == x["partition"]
        assert x["partition"] in owned[x["consumer"]], f"consumer {x['consumer']} got partition {x['partition']}"
    per_part = {p: sum(1 for x in recs if x["partition"] == p) for p in range(4)}
    assert per_part == {p: 50 for p in range(4)}

    res = run_kafkajs(fb.bootstrap, [
        {"op": "listGroups"},
        {"op": "describeGroups", "groupIds": [group]},
        {"op": "fetchOffsets", "groupId": group, "topics": [topic]},
        {"op": "resetOffsets", "groupId": group, "topic": topic, "earliest": True},
        {"op": "fetchOffsets", "groupId": group, "topics": [topic]},
        {"op": "setOffsets", "groupId": group, "topic": topic,
         "partitions": [{"partition": p, "offset": str(10 + p)} for p in range(4)]},
        {"op": "fetchOffsets", "groupId": group, "topics": [topic]},
        {"op": "deleteGroups", "groupIds": [group]},
        {"op": "listGroups"},
        {"op": "deleteGroups", "groupIds": ["g-js-unknown"]},
    ])
    for i, step in enumerate(res[:9]):
        assert "error" not in step, (i, step)
    assert {"groupId": group, "protocolType": "consumer"} in res[0]["groups"]
    d = res[1]["groups"][0]
    assert d["groupId"] == group and d["state"] == "Empty" and d["members"] == [] and d["errorCode"] == 0

    def offs(step):
        (t,) = step["topics"]
        assert t["topic"] == topic
        return {p["partition"]: int(p["offset"]) for p in t["partitions"]}

    assert offs(res[2]) == {p: 50 for p in range(4)}
    # KafkaJS commits the EARLIEST sentinel itself, and Kafka stores it as given
    # (KafkaJS's own resetOffsets test expects '-2' from a real broker).
    assert offs(res[4]) == {p: -2 for p in range(4)}
    assert offs(res[6]) == {p: 10 + p for p in range(4)}
    assert res[7]["results"] == [{"groupId": group, "errorCode": 0}]
    assert group not in [g["groupId"] for g in res[8]["groups"]]
    err = res[9]["error"]
    assert err["name"] == "KafkaJSDeleteGroupsError", err
    assert err["groups"] == [{"groupId": "g-js-unknown", "errorCode": GROUP_ID_NOT_FOUND, "type": "GROUP_ID_NOT_FOUND"}]


def test_kafkajs_describe_running_group(fb):
    """While KafkaJS members run, another client sees them in DescribeGroups."""
    topic, group = "js-live", "g-kafkajs-live"
    create_topic(fb, topic, 2)
    # A librdkafka member holds the group while KafkaJS describes it.
    m = Member(fb, group, "holder", "range")
    try:
        m.subscribe([topic])
        poll_until([m], lambda: m.assigned() == {0, 1}, 30, "holder owning both partitions")
        res = run_kafkajs(fb.bootstrap, [
            {"op": "describeGroups", "groupIds": [group]},
            {"op": "resetOffsets", "groupId": group, "topic": topic, "earliest": True},
            {"op": "deleteGroups", "groupIds": [group]},
        ])
        poll_for([m], 0.2)
    finally:
        m.close()
    d = res[0]["groups"][0]
    assert d["state"] == "Stable" and d["protocol"] == "range" and d["protocolType"] == "consumer", d
    assert [x["clientId"] for x in d["members"]] == ["holder"]
    assert d["members"][0]["assignment"] == {topic: [0, 1]}
    # KafkaJS refuses to reset a running group; DeleteGroups answers NON_EMPTY_GROUP.
    assert res[1]["error"]["message"] == "The consumer group must have no running instances, current state: Stable"
    assert res[2]["error"]["groups"] == [{"groupId": group, "errorCode": NON_EMPTY_GROUP, "type": "NON_EMPTY_GROUP"}]


# --------------------------------------------------------------------------------------
# Admin: list with state filter, describe, delete, OffsetDelete, lag


def test_confluent_admin_list_describe_delete(fb):
    topic = "adm"
    create_topic(fb, topic, 2)
    a = admin(fb)
    live = Member(fb, "g-adm-live", "live", "roundrobin")
    try:
        live.subscribe([topic])
        poll_until([live], lambda: live.assigned() == {0, 1}, 30, "live member owning both partitions")
        # An Empty group: offsets committed outside any generation.
        idle = Member(fb, "g-adm-idle", "idle")
        idle.c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
        idle.close()

        def listing(states=None):
            kw = {"states": states} if states is not None else {}
            r = a.list_consumer_groups(request_timeout=15, **kw).result(timeout=20)
            assert not r.errors, r.errors
            return {g.group_id: g.state for g in r.valid}

        everything = listing()
        assert everything.get("g-adm-live") == ConsumerGroupState.STABLE
        assert everything.get("g-adm-idle") == ConsumerGroupState.EMPTY
        assert set(listing({ConsumerGroupState.STABLE})) == {"g-adm-live"}
        assert set(listing({ConsumerGroupState.EMPTY})) == {"g-adm-idle"}
        assert set(listing({ConsumerGroupState.EMPTY, ConsumerGroupState.STABLE})) == {"g-adm-live", "g-adm-idle"}
        assert listing({ConsumerGroupState.PREPARING_REBALANCING}) == {}
        # KIP-848 group types: both groups are "classic"; none is a "consumer" (new protocol) group.
        r = a.list_consumer_groups(types={ConsumerGroupType.CLASSIC}, request_timeout=15).result(timeout=20)
        assert {g.group_id for g in r.valid} == {"g-adm-live", "g-adm-idle"}
        assert all(g.type == ConsumerGroupType.CLASSIC for g in r.valid), r.valid
        r = a.list_consumer_groups(types={ConsumerGroupType.CONSUMER}, request_timeout=15).result(timeout=20)
        assert r.valid == [] and not r.errors

        d = a.describe_consumer_groups(["g-adm-live", "g-adm-idle"], request_timeout=15)
        live_d = d["g-adm-live"].result(timeout=20)
        assert live_d.state == ConsumerGroupState.STABLE and live_d.partition_assignor == "roundrobin"
        (md,) = live_d.members
        assert md.client_id == "live" and md.member_id == live.c.memberid()
        assert sorted((tp.topic, tp.partition) for tp in md.assignment.topic_partitions) == [(topic, 0), (topic, 1)]
        idle_d = d["g-adm-idle"].result(timeout=20)
        assert idle_d.state == ConsumerGroupState.EMPTY and idle_d.members == []

        fs = a.delete_consumer_groups(["g-adm-live", "g-adm-idle", "g-adm-unknown"], request_timeout=15)
        e_live = future_error(fs["g-adm-live"])
        e_unknown = future_error(fs["g-adm-unknown"])
        assert future_error(fs["g-adm-idle"]) is None
        assert e_live is not None and e_live.code() == NON_EMPTY_GROUP, e_live
        assert e_unknown is not None and e_unknown.code() == GROUP_ID_NOT_FOUND, e_unknown
        assert "g-adm-idle" not in listing()
        assert "g-adm-live" in listing()
        poll_for([live], 0.3)
        assert live.assigned() == {0, 1}, "the refused delete disturbed the live group"
    finally:
        live.close()
    # Once the member left, the group is Empty and can be deleted.
    wait_until(lambda: a.list_consumer_groups(states={ConsumerGroupState.EMPTY}, request_timeout=10)
               .result(timeout=15).valid, 10, what="live group turning Empty")
    assert future_error(a.delete_consumer_groups(["g-adm-live"], request_timeout=15)["g-adm-live"]) is None


def test_offset_delete(fb):
    """OffsetDelete (kafka-python's delete_group_offsets; confluent-kafka-python
    has no binding for it): allowed for topics the members do not subscribe
    to, GROUP_SUBSCRIBED_TO_TOPIC for those they do."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP

    create_topic(fb, "od-sub", 2)
    create_topic(fb, "od-other", 2)
    group = "g-offset-delete"
    m = Member(fb, group, "od")
    ka = KafkaAdminClient(bootstrap_servers=fb.bootstrap)
    a = admin(fb)
    try:
        m.subscribe(["od-sub"])
        poll_until([m], lambda: m.assigned() == {0, 1}, 30, "member owning od-sub")
        m.c.commit(offsets=[TopicPartition("od-sub", 0, 3), TopicPartition("od-sub", 1, 4),
                            TopicPartition("od-other", 0, 5), TopicPartition("od-other", 1, 6)], asynchronous=False)

        def committed():
            r = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)[group]
            return {(tp.topic, tp.partition): tp.offset for tp in r.result(timeout=20).topic_partitions}

        assert committed() == {("od-sub", 0): 3, ("od-sub", 1): 4, ("od-other", 0): 5, ("od-other", 1): 6}

        res = ka.delete_group_offsets(group, [KTP("od-other", 0)])
        assert {(tp.topic, tp.partition): e.errno for tp, e in res.items()} == {("od-other", 0): NONE}
        res = ka.delete_group_offsets(group, [KTP("od-sub", 0), KTP("od-sub", 1)])
        assert {(tp.topic, tp.partition): e.errno for tp, e in res.items()} == \
            {("od-sub", 0): GROUP_SUBSCRIBED_TO_TOPIC, ("od-sub", 1): GROUP_SUBSCRIBED_TO_TOPIC}
        assert committed() == {("od-sub", 0): 3, ("od-sub", 1): 4, ("od-other", 1): 6}
    finally:
        m.close()
    # Empty now: the subscribed topic's offsets can go too.
    res = ka.delete_group_offsets(group, [KTP("od-sub", 0)])
    assert {(tp.topic, tp.partition): e.errno for tp, e in res.items()} == {("od-sub", 0): NONE}
    r = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)[group].result(timeout=20)
    assert {(tp.topic, tp.partition): tp.offset for tp in r.topic_partitions} == {("od-sub", 1): 4, ("od-other", 1): 6}
    ka.close()


def test_lag_from_committed_offsets_and_high_watermarks(fb):
    topic, group = "lag", "g-lag"
    create_topic(fb, topic, 3)
    produced = {0: 40, 1: 25, 2: 7}
    msgs = [Msg(p, None, f"lag-{p}-{i}".encode()) for p, n in produced.items() for i in range(n)]
    produce_confluent(fb.bootstrap, topic, msgs)
    committed = {0: 31, 1: 25, 2: 0}

    # A group member consumes and commits M per partition.
    m = Member(fb, group, "lagger")
    try:
        m.subscribe([topic])
        consume_to_end(m, produced)
        m.c.commit(offsets=[TopicPartition(topic, p, o) for p, o in committed.items()], asynchronous=False)
    finally:
        m.close()

    a = admin(fb)
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)[group].result(timeout=20)
    got_committed = {tp.partition: tp.offset for tp in res.topic_partitions if tp.topic == topic}
    ends = a.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(3)}, request_timeout=15)
    highs = {tp.partition: f.result(timeout=20).offset for tp, f in ends.items()}
    assert highs == produced
    assert got_committed == committed
    lag = {p: highs[p] - got_committed[p] for p in range(3)}
    assert lag == {p: produced[p] - committed[p] for p in range(3)} == {0: 9, 1: 0, 2: 7}
    # Same through the consumer API (committed + watermarks).
    wm = watermarks(fb.bootstrap, topic, range(3))
    assert {p: wm[p][1] - got_committed[p] for p in range(3)} == lag


# --------------------------------------------------------------------------------------
# Bad input on raw sockets


def _join_v5(w: Wire, group, member_id="", session_ms=10000, rebalance_ms=10000, protocol_type="consumer",
             protocols=(("range", b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),), instance=None):
    body = (kstring(group) + struct.pack(">ii", session_ms, rebalance_ms) + kstring(member_id) + kstring(instance)
            + kstring(protocol_type) + karray([kstring(n) + kbytes(m) for n, m in protocols]))
    return w.send_request(API_JOIN_GROUP, 5, body)


def _join_v5_response(w: Wire, corr) -> dict:
    r = Reader(w.recv_frame())
    assert r.i32() == corr
    r.i32()  # throttle
    return {
        "error": r.i16(),
        "generation": r.i32(),
        "protocol": r.string(),
        "leader": r.string(),
        "member_id": r.string(),
        "members": r.array(lambda r: (r.string(), r.string(), r.bytes_())),
    }


def join(w, group, **kw) -> dict:
    return _join_v5_response(w, _join_v5(w, group, **kw))


def sync(w: Wire, group, generation, member_id, assignments=()) -> tuple[int, bytes | None]:
    body = (kstring(group) + struct.pack(">i", generation) + kstring(member_id) + kstring(None)
            + karray([kstring(m) + kbytes(a) for m, a in assignments]))
    r = w.request(API_SYNC_GROUP, 3, body)
    r.i32()
    return r.i16(), r.bytes_()


def heartbeat(w: Wire, group, generation, member_id) -> int:
    r = w.request(API_HEARTBEAT, 3, kstring(group) + struct.pack(">i", generation) + kstring(member_id) + kstring(None))
    r.i32()
    return r.i16()


def commit(w: Wire, group, generation, member_id, topic, offsets: dict[int, int], metadata="") -> dict[int, int]:
    parts = [struct.pack(">iqi", p, o, -1) + kstring(metadata) for p, o in offsets.items()]
    body = kstring(group) + struct.pack(">i", generation) + kstring(member_id) + kstring(None) + karray(
        [kstring(topic) + karray(parts)])
    r = w.request(API_OFFSET_COMMIT, 7, body)
    r.i32()
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16()))))
    return dict(topics[0][1])


def fetch_offsets(w: Wire, group, topic, partitions) -> dict[int, tuple[int, str, int]]:
    body = kstring(group) + karray([kstring(topic) + karray([struct.pack(">i", p) for p in partitions])])
    r = w.request(API_OFFSET_FETCH, 5, body)
    r.i32()
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i64(), r.i32(), r.string(), r.i16()))))
    top_error = r.i16()
    assert top_error == 0, top_error
    return {p: (o, md, e) for p, o, _, md, e in topics[0][1]}


def leave(w: Wire, group, member_ids) -> list[int]:
    body = kstring(group) + karray([kstring(m) + kstring(None) for m in member_ids])
    r = w.request(API_LEAVE_GROUP, 3, body)
    r.i32()
    assert r.i16() == 0
    return [e for _, _, e in r.array(lambda r: (r.string(), r.string(), r.i16()))]


def list_groups(w: Wire) -> dict[str, str]:
    r = w.request(API_LIST_GROUPS, 2, b"")
    r.i32()
    assert r.i16() == 0
    return dict(r.array(lambda r: (r.string(), r.string())))


def test_group_protocol_errors_on_raw_requests(fb):
    topic, group = "raw-group", "g-raw"
    create_topic(fb, topic, 2)
    w1, w2, w3 = Wire(fb.bootstrap), Wire(fb.bootstrap), Wire(fb.bootstrap)
    try:
        # KIP-394: JoinGroup v4+ without a member id -> MEMBER_ID_REQUIRED and an id to use.
        r = join(w1, group)
        assert r["error"] == MEMBER_ID_REQUIRED and r["member_id"], r
        m1 = r["member_id"]
        # Session timeout below --group-min-session-timeout (6 s) -> INVALID_SESSION_TIMEOUT.
        r = join(w2, group, member_id="", session_ms=1000)
        assert r["error"] == INVALID_SESSION_TIMEOUT, r
        r = join(w2, group, member_id="", session_ms=1800001)
        assert r["error"] == INVALID_SESSION_TIMEOUT, r
        # The real join with the id: after the initial delay, generation 1 with m1 as leader.
        r = join(w1, group, member_id=m1)
        assert r["error"] == NONE and r["leader"] == m1 and r["member_id"] == m1, r
        assert r["protocol"] == "range" and [m for m, _, _ in r["members"]] == [m1]
        gen1 = r["generation"]
        assert gen1 >= 1
        assignment = b"\x00\x00\x00\x00\x00\x01" + kstring(topic) + karray([struct.pack(">i", 0), struct.pack(">i", 1)]) + kbytes(None)
        assert sync(w1, group, gen1, m1, [(m1, assignment)]) == (NONE, assignment)
        assert heartbeat(w1, group, gen1, m1) == NONE

        # Heartbeat from a member the group does not know -> UNKNOWN_MEMBER_ID.
        assert heartbeat(w2, group, gen1, "nobody-0000") == UNKNOWN_MEMBER_ID
        assert heartbeat(w2, "g-raw-no-such-group", 1, "nobody") == UNKNOWN_MEMBER_ID
        # A different protocol type than the group's -> INCONSISTENT_GROUP_PROTOCOL
        # (checked before KIP-394 hands out an id, as Kafka does).
        r = join(w2, group, protocol_type="connect", protocols=(("default", b"x"),))
        assert r["error"] == INCONSISTENT_GROUP_PROTOCOL, r
        # Same type, but no protocol in common with the members -> INCONSISTENT_GROUP_PROTOCOL.
        r = join(w2, group, protocols=(("roundrobin", b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),))
        assert r["error"] == INCONSISTENT_GROUP_PROTOCOL, r
        # SyncGroup / Heartbeat / OffsetCommit with a generation that is not the group's -> ILLEGAL_GENERATION.
        assert sync(w1, group, gen1 + 5, m1)[0] == ILLEGAL_GENERATION
        assert heartbeat(w1, group, gen1 - 1, m1) == ILLEGAL_GENERATION
        assert commit(w1, group, gen1 + 1, m1, topic, {0: 1}) == {0: ILLEGAL_GENERATION}
        assert commit(w1, group, gen1, "nobody-0000", topic, {0: 1}) == {0: UNKNOWN_MEMBER_ID}
        # Commit metadata larger than the broker's limit -> OFFSET_METADATA_TOO_LARGE, the rest stored.
        assert commit(w1, group, gen1, m1, topic, {0: 5}, metadata="x" * 5000) == {0: OFFSET_METADATA_TOO_LARGE}

        # A second member joins -> rebalance: m1 learns through its heartbeat, and rejoins.
        r = join(w2, group)
        assert r["error"] == MEMBER_ID_REQUIRED
        m2 = r["member_id"]
        corr2 = _join_v5(w2, group, member_id=m2)  # held until m1 rejoins
        assert wait_until(lambda: heartbeat(w1, group, gen1, m1) == REBALANCE_IN_PROGRESS, 10,
                          what="REBALANCE_IN_PROGRESS on heartbeat")
        r1 = join(w1, group, member_id=m1)
        r2 = _join_v5_response(w2, corr2)
        assert r1["error"] == r2["error"] == NONE, (r1, r2)
        gen2 = r1["generation"]
        assert gen2 == r2["generation"] > gen1
        assert r1["leader"] == r2["leader"] == m1
        assert sorted(m for m, _, _ in r1["members"]) == sorted([m1, m2]) and r2["members"] == []
        # The previous generation is stale now.
        assert sync(w2, group, gen1, m2)[0] == ILLEGAL_GENERATION

        # The group still works: leader syncs, follower receives its assignment, commits are stored.
        a1 = b"\x00\x00" + karray([kstring(topic) + karray([struct.pack(">i", 0)])]) + kbytes(None)
        a2 = b"\x00\x00" + karray([kstring(topic) + karray([struct.pack(">i", 1)])]) + kbytes(None)
        w2.sock.settimeout(10)
        corr = w2.send_request(API_SYNC_GROUP, 3, kstring(group) + struct.pack(">i", gen2) + kstring(m2)
                               + kstring(None) + karray([]))
        assert sync(w1, group, gen2, m1, [(m1, a1), (m2, a2)]) == (NONE, a1)
        rr = Reader(w2.recv_frame())
        assert rr.i32() == corr
        rr.i32()
        assert (rr.i16(), rr.bytes_()) == (NONE, a2)
        assert heartbeat(w1, group, gen2, m1) == NONE and heartbeat(w2, group, gen2, m2) == NONE
        assert heartbeat(w2, group, gen1, m2) == ILLEGAL_GENERATION
        assert commit(w1, group, gen1, m1, topic, {0: 1}) == {0: ILLEGAL_GENERATION}
        assert commit(w1, group, gen2, m1, topic, {0: 7}, metadata="m1") == {0: NONE}
        assert commit(w2, group, gen2, m2, topic, {1: 9}, metadata="m2") == {1: NONE}
        assert fetch_offsets(w3, group, topic, [0, 1]) == {0: (7, "m1", 0), 1: (9, "m2", 0)}
        assert list_groups(w3)[group] == "consumer"
        # Batched LeaveGroup: both known members leave, an unknown one is refused.
        assert leave(w3, group, [m1, "nobody-0000", m2]) == [NONE, UNKNOWN_MEMBER_ID, NONE]
        assert heartbeat(w1, group, gen2, m1) == UNKNOWN_MEMBER_ID
        # Empty group: a commit from outside any generation is accepted again.
        assert commit(w3, group, -1, "", topic, {0: 11}) == {0: NONE}
        assert fetch_offsets(w3, group, topic, [0, 1]) == {0: (11, "", 0), 1: (9, "m2", 0)}
    finally:
        for w in (w1, w2, w3):
            w.close()
    desc = describe_group(fb, group)
    assert desc.state == ConsumerGroupState.EMPTY and desc.members == []
    fb.assert_alive()


def test_commit_during_completing_rebalance_checks_member_and_generation_first(fb):
    """While the group waits for the leader's SyncGroup (CompletingRebalance),
    Kafka validates the member and generation of an OffsetCommit before the
    state: a stale generation gets ILLEGAL_GENERATION, an unknown member
    UNKNOWN_MEMBER_ID, and only a current member REBALANCE_IN_PROGRESS
    (ClassicGroup.validateOffsetCommit)."""
    topic, group = "raw-completing", "g-raw-completing"
    create_topic(fb, topic, 1)
    with Wire(fb.bootstrap) as w1, Wire(fb.bootstrap) as w2:
        m1 = join(w1, group)["member_id"]
        r = join(w1, group, member_id=m1)
        gen1 = r["generation"]
        assert sync(w1, group, gen1, m1, [(m1, b"")])[0] == NONE
        m2 = join(w2, group)["member_id"]
        corr2 = _join_v5(w2, group, member_id=m2)
        wait_until(lambda: heartbeat(w1, group, gen1, m1) == REBALANCE_IN_PROGRESS, 10, what="rebalance")
        gen2 = join(w1, group, member_id=m1)["generation"]
        assert _join_v5_response(w2, corr2)["generation"] == gen2 > gen1
        # Nobody has sent SyncGroup for gen2 yet: the group is CompletingRebalance.
        results = {
            "current member": commit(w1, group, gen2, m1, topic, {0: 1}),
            "stale generation": commit(w1, group, gen1, m1, topic, {0: 1}),
            "unknown member": commit(w1, group, gen2, "nobody-0000", topic, {0: 1}),
        }
        assert results == {
            "current member": {0: REBALANCE_IN_PROGRESS},
            "stale generation": {0: ILLEGAL_GENERATION},
            "unknown member": {0: UNKNOWN_MEMBER_ID},
        }


def test_static_member_replacement_fences_the_old_instance(fb):
    """KIP-345 on the wire: a static member joins without MEMBER_ID_REQUIRED;
    a new process with the same group.instance.id takes the place over
    without a new generation, and the old member id is fenced."""
    topic, group = "raw-static", "g-raw-static"
    create_topic(fb, topic, 2)
    with Wire(fb.bootstrap) as w1, Wire(fb.bootstrap) as w2, Wire(fb.bootstrap) as w3:
        r = join(w1, group, instance="inst-a")
        assert r["error"] == NONE and r["member_id"], r  # static members skip KIP-394's round trip
        old = r["member_id"]
        gen = r["generation"]
        assert r["leader"] == old and [(m, i) for m, i, _ in r["members"]] == [(old, "inst-a")]
        asg = b"\x00\x00" + karray([kstring(topic) + karray([struct.pack(">i", 0), struct.pack(">i", 1)])]) + kbytes(None)
        assert sync(w1, group, gen, old, [(old, asg)]) == (NONE, asg)

        # The instance restarts: same instance id, no member id, same subscription.
        r = join(w2, group, instance="inst-a")
        assert r["error"] == NONE, r
        new = r["member_id"]
        assert new and new != old
        assert r["generation"] == gen, "a static rejoin with unchanged metadata must not start a new generation"
        assert r["leader"] == new, "the replaced leader's role passes to its new member id"
        assert sync(w2, group, gen, new) == (NONE, asg), "the new instance gets the assignment it had"
        assert heartbeat(w2, group, gen, new) == NONE

        # The old process is fenced.
        hb = w1.request(API_HEARTBEAT, 3, kstring(group) + struct.pack(">i", gen) + kstring(old) + kstring("inst-a"))
        hb.i32()
        assert hb.i16() == FENCED_INSTANCE_ID
        r = join(w1, group, member_id=old, instance="inst-a")
        assert r["error"] == FENCED_INSTANCE_ID, r

        # Leaving by instance id alone (LeaveGroup v3+, member id empty) removes the member.
        assert leave(w3, group, [""]) == [UNKNOWN_MEMBER_ID]
        body = kstring(group) + karray([kstring("") + kstring("inst-a")])
        lr = w3.request(API_LEAVE_GROUP, 3, body)
        lr.i32()
        assert lr.i16() == NONE
        assert [e for _, _, e in lr.array(lambda r: (r.string(), r.string(), r.i16()))] == [NONE]
        assert heartbeat(w2, group, gen, new) == UNKNOWN_MEMBER_ID
    desc = describe_group(fb, group)
    assert desc.state == ConsumerGroupState.EMPTY and desc.members == []
