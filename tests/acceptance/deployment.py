"""A cluster deployment of real processes for acceptance tests and benchmarks: API nodes
(`tether serve --workers 0`) and `tether worker`s on one PostgreSQL and one Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.acceptance.procs import ServerProcess, WorkerProcess

# Short leases, so recovery is quick to observe.
TIMINGS = {
    "lease_ttl_s": 3.0,
    "reaper_interval_s": 0.5,
    "poll_interval_s": 0.2,
    "shutdown_grace_s": 1.0,
}


class Deployment:
    def __init__(self, tmp: Path, **settings: Any):
        self.tmp = tmp
        self.settings = {**TIMINGS, **settings}
        self.nodes: list[ServerProcess] = []
        self.workers: list[WorkerProcess] = []

    def add_node(self, **env: Any) -> ServerProcess:
        index = len(self.nodes)
        node = ServerProcess(self.tmp / f"node{index}", workers=0, **self.settings, **env)
        self.nodes.append(node.start())
        return node

    def add_worker(self, concurrency: int = 100, **env: Any) -> WorkerProcess:
        name = str(len(self.workers))
        worker = WorkerProcess(self.tmp, name, workers=concurrency, **self.settings, **env)
        self.workers.append(worker.start())
        return worker

    def stop(self) -> None:
        for proc in [*self.workers, *self.nodes]:
            proc.stop()


def sql(url: str, query: str, *args: Any) -> list[Any]:
    """Rows of a query on the deployment's database (what the API does not show: which worker
    holds a turn)."""
    import asyncpg

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def turns_held_by(store_url: str, worker: WorkerProcess) -> set[str]:
    rows = sql(
        store_url,
        "SELECT id FROM turns WHERE worker_id LIKE $1 AND status IN ('running', 'cancelling')",
        f"%:{worker.pid}:%",
    )
    return {r["id"] for r in rows}


# One client for the helpers: a new httpx.get builds an SSL context each time (~20 ms).
http = httpx.Client(timeout=30)


def events(url: str, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"{url}/v1/sessions/{sid}/events", params={"stream": "false", "limit": 1000})
    r.raise_for_status()
    return r.json()["data"]  # type: ignore[no-any-return]


def turn(url: str, sid: str, tid: str) -> dict[str, Any]:
    r = http.get(f"{url}/v1/sessions/{sid}/turns/{tid}")
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]
