"""Kafka ACLs (--authorization acl): bindings managed through confluent-kafka's AdminClient,
and every authorization error a client can meet, checked with the clients themselves.

alice and bob log in with SCRAM on SASL_PLAINTEXT; admin is a super user.
"""

from __future__ import annotations

import time
import uuid

import kafka
import kafka.admin
import kafka.errors
import pytest
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition)
from kafka.admin import KafkaAdminClient
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType, AdminClient,
                                   ConfigResource, NewTopic, ResourcePatternType, ResourceType)

from conftest import http_get, wait_until
from test_security import start_secure

ADMIN = [("admin", "admin-pw", "SCRAM-SHA-256")]


@pytest.fixture
def acl_broker(make_broker, tmp_path):
    return start_secure(make_broker, tmp_path, "--authorization", "acl", "--super-users", "User:admin",
                        users=ADMIN)


def conf(s, user: str, **extra) -> dict:
    return s.conf("SASL_PLAINTEXT", "SCRAM-SHA-256" if user != "bob" else "SCRAM-SHA-512", user=user,
                  password=f"{user}-pw", **extra)


def allow(principal, rtype, name, op, pattern=ResourcePatternType.LITERAL, perm=AclPermissionType.ALLOW):
    return AclBinding(rtype, name, pattern, principal, "*", op, perm)


def create_acls(admin: AdminClient, bindings: list) -> None:
    for f in admin.create_acls(bindings).values():
        f.result(30)


def kafka_error(fut) -> int:
    with pytest.raises(KafkaException) as e:
        fut.result(30)
    return e.value.args[0].code()


def produce_errors(c: dict, topic: str, n: int = 3) -> list[int]:
    p = Producer({**c, "message.timeout.ms": 10000})
    codes = []
    for i in range(n):
        p.produce(topic, f"v{i}".encode(), on_delivery=lambda e, m: codes.append(e.code() if e else 0))
    p.flush(20)
    return codes


def consume(c: dict, topic: str, group: str, n: int, timeout: float = 30) -> tuple[list[bytes], list[int]]:
    cons = Consumer({**c, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    cons.subscribe([topic])
    got, errors = [], []
    deadline = time.monotonic() + timeout
    while len(got) < n and not errors and time.monotonic() < deadline:
        m = cons.poll(0.5)
        if m is None:
            continue
        if m.error():
            errors.append(m.error().code())
        else:
            got.append(m.value())
    if got:
        cons.commit(asynchronous=False)
    cons.close()
    return got, errors


def test_acls_are_created_described_and_deleted_through_the_admin_client(acl_broker):
    admin = AdminClient(conf(acl_broker, "admin"))
    bindings = [
        allow("User:alice", ResourceType.TOPIC, "orders", AclOperation.READ),
        allow("User:alice", ResourceType.TOPIC, "logs-", AclOperation.WRITE, ResourcePatternType.PREFIXED),
        allow("User:bob", ResourceType.GROUP, "*", AclOperation.READ),
        allow("User:bob", ResourceType.TOPIC, "orders", AclOperation.ALL, perm=AclPermissionType.DENY),
    ]
    create_acls(admin, bindings)
    create_acls(admin, bindings[:1])  # the same binding again is kept once

    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    listed = admin.describe_acls(everything).result(30)
    assert sorted(map(str, listed)) == sorted(map(str, bindings))

    # MATCH: every binding that applies to the topic logs-app.
    matching = AclBindingFilter(ResourceType.TOPIC, "logs-app", ResourcePatternType.MATCH, None, None,
                                AclOperation.ANY, AclPermissionType.ANY)
    assert list(map(str, admin.describe_acls(matching).result(30))) == [str(bindings[1])]

    bobs = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:bob", None,
                            AclOperation.ANY, AclPermissionType.ANY)
    deleted = admin.delete_acls([bobs])[bobs].result(30)
    assert sorted(map(str, deleted)) == sorted(map(str, bindings[2:]))
    assert sorted(map(str, admin.describe_acls(everything).result(30))) == sorted(map(str, bindings[:2]))

    # Invalid bindings are refused one by one, with Kafka's INVALID_REQUEST.
    bad = AclBinding(ResourceType.BROKER, "not-the-cluster", ResourcePatternType.LITERAL, "User:alice", "*",
                     AclOperation.ALTER, AclPermissionType.ALLOW)
    assert kafka_error(admin.create_acls([bad])[bad]) == KafkaError.INVALID_REQUEST

    # Only a principal with ALTER on the cluster manages ACLs; DESCRIBE on it to list them.
    alice = AdminClient(conf(acl_broker, "alice"))
    grant = allow("User:alice", ResourceType.TOPIC, "*", AclOperation.ALL)
    assert kafka_error(alice.create_acls([grant])[grant]) == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    # librdkafka drops DescribeAcls' top-level error (it returns no bindings); kafka-python raises it.
    assert alice.describe_acls(everything).result(30) == []
    kp = KafkaAdminClient(bootstrap_servers=acl_broker.addr("SASL_PLAINTEXT"), security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="alice", sasl_plain_password="alice-pw")
    any_acl = kafka.admin.ACLFilter(principal=None, host="*", operation=kafka.admin.ACLOperation.ANY,
                                    permission_type=kafka.admin.ACLPermissionType.ANY,
                                    resource_pattern=kafka.admin.ResourcePatternFilter(
                                        kafka.admin.ResourceType.ANY, None, kafka.admin.ACLResourcePatternType.ANY))
    with pytest.raises(kafka.errors.ClusterAuthorizationFailedError):
        kp.describe_acls(any_acl)
    kp.close()
    assert kafka_error(alice.delete_acls([everything])[everything]) == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_every_authorization_error_and_what_a_grant_opens(acl_broker):
    s = acl_broker
    admin = AdminClient(conf(s, "admin"))
    topic, group, txn_id = f"orders-{uuid.uuid4().hex[:6]}", "billing", "billing-tx"
    for t in (topic, "secret"):
        admin.create_topics([NewTopic(t, 1, 1)])[t].result(30)
    assert produce_errors(conf(s, "admin"), "secret", 2) == [0, 0]
    alice = conf(s, "alice")
    alice_admin = AdminClient(alice)

    # With no ACLs at all (allow.everyone.if.no.acl.found=false), alice can do nothing.
    assert set(produce_errors(alice, topic)) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    assert alice_admin.list_topics(timeout=10).topics == {}  # Metadata hides what she may not describe
    named = alice_admin.list_topics(topic, timeout=10).topics[topic]
    assert named.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert kafka_error(alice_admin.create_topics([NewTopic("alice-new", 1, 1)])["alice-new"]) == \
        KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert kafka_error(alice_admin.delete_topics([topic])[topic]) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    res = ConfigResource("topic", topic)
    assert kafka_error(alice_admin.describe_configs([res])[res]) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    described = alice_admin.describe_user_scram_credentials(["alice"])["alice"]
    assert kafka_error(described) == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    p = Producer({**alice, "transactional.id": txn_id})
    with pytest.raises(KafkaException) as e:
        p.init_transactions(20)
    assert e.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED

    # READ on the topic but not on the group: the group refuses her.
    create_acls(admin, [allow("User:alice", ResourceType.TOPIC, topic, AclOperation.READ)])
    got, errors = consume(alice, topic, group, 1, timeout=15)
    assert errors == [KafkaError.GROUP_AUTHORIZATION_FAILED] and got == []

    # Grants: WRITE on topics by prefix, READ on the group, WRITE on the transactional id.
    create_acls(admin, [
        allow("User:alice", ResourceType.TOPIC, "orders-", AclOperation.WRITE, ResourcePatternType.PREFIXED),
        allow("User:alice", ResourceType.GROUP, group, AclOperation.READ),
        allow("User:alice", ResourceType.TRANSACTIONAL_ID, txn_id, AclOperation.WRITE),
    ])
    assert produce_errors(alice, topic, 5) == [0] * 5
    # WRITE implies DESCRIBE, not CREATE: an unknown topic is not auto-created for her.
    assert set(produce_errors(alice, "orders-new", 1)) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    assert list(alice_admin.list_topics(timeout=10).topics) == [topic]  # READ and WRITE imply DESCRIBE
    got, errors = consume(alice, topic, group, 5)
    assert errors == [] and sorted(got) == [f"v{i}".encode() for i in range(5)]
    p = Producer({**alice, "transactional.id": txn_id})
    p.init_transactions(20)
    p.begin_transaction()
    p.produce(topic, b"in-txn")
    p.commit_transaction(20)
    got, errors = consume(alice, topic, group, 1)
    assert errors == [] and got == [b"in-txn"]  # the group resumes after its committed offset

    # bob: an ALLOW for all topics, a DENY on one. DENY wins, for READ only.
    bob = conf(s, "bob")
    create_acls(admin, [
        allow("User:bob", ResourceType.TOPIC, "*", AclOperation.ALL),
        allow("User:bob", ResourceType.GROUP, "bob-", AclOperation.READ, ResourcePatternType.PREFIXED),
        allow("User:bob", ResourceType.TOPIC, "secret", AclOperation.READ, perm=AclPermissionType.DENY),
    ])
    assert produce_errors(bob, "secret", 1) == [0]
    cons = Consumer({**bob, "group.id": "bob-1", "enable.auto.commit": False})
    cons.assign([TopicPartition("secret", 0, OFFSET_BEGINNING)])
    m = wait_until(lambda: cons.poll(0.5), timeout=15)
    assert m.error() and m.error().code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    cons.close()
    got, errors = consume(bob, topic, "bob-2", 6)
    assert errors == [] and len(got) == 6
    # Listing groups shows only those bob may describe.
    bob_admin = AdminClient(bob)  # kept alive until the future completes
    listed = {g.group_id for g in bob_admin.list_consumer_groups().result(30).valid}
    assert "bob-2" in listed and group not in listed

    # Removing alice's WRITE grant closes the topic to her producers again.
    prefixed = AclBindingFilter(ResourceType.TOPIC, "orders-", ResourcePatternType.PREFIXED, "User:alice", None,
                                AclOperation.WRITE, AclPermissionType.ALLOW)
    assert len(admin.delete_acls([prefixed])[prefixed].result(30)) == 1
    assert set(produce_errors(alice, topic)) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}

    # Denials are audited and counted.
    log = s.broker.log()
    assert "authorization denied" in log and "User:alice" in log and "TRANSACTIONAL_ID" in log
    _, metrics, _ = http_get(f"http://127.0.0.1:{s.broker.http_port}/metrics")
    denials = [ln for ln in metrics.splitlines() if ln.startswith("sluice_authorization_denials_total{")]
    assert any('resource_type="TOPIC"' in ln and 'operation="WRITE"' in ln for ln in denials), denials


def test_acls_survive_a_restart_and_super_users_bypass_them(acl_broker):
    s = acl_broker
    admin = AdminClient(conf(s, "admin"))
    admin.create_topics([NewTopic("kept", 1, 1)])["kept"].result(30)
    create_acls(admin, [allow("User:alice", ResourceType.TOPIC, "kept", AclOperation.WRITE)])
    s.broker.kill()
    s.broker.start()
    assert produce_errors(conf(s, "alice"), "kept", 2) == [0, 0]
    assert set(produce_errors(conf(s, "bob"), "kept", 1)) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    assert produce_errors(conf(s, "admin"), "kept", 1) == [0]
