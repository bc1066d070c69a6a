"""Cluster mode across processes' worth of nodes: an API node without workers and a worker node,
each with a bus of its own, talking through Redis and PostgreSQL only (issue 13)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from bench import bustap
from tests import helpers
from tests.helpers import Api, read_sse, wait_for
from tests.proxy import CuttingProxy
from tether.bus import redis as redis_bus
from tether.bus.redis import RedisBus
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


async def test_a_stopped_turn_publishes_no_text_after_its_end(
    api_client: httpx.AsyncClient, worker_node: Node
) -> None:
    """Whatever the worker still had of a stopped turn's text when it ended is not published
    after `turn.cancelled` (its end keeps the text as an interrupted message)."""
    api = Api(api_client)
    agent = await api.agent(reply="echo", tokens=100_000, token_delay_ms=2)
    sids = [await api.session(agent) for _ in range(3)]
    tap = bustap.BusTap(helpers.BACKEND["bus_url"], helpers.BACKEND["bus_prefix"])
    try:
        for sid in sids:
            await tap.watch(sid)
            await api.turn(sid, "one two three")
        for sid in sids:
            await wait_for(lambda sid=sid: any(p.delta_turn for p in tap.log[sid]), 10, "text")
            r = await api_client.post(f"/v1/sessions/{sid}/interrupt", json={"wait": 10})
            assert r.status_code == 200 and r.json()["turn"]["status"] == "cancelled", r.text
        # what a late publish would need to be seen: the worker's outbox flushed meanwhile
        await asyncio.sleep(3 * redis_bus.DELTA_FLUSH_S)
    finally:
        await tap.close()
    for sid in sids:
        late = bustap.after_end(tap.log[sid])
        assert late.terminal_seen
        assert (late.messages, late.tokens) == (0, 0)
        message = [m for m in await api.messages(sid) if m["role"] == "assistant"][-1]
        assert message["status"] == "interrupted" and message["content"]


async def test_each_queued_turn_wakes_one_worker(
    api_node: helpers.Server, api_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Queueing a turn leaves one wake-up for one worker (not a broadcast to all); workers
    with room take them, and the turns run."""
    api = Api(api_client)
    agent = await api.agent(reply="hi")
    turns = []
    for _ in range(3):
        sid = await api.session(agent)
        turns.append((sid, (await api.turn(sid))["id"]))
    bus = api_node.node.bus
    assert isinstance(bus, RedisBus)
    wakeups = bus.names.work
    async with redis.from_url(helpers.BACKEND["bus_url"]) as client:

        async def left() -> int:
            return int(await client.llen(wakeups))

        async def three() -> bool:
            return await left() == 3

        await wait_for(three, 5, "one wake-up per turn")  # once the API node's outbox flushed
        workers = [
            Node(helpers.settings_for(tmp_path / f"w{n}", workers=4), api=False) for n in range(2)
        ]
        for node in workers:
            await node.start()
        try:
            for sid, turn_id in turns:
                assert (await api.wait_turn(sid, turn_id))["status"] == "completed"

            async def taken() -> bool:
                return await left() == 0

            await wait_for(taken, 5, "every wake-up taken")
        finally:
            for node in workers:
                await node.stop()
