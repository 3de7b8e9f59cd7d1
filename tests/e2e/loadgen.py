"""Load generation and exactly-once checks shared by the durability tests:
an idempotent acks=all librdkafka producer writing numbered records, and the
check that every acknowledged record is in the log once, at its offset, in
send order.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

from confluent_kafka import Producer

from conftest import consume_confluent, wait_until, watermarks


class LoadProducer(threading.Thread):
    """Produces key "p-n" / value "record p-n " * repeat round-robin over partitions
    and records each acknowledged (partition, n) -> offset."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: int = 2000, repeat: int = 4, **conf):
        super().__init__(daemon=True, name="load-producer")
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.repeat = repeat
        # (monotonic time, partition) of every acknowledgement, to time failovers.
        self.ack_times: list[tuple[float, int]] = []
        self.stop_flag = threading.Event()
        self.acked: dict[tuple[int, int], int] = {}  # (partition, n) -> offset
        self.failed: dict[tuple[int, int], str] = {}
        self.sent = 0
        self.lock = threading.Lock()
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": 60000,
            "request.timeout.ms": 10000,
            "retry.backoff.ms": 50,
            "retry.backoff.max.ms": 500,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "socket.connection.setup.timeout.ms": 5000,
            "topic.metadata.refresh.interval.ms": 1000,
            **({"debug": os.environ["SLUICE_E2E_RDKAFKA_DEBUG"]} if os.environ.get("SLUICE_E2E_RDKAFKA_DEBUG") else {}),
            **conf,
        })
        self.error: BaseException | None = None

    def _on_delivery(self, part: int, n: int):
        def cb(err, msg):
            with self.lock:
                if err is not None:
                    self.failed[(part, n)] = str(err)
                else:
                    assert msg.partition() == part
                    self.acked[(part, n)] = msg.offset()
                    self.ack_times.append((time.monotonic(), part))
        return cb

    def run(self):
        try:
            seq = [0] * self.partitions
            interval = 1.0 / self.rate
            next_t = time.monotonic()
            while not self.stop_flag.is_set():
                part = self.sent % self.partitions
                n = seq[part]
                try:
                    self.producer.produce(
                        self.topic,
                        key=f"{part}-{n}".encode(),
                        value=self.value(part, n),
                        partition=part,
                        on_delivery=self._on_delivery(part, n),
                    )
                except BufferError:
                    self.producer.poll(0.05)
                    continue
                seq[part] += 1
                self.sent += 1
                self.producer.poll(0)
                next_t += interval
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_t = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def value(self, part: int, n: int) -> bytes:
        return f"record {part}-{n} ".encode() * self.repeat

    def finish(self, timeout: float) -> int:
        self.stop_flag.set()
        self.join(10)
        left = self.producer.flush(timeout)
        # Drop the handle now (the delivery callbacks form a reference cycle with
        # self), so that librdkafka does not keep reconnecting after the test.
        self.producer = None
        return left



def check_exactly_once(bootstrap: str, topic: str, partitions: int, load: LoadProducer):
    """Reads the whole topic back and checks it against the acknowledgements:
    returns (problems found, the records read per partition)."""
    # Right after leaders move, a client's cached metadata may still name the old one.
    wm = wait_until(lambda: watermarks(bootstrap, topic, range(partitions)), 15, interval=0.5, what="watermarks")
    log = consume_confluent(bootstrap, topic, range(partitions), timeout=60)
    problems = []
    for p in range(partitions):
        recs = log[p]
        low, high = wm[p]
        offsets = [r.offset for r in recs]
        if offsets != list(range(low, high)):
            problems.append(f"partition {p}: offsets not dense: {len(offsets)} records for [{low},{high})")
        by_offset = {r.offset: r for r in recs}
        # No duplicates at all: the idempotent producer's retries must be deduplicated.
        dups = {k for k, c in Counter(r.key for r in recs).items() if c > 1}
        if dups:
            problems.append(f"partition {p}: {len(dups)} duplicated keys, e.g. {sorted(dups, key=repr)[:5]}")
        # Every acknowledged record is at its acknowledged offset. librdkafka may confirm a
        # delivery without its offset (offset None); such a record must still be in the log once.
        acked = sorted((n, off) for (pp, n), off in load.acked.items() if pp == p and off is not None)
        keys = {r.key for r in recs}
        unplaced = [n for (pp, n), off in load.acked.items() if pp == p and off is None]
        missing = [(n, None, None) for n in unplaced if f"{p}-{n}".encode() not in keys]
        for n, off in acked:
            r = by_offset.get(off)
            want_key = f"{p}-{n}".encode()
            if r is None or r.key != want_key or r.value != load.value(p, n):
                missing.append((n, off, None if r is None else r.key))
        if missing:
            problems.append(f"partition {p}: {len(missing)} acknowledged records missing or wrong, e.g. {missing[:5]}")
        # Send order is kept: acknowledged offsets increase with the sequence number,
        # and so do all records in the log.
        ack_offsets = [off for _, off in acked]
        if ack_offsets != sorted(ack_offsets) or len(set(ack_offsets)) != len(ack_offsets):
            problems.append(f"partition {p}: acknowledged offsets not increasing with send order")
        seqs = [int(r.key.split(b"-")[1]) for r in recs]
        if seqs != sorted(seqs):
            bad = next(i for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1])
            problems.append(f"partition {p}: log order differs from send order at offset {recs[bad].offset}: "
                            f"{seqs[max(0, bad - 3):bad + 3]}")
    return problems, log
