"""TLS and the user store beyond the Kafka listeners: MQTT over mqtts:// (passwords and
client certificates) with READ/WRITE ACLs, and HTTPS with Basic authentication on the REST
listener and the schema registry (curl, Python and Confluent's SchemaRegistryClient).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient, ResourcePatternType,
                                   ResourceType)
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from conftest import consume_confluent, wait_until
from mqtt_helpers import Device
from test_security import start_secure

ADMIN = [("admin", "admin-pw", "SCRAM-SHA-256"), ("sensor", "sensor-pw", "SCRAM-SHA-256")]


def with_listeners(make_broker, tmp_path, **listen):
    """A broker whose MQTT, HTTP and registry listeners take the given schemes, with ACLs on."""
    def patched(*a, **kw):
        b = make_broker(*a, **kw)
        for flag, scheme in listen.items():
            i = b.args.index(f"--{flag}")
            b.args[i + 1] = f"{scheme}://{b.args[i + 1]}"
        return b
    return start_secure(patched, tmp_path, "--authorization", "acl", "--super-users", "User:admin",
                        "--http-auth", "basic", users=ADMIN)


def grant(s, principal: str, op, name: str, pattern=ResourcePatternType.LITERAL, rtype=ResourceType.TOPIC):
    admin = AdminClient(s.conf("SASL_PLAINTEXT", "SCRAM-SHA-256", user="admin", password="admin-pw"))
    binding = AclBinding(rtype, name, pattern, principal, "*", op, AclPermissionType.ALLOW)
    for f in admin.create_acls([binding]).values():
        f.result(30)


def mqtts_connack(s, v5: bool, **kw) -> int:
    d = Device(s.broker, f"dev-{uuid.uuid4().hex[:6]}", v5=v5, connect=False, tls={"ca": s.certs["ca"], **kw.pop("tls", {})},
               **kw)
    try:
        d.connect(expect_ok=False)
        return d.connack.value
    finally:
        d.c.loop_stop()
        d.c.disconnect()


def test_mqtt_over_tls_with_passwords_certificates_and_acls(make_broker, tmp_path):
    s = with_listeners(make_broker, tmp_path, **{"mqtt-listen": "mqtts"})
    # Passwords of stored users, over TLS; a wrong one is refused with 3.1.1's 4 (paho: 0x86) and 5.0's 0x86.
    assert mqtts_connack(s, False, username="sensor", password="sensor-pw") == 0
    assert mqtts_connack(s, False, username="sensor", password="wrong") == 0x86
    assert mqtts_connack(s, True, username="sensor", password="wrong") == 0x86
    # A plaintext MQTT client on the TLS port gets no CONNACK, and the broker lives on.
    with pytest.raises(AssertionError, match="no CONNACK"):
        Device(s.broker, "plain", connect=False).connect(expect_ok=False)
    s.broker.assert_alive()

    # ACLs: sensor may publish and subscribe under sensors/ only.
    grant(s, "User:sensor", AclOperation.WRITE, "sensors/", ResourcePatternType.PREFIXED)
    grant(s, "User:sensor", AclOperation.READ, "sensors/", ResourcePatternType.PREFIXED)
    d = Device(s.broker, "sensor-1", v5=True, username="sensor", password="sensor-pw", tls={"ca": s.certs["ca"]})
    assert [r.value for r in d.subscribe("sensors/#")] == [1]
    assert [r.value for r in d.subscribe("other/#")] == [0x87]  # NOT_AUTHORIZED
    ok = d.publish("sensors/car1/speed", b"88", qos=1)
    refused = d.publish("other/car1", b"secret", qos=1)
    assert d.ack_reasons[ok.mid] == 0 and d.ack_reasons[refused.mid] == 0x87
    assert d.recv().payload == b"88"
    d.no_message(0.5)
    d.disconnect()
    # Only the authorized publish reached the Kafka topic.
    admin = s.conf("SASL_PLAINTEXT", "SCRAM-SHA-256", user="admin", password="admin-pw")
    records = consume_confluent(admin.pop("bootstrap.servers"), "mqtt", [0], **admin)[0]
    assert [r.value for r in records] == [b"88"]

    # A client certificate is the credential: its subject maps (the rules) to User:alice@eng.
    cert = {"cert": s.certs["client_cert"], "key": s.certs["client_key"]}
    dev = Device(s.broker, "cert-dev", v5=True, tls={"ca": s.certs["ca"], **cert})
    assert [r.value for r in dev.subscribe("sensors/#")] == [0x87]
    grant(s, "User:alice@eng", AclOperation.READ, "sensors/", ResourcePatternType.PREFIXED)
    assert [r.value for r in dev.subscribe("sensors/#")] == [1]
    dev.disconnect()
    log = s.broker.log()
    assert "authorization denied" in log and "User:alice@eng" in log


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get(url: str, ca: str, auth: str | None = None) -> tuple[int, dict, str]:
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_https_with_basic_auth_and_the_registry_behind_acls(make_broker, tmp_path):
    s = with_listeners(make_broker, tmp_path, **{"http-listen": "https", "registry-listen": "https"})
    ca, b = s.certs["ca"], s.broker
    http, registry = f"https://127.0.0.1:{b.http_port}", f"https://127.0.0.1:{b.registry_port}"

    # Python: /health stays open; the rest needs a stored user's password.
    assert get(f"{http}/health", ca)[0] == 200
    status, headers, body = get(f"{http}/metrics", ca)
    assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
    assert json.loads(body) == {"error_code": 401, "message": "Unauthorized"}
    assert get(f"{http}/metrics", ca, basic("sensor", "wrong"))[0] == 401
    status, _, body = get(f"{http}/metrics", ca, basic("sensor", "sensor-pw"))
    assert status == 200 and "sluice_http_authentication_failures_total" in body

    # curl, verifying the certificate, with and without credentials.
    def curl(*args: str) -> str:
        r = subprocess.run(["curl", "-sS", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}", *args],
                           capture_output=True, text=True, timeout=20)
        return r.stdout
    assert curl(f"{http}/api/v1/cluster") == "401"
    assert curl("-u", "admin:admin-pw", f"{http}/api/v1/cluster") == "200"
    # The REST API is the cluster's: reads need DESCRIBE on it, changes ALTER.
    assert curl("-u", "sensor:sensor-pw", f"{http}/api/v1/cluster") == "403"
    rule = ["-X", "POST", "-H", "Content-Type: application/json", "-d",
            json.dumps({"name": "r1", "sql": 'SELECT * FROM "a/#"', "kafka_topic": "out"})]
    assert curl("-u", "sensor:sensor-pw", *rule, f"{http}/api/v1/mqtt/rules") == "403"
    grant(s, "User:sensor", AclOperation.DESCRIBE, "kafka-cluster", rtype=ResourceType.BROKER)
    wait_until(lambda: curl("-u", "sensor:sensor-pw", f"{http}/api/v1/cluster") == "200", 10,
               what="the DESCRIBE grant on the cluster")
    _, _, body = get(f"{http}/api/v1/mqtt/rules", ca, basic("sensor", "sensor-pw"))
    assert "r1" not in body
    assert curl("-u", "sensor:sensor-pw", *rule, f"{http}/api/v1/mqtt/rules") == "403"
    assert curl("-u", "admin:admin-pw", *rule, f"{http}/api/v1/mqtt/rules") == "201"
    _, _, body = get(f"{http}/api/v1/mqtt/rules", ca, basic("sensor", "sensor-pw"))
    assert "r1" in body
    assert curl("-u", "admin:admin-pw", f"{registry}/subjects") == "200"
    # Plain HTTP on the HTTPS port fails cleanly.
    r = subprocess.run(["curl", "-sS", "-m", "5", f"http://127.0.0.1:{b.http_port}/health"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode != 0
    b.assert_alive()

    # Confluent's SchemaRegistryClient over HTTPS with basic.auth.user.info.
    def client(user: str, password: str) -> SchemaRegistryClient:
        return SchemaRegistryClient({"url": registry, "ssl.ca.location": ca,
                                     "basic.auth.user.info": f"{user}:{password}"})
    schema = Schema(json.dumps({"type": "record", "name": "Order", "fields": [{"name": "id", "type": "long"}]}),
                    "AVRO")
    admin_id = client("admin", "admin-pw").register_schema("payments-value", schema)
    assert json.loads(client("sensor", "sensor-pw").get_schema(admin_id).schema_str) == json.loads(schema.schema_str)
    with pytest.raises(SchemaRegistryError) as e:
        client("sensor", "wrong").get_subjects()
    assert e.value.http_status_code == 401
    # Writes need ALTER on the subject's topic (orders-value -> orders).
    with pytest.raises(SchemaRegistryError) as e:
        client("sensor", "sensor-pw").register_schema("orders-value", schema)
    assert e.value.http_status_code == 403 and e.value.error_code == 40301
    grant(s, "User:sensor", AclOperation.ALTER, "orders")
    sid = wait_until(lambda: _try_register(client("sensor", "sensor-pw"), "orders-value", schema), 10,
                     what="the ALTER grant")
    assert sid == admin_id  # the same schema keeps its id
    assert client("admin", "admin-pw").get_latest_version("orders-value").schema_id == sid
    # The global config is the cluster's: ALTER on it, which sensor lacks.
    req = urllib.request.Request(f"{registry}/config", method="PUT", data=b'{"compatibility": "NONE"}',
                                 headers={"Authorization": basic("sensor", "sensor-pw"),
                                          "Content-Type": "application/vnd.schemaregistry.v1+json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca), timeout=10)
    assert e.value.code == 403 and json.loads(e.value.read())["error_code"] == 40301


def _try_register(c: SchemaRegistryClient, subject: str, schema: Schema):
    try:
        return c.register_schema(subject, schema)
    except SchemaRegistryError as e:
        if e.http_status_code == 403:
            return None
        raise
