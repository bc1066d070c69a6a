"""Cluster mode across processes' worth of nodes: an API node without workers and a worker node,
each with a bus of its own, talking through Redis and PostgreSQL only (issue 13)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests import helpers
from tests.helpers import Api, read_sse
from tests.proxy import CuttingProxy
from tether.node import Node

pytestmark = pytest.mark.cluster


REDIS_LAG_S = 0.2  # what the API node hears from Redis arrives this late


@pytest.fixture
async def api_node(tmp_path: Path) -> AsyncIterator[helpers.Server]:
    """An API node on a slow link to Redis: the worker (on a quick one) is always ahead. Its
    streams wait long for news before they look in the store (which would find the turn
    ended and the deltas still on their way)."""
    redis_port = int(helpers.BACKEND["bus_url"].rsplit(":", 1)[1].split("/")[0])
    proxy = await CuttingProxy(redis_port, delay_down=REDIS_LAG_S).start()
    bus_url = f"redis://127.0.0.1:{proxy.port}"
    try:
        async with helpers.running_server(
            tmp_path / "api", workers=0, bus_url=bus_url, sse_ping_s=10
        ) as server:
            yield server
    finally:
        await proxy.stop()


@pytest.fixture
async def worker_node(tmp_path: Path, api_node: helpers.Server) -> AsyncIterator[Node]:
    node = Node(helpers.settings_for(tmp_path / "worker", workers=16), api=False)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def api_client(api_node: helpers.Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_node.url, timeout=30) as client:
        yield client


async def test_a_fast_turn_streams_its_text_as_deltas(
    api_client: httpx.AsyncClient, worker_node: Node
) -> None:
    """A turn with no token delay may end in the worker before an API node that subscribed
    after queueing it hears anything: its own stream must still carry every delta."""
    api = Api(api_client)
    agent = await api.agent(reply="echo", tokens=20, token_delay_ms=0)
    sid = await api.session(agent)
    for n in range(5):
        async with api_client.stream(
            "POST", f"/v1/sessions/{sid}/turns", json={"input": f"w{n}", "stream": True}
        ) as r:
            assert r.status_code == 200
            frames = [(kind, data) async for _, kind, data in read_sse(r)]
        kinds = [kind for kind, _ in frames]
        assert kinds[-1] == "turn.completed", kinds
        text = "".join(d["data"]["delta"] for k, d in frames if k == "message.delta")
        final = [d for k, d in frames if k == "message.completed"][-1]["data"]["message"]
        assert text == final["content"] == f"w{n} " * 20, f"turn {n}: deltas {text!r}"
