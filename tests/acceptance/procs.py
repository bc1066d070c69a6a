"""Real `tether serve` processes for acceptance tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from tests import helpers
from tests.helpers import free_port


class ServerProcess:
    def __init__(self, data_dir: Path, port: int | None = None, **env: Any):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TETHER_LOG_LEVEL": "warning",
            **{f"TETHER_{k.upper()}": str(v) for k, v in {**helpers.BACKEND, **env}.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 30) -> ServerProcess:
        database = self.data_dir / "tether.db"  # embedded: start from the migrated copy
        if helpers.SQLITE_TEMPLATE and "store_url" not in helpers.BACKEND and not database.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(helpers.SQLITE_TEMPLATE, database)
        cmd = [
            sys.executable,
            "-m",
            "tether",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout}s")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        procs.stop(self.proc)


class WorkerProcess:
    """`tether worker` on the test's PostgreSQL and Redis (cluster mode)."""

    def __init__(self, log_dir: Path, name: str, **env: Any):
        settings = {**helpers.BACKEND, **env}
        self.store, self.bus = settings.pop("store_url"), settings.pop("bus_url")
        self.env = {
            **os.environ,
            "TETHER_LOG_LEVEL": "info",
            **{f"TETHER_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.log = log_dir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> WorkerProcess:
        cmd = [sys.executable, "-m", "tether", "worker", "--store", self.store, "--bus", self.bus]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            lambda: "running" in self.log.read_text() or self.proc.poll() is not None,  # type: ignore[union-attr]
            30,
            "worker start",
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited: {self.log.read_text()[-2000:]}")
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen one must be able to die
        procs.stop(self.proc, grace_s=15)


def store_args(data_dir: Path) -> list[str]:
    """The CLI options that name this test's store: the data dir, or the cluster's database."""
    if "store_url" in helpers.BACKEND:
        return ["--store", str(helpers.BACKEND["store_url"])]
    return ["--data-dir", str(data_dir)]


def backend_env() -> dict[str, str]:
    return {f"TETHER_{k.upper()}": str(v) for k, v in helpers.BACKEND.items()}


def create_key(data_dir: Path, tenant: str = "acme", role: str = "admin") -> str:
    """`tether keys create`, as an operator would run it; answers the printed key."""
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether",
            "keys",
            "create",
            "--tenant",
            tenant,
            "--role",
            role,
            *store_args(data_dir),
            "--create",  # the first key of a new data dir makes its store
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
