"""Fixtures. `TETHER_TEST_BACKEND=cluster` runs every test on PostgreSQL + Redis (private
servers started for this run; a fresh database and Redis prefix per test) instead of SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import helpers, infra
from tests.helpers import Api, Server, running_server

CLUSTER = os.environ.get("TETHER_TEST_BACKEND", "sqlite") == "cluster"


def _one_ssl_context() -> None:
    """httpx builds an SSL context for every client it makes, loading certifi's CA bundle
    (~35 ms of CPU); tests make thousands of clients, all speaking plain HTTP to loopback.
    Clients that verify by default share one context here (an SSLContext is meant to be
    shared); one given its own `verify` keeps it."""
    from httpx._transports import default

    shared = httpx.create_ssl_context()
    create = default.create_ssl_context

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is True and cert is None and trust_env:
            return shared
        return create(verify=verify, cert=cert, trust_env=trust_env)

    default.create_ssl_context = create_ssl_context  # type: ignore[assignment]


_one_ssl_context()
_TEMPLATE = "tether_template"
_numbers = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="embedded mode only (a SQLite data dir)")
    for item in items:
        if CLUSTER and item.get_closest_marker("embedded"):
            item.add_marker(skip)
        if not CLUSTER and item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.skip(reason="cluster mode only"))


class _Databases:
    """Databases copied from the template ahead of need, by a thread of their own: a copy
    takes PostgreSQL ~0.3 s (mostly its checkpoints), which then overlaps the tests before
    instead of adding to every test's setup."""

    def __init__(self, pg: infra.PostgresServer, ready: int = 2):
        self.pg = pg
        self.ready: queue.Queue[str] = queue.Queue(maxsize=ready)
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="test-databases", daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        while not self.closing.is_set():
            name = f"t{next(_numbers)}"
            try:
                asyncio.run(infra.create_database(self.pg, name, template=_TEMPLATE))
            except Exception:  # e.g. a test restarting PostgreSQL: try again in a moment
                self.closing.wait(0.2)
                continue
            while not self.closing.is_set():
                with contextlib.suppress(queue.Full):
                    self.ready.put(name, timeout=0.5)
                    break

    def take(self) -> str:
        return self.ready.get(timeout=120)

    def close(self) -> None:
        self.closing.set()
        self.thread.join(10)


@pytest.fixture(scope="session")
def cluster_servers() -> Iterator[tuple[infra.PostgresServer, infra.RedisServer, _Databases]]:
    """A private PostgreSQL (with a migrated template database) and Redis for this run."""
    from tether.store import open_store

    pg = infra.PostgresServer().start()
    redis = infra.RedisServer().start()

    async def make_template() -> None:
        url = await infra.create_database(pg, _TEMPLATE)
        store = await open_store(url)
        await store.close()

    databases: _Databases | None = None
    try:
        asyncio.run(make_template())
        databases = _Databases(pg)
        yield pg, redis, databases
    finally:
        if databases is not None:
            databases.close()
        redis.close()
        pg.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once for this run, copied into each test's data dir."""
    from tether.store import open_store

    path = tmp_path_factory.mktemp("template") / "tether.db"

    async def make_template() -> None:
        store = await open_store(f"sqlite:///{path}")
        await store.close()

    asyncio.run(make_template())
    return path


@pytest.fixture(autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """This test's store and bus: a copy of a migrated SQLite database in embedded mode; a
    fresh database and Redis prefix of its own in cluster mode."""
    if not CLUSTER:
        helpers.SQLITE_TEMPLATE = request.getfixturevalue("sqlite_template")
        yield {}
        return
    pg, redis, databases = request.getfixturevalue("cluster_servers")
    name = databases.take()
    url = pg.url(name)
    helpers.BACKEND = {
        "store_url": url,
        "bus_url": redis.url,
        "bus_prefix": name,
        # A restarted process does not take over the leases of the dead one here (others may
        # be alive): short leases keep the crash tests quick.
        "lease_ttl_s": 3.0,
        "reaper_interval_s": 0.3,
    }
    try:
        yield helpers.BACKEND
    finally:
        helpers.BACKEND = {}
        asyncio.run(infra.drop_database(pg, name))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path) as srv:
        yield srv


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)
