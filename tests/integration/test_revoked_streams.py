"""A revoked key also ends the streams it opened (DESIGN §8), on every surface: native SSE,
the compat surfaces' SSE and the agent-threads WebSocket; whether the revoke came through this
API node, another process on the same store, or another API node (cluster)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.helpers import Api, Server, running_server, wait_for
from tests.integration.test_auth_stays_closed import revoke_elsewhere
from tether.auth import Role
from tether.domain import ApiKey

LONG = {"reply": "echo", "tokens": 3000, "token_delay_ms": 10}  # ~30 s of live tokens
ENDS_WITHIN_S = 10  # the watch re-checks every second; generous for a loaded box


class World:
    def __init__(self, server: Server, admin: str, victim: ApiKey, victim_key: str):
        self.server, self.admin, self.victim, self.victim_key = server, admin, victim, victim_key


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with running_server(tmp_path, auth="required", sse_ping_s=0.5) as server:
        _, admin = await server.node.keys.create("acme", Role.ADMIN, "admin")
        info, key = await server.node.keys.create("acme", Role.WRITE, "victim")
        yield World(server, admin, info, key)


async def _sse(
    server: Server, key: str, method: str, path: str, live: asyncio.Event, **kw: Any
) -> str:
    """Read an SSE answer until it ends; `live` is set at its first frame."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=60) as c,
        c.stream(method, path, headers=headers, **kw) as r,
    ):
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                live.set()
    return "ended"  # cleanly: the answer's last chunk, not a dropped connection


async def _websocket(server: Server, key: str, sid: str, live: asyncio.Event) -> str:
    url = f"ws://127.0.0.1:{server.port}/compat/agent-threads/ws?access_token={key}"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1}))
        await ws.send(json.dumps({"type": "subscribe", "streamId": f"session:{sid}"}))
        try:
            async for raw in ws:
                if json.loads(raw)["type"] == "event":
                    live.set()
        except websockets.ConnectionClosed:
            pass
        return f"closed {ws.close_code}"


async def _streams_end_on_revoke(world: World, revoke: Callable[[], Awaitable[None]]) -> None:
    server = world.server
    admin = {"Authorization": f"Bearer {world.admin}"}
    async with httpx.AsyncClient(base_url=server.url, headers=admin, timeout=30) as c:
        api = Api(c)
        sid = await api.session(await api.agent(**LONG))
        turn = await api.turn(sid, "go")
        await wait_for(lambda: _running(api, sid), 15, "a running turn")
        key, tf = world.victim_key, f"/compat/truefoundry/acme/v1/agents/sessions/{sid}"
        opened: dict[str, Callable[[asyncio.Event], Awaitable[str]]] = {
            "native events": lambda e: _sse(server, key, "GET", f"/v1/sessions/{sid}/events", e),
            "native turn stream": lambda e: _sse(
                server,
                key,
                "POST",
                f"/v1/sessions/{sid}/turns",
                e,
                json={"input": "next", "stream": True},
            ),
            "truefoundry": lambda e: _sse(
                server, key, "POST", f"{tf}/turns/{turn['id']}/subscribe", e, json={}
            ),
            "gumloop": lambda e: _sse(
                server, key, "GET", f"/compat/gumloop/api/v1/sessions/{sid}?stream=true", e
            ),
            "agent-threads": lambda e: _websocket(server, key, sid, e),
        }
        live = {name: asyncio.Event() for name in opened}
        tasks = {name: asyncio.create_task(open_(live[name])) for name, open_ in opened.items()}
        bystander_live = asyncio.Event()
        bystander = asyncio.create_task(  # another key's stream on the same session
            _sse(server, world.admin, "GET", f"/v1/sessions/{sid}/events", bystander_live)
        )
        try:
            for name, event in [*live.items(), ("bystander", bystander_live)]:
                await wait_for(event.is_set, 20, f"the {name} stream to be live")
            assert not any(t.done() for t in tasks.values())
            await revoke()
            revoked_at = time.monotonic()
            _, pending = await asyncio.wait(tasks.values(), timeout=ENDS_WITHIN_S)
            still_open = [name for name, task in tasks.items() if task in pending]
            assert not still_open, f"still streaming {ENDS_WITHIN_S} s after the revoke"
            took = time.monotonic() - revoked_at
            ends = {name: task.result() for name, task in tasks.items()}
            assert ends.pop("agent-threads") == "closed 1008"
            assert set(ends.values()) == {"ended"}, ends
            assert not bystander.done(), "a stream of a key still valid goes on"
            assert took < ENDS_WITHIN_S
            # the node that ended them trusts the key no more: new requests are refused too
            r = await c.get(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 401
            turn_now = await api.get_turn(sid, turn["id"])
            assert turn_now["status"] == "running", "revoking a key does not stop the work"
        finally:
            for task in [*tasks.values(), bystander]:
                task.cancel()
            await asyncio.gather(*tasks.values(), bystander, return_exceptions=True)


async def _running(api: Api, sid: str) -> bool:
    r = await api.c.get(f"/v1/sessions/{sid}")
    return bool(r.json()["status"] == "running")


async def test_revoked_through_the_api_ends_its_streams(world: World) -> None:
    async def revoke() -> None:
        async with httpx.AsyncClient(
            base_url=world.server.url, headers={"Authorization": f"Bearer {world.admin}"}
        ) as c:
            assert (await c.delete(f"/v1/keys/{world.victim.id}")).status_code == 200

    await _streams_end_on_revoke(world, revoke)


async def test_revoked_by_another_process_ends_its_streams(world: World) -> None:
    # `tether keys revoke`, or another API node: nothing in this process hears of it
    async def revoke() -> None:
        await revoke_elsewhere(world.server.settings.data_dir, world.victim.id)

    await _streams_end_on_revoke(world, revoke)


@pytest.mark.cluster  # two API nodes share a store in cluster mode only
async def test_revoked_on_another_api_node_ends_its_streams(world: World, tmp_path: Path) -> None:
    async with running_server(tmp_path / "b", auth="required", workers=0) as other:

        async def revoke() -> None:
            async with httpx.AsyncClient(
                base_url=other.url, headers={"Authorization": f"Bearer {world.admin}"}
            ) as c:
                assert (await c.delete(f"/v1/keys/{world.victim.id}")).status_code == 200

        await _streams_end_on_revoke(world, revoke)
