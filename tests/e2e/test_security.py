"""Kafka listener security: TLS, mutual TLS, SASL PLAIN and SCRAM, users, re-authentication.

Certificates are made with openssl in the test: a CA, a server certificate for 127.0.0.1 and
localhost, and a client certificate. One broker serves four listeners at once (PLAINTEXT,
SSL, SASL_PLAINTEXT, SASL_SSL), each advertising its own address.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, NewTopic, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion, UserScramCredentialUpsertion)

from conftest import (Wire, free_port, http_get, kbytes, kstring, run_kafkajs, run_kcat, wait_until)

API_SASL_HANDSHAKE = 17
API_SASL_AUTHENTICATE = 36
API_METADATA = 3
SASL_AUTHENTICATION_FAILED = 58
ILLEGAL_SASL_STATE = 34
UNSUPPORTED_SASL_MECHANISM = 33


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path, server_cn: str = "sluice-test") -> dict:
    """A CA, a server certificate (SAN 127.0.0.1, localhost) and a client certificate, as PEM files."""
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "ca.pem").exists():
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Sluice Test CA",
                "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={server_cn}", "-keyout", "server.key",
            "-out", "server.csr", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)
    if not (d / "client.pem").exists():
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/C=US/O=acme/OU=eng/CN=alice",
                "-keyout", "client.key", "-out", "client.csr", cwd=d)
        (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")  # an X.509 v3 certificate
        openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "client.ext", "-out", "client.pem", cwd=d)
    return {k: str(d / f) for k, f in [("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"),
                                         ("client_cert", "client.pem"), ("client_key", "client.key")]}


class Secure:
    """A broker with every listener protocol, and users alice (SCRAM-SHA-256 and -512) and bob (-512)."""

    def __init__(self, broker, certs: dict, ports: dict):
        self.broker, self.certs, self.ports = broker, certs, ports

    def addr(self, protocol: str) -> str:
        return f"127.0.0.1:{self.ports[protocol]}"

    def conf(self, protocol: str, mechanism: str | None = None, user: str = "alice", password: str = "alice-pw",
             **extra) -> dict:
        c = {"bootstrap.servers": self.addr(protocol), "security.protocol": protocol}
        if "SSL" in protocol:
            c["ssl.ca.location"] = self.certs["ca"]
        if mechanism:
            c.update({"sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password})
        c.update(extra)
        return c


USERS = [("alice", "alice-pw", "SCRAM-SHA-256"), ("alice", "alice-pw", "SCRAM-SHA-512"),
         ("bob", "bob-pw", "SCRAM-SHA-512")]


def start_secure(make_broker, tmp_path, *extra: str, env: dict | None = None, users=()) -> Secure:
    certs = make_certs(tmp_path / "certs")
    b = make_broker(start=False, env=env)
    ports = {"PLAINTEXT": b.kafka_port}
    for p in ("SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        ports[p] = free_port()
    listen = ",".join(f"{p}://127.0.0.1:{port}" for p, port in ports.items())
    args = list(b.args)
    args[args.index("--kafka-listen") + 1] = listen
    args[args.index("--advertise") + 1] = listen
    b.args = args + ["--tls-cert", certs["cert"], "--tls-key", certs["key"], "--tls-client-ca", certs["ca"],
                     "--ssl-principal-mapping-rules", "RULE:^CN=([^,]*),OU=([^,]*).*$/$1@$2/L,DEFAULT", *extra]
    # The first users are made offline, before the first serve.
    for user, pw, mech in [*USERS, *users]:
        r = b.run_cli("user", "create", user, "--password", pw, "--mechanism", mech, "--data-dir", str(b.data_dir))
        assert r.returncode == 0, r.stderr
    b.start()
    return Secure(b, certs, ports)


@pytest.fixture
def secure(make_broker, tmp_path) -> Secure:
    return start_secure(make_broker, tmp_path, env={"RUST_LOG": "info,sluice_kafka=debug"})


def roundtrip(conf: dict, n: int = 50) -> list[tuple[bytes, bytes]]:
    """Create a topic, produce n records and read them back, all with one client configuration."""
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    p = Producer({**conf, "enable.idempotence": True})
    sent = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(n)]
    errors = []
    for k, v in sent:
        p.produce(topic, v, k, on_delivery=lambda e, m: e and errors.append(e))
    assert p.flush(30) == 0 and not errors, errors
    c = Consumer({**conf, "group.id": f"g-{topic}", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append((m.key(), m.value()))
    c.close()
    assert got == sent
    return got


def test_confluent_kafka_over_every_protocol_and_mechanism(secure):
    for protocol, mech in [("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "PLAIN"),
                           ("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("PLAINTEXT", None)]:
        conf = secure.conf(protocol, mech)
        # Each listener advertises its own address, never another listener's.
        md = AdminClient(conf).list_topics(timeout=20)
        assert [(b.host, b.port) for b in md.brokers.values()] == [("127.0.0.1", secure.ports[protocol])], protocol
        roundtrip(conf)
    # bob has only a SCRAM-SHA-512 credential; PLAIN verifies against it too.
    roundtrip(secure.conf("SASL_SSL", "PLAIN", user="bob", password="bob-pw"), n=5)


def test_mutual_tls_takes_the_principal_from_the_certificate(secure):
    conf = secure.conf("SSL", None, **{"ssl.certificate.location": secure.certs["client_cert"],
                                       "ssl.key.location": secure.certs["client_key"]})
    roundtrip(conf, n=10)
    # The mapping rule turned CN=alice,OU=eng,O=acme,C=US into alice@eng.
    wait_until(lambda: "principal=User:alice@eng" in secure.broker.log(), 10, what="the mapped principal in the log")
    # Without a client certificate the SSL listener refuses the connection.
    errors = []
    admin = AdminClient({**secure.conf("SSL"), "error_cb": errors.append})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    admin.poll(1)
    assert errors, "librdkafka saw no error"


def test_a_wrong_password_fails_authentication(secure):
    for mech in ["SCRAM-SHA-256", "PLAIN"]:
        errors = []
        admin = AdminClient({**secure.conf("SASL_SSL", mech, password="wrong"), "error_cb": errors.append})
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=5)
        admin.poll(1)  # error callbacks are served from poll
        assert any("Authentication failed" in e.str() or "authentication" in e.str().lower() for e in errors), errors
    text = http_get(secure.broker.http + "/metrics")[1]
    failed = [l for l in text.splitlines() if l.startswith("sluice_kafka_sasl_authentications_total") and 'result="failed"' in l]
    assert failed and sum(float(l.split()[-1]) for l in failed) >= 2, failed
    assert "authentication failed" in secure.broker.log()


def handshake(w: Wire, mechanism: str) -> int:
    return w.request(API_SASL_HANDSHAKE, 1, kstring(mechanism)).i16()


def authenticate(w: Wire, token: bytes) -> tuple[int, str | None, int]:
    r = w.request(API_SASL_AUTHENTICATE, 1, kbytes(token))
    code, msg = r.i16(), r.string()
    r.bytes_()
    return code, msg, r.i64()


def closed(w) -> bool:
    """Whether the peer closes the connection (within the socket's timeout) without sending anything."""
    sock = w.sock if isinstance(w, Wire) else w
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True
    except (socket.timeout, TimeoutError):
        return False


def test_failed_logins_from_one_address_are_rate_limited(secure):
    addr = secure.addr("SASL_PLAINTEXT")

    def plain(password: str) -> tuple[int, str | None]:
        with Wire(addr) as w:
            assert handshake(w, "PLAIN") == 0
            code, msg, _ = authenticate(w, b"\0alice\0" + password.encode())
            return code, msg

    assert plain("alice-pw")[0] == 0
    for _ in range(10):
        assert plain("guess")[0] == SASL_AUTHENTICATION_FAILED
    # The right password is now refused unchecked, until the minute has passed.
    code, msg = plain("alice-pw")
    assert code == SASL_AUTHENTICATION_FAILED and "too many failed" in msg
    assert "too many failed" in secure.broker.log()


def test_sasl_state_errors_on_the_wire(secure):
    addr = secure.addr("SASL_PLAINTEXT")
    # A request before authentication: the connection closes without an answer.
    with Wire(addr) as w:
        w.send_request(API_METADATA, 1, struct.pack(">i", -1))
        assert closed(w)
    # SaslAuthenticate before SaslHandshake: ILLEGAL_SASL_STATE, then closed.
    with Wire(addr) as w:
        code, _, _ = authenticate(w, b"\0alice\0alice-pw")
        assert code == ILLEGAL_SASL_STATE
        assert closed(w)
    # An unknown mechanism is refused, and the mechanisms offered are listed.
    with Wire(addr) as w:
        assert handshake(w, "GSSAPI") == UNSUPPORTED_SASL_MECHANISM
    # A wrong password: SASL_AUTHENTICATION_FAILED, then closed.
    with Wire(addr) as w:
        assert handshake(w, "PLAIN") == 0
        code, msg, _ = authenticate(w, b"\0alice\0nope")
        assert code == SASL_AUTHENTICATION_FAILED and msg
        assert closed(w)
    # An oversized token closes cleanly too.
    with Wire(addr) as w:
        assert handshake(w, "PLAIN") == 0
        code, _, _ = authenticate(w, b"\0alice\0" + b"x" * 100_000)
        assert code == SASL_AUTHENTICATION_FAILED
        assert closed(w)
    # The right password, then Metadata is served.
    with Wire(addr) as w:
        assert handshake(w, "PLAIN") == 0
        code, _, lifetime = authenticate(w, b"\0alice\0alice-pw")
        assert (code, lifetime) == (0, 0)
        r = w.request(API_METADATA, 1, struct.pack(">i", -1))
        n_brokers = r.i32()
        assert n_brokers == 1
        assert (r.i32(), r.string(), r.i32()) == (0, "127.0.0.1", secure.ports["SASL_PLAINTEXT"])
    # A SaslHandshake on a listener without SASL: ILLEGAL_SASL_STATE.
    with Wire(secure.addr("PLAINTEXT")) as w:
        assert handshake(w, "PLAIN") == ILLEGAL_SASL_STATE
    secure.broker.assert_alive()


def test_bad_bytes_on_tls_and_plaintext_listeners_close_cleanly(secure):
    # Plaintext Kafka bytes on a TLS listener: a TLS alert at most, then the close.
    with Wire(secure.addr("SASL_SSL")) as w:
        w.send_request(API_METADATA, 1, struct.pack(">i", -1))
        assert w.wait_closed(5)
    # A TLS handshake on the plaintext listener.
    ctx = ssl.create_default_context(cafile=secure.certs["ca"])
    with socket.create_connection(("127.0.0.1", secure.ports["PLAINTEXT"]), timeout=10) as s:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ctx.wrap_socket(s, server_hostname="127.0.0.1")
    # A truncated handshake: the first bytes of a ClientHello, then silence. The broker
    # keeps serving others meanwhile.
    with socket.create_connection(("127.0.0.1", secure.ports["SSL"]), timeout=15) as s:
        s.sendall(bytes.fromhex("16030100a5010000a10303"))
        roundtrip(secure.conf("SASL_SSL", "SCRAM-SHA-256"), n=3)
        assert closed(s)  # within the handshake timeout
    secure.broker.assert_alive()


def test_kafka_python_kcat_and_kafkajs_over_sasl_ssl(secure):
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"sec-{uuid.uuid4().hex[:8]}"
    kp = dict(bootstrap_servers=secure.addr("SASL_SSL"), security_protocol="SASL_SSL",
              ssl_cafile=secure.certs["ca"], sasl_mechanism="SCRAM-SHA-512",
              sasl_plain_username="bob", sasl_plain_password="bob-pw")
    producer = KafkaProducer(**kp)
    for i in range(20):
        producer.send(topic, key=f"k{i}".encode(), value=f"kafka-python-{i}".encode())
    producer.flush(30)
    producer.close()
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10_000, **kp)
    got = [m.value.decode() for m in consumer]
    consumer.close()
    assert got == [f"kafka-python-{i}" for i in range(20)]

    # PLAIN: Debian's kcat links librdkafka 2.0.2, whose SCRAM client-final repeats the
    # client nonce (an RFC 5802 violation any broker refuses).
    kcat_sec = ["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=PLAIN",
                "-X", "sasl.username=alice", "-X", "sasl.password=alice-pw", "-X", f"ssl.ca.location={secure.certs['ca']}"]
    run_kcat("-b", secure.addr("SASL_SSL"), *kcat_sec, "-P", "-t", topic, input="from-kcat-1\nfrom-kcat-2\n")
    r = run_kcat("-b", secure.addr("SASL_SSL"), *kcat_sec, "-C", "-t", topic, "-o", "beginning", "-e", "-q")
    assert r.stdout.splitlines() == got + ["from-kcat-1", "from-kcat-2"]

    results = run_kafkajs(secure.addr("SASL_SSL"), [
        {"op": "produce", "topic": topic, "messages": [{"key": "js", "value": "from-kafkajs"}]},
        {"op": "fetchTopicOffsets", "topic": topic},
    ], ssl={"caFile": secure.certs["ca"]},
        sasl={"mechanism": "scram-sha-256", "username": "alice", "password": "alice-pw"})
    assert "error" not in results[0], results[0]
    offsets = results[1]
    assert "error" not in offsets, offsets
    assert str(offsets["offsets"][0]["high"] if "offsets" in offsets else offsets[0]["high"]) == "23", offsets
    # A wrong KafkaJS password fails at connect.
    with pytest.raises(AssertionError, match="(?i)sasl|authentication"):
        run_kafkajs(secure.addr("SASL_PLAINTEXT"), [{"op": "listTopics"}],
                    sasl={"mechanism": "scram-sha-512", "username": "bob", "password": "nope"})


def test_users_managed_through_the_admin_client_and_the_cli(secure):
    plain = AdminClient(secure.conf("SASL_SSL", "SCRAM-SHA-256"))
    described = plain.describe_user_scram_credentials(["alice", "bob"])
    alice = described["alice"].result(20)
    assert sorted((i.mechanism, i.iterations) for i in alice.scram_credential_infos) == \
        [(ScramMechanism.SCRAM_SHA_256, 4096), (ScramMechanism.SCRAM_SHA_512, 4096)]
    with pytest.raises(KafkaException, match="RESOURCE_NOT_FOUND|does not exist"):
        plain.describe_user_scram_credentials(["nobody"])["nobody"].result(20)

    # Create carol through KIP-554: the client sends a salted password, never the password.
    futures = plain.alter_user_scram_credentials([
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"carol-pw"),
    ])
    futures["carol"].result(20)
    roundtrip(secure.conf("SASL_SSL", "SCRAM-SHA-512", user="carol", password="carol-pw"), n=5)
    roundtrip(secure.conf("SASL_SSL", "PLAIN", user="carol", password="carol-pw"), n=5)
    # Too few iterations are refused.
    with pytest.raises(KafkaException, match="UNACCEPTABLE_CREDENTIAL|Iterations"):
        plain.alter_user_scram_credentials([
            UserScramCredentialUpsertion("dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 100), b"pw"),
        ])["dave"].result(20)
    listed = secure.broker.run_cli("user", "list", "--data-dir", str(secure.broker.data_dir))
    assert listed.returncode == 0, listed.stderr
    rows = [l.split("\t") for l in listed.stdout.splitlines()]
    assert [r[0] for r in rows] == ["alice", "bob", "carol"]
    assert rows[2][1:] == ["SCRAM-SHA-512(iterations=8192)"]

    # Delete carol through the admin client: she can no longer authenticate.
    plain.alter_user_scram_credentials([UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_512)])["carol"].result(20)
    with pytest.raises(KafkaException):
        AdminClient(secure.conf("SASL_SSL", "PLAIN", user="carol", password="carol-pw")).list_topics(timeout=5)
    # And bob through the CLI.
    r = secure.broker.run_cli("user", "delete", "bob", "--data-dir", str(secure.broker.data_dir))
    assert r.returncode == 0 and "1 credential" in r.stdout, r.stdout + r.stderr
    with pytest.raises(KafkaException):
        AdminClient(secure.conf("SASL_SSL", "SCRAM-SHA-512", user="bob", password="bob-pw")).list_topics(timeout=5)
    r = secure.broker.run_cli("user", "delete", "bob", "--data-dir", str(secure.broker.data_dir))
    assert r.returncode != 0 and "no such credential" in r.stderr


def peer_cert_subject(port: int, ca: str) -> str:
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return dict(x[0] for x in t.getpeercert()["subject"])["commonName"]


def test_certificates_reload_on_sighup_and_on_change(secure, tmp_path):
    port = secure.ports["SASL_SSL"]
    assert peer_cert_subject(port, secure.certs["ca"]) == "sluice-test"
    # New files in place: picked up on SIGHUP.
    make_certs(tmp_path / "certs", server_cn="sluice-renewed")
    os.kill(secure.broker.pid, signal.SIGHUP)
    wait_until(lambda: peer_cert_subject(port, secure.certs["ca"]) == "sluice-renewed", 10, what="the renewed certificate")
    # And on a file change alone.
    make_certs(tmp_path / "certs", server_cn="sluice-third")
    wait_until(lambda: peer_cert_subject(port, secure.certs["ca"]) == "sluice-third", 15, what="the changed certificate")
    roundtrip(secure.conf("SASL_SSL", "SCRAM-SHA-256"), n=5)


def test_sessions_reauthenticate_and_expired_ones_close(make_broker, tmp_path):
    s = start_secure(make_broker, tmp_path, "--connections-max-reauth-ms", "1500")
    # librdkafka re-authenticates (KIP-368) before its session ends, without errors.
    conf = s.conf("SASL_SSL", "SCRAM-SHA-256")
    topic = f"reauth-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    errors = []
    p = Producer({**conf, "error_cb": errors.append})
    for i in range(40):  # four seconds: more than two session lifetimes
        p.produce(topic, f"v{i}".encode(), on_delivery=lambda e, m: e and errors.append(e))
        p.poll(0)
        time.sleep(0.1)
    assert p.flush(30) == 0 and not errors, errors
    text = http_get(s.broker.http + "/metrics")[1]
    reauth = [l for l in text.splitlines() if l.startswith("sluice_kafka_sasl_authentications_total") and "reauthenticated" in l]
    assert reauth and sum(float(l.split()[-1]) for l in reauth) >= 1, text[-2000:]
    # A raw client that does not re-authenticate is disconnected at its next request.
    with Wire(s.addr("SASL_PLAINTEXT")) as w:
        assert handshake(w, "PLAIN") == 0
        code, _, lifetime = authenticate(w, b"\0alice\0alice-pw")
        assert (code, lifetime) == (0, 1500)
        time.sleep(1.7)
        w.send_request(API_METADATA, 1, struct.pack(">i", -1))
        assert closed(w)


def mqtt_connack(broker, username: str | None, password: str | None, v5: bool) -> int:
    from mqtt_helpers import Device

    d = Device(broker, f"dev-{uuid.uuid4().hex[:6]}", v5=v5, username=username, password=password, connect=False)
    try:
        d.connect(expect_ok=False)
        return d.connack.value
    finally:
        d.c.loop_stop()
        d.c.disconnect()


def test_mqtt_clients_log_in_as_stored_users(make_broker):
    # An open gateway: stored users must give their password; others connect as before.
    b = make_broker()
    r = b.run_cli("user", "create", "sensor", "--password", "s-pw", "--data-dir", str(b.data_dir))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: mqtt_connack(b, "sensor", "s-pw", v5=False) == 0, 10, what="the new user to take effect")
    # paho reports 3.1.1's return code 4 (bad user name or password) as MQTT 5's 0x86.
    assert mqtt_connack(b, "sensor", "wrong", v5=False) == 0x86
    assert mqtt_connack(b, "sensor", "wrong", v5=True) == 0x86
    assert mqtt_connack(b, "sensor", "s-pw", v5=True) == 0
    assert mqtt_connack(b, "someone", "anything", v5=False) == 0
    # With mqtt.allow-anonymous = false and no mqtt.users, only stored users get in.
    closed_gw = make_broker(env={"SLUICE_MQTT_ALLOW_ANONYMOUS": "false"}, start=False)
    r = closed_gw.run_cli("user", "create", "sensor", "--password", "s-pw", "--data-dir", str(closed_gw.data_dir))
    assert r.returncode == 0, r.stderr
    closed_gw.start()
    assert mqtt_connack(closed_gw, "sensor", "s-pw", v5=True) == 0
    assert mqtt_connack(closed_gw, "someone", "anything", v5=True) == 0x86
    assert mqtt_connack(closed_gw, None, None, v5=False) == 0x86
    # A deleted user is refused within the refresh interval.
    r = closed_gw.run_cli("user", "delete", "sensor", "--data-dir", str(closed_gw.data_dir))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: mqtt_connack(closed_gw, "sensor", "s-pw", v5=True) == 0x86, 10, what="the deletion to take effect")
