"""The Factory surface with httpx (Factory ships no official client): create, message,
interrupt while running, idempotent when idle, send again; failures in Factory's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import compat_helpers
from tests.helpers import Server, read_sse, running_server, wait_for

PREFIX = "/compat/factory/api/v0"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path, auth="required") as srv:
        yield srv


@pytest.fixture
async def keys(server: Server) -> dict[str, str]:
    return await compat_helpers.tenant_keys(server)


@pytest.fixture
async def admin(server: Server, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {keys['admin']}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture
async def factory(server: Server, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {keys['write']}"}
    async with httpx.AsyncClient(base_url=server.url + PREFIX, headers=headers, timeout=30) as c:
        yield c


async def status_of(factory: httpx.AsyncClient, sid: str) -> str:
    r = await factory.get(f"/sessions/{sid}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


async def wait_status(factory: httpx.AsyncClient, sid: str, want: str) -> None:
    async def reached() -> bool:
        return await status_of(factory, sid) == want

    await wait_for(reached, 20, f"session {sid} {want}")


async def first_text(admin: httpx.AsyncClient, sid: str) -> None:
    """Wait until the agent has said something (a live delta on the native stream)."""
    async with admin.stream("GET", f"/v1/sessions/{sid}/events") as r:
        async for _, event, _ in read_sse(r):
            if event == "message.delta":
                return


async def test_create_message_interrupt_send_again(
    admin: httpx.AsyncClient, factory: httpx.AsyncClient
) -> None:
    agent_id = await compat_helpers.make_agent(admin, "slow", tokens=5000, token_delay_ms=5)
    r = await factory.post("/sessions", json={"agentId": agent_id})
    assert r.status_code == 201, r.text
    session = r.json()
    sid = session["id"]
    assert session["status"] == "idle"
    assert session["agentId"] == agent_id

    r = await factory.post(f"/sessions/{sid}/messages", json={"content": "hello"})
    assert r.status_code == 202, r.text
    assert r.json()["status"] in ("pending", "running")
    await wait_status(factory, sid, "running")
    await first_text(admin, sid)

    # a stop not yet confirmed (no wait) is pending; then the session comes to rest
    r = await factory.post(f"/sessions/{sid}/interrupt", params={"wait": 0})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "pending"}
    await wait_status(factory, sid, "idle")
    for _ in range(2):  # idempotent when idle
        r = await factory.post(f"/sessions/{sid}/interrupt")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "idle"}

    r = await factory.get(f"/sessions/{sid}/messages")
    assert r.status_code == 200, r.text
    messages = r.json()["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "completed"),
        ("assistant", "interrupted"),
    ]

    r = await factory.post(f"/sessions/{sid}/messages", json={"content": "again"})
    assert r.status_code == 202, r.text
    await wait_status(factory, sid, "running")
    r = await factory.post(f"/sessions/{sid}/interrupt", params={"wait": 30})  # confirmed
    assert r.json() == {"status": "idle"}


async def test_interrupt_with_input_queued_is_pending_then_runs_it(
    admin: httpx.AsyncClient, factory: httpx.AsyncClient
) -> None:
    agent_id = await compat_helpers.make_agent(admin, "queue", tokens=5000, token_delay_ms=5)
    r = await factory.post("/sessions", json={"agentId": "queue", "message": "first"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["agentId"] == agent_id
    await wait_status(factory, sid, "running")
    r = await factory.post(f"/sessions/{sid}/messages", json={"content": "second"})
    assert r.json()["status"] == "running"
    r = await factory.post(f"/sessions/{sid}/interrupt")
    assert r.json()["status"] in ("pending", "running"), "the queued input runs next"
    await wait_status(factory, sid, "running")
    r = await factory.post(f"/sessions/{sid}/interrupt", params={"wait": 30})
    assert r.json() == {"status": "idle"}
    r = await factory.get(f"/sessions/{sid}/messages")
    assert [m["content"] for m in r.json()["messages"] if m["role"] == "user"] == [
        "first",
        "second",
    ]


async def test_an_approval_wait_is_pending_and_interrupt_ends_it(
    admin: httpx.AsyncClient, factory: httpx.AsyncClient
) -> None:
    await compat_helpers.approval_agent(admin)
    r = await factory.post("/sessions", json={"agentId": "careful", "message": "go"})
    sid = r.json()["id"]

    async def waiting() -> bool:
        r = await admin.get(f"/v1/sessions/{sid}")
        return bool(r.json()["status"] == "waiting")

    await wait_for(waiting, 10, "the approval wait")
    assert await status_of(factory, sid) == "pending"
    r = await factory.post(f"/sessions/{sid}/interrupt")
    assert r.json() == {"status": "idle"}


async def test_list_sessions_pages(admin: httpx.AsyncClient, factory: httpx.AsyncClient) -> None:
    agent_id = await compat_helpers.make_agent(admin, "lister")
    made = set()
    for _ in range(3):
        r = await factory.post("/sessions", json={"agentId": agent_id})
        made.add(r.json()["id"])
    first = (await factory.get("/sessions", params={"limit": 2})).json()
    assert len(first["sessions"]) == 2 and first["nextCursor"]
    rest = (await factory.get("/sessions", params={"cursor": first["nextCursor"]})).json()
    assert {s["id"] for s in first["sessions"] + rest["sessions"]} == made


async def test_idempotent_create(admin: httpx.AsyncClient, factory: httpx.AsyncClient) -> None:
    agent_id = await compat_helpers.make_agent(admin, "once")
    headers = {"Idempotency-Key": "k1"}
    a = await factory.post("/sessions", json={"agentId": agent_id}, headers=headers)
    b = await factory.post("/sessions", json={"agentId": agent_id}, headers=headers)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] == b.json()["id"]
    assert b.headers["idempotent-replayed"] == "true"


# --- failures --------------------------------------------------------------------------------


def assert_factory_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail", "status", "title", "metadata"}, body
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["title"]
    if code is not None:
        assert body["metadata"]["code"] == code, body


async def test_failures_in_factory_shape(
    server: Server, admin: httpx.AsyncClient, factory: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    agent_id = await compat_helpers.make_agent(admin, "plain")
    sid = (await factory.post("/sessions", json={"agentId": agent_id})).json()["id"]
    unknown = "01arz3ndektsv4rrffq69g5fav.local"
    for method, path in [
        ("GET", f"/sessions/{unknown}"),
        ("POST", f"/sessions/{unknown}/interrupt"),
        ("POST", f"/sessions/{unknown}/messages"),
        ("GET", f"/sessions/{unknown}/messages"),
        ("GET", "/no/such/endpoint"),
        ("DELETE", f"/sessions/{sid}"),
        ("GET", "/sessions/not-an-id"),  # the contract's ids are any string: none by that id
        ("POST", "/sessions/not-an-id/interrupt"),
        ("POST", "/sessions/%2e%2e/interrupt"),
    ]:
        r = await factory.request(method, path, json={"content": "x"})
        assert_factory_error(r, 404)
    bad: list[tuple[str, Any, int]] = [
        ("/sessions", {}, 422),
        ("/sessions", {"agentId": "nobody"}, 404),
        ("/sessions", {"agentId": agent_id, "message": ""}, 422),
        ("/sessions", {"agentId": agent_id, "surprise": 1}, 422),
        (f"/sessions/{sid}/messages", {}, 422),
        (f"/sessions/{sid}/messages", {"content": 3}, 422),
    ]
    for path, body, status in bad:
        assert_factory_error(await factory.post(path, json=body), status)
    r = await factory.post("/sessions", content=b"{", headers={"content-type": "application/json"})
    assert_factory_error(r, 400, "invalid_json")
    r = await factory.post(f"/sessions/{sid}/interrupt", params={"wait": -1})
    assert_factory_error(r, 422)
    r = await factory.get(f"/sessions/{sid}/messages", params={"cursor": "x"})
    assert_factory_error(r, 400)

    assert (await admin.delete(f"/v1/sessions/{sid}")).status_code == 200
    r = await factory.post(f"/sessions/{sid}/messages", json={"content": "x"})
    assert_factory_error(r, 409, "session_closed")
    assert (await factory.post(f"/sessions/{sid}/interrupt")).json() == {"status": "idle"}

    async with httpx.AsyncClient(base_url=server.url + PREFIX, timeout=30) as anon:
        assert_factory_error(await anon.post(f"/sessions/{sid}/interrupt"), 401, "unauthorized")
        bad_key = {"Authorization": "Bearer nope"}
        assert_factory_error(await anon.get("/sessions", headers=bad_key), 401)
        reader = {"Authorization": f"Bearer {keys['read']}"}
        r = await anon.post(f"/sessions/{sid}/interrupt", headers=reader)
        assert_factory_error(r, 403, "forbidden")
        assert (await anon.get(f"/sessions/{sid}", headers=reader)).status_code == 200
        other = {"Authorization": f"Bearer {keys['other']}"}
        for method, path in [
            ("POST", f"/sessions/{sid}/interrupt"),
            ("GET", f"/sessions/{sid}"),
            ("GET", f"/sessions/{sid}/messages"),
        ]:
            assert_factory_error(await anon.request(method, path, headers=other), 404)
        r = await anon.post("/sessions", json={"agentId": agent_id}, headers=other)
        assert_factory_error(r, 404)
        assert (await anon.get("/sessions", headers=other)).json()["sessions"] == []
