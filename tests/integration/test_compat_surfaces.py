"""One session, every surface: what /v1 starts, Gumloop, Factory and TrueFoundry stop, and
all of them read back the same final state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gumloop import AsyncGumloop

from tests import compat_helpers
from tests.helpers import Api, Server, running_server, wait_for

GUMLOOP = "/compat/gumloop/api/v1"
FACTORY = "/compat/factory/api/v0"
TRUEFOUNDRY = "/compat/truefoundry/acme/v1/agents"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path, auth="required") as srv:
        yield srv


async def test_stopped_through_the_surfaces_read_alike_everywhere(server: Server) -> None:
    keys = await compat_helpers.tenant_keys(server)
    auth = {"Authorization": f"Bearer {keys['admin']}"}
    async with (
        httpx.AsyncClient(base_url=server.url, headers=auth, timeout=30) as native,
        httpx.AsyncClient(base_url=server.url + FACTORY, headers=auth, timeout=30) as factory,
        httpx.AsyncClient(base_url=server.url + TRUEFOUNDRY, headers=auth, timeout=30) as tfy,
        AsyncGumloop(
            api_key=keys["write"],
            base_url=server.url + GUMLOOP,
            stream_base_url=server.url + GUMLOOP,
        ) as gl,
    ):
        api = Api(native)
        agent_id = await compat_helpers.make_agent(native, "long", tokens=5000, token_delay_ms=5)

        async def running(sid: str) -> None:
            async def check() -> bool:
                r = await native.get(f"/v1/sessions/{sid}")
                return bool(r.json()["status"] == "running")

            await wait_for(check, 20, f"{sid} running")

        async def states(sid: str) -> tuple[str, str | None, str, str | None, str]:
            v1 = (await native.get(f"/v1/sessions/{sid}")).json()
            f = (await factory.get(f"/sessions/{sid}")).json()
            g = (await gl.sessions.retrieve(sid)).session
            turns = (await tfy.get(f"/sessions/{sid}/turns")).json()["data"]
            last_turn = turns[0]["state"]["status"]  # newest first
            return v1["status"], v1["last_turn"]["status"], f["status"], g.state, last_turn

        # started through /v1, cancelled through Gumloop
        sid = await api.session(agent_id)
        turn = await api.turn(sid, "one")
        await running(sid)
        cancelled = await gl.sessions.cancel(sid)
        assert cancelled.session.state == "failed"
        assert (await api.get_turn(sid, turn["id"]))["reason"] == "client_cancelled"
        assert await states(sid) == ("idle", "cancelled", "idle", "failed", "cancelled")

        # a message through /v1 again, interrupted through Factory
        turn = await api.turn(sid, "two")
        await running(sid)
        r = await factory.post(f"/sessions/{sid}/interrupt", params={"wait": 30})
        assert r.json() == {"status": "idle"}
        assert (await api.get_turn(sid, turn["id"]))["status"] == "cancelled"
        assert await states(sid) == ("idle", "cancelled", "idle", "failed", "cancelled")

        # a message through Gumloop, stopped through /v1
        answer = await gl.sessions.send(sid, input="three")
        assert answer.session.state in ("queued", "processing")
        await running(sid)
        r = await native.post(f"/v1/sessions/{sid}/interrupt")
        assert r.status_code == 200, r.text
        assert await states(sid) == ("idle", "cancelled", "idle", "failed", "cancelled")

        # a message through /v1 again, cancelled through TrueFoundry
        turn = await api.turn(sid, "four")
        await running(sid)
        r = await tfy.post(f"/sessions/{sid}/cancel", json={"wait": 30})
        assert (r.status_code, r.json()) == (200, {})
        assert (await api.get_turn(sid, turn["id"]))["status"] == "cancelled"
        assert await states(sid) == ("idle", "cancelled", "idle", "failed", "cancelled")
        messages = await api.messages(sid)
        users = [m["content"] for m in messages if m["role"] == "user"]
        assert users == ["one", "two", "three", "four"]

        # created through Gumloop: listed by /v1, Factory and TrueFoundry
        made = (await gl.sessions.create(agent_id)).session.id
        listed = (await native.get("/v1/sessions", params={"agent_id": agent_id})).json()
        assert made in {s["id"] for s in listed["data"]}
        assert made in {s["id"] for s in (await factory.get("/sessions")).json()["sessions"]}
        assert (await tfy.get(f"/sessions/{made}")).status_code == 200
