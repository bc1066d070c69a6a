"""`tether serve` and `tether worker` start-up (real processes): the socket is bound before any
work starts, every refusal is one line on stderr and exit status 2 (no traceback), and
"serving on" is printed only once the server answers."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import helpers
from tests.acceptance.procs import backend_env
from tests.helpers import free_port, running_server

pytestmark = pytest.mark.timeout(180)


def tether(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `tether` command as an operator would, on this test's store and bus."""
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **backend_env(), "TETHER_LOG_LEVEL": "info", **env},
    )


def assert_refused(out: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit status 2 and one line on stderr, naming the problem; answers the line."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tether: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in out.stdout + out.stderr
    assert "serving on" not in out.stdout
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as other:  # another program listening on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


async def test_port_taken_refuses_before_running_anything(tmp_path: Path, taken_port: int) -> None:
    data = tmp_path / "data"
    quick = {"provider": "scripted", "reply": "done", "token_delay_ms": 0}
    async with (
        running_server(data, workers=0) as server,  # API only: the turn stays queued
        httpx.AsyncClient(base_url=server.url) as c,
    ):
        agent = (await c.post("/v1/agents", json={"name": "quick", "model": quick})).json()
        sid = (await c.post("/v1/sessions", json={"agent_id": agent["id"]})).json()["id"]
        tid = (await c.post(f"/v1/sessions/{sid}/turns", json={"input": "x"})).json()["id"]

    out = await asyncio.to_thread(
        tether, "serve", "--data-dir", str(data), "--port", str(taken_port)
    )
    assert_refused(out, f"127.0.0.1:{taken_port}", "address already in use")

    async with (
        running_server(data, workers=0) as server,
        httpx.AsyncClient(base_url=server.url) as c,
    ):
        turn = (await c.get(f"/v1/sessions/{sid}/turns/{tid}")).json()
        assert turn["status"] == "queued", "no worker ran the queued turn"
        events = (await c.get(f"/v1/sessions/{sid}/events", params={"stream": "false"})).json()
        assert "turn.started" not in [e["type"] for e in events["data"]]


@pytest.mark.embedded
async def test_data_dir_refusals(tmp_path: Path) -> None:
    async with running_server(tmp_path / "held"):  # holds its data dir
        out = await asyncio.to_thread(
            tether, "serve", "--data-dir", str(tmp_path / "held"), "--port", str(free_port())
        )
    assert_refused(out, "another tether process", str(tmp_path / "held"))

    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    out = tether("serve", "--data-dir", str(a_file), "--port", str(free_port()))
    assert_refused(out, str(a_file), "not a directory")

    read_only = _read_only_dir(tmp_path / "read-only")
    out = tether("serve", "--data-dir", str(read_only), "--port", str(free_port()))
    assert_refused(out, str(read_only), "not writable")


def _read_only_dir(path: Path) -> Path:
    """A directory this process cannot write in: chmod'ed, or, as root (whom modes do not
    stop), a sysfs directory nobody can create files in."""
    path.mkdir()
    path.chmod(0o555)
    if not os.access(path, os.W_OK):
        return path
    sysfs = Path("/sys/kernel")
    try:
        (sysfs / "tether-probe").open("a").close()
    except OSError:
        return sysfs
    pytest.skip("no read-only directory to try on this machine")


def test_unreachable_store_and_bad_settings_refuse() -> None:
    store = f"postgresql://tether:secret-pw@127.0.0.1:{free_port()}/tether"
    out = tether("serve", "--store", store, "--port", str(free_port()))
    line = assert_refused(out, "cannot reach the database")
    assert "secret-pw" not in line

    out = tether("serve", "--port", str(free_port()), TETHER_AUTH="sometimes")
    assert_refused(out, "invalid setting", "auth", "TETHER_AUTH")
    out = tether("serve", "--port", str(free_port()), TETHER_LOG_LEVEL="loud")
    assert_refused(out, "log level", "loud")


def test_worker_refusals() -> None:
    out = tether("worker", "--store", "sqlite:///tether.db", "--bus", "redis://127.0.0.1:1")
    assert_refused(out, "PostgreSQL")
    out = tether(
        "worker",
        "--store",
        "postgresql://tether@127.0.0.1:5432/tether",
        "--bus",
        "redis://127.0.0.1:1",
        TETHER_WORKERS="-1",
    )
    assert_refused(out, "invalid setting", "workers")


@pytest.mark.cluster  # a bus that answers: the refusal is then the only line
def test_worker_refuses_an_unreachable_store() -> None:
    store = f"postgresql://tether:secret-pw@127.0.0.1:{free_port()}/tether"
    out = tether("worker", "--store", store, "--bus", str(helpers.BACKEND["bus_url"]))
    line = assert_refused(out, "cannot reach the database")
    assert "secret-pw" not in line


def test_serving_is_announced_once_it_serves(tmp_path: Path) -> None:
    port = free_port()
    serve = ["serve", "--data-dir", str(tmp_path / "d"), "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", *serve],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **backend_env(), "TETHER_LOG_LEVEL": "warning"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the line (or exit)
        assert line.startswith(f"tether serving on http://127.0.0.1:{port}"), line
        # no retry: when it says so, it serves
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=15)  # and closes its stdout
