"""`DELETE /v1/sessions/{sid}?purge=true`: an admin deletes a session for good (issue 11).

Its turns are stopped first through the normal stop path, then the session and everything
of it go in one transaction; afterwards every surface answers 404 and its streams end. A
worker whose turn is deleted under it abandons the turn: no crash, no row written back."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests import compat_helpers
from tests.helpers import Api, Server, read_sse, running_server, store_snapshot, wait_for
from tether.auth import Role

GUMLOOP = "/compat/gumloop/api/v1"
FACTORY = "/compat/factory/api/v0"
SLOW = {"reply": "word", "tokens": 10**6, "token_delay_ms": 5}


def _mentions(snapshot: dict[str, Any], sid: str) -> dict[str, int]:
    """Rows naming the session, by table. The audit log keeps its records on purpose."""
    return {
        table: n
        for table, rows in snapshot.items()
        if table != "audit_log" and (n := sum(sid in row for row in rows))
    }


async def _reads_are_404(client: httpx.AsyncClient, sid: str, tid: str, tenant: str) -> None:
    paths = [
        f"/v1/sessions/{sid}",
        f"/v1/sessions/{sid}/turns",
        f"/v1/sessions/{sid}/turns/{tid}",
        f"/v1/sessions/{sid}/messages",
        f"/v1/sessions/{sid}/interrupts",
        f"/v1/sessions/{sid}/events?stream=false",
        f"/v1/sessions/{sid}/events",
        f"{GUMLOOP}/sessions/{sid}",
        f"{GUMLOOP}/sessions/{sid}?stream=true",
        f"{FACTORY}/sessions/{sid}",
        f"{FACTORY}/sessions/{sid}/messages",
        f"/compat/truefoundry/{tenant}/v1/agents/sessions/{sid}",
        f"/compat/truefoundry/{tenant}/v1/agents/sessions/{sid}/turns/{tid}",
    ]
    for path in paths:
        r = await client.get(path, headers={"Last-Event-ID": "1"})
        assert r.status_code == 404, (path, r.status_code, r.text)
    subscribe = f"/compat/truefoundry/{tenant}/v1/agents/sessions/{sid}/turns/{tid}/subscribe"
    assert (await client.post(subscribe, json={})).status_code == 404


# --- who may purge ---------------------------------------------------------------------------


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path, auth="required") as srv:
        yield srv


async def test_only_an_admin_of_the_tenant_purges(secured: Server) -> None:
    keys = await compat_helpers.tenant_keys(secured)
    _, keys["other_admin"] = await secured.node.keys.create("other", Role.ADMIN)

    def client(role: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {keys[role]}"}
        return httpx.AsyncClient(base_url=secured.url, headers=headers, timeout=30)

    async with client("admin") as admin:
        api = Api(admin)
        sid = await api.session(await api.agent(reply="hi"))
        tid = (await api.turn(sid))["id"]
        await api.wait_turn(sid, tid)
        for role, status in [("read", 403), ("write", 403), ("other_admin", 404)]:
            async with client(role) as c:
                r = await c.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
                assert r.status_code == status, (role, r.text)
        assert (await admin.get(f"/v1/sessions/{sid}")).json()["status"] == "idle"

        r = await admin.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
        assert r.status_code == 204 and r.content == b""
        await _reads_are_404(admin, sid, tid, "acme")
        audit = (await admin.get("/v1/audit")).json()["data"]
        purged = [a for a in audit if a["action"] == "session.purge"]
        assert [a["target"] for a in purged] == [sid]
        assert (
            await admin.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
        ).status_code == 404


# --- what goes -------------------------------------------------------------------------------


async def test_purge_deletes_all_of_the_session_and_nothing_else(
    server: Server, client: httpx.AsyncClient, api: Api
) -> None:
    approver = await compat_helpers.approval_agent(client)
    keep = await api.session(await api.agent(reply="kept"))
    await api.wait_turn(keep, (await api.turn(keep))["id"])
    # a session with a finished turn, a tool run, a pending interrupt and idempotency records
    key = {"Idempotency-Key": "purge-me"}
    body = {"agent_id": approver, "input": "go"}
    made = await client.post("/v1/sessions", json=body, headers=key)
    assert made.status_code == 201
    sid, tid = made.json()["id"], made.json()["turn"]["id"]

    async def waiting() -> bool:
        return bool((await client.get(f"/v1/sessions/{sid}")).json()["status"] == "waiting")

    await wait_for(waiting, 20, "the approval")
    [interrupt] = (await client.get(f"/v1/sessions/{sid}/interrupts")).json()["data"]
    queued = await client.post(
        f"/v1/sessions/{sid}/turns", json={"input": "later"}, headers={"Idempotency-Key": "t"}
    )
    assert queued.status_code == 202
    before = await store_snapshot(server)
    assert set(_mentions(before, sid)) >= {
        "sessions",
        "turns",
        "messages",
        "events",
        "interrupts",
        "idempotency_keys",
    }
    kept = _mentions(before, keep)

    r = await client.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
    assert r.status_code == 204, r.text
    after = await store_snapshot(server)
    assert _mentions(after, sid) == {}
    assert any(tid in row for row in before["tool_runs"])  # keyed by turn, not session
    assert not any(tid in row for row in after["tool_runs"])
    assert _mentions(after, keep) == kept
    await _reads_are_404(client, sid, tid, "default")
    assert (await client.get(f"/v1/interrupts/{interrupt['id']}")).status_code == 404
    r = await client.post(f"/v1/interrupts/{interrupt['id']}/respond", json={"response": {}})
    assert r.status_code == 404
    assert (await client.post(f"/v1/sessions/{sid}/turns", json={"input": "x"})).status_code == 404
    # its Idempotency-Key names nothing now: the same request makes a new session
    again = await client.post("/v1/sessions", json=body, headers=key)
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.json()["id"] != sid
    # a plain DELETE still only closes
    closed = await client.delete(f"/v1/sessions/{keep}")
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert (await client.get(f"/v1/sessions/{keep}")).status_code == 200


async def test_the_websocket_cannot_resume_a_purged_session(
    server: Server, client: httpx.AsyncClient, api: Api
) -> None:
    sid = await api.session(await api.agent(reply="hi"))
    assert (await client.delete(f"/v1/sessions/{sid}?purge=true")).status_code == 204
    url = f"ws://127.0.0.1:{server.port}/compat/agent-threads/ws"
    async with websockets.connect(url) as ws:
        await ws.send('{"type": "hello", "version": 1}')
        assert json.loads(await ws.recv())["type"] == "server-hello"
        await ws.send(json.dumps({"type": "subscribe", "streamId": f"session:{sid}"}))
        answer = json.loads(await ws.recv())
        while answer["type"] == "ping":
            answer = json.loads(await ws.recv())
        assert answer["type"] == "error" and answer["code"] == "UNKNOWN_STREAM", answer


# --- under a running turn --------------------------------------------------------------------


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("tether", "asyncio"))
    ]
    assert not bad, [r.getMessage() for r in bad]


async def test_purging_a_running_session_stops_it_and_ends_its_streams(
    server: Server, client: httpx.AsyncClient, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    sid = await api.session(await api.agent(**SLOW))
    tid = (await api.turn(sid))["id"]
    frames: list[str] = []

    async def follow() -> None:
        async with client.stream("GET", f"/v1/sessions/{sid}/events") as r:
            async for _, event, _ in read_sse(r):
                frames.append(event)

    reader = asyncio.create_task(follow())
    await wait_for(lambda: "message.delta" in frames, 20, "the turn to stream")

    r = await client.delete(f"/v1/sessions/{sid}", params={"purge": "true"})
    assert r.status_code == 204, r.text
    await asyncio.wait_for(reader, 10)  # the open stream ended
    assert "turn.cancelled" in frames  # stopped the normal way before it went
    worker = server.node.worker
    assert worker is not None
    await wait_for(lambda: not worker.busy, 10, "the worker to let go")
    assert _mentions(await store_snapshot(server), sid) == {}
    await _reads_are_404(client, sid, tid, "default")
    # the worker goes on with other work
    other = await api.session(await api.agent(reply="still here"))
    assert (await api.wait_turn(other, (await api.turn(other))["id"]))["status"] == "completed"
    _no_errors_logged(caplog)


async def _abandoned(server: Server, client: httpx.AsyncClient, sid: str, started: str) -> None:
    """Delete the session in the store under its running turn (no stop first), once the turn
    has shown `started`; the worker must let go of it, writing nothing back."""
    frames: list[str] = []

    async def follow() -> None:
        async with client.stream("GET", f"/v1/sessions/{sid}/events") as r:
            async for _, event, _ in read_sse(r):
                frames.append(event)

    reader = asyncio.create_task(follow())
    await wait_for(lambda: started in frames, 20, started)
    assert await server.node.store.purges.purge("default", sid) != []  # it was running
    await asyncio.wait_for(reader, 10)
    worker = server.node.worker
    assert worker is not None
    await wait_for(lambda: not worker.busy, 15, "the worker to abandon the turn")
    assert _mentions(await store_snapshot(server), sid) == {}
    assert (await client.get(f"/v1/sessions/{sid}")).status_code == 404


async def test_a_streaming_turn_deleted_under_its_worker_is_abandoned(
    server: Server, client: httpx.AsyncClient, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Streaming writes nothing: the worker finds out when it renews its lease."""
    sid = await api.session(await api.agent(**SLOW))
    await api.turn(sid)
    await _abandoned(server, client, sid, "message.delta")
    _no_errors_logged(caplog)


async def test_a_turn_deleted_under_its_worker_mid_tool_is_abandoned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tool ends long before the lease is renewed: the worker finds out at its write of
    the tool's result, which finds nothing (not a crash, and nothing written back)."""
    async with (
        running_server(tmp_path, lease_ttl_s=60.0) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        api = Api(client)
        call = {"name": "sleep", "arguments": {"seconds": 0.5}}
        sid = await api.session(await api.agent(steps=[{"tool_calls": [call]}], reply="done"))
        await api.turn(sid)
        await _abandoned(server, client, sid, "tool.started")
    _no_errors_logged(caplog)
