"""End-to-end tests of the client commands: `sluice topic`, `sluice produce`
and `sluice consume`, against the real broker.

The data the CLI writes is checked record by record: in order within each
partition, at the offsets expected, with keys and headers intact, placed by
the Java client's murmur2 partitioner, and readable identically through kcat
(librdkafka), a client nobody here wrote. Everything asserted here would hold
against a real Kafka broker too.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest

from conftest import consume_confluent, run_kcat, wait_until

CLI_TIMEOUT = 60


# ---------------------------------------------------------------------------
# helpers


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as signed int32."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = data[length & ~3 :]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h >= 1 << 31 else h


def java_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_murmur2_reference_vectors():
    # Apache Kafka's UtilsTest.testMurmur2: guards the oracle used below.
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def new_topic(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sluice(broker, *args: str, input: str | bytes | None = None, ok: bool = True,
           timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `sluice ARGS... --bootstrap <broker>`; with ok=True, require exit code 0."""
    argv = [str(broker.bin), *args, "--bootstrap", broker.bootstrap]
    encoding = None if isinstance(input, bytes) else "utf-8"
    r = subprocess.run(argv, input=input, capture_output=True, encoding=encoding, timeout=timeout,
                       env=broker.env())
    if ok and r.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited with {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
        )
    return r


def create(broker, topic: str, partitions: int = 1, *extra: str) -> None:
    sluice(broker, "topic", "create", topic, "--partitions", str(partitions), *extra)


def topic_names(broker) -> list[str]:
    return sluice(broker, "topic", "list").stdout.splitlines()


def describe(broker, topic: str) -> dict:
    """Parse `sluice topic describe` (kafka-topics style) into a dict."""
    out = sluice(broker, "topic", "describe", topic).stdout
    lines = out.splitlines()
    head = dict(f.split(": ", 1) for f in lines[0].split("\t"))
    parts = []
    for line in lines[1:]:
        parts.append(dict(f.split(": ", 1) for f in line.strip("\t").split("\t")))
    configs = {}
    if head.get("Configs"):
        for kv in head["Configs"].split(","):
            k, v = kv.split("=", 1)
            configs[k] = v
    return {"head": head, "partitions": parts, "configs": configs, "raw": out}


def consume(broker, topic: str, *flags: str, fields: int = 0, timeout_ms: int = 15000,
            timeout: float = CLI_TIMEOUT) -> list[list[str]]:
    """Run `sluice consume` and split each output line into `fields` prefix
    fields plus the value (which may itself contain tabs)."""
    r = sluice(broker, "consume", topic, *flags, "--timeout-ms", str(timeout_ms), timeout=timeout)
    assert r.stdout == "" or r.stdout.endswith("\n"), repr(r.stdout[-200:])
    return [line.split("\t", fields) for line in r.stdout.split("\n")[:-1]]


ALL_PRINT = ("--print-partition", "--print-offset", "--print-headers", "--print-key")


def consume_all(broker, topic: str, n: int, *flags: str) -> list[tuple[int, int, str, str, str]]:
    """(partition, offset, headers, key, value) of the first n records from the beginning."""
    rows = consume(broker, topic, "--from-beginning", "--max-messages", str(n), *flags, *ALL_PRINT, fields=4)
    return [(int(p), int(o), h, k, v) for p, o, h, k, v in rows]


def by_partition(rows):
    out: dict[int, list] = {}
    for row in rows:
        out.setdefault(row[0], []).append(row)
    return out


def kcat_read(broker, topic: str) -> list[tuple[int, int, str, str, str]]:
    """Everything in the topic, read with kcat: (partition, offset, headers, key, value)."""
    r = run_kcat("-b", broker.bootstrap, "-C", "-t", topic, "-e", "-q",
                 "-f", "%p\t%o\t%h\t%k\t%s\n")
    rows = []
    for line in r.stdout.split("\n")[:-1]:
        p, o, h, k, v = line.split("\t", 4)
        rows.append((int(p), int(o), h, k, v))
    return rows


def sorted_rows(rows):
    return sorted(rows, key=lambda r: (r[0], r[1]))


# ---------------------------------------------------------------------------
# help


def test_help_describes_every_command_and_flag(sluice_binary):
    def help_of(*args: str) -> str:
        r = subprocess.run([str(sluice_binary), *args, "--help"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    top = help_of()
    for cmd in ("topic", "produce", "consume"):
        assert re.search(rf"^\s+{cmd}\s+\S", top, re.M), f"`sluice --help` does not describe {cmd}:\n{top}"

    expected = {
        ("topic", "create"): ["--partitions", "--replication-factor", "--config", "--bootstrap"],
        ("topic", "list"): ["--bootstrap"],
        ("topic", "describe"): ["--bootstrap"],
        ("topic", "alter"): ["--partitions", "--config", "--delete-config", "--bootstrap"],
        ("topic", "delete"): ["--bootstrap"],
        ("produce",): ["--partition", "--key-separator", "--header", "--acks", "--bootstrap"],
        ("consume",): ["--partition", "--from-beginning", "--offset", "--max-messages", "--timeout-ms",
                       "--print-key", "--print-headers", "--print-offset", "--bootstrap"],
    }
    for cmd, flags in expected.items():
        text = help_of(*cmd)
        lines = text.splitlines()
        for flag in flags:
            idx = next((i for i, line in enumerate(lines) if re.match(rf"^\s+(-\w, )?{flag}\b", line)), None)
            assert idx is not None, f"`sluice {' '.join(cmd)} --help` lacks {flag}:\n{text}"
            # A description follows the flag (and its <VALUE>), on its line or the next.
            rest = re.sub(r"<[^>]*>|\.\.\.|\[[^\]]*\]", "", lines[idx].split(flag, 1)[1]).strip()
            nxt = lines[idx + 1].strip() if idx + 1 < len(lines) else ""
            assert rest or (nxt and not nxt.startswith("-")), \
                f"{flag} of `sluice {' '.join(cmd)}` has no help text:\n{text}"
    assert "SLUICE_BOOTSTRAP" in help_of("produce")


# ---------------------------------------------------------------------------
# topic administration


def test_topic_create_list_describe_delete(broker):
    topic = new_topic()
    other = new_topic()
    r = sluice(broker, "topic", "create", topic, "--partitions", "3", "--replication-factor", "1",
               "--config", "retention.ms=3600000", "--config", "max.message.bytes=2000000")
    assert topic in r.stdout
    create(broker, other, 1)

    names = wait_until(lambda: (n := topic_names(broker)) and topic in n and other in n and n,
                       timeout=10, what="both topics listed")
    assert names == sorted(names), f"topic list is not sorted: {names}"
    assert len(names) == len(set(names))

    d = describe(broker, topic)
    assert d["head"]["Topic"] == topic
    assert d["head"]["PartitionCount"] == "3"
    assert d["head"]["ReplicationFactor"] == "1"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", d["head"]["TopicId"]), d["raw"]
    assert d["head"]["TopicId"] != "00000000-0000-0000-0000-000000000000"
    assert [p["Partition"] for p in d["partitions"]] == ["0", "1", "2"]
    for p in d["partitions"]:
        assert int(p["Leader"]) >= 0, d["raw"]
        assert p["LogStartOffset"] == "0" and p["HighWatermark"] == "0", d["raw"]
    assert d["configs"].get("retention.ms") == "3600000", d["raw"]
    assert d["configs"].get("max.message.bytes") == "2000000", d["raw"]
    # Only configs set on the topic are listed.
    assert set(d["configs"]) == {"retention.ms", "max.message.bytes"}, d["raw"]

    # The high watermark in describe follows produced data.
    sluice(broker, "produce", topic, "--partition", "1", input="a\nb\nc\n")
    d = describe(broker, topic)
    hw = {p["Partition"]: int(p["HighWatermark"]) for p in d["partitions"]}
    assert hw == {"0": 0, "1": 3, "2": 0}, d["raw"]

    sluice(broker, "topic", "delete", topic)
    wait_until(lambda: topic not in topic_names(broker), timeout=15, what="deleted topic to leave the list")
    assert other in topic_names(broker)
    r = sluice(broker, "topic", "describe", topic, ok=False)
    assert r.returncode != 0
    assert "UNKNOWN_TOPIC_OR_PARTITION" in r.stderr, r.stderr


def test_topic_alter_partitions_and_configs(broker):
    topic = new_topic()
    create(broker, topic, 2, "--config", "retention.ms=3600000")
    assert describe(broker, topic)["head"]["PartitionCount"] == "2"

    sluice(broker, "topic", "alter", topic, "--partitions", "5")
    d = wait_until(lambda: (d := describe(broker, topic))["head"]["PartitionCount"] == "5" and d,
                   timeout=10, what="partition count 5")
    assert [p["Partition"] for p in d["partitions"]] == ["0", "1", "2", "3", "4"]

    # New partitions are usable at once, by produce and consume.
    sluice(broker, "produce", topic, "--partition", "4", input="in-new-partition\n")
    rows = consume(broker, topic, "--partition", "4", "--from-beginning", "--max-messages", "1", "--print-offset",
                   fields=1)
    assert rows == [["0", "in-new-partition"]]

    sluice(broker, "topic", "alter", topic, "--config", "retention.bytes=1048576",
           "--config", "retention.ms=7200000")
    cfg = describe(broker, topic)["configs"]
    assert cfg.get("retention.bytes") == "1048576" and cfg.get("retention.ms") == "7200000", cfg

    sluice(broker, "topic", "alter", topic, "--delete-config", "retention.ms")
    cfg = describe(broker, topic)["configs"]
    assert "retention.ms" not in cfg, cfg
    assert cfg.get("retention.bytes") == "1048576", cfg

    # Shrinking is refused, and the topic is left as it was.
    r = sluice(broker, "topic", "alter", topic, "--partitions", "3", ok=False)
    assert r.returncode != 0
    assert "INVALID_PARTITIONS" in r.stderr, r.stderr
    assert describe(broker, topic)["head"]["PartitionCount"] == "5"

    r = sluice(broker, "topic", "alter", topic, ok=False)
    assert r.returncode != 0 and "nothing to alter" in r.stderr


def test_topic_errors_name_the_kafka_error(broker):
    topic = new_topic()
    create(broker, topic, 1)
    r = sluice(broker, "topic", "create", topic, "--partitions", "1", ok=False)
    assert r.returncode != 0
    assert "TOPIC_ALREADY_EXISTS" in r.stderr, r.stderr
    sluice(broker, "topic", "create", topic, "--if-not-exists")

    missing = new_topic("missing")
    r = sluice(broker, "topic", "delete", missing, ok=False)
    assert r.returncode != 0
    assert "UNKNOWN_TOPIC_OR_PARTITION" in r.stderr, r.stderr
    sluice(broker, "topic", "delete", missing, "--if-exists")
    assert missing not in topic_names(broker)

    r = sluice(broker, "topic", "create", "bad/name", "--partitions", "1", ok=False)
    assert r.returncode != 0
    assert "INVALID_TOPIC_EXCEPTION" in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# produce and consume


def test_produce_1000_keyed_records_with_headers_and_read_back(broker):
    topic = new_topic()
    partitions = 3
    create(broker, topic, partitions)
    records = [(f"user-{i % 37}", f"event {i} payload={i * 7}") for i in range(1000)]
    stdin = "".join(f"{k}\t{v}\n" for k, v in records)
    r = sluice(broker, "produce", topic, "--key-separator", "\t",
               "--header", "source=cli-test", "--header", "schema=v1", input=stdin)
    assert r.stdout == "", "produce prints nothing on success"

    rows = consume_all(broker, topic, 1000)
    assert len(rows) == 1000

    # Each key is where the Java client would put it, in produce order, at
    # consecutive offsets from 0.
    expected: dict[int, list[tuple[str, str]]] = {}
    for k, v in records:
        expected.setdefault(java_partition(k.encode(), partitions), []).append((k, v))
    got = by_partition(rows)
    assert set(got) == set(expected)
    for p, exp in expected.items():
        assert [(k, v) for _, _, _, k, v in got[p]] == exp, f"partition {p} differs"
        assert [o for _, o, _, _, _ in got[p]] == list(range(len(exp)))
    assert {h for _, _, h, _, _ in rows} == {"source=cli-test,schema=v1"}

    # kcat (librdkafka) reads exactly the same records.
    assert sorted_rows(kcat_read(broker, topic)) == sorted_rows(rows)

    # And so does confluent-kafka, headers included as bytes.
    conf = consume_confluent(broker.bootstrap, topic, range(partitions))
    for p, recs in conf.items():
        assert [(r.key.decode(), r.value.decode()) for r in recs] == expected[p]
        assert all(r.headers == (("source", b"cli-test"), ("schema", b"v1")) for r in recs)

    # describe agrees on the high watermarks.
    hw = {int(p["Partition"]): int(p["HighWatermark"]) for p in describe(broker, topic)["partitions"]}
    assert hw == {p: len(expected.get(p, [])) for p in range(partitions)}


def test_unkeyed_lines_spread_over_partitions_in_order(broker):
    topic = new_topic()
    create(broker, topic, 3)
    lines = [f"line {i} with\ttab and = sign" for i in range(300)] + ["", "ünïcødé ✓"]
    sluice(broker, "produce", topic, input="".join(line + "\n" for line in lines))
    rows = consume_all(broker, topic, len(lines))
    values = [v for *_, v in rows]
    assert sorted(values) == sorted(lines), "every line is one record, empty and non-ASCII lines included"
    assert all(k == "" for _, _, _, k, _ in rows), "no key without --key-separator"
    for p, recs in by_partition(rows).items():
        vals = [v for *_, v in recs]
        # Within a partition, lines keep their input order.
        assert vals == [line for line in lines if line in set(vals)], f"partition {p} out of order"
        assert [o for _, o, *_ in recs] == list(range(len(recs)))
    assert len(by_partition(rows)) > 1, "unkeyed records should not all land in one partition"
    assert sorted_rows(kcat_read(broker, topic)) == sorted_rows(rows)


def test_consume_from_offset_and_partition(broker):
    topic = new_topic()
    create(broker, topic, 2)
    sluice(broker, "produce", topic, "--partition", "1", input="".join(f"m{i}\n" for i in range(100)))

    rows = consume(broker, topic, "--partition", "1", "--offset", "40", "--max-messages", "10",
                   "--print-offset", fields=1)
    assert rows == [[str(i), f"m{i}"] for i in range(40, 50)]

    # Without --max-messages it reads to the end, then exits after the idle timeout.
    rows = consume(broker, topic, "--partition", "1", "--offset", "95", "--print-offset", fields=1,
                   timeout_ms=1500)
    assert rows == [[str(i), f"m{i}"] for i in range(95, 100)]

    # --offset applies to every partition read; partition 0 is empty.
    rows = consume(broker, topic, "--offset", "98", "--print-partition", "--print-offset", fields=2,
                   timeout_ms=1500)
    assert rows == [["1", "98", "m98"], ["1", "99", "m99"]]

    # Partition 0 on its own has nothing.
    assert consume(broker, topic, "--partition", "0", "--from-beginning", timeout_ms=1000) == []

    r = sluice(broker, "consume", topic, "--partition", "7", "--timeout-ms", "1000", ok=False)
    assert r.returncode != 0 and "partition 7" in r.stderr


def test_consume_defaults_to_new_records_only(broker):
    topic = new_topic()
    create(broker, topic, 2)
    sluice(broker, "produce", topic, input="old-1\nold-2\nold-3\n")
    argv = [str(broker.bin), "consume", topic, "--bootstrap", broker.bootstrap,
            "--max-messages", "4", "--timeout-ms", "20000"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=broker.env())
    try:
        time.sleep(2.0)  # let it look up the end offsets before new data arrives
        sluice(broker, "produce", topic, input="new-1\nnew-2\nnew-3\nnew-4\n")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert sorted(out.splitlines()) == ["new-1", "new-2", "new-3", "new-4"], out


def test_produce_sends_slow_input_without_waiting_for_eof(broker):
    topic = new_topic()
    create(broker, topic, 1)
    argv = [str(broker.bin), "produce", topic, "--bootstrap", broker.bootstrap]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=broker.env())
    try:
        proc.stdin.write("first\n")
        proc.stdin.flush()
        # Still running, stdin open: the line must arrive anyway (linger).
        rows = wait_until(lambda: consume(broker, topic, "--from-beginning", timeout_ms=500),
                          timeout=20, what="the first line to be produced")
        assert rows == [["first"]]
        assert proc.poll() is None
        proc.stdin.write("second\n")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert consume(broker, topic, "--from-beginning", "--max-messages", "2") == [["first"], ["second"]]


def test_consume_exits_after_idle_timeout(broker):
    topic = new_topic()
    create(broker, topic, 1)
    t0 = time.monotonic()
    assert consume(broker, topic, "--from-beginning", timeout_ms=1000) == []
    assert time.monotonic() - t0 < 20


def test_acks_levels(broker):
    topic = new_topic()
    create(broker, topic, 1)
    for acks in ("all", "1", "0"):
        sluice(broker, "produce", topic, "--acks", acks, input="".join(f"{acks}-{i}\n" for i in range(50)))
    expected = [f"{a}-{i}" for a in ("all", "1", "0") for i in range(50)]
    # acks=0 returns before the broker has answered: wait until it is all there.
    rows = wait_until(lambda: (r := consume(broker, topic, "--from-beginning", "--max-messages", "150",
                                            timeout_ms=2000)) and len(r) == 150 and r,
                      timeout=20, what="150 records")
    assert [v for (v,) in rows] == expected


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches(broker, codec):
    topic = new_topic()
    create(broker, topic, 2)
    lines = [f"k{i % 5}|{codec} value {i} " + "x" * (i % 50) for i in range(500)]
    sluice(broker, "produce", topic, "--compression", codec, "--key-separator", "|",
           input="".join(line + "\n" for line in lines))
    rows = consume_all(broker, topic, 500)
    assert sorted((k, v) for *_, k, v in rows) == sorted(tuple(line.split("|", 1)) for line in lines)
    for p, recs in by_partition(rows).items():
        assert [o for _, o, *_ in recs] == list(range(len(recs)))
    assert sorted_rows(kcat_read(broker, topic)) == sorted_rows(rows)


def test_cli_reads_what_kcat_wrote(broker):
    topic = new_topic()
    create(broker, topic, 3)
    lines = [f"kk{i}\tkcat value {i}" for i in range(200)]
    run_kcat("-b", broker.bootstrap, "-P", "-t", topic, "-K", "\t", "-H", "origin=kcat", "-H", "n=1",
             "-X", "partitioner=murmur2_random", input="".join(line + "\n" for line in lines))
    rows = consume_all(broker, topic, 200)
    assert sorted_rows(rows) == sorted_rows(kcat_read(broker, topic))
    assert {h for _, _, h, _, _ in rows} == {"origin=kcat,n=1"}
    for p, recs in by_partition(rows).items():
        exp = [line.split("\t", 1) for line in lines if java_partition(line.split("\t")[0].encode(), 3) == p]
        assert [[k, v] for *_, k, v in recs] == exp


def test_keyed_placement_matches_librdkafka_murmur2(broker):
    """The CLI and kcat's murmur2 partitioner (Java-compatible) agree on every key."""
    ours, theirs = new_topic("ours"), new_topic("kcat")
    create(broker, ours, 6)
    create(broker, theirs, 6)
    keys = [f"device-{i:04d}" for i in range(300)] + ["a", "ab", "abc", "ünï"]
    stdin = "".join(f"{k}:{i}\n" for i, k in enumerate(keys))
    sluice(broker, "produce", ours, "--key-separator", ":", input=stdin)
    run_kcat("-b", broker.bootstrap, "-P", "-t", theirs, "-K", ":", "-X", "partitioner=murmur2_random", input=stdin)
    placed_ours = {k: p for p, _, _, k, _ in consume_all(broker, ours, len(keys))}
    placed_theirs = {k: p for p, _, _, k, _ in consume_all(broker, theirs, len(keys))}
    assert placed_ours == placed_theirs
    assert placed_ours == {k: java_partition(k.encode(), 6) for k in keys}


def test_produce_errors_fail_loudly(broker):
    missing = new_topic("missing")
    r = sluice(broker, "produce", missing, input="x\n", ok=False)
    assert r.returncode != 0
    assert "UNKNOWN_TOPIC_OR_PARTITION" in r.stderr, r.stderr
    assert missing not in topic_names(broker), "produce must not auto-create topics"

    topic = new_topic()
    create(broker, topic, 2)
    r = sluice(broker, "produce", topic, "--partition", "2", input="x\n", ok=False)
    assert r.returncode != 0 and "partition 2" in r.stderr, r.stderr

    # A line without the separator stops the run; the lines before it were produced.
    r = sluice(broker, "produce", topic, "--partition", "0", "--key-separator", ":",
               input="a:1\nb:2\nno separator here\nc:3\n", ok=False)
    assert r.returncode != 0 and "line 3" in r.stderr, r.stderr
    rows = consume(broker, topic, "--partition", "0", "--from-beginning", "--print-key", fields=1,
                   timeout_ms=1500)
    assert rows == [["a", "1"], ["b", "2"]]

    r = sluice(broker, "produce", topic, "--acks", "2", input="x\n", ok=False)
    assert r.returncode != 0


def test_acknowledged_data_survives_restart_and_kill(broker):
    topic = new_topic()
    create(broker, topic, 2)
    first = [f"k{i % 11}\tbefore-restart {i}" for i in range(500)]
    sluice(broker, "produce", topic, "--key-separator", "\t", input="".join(line + "\n" for line in first))
    before = consume_all(broker, topic, 500)

    broker.restart()
    assert consume_all(broker, topic, 500) == before

    second = [f"k{i % 11}\tbefore-kill {i}" for i in range(500)]
    sluice(broker, "produce", topic, "--key-separator", "\t", input="".join(line + "\n" for line in second))
    broker.kill()
    broker.start()

    rows = consume_all(broker, topic, 1000)
    assert len(rows) == 1000
    for p, recs in by_partition(rows).items():
        exp = [line.split("\t", 1) for line in first + second if java_partition(line.split("\t")[0].encode(), 2) == p]
        assert [[k, v] for *_, k, v in recs] == exp, f"partition {p}: lost, duplicated or reordered records"
        assert [o for _, o, *_ in recs] == list(range(len(recs)))
    assert sorted_rows(kcat_read(broker, topic)) == sorted_rows(rows)
