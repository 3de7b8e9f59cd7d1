"""Helpers for the MQTT gateway tests: paho-mqtt clients that record what
they receive, mosquitto client wrappers, and Kafka read-back with
confluent-kafka (librdkafka)."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from conftest import consume_confluent, topic_partitions, wait_until


class Device:
    """A paho-mqtt client (v3.1.1 or v5) running its network loop in a thread."""

    def __init__(self, broker, client_id: str, v5: bool = False, clean: bool = True,
                 session_expiry: int | None = None, username: str | None = None,
                 password: str | None = None, will: tuple | None = None, keepalive: int = 30,
                 connect: bool = True, tls: dict | None = None):
        self.broker = broker
        self.v5 = v5
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.connected = threading.Event()
        self.connack = None
        self.session_present = None
        self.acked_mids: set[int] = set()
        self.ack_reasons: dict[int, int] = {}  # mid -> PUBACK reason code (MQTT 5)
        self.disconnects: list = []  # reason codes of every disconnection
        self.lock = threading.Lock()
        kwargs = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                      protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if not v5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(**kwargs)
        self.c.max_inflight_messages_set(100)
        self.c.max_queued_messages_set(0)
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls is not None:  # {"ca": ..., and optionally "cert" and "key" of a client certificate}
            self.c.tls_set(ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key"))
        if will is not None:
            self.c.will_set(*will)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = lambda c, u, flags, reason_code, props: self.disconnects.append(reason_code)
        if connect:
            self.connect()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self.session_present = flags.session_present
        self.connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.acked_mids.add(mid)
            self.ack_reasons[mid] = reason_code.value if hasattr(reason_code, "value") else reason_code

    def connect(self, expect_ok: bool = True):
        self.connected.clear()
        props = None
        kwargs = {}
        if self.v5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = props
        self.c.connect("127.0.0.1", self.broker.mqtt_port, keepalive=self.keepalive, **kwargs)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        if expect_ok:
            assert not self.connack.is_failure, f"connect refused: {self.connack}"
        return self

    def subscribe(self, topic: str, qos: int = 1):
        done = threading.Event()
        granted = []

        def on_sub(client, userdata, mid, reason_codes, properties):
            granted.extend(reason_codes)
            done.set()

        self.c.on_subscribe = on_sub
        self.c.subscribe(topic, qos)
        assert done.wait(10), "no SUBACK"
        return granted

    def unsubscribe(self, topic: str):
        done = threading.Event()
        self.c.on_unsubscribe = lambda *a: done.set()
        self.c.unsubscribe(topic)
        assert done.wait(10), "no UNSUBACK"

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False, user_props: dict | None = None,
                wait: bool = True):
        props = None
        if user_props:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = list(user_props.items())
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if wait and qos > 0:
            info.wait_for_publish(15)
            assert info.is_published(), f"publish {topic} not acknowledged"
        return info

    def recv(self, timeout: float = 10) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def recv_n(self, n: int, timeout: float = 15) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"received {len(out)} of {n} messages: {[m.payload for m in out]}")
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def no_message(self, wait: float = 1.0) -> bool:
        try:
            m = self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message on {m.topic}: {m.payload!r}")

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """Vanish without DISCONNECT (the will fires)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()


def kafka_records(broker, topic: str, min_count: int = 1, timeout: float = 20) -> list:
    """All records of a topic (every partition), waiting until at least min_count exist."""

    def read():
        parts = topic_partitions(broker.bootstrap, topic)
        recs = [r for recs in consume_confluent(broker.bootstrap, topic, parts).values() for r in recs]
        return recs if len(recs) >= min_count else None

    return wait_until(read, timeout, interval=0.3, what=f"{min_count} records in {topic}")


def headers(rec) -> dict:
    return {k: (v.decode() if v is not None else None) for k, v in rec.headers}


def events(broker, min_count: int = 1, pred=None, timeout: float = 20) -> list[dict]:
    """Events from mqtt.events (JSON), waiting until min_count match pred."""

    def read():
        try:
            recs = kafka_records(broker, "mqtt.events", 1, timeout=2)
        except TimeoutError:
            return None
        evs = [json.loads(r.value) for r in recs]
        hits = [e for e in evs if pred is None or pred(e)]
        return hits if len(hits) >= min_count else None

    return wait_until(read, timeout, interval=0.5, what=f"{min_count} matching events")


def mosquitto_pub(broker, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.mqtt_port), *args],
                          capture_output=True, text=True, timeout=timeout, check=True)


def mosquitto_sub(broker, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.mqtt_port), *args],
                          capture_output=True, text=True, timeout=timeout)
