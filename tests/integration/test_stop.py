"""Stop means stop: every stop path through the HTTP API (DESIGN §3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import Api, Server, read_sse, running_server, wait_for
from tether.runtime.tools import builtin_registry

LONG_STREAM = {"reply": "echo", "tokens": 2000, "token_delay_ms": 5}
SLOW_TOOL = {
    "steps": [{"text": "working", "tool_calls": [{"name": "sleep", "arguments": {"seconds": 30}}]}]
}


async def stubborn(seconds: float) -> str:
    """Ignores cancellation for a while, like a badly written tool."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        await asyncio.shield(asyncio.sleep(seconds))
    return "done"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    tools = builtin_registry()
    tools.register(stubborn)
    async with running_server(tmp_path, tools=tools) as srv:
        yield srv


async def _running(api: Api, sid: str, tid: str, what: str = "running") -> None:
    async def check() -> bool:
        return (await api.get_turn(sid, tid))["status"] == what

    await wait_for(check, 10, f"turn {what}")


async def _tokens_out(client: httpx.AsyncClient, sid: str) -> None:
    """The turn has streamed some text: a `message.delta` on the session's stream (a reader
    joining late gets the text so far as one)."""
    async with asyncio.timeout(10), client.stream("GET", f"/v1/sessions/{sid}/events") as r:
        async for _, event, _ in read_sse(r):
            if event == "message.delta":
                return


async def stop(client: httpx.AsyncClient, sid: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/sessions/{sid}/interrupt", json=body)


def tool_results_match_calls(msgs: list[dict[str, Any]]) -> None:
    calls = [c["id"] for m in msgs for c in m["tool_calls"]]
    results = [m["tool_call_id"] for m in msgs if m["role"] == "tool"]
    assert sorted(calls) == sorted(results), "every tool call has exactly one result"


async def test_stop_mid_token_keeps_partial_text(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(**LONG_STREAM))
    turn = await api.turn(sid, "word")
    await _tokens_out(client, sid)  # the point is to stop mid-stream
    r = await stop(client, sid)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["turn"]["id"] == turn["id"]
    assert body["turn"]["status"] == "cancelled"
    assert body["turn"]["reason"] == "client_cancelled"
    assert body["session"]["status"] == "idle"
    msgs = await api.messages(sid)
    assert msgs[-1]["role"] == "assistant"
    assert msgs[-1]["status"] == "interrupted"
    assert 0 < len(msgs[-1]["content"]) < len("word " * 2000)
    usage = (await api.get_turn(sid, turn["id"]))["usage"]
    assert usage["model_calls"] == 1, "usage of a stopped turn is kept"
    # the session is usable at once: the next turn streams (stopped in turn, not waited for)
    nxt = await api.turn(sid, "next")
    await _tokens_out(client, sid)
    assert (await api.get_turn(sid, nxt["id"]))["status"] == "running"
    r = await stop(client, sid)
    assert r.json()["turn"]["id"] == nxt["id"] and r.json()["turn"]["status"] == "cancelled"


async def test_stop_mid_tool_records_outcomes(api: Api, client: httpx.AsyncClient) -> None:
    steps = [
        {
            "text": "two tools",
            "tool_calls": [{"name": "get_time"}, {"name": "sleep", "arguments": {"seconds": 30}}],
        }
    ]
    sid = await api.session(await api.agent(steps=steps, reply="never"))

    async def tool_running() -> bool:
        return any(e["type"] == "tool.started" for e in await api.events(sid))

    turn = await api.turn(sid)
    await wait_for(tool_running, 10, "tools started")
    r = await stop(client, sid)
    assert r.status_code == 200
    assert r.json()["turn"]["status"] == "cancelled"
    msgs = await api.messages(sid)
    tool_results_match_calls(msgs)
    by_name = {m["name"]: m["content"] for m in msgs if m["role"] == "tool"}
    assert "interrupted" in by_name["sleep"]
    assert not by_name["get_time"].startswith("Tool call")  # it finished: its result is kept
    outcomes = {
        e["data"]["name"]: e["data"]["outcome"]
        for e in await api.events(sid)
        if e["type"] == "tool.completed"
    }
    assert outcomes == {"get_time": "completed", "sleep": "interrupted"}
    assert (await api.get_turn(sid, turn["id"]))["status"] == "cancelled"


async def test_stubborn_tool_is_abandoned_after_grace(api: Api, client: httpx.AsyncClient) -> None:
    steps = [{"tool_calls": [{"name": "stubborn", "arguments": {"seconds": 20}}]}]
    sid = await api.session(await api.agent(steps=steps, tools=[{"name": "stubborn"}]))

    async def tool_running() -> bool:
        return any(e["type"] == "tool.started" for e in await api.events(sid))

    await api.turn(sid)
    await wait_for(tool_running, 10, "tool started")
    r = await stop(client, sid, wait=10)
    assert r.status_code == 200
    assert r.json()["turn"]["status"] == "cancelled"


async def test_rollback_removes_the_turn_from_the_transcript(
    api: Api, client: httpx.AsyncClient
) -> None:
    sid = await api.session(await api.agent(**LONG_STREAM))
    first = await api.turn(sid, "keep")
    # a completed first turn, then a rolled back second one
    await client.post(f"/v1/sessions/{sid}/turns/{first['id']}/cancel", json={"wait": 0})
    await api.wait_turn(sid, first["id"])
    before = await api.messages(sid)
    second = await api.turn(sid, "drop me")
    await _tokens_out(client, sid)
    r = await stop(client, sid, mode="rollback")
    assert r.status_code == 200
    assert r.json()["turn"]["status"] == "cancelled"
    assert await api.messages(sid) == before
    ended = [e for e in await api.events(sid) if e["type"] == "turn.cancelled"][-1]
    assert ended["data"]["rolled_back"] is True
    assert (await api.get_turn(sid, second["id"]))["usage"]["model_calls"] == 1


async def test_queued_turn_cancelled_at_once_and_scope(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(**LONG_STREAM))
    running = await api.turn(sid, "a")
    q1 = await api.turn(sid, "b")
    q2 = await api.turn(sid, "c")
    r = await client.post(f"/v1/sessions/{sid}/turns/{q1['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["turn"]["status"] == "cancelled"
    assert (await api.get_turn(sid, running["id"]))["status"] in ("queued", "running")
    r = await stop(client, sid, scope="all")
    assert r.status_code == 200
    assert r.json()["turn"]["id"] == running["id"]
    for t in (running, q2):
        assert (await api.get_turn(sid, t["id"]))["status"] == "cancelled"
    assert r.json()["session"]["status"] == "idle"


async def test_scope_turn_lets_queued_turns_proceed(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(**LONG_STREAM))
    running = await api.turn(sid, "a")
    queued = await api.turn(sid, "b")
    await _running(api, sid, running["id"])
    r = await stop(client, sid)
    assert r.json()["turn"]["id"] == running["id"]
    await _running(api, sid, queued["id"])


async def test_idempotent_stops(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="hi"))
    r = await stop(client, sid)
    assert r.status_code == 200
    assert r.json()["turn"] is None
    assert r.json()["session"]["status"] == "idle"
    done = await api.wait_turn(sid, (await api.turn(sid))["id"])
    for _ in range(2):
        r = await stop(client, sid)
        assert r.status_code == 200
        assert r.json()["turn"] is None  # nothing to stop: the current state
        assert r.json()["session"]["last_turn"] == {"id": done["id"], "status": "completed"}
        r = await client.post(f"/v1/sessions/{sid}/turns/{done['id']}/cancel")
        assert r.status_code == 200
        assert r.json()["turn"] == done


async def test_stop_twice_while_running(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(**SLOW_TOOL))
    turn = await api.turn(sid)
    await _running(api, sid, turn["id"])
    first, second = await asyncio.gather(stop(client, sid), stop(client, sid, mode="rollback"))
    assert first.status_code == second.status_code == 200
    for r in (first, second):  # the later one may find nothing left to stop
        assert r.json()["turn"] is None or r.json()["turn"]["status"] == "cancelled"
        assert r.json()["session"]["last_turn"] == {"id": turn["id"], "status": "cancelled"}
    again = await client.post(f"/v1/sessions/{sid}/turns/{turn['id']}/cancel")
    assert again.json()["turn"]["status"] == "cancelled"
    ended = [e for e in await api.events(sid) if e["type"] == "turn.cancelled"]
    assert len(ended) == 1


async def test_unconfirmed_stop_answers_202_and_stays_in_force(
    api: Api, client: httpx.AsyncClient
) -> None:
    sid = await api.session(await api.agent(**SLOW_TOOL))
    turn = await api.turn(sid)
    await _running(api, sid, turn["id"])
    r = await stop(client, sid, wait=0)
    assert r.status_code == 202
    assert r.json()["turn"]["status"] in ("cancelling", "cancelled")
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "cancelled"


async def test_on_busy_interrupt_and_rollback(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(**LONG_STREAM))
    first = await api.turn(sid, "one")
    queued = await api.turn(sid, "two")
    await _running(api, sid, first["id"])
    newer = await api.turn(sid, "three", on_busy="interrupt")
    for old in (first, queued):
        ended = await api.wait_turn(sid, old["id"])
        assert ended["status"] == "cancelled"
        assert ended["reason"] == "superseded_by_new_turn"
    await _running(api, sid, newer["id"])
    newest = await api.turn(sid, "four", on_busy="rollback")
    assert (await api.wait_turn(sid, newer["id"]))["status"] == "cancelled"
    await _running(api, sid, newest["id"])
    users = [m["content"] for m in await api.messages(sid) if m["role"] == "user"]
    assert users == ["one", "four"], "interrupt keeps the stopped turn, rollback removes it"


async def test_no_tokens_after_confirmed_stop(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(**LONG_STREAM))
    frames: list[tuple[str, dict[str, Any]]] = []
    confirmed_at: list[int] = []

    async def reader() -> None:
        async with client.stream(
            "POST", f"/v1/sessions/{sid}/turns", json={"input": "tok", "stream": True}
        ) as r:
            async for _, kind, data in read_sse(r):
                frames.append((kind, data))
                if len(frames) == 20:
                    resp = await stop(client, sid)
                    assert resp.status_code == 200
                    confirmed_at.append(len(frames))

    await asyncio.wait_for(reader(), 30)
    kinds = [k for k, _ in frames]
    assert kinds[-1] == "turn.cancelled"
    assert "turn.cancelling" in kinds
    after = kinds[confirmed_at[0] :]
    # frames already on the wire when the stop was confirmed may still arrive, but nothing
    # produced after it: the last delta precedes the cancelling event
    last_delta = max(i for i, k in enumerate(kinds) if k == "message.delta")
    assert last_delta < kinds.index("turn.cancelling")
    assert "message.delta" not in after[after.index("turn.cancelling") :] if after else True
    final = [d for k, d in frames if k == "message.completed"][-1]["data"]["message"]
    streamed = "".join(d["data"]["delta"] for k, d in frames if k == "message.delta")
    assert final["content"] == streamed, "the interrupted text is exactly what was streamed"
    assert final["status"] == "interrupted"


async def test_stop_bad_requests(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="hi"))
    for body, code in [
        ({"mode": "explode"}, 422),
        ({"wait": -1}, 422),
        ({"scope": "x"}, 422),
        ({"reason": "Not Snake"}, 422),
    ]:
        r = await stop(client, sid, **body)
        assert r.status_code == code, body
    r = await client.post(f"/v1/sessions/{sid}/turns/turn_bad/cancel")
    assert r.status_code == 400
    r = await client.post(f"/v1/sessions/{sid}/turns/turn_01arz3ndektsv4rrffq69g5fav/cancel")
    assert r.status_code == 404
    r = await client.post("/v1/sessions/01arz3ndektsv4rrffq69g5fav.local/interrupt")
    assert r.status_code == 404
