"""End-to-end test harness for Sluice.

Starts the real `sluice` binary ($SLUICE_BIN, default
$HOME/.cache/sluice/target/release/sluice) on free loopback ports in a
temporary directory, and offers helpers shared by the test modules:

* fixtures ``broker`` (a started broker with default flags) and
  ``make_broker`` (factory: ``make_broker("--auto-create-topics", "false")``);
* ``Broker`` objects with ``.bootstrap``, ``.http``, ``.registry``, ``.mqtt_port``, ``.data_dir``, ``.bin``,
  ``.args``, ``.start()``, ``.stop()``, ``.kill()``, ``.restart()``, ``.log()``;
* client helpers (``consume_confluent``, ``consume_kafka_python``,
  ``run_kcat``, ``run_kafkajs``, ``wait_until``);
* a tiny hand-written Kafka wire codec (``Wire``, ``build_record_batch``) for
  the tests that must send bytes no well-behaved client would send.

Test modules import helpers with ``from conftest import ...`` (pytest puts
this directory on sys.path because tests/e2e is not a package).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pytest

E2E_DIR = Path(__file__).resolve().parent
JS_DIR = E2E_DIR / "js"
DEFAULT_BIN = Path.home() / ".cache" / "sluice" / "target" / "release" / "sluice"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

# Every process we start, so that nothing outlives the test session.
_LIVE_PROCS: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_LIVE_PROCS):
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def sluice_bin() -> Path:
    return Path(os.environ.get("SLUICE_BIN") or DEFAULT_BIN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str, dict]:
    """GET url -> (status, body text, headers). Never raises for HTTP errors. An https://
    URL is fetched without verifying the certificate (the security tests verify it)."""
    req = urllib.request.Request(url, method="GET")
    context = ssl._create_unverified_context() if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode("utf-8", "replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), dict(e.headers or {})


def wait_until(cond: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll cond() until it returns a truthy value; return that value or raise."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# The broker process


class BrokerError(RuntimeError):
    pass


class Broker:
    """One `sluice serve` process with fixed ports and data directory.

    The ports and data directory stay the same across stop()/start(), so a
    restart looks to clients like the same broker coming back.
    """

    def __init__(self, bin: Path, workdir: Path, extra_args: Iterable[str] = (), name: str = "broker",
                 node_id: int = 0, extra_env: dict | None = None):
        self.bin = Path(bin)
        self.node_id = node_id
        self.extra_env = dict(extra_env or {})
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.kafka_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.kafka_port:
            self.http_port = free_port()
        self.registry_port = free_port()
        while self.registry_port in (self.kafka_port, self.http_port):
            self.registry_port = free_port()
        self.mqtt_port = free_port()
        while self.mqtt_port in (self.kafka_port, self.http_port, self.registry_port):
            self.mqtt_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.kafka_port}"
        # Schema registry REST API (Confluent-compatible).
        self.registry = f"http://127.0.0.1:{self.registry_port}"
        self.extra_args = [str(a) for a in extra_args]
        # Full argument list after the binary name.
        self.args = [
            "serve",
            "--data-dir", str(self.data_dir),
            "--kafka-listen", self.bootstrap,
            "--advertise", self.bootstrap,
            "--http-listen", f"127.0.0.1:{self.http_port}",
            "--registry-listen", f"127.0.0.1:{self.registry_port}",
            "--mqtt-listen", f"127.0.0.1:{self.mqtt_port}",
            "--node-id", str(node_id),
            *self.extra_args,
        ]
        self.stdout_path = self.workdir / f"{name}.stdout.log"
        self.stderr_path = self.workdir / f"{name}.stderr.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # Set when the process is found dead without us having stopped it.
        self.unexpected_exit: int | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def http(self) -> str:
        """The REST/metrics base URL, https:// when --http-listen says so."""
        i = self.args.index("--http-listen") if "--http-listen" in self.args else -1
        tls = i >= 0 and self.args[i + 1].startswith("https://")
        return f"{'https' if tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")  # plain logs in the captured files
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = START_TIMEOUT) -> "Broker":
        if self.running():
            raise BrokerError(f"{self.name} already running (pid {self.proc.pid})")
        if not self.bin.exists():
            raise BrokerError(f"sluice binary not found at {self.bin} (set SLUICE_BIN)")
        self.starts += 1
        marker = f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')}: {self.bin} {' '.join(self.args)}\n"
        out = open(self.stdout_path, "a", buffering=1)
        err = open(self.stderr_path, "a", buffering=1)
        out.write(marker)
        err.write(marker)
        try:
            self.proc = subprocess.Popen(
                [str(self.bin), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env(),
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            out.close()
            err.close()
        _LIVE_PROCS.add(self.proc)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health_ok = kafka_ok = False
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"{self.name} exited with code {self.proc.returncode} during startup\n{self.log(tail=6000)}"
                )
            if not health_ok:
                try:
                    status, body, _ = http_get(self.http + "/health", timeout=1.0)
                    health_ok = status == 200
                    last = f"/health -> {status} {body[:200]!r}"
                except OSError as e:
                    last = f"/health -> {e!r}"
            if health_ok and not kafka_ok:
                try:
                    with socket.create_connection(("127.0.0.1", self.kafka_port), timeout=1.0):
                        kafka_ok = True
                except OSError as e:
                    last = f"kafka port -> {e!r}"
            if health_ok and kafka_ok:
                return
            time.sleep(0.05)
        self.kill()
        raise BrokerError(f"{self.name} not ready after {timeout}s (last: {last})\n{self.log(tail=6000)}")

    def _reap(self, sig: int, timeout: float) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._note(f"did not exit within {timeout}s of signal {sig}; sending SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout=10)
        rc = self.proc.returncode
        _LIVE_PROCS.discard(self.proc)
        return rc

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; returns the exit code (SIGKILL after timeout)."""
        self.check_alive()
        rc = self._reap(signal.SIGTERM, timeout)
        self._note(f"stopped (SIGTERM), exit code {rc}")
        return rc

    def kill(self) -> int | None:
        """SIGKILL and wait."""
        rc = self._reap(signal.SIGKILL, 10)
        self._note(f"killed (SIGKILL), exit code {rc}")
        return rc

    def restart(self, timeout: float = START_TIMEOUT) -> "Broker":
        self.stop()
        return self.start(timeout)

    def check_alive(self) -> None:
        """Record (and raise) if the process died on its own."""
        if self.proc is not None and self.proc.poll() is not None and self.proc in _LIVE_PROCS:
            self.unexpected_exit = self.proc.returncode
            _LIVE_PROCS.discard(self.proc)
            raise BrokerError(
                f"{self.name} died unexpectedly with exit code {self.proc.returncode}\n{self.log(tail=6000)}"
            )

    def assert_alive(self) -> None:
        """Assert the process is running and /health answers 200."""
        self.check_alive()
        assert self.running(), f"{self.name} is not running"
        status, body, _ = http_get(self.http + "/health")
        assert status == 200, f"/health returned {status}: {body[:200]}"

    def _note(self, msg: str) -> None:
        with open(self.stderr_path, "a") as f:
            f.write(f"\n===== {time.strftime('%H:%M:%S')} harness: {msg}\n")

    # -- output ------------------------------------------------------------

    def log(self, tail: int | None = None) -> str:
        """Captured stdout and stderr of every run so far (optionally the last `tail` chars of each)."""

        def read(p: Path) -> str:
            try:
                t = p.read_text(errors="replace")
            except FileNotFoundError:
                return ""
            return t[-tail:] if tail else t

        return f"--- {self.name} stdout ({self.stdout_path}) ---\n{read(self.stdout_path)}\n" \
               f"--- {self.name} stderr ({self.stderr_path}) ---\n{read(self.stderr_path)}"

    def panics(self) -> list[str]:
        text = self.log()
        return [line for line in text.splitlines() if "panicked at" in line]

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def run_cli(self, *args: str, timeout: float = 60, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
        """Run `sluice ARGS...` (another subcommand) with this broker's environment."""
        return subprocess.run(
            [str(self.bin), *args], input=input, capture_output=True, text=True,
            timeout=timeout, env=self.env(), check=check,
        )

    def __repr__(self) -> str:
        return f"<Broker {self.name} kafka={self.bootstrap} http={self.http} pid={self.pid}>"


@pytest.fixture(scope="session")
def sluice_binary() -> Path:
    b = sluice_bin()
    if not b.exists():
        pytest.fail(f"sluice binary not found at {b}: build it (cargo build --release) or set SLUICE_BIN", pytrace=False)
    return b


@pytest.fixture
def make_broker(request, sluice_binary, tmp_path):
    """Factory: make_broker(*extra_args, start=True, name=None) -> Broker."""
    brokers: list[Broker] = []
    request.node._sluice_brokers = brokers

    def factory(*extra_args: str, start: bool = True, name: str | None = None, node_id: int = 0,
                env: dict | None = None) -> Broker:
        name = name or f"broker{len(brokers)}"
        b = Broker(sluice_binary, tmp_path / name, extra_args, name=name, node_id=node_id, extra_env=env)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield factory

    problems = []
    for b in brokers:
        if b.proc is not None and b.proc.poll() is not None and b.proc in _LIVE_PROCS:
            problems.append(f"{b.name} died during the test with exit code {b.proc.returncode}")
            _LIVE_PROCS.discard(b.proc)
        b.kill()
        panics = b.panics()
        if panics:
            problems.append(f"{b.name} panicked: " + " | ".join(panics[:5]))
    if problems:
        pytest.fail("broker problems at teardown:\n" + "\n".join(problems) + "\n" + "\n".join(b.log(tail=4000) for b in brokers), pytrace=False)


@pytest.fixture
def broker(make_broker) -> Broker:
    """A started broker with default settings."""
    return make_broker()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for b in getattr(item, "_sluice_brokers", []):
            report.sections.append((f"sluice {b.name} log (tail)", b.log(tail=8000)))


# --------------------------------------------------------------------------------------
# Records and client helpers


@dataclass(frozen=True)
class Rec:
    """One consumed record, in a client-neutral shape."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()  # tuple of (str, bytes | None)
    timestamp: int | None = None

    def content(self):
        return (self.key, self.value, tuple(self.headers))


def _norm_headers(h) -> tuple:
    if not h:
        return ()
    out = []
    for k, v in h:
        if isinstance(k, bytes):
            k = k.decode()
        if isinstance(v, str):
            v = v.encode()
        out.append((k, v))
    return tuple(out)


class ConsumeError(AssertionError):
    def __init__(self, msg, error=None):
        super().__init__(msg)
        self.error = error


def confluent_consumer(bootstrap: str, **extra):
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": bootstrap,
        # confluent-kafka-python insists on a group.id even for assign()-only
        # use; we never subscribe() or commit, so no group is ever joined.
        "group.id": "sluice-e2e-assign-only",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 10000,
        "topic.metadata.refresh.interval.ms": 5000,
    }
    conf.update(extra)
    return Consumer(conf)


def create_topic(broker: "Broker", name: str, partitions: int = 1, config: dict | None = None) -> None:
    """Create a topic with confluent-kafka's AdminClient; raise on failure."""
    from confluent_kafka.admin import AdminClient, NewTopic

    # Keep the client referenced until the future resolves (its handle dies with it).
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    fs = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10, request_timeout=15,
    )
    fs[name].result(timeout=20)


def watermarks(bootstrap: str, topic: str, partitions: Iterable[int], timeout: float = 10) -> dict[int, tuple[int, int]]:
    from confluent_kafka import TopicPartition

    c = confluent_consumer(bootstrap)
    try:
        return {p: tuple(c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)) for p in partitions}
    finally:
        c.close()


def topic_partitions(bootstrap: str, topic: str, timeout: float = 10) -> list[int]:
    from confluent_kafka.admin import AdminClient

    a = AdminClient({"bootstrap.servers": bootstrap})
    md = a.list_topics(timeout=timeout)
    t = md.topics.get(topic)
    assert t is not None, f"topic {topic!r} not in metadata (topics: {sorted(md.topics)})"
    assert t.error is None, f"topic {topic!r} metadata error {t.error}"
    return sorted(t.partitions)


def consume_confluent(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int] | None = None,
    start: dict[int, int] | int | None = None,
    end: dict[int, int] | None = None,
    timeout: float = 30,
    **conf,
) -> dict[int, list[Rec]]:
    """Read [start, end) of each partition with confluent-kafka's assign().

    start defaults to each partition's low watermark, end to its high
    watermark (read at call time). Raises ConsumeError on partition errors.
    """
    from confluent_kafka import KafkaError, TopicPartition

    if partitions is None:
        partitions = topic_partitions(bootstrap, topic)
    partitions = list(partitions)
    c = confluent_consumer(bootstrap, **conf)
    out: dict[int, list[Rec]] = {p: [] for p in partitions}
    try:
        # librdkafka does not retry this query when leadership has just moved
        # (NOT_LEADER_OR_FOLLOWER); a Java consumer would, so retry here.
        wm = wait_until(
            lambda: {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False) for p in partitions},
            20, interval=0.5, what=f"watermarks of {topic}",
        )
        starts = {}
        for p in partitions:
            if isinstance(start, dict):
                starts[p] = start.get(p, wm[p][0])
            elif isinstance(start, int):
                starts[p] = start
            else:
                starts[p] = wm[p][0]
        ends = {p: (end[p] if end and p in end else wm[p][1]) for p in partitions}
        pos = dict(starts)
        todo = [p for p in partitions if pos[p] < ends[p]]
        if not todo:
            return out
        c.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in todo):
            if time.monotonic() > deadline:
                raise ConsumeError(
                    f"timed out reading {topic}: positions {pos}, targets {ends}, watermarks {wm}"
                )
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                err = m.error()
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                    raise ConsumeError(f"consume error on {m.topic()}[{m.partition()}]: {err}", err)
                if m.topic() is None and not err.fatal():
                    # Client-level (not partition) error, e.g. the consumer
                    # group coordinator lookup; irrelevant for assign().
                    continue
                raise ConsumeError(f"consume error on {m.topic()}[{m.partition()}]: {err}", err)
            p = m.partition()
            if m.offset() >= ends[p]:
                continue
            ts_type, ts = m.timestamp()
            out[p].append(Rec(p, m.offset(), m.key(), m.value(), _norm_headers(m.headers()), ts))
            pos[p] = m.offset() + 1
    finally:
        c.close()
    return out


def consume_kafka_python(
    bootstrap: str, topic: str, partitions: Iterable[int], start: dict[int, int] | None = None, timeout: float = 30
) -> dict[int, list[Rec]]:
    """Read each partition from start (default: beginning) to its end offset with kafka-python."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=20000,
        fetch_max_wait_ms=100,
    )
    out: dict[int, list[Rec]] = {p: [] for p in partitions}
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        c.assign(tps)
        ends = c.end_offsets(tps)
        begins = c.beginning_offsets(tps)
        pos = {}
        for tp in tps:
            s = (start or {}).get(tp.partition, begins[tp])
            c.seek(tp, s)
            pos[tp.partition] = s
        deadline = time.monotonic() + timeout
        while any(pos[tp.partition] < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise ConsumeError(f"kafka-python timed out reading {topic}: positions {pos}, ends {ends}")
            batch = c.poll(timeout_ms=200)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset >= ends[tp]:
                        continue
                    out[tp.partition].append(
                        Rec(tp.partition, m.offset, m.key, m.value, _norm_headers(m.headers), m.timestamp)
                    )
                    pos[tp.partition] = m.offset + 1
    finally:
        c.close()
    return out


def run_kcat(*args: str, input: str | bytes | None = None, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if not kcat:
        pytest.fail("kcat not installed (scripts/test.sh installs it)", pytrace=False)
    text = not isinstance(input, bytes)
    r = subprocess.run([kcat, *args], input=input, capture_output=True, text=text, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"kcat {' '.join(args)} failed with {r.returncode}:\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def run_kafkajs(bootstrap: str, steps: list[dict], timeout: float = 90, **security) -> list[dict]:
    """Run tests/e2e/js/kafkajs_client.js with the given steps; return per-step results.

    ``security`` may hold ``ssl={"caFile": path}`` and ``sasl={"mechanism", "username", "password"}``."""
    node = shutil.which("node")
    if not node:
        pytest.fail("node not installed", pytrace=False)
    if not (JS_DIR / "node_modules" / "kafkajs").exists():
        pytest.fail("kafkajs not installed: run `npm ci` in tests/e2e/js (scripts/test.sh does)", pytrace=False)
    r = subprocess.run(
        [node, str(JS_DIR / "kafkajs_client.js")],
        input=json.dumps({"bootstrap": bootstrap, "steps": steps, **security}),
        capture_output=True, text=True, timeout=timeout, cwd=JS_DIR,
    )
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        raise AssertionError(f"kafkajs_client failed ({r.returncode}):\nstdout: {r.stdout}\nstderr: {r.stderr[-4000:]}")
    doc = json.loads(lines[-1])
    if "fatal" in doc:
        raise AssertionError(f"kafkajs_client fatal error {doc['fatal']}\nstderr: {r.stderr[-4000:]}")
    return doc["results"]


# --------------------------------------------------------------------------------------
# Minimal Kafka wire protocol, for sending hand-made (and malformed) requests.
# Reference: https://kafka.apache.org/protocol (non-flexible encodings unless noted).

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19
API_INIT_PRODUCER_ID = 22


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    t = _CRC32C_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def build_record_batch(
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
    base_timestamp: int | None = None,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    transactional: bool = False,
) -> bytes:
    """An uncompressed v2 RecordBatch (magic 2) with a correct CRC-32C."""
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    body = bytearray()
    for i, (k, v, hdrs) in enumerate(records):
        r = bytearray()
        r += struct.pack(">b", 0)  # attributes
        r += zigzag_varint(0)  # timestamp delta
        r += zigzag_varint(i)  # offset delta
        if k is None:
            r += zigzag_varint(-1)
        else:
            r += zigzag_varint(len(k)) + k
        if v is None:
            r += zigzag_varint(-1)
        else:
            r += zigzag_varint(len(v)) + v
        r += zigzag_varint(len(hdrs))
        for hk, hv in hdrs:
            hkb = hk.encode()
            r += zigzag_varint(len(hkb)) + hkb
            r += zigzag_varint(-1) if hv is None else zigzag_varint(len(hv)) + hv
        body += zigzag_varint(len(r)) + r
    # Everything from attributes to the end is covered by the CRC.
    after_crc = struct.pack(
        ">hiqqqhii",
        0x10 if transactional else 0,  # attributes: no compression, CreateTime
        len(records) - 1,  # lastOffsetDelta
        ts,  # baseTimestamp
        ts,  # maxTimestamp
        producer_id,
        producer_epoch,
        base_sequence,
        len(records),
    ) + bytes(body)
    crc = crc32c(after_crc)
    after_length = struct.pack(">ibI", -1, 2, crc) + after_crc  # partitionLeaderEpoch, magic, crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


class Reader:
    """Big-endian reader for response bodies."""

    def __init__(self, data: bytes):
        self.b = io.BytesIO(data)
        self.n = len(data)

    def remaining(self) -> int:
        return self.n - self.b.tell()

    def _u(self, fmt: str):
        size = struct.calcsize(fmt)
        raw = self.b.read(size)
        if len(raw) != size:
            raise ValueError(f"short read: wanted {size} bytes, got {len(raw)}")
        return struct.unpack(fmt, raw)[0]

    def i8(self):
        return self._u(">b")

    def i16(self):
        return self._u(">h")

    def i32(self):
        return self._u(">i")

    def i64(self):
        return self._u(">q")

    def string(self) -> str | None:
        n = self.i16()
        return None if n < 0 else self.b.read(n).decode()

    def bytes_(self) -> bytes | None:
        n = self.i32()
        return None if n < 0 else self.b.read(n)

    def array(self, fn):
        n = self.i32()
        return [] if n < 0 else [fn(self) for _ in range(n)]


def kstring(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def kbytes(b: bytes | None) -> bytes:
    if b is None:
        return struct.pack(">i", -1)
    return struct.pack(">i", len(b)) + b


def karray(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


def compact_string(s: str | None) -> bytes:
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


class Wire:
    """A raw Kafka connection: send request frames, read response frames."""

    def __init__(self, bootstrap: str, timeout: float = 10.0, client_id: str = "sluice-e2e-raw"):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.settimeout(timeout)
        self.client_id = client_id
        self.corr = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def header(self, api_key: int, api_version: int, flexible: bool = False) -> bytes:
        """Request header v1 (v2 when flexible: adds an empty tagged-field section)."""
        self.corr += 1
        h = struct.pack(">hhi", api_key, api_version, self.corr) + kstring(self.client_id)
        if flexible:
            h += uvarint(0)
        return h

    def send_request(self, api_key: int, api_version: int, body: bytes, flexible: bool = False) -> int:
        payload = self.header(api_key, api_version, flexible) + body
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)
        return self.corr

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed by server after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self.recv_exact(4))
        return self.recv_exact(size)

    def request(self, api_key: int, api_version: int, body: bytes, flexible_request: bool = False,
                flexible_response_header: bool = False) -> Reader:
        """Send a request and return a Reader positioned after the response header.
        `last_round_trip_s`: from sending it to having read its response whole;
        `last_response_bytes`: the response's size."""
        started = time.perf_counter()
        corr = self.send_request(api_key, api_version, body, flexible_request)
        r = self.response(corr, flexible_response_header)
        self.last_round_trip_s = time.perf_counter() - started
        self.last_response_bytes = r.n
        return r

    def response(self, corr: int, flexible_response_header: bool = False) -> Reader:
        """Read the response to request `corr`; a Reader positioned after its header."""
        r = Reader(self.recv_frame())
        got = r.i32()
        assert got == corr, f"correlation id mismatch: sent {corr}, got {got}"
        if flexible_response_header:
            ntags = r.b.read(1)[0]
            assert ntags == 0, "unexpected tagged fields in response header"
        return r

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection within timeout (data sent before the close is discarded)."""
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
        return False

    # -- a few typed requests -------------------------------------------------

    def api_versions(self, version: int = 0) -> Reader:
        """Send ApiVersions; the response header is always v0 (KIP-511), so the
        returned Reader is positioned at the body's error_code."""
        if version >= 3:
            # v3+ request: header v2 and a flexible body (client software name/version).
            body = compact_string("sluice-e2e") + compact_string("1.0") + uvarint(0)
            return self.request(API_API_VERSIONS, version, body, flexible_request=True)
        return self.request(API_API_VERSIONS, version, b"")

    def produce(self, topic: str, partition: int, batch: bytes | None, acks: int = -1, timeout_ms: int = 10000,
                transactional_id: str | None = None) -> dict:
        """Produce v7 (non-flexible) of one batch to one partition; returns the partition response."""
        corr = self.produce_send(topic, partition, batch, acks, timeout_ms, transactional_id)
        return self.produce_response(corr, topic)

    def produce_send(self, topic: str, partition: int, batch: bytes | None, acks: int = -1,
                     timeout_ms: int = 10000, transactional_id: str | None = None) -> int:
        """Send a Produce v7 request without waiting; returns its correlation id."""
        body = (
            kstring(transactional_id)
            + struct.pack(">hi", acks, timeout_ms)
            + karray([kstring(topic) + karray([struct.pack(">i", partition) + kbytes(batch)])])
        )
        return self.send_request(API_PRODUCE, 7, body)

    def produce_response(self, corr: int, topic: str) -> dict:
        r = self.response(corr)
        topics = r.array(lambda r: (r.string(), r.array(lambda r: {
            "partition": r.i32(),
            "error_code": r.i16(),
            "base_offset": r.i64(),
            "log_append_time_ms": r.i64(),
            "log_start_offset": r.i64(),
        })))
        r.i32()  # throttle_time_ms
        assert len(topics) == 1 and len(topics[0][1]) == 1, f"unexpected produce response shape: {topics}"
        assert topics[0][0] == topic
        return topics[0][1][0]

    def init_producer_id(self) -> tuple[int, int, int]:
        """InitProducerId v0 without a transactional id -> (error_code, producer_id, producer_epoch)."""
        r = self.request(API_INIT_PRODUCER_ID, 0, kstring(None) + struct.pack(">i", 60000))
        r.i32()  # throttle_time_ms
        return r.i16(), r.i64(), r.i16()

    def fetch(self, topic: str, partition: int, offset: int, max_wait_ms: int, min_bytes: int,
              max_bytes: int = 1 << 20) -> dict:
        """Fetch v4 (non-flexible) of one partition -> {error_code, high_watermark, records}."""
        body = struct.pack(">iiiib", -1, max_wait_ms, min_bytes, max_bytes, 0) + karray(
            [kstring(topic) + karray([struct.pack(">iqi", partition, offset, max_bytes)])])
        r = self.request(API_FETCH, 4, body)
        r.i32()  # throttle_time_ms
        topics = r.array(lambda r: (r.string(), r.array(lambda r: {
            "partition": r.i32(),
            "error_code": r.i16(),
            "high_watermark": r.i64(),
            "last_stable_offset": r.i64(),
            "aborted": r.array(lambda r: (r.i64(), r.i64())),
            "records": r.bytes_(),
        })))
        assert len(topics) == 1 and len(topics[0][1]) == 1, f"unexpected fetch response shape: {topics}"
        return topics[0][1][0]

    def metadata(self, topics: list[str] | None, allow_auto_create: bool) -> dict:
        """Metadata v4 (non-flexible). Returns {topic: (error_code, [partition ids])}."""
        return {name: (err, sorted(p[0] for p in parts))
                for name, (err, parts) in self.metadata_partitions(topics, allow_auto_create).items()}

    def metadata_partitions(self, topics: list[str] | None, allow_auto_create: bool) -> dict:
        """Metadata v4 (non-flexible). Returns {topic: (error_code, [(partition id, error_code, leader id)])}."""
        tarr = struct.pack(">i", -1) if topics is None else karray([kstring(t) for t in topics])
        r = self.request(API_METADATA, 4, tarr + struct.pack(">?", allow_auto_create))
        r.i32()  # throttle
        r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))  # brokers
        r.string()  # cluster id
        r.i32()  # controller id

        def topic(r):
            err = r.i16()
            name = r.string()
            r.i8()  # is_internal
            # v4 partition: error_code, partition_index, leader_id, replica_nodes, isr_nodes
            parts = r.array(lambda r: (
                r.i16(), r.i32(), r.i32(), r.array(lambda r: r.i32()), r.array(lambda r: r.i32()),
            ))
            return name, (err, [(index, perr, leader) for perr, index, leader, _, _ in parts])

        return dict(r.array(topic))


# --------------------------------------------------------------------------------------
# Producing


@dataclass
class Msg:
    """A record to produce, and what we expect to read back."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()  # tuple of (str, bytes | None)
    timestamp: int | None = None

    def content(self):
        return (self.key, self.value, tuple(self.headers))


def produce_confluent(bootstrap: str, topic: str, msgs: list[Msg], timeout: float = 60, flush_every: int | None = None, **conf) -> list[tuple[int, int]]:
    """Produce msgs with confluent-kafka; return the acknowledged (partition, offset) of each.

    Defaults to an idempotent acks=all producer. Raises if any delivery fails.
    """
    from confluent_kafka import Producer

    pconf = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(timeout * 1000),
    }
    pconf.update(conf)
    p = Producer(pconf)
    results: list = [None] * len(msgs)

    def cb(i):
        def on_delivery(err, m):
            results[i] = err if err is not None else (m.partition(), m.offset())
        return on_delivery

    for i, m in enumerate(msgs):
        kw = {}
        if m.timestamp is not None:
            kw["timestamp"] = m.timestamp
        if m.headers:
            kw["headers"] = list(m.headers)
        while True:
            try:
                p.produce(topic, value=m.value, key=m.key, partition=m.partition, on_delivery=cb(i), **kw)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        if flush_every and (i + 1) % flush_every == 0:
            p.flush(timeout)
    left = p.flush(timeout)
    assert left == 0, f"{left} messages still undelivered after {timeout}s"
    errors = [(i, r) for i, r in enumerate(results) if not isinstance(r, tuple)]
    assert not errors, f"{len(errors)} deliveries failed, first: {errors[:3]}"
    return results


def expected_by_partition(msgs: list[Msg], acks: list[tuple[int, int]]) -> dict[int, list[tuple]]:
    """{partition: [(offset, key, value, headers), ...]} sorted by offset, from acks."""
    out: dict[int, list[tuple]] = {}
    for m, (p, off) in zip(msgs, acks):
        assert p == m.partition, f"record for partition {m.partition} acknowledged on partition {p}"
        out.setdefault(p, []).append((off, m.key, m.value, tuple(m.headers)))
    for p in out:
        out[p].sort()
    return out


def as_comparable(recs: dict[int, list[Rec]]) -> dict[int, list[tuple]]:
    return {p: [(r.offset, r.key, r.value, tuple(r.headers)) for r in rs] for p, rs in recs.items() if rs}
