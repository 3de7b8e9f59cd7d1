"""Real shared services for cluster tests: a PostgreSQL server and an S3 API
server (moto), each started once per test session on free loopback ports in a
temporary directory, and torn down at exit.

Every test gets its own database and its own bucket, so tests never see each
other's metadata or objects.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from conftest import free_port, wait_until


def _pg_bin_dir() -> Path:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "postgres")):
            return Path(d)
    raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql (apt install postgresql)")


class Postgres:
    """A throwaway PostgreSQL cluster. As root it runs as the `postgres` user."""

    def __init__(self) -> None:
        self.bin = _pg_bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        data = self.dir / "data"
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300",
            "start",
        )
        self.data = data
        atexit.register(self.stop)

    def _run(self, *cmd: str) -> None:
        if self.as_root:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout}\n{r.stderr}")

    def url(self, db: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        r = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", f"CREATE DATABASE {name}"],
            capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE failed: {r.stderr}")
        return self.url(name)

    def stop(self) -> None:
        if self.data is None:
            return
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
        self.data = None
        shutil.rmtree(self.dir, ignore_errors=True)


class S3Server:
    """moto's S3 API server: a real HTTP S3 endpoint, nothing mocked in-process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-s3-"))
        self.log = open(self.dir / "moto.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        wait_until(self._up, 30, what="moto S3 server")
        atexit.register(self.stop)

    def _up(self) -> bool:
        import urllib.request

        with urllib.request.urlopen(self.endpoint + "/", timeout=1) as r:
            return r.status == 200

    def env(self) -> dict:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="test",
            aws_secret_access_key="test", region_name="us-east-1",
        )

    def create_bucket(self) -> str:
        name = "b-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name

    def count_objects(self, bucket: str, prefix: str = "") -> int:
        n = 0
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            n += len(page.get("Contents", []))
        return n

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


_PG: Postgres | None = None
_S3: S3Server | None = None


def postgres() -> Postgres:
    global _PG
    if _PG is None:
        _PG = Postgres()
    return _PG


def s3() -> S3Server:
    global _S3
    if _S3 is None:
        _S3 = S3Server()
    return _S3
