"""Auth is decided per request, in one place, from the bind and the keys that exist (DESIGN
§8): once a key is needed, it stays needed. Revoking the last key leaves every surface 401:
/v1, admin, Gumloop, Factory, TrueFoundry and the agent-threads WebSocket."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi.routing import APIRoute

from tests import helpers
from tests.helpers import Server, running_server, wait_for
from tether import ids
from tether.api import admin, v1
from tether.api.compat import factory, gumloop, truefoundry
from tether.auth import Keys, Role
from tether.domain import ApiKey
from tether.store import open_store

SESSION = f"{ids.new_ulid()}.local"
PATH_VALUES = {
    "agent_id": ids.new("agt"),
    "session_id": SESSION,
    "sessionId": SESSION,
    "turn_id": ids.new("turn"),
    "interrupt_id": ids.new("int"),
    "key_id": ids.new("key"),
    "tenant": "acme",
}
BAD_KEY = "tth_000000000000_not-a-key"


def every_route() -> list[tuple[str, str]]:
    """Each method and path of every HTTP surface, its parameters filled with well-formed
    ids: the key is checked before anything is looked up."""
    routes = []
    for module in (v1, admin, gumloop, factory, truefoundry):
        for route in module.router.routes:
            if not isinstance(route, APIRoute) or "{unmatched" in route.path:
                continue  # the surfaces' vendor-shaped 404 for unknown paths: nothing to guard
            path = re.sub(r"{(\w+)(:\w+)?}", lambda m: PATH_VALUES[m.group(1)], route.path)
            routes += [(method, path) for method in sorted(route.methods)]
    assert len(routes) >= 45
    return routes


async def make_key(tmp: Path, role: Role = Role.ADMIN) -> tuple[ApiKey, str]:
    """A key made the way `tether keys create` makes one: straight in the store."""
    store = await open_store(helpers.settings_for(tmp).resolved_store_url)
    try:
        return await Keys(store).create("acme", role)
    finally:
        await store.close()


async def revoke_elsewhere(tmp: Path, key_id: str) -> None:
    store = await open_store(helpers.settings_for(tmp).resolved_store_url)
    try:
        await Keys(store).revoke(key_id)
    finally:
        await store.close()


def ws_url(server: Server, key: str | None = None) -> str:
    url = f"ws://127.0.0.1:{server.port}/compat/agent-threads/ws"
    return f"{url}?access_token={key}" if key else url


async def assert_closed_everywhere(server: Server, revoked: str) -> None:
    """No key, the revoked key and a bad key: 401 on every route and at the WebSocket."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        for method, path in every_route():
            for headers in ({}, {"Authorization": f"Bearer {revoked}"}):
                body: Any = {} if method in ("POST", "PATCH", "PUT") else None
                r = await c.request(method, path, headers=headers, json=body)
                assert r.status_code == 401, (method, path, headers, r.text[:300])
        r = await c.get(  # TrueFoundry's client always sends some key: no pass when closed
            "/compat/truefoundry/acme/v1/agents/sessions",
            headers={"Authorization": f"Bearer {BAD_KEY}"},
        )
        assert r.status_code == 401, r.text
        assert (await c.get("/healthz")).status_code == 200  # probes stay open
    for url in (ws_url(server), ws_url(server, revoked), ws_url(server, BAD_KEY)):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 401


async def test_off_loopback_revoking_the_last_key_closes_every_surface(tmp_path: Path) -> None:
    info, key = await make_key(tmp_path)
    # bound to 127.0.0.1 by the test harness; the node decides as if serving on 0.0.0.0
    async with running_server(tmp_path, host="0.0.0.0") as server:
        own = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=own, timeout=30) as c:
            assert (await c.get("/v1/sessions")).status_code == 200
            assert (await c.delete(f"/v1/keys/{info.id}")).status_code == 200  # its own, last
        await assert_closed_everywhere(server, key)
        keys = await server.node.keys.list()
        assert [k.id for k in keys.items] == [info.id], "no key was minted without one"


async def test_on_loopback_the_first_key_closes_the_server_for_good(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as c,
    ):
        assert (await c.get("/v1/sessions")).status_code == 200  # open for local use
        made = await c.post("/v1/keys", json={"role": "admin"})  # how a local user starts
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        assert (await c.get("/v1/sessions")).status_code == 401, "closed at once"
        own = {"Authorization": f"Bearer {key}"}
        revoked = await c.delete(f"/v1/keys/{made.json()['id']}", headers=own)
        assert revoked.status_code == 200
        await assert_closed_everywhere(server, key)


async def test_on_loopback_a_key_made_by_another_process_closes_it(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            assert (await c.get("/v1/sessions")).status_code == 200
            info, key = await make_key(tmp_path)  # `tether keys create` while it serves

            async def closed() -> bool:
                return (await c.get("/v1/sessions")).status_code == 401

            await wait_for(closed, 10, "auth to be required")
        await revoke_elsewhere(tmp_path, info.id)
        await assert_closed_everywhere(server, key)
    async with running_server(tmp_path) as restarted:  # and after a restart
        await assert_closed_everywhere(restarted, key)


async def test_disabled_auth_on_loopback_stays_open(tmp_path: Path) -> None:
    async with running_server(tmp_path, auth="disabled") as server:
        _, key = await server.node.keys.create("acme", Role.READ)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            assert (await c.get("/v1/sessions")).status_code == 200
            r = await c.get("/v1/sessions", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
            r = await c.get("/v1/sessions", headers={"Authorization": f"Bearer {BAD_KEY}"})
            assert r.status_code == 401, "a key that is given must be good"
