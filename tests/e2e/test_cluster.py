"""Cluster mode: three stateless brokers sharing a real PostgreSQL server and a
real S3 API server (moto), driven by librdkafka.

* SIGKILL the leader of a partition under idempotent acks=all load: every
  acknowledged record is read back exactly once, and produce to the dead
  broker's partitions resumes within the target (5 s).
* SIGSTOP a broker past its lease, then resume it: its partitions moved
  meanwhile, it suspended its own writes, and nothing it wrote late counts.
* Scale from one broker to three: partitions spread with no data copied.
* Rolling restart of every broker (SIGTERM drains) under load: zero errors.
* Metadata, DescribeCluster, `sluice cluster status|drain` and GET /api/v1/cluster.
* MQTT devices (paho-mqtt) connected to one broker publish into partitions that other
  brokers lead: the gateway forwards those records to their leaders, and SIGKILL of such
  a leader loses no acknowledged publish. A retained message set, replaced or cleared on
  one broker reaches new subscribers on the others. Commands reach devices on every
  broker, whichever broker leads their partition. Publishes reach subscribers on every
  broker, through mqtt.forward, and only what other brokers subscribed to goes there. A
  share group with members on several brokers gets each message once.
* Security: every broker advertises its own SASL_SSL address to SASL_SSL clients, and users
  in PostgreSQL authenticate on every broker.
* Transactions: a consume-transform-produce worker keeps exactly-once output while the
  broker coordinating its transactional id is SIGKILLed, twice; another broker takes
  the id over from the state in PostgreSQL.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from conftest import Msg, Wire, build_record_batch, create_topic, http_get, wait_until
from conftest import free_port as conftest_free_port
from eos import run_exactly_once
from loadgen import LoadProducer, check_exactly_once
from mqtt_helpers import Device, events, headers, kafka_records
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
import services

# The failover target of the issue; the figures measured are printed.
FAILOVER_TARGET_S = 5.0


@pytest.fixture
def cluster(make_broker):
    """Factory: cluster(n) -> n started brokers (node ids 1..n) on one fresh
    PostgreSQL database and one fresh S3 bucket. `add()` starts one more."""
    pg = services.postgres()
    s3 = services.s3()
    meta = pg.create_database()
    bucket = s3.create_bucket()
    nodes = []

    class Cluster(list):
        bucket_name = bucket
        s3_server = s3

        extra: tuple = ()

        def add(self, start: bool = True):
            node_id = len(self) + 1
            b = make_broker(
                "--meta", meta, "--store", f"s3://{bucket}/sluice",
                "--flush-interval", "5ms", *self.extra,
                name=f"node{node_id}", node_id=node_id, env=s3.env(), start=start,
            )
            self.append(b)
            return b

        @property
        def bootstrap(self) -> str:
            return ",".join(b.bootstrap for b in self if b.running())

    def start(n: int, *extra: str) -> Cluster:
        """`extra`: more `sluice serve` arguments for every broker."""
        c = Cluster()
        c.extra = extra
        for _ in range(n):
            c.add()
        nodes.append(c)
        return c

    return start


def status(broker) -> dict:
    code, body, _ = http_get(broker.http + "/api/v1/cluster")
    assert code == 200, body
    return json.loads(body)


def leaders(broker, topic: str) -> dict[int, int]:
    return {p["partition"]: p["leader"] for p in status(broker)["partitions"] if p["topic"] == topic}


def balanced(broker, topic: str, nodes: set[int], partitions: int) -> bool:
    """Every partition of `topic` led by one of `nodes`, and the controller done: no move
    pending and partition counts over all topics (the MQTT gateway's too) within one of
    each other across `nodes`."""
    s = status(broker)
    alive = {b["node_id"] for b in s["brokers"] if b["alive"]}
    lead = leaders(broker, topic)
    if len(lead) != partitions or set(lead.values()) - nodes or not nodes <= alive:
        return False
    counts = [sum(1 for p in s["partitions"] if p["leader"] == n) for n in nodes]
    return max(counts) - min(counts) <= 1 and all(p["next_leader"] == -1 for p in s["partitions"])


def first_ack_after(load: LoadProducer, t0: float, partitions: set[int]) -> dict[int, float]:
    """Seconds from t0 to the first acknowledgement of each partition after t0."""
    out: dict[int, float] = {}
    with load.lock:
        for t, p in load.ack_times:
            if t > t0 and p in partitions and p not in out:
                out[p] = t - t0
    return out


def test_metadata_lists_live_brokers_and_spread_leaders(cluster):
    c = cluster(3)
    create_topic(c[0], "spread", 6)
    wait_until(lambda: balanced(c[0], "spread", {1, 2, 3}, 6), 15, what="partitions spread over 3 brokers")

    admin = AdminClient({"bootstrap.servers": c[1].bootstrap})
    # Each broker re-reads the cluster every --cluster-poll-interval (200 ms).
    def settled():
        m = admin.list_topics(timeout=10)
        lead = {p.id: p.leader for p in m.topics["spread"].partitions.values()}
        return sorted(m.brokers) == [1, 2, 3] and lead == leaders(c[2], "spread") and m

    md = wait_until(settled, 5, what="Metadata to show all brokers and the current leaders")
    assert {md.brokers[i].port for i in (1, 2, 3)} == {b.kafka_port for b in c}
    assert {p.leader for p in md.topics["spread"].partitions.values()} == {1, 2, 3}
    desc = admin.describe_cluster(request_timeout=10).result()
    assert sorted(n.id for n in desc.nodes) == [1, 2, 3]
    s = status(c[0])
    assert desc.controller.id == s["controller"]
    # Every broker leads its share of the topic (other topics, such as the MQTT gateway's, add to the totals).
    assert sorted(list(leaders(c[0], "spread").values()).count(n) for n in (1, 2, 3)) == [2, 2, 2]
    assert all(b["partitions"] >= 2 for b in s["brokers"])
    assert sum(b["group_shards"] for b in s["brokers"]) == 16

    out = c[0].run_cli("cluster", "status", "--http", c[1].http, "--partitions", check=True).stdout
    assert f"controller: {s['controller']}" in out
    assert out.count("true ") >= 3 and "spread" in out, out

    # Groups work across brokers: each group's coordinator is its shard's leader.
    consumer = Consumer({"bootstrap.servers": c.bootstrap, "group.id": "g-cluster", "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe(["spread"])
        wait_until(lambda: consumer.poll(0.2) is None and len(consumer.assignment()) == 6, 30, what="group assignment")
        consumer.commit(offsets=[TopicPartition("spread", p, 0) for p in range(6)], asynchronous=False)
    finally:
        consumer.close()


def test_sigkill_leader_under_load_loses_nothing(cluster):
    c = cluster(3)
    topic, n = "failover", 6
    create_topic(c[0], topic, n)
    wait_until(lambda: balanced(c[0], topic, {1, 2, 3}, n), 15, what="partitions spread")
    load = LoadProducer(c.bootstrap, topic, n, rate=1500)
    load.start()
    time.sleep(2.0)

    victim_id = leaders(c[0], topic)[0]
    victim = c[victim_id - 1]
    affected = {p for p, l in leaders(c[0], topic).items() if l == victim_id}
    with load.lock:
        acked_before = len(load.acked)
    t0 = time.monotonic()
    victim.kill()
    survivor = next(b for b in c if b.running())
    wait_until(lambda: all(l != victim_id for l in leaders(survivor, topic).values()), 15,
               what="partitions moved off the killed broker")
    moved_after = time.monotonic() - t0
    wait_until(lambda: len(first_ack_after(load, t0, affected)) == len(affected), 30,
               what="produce to every affected partition to resume")
    resumed = first_ack_after(load, t0, affected)
    time.sleep(1.0)
    left = load.finish(timeout=60)
    worst = max(resumed.values())
    print(f"failover: leaders moved {moved_after:.2f}s after SIGKILL; produce resumed per partition "
          f"{ {p: round(t, 2) for p, t in sorted(resumed.items())} } s (worst {worst:.2f}s, target {FAILOVER_TARGET_S}s); "
          f"acked {len(load.acked)} (before kill {acked_before}), failed {len(load.failed)}")
    assert load.error is None, load.error
    assert left == 0 and not load.failed, f"{left} unresolved; failures {list(load.failed.items())[:5]}"
    assert worst < FAILOVER_TARGET_S, f"produce resumed only after {worst:.2f}s"
    problems, _ = check_exactly_once(survivor.bootstrap, topic, n, load)
    assert not problems, "\n".join(problems)


def test_sigstopped_broker_is_fenced_and_rejoins(cluster):
    c = cluster(3)
    topic, n = "fence", 6
    create_topic(c[0], topic, n)
    wait_until(lambda: balanced(c[0], topic, {1, 2, 3}, n), 15, what="partitions spread")
    load = LoadProducer(c.bootstrap, topic, n, rate=1000, **{"message.timeout.ms": 120000})
    load.start()
    time.sleep(1.5)

    frozen = c[1]
    before = {p["partition"]: p["epoch"] for p in status(c[0])["partitions"] if p["topic"] == topic and p["leader"] == 2}
    late_partition = min(before)
    wire = Wire(frozen.bootstrap, timeout=60)
    os.kill(frozen.pid, signal.SIGSTOP)
    # A write that reaches the broker while it is stopped: it handles it only after waking.
    late = wire.produce_send(topic, late_partition, build_record_batch([(b"late", b"late-write", [])]))
    try:
        wait_until(lambda: all(l != 2 for l in leaders(c[0], topic).values()), 15,
                   what="the stopped broker's partitions to move")
        time.sleep(1.0)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    after = {p["partition"]: p["epoch"] for p in status(c[0])["partitions"] if p["topic"] == topic}
    # Each move bumped the leader epoch: commits the stopped broker makes at its old epoch are refused.
    assert before and all(after[p] > e for p, e in before.items()), (before, after)
    # The late write is refused: the woken broker either sees its stale lease first, or its
    # commit at the old epoch is fenced by the store (NOT_LEADER_OR_FOLLOWER), or the store
    # ended its session while it was frozen and the commit fails (KAFKA_STORAGE_ERROR, which
    # clients also retry after refreshing metadata). That it never reaches the log is checked below.
    resp = wire.produce_response(late, topic)
    wire.close()
    assert resp["error_code"] in (6, 56), resp  # NOT_LEADER_OR_FOLLOWER, KAFKA_STORAGE_ERROR
    wait_until(lambda: "suspending writes" in frozen.log(), 10, what="the woken broker to suspend its writes")
    # It rejoins and gets its share back.
    wait_until(lambda: balanced(c[0], topic, {1, 2, 3}, n), 30, what="rebalance after resume")
    time.sleep(1.0)
    left = load.finish(timeout=90)
    assert load.error is None, load.error
    assert left == 0 and not load.failed, f"{left} unresolved; failures {list(load.failed.items())[:5]}"
    problems, log = check_exactly_once(c[0].bootstrap, topic, n, load)
    assert not problems, "\n".join(problems)
    assert not [r for r in log[late_partition] if r.value == b"late-write"], "a fenced write reached the log"


def test_scale_out_moves_partitions_without_copying_data(cluster):
    c = cluster(1)
    topic, n = "scale", 6
    create_topic(c[0], topic, n)
    load = LoadProducer(c.bootstrap, topic, n, rate=2000)
    load.start()
    time.sleep(2.0)
    assert load.finish(timeout=30) == 0 and not load.failed
    objects = c.s3_server.count_objects(c.bucket_name)
    assert objects > 0

    t0 = time.monotonic()
    c.add()
    c.add()
    wait_until(lambda: balanced(c[0], topic, {1, 2, 3}, n), 15, what="partitions spread to the new brokers")
    spread = time.monotonic() - t0
    print(f"scale-out: 1 -> 3 brokers, partitions balanced {spread:.2f}s after the new brokers started")
    assert spread < FAILOVER_TARGET_S + 2, spread
    # No data moved: the object store holds exactly the objects it held before.
    assert c.s3_server.count_objects(c.bucket_name) == objects
    problems, _ = check_exactly_once(c.bootstrap, topic, n, load)
    assert not problems, "\n".join(problems)

    # Drain a broker through the CLI: everything it led moves; undrain brings a share back.
    c[0].run_cli("cluster", "drain", "2", "--http", c[0].http, check=True)
    wait_until(lambda: balanced(c[0], topic, {1, 3}, n), 15, what="node 2 drained")
    assert next(b for b in status(c[2])["brokers"] if b["node_id"] == 2)["draining"] is True
    c[0].run_cli("cluster", "undrain", "2", "--http", c[0].http, check=True)
    wait_until(lambda: balanced(c[0], topic, {1, 2, 3}, n), 15, what="node 2 back")


def test_rolling_restart_under_load_has_no_client_errors(cluster):
    c = cluster(3)
    topic, n = "rolling", 6
    create_topic(c[0], topic, n)
    wait_until(lambda: balanced(c[0], topic, {1, 2, 3}, n), 15, what="partitions spread")
    load = LoadProducer(c.bootstrap, topic, n, rate=1000)
    load.start()
    errors: list[str] = []
    transport_events = []
    consumed: list[tuple[int, int]] = []

    def on_error(e):
        # A stopped broker refuses connections until it is back (and librdkafka may briefly see all of its
        # connections down at once): connection events, not failed requests, which are checked below.
        connection = e.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)
        (transport_events if connection else errors).append(str(e))

    consumer = Consumer({
        "bootstrap.servers": c.bootstrap, "group.id": "rolling", "auto.offset.reset": "earliest",
        "topic.metadata.refresh.interval.ms": 1000, "error_cb": on_error,
    })
    consumer.subscribe([topic])

    def pump(seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            m = consumer.poll(0.1)
            if m is None:
                continue
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    errors.append(f"consumer message: {m.error()}")
                continue
            consumed.append((m.partition(), m.offset()))

    pump(3.0)
    for b in c:
        b.stop()  # SIGTERM: hands its partitions over, then exits
        pump(0.5)
        b.start()
        wait_until(lambda: (pump(0.2), balanced(c[0] if b is not c[0] else c[1], topic, {1, 2, 3}, n))[1], 30,
                   what=f"{b.name} back with its share")
    pump(2.0)
    left = load.finish(timeout=60)
    acked_offsets = {(p, off) for (p, _), off in load.acked.items() if off is not None}
    deadline = time.monotonic() + 30
    while not acked_offsets <= set(consumed) and time.monotonic() < deadline:
        pump(0.5)
    positions = {tp.partition: tp.offset for tp in consumer.position(consumer.assignment())}
    consumer.close()
    assert load.error is None, load.error
    assert left == 0 and not load.failed, f"producer failures: {list(load.failed.items())[:5]}"
    assert not errors, errors[:10]
    print(f"rolling restart: acked {len(load.acked)}, consumed {len(consumed)}, "
          f"connection events {len(transport_events)}, errors 0")
    # The group consumed everything acknowledged; redelivery after a move is allowed, loss is not.
    seen = set(consumed)
    missing = [(p, off) for (p, off) in acked_offsets if (p, off) not in seen]
    assert not missing, f"{len(missing)} acknowledged records never consumed, e.g. {missing[:5]}; positions {positions}"
    # And the log itself holds every acknowledged record once, read back through the restarted broker.
    problems, _ = check_exactly_once(c[0].bootstrap, topic, n, load)
    assert not problems, "\n".join(problems)


def test_mqtt_uplink_reaches_partitions_other_brokers_lead(cluster):
    """Devices on broker 1 publish QoS 1 into the gateway's topic, whose partitions are
    spread over three brokers: every publish is acknowledged and lands in Kafka, each
    device's records in order in its key's partition, also where broker 2 or 3 leads."""
    c = cluster(3)
    create_topic(c[0], "mqtt", 6)
    wait_until(lambda: balanced(c[0], "mqtt", {1, 2, 3}, 6), 15, what="the MQTT topic's partitions spread")
    lead = leaders(c[0], "mqtt")
    devices = [Device(c[0], f"dev-{i}") for i in range(12)]
    n = 25
    for i in range(n):
        for d in devices:
            d.publish(f"plant/{d.c._client_id.decode()}/temp", json.dumps({"seq": i}), qos=1, wait=False)
    for d in devices:
        wait_until(lambda: len(d.acked_mids) == n, 30, what=f"PUBACKs for {d.c._client_id.decode()}")
    recs = kafka_records(c[0], "mqtt", n * len(devices))
    assert len(recs) == n * len(devices)
    by_key: dict[bytes, list] = {}
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key, []).append(r)
    assert set(by_key) == {f"dev-{i}".encode() for i in range(12)}
    for key, rs in by_key.items():
        assert [json.loads(r.value)["seq"] for r in rs] == list(range(n)), key
        assert len({r.partition for r in rs}) == 1, key
        assert headers(rs[0])["mqtt.topic"] == f"plant/{key.decode()}/temp"
    # The devices' partitions include ones that other brokers lead.
    used = {rs[0].partition for rs in by_key.values()}
    assert {lead[p] for p in used} - {1}, (lead, used)
    for d in devices:
        d.disconnect()


def test_mqtt_commands_reach_devices_on_every_broker(cluster):
    """Commands produced to mqtt.commands, whose partitions three brokers lead, reach the
    devices subscribed on each broker: every command once, in order, also where another
    broker leads its partition. A command no device subscribed to is reported dropped once;
    delivered ones are not."""
    c = cluster(3)
    # The gateways create the commands topic when they start; it grows to 6 partitions.
    wait_until(lambda: leaders(c[0], "mqtt.commands"), 15, what="the commands topic")
    admin = AdminClient({"bootstrap.servers": c[0].bootstrap})
    admin.create_partitions([NewPartitions("mqtt.commands", 6)])["mqtt.commands"].result(timeout=20)
    wait_until(lambda: balanced(c[0], "mqtt.commands", {1, 2, 3}, 6), 15,
               what="the commands topic's partitions spread")
    lead = leaders(c[0], "mqtt.commands")
    devices = {f"dev-{n}-{i}": (n, Device(c[n], f"dev-{n}-{i}")) for n in range(3) for i in range(3)}
    for name, (_, d) in devices.items():
        d.subscribe(f"cmd/{name}", qos=1)
    # Every broker's routes written and read by the others (each second).
    time.sleep(2.5)
    n = 10
    p = Producer({"bootstrap.servers": c[0].bootstrap, "enable.idempotence": True})
    for i in range(n):
        for name in devices:
            p.produce("mqtt.commands", key=name.encode(), value=json.dumps({"seq": i}).encode(),
                      headers=[("mqtt.topic", f"cmd/{name}".encode()), ("mqtt.qos", b"1")])
    p.produce("mqtt.commands", key=b"nobody", value=b"x", headers=[("mqtt.topic", b"cmd/nobody")])
    assert p.flush(15) == 0
    recs = kafka_records(c[0], "mqtt.commands", n * len(devices) + 1)
    partition_of = {r.key.decode(): r.partition for r in recs}
    for name, (_, d) in devices.items():
        got = d.recv_n(n, timeout=20)
        assert [(m.topic, json.loads(m.payload)["seq"]) for m in got] == [(f"cmd/{name}", i) for i in range(n)], name
        d.no_message(0.5)
    # Devices got commands from partitions that brokers other than their own lead.
    assert any(lead[partition_of[name]] != node + 1 for name, (node, _) in devices.items()), (lead, partition_of)
    dropped = events(c[0], 1, lambda e: e["event"] == "message.dropped")
    time.sleep(2)
    dropped = events(c[0], 1, lambda e: e["event"] == "message.dropped")
    assert [e.get("topic") for e in dropped] == ["cmd/nobody"], dropped
    for _, d in devices.values():
        d.disconnect()


def test_mqtt_publishes_reach_subscribers_on_every_broker(cluster):
    """MQTT clients on different brokers talk to each other: what a device publishes on one
    broker reaches the matching subscribers on every broker, once, in the publisher's order,
    with its MQTT 5 properties. Only publishes that another broker has subscribers for are
    written to mqtt.forward."""
    c = cluster(3)
    s1 = Device(c[0], "s1", v5=True)
    s2 = Device(c[1], "s2", v5=True)
    s3 = Device(c[2], "s3")
    s3_other = Device(c[2], "s3-other")
    s1.subscribe("chat/#", qos=1)
    s1.subscribe("solo/#", qos=1)
    s2.subscribe("chat/#", qos=1)
    s3.subscribe("chat/+/b", qos=1)
    s3_other.subscribe("other/#", qos=1)
    # Every broker's routes written and read by the others (each second).
    time.sleep(2.5)
    p1 = Device(c[0], "p1", v5=True)
    p3 = Device(c[2], "p3")
    n = 20
    for i in range(n):
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("seq", str(i))]
        props.ContentType = "application/json"
        info = p1.c.publish("chat/x/b", json.dumps({"from": "p1", "seq": i}), qos=1, properties=props)
        info.wait_for_publish(15)
        assert info.is_published()
    for i in range(5):
        p3.publish("chat/y/a", json.dumps({"from": "p3", "seq": i}), qos=1)
    # Only s1, on the publisher's broker, wants this one.
    p1.publish("solo/x", b"local", qos=1)

    def by_publisher(msgs):
        out: dict[str, list] = {}
        for m in msgs:
            body = json.loads(m.payload)
            out.setdefault(body["from"], []).append((m.topic, body["seq"]))
        return out

    expected_all = {"p1": [("chat/x/b", i) for i in range(n)], "p3": [("chat/y/a", i) for i in range(5)]}
    for d in (s1, s2):
        got = d.recv_n(n + 5, timeout=20)
        assert by_publisher(got) == expected_all, d.c._client_id
    assert s1.recv(10).payload == b"local"
    got3 = s3.recv_n(n, timeout=20)
    assert by_publisher(got3) == {"p1": expected_all["p1"]}
    # What crossed brokers kept its MQTT 5 properties.
    remote = [m for m in got if json.loads(m.payload)["from"] == "p1"]
    for i, m in enumerate(remote):
        assert m.properties.ContentType == "application/json"
        assert ("seq", str(i)) in m.properties.UserProperty, m.properties.UserProperty
    for d in (s1, s2, s3, s3_other):
        d.no_message(1.0)
    # mqtt.forward holds the publishes other brokers had subscribers for, each once.
    recs = kafka_records(c[0], "mqtt.forward", n + 5)
    topics = sorted((headers(r)["mqtt.topic"], headers(r)["mqtt.node"]) for r in recs)
    assert topics == sorted([("chat/x/b", "1")] * n + [("chat/y/a", "3")] * 5), topics
    # For the record (no assertion on time): publish-to-delivery latency at 100/s, QoS 1,
    # to a subscriber on the publisher's broker and to one on another broker, with
    # mqtt.forward grown to 6 partitions that all three brokers lead (so each broker reads
    # from two others at once), from 6 publishers.
    # Created with a partition per live broker.
    assert len(leaders(c[0], "mqtt.forward")) == 3
    admin = AdminClient({"bootstrap.servers": c[0].bootstrap})
    admin.create_partitions([NewPartitions("mqtt.forward", 6)])["mqtt.forward"].result(timeout=20)
    wait_until(lambda: balanced(c[0], "mqtt.forward", {1, 2, 3}, 6), 15, what="mqtt.forward spread")
    time.sleep(2)  # every broker reads the new partitions
    publishers = [Device(c[0], f"probe-{i}") for i in range(6)]
    arrivals: dict[str, list[float]] = {"local": [], "remote": []}
    for name, d in (("local", s1), ("remote", s2)):
        d.c.on_message = lambda c_, u, m, name=name: arrivals[name].append(
            time.time() - json.loads(m.payload)["at"])
    count = 300
    for i in range(count):
        publishers[i % 6].publish("chat/lat", json.dumps({"at": time.time(), "seq": i}), qos=1, wait=False)
        time.sleep(0.01)
    wait_until(lambda: all(len(a) == count for a in arrivals.values()), 20,
               what="every latency probe delivered on both brokers")
    for name, lat in arrivals.items():
        lat.sort()
        print(f"MQTT delivery {name}: p50 {lat[count // 2] * 1000:.1f} ms, "
              f"p99 {lat[count * 99 // 100] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
    # Routes follow subscriptions both ways, also by the thousand (written in chunks): s2
    # takes 2,000 filters more, s2 and s3 drop chat/#, and only what they still want
    # crosses brokers.
    for d in (s1, s2):
        d.c.on_message = lambda c_, u, m, d=d: d.messages.put(m)
    done = threading.Event()
    s2.c.on_subscribe = lambda *a: done.set()
    s2.c.subscribe([(f"dev/{i}/cmd", 1) for i in range(2000)])
    assert done.wait(10)
    s2.unsubscribe("chat/#")
    s3.unsubscribe("chat/+/b")
    before = collections.Counter(headers(r)["mqtt.topic"] for r in kafka_records(c[0], "mqtt.forward", n + 5 + count))
    time.sleep(2.5)
    p1.publish("chat/x/b", b"only-local", qos=1)
    p1.publish("dev/1999/cmd", b"to-s2", qos=1)
    assert s2.recv(10).payload == b"to-s2"
    assert s1.recv(10).payload == b"only-local"
    for d in (s1, s2, s3):
        d.no_message(1.0)
    after = kafka_records(c[0], "mqtt.forward", before.total() + 1)
    assert collections.Counter(headers(r)["mqtt.topic"] for r in after) - before == {"dev/1999/cmd": 1}
    for d in (s1, s2, s3, s3_other, p1, p3, *publishers):
        d.disconnect()


def test_mqtt_share_groups_get_each_message_once_across_brokers(cluster):
    """A share group with members on two brokers gets each publish once in all, from a
    publisher on a third broker and from one beside some members, and each command once;
    members on both brokers get some. A plain subscriber gets everything."""
    c = cluster(3)
    members = {name: Device(c[node], name) for name, node in
               (("w-2a", 1), ("w-2b", 1), ("w-3a", 2))}
    for d in members.values():
        d.subscribe("$share/w/jobs/#", qos=1)
    plain = Device(c[2], "all-jobs")
    plain.subscribe("jobs/#", qos=1)
    time.sleep(2.5)  # every broker's routes written and read by the others
    p1, p2 = Device(c[0], "p1"), Device(c[1], "p2")
    n = 60
    for i in range(n):
        (p1 if i % 2 == 0 else p2).publish(f"jobs/{i}", json.dumps({"seq": i}), qos=1)
    got: dict[str, list[int]] = {name: [] for name in members}

    def drain() -> int:
        for name, d in members.items():
            while True:
                try:
                    got[name].append(json.loads(d.recv(0.05).payload)["seq"])
                except queue.Empty:
                    break
        return sum(len(v) for v in got.values())

    wait_until(lambda: drain() >= n, 20, what="the share group to get every publish")
    time.sleep(1.0)
    drain()
    assert sorted(s for v in got.values() for s in v) == list(range(n)), got
    assert got["w-3a"] and (got["w-2a"] or got["w-2b"]), got
    assert sorted(json.loads(m.payload)["seq"] for m in plain.recv_n(n)) == list(range(n))
    # Commands: every broker reads each one, and one of them delivers it to the group.
    got = {name: [] for name in members}
    prod = Producer({"bootstrap.servers": c[0].bootstrap})
    for i in range(30):
        prod.produce("mqtt.commands", value=json.dumps({"seq": i}).encode(),
                     headers=[("mqtt.topic", f"jobs/cmd/{i}".encode())])
    assert prod.flush(15) == 0
    wait_until(lambda: drain() >= 30, 20, what="the share group to get every command")
    time.sleep(1.0)
    drain()
    assert sorted(s for v in got.values() for s in v) == list(range(30)), got
    assert got["w-3a"] and (got["w-2a"] or got["w-2b"]), got
    for d in (*members.values(), plain, p1, p2):
        d.disconnect()


def test_mqtt_retained_messages_follow_updates_made_on_other_brokers(cluster):
    """A retained message set on broker 1, replaced on broker 3 and cleared on broker 1 is,
    at each step and within seconds, what a new subscriber receives on every broker: each
    re-reads the retained messages the others set or cleared (all three were started
    before the first one was set, so none has it from its start)."""
    c = cluster(3)
    subscribers = iter(range(1_000_000))

    def retained_on(b) -> bytes | None:
        d = Device(b, f"sub-{next(subscribers)}")
        try:
            d.subscribe("site/+/state", qos=1)
            try:
                m = d.recv(timeout=0.5)
            except queue.Empty:
                return None
            assert m.retain and m.topic == "site/a/state", (m.topic, m.retain)
            return m.payload
        finally:
            d.disconnect()

    pub1, pub3 = Device(c[0], "pub-1"), Device(c[2], "pub-3")
    pub1.publish("site/a/state", b"v1", qos=1, retain=True)
    for b in c:
        wait_until(lambda: retained_on(b) == b"v1", 15, what=f"{b.name} to hold v1, set on node1")
    pub3.publish("site/a/state", b"v2", qos=1, retain=True)
    for b in c:
        wait_until(lambda: retained_on(b) == b"v2", 15, what=f"{b.name} to hold v2, set on node3")
    pub1.publish("site/a/state", b"", qos=1, retain=True)
    for b in c:
        wait_until(lambda: retained_on(b) is None, 15, what=f"{b.name} to have v2 cleared on node1")
    # Cleared stays cleared: no broker brings v1 or v2 back from the store later.
    time.sleep(2.5)
    assert [retained_on(b) for b in c] == [None, None, None]
    pub1.disconnect()
    pub3.disconnect()


def test_mqtt_publishes_forwarded_to_a_killed_leader_are_not_lost(cluster):
    """Devices on broker 1 publish QoS 1 while the leader of some of their partitions, broker
    2, is SIGKILLed: every acknowledged publish is in Kafka, and publishes to the partitions
    that moved are acknowledged again once their new leader has them."""
    c = cluster(3)
    create_topic(c[0], "mqtt", 6)
    wait_until(lambda: balanced(c[0], "mqtt", {1, 2, 3}, 6), 15, what="the MQTT topic's partitions spread")
    before = leaders(c[0], "mqtt")
    moved = {p for p, l in before.items() if l == 2}
    devices = [Device(c[0], f"dev-{i}") for i in range(24)]
    sent: dict[str, dict[int, int]] = {d.c._client_id.decode(): {} for d in devices}  # device -> mid -> seq
    stop = threading.Event()
    rounds = [0]

    def publish():
        while not stop.is_set():
            seq = rounds[0]
            for d in devices:
                if d.c.is_connected():
                    info = d.c.publish(f"plant/{d.c._client_id.decode()}/temp", json.dumps({"seq": seq}), qos=1)
                    sent[d.c._client_id.decode()][info.mid] = seq
            rounds[0] = seq + 1
            time.sleep(0.02)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    time.sleep(1.5)
    seq_at_kill = rounds[0]
    c[1].kill()
    wait_until(lambda: all(l != 2 for l in leaders(c[0], "mqtt").values()), 15,
               what="the killed broker's partitions to move")
    time.sleep(3.0)
    stop.set()
    t.join(10)
    time.sleep(2.0)  # acknowledgements still on their way
    acked = {}
    for d in devices:
        name = d.c._client_id.decode()
        with d.lock:
            acked[name] = {sent[name][mid] for mid in d.acked_mids if mid in sent[name]}
    total = sum(len(s) for s in acked.values())
    recs = kafka_records(c[0], "mqtt", total)
    stored: dict[str, set[int]] = {}
    partition_of: dict[str, int] = {}
    for r in recs:
        stored.setdefault(r.key.decode(), set()).add(json.loads(r.value)["seq"])
        partition_of[r.key.decode()] = r.partition
    lost = {name: sorted(s - stored.get(name, set()))[:5] for name, s in acked.items() if s - stored.get(name, set())}
    assert not lost, f"acknowledged publishes missing from Kafka: {lost}"
    # Devices whose partition moved were acknowledged again after the kill (50 rounds of
    # 20 ms or more later): the forwarder found the new leader.
    on_moved = [name for name, p in partition_of.items() if p in moved]
    assert on_moved, (before, partition_of)
    late = [name for name in on_moved if max(acked[name], default=-1) > seq_at_kill + 50]
    assert late == on_moved, (f"no acknowledgement after the kill for {sorted(set(on_moved) - set(late))}"
                              f" (killed at round {seq_at_kill}, stopped at {rounds[0]})")
    for d in devices:
        d.disconnect()


def find_transaction_coordinator(bootstrap, txid, timeout=30):
    """The broker coordinating `txid`, retrying while coordination is moving
    (COORDINATOR_NOT_AVAILABLE is retriable: a broker just restarted)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import CoordinatorNotAvailableError, NotCoordinatorError

    deadline = time.time() + timeout
    while True:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            return admin.describe_transactions([txid])[txid].coordinator_id
        except (CoordinatorNotAvailableError, NotCoordinatorError):
            if time.time() > deadline:
                raise
            time.sleep(0.5)
        finally:
            admin.close()


def test_exactly_once_survives_killing_the_transaction_coordinator(cluster, tmp_path):
    c = cluster(3)
    killed = []

    def kill_coordinator(w, txid):
        for b in c:
            if not b.running():
                b.start()
        coordinator = find_transaction_coordinator(c.bootstrap, txid)
        victim = next(b for b in c if b.node_id == coordinator)
        victim.kill()
        killed.append(coordinator)
        return w

    run_exactly_once(c[0], lambda: c.bootstrap, kill_coordinator, tmp_path, total=3000, disruptions=2)
    assert len(killed) >= 1
    print(f"coordinators killed: {killed}")


def test_compaction_on_postgres_and_s3_survives_a_leader_kill(cluster):
    from test_log_compaction import EAGER, alter, newest_per_key, produce_then_end, read_all

    c = cluster(3, "--retention-check-interval", "300ms")
    topic = "cluster-changelog"
    create_topic(c[0], topic, 6, config={**EAGER, "cleanup.policy": "delete"})
    wait_until(lambda: balanced(c[0], topic, {1, 2, 3}, 6), 30, what="partitions spread")
    msgs = [Msg(k % 6, b"key-%d" % k, b"r%d" % r) for r in range(10) for k in range(120)]
    msgs, acks = produce_then_end(c, topic, msgs, 6)
    # Switched on a live topic: every broker's cleaner takes the partitions it leads.
    alter(c, topic, cleanup_policy="compact")
    expected = newest_per_key(msgs, acks)
    wait_until(lambda: read_all(c, topic, range(6)) == expected, 60, interval=1,
               what="the newest record per key on every partition")

    victim = next(b for b in c if b.node_id == leaders(c[0], topic)[0])
    victim.kill()
    alive = [b for b in c if b.running()]
    wait_until(lambda: balanced(alive[0], topic, {b.node_id for b in alive}, 6), 30, what="partitions moved")
    more = [Msg(k % 6, b"key-%d" % k, b"after") for k in range(0, 120, 2)]
    more, more_acks = produce_then_end(c, topic, more, 6, end_key=b"end-2")
    expected = newest_per_key(msgs + more, acks + more_acks)
    got = {}

    def compacted():
        got.update(read_all(c, topic, range(6)))
        return got == expected

    try:
        wait_until(compacted, 60, interval=1, what="the newest record per key after the leader moved")
    except TimeoutError:
        for p in range(6):
            extra = sorted(set(got.get(p, [])) - set(expected.get(p, [])))
            missing = sorted(set(expected.get(p, [])) - set(got.get(p, [])))
            print(f"partition {p}: extra {extra[:5]} ({len(extra)}), missing {missing[:5]} ({len(missing)})")
        raise


def test_users_and_listeners_are_shared_by_every_broker(cluster, tmp_path):
    """Three brokers, each with a PLAINTEXT and a SASL_SSL listener, sharing users and ACLs
    through PostgreSQL: a client of one broker's SASL_SSL listener is sent every broker's
    SASL_SSL address, a user made on one broker authenticates on the others at once, and
    an ACL made on one takes effect on every broker within 2 s. The internal PLAINTEXT
    listener's principal (ANONYMOUS) is a super user, as Kafka requires of inter-broker ones."""
    from confluent_kafka.admin import NewTopic, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
    from test_security import make_certs

    certs = make_certs(tmp_path / "certs")
    c = cluster(0)
    secure_ports = {}
    for _ in range(3):
        b = c.add(start=False)
        port = conftest_free_port()
        secure_ports[b.node_id] = port
        listen = f"PLAINTEXT://{b.bootstrap},SASL_SSL://127.0.0.1:{port}"
        args = list(b.args)
        args[args.index("--kafka-listen") + 1] = listen
        args[args.index("--advertise") + 1] = listen
        b.args = args + ["--tls-cert", certs["cert"], "--tls-key", certs["key"],
                         "--authorization", "acl", "--super-users", "User:app,User:ANONYMOUS"]
    meta = c[0].args[c[0].args.index("--meta") + 1]
    r = c[0].run_cli("user", "create", "app", "--password", "app-pw", "--mechanism", "SCRAM-SHA-512", "--meta", meta)
    assert r.returncode == 0, r.stderr
    for b in c:
        b.start()

    def conf(node: int, user: str = "app", password: str = "app-pw") -> dict:
        return {"bootstrap.servers": f"127.0.0.1:{secure_ports[node]}", "security.protocol": "SASL_SSL",
                "ssl.ca.location": certs["ca"], "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": user, "sasl.password": password}

    admin = AdminClient(conf(1))
    wait_until(lambda: len(admin.list_topics(timeout=10).brokers) == 3, 20, what="three brokers in Metadata")
    md = admin.list_topics(timeout=10)
    assert {b.id: b.port for b in md.brokers.values()} == secure_ports
    admin.create_topics([NewTopic("secure-spread", 6, 1)])["secure-spread"].result(30)
    wait_until(lambda: len(set(leaders(c[0], "secure-spread").values())) == 3, 30, what="leaders on all brokers")
    p = Producer({**conf(1), "enable.idempotence": True})
    for i in range(60):
        p.produce("secure-spread", f"v{i}".encode(), partition=i % 6)
    assert p.flush(30) == 0
    consumer = Consumer({**conf(1), "group.id": "secure-g", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition("secure-spread", i, 0) for i in range(6)])
    got = set()
    deadline = time.monotonic() + 30
    while len(got) < 60 and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            got.add(m.value().decode())
    consumer.close()
    assert got == {f"v{i}" for i in range(60)}
    # A user made through broker 2 authenticates on broker 3 right away.
    admin2 = AdminClient(conf(2))
    admin2.alter_user_scram_credentials([UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"carol-pw")])["carol"].result(20)
    carol_admin = AdminClient(conf(3, "carol", "carol-pw"))
    carol_md = carol_admin.list_topics(timeout=10)
    assert len(carol_md.brokers) == 3 and "secure-spread" not in carol_md.topics  # no ACLs: hidden

    # An ACL created through broker 1 opens every partition, whichever broker leads it.
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType)
    carol = Producer({**conf(3, "carol", "carol-pw"), "message.timeout.ms": 2000, "retries": 0})

    def refused_partitions() -> set[int]:
        failed = set()
        for i in range(6):
            carol.produce("secure-spread", b"carol", partition=i,
                          on_delivery=lambda e, m, i=i: e and failed.add(i))
        carol.flush(5)
        return failed
    assert refused_partitions() == set(range(6))
    binding = AclBinding(ResourceType.TOPIC, "secure-", ResourcePatternType.PREFIXED, "User:carol", "*",
                         AclOperation.WRITE, AclPermissionType.ALLOW)
    admin.create_acls([binding])[binding].result(20)
    created = time.monotonic()
    wait_until(lambda: not refused_partitions(), 10, interval=0.05, what="carol's grant on every broker")
    took = time.monotonic() - created
    assert took < 2.5, f"the ACL took {took:.2f} s to reach every broker"
