"""Per-topic `compression.type`: `producer` keeps each batch as sent; `uncompressed`,
`gzip`, `snappy`, `lz4` and `zstd` store every batch with that codec, recompressing
what producers send otherwise, as Kafka does. Produced and read back with librdkafka;
the stored codec is read from the batch headers of a raw Fetch."""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import Producer

from conftest import Wire, consume_confluent, create_topic

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def stored_codecs(broker, topic: str) -> list[str]:
    """The codec of every batch of partition 0, in order."""
    with Wire(broker.bootstrap) as w:
        raw = w.fetch(topic, 0, 0, max_wait_ms=100, min_bytes=1)["records"] or b""
    out, pos = [], 0
    while pos + 23 <= len(raw):
        length = struct.unpack_from(">i", raw, pos + 8)[0]
        attributes = struct.unpack_from(">h", raw, pos + 21)[0]
        out.append(CODECS[attributes & 0x7])
        pos += 12 + length
    return out


def produce(broker, topic: str, codec: str, tag: str, n: int = 50) -> None:
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec, "linger.ms": 50,
                  "enable.idempotence": True})
    for i in range(n):
        p.produce(topic, key=f"{tag}-{i}".encode(), value=(f"{tag}-{i}-" + "x" * 200).encode(),
                  headers=[("h", tag.encode())])
    assert p.flush(20) == 0


@pytest.mark.parametrize("topic_codec", ["uncompressed", "gzip", "snappy", "lz4", "zstd"])
def test_the_topic_codec_is_what_is_stored(broker, topic_codec):
    topic = f"codec-{topic_codec}"
    create_topic(broker, topic, config={"compression.type": topic_codec})
    sent = ["none", "gzip", "zstd"] if topic_codec != "gzip" else ["none", "lz4", "gzip"]
    for codec in sent:
        produce(broker, topic, codec, codec)
    want = "none" if topic_codec == "uncompressed" else topic_codec
    codecs = stored_codecs(broker, topic)
    assert codecs and set(codecs) == {want}, codecs
    recs = consume_confluent(broker.bootstrap, topic, [0])[0]
    assert [(r.key, r.value, r.headers) for r in recs] == [
        (f"{c}-{i}".encode(), (f"{c}-{i}-" + "x" * 200).encode(), (("h", c.encode()),))
        for c in sent for i in range(50)]
    assert [r.offset for r in recs] == list(range(150))


def test_producer_keeps_each_batch_as_sent(broker):
    topic = "codec-producer"
    create_topic(broker, topic)
    for codec in ["zstd", "none", "snappy"]:
        produce(broker, topic, codec, codec, n=10)
    codecs = stored_codecs(broker, topic)
    # One or more batches per produce call, each in the producer's codec.
    assert [c for i, c in enumerate(codecs) if i == 0 or codecs[i - 1] != c] == ["zstd", "none", "snappy"]
