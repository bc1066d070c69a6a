"""Private, throwaway PostgreSQL and Redis servers for the tests and benchmarks of cluster mode.

Each is a real server from the Debian packages (`make test` installs them, through
scripts/setup-system), started on a free loopback port in a directory of its own and removed
afterwards: tests never share a server with anything else. PostgreSQL refuses to run as
root, so as root it runs as `postgres`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise RuntimeError(f"{name} not found: install PostgreSQL (apt-get install postgresql)")
    return found


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}: {log.read_text()[-2000:]}")


class PostgresServer:
    """`initdb` + `postgres` in a temp dir; trust auth on 127.0.0.1 for user `tether`.
    Durability is off (fsync): these servers hold test data only."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tether-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *self._as_postgres,
                _pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "tether",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://tether@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "400",
            "shared_buffers": "128MB",
        }
        args = [f"-c{k}={v}" for k, v in settings.items()]
        cmd = [*self._as_postgres, _pg_bin("postgres"), "-D", str(self.data), "-p"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, str(self.port), *args], stdout=log, stderr=subprocess.STDOUT
            )
        _wait_port(self.port, self.proc, "postgres", self.log)
        ready = [_pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        deadline = time.monotonic() + 30
        while subprocess.run(ready, check=False).returncode != 0:  # listening, not yet ready
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast`: SIGINT (clean); `immediate`: SIGQUIT (like a crash, recovery at start)."""
        import signal

        if self.proc and self.proc.poll() is None:
            # the postmaster itself: `runuser` in between does not pass signals on
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT if mode == "fast" else signal.SIGQUIT)
            self.proc.wait(30)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tether-redis-"))
        self.port = free_port()
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        redis_server = shutil.which("redis-server")
        if not redis_server:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        cmd = [redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.dir)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "redis", self.log)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def create_database(server: PostgresServer, name: str, template: str | None = None) -> str:
    """A fresh database (a copy of `template`, if given); answers its URL."""
    import asyncpg

    conn = await asyncpg.connect(server.url().replace("postgresql://", "postgres://"))
    try:
        suffix = f" TEMPLATE {template}" if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    finally:
        await conn.close()
    return server.url(name)


async def drop_database(server: PostgresServer, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server.url().replace("postgresql://", "postgres://"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
