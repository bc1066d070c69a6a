"""The Gumloop surface, driven by the official `gumloop` client, unmodified (its async
client: the server runs in the test's event loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gumloop import AsyncGumloop
from gumloop.errors import APIStatusError
from gumloop.types import StreamEvent

from tests import compat_helpers
from tests.helpers import Server, running_server, wait_for

PREFIX = "/compat/gumloop/api/v1"


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


def gumloop_client(server: Server, key: str) -> AsyncGumloop:
    url = server.url + PREFIX
    return AsyncGumloop(api_key=key, base_url=url, stream_base_url=url, timeout=30)


@pytest.fixture
async def gl(server: Server, keys: dict[str, str]) -> AsyncIterator[AsyncGumloop]:
    client = gumloop_client(server, keys["write"])
    yield client
    await client.aclose()


async def drain(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.model_dump()["delta"] for e in events if e.type == "text-delta")


async def last_reply(gl: AsyncGumloop, sid: str) -> str:
    messages = (await gl.sessions.retrieve(sid)).session.messages
    return next(m.content or "" for m in reversed(messages) if m.role == "assistant")


async def test_create_send_stream_cancel_send_again(
    admin: httpx.AsyncClient, gl: AsyncGumloop
) -> None:
    agent_id = await compat_helpers.make_agent(admin, "slow", tokens=400, token_delay_ms=10)
    created = await gl.sessions.create(agent_id)
    sid = created.session.id
    assert created.session.state == "idle"
    assert created.session.agent_name == "slow"

    stream = await gl.sessions.send(sid, input="hi", stream=True)
    seen: list[StreamEvent] = []
    cancelled = None
    async for event in stream:
        seen.append(event)
        assert event.stream_cursor, "every part carries a cursor"
        if event.type == "text-delta" and cancelled is None:
            cancelled = await gl.sessions.cancel(sid)  # mid-stream
    assert cancelled is not None
    assert cancelled.session.id == sid
    assert cancelled.session.agent_id == agent_id
    assert cancelled.session.state == "failed"
    assert cancelled.queue_position is None
    assert seen[-1].type == "finish"
    assert seen[-1].finish_reason == "cancelled"
    partial = await last_reply(gl, sid)
    assert text_of(seen) == partial, "what streamed is what was kept"
    assert 0 < len(partial) < len("hi ") * 400

    again = await drain(await gl.sessions.send(sid, input="ok", stream=True))
    assert again[-1].type == "finish"
    assert again[-1].finish_reason == "stop"
    assert text_of(again) == await last_reply(gl, sid) == "ok " * 400

    done = await gl.sessions.retrieve(sid)
    assert done.session.state == "completed"
    assert [m.role for m in done.session.messages] == ["user", "assistant", "user", "assistant"]
    assert done.session.messages[1].model_dump()["status"] == "interrupted"


async def test_send_without_stream_and_busy_is_409(
    admin: httpx.AsyncClient, gl: AsyncGumloop
) -> None:
    agent_id = await compat_helpers.make_agent(admin, "busy", tokens=2000, token_delay_ms=5)
    created = await gl.sessions.create(agent_id, input="first")
    sid = created.session.id
    assert created.session.state in ("queued", "processing")
    with pytest.raises(APIStatusError) as busy:
        await gl.sessions.send(sid, input="second")
    assert busy.value.status_code == 409
    assert busy.value.code == "interaction_not_in_terminal_state"
    assert busy.value.type == "conflict_error"
    # queued delivery waits its turn instead (with the client's Idempotency-Key)
    receipt = await gl.sessions.send(sid, input="later", delivery="queued", idempotency_key="k")
    assert receipt.status == "accepted"
    repeat = await gl.sessions.send(sid, input="later", delivery="queued", idempotency_key="k")
    assert repeat.message_id == receipt.message_id, "the same key queues it once"
    assert (await gl.sessions.cancel(sid)).session.state == "failed"
    after = await gl.sessions.retrieve(sid)
    assert after.session.state == "failed"
    answer = await gl.sessions.send(sid, input="now")
    assert answer.session.state in ("queued", "processing")


async def test_approval_pauses_and_the_client_approves(
    admin: httpx.AsyncClient, gl: AsyncGumloop
) -> None:
    agent_id = await compat_helpers.approval_agent(admin)
    first = await drain(await gl.sessions.create(agent_id, input="go", stream=True))
    sid = first[0].model_dump()["interaction_id"]
    asks = [e for e in first if e.type == "approval-required"]
    assert len(asks) == 1
    assert first[-1].finish_reason == "approval_required"

    waiting = await gl.sessions.retrieve(sid)
    assert waiting.session.state == "approval_required"
    [pending] = waiting.session.pending_approvals or []
    assert pending.action_request_id == asks[0].model_dump()["action_request_id"]
    assert pending.tool_name == "sleep"

    resolved = await gl.sessions.resolve_approvals(
        sid,
        approval_responses=[{"action_request_id": pending.action_request_id, "action": "accept"}],
    )
    assert [r.outcome for r in resolved.results] == ["resolved"]
    assert resolved.stream_cursor
    rest = await drain(gl.sessions.resume_stream(sid, resolved.stream_cursor))
    assert rest[-1].finish_reason == "stop"
    assert text_of(rest) == "finished"
    assert [e.type for e in rest].count("tool-output-available") == 1
    done = await gl.sessions.retrieve(sid)
    assert done.session.state == "completed"
    assert done.session.pending_approvals is None

    again = await gl.sessions.resolve_approvals(
        sid,
        approval_responses=[{"action_request_id": pending.action_request_id, "action": "reject"}],
    )
    assert [r.outcome for r in again.results] == ["already_resolved"]


async def test_reject_through_a_streamed_message(
    admin: httpx.AsyncClient, gl: AsyncGumloop
) -> None:
    agent_id = await compat_helpers.approval_agent(admin)
    created = await gl.sessions.create(agent_id, input="go")
    sid = created.session.id

    async def asks() -> Any:
        s = (await gl.sessions.retrieve(sid)).session
        return s.pending_approvals if s.state == "approval_required" else None

    [pending] = await wait_for(asks, 10, "an approval")
    answer = {"action_request_id": pending.action_request_id, "action": "reject"}
    events = await drain(gl.sessions.stream_message(sid, approval_responses=[answer]))
    assert events[-1].finish_reason == "stop"
    assert (await gl.sessions.retrieve(sid)).session.state == "completed"


async def test_resume_with_last_cursor_no_duplicate_no_gap(
    admin: httpx.AsyncClient, gl: AsyncGumloop
) -> None:
    agent_id = await compat_helpers.make_agent(admin, "resumable", tokens=300, token_delay_ms=5)
    sid = (await gl.sessions.create(agent_id)).session.id
    stream = await gl.sessions.send(sid, input="ab", stream=True)
    head: list[StreamEvent] = []
    async for event in stream:
        head.append(event)
        if len([e for e in head if e.type == "text-delta"]) >= 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    cursor = head[-1].stream_cursor
    assert cursor is not None
    tail = await drain(gl.sessions.resume_stream(sid, cursor))
    assert tail[-1].finish_reason == "stop"
    whole_reply = await last_reply(gl, sid)
    assert len(whole_reply) == len("ab ") * 300
    assert text_of(head) + text_of(tail) == whole_reply

    # after the turn ended, a resume replays the rest from the log and ends at once
    late = await drain(gl.sessions.resume_stream(sid, cursor))
    assert text_of(head) + text_of(late) == whole_reply
    assert late[-1].finish_reason == "stop"
    whole = await drain(gl.sessions.resume_stream(sid, "0"))
    assert text_of(whole) == whole_reply
    end = whole[-1].stream_cursor
    assert end is not None
    assert await drain(gl.sessions.resume_stream(sid, end)) == []


async def test_a_failed_turn_streams_an_error(admin: httpx.AsyncClient, gl: AsyncGumloop) -> None:
    agent_id = await compat_helpers.make_agent(admin, "broken", fail="provider down")
    events = await drain(await gl.sessions.create(agent_id, input="hi", stream=True))
    error, finish = events[-2:]
    assert error.type == "error"
    assert error.error_details is not None
    assert error.error_details["code"] == "model_error"
    assert error.error_message
    assert (finish.type, finish.finish_reason) == ("finish", "error")
    sid = error.model_dump()["interaction_id"]
    assert (await gl.sessions.retrieve(sid)).session.state == "failed"


async def test_lists_the_agents_sessions(admin: httpx.AsyncClient, gl: AsyncGumloop) -> None:
    agent_id = await compat_helpers.make_agent(admin, "lister")
    ids = {(await gl.sessions.create(agent_id, name=f"s{i}")).session.id for i in range(3)}
    listed = await gl.sessions.list(agent_id, page_size=2)
    assert len(listed.sessions) == 2
    assert listed.next_cursor
    more = await gl.sessions.list(agent_id, page_size=2, cursor=listed.next_cursor)
    assert {s.id for s in listed.sessions + more.sessions} == ids
    assert {s.name for s in listed.sessions + more.sessions} == {"s0", "s1", "s2"}
    idle = await gl.sessions.list(agent_id, state="idle")
    assert {s.id for s in idle.sessions} == ids
    assert (await gl.sessions.list(agent_id, state="completed")).sessions == []


async def test_a_session_of_a_deleted_agent_still_reads(
    admin: httpx.AsyncClient, gl: AsyncGumloop
) -> None:
    """Found by the fuzz campaign: deleting the agent made its sessions 404 here (only here:
    /v1, Factory and TrueFoundry read them)."""
    agent_id = await compat_helpers.make_agent(admin, "gone", reply="bye")
    sid = (await gl.sessions.create(agent_id, input="hi")).session.id

    async def at_rest() -> bool:
        return (await gl.sessions.retrieve(sid)).session.state == "completed"

    await wait_for(at_rest, 20, "the first turn to complete")
    assert (await admin.delete(f"/v1/agents/{agent_id}")).status_code == 204
    session = (await gl.sessions.retrieve(sid)).session
    assert session.state == "completed" and session.agent_name is None
    assert [m.role for m in session.messages] == ["user", "assistant"]
    parts = await drain(gl.sessions.resume_stream(sid, "0"))
    assert text_of(parts) == "bye"


# --- failures --------------------------------------------------------------------------------


def assert_gumloop_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"code", "type", "message", "details"}, error
    if code is not None:
        assert error["code"] == code, error


async def test_failures_in_gumloop_shape(
    server: Server, admin: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    agent_id = await compat_helpers.make_agent(admin, "plain")
    url = server.url + PREFIX
    w = {"Authorization": f"Bearer {keys['write']}"}
    async with httpx.AsyncClient(base_url=url, headers=w, timeout=30) as c:
        sid = (await c.post(f"/agents/{agent_id}/sessions", json={})).json()["session"]["id"]
        unknown = "01arz3ndektsv4rrffq69g5fav.local"
        for method, path in [
            ("GET", f"/sessions/{unknown}"),
            ("POST", f"/sessions/{unknown}/cancel"),
            ("POST", f"/sessions/{unknown}/messages"),
            ("POST", "/sessions/not-an-id/cancel"),
            ("GET", "/sessions/../../v1/agents"),
            ("POST", f"/agents/{'agt_' + '0' * 26}/sessions"),
            ("GET", "/agents/nope/sessions"),
            ("GET", "/no/such/endpoint"),
            ("DELETE", f"/sessions/{sid}/cancel"),
        ]:
            r = await c.request(method, path, json={"input": "x"})
            assert_gumloop_error(r, 404)
        bad_bodies: list[tuple[str, Any, int]] = [
            (f"/sessions/{sid}/messages", {}, 422),
            (f"/sessions/{sid}/messages", {"input": ""}, 422),
            (f"/sessions/{sid}/messages", {"input": 5}, 422),
            (f"/sessions/{sid}/messages", {"input": [{"type": "image"}]}, 422),
            (f"/sessions/{sid}/messages", {"input": "x", "attachments": [{"a": 1}]}, 422),
            (f"/sessions/{sid}/messages", {"input": "x", "delivery": "later"}, 422),
            (f"/sessions/{sid}/approvals", {"approval_responses": []}, 422),
            (
                f"/sessions/{sid}/approvals",
                {"approval_responses": [{"action_request_id": "int_x", "action": "accept"}]},
                404,
            ),
            (f"/agents/{agent_id}/sessions", {"session_id": "mine"}, 422),
            (f"/agents/{agent_id}/sessions", {"stream": True}, 422),
            (f"/agents/{agent_id}/sessions", [1, 2], 422),
        ]
        for path, body, status in bad_bodies:
            assert_gumloop_error(await c.post(path, json=body), status)
        json_type = {"content-type": "application/json"}
        r = await c.post(f"/sessions/{sid}/messages", content=b"{nope", headers=json_type)
        assert_gumloop_error(r, 400, "invalid_json")
        r = await c.get(f"/sessions/{sid}", params={"stream": "true", "last_cursor": "x1"})
        assert_gumloop_error(r, 400)

        # an approval of another session names nothing here
        careful = await compat_helpers.approval_agent(admin)
        waiting = (await c.post(f"/agents/{careful}/sessions", json={"input": "go"})).json()

        async def pending() -> Any:
            r = await c.get(f"/sessions/{waiting['session']['id']}")
            return r.json()["session"]["pending_approvals"]

        [ask] = await wait_for(pending, 10, "an approval")
        answer = {"action_request_id": ask["action_request_id"], "action": "accept"}
        r = await c.post(f"/sessions/{sid}/approvals", json={"approval_responses": [answer]})
        assert_gumloop_error(r, 404)

        assert (await admin.delete(f"/v1/sessions/{sid}")).status_code == 200
        r = await c.post(f"/sessions/{sid}/messages", json={"input": "x"})
        assert_gumloop_error(r, 409, "session_closed")

    async with httpx.AsyncClient(base_url=url, timeout=30) as anon:
        r = await anon.post(f"/sessions/{sid}/cancel")
        assert_gumloop_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        r = await anon.post(f"/sessions/{sid}/cancel", headers={"Authorization": "Bearer bad"})
        assert_gumloop_error(r, 401)
        r = await anon.post(
            f"/sessions/{sid}/cancel", headers={"Authorization": f"Bearer {keys['read']}"}
        )
        assert_gumloop_error(r, 403, "forbidden")
        r = await anon.get(f"/sessions/{sid}", headers={"Authorization": f"Bearer {keys['read']}"})
        assert r.status_code == 200
        for path in (f"/sessions/{sid}/cancel", f"/sessions/{sid}/messages"):
            r = await anon.post(
                path, json={"input": "x"}, headers={"Authorization": f"Bearer {keys['other']}"}
            )
            assert_gumloop_error(r, 404)
        r = await anon.get(
            f"/agents/{agent_id}/sessions", headers={"Authorization": f"Bearer {keys['other']}"}
        )
        assert_gumloop_error(r, 404)


async def test_the_client_raises_on_failures(server: Server, keys: dict[str, str]) -> None:
    client = gumloop_client(server, "not-a-key")
    try:
        with pytest.raises(APIStatusError) as denied:
            await client.sessions.retrieve("01arz3ndektsv4rrffq69g5fav.local")
        assert denied.value.status_code == 401
        assert denied.value.type == "authentication_error"
    finally:
        await client.aclose()
