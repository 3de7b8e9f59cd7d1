"""End-to-end tests of `sluice group list|describe|delete|reset-offsets|delete-offsets`
against the real broker, with confluent-kafka (librdkafka) as the consumer
group client and its AdminClient as an independent view of committed offsets.

Every figure the CLI prints is checked against what was produced and
committed: lag is exactly produced minus consumed per partition, and each
reset is verified by a fresh group consumer that must start reading at
exactly the expected offsets.

The CLI binary is the broker's `sluice` binary; $SLUICE_GROUP_CLI may point at
another binary with the same `group` subcommand (e.g. the sluice-client
example `sluice-cli`) while the `sluice` binary does not have it yet.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from conftest import Msg, create_topic, produce_confluent, wait_until, watermarks

CLI_TIMEOUT = 60
PARTITION_EOF = -191  # confluent_kafka.KafkaError._PARTITION_EOF
NOT_EMPTY = "group is not empty; stop its consumers first"


@pytest.fixture
def broker(make_broker):
    """A broker whose groups rebalance promptly after the first join."""
    return make_broker("--group-initial-rebalance-delay", "100ms")


# ---------------------------------------------------------------------------
# helpers


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cli_bin(broker) -> str:
    return os.environ.get("SLUICE_GROUP_CLI") or str(broker.bin)


def sluice(broker, *args: str, ok: bool = True, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `sluice ARGS... --bootstrap <broker>`; with ok=True require exit code 0."""
    argv = [cli_bin(broker), *args, "--bootstrap", broker.bootstrap]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=broker.env())
    if ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited with {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def sluice_fails(broker, *args: str) -> subprocess.CompletedProcess:
    r = sluice(broker, *args, ok=False)
    assert r.returncode != 0, f"sluice {' '.join(args)} unexpectedly succeeded:\n{r.stdout}"
    return r


def group_list(broker, *flags: str) -> dict[str, tuple[str, str]]:
    """`sluice group list` -> {group id: (state, protocol type)}."""
    out = {}
    for line in sluice(broker, "group", "list", *flags).stdout.splitlines():
        fields = line.split("\t")
        assert len(fields) == 3, f"expected id, state, protocol type: {line!r}"
        out[fields[0]] = (fields[1], fields[2])
    return out


def parse_table(block: list[str]) -> list[dict[str, str]]:
    head = block[0].split()
    rows = []
    for line in block[1:]:
        cells = line.split()
        assert len(cells) == len(head), f"row {line!r} does not match header {head}"
        rows.append(dict(zip(head, cells)))
    return rows


def describe(broker, group: str) -> dict:
    """Parse `sluice group describe`: the group line, members and offsets."""
    out = sluice(broker, "group", "describe", group).stdout
    blocks = [b.splitlines() for b in out.strip("\n").split("\n\n")]
    assert len(blocks) == 3, f"expected group, members and offsets sections:\n{out}"
    info = parse_table(blocks[0])[0]
    members = [] if "no active members" in blocks[1][0] else parse_table(blocks[1])
    if "no committed offsets" in blocks[2][0]:
        offsets = {}
    else:
        offsets = {(r["TOPIC"], int(r["PARTITION"])): r for r in parse_table(blocks[2])}
    return {"info": info, "members": members, "offsets": offsets, "raw": out}


def plan(stdout: str) -> dict[tuple[str, int], int]:
    """The TOPIC PARTITION NEW-OFFSET table of reset-offsets."""
    return {(r["TOPIC"], int(r["PARTITION"])): int(r["NEW-OFFSET"]) for r in parse_table(stdout.splitlines())}


def committed(broker, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets as confluent-kafka's AdminClient sees them."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)
    got = res[group].result(timeout=20)
    return {(tp.topic, tp.partition): tp.offset for tp in got.topic_partitions if tp.offset >= 0}


def produce_counts(broker, topic: str, counts: dict[int, int], ts: dict[int, list[int]] | None = None) -> None:
    msgs = []
    for p, n in counts.items():
        for i in range(n):
            msgs.append(Msg(p, f"k{p}-{i}".encode(), f"v{p}-{i}".encode(), timestamp=ts[p][i] if ts else None))
    produce_confluent(broker.bootstrap, topic, msgs)


def group_consumer(broker, group: str, **extra):
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": group,
        "client.id": "group-cli-e2e",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "enable.partition.eof": True,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 10000,
    }
    conf.update(extra)
    return Consumer(conf)


def wait_assigned(c, topic: str, partitions: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len([tp for tp in c.assignment() if tp.topic == topic]) < partitions:
        assert time.monotonic() < deadline, f"no full assignment after {timeout}s: {c.assignment()}"
        m = c.poll(0.2)
        if m is not None and m.error() and m.error().code() != PARTITION_EOF:
            raise AssertionError(f"consumer error while joining: {m.error()}")


def consume_and_commit(broker, group: str, topic: str, upto: dict[int, int], timeout: float = 30) -> None:
    """Join `group`, read each partition p at least up to offset upto[p], then
    commit offset upto[p] for every p synchronously, and leave."""
    from confluent_kafka import TopicPartition

    c = group_consumer(broker, group, **{"auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        seen = {p: 0 for p in upto}
        deadline = time.monotonic() + timeout
        while any(seen[p] < n for p, n in upto.items()):
            assert time.monotonic() < deadline, f"consumed only {seen}, wanted {upto}"
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {m.error()}")
            seen[m.partition()] = max(seen[m.partition()], m.offset() + 1)
        res = c.commit(offsets=[TopicPartition(topic, p, n) for p, n in upto.items()], asynchronous=False)
        assert all(tp.error is None for tp in res), res
    finally:
        c.close()


def read_as_group(broker, group: str, topic: str, expect_start: dict[int, int], timeout: float = 30) -> dict[int, list[int]]:
    """Join `group` with a fresh consumer and read every partition to its end.
    Asserts each partition p starts at exactly expect_start[p] and reads the
    contiguous offsets up to the high watermark; commits nothing."""
    ends = {p: hi for p, (_, hi) in watermarks(broker.bootstrap, topic, expect_start).items()}
    c = group_consumer(broker, group)
    got: dict[int, list[int]] = {p: [] for p in expect_start}
    at_end: set[int] = set()
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while at_end != set(expect_start):
            assert time.monotonic() < deadline, f"read {got} (at end: {at_end}), expected starts {expect_start}, ends {ends}"
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == PARTITION_EOF and m.offset() >= ends[m.partition()]:
                    at_end.add(m.partition())
                    continue
                if m.error().code() == PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {m.error()}")
            got[m.partition()].append(m.offset())
    finally:
        c.close()
    for p, start in expect_start.items():
        assert got[p] == list(range(start, ends[p])), f"partition {p}: read {got[p]}, expected {start}..{ends[p]}"
    return got


def wait_state(broker, group: str, state: str, timeout: float = 20) -> None:
    wait_until(lambda: group_list(broker).get(group, ("", ""))[0] == state, timeout,
               what=f"group {group} to be {state} (now {group_list(broker).get(group)})")


def iso_ms(ms: int, tz: timezone = timezone.utc) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------
# tests


def test_list_and_describe_show_exact_lag(broker):
    topic, group = uid("lag"), uid("g")
    create_topic(broker, topic, partitions=3)
    produce_counts(broker, topic, {0: 10, 1: 12, 2: 8})
    consume_and_commit(broker, group, topic, {0: 4, 1: 12, 2: 3})
    assert committed(broker, group) == {(topic, 0): 4, (topic, 1): 12, (topic, 2): 3}

    wait_state(broker, group, "Empty")
    assert group_list(broker)[group] == ("Empty", "consumer")
    assert group in group_list(broker, "--state", "empty")
    assert group not in group_list(broker, "--state", "Stable")
    assert group in group_list(broker, "--state", "Stable,Empty")

    d = describe(broker, group)
    assert d["info"]["GROUP"] == group
    assert d["info"]["STATE"] == "Empty"
    assert d["info"]["PROTOCOL-TYPE"] == "consumer"
    assert d["info"]["MEMBERS"] == "0"
    assert d["members"] == []
    rows = {p: (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"], r["CONSUMER-ID"])
            for (t, p), r in d["offsets"].items() if t == topic}
    # lag = produced - consumed, per partition
    assert rows == {0: ("4", "10", "6", "-"), 1: ("12", "12", "0", "-"), 2: ("3", "8", "5", "-")}, d["raw"]

    # More records raise the lag by exactly that many.
    produce_counts(broker, topic, {2: 5})
    d = describe(broker, group)
    assert d["offsets"][(topic, 2)]["LOG-END-OFFSET"] == "13"
    assert d["offsets"][(topic, 2)]["LAG"] == "10"


def test_active_group_describe_and_refusals(broker):
    topic, group = uid("act"), uid("g")
    create_topic(broker, topic, partitions=3)
    produce_counts(broker, topic, {0: 5, 1: 6, 2: 7})
    from confluent_kafka import TopicPartition

    c = group_consumer(broker, group, **{"auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        wait_assigned(c, topic, 3)
        c.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
        member_id = c.memberid()
        assert member_id

        wait_state(broker, group, "Stable")
        assert group_list(broker, "--state", "Stable")[group] == ("Stable", "consumer")
        assert group not in group_list(broker, "--state", "Empty")

        d = describe(broker, group)
        assert d["info"]["STATE"] == "Stable"
        assert d["info"]["MEMBERS"] == "1"
        assert d["info"]["PROTOCOL"] in ("range", "roundrobin", "cooperative-sticky")
        [m] = d["members"]
        assert m["MEMBER-ID"] == member_id
        assert m["CLIENT-ID"] == "group-cli-e2e"
        assert m["HOST"] != "-"
        assert m["ASSIGNMENT"] == f"{topic}:0,1,2"
        rows = {p: (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"], r["CONSUMER-ID"])
                for (t, p), r in d["offsets"].items() if t == topic}
        assert rows == {
            0: ("2", "5", "3", member_id),
            1: ("-", "6", "-", member_id),
            2: ("-", "7", "-", member_id),
        }, d["raw"]

        # Resetting needs an inactive group: the CLI says so and commits nothing.
        r = sluice_fails(broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest")
        assert NOT_EMPTY in r.stderr, r.stderr
        r = sluice_fails(broker, "group", "reset-offsets", group, "--all-topics", "--to-latest")
        assert NOT_EMPTY in r.stderr, r.stderr
        assert committed(broker, group) == {(topic, 0): 2}
        # A dry run still shows the plan (with a warning).
        r = sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--to-latest", "--dry-run")
        assert plan(r.stdout) == {(topic, 0): 5, (topic, 1): 6, (topic, 2): 7}
        assert NOT_EMPTY in r.stderr
        assert committed(broker, group) == {(topic, 0): 2}

        # Deleting an active group is refused by the broker.
        r = sluice_fails(broker, "group", "delete", group)
        assert "NON_EMPTY_GROUP" in r.stderr, r.stderr
        assert group in group_list(broker)
    finally:
        c.close()

    wait_state(broker, group, "Empty")
    r = sluice(broker, "group", "delete", group)
    assert f"Deleted group {group}." in r.stdout
    assert group not in group_list(broker)
    assert committed(broker, group) == {}
    r = sluice_fails(broker, "group", "describe", group)
    assert "does not exist" in r.stderr, r.stderr
    r = sluice_fails(broker, "group", "delete", group)
    assert "GROUP_ID_NOT_FOUND" in r.stderr, r.stderr


def test_reset_offsets_earliest_latest_offset(broker):
    topic, group = uid("reset"), uid("g")
    create_topic(broker, topic, partitions=3)
    produce_counts(broker, topic, {0: 10, 1: 12, 2: 8})
    consume_and_commit(broker, group, topic, {0: 4, 1: 12, 2: 3})
    before = {(topic, 0): 4, (topic, 1): 12, (topic, 2): 3}
    wait_state(broker, group, "Empty")

    # --dry-run prints the plan and changes nothing.
    r = sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest", "--dry-run")
    assert plan(r.stdout) == {(topic, 0): 0, (topic, 1): 0, (topic, 2): 0}
    assert committed(broker, group) == before

    # Without it, the same table, committed.
    r = sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest")
    assert plan(r.stdout) == {(topic, 0): 0, (topic, 1): 0, (topic, 2): 0}
    assert committed(broker, group) == {(topic, 0): 0, (topic, 1): 0, (topic, 2): 0}
    read_as_group(broker, group, topic, {0: 0, 1: 0, 2: 0})
    wait_state(broker, group, "Empty")

    # --to-latest over the topics the group has offsets for.
    r = sluice(broker, "group", "reset-offsets", group, "--all-topics", "--to-latest")
    assert plan(r.stdout) == {(topic, 0): 10, (topic, 1): 12, (topic, 2): 8}
    assert committed(broker, group) == {(topic, 0): 10, (topic, 1): 12, (topic, 2): 8}
    produce_counts(broker, topic, {0: 2, 1: 2, 2: 2})
    got = read_as_group(broker, group, topic, {0: 10, 1: 12, 2: 8})
    assert {p: len(v) for p, v in got.items()} == {0: 2, 1: 2, 2: 2}
    wait_state(broker, group, "Empty")
    d = describe(broker, group)
    assert {p: r["LAG"] for (t, p), r in d["offsets"].items()} == {0: "2", 1: "2", 2: "2"}

    # --to-offset on some partitions only; the others keep their offsets.
    r = sluice(broker, "group", "reset-offsets", group, "--topic", f"{topic}:0", "--to-offset", "5")
    assert plan(r.stdout) == {(topic, 0): 5}
    assert committed(broker, group) == {(topic, 0): 5, (topic, 1): 12, (topic, 2): 8}
    read_as_group(broker, group, topic, {0: 5, 1: 12, 2: 8})
    wait_state(broker, group, "Empty")

    # Offsets outside the log are clamped to its start and end.
    r = sluice(broker, "group", "reset-offsets", group, "--topic", f"{topic}:1,2", "--to-offset", "1000")
    assert plan(r.stdout) == {(topic, 1): 14, (topic, 2): 10}
    r = sluice(broker, "group", "reset-offsets", group, "--topic", f"{topic}:0", "--to-offset", "-5")
    assert plan(r.stdout) == {(topic, 0): 0}
    assert committed(broker, group) == {(topic, 0): 0, (topic, 1): 14, (topic, 2): 10}
    got = read_as_group(broker, group, topic, {0: 0, 1: 14, 2: 10})
    assert got[1] == [] and got[2] == [] and len(got[0]) == 12

    # Bad partitions and topics are errors, and commit nothing.
    r = sluice_fails(broker, "group", "reset-offsets", group, "--topic", f"{topic}:7", "--to-earliest")
    assert "no partition 7" in r.stderr, r.stderr
    r = sluice_fails(broker, "group", "reset-offsets", group, "--topic", uid("missing"), "--to-earliest")
    assert "UNKNOWN_TOPIC_OR_PARTITION" in r.stderr, r.stderr
    assert committed(broker, group) == {(topic, 0): 0, (topic, 1): 14, (topic, 2): 10}


def test_reset_offsets_to_datetime(broker):
    topic, group = uid("time"), uid("g")
    create_topic(broker, topic, partitions=2)
    base = (int(time.time()) - 3600) * 1000  # an hour ago, well inside retention
    ts = {0: [base + i * 1000 for i in range(10)], 1: [base + i * 1000 + 500 for i in range(10)]}
    produce_counts(broker, topic, {0: 10, 1: 10}, ts=ts)

    # The group does not exist yet: --all-topics has nothing to go by, but
    # naming the topics creates its offsets, as in Kafka.
    r = sluice_fails(broker, "group", "reset-offsets", group, "--all-topics", "--to-earliest")
    assert "has no committed offsets" in r.stderr, r.stderr
    at = base + 4500  # p0: first record at/after is #5 (base+5000); p1: #4 (base+4500)
    r = sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--to-datetime", iso_ms(at).replace("+00:00", "Z"))
    assert plan(r.stdout) == {(topic, 0): 5, (topic, 1): 4}
    assert committed(broker, group) == {(topic, 0): 5, (topic, 1): 4}
    read_as_group(broker, group, topic, {0: 5, 1: 4})
    wait_state(broker, group, "Empty")

    # The same instant written with another zone offset; and one exactly on a record.
    r = sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--dry-run",
               "--to-datetime", iso_ms(at, timezone(timedelta(hours=2))))
    assert plan(r.stdout) == {(topic, 0): 5, (topic, 1): 4}
    r = sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--dry-run",
               "--to-datetime", iso_ms(base + 7000))
    assert plan(r.stdout) == {(topic, 0): 7, (topic, 1): 7}

    # Before every record: the start; after every record: the log end.
    r = sluice(broker, "group", "reset-offsets", group, "--all-topics", "--to-datetime", iso_ms(base - 60_000))
    assert plan(r.stdout) == {(topic, 0): 0, (topic, 1): 0}
    r = sluice(broker, "group", "reset-offsets", group, "--all-topics", "--to-datetime", iso_ms(base + 60_000))
    assert plan(r.stdout) == {(topic, 0): 10, (topic, 1): 10}
    assert committed(broker, group) == {(topic, 0): 10, (topic, 1): 10}
    produce_counts(broker, topic, {0: 1, 1: 3})
    got = read_as_group(broker, group, topic, {0: 10, 1: 10})
    assert {p: len(v) for p, v in got.items()} == {0: 1, 1: 3}

    r = sluice_fails(broker, "group", "reset-offsets", group, "--all-topics", "--to-datetime", "last tuesday")
    assert "invalid date-time" in r.stderr, r.stderr


def test_delete_offsets_and_several_groups(broker):
    topic = uid("del")
    g1, g2 = uid("g"), uid("g")
    create_topic(broker, topic, partitions=2)
    produce_counts(broker, topic, {0: 3, 1: 3})
    consume_and_commit(broker, g1, topic, {0: 1, 1: 2})
    consume_and_commit(broker, g2, topic, {0: 3, 1: 3})

    r = sluice(broker, "group", "delete-offsets", g1, "--topic", f"{topic}:1")
    assert committed(broker, g1) == {(topic, 0): 1}
    d = describe(broker, g1)
    assert list(d["offsets"]) == [(topic, 0)]

    wait_state(broker, g1, "Empty")
    wait_state(broker, g2, "Empty")
    r = sluice(broker, "group", "delete", g1, g2)
    assert f"Deleted group {g1}." in r.stdout and f"Deleted group {g2}." in r.stdout
    listed = group_list(broker)
    assert g1 not in listed and g2 not in listed
    assert committed(broker, g1) == {} and committed(broker, g2) == {}
