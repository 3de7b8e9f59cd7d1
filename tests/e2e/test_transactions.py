"""Transactions and exactly-once, with librdkafka, kafka-python and KafkaJS.

Transactional producers commit and abort across partitions; read_committed
readers (librdkafka, kafka-python, kcat) see exactly the committed records, in
order, and stop at the last stable offset while a transaction is open;
read_uncommitted readers see everything. A second producer with the same
transactional.id fences the first; a transaction open past its timeout is aborted
by the coordinator. A consume-transform-produce worker is SIGKILLed, and the
broker under it is SIGKILLed, and the output still holds each input record exactly
once. A broker killed after deciding a commit but before writing its markers
finishes the commit when it comes back. The admin side (list, describe, producers,
abort of a hanging transaction) is checked with kafka-python's admin client, the
CLI and the REST API; bad requests (unknown ids, stale epochs, wrong states, strays,
fenced group members, a concurrent EndTxn) with kafka-python's protocol classes.
"""

from __future__ import annotations

import json
import threading

import pytest

from conftest import (
    Msg,
    create_topic,
    http_get,
    produce_confluent,
    run_kafkajs,
    run_kcat,
    wait_until,
)
from eos import name, read_all, run_exactly_once, values

def txn_producer(bootstrap: str, txid: str, **extra):
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": bootstrap, "transactional.id": txid, "linger.ms": 5}
    conf.update(extra)
    p = Producer(conf)
    p.init_transactions(30)
    return p


def end_offsets(bootstrap: str, topic: str, partitions: list[int], isolation: str) -> dict[int, int]:
    """ListOffsets(latest) at an isolation level, with kafka-python."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, request_timeout_ms=20000)
    try:
        ends = c.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: o for tp, o in ends.items()}
    finally:
        c.close()


def txn_state(broker, txid: str) -> dict:
    status, body, _ = http_get(f"{broker.http}/api/v1/transactions/{txid}")
    assert status == 200, body
    return json.loads(body)


def test_commit_and_abort_are_seen_per_isolation_level(broker):
    topic = name("txn")
    create_topic(broker, topic, partitions=3)
    p = txn_producer(broker.bootstrap, name("tx"))
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, key=b"k%d" % i, value=b"c1-%d" % i, partition=i % 3)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, key=b"k%d" % i, value=b"ab-%d" % i, partition=i % 3)
    # Sent and acknowledged, then aborted (librdkafka drops what it has not sent yet).
    assert p.flush(30) == 0
    p.abort_transaction(30)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, key=b"k%d" % i, value=b"c2-%d" % i, partition=i % 3)
    p.commit_transaction(30)

    parts = [0, 1, 2]
    committed = {q: [b"c1-%d" % i for i in range(30) if i % 3 == q] + [b"c2-%d" % q] for q in parts}
    everything = {
        q: [b"c1-%d" % i for i in range(30) if i % 3 == q] + [b"ab-%d" % i for i in range(30) if i % 3 == q] + [b"c2-%d" % q]
        for q in parts
    }
    rc = read_all(broker.bootstrap, topic, parts, "read_committed")
    assert values(rc) == committed
    assert values(read_all(broker.bootstrap, topic, parts, "read_uncommitted")) == everything
    # Each partition: 10 + marker, 10 aborted + marker, 1 + marker.
    assert end_offsets(broker.bootstrap, topic, parts, "read_committed") == {q: 24 for q in parts}
    assert end_offsets(broker.bootstrap, topic, parts, "read_uncommitted") == {q: 24 for q in parts}
    # Offsets: markers take one each, so the second committed record of partition 0 is at 22.
    assert rc[0][-1][0] == 22

    # kafka-python, read_committed.
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed",
                      auto_offset_reset="earliest", consumer_timeout_ms=3000, fetch_max_wait_ms=100)
    c.assign([TopicPartition(topic, q) for q in parts])
    got: dict[int, list[bytes]] = {q: [] for q in parts}
    for m in c:
        got[m.partition].append(m.value)
    c.close()
    assert got == committed

    # kcat, read_committed, one partition.
    r = run_kcat("-C", "-b", broker.bootstrap, "-t", topic, "-p", "1", "-o", "beginning", "-e", "-q",
                 "-X", "isolation.level=read_committed", "-f", "%s\n")
    assert r.stdout.split() == [v.decode() for v in committed[1]]

    # The same survives a SIGKILL: the aborted ranges are rebuilt from the journal.
    broker.kill()
    broker.start()
    assert values(read_all(broker.bootstrap, topic, parts, "read_committed")) == committed
    assert values(read_all(broker.bootstrap, topic, parts, "read_uncommitted")) == everything


def test_open_transaction_holds_the_last_stable_offset(broker):
    topic = name("lso")
    create_topic(broker, topic, partitions=1)
    txid = name("tx")
    p = txn_producer(broker.bootstrap, txid)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=b"t%d" % i, partition=0)
    assert p.flush(30) == 0
    # Records written after the open transaction's first one wait for it too.
    produce_confluent(broker.bootstrap, topic, [Msg(0, None, b"plain%d" % i) for i in range(3)])
    assert end_offsets(broker.bootstrap, topic, [0], "read_committed") == {0: 0}
    assert end_offsets(broker.bootstrap, topic, [0], "read_uncommitted") == {0: 8}
    assert values(read_all(broker.bootstrap, topic, [0], "read_committed")) == {0: []}
    assert len(read_all(broker.bootstrap, topic, [0], "read_uncommitted")[0]) == 8
    st = txn_state(broker, txid)
    assert st["state"] == "Ongoing"
    assert st["partitions"] == [{"topic": topic, "partition": 0}]

    # DescribeProducers shows the open transaction's first offset (kafka-python admin).
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        states = admin.describe_producers([TopicPartition(topic, 0)])
        producers = list(states.values())[0].active_producers
        txn_starts = sorted(pr.current_transaction_start_offset for pr in producers)
        assert 0 in txn_starts, producers
        listed = [t for ts in admin.list_transactions().values() for t in ts]
        assert any(t.transactional_id == txid and t.state == "Ongoing" for t in listed), listed
        d = admin.describe_transactions([txid])[txid]
        assert d.state == "Ongoing"
        assert d.topic_partitions == {TopicPartition(topic, 0)}
        assert d.producer_id == st["producer_id"]
    finally:
        admin.close()

    p.commit_transaction(30)
    got = values(read_all(broker.bootstrap, topic, [0], "read_committed"))
    assert got == {0: [b"t%d" % i for i in range(5)] + [b"plain%d" % i for i in range(3)]}
    assert end_offsets(broker.bootstrap, topic, [0], "read_committed") == {0: 9}
    assert txn_state(broker, txid)["state"] == "CompleteCommit"


def test_a_new_instance_fences_the_zombie(broker):
    from confluent_kafka import KafkaException

    topic = name("fence")
    create_topic(broker, topic, partitions=2)
    txid = name("tx")
    zombie = txn_producer(broker.bootstrap, txid)
    zombie.begin_transaction()
    for i in range(4):
        zombie.produce(topic, value=b"zombie%d" % i, partition=i % 2)
    assert zombie.flush(30) == 0
    epoch_before = txn_state(broker, txid)["producer_epoch"]

    fresh = txn_producer(broker.bootstrap, txid)
    # The zombie's open transaction was aborted by the new instance's InitProducerId.
    st = txn_state(broker, txid)
    assert st["state"] in ("Empty", "CompleteAbort")
    assert st["producer_epoch"] > epoch_before + 1
    fresh.begin_transaction()
    for i in range(4):
        fresh.produce(topic, value=b"fresh%d" % i, partition=i % 2)
    fresh.commit_transaction(30)

    with pytest.raises(KafkaException) as err:
        zombie.produce(topic, value=b"late", partition=0)
        zombie.commit_transaction(10)
    assert err.value.args[0].fatal(), err.value
    assert values(read_all(broker.bootstrap, topic, [0, 1], "read_committed")) == {
        0: [b"fresh0", b"fresh2"], 1: [b"fresh1", b"fresh3"],
    }
    everything = values(read_all(broker.bootstrap, topic, [0, 1], "read_uncommitted"))
    assert everything == {0: [b"zombie0", b"zombie2", b"fresh0", b"fresh2"], 1: [b"zombie1", b"zombie3", b"fresh1", b"fresh3"]}


def test_the_coordinator_aborts_a_transaction_past_its_timeout(broker):
    from confluent_kafka import KafkaException

    topic = name("timeout")
    create_topic(broker, topic, partitions=1)
    txid = name("tx")
    p = txn_producer(broker.bootstrap, txid, **{"transaction.timeout.ms": 2000})
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, value=b"slow%d" % i, partition=0)
    assert p.flush(30) == 0
    assert end_offsets(broker.bootstrap, topic, [0], "read_committed") == {0: 0}
    wait_until(lambda: txn_state(broker, txid)["state"] == "CompleteAbort", 20, interval=0.2,
               what="the coordinator aborting the timed-out transaction")
    # The abort marker moved the LSO past the aborted records.
    assert end_offsets(broker.bootstrap, topic, [0], "read_committed") == {0: 4}
    assert values(read_all(broker.bootstrap, topic, [0], "read_committed")) == {0: []}
    with pytest.raises(KafkaException):
        p.commit_transaction(10)
    status, body, _ = http_get(f"{broker.http}/metrics")
    assert 'sluice_txn_ended_total{outcome="timeout"} 1' in body


def test_kafkajs_transactions_with_offsets(broker):
    src, dst = name("jsin"), name("jsout")
    create_topic(broker, src, partitions=1)
    create_topic(broker, dst, partitions=2)
    group = name("jsgroup")
    txid = name("jstx")
    res = run_kafkajs(broker.bootstrap, [
        {"op": "transaction", "transactionalId": txid, "topic": dst, "commit": True,
         "messages": [{"key": "a", "value": "one", "partition": 0}, {"key": "b", "value": "two", "partition": 1}],
         "offsets": {"groupId": group, "topic": src, "partitions": [{"partition": 0, "offset": 7}]}},
        {"op": "transaction", "transactionalId": txid, "topic": dst, "commit": False,
         "messages": [{"key": "c", "value": "never", "partition": 0}],
         "offsets": {"groupId": group, "topic": src, "partitions": [{"partition": 0, "offset": 99}]}},
        {"op": "fetchOffsets", "groupId": group, "topics": [src]},
    ])
    assert [r.get("error") for r in res] == [None, None, None], res
    assert res[0]["committed"] is True and res[1]["committed"] is False
    # The committed transaction's offset applies; the aborted one's is dropped.
    assert [(p["partition"], p["offset"]) for p in res[2]["topics"][0]["partitions"]] == [(0, "7")], res[2]
    assert values(read_all(broker.bootstrap, dst, [0, 1], "read_committed")) == {0: [b"one"], 1: [b"two"]}
    assert values(read_all(broker.bootstrap, dst, [0, 1], "read_uncommitted")) == {0: [b"one", b"never"], 1: [b"two"]}


def test_kafka_python_transactional_producer(broker):
    from kafka import KafkaProducer

    topic = name("kp")
    create_topic(broker, topic, partitions=2)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=name("kptx"), enable_idempotence=True)
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(10):
            p.send(topic, value=b"keep%d" % i, partition=i % 2)
        p.commit_transaction()
        p.begin_transaction()
        for i in range(10):
            p.send(topic, value=b"drop%d" % i, partition=i % 2)
        p.flush()
        p.abort_transaction()
    finally:
        p.close()
    assert values(read_all(broker.bootstrap, topic, [0, 1], "read_committed")) == {
        q: [b"keep%d" % i for i in range(10) if i % 2 == q] for q in (0, 1)
    }
    assert sum(len(v) for v in read_all(broker.bootstrap, topic, [0, 1], "read_uncommitted").values()) == 20


def test_exactly_once_through_worker_kills(broker, tmp_path):
    def kill_worker(w, _txid):
        w.kill()
        return None

    assert run_exactly_once(broker, lambda: broker.bootstrap, kill_worker, tmp_path) >= 4


def test_exactly_once_through_broker_kills(broker, tmp_path):
    def kill_broker(w, _txid):
        broker.kill()
        broker.start()
        return w

    run_exactly_once(broker, lambda: broker.bootstrap, kill_broker, tmp_path)


def test_a_commit_decided_before_a_crash_completes_after_it(make_broker):
    from confluent_kafka import KafkaException

    broker = make_broker(env={"SLUICE_TEST_TXN_MARKER_PAUSE_MS": "4000"})
    topic = name("decided")
    create_topic(broker, topic, partitions=2)
    txid = name("tx")
    p = txn_producer(broker.bootstrap, txid)
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, value=b"d%d" % i, partition=i % 2)
    assert p.flush(30) == 0
    errors = []

    def commit():
        try:
            p.commit_transaction(20)
        except KafkaException as e:
            errors.append(e)

    t = threading.Thread(target=commit)
    t.start()
    wait_until(lambda: txn_state(broker, txid)["state"] == "PrepareCommit", 10, interval=0.05,
               what="the commit being decided")
    broker.kill()
    broker.extra_env.pop("SLUICE_TEST_TXN_MARKER_PAUSE_MS")
    broker.start()
    wait_until(lambda: txn_state(broker, txid)["state"] == "CompleteCommit", 20, interval=0.2,
               what="the restarted coordinator completing the commit")
    assert values(read_all(broker.bootstrap, topic, [0, 1], "read_committed")) == {
        q: [b"d%d" % i for i in range(10) if i % 2 == q] for q in (0, 1)
    }
    t.join(30)
    # librdkafka retried EndTxn against the restarted broker, which answers a finished
    # commit's retry with success.
    assert not errors, errors


def test_acknowledged_transactional_records_survive_a_crash_mid_transaction(broker):
    topic = name("midcrash")
    create_topic(broker, topic, partitions=1)
    p = txn_producer(broker.bootstrap, name("tx"))
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, value=b"before%d" % i, partition=0)
    assert p.flush(30) == 0
    broker.kill()
    broker.start()
    for i in range(10):
        p.produce(topic, value=b"after%d" % i, partition=0)
    p.commit_transaction(60)
    assert values(read_all(broker.bootstrap, topic, [0], "read_committed")) == {
        0: [b"before%d" % i for i in range(10)] + [b"after%d" % i for i in range(10)]
    }


def test_admin_aborts_a_hanging_transaction(broker):
    """A producer that died with a transaction open on a partition its coordinator
    forgot: `sluice transactions abort` ends it, and the LSO moves on."""
    from kafka import TopicPartition
    from kafka.admin import AbortTransactionSpec, KafkaAdminClient

    topic = name("hang")
    create_topic(broker, topic, partitions=2)
    produce_confluent(broker.bootstrap, topic, [Msg(q, None, b"x%d" % i) for q in (0, 1) for i in range(2)])
    txid = name("tx")
    p = txn_producer(broker.bootstrap, txid, **{"transaction.timeout.ms": 900000})
    p.begin_transaction()
    p.produce(topic, value=b"hanging", partition=0)
    p.produce(topic, value=b"hanging", partition=1)
    assert p.flush(30) == 0
    assert end_offsets(broker.bootstrap, topic, [0, 1], "read_committed") == {0: 2, 1: 2}

    r = broker.run_cli("transactions", "--http", broker.http, "list")
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith(txid))
    assert "Ongoing" in line and f"{topic}-0" in line

    r = broker.run_cli("transactions", "--http", broker.http, "abort", "--topic", topic, "--partition", "0",
                       "--start-offset", "1")
    assert r.returncode != 0 and "no open transaction starts at offset 1" in r.stderr, r
    r = broker.run_cli("transactions", "--http", broker.http, "abort", "--topic", topic, "--partition", "0",
                       "--start-offset", "2")
    assert r.returncode == 0, r.stderr
    assert end_offsets(broker.bootstrap, topic, [0], "read_committed") == {0: 4}
    assert values(read_all(broker.bootstrap, topic, [0], "read_committed")) == {0: [b"x0", b"x1"]}

    r = broker.run_cli("transactions", "--http", broker.http, "describe", txid)
    assert r.returncode == 0 and json.loads(r.stdout)["transactional_id"] == txid
    # Partition 1 with kafka-python's admin tooling (DescribeProducers, WriteTxnMarkers).
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        tp = TopicPartition(topic, 1)
        producers = admin.describe_producers([tp])[tp].active_producers
        # The idempotent producer of the plain records, and the transactional one.
        assert sorted(pr.current_transaction_start_offset for pr in producers) == [-1, 2], producers
        [pr] = [pr for pr in producers if pr.current_transaction_start_offset == 2]
        admin.abort_transaction(AbortTransactionSpec(tp, pr.producer_id, pr.producer_epoch))
    finally:
        admin.close()
    assert end_offsets(broker.bootstrap, topic, [0, 1], "read_committed") == {0: 4, 1: 4}
    assert values(read_all(broker.bootstrap, topic, [1], "read_committed")) == {1: [b"x0", b"x1"]}

    status, body, _ = http_get(f"{broker.http}/api/v1/transactions/{name('nope')}")
    assert status == 404 and "not found" in body


def kafka_call(broker, request, response_cls, version: int):
    """One request as kafka-python's protocol classes encode it, on a fresh connection;
    the decoded response."""
    import socket
    import struct

    request.with_header(correlation_id=1, client_id="sluice-e2e")
    data = request.encode(version=version, header=True, framed=True)
    host, port = broker.bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(data)
        size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
        frame = s.recv(size, socket.MSG_WAITALL)
    return response_cls.decode(frame, version=version, header=True)


def test_bad_transactional_requests_get_kafka_errors(make_broker):
    """The errors librdkafka and the Java client act on, and no LSO left stuck."""
    from kafka.protocol.producer.transaction import (
        AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
        EndTxnRequest, EndTxnResponse,
        InitProducerIdRequest, InitProducerIdResponse, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
    )
    from conftest import Wire, build_record_batch

    broker = make_broker(env={"SLUICE_TEST_TXN_MARKER_PAUSE_MS": "1500"})
    topic = name("bad")
    create_topic(broker, topic, partitions=2)
    INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE, INVALID_PRODUCER_ID_MAPPING = 47, 48, 49
    CONCURRENT_TRANSACTIONS, PRODUCER_FENCED = 51, 90
    ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID = 22, 25

    def init(txid):
        r = kafka_call(broker, InitProducerIdRequest(transactional_id=txid, transaction_timeout_ms=60000,
                                                     producer_id=-1, producer_epoch=-1),
                       InitProducerIdResponse, 4)
        assert r.error_code == 0, r
        return r.producer_id, r.producer_epoch

    def end(txid, pid, epoch, commit=True):
        return kafka_call(broker, EndTxnRequest(transactional_id=txid, producer_id=pid, producer_epoch=epoch,
                                                committed=commit), EndTxnResponse, 3).error_code

    def add(txid, pid, epoch, partitions):
        t = AddPartitionsToTxnRequest.AddPartitionsToTxnTopic(name=topic, partitions=partitions)
        r = kafka_call(broker, AddPartitionsToTxnRequest(
            v3_and_below_transactional_id=txid, v3_and_below_producer_id=pid, v3_and_below_producer_epoch=epoch,
            v3_and_below_topics=[t]), AddPartitionsToTxnResponse, 3)
        return {p.partition_index: p.partition_error_code for t in r.results_by_topic_v3_and_below
                for p in t.results_by_partition}

    # EndTxn for an id the coordinator never saw.
    assert end(name("unknown"), 12345, 0) == INVALID_PRODUCER_ID_MAPPING
    # EndTxn with nothing open.
    txid = name("tx")
    pid, epoch = init(txid)
    assert end(txid, pid, epoch) == INVALID_TXN_STATE
    # A stale epoch after a new instance took the id over.
    pid2, epoch2 = init(txid)
    assert (pid2, epoch2) == (pid, epoch + 1)
    assert end(txid, pid, epoch) in (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH)
    assert add(txid, pid, epoch, [0]) in ({0: PRODUCER_FENCED}, {0: INVALID_PRODUCER_EPOCH})

    with Wire(broker.bootstrap) as w:
        # A transactional batch for a partition the transaction never added.
        assert add(txid, pid2, epoch2, [0]) == {0: 0}
        stray = build_record_batch([(b"k", b"stray", [])], producer_id=pid2, producer_epoch=epoch2,
                                   base_sequence=0, transactional=True)
        r = w.produce(topic, 1, stray, transactional_id=txid)
        assert r["error_code"] == INVALID_TXN_STATE, r
        good = build_record_batch([(b"k", b"good", [])], producer_id=pid2, producer_epoch=epoch2,
                                  base_sequence=0, transactional=True)
        assert w.produce(topic, 0, good, transactional_id=txid)["error_code"] == 0

    # TxnOffsetCommit from a member the group does not know, or of a past generation.
    from confluent_kafka import Consumer

    group = name("group")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    wait_until(lambda: c.poll(0.2) is not None or c.assignment(), 30, what="the consumer's assignment")

    def txn_commit(member, generation):
        part = TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic.TxnOffsetCommitRequestPartition(
            partition_index=0, committed_offset=1, committed_leader_epoch=-1, committed_metadata=None)
        t = TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic(name=topic, partitions=[part])
        r = kafka_call(broker, TxnOffsetCommitRequest(
            transactional_id=txid, group_id=group, producer_id=pid2, producer_epoch=epoch2,
            generation_id=generation, member_id=member, group_instance_id=None, topics=[t]),
            TxnOffsetCommitResponse, 3)
        return r.topics[0].partitions[0].error_code

    # Before AddOffsetsToTxn the group is not part of the transaction.
    assert txn_commit(c.memberid(), 1) == INVALID_TXN_STATE
    r = kafka_call(broker, AddOffsetsToTxnRequest(transactional_id=txid, producer_id=pid2, producer_epoch=epoch2,
                                                  group_id=group), AddOffsetsToTxnResponse, 3)
    assert r.error_code == 0, r
    assert txn_commit("not-a-member", 1) == UNKNOWN_MEMBER_ID
    member = c.memberid()
    assert txn_commit(member, 999) == ILLEGAL_GENERATION
    c.close()

    # A second EndTxn while the first is still writing its markers.
    results = {}
    first = threading.Thread(target=lambda: results.update(first=end(txid, pid2, epoch2)))
    first.start()
    wait_until(lambda: txn_state(broker, txid)["state"] == "PrepareCommit", 10, what="PrepareCommit")
    assert end(txid, pid2, epoch2) == CONCURRENT_TRANSACTIONS
    first.join(30)
    assert results["first"] == 0
    # Once it is complete, a retry of the same EndTxn gets the same answer.
    assert end(txid, pid2, epoch2) == 0

    # None of it left the last stable offset behind: the committed record is readable.
    assert end_offsets(broker.bootstrap, topic, [0, 1], "read_committed") == \
        end_offsets(broker.bootstrap, topic, [0, 1], "read_uncommitted")
    assert values(read_all(broker.bootstrap, topic, [0, 1], "read_committed")) == {0: [b"good"], 1: []}
