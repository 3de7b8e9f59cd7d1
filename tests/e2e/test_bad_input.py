"""Bad input on the Kafka port: malformed frames, unknown APIs and versions,
corrupt or oversized record batches, unknown partitions.

Each must get the error code Apache Kafka would return, or a closed connection,
and never a crash, a hang, or damage to other clients' data. Requests are built
by hand from the documented wire format (https://kafka.apache.org/protocol).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from confluent_kafka import KafkaError, Producer

from conftest import (
    API_FETCH,
    API_INIT_PRODUCER_ID,
    API_LIST_OFFSETS,
    API_METADATA,
    API_PRODUCE,
    Msg,
    Wire,
    build_record_batch,
    consume_confluent,
    create_topic,
    karray,
    kstring,
    produce_confluent,
    watermarks,
)

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47

# The request versions this file encodes by hand; Kafka 4.x still supports all of them.
RAW_VERSIONS = {API_PRODUCE: 7, API_FETCH: 4, API_LIST_OFFSETS: 1, API_METADATA: 4, API_INIT_PRODUCER_ID: 0}


def api_versions_v0(w: Wire) -> tuple[int, dict[int, tuple[int, int]]]:
    r = w.api_versions(0)
    err = r.i16()
    apis = dict(r.array(lambda r: (r.i16(), (r.i16(), r.i16()))))
    assert r.remaining() == 0, f"{r.remaining()} unexpected trailing bytes in ApiVersions v0 response"
    return err, apis


@pytest.fixture
def raw_ok(broker):
    """Checks that the broker supports the request versions this file uses."""
    with Wire(broker.bootstrap) as w:
        err, apis = api_versions_v0(w)
    assert err == NONE
    for key, v in RAW_VERSIONS.items():
        assert key in apis, f"API key {key} not advertised (advertised: {sorted(apis)})"
        lo, hi = apis[key]
        assert lo <= v <= hi, f"API key {key}: version {v} used by this test is outside the advertised range {lo}-{hi}"
    return broker


def assert_round_trip(broker, topic="roundtrip"):
    """A normal client still works: produce and read back with librdkafka."""
    produce_confluent(broker.bootstrap, topic, [Msg(0, b"rt", b"still works %f" % time.time())])
    got = consume_confluent(broker.bootstrap, topic, [0])
    assert got[0] and got[0][-1].key == b"rt"
    broker.assert_alive()


def good_data(broker, topic="precious"):
    """Produce some records whose survival we check after the abuse."""
    create_topic(broker, topic, 2)
    msgs = [Msg(i % 2, b"k%d" % i, b"v%d" % i * 10, (("h", b"%d" % i),)) for i in range(50)]
    acks = produce_confluent(broker.bootstrap, topic, msgs, **{"compression.type": "gzip"})
    return topic, {(p, o): m.content() for m, (p, o) in zip(msgs, acks)}


def assert_data_intact(broker, topic, expected):
    got = consume_confluent(broker.bootstrap, topic, [0, 1])
    actual = {(r.partition, r.offset): r.content() for rs in got.values() for r in rs}
    assert actual == expected


# ---------------------------------------------------------------------------------------
# Malformed frames


GARBAGE = {
    "http-request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",  # length prefix "GET " ~ 1.2 GB
    "negative-length": b"\xde\xad\xbe\xef" + b"\x00" * 32,
    "zero-length-frame": struct.pack(">i", 0),
    "frame-shorter-than-header": struct.pack(">i", 2) + b"\x00\x03",
    "unknown-api-key-ff": struct.pack(">i", 12) + b"\xff" * 12,
    "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00" * 64,
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_closes_connection(broker, name):
    topic, expected = good_data(broker)
    with Wire(broker.bootstrap) as bystander, Wire(broker.bootstrap) as w:
        err, _ = api_versions_v0(bystander)
        assert err == NONE
        w.send_raw(GARBAGE[name])
        assert w.wait_closed(5), f"server kept the connection open after garbage {name!r}"
        # Another connection, opened before, is unaffected.
        err, apis = api_versions_v0(bystander)
        assert err == NONE and API_PRODUCE in apis
    assert_data_intact(broker, topic, expected)
    assert_round_trip(broker)


@pytest.mark.parametrize(
    "name,body",
    [
        # Metadata v1 claiming 2^31-1 topics in a 14-byte frame (found by fuzzing: the
        # protocol crate pre-allocated the claimed count and the broker aborted).
        ("metadata-v1-array", struct.pack(">hhih", API_METADATA, 1, 1, -1) + struct.pack(">i", 0x7FFFFFFF)),
        # Metadata v12 (flexible) with a compact array length of 2^31.
        ("metadata-v12-compact-array", struct.pack(">hhih", API_METADATA, 12, 2, -1) + b"\x00" + b"\x80\x80\x80\x80\x08"),
    ],
)
def test_huge_array_counts_do_not_crash(broker, name, body):
    topic, expected = good_data(broker)
    with Wire(broker.bootstrap) as w:
        w.send_raw(struct.pack(">i", len(body)) + body)
        assert w.wait_closed(5), f"server kept the connection open after {name}"
    broker.assert_alive()
    assert_data_intact(broker, topic, expected)
    assert_round_trip(broker)


def test_huge_length_prefix(broker):
    # Kafka's limit (socket.request.max.bytes) is 100 MiB; all of these are above it.
    rss_before = broker.rss_bytes()
    for size in (0x7FFFFFFF, 0x40000000, 200 * 1024 * 1024):
        with Wire(broker.bootstrap) as w:
            w.send_raw(struct.pack(">i", size) + struct.pack(">hhi", API_METADATA, 4, 1) + b"\x00" * 100)
            # Keep streaming for a while: the server must not buffer towards `size`.
            try:
                chunk = b"\x00" * 65536
                deadline = time.monotonic() + 3
                sent = 0
                while time.monotonic() < deadline and sent < 64 * 1024 * 1024:
                    w.sock.settimeout(1)
                    w.sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass
            assert w.wait_closed(5), f"connection with a {size}-byte frame length was not closed"
    growth = broker.rss_bytes() - rss_before
    assert growth < 150 * 1024 * 1024, f"RSS grew by {growth / 1e6:.0f} MB handling oversized frame lengths"
    assert_round_trip(broker)


def test_truncated_frames_then_close(broker):
    topic, expected = good_data(broker)
    # A Metadata v4 request whose frame promises more bytes than are sent, then EOF.
    header = struct.pack(">hhi", API_METADATA, 4, 7) + kstring("trunc")
    full = header + karray([kstring(topic)]) + b"\x01"
    for cut in (2, 6, len(header), len(full) - 1):
        with Wire(broker.bootstrap) as w:
            w.send_raw(struct.pack(">i", len(full)) + full[:cut])
            w.sock.shutdown(socket.SHUT_WR)
            assert w.wait_closed(5), f"server did not close after EOF in a truncated frame (cut at {cut})"
    # Only a partial length prefix, then EOF.
    with Wire(broker.bootstrap) as w:
        w.send_raw(b"\x00\x00")
    # Many abandoned connections with half a frame each.
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=5)
        s.sendall(struct.pack(">i", 1000) + b"\x00" * 10)
        socks.append(s)
    for s in socks:
        s.close()
    assert_data_intact(broker, topic, expected)
    assert_round_trip(broker)


def test_unknown_api_key_closes_connection(broker):
    for key in (1000, 32767, -5):
        with Wire(broker.bootstrap) as w:
            w.send_request(key, 0, b"")
            assert w.wait_closed(5), f"connection stayed open after unknown API key {key}"
    assert_round_trip(broker)


def test_unsupported_version_of_other_api_closes_connection(broker):
    # Kafka closes the connection on an unsupported version of anything but ApiVersions.
    with Wire(broker.bootstrap) as w:
        w.send_request(API_METADATA, 999, b"\x00\x00\x00\x00\x00")
        assert w.wait_closed(5), "connection stayed open after Metadata v999"
    assert_round_trip(broker)


# ---------------------------------------------------------------------------------------
# ApiVersions (KIP-511)


def test_api_versions_v0_lists_apis(broker):
    with Wire(broker.bootstrap) as w:
        err, apis = api_versions_v0(w)
        assert err == NONE
        # Produce, Fetch, ListOffsets, Metadata, OffsetForLeaderEpoch, ApiVersions, CreateTopics,
        # DeleteTopics, DeleteRecords, InitProducerId, DescribeConfigs, AlterConfigs,
        # DescribeLogDirs, CreatePartitions, IncrementalAlterConfigs, DescribeCluster
        for key in (0, 1, 2, 3, 23, 18, 19, 20, 21, 22, 32, 33, 35, 37, 44, 60):
            assert key in apis, f"API key {key} not advertised; advertised: {sorted(apis)}"
        for key, (lo, hi) in apis.items():
            assert 0 <= lo <= hi, f"API key {key}: bad version range {lo}-{hi}"
        assert apis[18][0] == 0 and apis[18][1] >= 3, f"ApiVersions range {apis[18]}"
        # ApiVersions v1 has the same body plus throttle_time_ms.
        r = w.api_versions(1)
        assert r.i16() == NONE
        apis1 = dict(r.array(lambda r: (r.i16(), (r.i16(), r.i16()))))
        r.i32()
        assert r.remaining() == 0
        assert apis1 == apis


def test_api_versions_unsupported_version_answers_v0_with_error_35(broker):
    for version in (127, 1000):
        with Wire(broker.bootstrap) as w:
            # What a future client sends: header v2 and a flexible (v3+) body.
            r = w.api_versions(version)
            err = r.i16()
            assert err == UNSUPPORTED_VERSION, f"ApiVersions v{version}: error {err}, want 35"
            # The rest is the v0 body: [api_key, min_version, max_version] and nothing else.
            apis = dict(r.array(lambda r: (r.i16(), (r.i16(), r.i16()))))
            assert r.remaining() == 0, f"{r.remaining()} trailing bytes: response is not in v0 format"
            assert 18 in apis, f"ApiVersions' own range must be listed (KIP-511); got {apis}"
            lo, hi = apis[18]
            assert lo == 0 and 3 <= hi < version
            # The connection stays usable: the client retries with a version it now knows.
            err, all_apis = api_versions_v0(w)
            assert err == NONE and API_PRODUCE in all_apis
    assert_round_trip(broker)


# ---------------------------------------------------------------------------------------
# Produce: corrupt, oversized, misaddressed


def corrupt(batch: bytes, pos: int) -> bytes:
    b = bytearray(batch)
    b[pos] ^= 0x5A
    return bytes(b)


def test_produce_corrupt_crc(raw_ok):
    broker = raw_ok
    create_topic(broker, "crc", 1)
    records = [(b"k%d" % i, b"value-%d" % i * 5, [("h", b"x")]) for i in range(3)]
    batch = build_record_batch(records)
    with Wire(broker.bootstrap) as w:
        r = w.produce("crc", 0, batch)
        assert (r["error_code"], r["base_offset"]) == (NONE, 0), r
        # Batch layout: baseOffset(8) batchLength(4) partitionLeaderEpoch(4) magic(1)
        # crc(4) | attributes(2) lastOffsetDelta(4) baseTimestamp(8) ... records
        # (everything after the crc field is covered by it). Flip a byte in the last
        # record's value, in the crc field itself, and in the batch's baseTimestamp.
        for what, bad in (("record value", corrupt(batch, len(batch) - 8)),
                          ("crc field", corrupt(batch, 18)),
                          ("baseTimestamp", corrupt(batch, 30))):
            r = w.produce("crc", 0, bad)
            assert r["error_code"] == CORRUPT_MESSAGE, f"corrupt {what}: {r}, want error 2 (CORRUPT_MESSAGE)"
        r = w.produce("crc", 0, batch)
        assert (r["error_code"], r["base_offset"]) == (NONE, 3), f"corrupt batches must not take offsets: {r}"
    assert watermarks(broker.bootstrap, "crc", [0]) == {0: (0, 6)}
    got = consume_confluent(broker.bootstrap, "crc", [0])
    assert [(r.offset, r.key, r.value, r.headers) for r in got[0]] == [
        (i, k, v, (("h", b"x"),)) for i, (k, v, _) in enumerate(records * 2)
    ]
    assert_round_trip(broker)


def test_produce_over_topic_max_message_bytes(raw_ok):
    broker = raw_ok
    create_topic(broker, "small", 1, {"max.message.bytes": "1000"})
    with Wire(broker.bootstrap) as w:
        r = w.produce("small", 0, build_record_batch([(b"k", b"x" * 5000, [])]))
        assert r["error_code"] == MESSAGE_TOO_LARGE, f"{r}, want error 10 (MESSAGE_TOO_LARGE)"
        r = w.produce("small", 0, build_record_batch([(b"k", b"y" * 500, [])]))
        assert (r["error_code"], r["base_offset"]) == (NONE, 0), r
    # The same through librdkafka: the delivery report carries MSG_SIZE_TOO_LARGE.
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "message.timeout.ms": 10000})
    errs = []
    p.produce("small", value=b"z" * 3000, partition=0, on_delivery=lambda e, m: errs.append(e))
    p.flush(15)
    assert len(errs) == 1 and errs[0] is not None and errs[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errs
    got = consume_confluent(broker.bootstrap, "small", [0])
    assert [(r.offset, r.value) for r in got[0]] == [(0, b"y" * 500)]
    assert_round_trip(broker)


def test_produce_over_broker_max_message_bytes(make_broker):
    broker = make_broker("--max-message-bytes", "2000")
    create_topic(broker, "dflt", 1)
    with Wire(broker.bootstrap) as w:
        r = w.produce("dflt", 0, build_record_batch([(None, b"x" * 3000, [])]))
        assert r["error_code"] == MESSAGE_TOO_LARGE, f"{r}, want error 10 (MESSAGE_TOO_LARGE)"
        r = w.produce("dflt", 0, build_record_batch([(None, b"x" * 1000, [])]))
        assert (r["error_code"], r["base_offset"]) == (NONE, 0), r


def test_requests_for_unknown_partitions(raw_ok):
    broker = raw_ok
    create_topic(broker, "twoparts", 2)
    batch = build_record_batch([(b"k", b"v", [])])
    with Wire(broker.bootstrap) as w:
        r = w.produce("twoparts", 99, batch)
        assert r["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, r
        r = w.produce("twoparts", -1, batch)
        assert r["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, r
        # Kafka never auto-creates on Produce (only on Metadata).
        r = w.produce("never-created", 0, batch)
        assert r["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, r

        # ListOffsets v1 (latest) on a missing partition.
        body = struct.pack(">i", -1) + karray([kstring("twoparts") + karray([struct.pack(">iq", 7, -1)])])
        rd = w.request(API_LIST_OFFSETS, 1, body)
        topics = rd.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
        assert topics[0][1][0][:2] == (7, UNKNOWN_TOPIC_OR_PARTITION), topics

        # Fetch v4 on a missing partition.
        body = struct.pack(">iiiib", -1, 100, 1, 1 << 20, 0) + karray(
            [kstring("twoparts") + karray([struct.pack(">iqi", 5, 0, 1 << 20)])])
        rd = w.request(API_FETCH, 4, body)
        rd.i32()  # throttle
        topics = rd.array(lambda r: (r.string(), r.array(lambda r: (
            r.i32(), r.i16(), r.i64(), r.i64(), r.array(lambda r: (r.i64(), r.i64())), r.bytes_()))))
        assert topics[0][1][0][:2] == (5, UNKNOWN_TOPIC_OR_PARTITION), topics

        # The valid partitions were untouched and still work on the same connection.
        r = w.produce("twoparts", 1, batch)
        assert (r["error_code"], r["base_offset"]) == (NONE, 0), r
    assert watermarks(broker.bootstrap, "twoparts", [0, 1]) == {0: (0, 0), 1: (0, 1)}


# ---------------------------------------------------------------------------------------
# A misbehaving idempotent producer: duplicates, gaps, stale epochs


def test_idempotent_producer_sequence_checks(raw_ok):
    broker = raw_ok
    create_topic(broker, "idem", 1)

    def batch(pid, epoch, seq, n, tag):
        return build_record_batch([(b"%s-%d" % (tag, i), b"v", []) for i in range(n)],
                                  producer_id=pid, producer_epoch=epoch, base_sequence=seq)

    with Wire(broker.bootstrap) as w:
        err, pid, epoch = w.init_producer_id()
        assert err == NONE and pid >= 0 and epoch >= 0, (err, pid, epoch)
        err2, pid2, _ = w.init_producer_id()
        assert err2 == NONE and pid2 != pid, "each InitProducerId without a transactional id needs a new producer id"

        # A producer's first batch on a partition starts at sequence 0: a later one
        # means an earlier batch failed, and accepting it would skip that batch.
        r = w.produce("idem", 0, batch(pid, epoch, 3, 1, b"early"))
        assert r["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, f"first batch after a gap: {r}, want 45"
        first = batch(pid, epoch, 0, 3, b"a")
        r = w.produce("idem", 0, first)
        assert (r["error_code"], r["base_offset"]) == (NONE, 0), r
        # A retry of the same batch is answered with the original offset and not appended.
        r = w.produce("idem", 0, first)
        assert (r["error_code"], r["base_offset"]) == (NONE, 0), f"duplicate batch: {r}"
        # A gap in the sequence (expected 3).
        r = w.produce("idem", 0, batch(pid, epoch, 5, 1, b"gap"))
        assert r["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, f"sequence gap: {r}, want 45"
        second = batch(pid, epoch, 3, 2, b"b")
        r = w.produce("idem", 0, second)
        assert (r["error_code"], r["base_offset"]) == (NONE, 3), r
        # The earlier of the last batches is still recognised as a duplicate.
        r = w.produce("idem", 0, first)
        assert (r["error_code"], r["base_offset"]) == (NONE, 0), f"older duplicate: {r}"
        # A bumped epoch starts again at sequence 0; the old epoch is then fenced.
        third = batch(pid, epoch + 1, 0, 1, b"c")
        r = w.produce("idem", 0, third)
        assert (r["error_code"], r["base_offset"]) == (NONE, 5), f"new epoch: {r}"
        r = w.produce("idem", 0, batch(pid, epoch, 5, 1, b"stale"))
        assert r["error_code"] == INVALID_PRODUCER_EPOCH, f"stale epoch: {r}, want 47"
        # Another producer id is independent.
        r = w.produce("idem", 0, batch(pid2, 0, 0, 1, b"other"))
        assert (r["error_code"], r["base_offset"]) == (NONE, 6), r

    # Producer state survives a restart: the retry of the last batch is still a duplicate,
    # and the next sequence continues.
    broker.restart()
    with Wire(broker.bootstrap) as w:
        r = w.produce("idem", 0, third)
        assert (r["error_code"], r["base_offset"]) == (NONE, 5), f"duplicate after restart: {r}"
        r = w.produce("idem", 0, batch(pid, epoch + 1, 2, 1, b"gap2"))
        assert r["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, f"gap after restart: {r}"
        r = w.produce("idem", 0, batch(pid, epoch + 1, 1, 1, b"d"))
        assert (r["error_code"], r["base_offset"]) == (NONE, 7), r
        _, pid3, _ = w.init_producer_id()
        assert pid3 not in (pid, pid2), "producer ids must not be reused after a restart"

    got = consume_confluent(broker.bootstrap, "idem", [0])
    assert [r.key for r in got[0]] == [b"a-0", b"a-1", b"a-2", b"b-0", b"b-1", b"c-0", b"other-0", b"d-0"]


# ---------------------------------------------------------------------------------------
# Fetch long poll


def test_fetch_long_poll_honours_max_wait_and_min_bytes(raw_ok):
    broker = raw_ok
    create_topic(broker, "poll", 1)
    with Wire(broker.bootstrap) as w:
        # Nothing to read: the broker waits max_wait_ms, then answers empty.
        t0 = time.monotonic()
        r = w.fetch("poll", 0, 0, max_wait_ms=800, min_bytes=1)
        dt = time.monotonic() - t0
        assert r["error_code"] == NONE and not r["records"], r
        assert 0.6 <= dt <= 3.0, f"empty fetch with max_wait_ms=800 returned after {dt:.2f}s"

        # Data arriving during the wait ends it early.
        def produce_later():
            time.sleep(0.4)
            produce_confluent(broker.bootstrap, "poll", [Msg(0, b"late", b"x")])

        th = threading.Thread(target=produce_later)
        th.start()
        t0 = time.monotonic()
        r = w.fetch("poll", 0, 0, max_wait_ms=10000, min_bytes=1)
        dt = time.monotonic() - t0
        th.join()
        assert r["error_code"] == NONE and r["records"] and r["high_watermark"] == 1, r
        assert dt < 5.0, f"fetch waited {dt:.2f}s although data arrived after 0.4s"

        # min_bytes larger than what is there: wait the full max_wait_ms, then return what exists.
        t0 = time.monotonic()
        r = w.fetch("poll", 0, 0, max_wait_ms=700, min_bytes=1 << 20)
        dt = time.monotonic() - t0
        assert r["error_code"] == NONE and r["records"], r
        assert 0.5 <= dt <= 3.0, f"fetch with unmet min_bytes returned after {dt:.2f}s, max_wait_ms=700"

        # Fetching at the high watermark is not an error; past it is OFFSET_OUT_OF_RANGE.
        r = w.fetch("poll", 0, 1, max_wait_ms=0, min_bytes=0)
        assert r["error_code"] == NONE and not r["records"], r
        r = w.fetch("poll", 0, 5, max_wait_ms=0, min_bytes=0)
        assert r["error_code"] == 1, f"fetch past the high watermark: {r}, want 1 (OFFSET_OUT_OF_RANGE)"


# ---------------------------------------------------------------------------------------
# Everything at once, then normal service


def test_abuse_then_normal_service(raw_ok):
    broker = raw_ok
    topic, expected = good_data(broker)
    create_topic(broker, "small2", 1, {"max.message.bytes": "1000"})
    batch = build_record_batch([(b"k", b"v", [])])
    for payload in GARBAGE.values():
        with Wire(broker.bootstrap) as w:
            w.send_raw(payload)
            w.wait_closed(5)
    with Wire(broker.bootstrap) as w:
        w.send_raw(struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 1000)
        w.wait_closed(5)
    with Wire(broker.bootstrap) as w:
        assert w.produce(topic, 0, corrupt(batch, len(batch) - 2))["error_code"] == CORRUPT_MESSAGE
        assert w.produce("small2", 0, build_record_batch([(None, b"x" * 4000, [])]))["error_code"] == MESSAGE_TOO_LARGE
        assert w.produce(topic, 9, batch)["error_code"] == UNKNOWN_TOPIC_OR_PARTITION
        w.send_request(4242, 0, b"")
        w.wait_closed(5)
    with Wire(broker.bootstrap) as w:
        w.send_raw(struct.pack(">i", 50) + b"\x00\x03")
    broker.assert_alive()
    assert_data_intact(broker, topic, expected)
    assert watermarks(broker.bootstrap, topic, [0, 1]) == {0: (0, 25), 1: (0, 25)}
    assert_round_trip(broker)
