"""MQTT gateway: paho-mqtt (v3.1.1 and v5) and mosquitto clients against the
real binary; what lands in Kafka is read back with confluent-kafka."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
import requests
from confluent_kafka import Producer

from conftest import create_topic, topic_partitions, wait_until, watermarks
from mqtt_helpers import Device, events, headers, kafka_records, mosquitto_pub, mosquitto_sub


def murmur2_partition(broker, key: bytes, topic: str) -> int:
    """Where librdkafka's murmur2 partitioner (Kafka's default) puts `key`."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    got = {}
    p.produce(topic, key=key, value=b"probe", on_delivery=lambda err, msg: got.update(p=msg.partition()))
    p.flush(10)
    return got["p"]


def test_uplink_keeps_each_device_in_order_with_keys_and_headers(broker):
    create_topic(broker, "mqtt", partitions=4)
    cars = [Device(broker, "car-1"), Device(broker, "car-2", v5=True), Device(broker, "car-3")]
    for i in range(40):
        for car in cars:
            car.publish(f"cars/{car.c._client_id.decode()}/telemetry", json.dumps({"seq": i}), qos=1, wait=False,
                        user_props={"fw": "1.2"} if car.v5 else None)
    for car in cars:
        wait_until(lambda: len(car.acked_mids) == 40, 20, what="PUBACKs")
    recs = kafka_records(broker, "mqtt", 120)
    assert len(recs) == 120
    by_key: dict[bytes, list] = {}
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key, []).append(r)
    assert set(by_key) == {b"car-1", b"car-2", b"car-3"}
    for key, rs in by_key.items():
        assert [json.loads(r.value)["seq"] for r in rs] == list(range(40)), key
        assert len({r.partition for r in rs}) == 1
        h = headers(rs[0])
        assert h["mqtt.topic"] == f"cars/{key.decode()}/telemetry"
        assert h["mqtt.qos"] == "1" and h["mqtt.retain"] == "false"
        if key == b"car-2":
            assert h["fw"] == "1.2"  # MQTT 5 user property
        # The same partition Kafka's default partitioner picks for the key.
        assert rs[0].partition == murmur2_partition(broker, key, "mqtt")
    for car in cars:
        car.disconnect()


def test_qos_0_1_2_retained_and_mosquitto_clients(broker):
    for q in (0, 1, 2):
        mosquitto_pub(broker, "-i", f"pub-q{q}", "-t", f"sensors/q{q}", "-m", f"hello-{q}", "-q", str(q))
    recs = kafka_records(broker, "mqtt", 3)
    got = {r.value.decode(): headers(r)["mqtt.qos"] for r in recs}
    assert got == {"hello-0": "0", "hello-1": "1", "hello-2": "2"}
    assert {r.key for r in recs} == {b"pub-q0", b"pub-q1", b"pub-q2"}

    # Retained: a later subscriber gets the last retained message, also after a restart.
    mosquitto_pub(broker, "-t", "lights/1/state", "-m", "off", "-r", "-q", "1")
    mosquitto_pub(broker, "-t", "lights/1/state", "-m", "on", "-r", "-q", "1")
    out = mosquitto_sub(broker, "-t", "lights/+/state", "-C", "1", "-v", "-W", "10")
    assert out.stdout.strip() == "lights/1/state on", out
    broker.restart()
    out = mosquitto_sub(broker, "-t", "lights/#", "-C", "1", "-v", "-W", "10", "-V", "mqttv5")
    assert out.stdout.strip() == "lights/1/state on", out
    # An empty retained payload clears it.
    mosquitto_pub(broker, "-t", "lights/1/state", "-n", "-r", "-q", "1")
    out = mosquitto_sub(broker, "-t", "lights/#", "-C", "1", "-W", "2")
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
def test_subscriptions_wildcards_qos_and_will(broker, v5):
    sub = Device(broker, "watcher", v5=v5)
    assert sub.subscribe("cars/+/cmd", 2)
    sub.subscribe("alerts/#", 1)
    pub = Device(broker, "sender", v5=v5)
    pub.publish("cars/7/cmd", b"unlock", qos=2)
    pub.publish("alerts/fire/kitchen", b"!", qos=1)
    pub.publish("cars/7/telemetry", b"ignored", qos=0)
    msgs = sub.recv_n(2)
    got = sorted((m.topic, m.payload, m.qos) for m in msgs)
    assert got == [("alerts/fire/kitchen", b"!", 1), ("cars/7/cmd", b"unlock", 2)]
    sub.no_message(0.5)

    # A client that vanishes without DISCONNECT gets its will published.
    doomed = Device(broker, "doomed", v5=v5, will=("alerts/gone/doomed", b"offline", 1, False))
    doomed.drop()
    m = sub.recv(10)
    assert (m.topic, m.payload) == ("alerts/gone/doomed", b"offline")
    # A clean DISCONNECT discards the will.
    polite = Device(broker, "polite", v5=v5, will=("alerts/gone/polite", b"offline", 1, False))
    polite.disconnect()
    sub.no_message(1.0)
    sub.unsubscribe("alerts/#")
    pub.publish("alerts/x", b"after unsubscribe", qos=1)
    sub.no_message(0.5)
    for d in (sub, pub):
        d.disconnect()


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
def test_persistent_session_queues_while_offline(broker, v5):
    dev = Device(broker, "truck-9", v5=v5, clean=False, session_expiry=300 if v5 else None)
    assert dev.session_present is False
    dev.subscribe("fleet/truck-9/cmd", 1)
    dev.disconnect()
    ops = Device(broker, "ops", v5=v5)
    # QoS 0 is not queued for offline sessions; the QoS 1 publishes after it
    # (acknowledged, same connection) show it has been routed.
    ops.publish("fleet/truck-9/cmd", b"qos0-not-queued", qos=0)
    for i in range(5):
        ops.publish("fleet/truck-9/cmd", f"cmd-{i}", qos=1)
    dev.connect()
    assert dev.session_present is True
    msgs = dev.recv_n(5)
    assert [m.payload for m in msgs] == [f"cmd-{i}".encode() for i in range(5)]
    dev.no_message(0.5)
    dev.disconnect()
    # A clean start throws the session away.
    fresh = Device(broker, "truck-9", v5=v5, clean=True)
    assert fresh.session_present is False
    ops.publish("fleet/truck-9/cmd", b"nobody", qos=1)
    fresh.no_message(0.5)
    fresh.disconnect()
    ops.disconnect()


def test_shared_subscriptions_split_the_load(broker):
    workers = [Device(broker, f"worker-{i}", v5=True) for i in range(2)]
    for w in workers:
        w.subscribe("$share/jobs/work/#", 1)
    pub = Device(broker, "dispatcher")
    for i in range(20):
        pub.publish(f"work/{i}", str(i), qos=1)
    time.sleep(1.0)
    got = []
    for w in workers:
        mine = []
        while not w.messages.empty():
            mine.append(int(w.messages.get().payload))
        assert mine, "each member of the group gets some"
        got.extend(mine)
    assert sorted(got) == list(range(20))  # each message to exactly one member
    for d in (*workers, pub):
        d.disconnect()


def test_rules_over_rest_shape_records(broker):
    api = f"{broker.http}/api/v1/mqtt/rules"
    bad = requests.post(api, json={"name": "bad", "sql": "SELEC speed FROM \"x\"", "kafka_topic": "out"})
    assert bad.status_code == 400 and "parse error" in bad.json()["error"]
    bad = requests.post(api, json={"name": "bad", "sql": "SELECT nosuch(1) FROM \"x\"", "kafka_topic": "out"})
    assert bad.status_code == 400 and "unknown function" in bad.json()["error"]
    rule = {
        "name": "speeding",
        "sql": "SELECT payload.speed AS speed, clientid, nth(2, split(topic, '/')) AS car, "
               "upper(payload.driver.name) AS driver FROM \"cars/+/telemetry\" WHERE payload.speed > 100",
        "kafka_topic": "speeding",
        "key": "${car}",
    }
    r = requests.post(api, json=rule)
    assert r.status_code == 201, r.text
    listed = requests.get(api).json()
    assert [x["name"] for x in listed] == ["speeding"]
    car = Device(broker, "car-77", v5=True)
    car.publish("cars/77/telemetry", json.dumps({"speed": 130, "driver": {"name": "ann"}}))
    car.publish("cars/77/telemetry", json.dumps({"speed": 50, "driver": {"name": "ann"}}))
    car.publish("cars/77/telemetry", "not json")
    recs = kafka_records(broker, "speeding", 1)
    assert len(recs) == 1
    assert json.loads(recs[0].value) == {"speed": 130, "clientid": "car-77", "car": "77", "driver": "ANN"}
    assert recs[0].key == b"77"
    m = requests.get(f"{api}/speeding").json()["metrics"]
    assert m["matched"] == 3 and m["passed"] == 1
    # Rules persist in the metadata store across a restart.
    car.disconnect()
    broker.restart()
    assert [x["name"] for x in requests.get(api).json()] == ["speeding"]
    assert requests.delete(f"{api}/speeding").status_code == 204
    assert requests.get(f"{api}/speeding").status_code == 404
    assert requests.delete(f"{api}/speeding").status_code == 404


def test_events_and_event_rules(broker):
    api = f"{broker.http}/api/v1/mqtt/rules"
    r = requests.post(api, json={"name": "logins", "sql": "SELECT clientid, username FROM \"$events/client.connected\"",
                                 "kafka_topic": "logins"})
    assert r.status_code == 201, r.text
    d = Device(broker, "ev-1", v5=True, username="alice")
    d.subscribe("ev/topic", 1)
    d.unsubscribe("ev/topic")
    d.disconnect()
    evs = events(broker, 4, lambda e: e["clientid"] == "ev-1")
    names = [e["event"] for e in evs]
    assert names[:4] == ["client.connected", "session.subscribed", "session.unsubscribed", "client.disconnected"]
    assert evs[1]["topic"] == "ev/topic" and evs[0]["username"] == "alice"
    assert all(isinstance(e["timestamp"], int) for e in evs)
    logins = kafka_records(broker, "logins", 1)
    assert json.loads(logins[0].value) == {"clientid": "ev-1", "username": "alice"}


def test_downlink_commands_reach_devices_and_acks_become_events(broker):
    dev = Device(broker, "car-5", v5=True)
    dev.subscribe("cars/5/cmd", 1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce("mqtt.commands", key=b"car-5", value=b'{"door":"unlock"}',
              headers=[("mqtt.topic", b"cars/5/cmd"), ("mqtt.qos", b"1"), ("request-id", b"r-1")])
    p.flush(10)
    m = dev.recv(15)
    assert (m.topic, m.payload, m.qos) == ("cars/5/cmd", b'{"door":"unlock"}', 1)
    assert ("request-id", "r-1") in m.properties.UserProperty
    acked = events(broker, 1, lambda e: e["event"] == "message.acked" and e["clientid"] == "car-5")
    assert acked[0]["topic"] == "cars/5/cmd" and acked[0]["payload"] == '{"door":"unlock"}'
    delivered = events(broker, 1, lambda e: e["event"] == "message.delivered" and e["clientid"] == "car-5")
    assert delivered[0]["qos"] == 1
    # A command for a topic nobody subscribes to is reported as dropped.
    p.produce("mqtt.commands", value=b"x", headers=[("mqtt.topic", b"cars/404/cmd")])
    p.flush(10)
    events(broker, 1, lambda e: e["event"] == "message.dropped" and e.get("topic") == "cars/404/cmd")
    # Progress is stored: a restart does not deliver the old command again.
    dev.disconnect()
    broker.restart()
    dev2 = Device(broker, "car-5b", v5=True)
    dev2.subscribe("cars/5/cmd", 1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce("mqtt.commands", value=b"second", headers=[("mqtt.topic", b"cars/5/cmd")])
    p.flush(10)
    assert dev2.recv(15).payload == b"second"
    dev2.no_message(0.5)
    dev2.disconnect()


def test_no_acknowledged_publish_is_lost_across_a_crash(broker):
    create_topic(broker, "mqtt", partitions=2)
    dev = Device(broker, "crashy")
    infos = []
    stop = threading.Event()

    def publish_loop():
        i = 0
        while not stop.is_set() and i < 5000:
            try:
                infos.append((i, dev.c.publish("crash/test", str(i), qos=1)))
            except Exception:  # noqa: BLE001 - the broker is going away
                break
            i += 1
            if i % 50 == 0:
                time.sleep(0.005)

    t = threading.Thread(target=publish_loop)
    t.start()
    wait_until(lambda: len(dev.acked_mids) > 300, 20, what="some PUBACKs")
    broker.kill()
    stop.set()
    t.join(10)
    with dev.lock:
        acked = {i for i, info in infos if info.mid in dev.acked_mids}
    dev.drop()
    broker.start()
    stored = {int(r.value) for r in kafka_records(broker, "mqtt", len(acked))}
    assert acked, "some publishes were acknowledged before the crash"
    assert acked <= stored, f"lost acknowledged messages: {sorted(acked - stored)[:10]}"


def _raw_connect(port: int, v5: bool, client_id: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    cid = client_id.encode()
    if v5:
        var = b"\x00\x04MQTT\x05\x02\x00\x3c\x00"  # clean start, keepalive 60, no properties
    else:
        var = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = struct.pack(">H", len(cid)) + cid
    body = var + payload
    s.sendall(bytes([0x10, len(body)]) + body)
    ack = s.recv(64)
    assert ack[0] == 0x20, ack
    return s


def _closed_after(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    s.settimeout(5)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_bad_input_closes_only_that_connection(broker):
    sub = Device(broker, "bystander", v5=True)
    sub.subscribe("still/#", 1)
    port = broker.mqtt_port

    # Oversized publish (v5): DISCONNECT with 0x95 Packet Too Large, then close.
    s = _raw_connect(port, True, "big")
    s.sendall(bytes([0x30]) + bytes([0x80, 0x80, 0x80, 0x01]))  # remaining length 2 MiB
    out = _closed_after(s)
    assert out[:1] == b"\xe0" and 0x95 in out[2:3], out
    # Reserved packet type 0 (v3.1.1): closed.
    s = _raw_connect(port, False, "garbage")
    s.sendall(b"\x00\x00")
    assert _closed_after(s) == b""
    # A second CONNECT is a protocol error (v5: 0x82).
    s = _raw_connect(port, True, "twice")
    s.sendall(b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00")
    out = _closed_after(s)
    assert out[:1] == b"\xe0" and out[2] == 0x82, out
    # Publish to a topic with a wildcard (v5): 0x90 Topic Name Invalid.
    s = _raw_connect(port, True, "wild")
    topic = b"a/+"
    body = struct.pack(">H", len(topic)) + topic + b"\x00" + b"x"
    s.sendall(bytes([0x30, len(body)]) + body)
    out = _closed_after(s)
    assert out[:1] == b"\xe0" and out[2] == 0x90, out
    # Not MQTT at all.
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert _closed_after(s) == b""
    # Unsupported protocol level: CONNACK with return code 1.
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"\x10\x0e\x00\x04MQTT\x09\x02\x00\x3c\x00\x02id")
    assert _closed_after(s) == b"\x20\x02\x00\x01"

    # Everyone else carries on.
    pub = Device(broker, "still-here")
    pub.publish("still/ok", b"fine", qos=1)
    assert sub.recv(10).payload == b"fine"
    broker.assert_alive()
    sub.disconnect()
    pub.disconnect()


def test_username_password_authentication(make_broker, tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('[mqtt]\nusers = ["car:s3cret"]\nallow-anonymous = false\ndeny-subscribe = ["secret/#"]\n')
    broker = make_broker("--config", str(cfg))
    ok = Device(broker, "auth-ok", username="car", password="s3cret")
    assert [rc.value if hasattr(rc, "value") else rc for rc in ok.subscribe("secret/#", 1)] == [0x80]
    assert [rc.value for rc in ok.subscribe("public/#", 1)] == [1]
    ok.disconnect()
    bad = Device(broker, "auth-bad", v5=True, username="car", password="nope", connect=False)
    bad.connect(expect_ok=False)
    assert bad.connack.value == 0x86  # Bad User Name or Password
    anon = Device(broker, "anon", connect=False)
    anon.connect(expect_ok=False)
    assert anon.connack.is_failure
    out = subprocess_pub(broker, "-u", "car", "-P", "wrong", "-t", "x", "-m", "y")
    assert out.returncode != 0


def subprocess_pub(broker, *args):
    import subprocess

    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.mqtt_port), *args],
                          capture_output=True, text=True, timeout=20)


def test_message_expiry_and_topic_alias_v5(broker):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    dev = Device(broker, "exp-dev", v5=True, clean=False, session_expiry=300)
    dev.subscribe("exp/#", 1)
    dev.disconnect()
    pub = Device(broker, "exp-pub", v5=True)
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 1
    pub.c.publish("exp/short", b"stale", qos=1, properties=props).wait_for_publish(10)
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 300
    pub.c.publish("exp/long", b"fresh", qos=1, properties=props).wait_for_publish(10)
    # Topic alias: first use sets it, second sends an empty topic.
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 3
    pub.c.publish("exp/alias", b"one", qos=1, properties=props).wait_for_publish(10)
    pub.c.publish("", b"two", qos=1, properties=props).wait_for_publish(10)
    time.sleep(2.2)
    dev.connect()
    msgs = dev.recv_n(3)
    assert [(m.topic, m.payload) for m in msgs] == [("exp/long", b"fresh"), ("exp/alias", b"one"), ("exp/alias", b"two")]
    assert 290 <= msgs[0].properties.MessageExpiryInterval <= 300
    recs = kafka_records(broker, "mqtt", 4)
    assert sorted(headers(r)["mqtt.topic"] for r in recs) == ["exp/alias", "exp/alias", "exp/long", "exp/short"]
    dropped = events(broker, 1, lambda e: e["event"] == "message.dropped" and e.get("reason") == "expired")
    assert dropped[0]["topic"] == "exp/short"
    dev.disconnect()
    pub.disconnect()


def _stored_by_client(broker, topic: str, min_count: int) -> dict[str, list[int]]:
    """Sequence numbers of `client:seq:...` payloads in `topic`, per client, in log order."""
    by_client: dict[str, list[int]] = {}
    recs = kafka_records(broker, topic, min_count, timeout=60)
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        client, seq, _ = r.value.decode().split(":", 2)
        by_client.setdefault(client, []).append(int(seq))
    return by_client


def test_many_clients_under_a_small_batch_limit_and_byte_budget(make_broker):
    # A small topic limit and in-flight budget make the uplink cut batches and hold
    # connections back constantly; with payloads near 100 bytes, the headers are as
    # large as the values, so a cut that counts only values would overshoot.
    broker = make_broker(env={"SLUICE_MQTT_INFLIGHT_BYTES": "262144"})
    create_topic(broker, "mqtt", partitions=2, config={"max.message.bytes": "16384"})
    clients, per_client = 60, 400
    devices = [Device(broker, f"dev-{i:03}", v5=i % 2 == 0) for i in range(clients)]
    infos: dict[str, list] = {d.c._client_id.decode(): [] for d in devices}
    for seq in range(per_client):
        for d in devices:
            cid = d.c._client_id.decode()
            payload = f"{cid}:{seq}:".ljust(100, "x")
            infos[cid].append(d.publish(f"fleet/{cid}/telemetry", payload, qos=1, wait=False))
    for d in devices:
        wait_until(lambda: len(d.acked_mids) == per_client, 60, what=f"PUBACKs of {d.c._client_id!r}")
    assert all(not d.disconnects for d in devices), [d.disconnects for d in devices if d.disconnects]
    stored = _stored_by_client(broker, "mqtt", clients * per_client)
    # Every acknowledged message exactly once, each device's in order.
    assert sorted(stored) == sorted(infos)
    for cid, seqs in stored.items():
        assert seqs == list(range(per_client)), f"{cid}: {seqs[:20]}..."
    assert "too large" not in broker.log()
    for d in devices:
        d.disconnect()


def _publish_frame(topic: str, payload: bytes, pid: int, v5: bool) -> bytes:
    """A QoS 1 PUBLISH packet."""
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t + struct.pack(">H", pid) + (b"\x00" if v5 else b"") + payload
    n, length = len(body), b""
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([0x32]) + length + body


def test_a_publish_too_large_for_its_topic_fails_alone(make_broker):
    broker = make_broker()
    create_topic(broker, "mqtt", partitions=1, config={"max.message.bytes": "4096"})
    small = [Device(broker, f"small-{i}", v5=i == 0) for i in range(2)]
    big = {v5: _raw_connect(broker.mqtt_port, v5, f"big-v{5 if v5 else 3}") for v5 in (True, False)}
    for seq in range(100):
        for d in small:
            cid = d.c._client_id.decode()
            d.publish("fleet/small", f"{cid}:{seq}:", qos=1, wait=False)
        if seq == 50:
            # Within the MQTT packet limit, but no batch of the topic can hold it.
            for v5, s in big.items():
                s.sendall(_publish_frame("fleet/big", b"big:0:" + b"y" * 8000, 1, v5))
    for d in small:
        wait_until(lambda: len(d.acked_mids) == 100, 30, what="PUBACKs of the small publishers")
    # MQTT 5: no PUBACK, DISCONNECT with 0x95 Packet too large. 3.1.1 has no negative
    # acknowledgement: the connection is closed.
    assert _closed_after(big[True]) == bytes([0xE0, 0x02, 0x95, 0x00])
    assert _closed_after(big[False]) == b""
    for d in small:
        assert not d.disconnects
    stored = _stored_by_client(broker, "mqtt", 200)
    assert stored == {"small-0": list(range(100)), "small-1": list(range(100))}
    for d in small:
        d.disconnect()


def test_load_generator_keeps_every_client(make_broker):
    broker = make_broker()
    create_topic(broker, "mqtt", partitions=2, config={"max.message.bytes": "65536"})
    clients, inflight = 400, 10
    out = broker.run_cli("bench", "--json", "--bootstrap", broker.bootstrap, "mqtt",
                         "--mqtt", f"127.0.0.1:{broker.mqtt_port}", "--clients", str(clients),
                         "--seconds", "4", "--inflight", str(inflight), timeout=90)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["connected"] == clients and r["failed"] == 0, r
    assert r["messages"] > clients
    # Everything acknowledged is stored; at most what was in flight at the end besides.
    parts = topic_partitions(broker.bootstrap, "mqtt")
    stored = sum(hi - lo for lo, hi in watermarks(broker.bootstrap, "mqtt", parts).values())
    assert r["messages"] <= stored <= r["messages"] + clients * inflight, (stored, r)
