"""Partition admin calls that tools use: DescribeTopicPartitions (KIP-966, with its
cursor) through kafka-python's admin client, and ElectLeaders, an honest no-op (each
partition's one replica leads it already), through confluent-kafka's and
kafka-python's; AlterReplicaLogDirs (one log dir: the object store) through kafka-python's."""

from __future__ import annotations

from confluent_kafka import ElectionType, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import create_topic


def test_describe_topic_partitions_pages_with_its_cursor(broker):
    from kafka.admin import KafkaAdminClient

    create_topic(broker, "dtp-a", partitions=3)
    create_topic(broker, "dtp-b", partitions=4)
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        whole = a.describe_topic_partitions(["dtp-b", "dtp-a", "dtp-missing"])
        assert whole["next_cursor"] is None
        by_name = {t["name"]: t for t in whole["topics"]}
        assert sorted(by_name) == ["dtp-a", "dtp-b", "dtp-missing"]
        assert by_name["dtp-missing"]["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION
        for name, n in (("dtp-a", 3), ("dtp-b", 4)):
            t = by_name[name]
            assert t["error_code"] == 0 and not t["is_internal"]
            assert [p["partition_index"] for p in t["partitions"]] == list(range(n))
            for p in t["partitions"]:
                assert p["error_code"] == 0 and p["leader_id"] == 0
                assert p["replica_nodes"] == [0] and p["isr_nodes"] == [0] and p["offline_replicas"] == []
        # Pages of two partitions: every partition once, in order, then no cursor.
        seen, cursor, pages = [], None, 0
        while True:
            page = a.describe_topic_partitions(["dtp-a", "dtp-b"], response_partition_limit=2, cursor=cursor)
            pages += 1
            for t in page["topics"]:
                seen += [(t["name"], p["partition_index"]) for p in t["partitions"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert pages < 10
        assert seen == [("dtp-a", i) for i in range(3)] + [("dtp-b", i) for i in range(4)]
        assert pages == 4

        # kafka-python's elect_leaders: ELECTION_NOT_NEEDED is the answer it expects.
        r = a.elect_leaders(0, {"dtp-a": [0, 1]})
        codes = {(res.topic, p.partition_id): p.error_code
                 for res in r.replica_election_results for p in res.partition_result}
        assert codes == {("dtp-a", 0): 84, ("dtp-a", 1): 84}
    finally:
        a.close()


def test_elect_leaders_answers_that_no_election_is_needed(broker):
    create_topic(broker, "elect", partitions=2)
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    tps = [TopicPartition("elect", 0), TopicPartition("elect", 1), TopicPartition("elect", 7)]
    result = a.elect_leaders(ElectionType.PREFERRED, tps).result(20)
    def code(e):
        if e is None:
            return None
        return (e.args[0] if isinstance(e, Exception) else e).code()

    codes = {(tp.topic, tp.partition): code(e) for tp, e in result.items()}
    assert codes[("elect", 0)] == KafkaError.ELECTION_NOT_NEEDED
    assert codes[("elect", 1)] == KafkaError.ELECTION_NOT_NEEDED
    assert codes[("elect", 7)] == KafkaError.UNKNOWN_TOPIC_OR_PART
    # Without a list: every partition of the cluster is answered.
    everything = a.elect_leaders(ElectionType.PREFERRED, None).result(20)
    assert {(tp.topic, tp.partition) for tp in everything} >= {("elect", 0), ("elect", 1)}


def test_alter_replica_log_dirs_knows_the_one_log_dir(broker):
    from kafka import TopicPartitionReplica
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaStorageError, LogDirNotFoundError, NoError, UnknownTopicOrPartitionError

    create_topic(broker, "dirs", partitions=2)
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        dirs = a.describe_log_dirs()
        paths = {d["log_dir"] for b in dirs for d in b["log_dirs"]}
        assert len(paths) == 1, dirs
        (here,) = paths
        got = a.alter_replica_log_dirs({
            TopicPartitionReplica("dirs", 0, 0): here,
            TopicPartitionReplica("dirs", 1, 0): "/somewhere/else",
            TopicPartitionReplica("dirs", 7, 0): here,
            TopicPartitionReplica("no-such-topic", 0, 0): here,
        })
        by_tp = {(k.topic, k.partition): v for k, v in got.items()}
        assert by_tp == {
            ("dirs", 0): NoError,
            ("dirs", 1): LogDirNotFoundError,
            ("dirs", 7): UnknownTopicOrPartitionError,
            ("no-such-topic", 0): UnknownTopicOrPartitionError,
        }, by_tp
        assert KafkaStorageError not in by_tp.values()
    finally:
        a.close()

