#!/usr/bin/env python3
"""Produce and consume throughput over SASL_SSL (SCRAM-SHA-256) as a ratio of PLAINTEXT, in
the same run on one broker, and the TLS handshake rate (new connections per second).

Starts `sluice serve` ($SLUICE_BIN) with a PLAINTEXT and a SASL_SSL listener and
certificates made by openssl, then for each listener, in the order PLAINTEXT, SASL_SSL,
SASL_SSL, PLAINTEXT (so that neither gains from going second): produces --mb MiB of 1 KiB
records with librdkafka (acks=all, idempotent, lz4 off) into a fresh topic, and consumes
them back. Reports throughput, and the broker's own CPU seconds per GiB (from /proc), which
separates its TLS cost from the client's on a machine they share. Also reports the
machine's fdatasync'd sequential write speed measured in the same run (dd), as the
reference every broker figure is compared with.

    python3 benches/security.py --mb 512
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from test_security import make_certs  # noqa: E402  (the tests' openssl recipe)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dd_reference(d: Path, mb: int = 512) -> float:
    t = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={d / 'dd.bin'}", "bs=1M", f"count={mb}", "conv=fdatasync"],
                   check=True, capture_output=True)
    secs = time.monotonic() - t
    (d / "dd.bin").unlink()
    return mb / secs


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def produce(conf: dict, topic: str, mb: int) -> float:
    p = Producer({**conf, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                  "batch.size": 1 << 20, "queue.buffering.max.kbytes": 1 << 20})
    value = os.urandom(1024)
    n = mb * 1024
    t = time.monotonic()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value, partition=i % 4)
                break
            except BufferError:
                p.poll(0.01)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    return mb / (time.monotonic() - t)


def consume(conf: dict, topic: str, mb: int) -> float:
    c = Consumer({**conf, "group.id": f"bench-{topic}", "enable.auto.commit": False,
                  "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    want, got = mb * 1024, 0
    t = time.monotonic()
    while got < want:
        for m in c.consume(10_000, 1.0):
            if not m.error():
                got += 1
    secs = time.monotonic() - t
    c.close()
    return mb / secs


def handshakes_per_second(port: int, ca: str, seconds: float = 3.0) -> float:
    ctx = ssl.create_default_context(cafile=ca)
    n, t = 0, time.monotonic()
    while time.monotonic() - t < seconds:
        with socket.create_connection(("127.0.0.1", port)) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                n += 1
    return n / (time.monotonic() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    args = ap.parse_args()
    binary = os.environ.get("SLUICE_BIN") or str(Path.home() / ".cache/sluice/target/release/sluice")
    work = Path(tempfile.mkdtemp(prefix="sluice-sec-bench-"))
    certs = make_certs(work / "certs")
    data = work / "data"
    subprocess.run([binary, "user", "create", "bench", "--password", "bench-pw", "--data-dir", str(data)],
                   check=True, capture_output=True)
    plain, secure = free_port(), free_port()
    listen = f"PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure}"
    broker = subprocess.Popen(
        [binary, "serve", "--data-dir", str(data), "--kafka-listen", listen, "--advertise", listen,
         "--http-listen", f"127.0.0.1:{free_port()}", "--registry-listen", f"127.0.0.1:{free_port()}",
         "--mqtt-listen", f"127.0.0.1:{free_port()}", "--tls-cert", certs["cert"], "--tls-key", certs["key"]],
        stdout=subprocess.DEVNULL, stderr=open(work / "broker.log", "w"))
    try:
        confs = {
            "PLAINTEXT": {"bootstrap.servers": f"127.0.0.1:{plain}"},
            "SASL_SSL": {"bootstrap.servers": f"127.0.0.1:{secure}", "security.protocol": "SASL_SSL",
                         "ssl.ca.location": certs["ca"], "sasl.mechanisms": "SCRAM-SHA-256",
                         "sasl.username": "bench", "sasl.password": "bench-pw"},
        }
        time.sleep(1.5)
        result = {"mb": args.mb, "dd_fdatasync_mb_s": round(dd_reference(work), 1)}
        runs: dict[str, list[dict]] = {name: [] for name in confs}
        for i, name in enumerate(["PLAINTEXT", "SASL_SSL", "SASL_SSL", "PLAINTEXT"]):
            conf, topic = confs[name], f"bench-{name.lower()}-{i}"
            admin = AdminClient(conf)
            admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
            cpu = cpu_seconds(broker.pid)
            produced = produce(conf, topic, args.mb)
            produce_cpu = cpu_seconds(broker.pid) - cpu
            cpu = cpu_seconds(broker.pid)
            consumed = consume(conf, topic, args.mb)
            consume_cpu = cpu_seconds(broker.pid) - cpu
            runs[name].append({"produce_mb_s": produced, "consume_mb_s": consumed,
                               "produce_broker_cpu_s_per_gib": produce_cpu * 1024 / args.mb,
                               "consume_broker_cpu_s_per_gib": consume_cpu * 1024 / args.mb})
        for name, rs in runs.items():
            result[name] = {k: round(sum(r[k] for r in rs) / len(rs), 2) for k in rs[0]}
        for k in ("produce_mb_s", "consume_mb_s"):
            result[f"{k.split('_')[0]}_ratio"] = round(result["SASL_SSL"][k] / result["PLAINTEXT"][k], 2)
        result["tls_handshakes_per_s"] = round(handshakes_per_second(secure, certs["ca"]), 1)
        print(json.dumps(result))
    finally:
        broker.kill()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
