"""Group lag over REST (/api/v1/groups) and Prometheus (/metrics), checked
against what a librdkafka group consumer committed."""

import json
import re
import uuid

import confluent_kafka as ck
from confluent_kafka import TopicPartition

from conftest import create_topic, http_get


def test_rest_and_metrics_report_lag(make_broker):
    b = make_broker("--group-initial-rebalance-delay", "100ms")
    topic = f"lag-{uuid.uuid4().hex[:6]}"
    create_topic(b, topic, partitions=3)
    produced = {0: 10, 1: 7, 2: 4}
    p = ck.Producer({"bootstrap.servers": b.bootstrap})
    for part, n in produced.items():
        for i in range(n):
            p.produce(topic, value=f"{part}-{i}".encode(), partition=part)
    assert p.flush(20) == 0
    committed = {0: 3, 1: 7, 2: 0}
    group = f"g-{topic}"
    c = ck.Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, part, off) for part, off in committed.items()], asynchronous=False)
    c.close()

    status, body, _ = http_get(f"{b.http}/api/v1/groups")
    assert status == 200
    listed = {g["group_id"]: g for g in json.loads(body)["groups"]}
    expected_lag = {part: produced[part] - committed[part] for part in produced}
    assert listed[group]["total_lag"] == sum(expected_lag.values())
    assert listed[group]["state"] == "Empty"

    status, body, _ = http_get(f"{b.http}/api/v1/groups/{group}")
    assert status == 200
    detail = json.loads(body)
    rows = {o["partition"]: o for o in detail["offsets"] if o["topic"] == topic}
    for part in produced:
        assert rows[part]["committed_offset"] == committed[part]
        assert rows[part]["log_end_offset"] == produced[part]
        assert rows[part]["lag"] == expected_lag[part]

    status, body, _ = http_get(f"{b.http}/api/v1/groups/no-such-group")
    assert status == 404 and "not found" in body

    status, body, _ = http_get(f"{b.http}/metrics")
    assert status == 200
    for part, lag in expected_lag.items():
        pattern = rf'^sluice_group_lag{{[^}}]*group="{re.escape(group)}"[^}}]*partition="{part}"[^}}]*}} {lag}$'
        assert re.search(pattern, body, re.M), f"no sluice_group_lag line for partition {part} = {lag}"
