"""Turns end to end through the HTTP API on a real server."""

from __future__ import annotations

import httpx

from tests.helpers import Api


async def test_echo_turn_completes_with_transcript(api: Api) -> None:
    sid = await api.session(await api.agent(reply="echo"))
    turn = await api.turn(sid, "hello there world")
    assert turn["status"] == "queued"
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed"
    assert done["step"] == 1
    assert done["usage"]["model_calls"] == 1
    msgs = await api.messages(sid)
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("user", "hello there world"),
        ("assistant", "hello there world"),
    ]


async def test_tool_steps_and_parallel_calls(api: Api) -> None:
    steps = [
        {"text": "first", "tool_calls": [{"name": "get_time"}]},
        {
            "tool_calls": [
                {"name": "sleep", "arguments": {"seconds": 0.01}},
                {"name": "get_time"},
                {"name": "sleep", "arguments": {"seconds": 0}},
            ]
        },
    ]
    sid = await api.session(await api.agent(steps=steps, reply="done", tokens=5))
    done = await api.wait_turn(sid, (await api.turn(sid))["id"])
    assert done["status"] == "completed", done
    assert done["step"] == 5  # model, tools, model, tools, model
    msgs = await api.messages(sid)
    assert [m["role"] for m in msgs] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
        "tool",
        "assistant",
    ]
    calls = [c["id"] for m in msgs for c in m["tool_calls"]]
    results = [m["tool_call_id"] for m in msgs if m["role"] == "tool"]
    assert sorted(calls) == sorted(results)
    assert msgs[-1]["content"] == "done " * 5
    events = await api.events(sid)
    types = [e["type"] for e in events]
    assert types.count("tool.started") == 4 and types.count("tool.completed") == 4
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_tool_errors_are_results_not_crashes(api: Api) -> None:
    steps = [
        {
            "tool_calls": [
                {"name": "sleep", "arguments": {"seconds": "soon"}},
                {"name": "nope"},
                {"name": "get_time", "arguments": {"x": 1}},
            ]
        }
    ]
    sid = await api.session(await api.agent(steps=steps, reply="ok"))
    done = await api.wait_turn(sid, (await api.turn(sid))["id"])
    assert done["status"] == "completed"
    tool_msgs = [m for m in await api.messages(sid) if m["role"] == "tool"]
    assert len(tool_msgs) == 3
    assert all(m["content"].startswith("Error:") for m in tool_msgs)
    outcomes = [
        e["data"]["outcome"] for e in await api.events(sid) if e["type"] == "tool.completed"
    ]
    assert outcomes == ["error", "error", "error"]


async def test_max_steps_fails_the_turn(api: Api) -> None:
    steps = [{"tool_calls": [{"name": "get_time"}]}] * 5
    sid = await api.session(await api.agent(steps=steps, max_steps=3))
    done = await api.wait_turn(sid, (await api.turn(sid))["id"])
    assert done["status"] == "failed"
    assert done["reason"] == "max_steps" and done["error"]["code"] == "max_steps"
    # the dangling tool call of the last model step got a result: the transcript stays valid
    msgs = await api.messages(sid)
    calls = [c["id"] for m in msgs for c in m["tool_calls"]]
    assert sorted(calls) == sorted(m["tool_call_id"] for m in msgs if m["role"] == "tool")


async def test_model_error_fails_the_turn_and_session_stays_usable(
    api: Api, client: httpx.AsyncClient
) -> None:
    agent = await api.agent(fail="provider exploded")
    sid = await api.session(agent)
    done = await api.wait_turn(sid, (await api.turn(sid))["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "model_error"
    assert "provider exploded" in done["error"]["message"]
    r = await client.patch(f"/v1/agents/{agent}", json={"model": {"provider": "scripted"}})
    assert r.status_code == 200, r.text
    again = await api.wait_turn(sid, (await api.turn(sid, "again"))["id"])
    assert again["status"] == "completed"


async def test_turn_timeout_cancels(api: Api) -> None:
    steps = [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 30}}]}]
    sid = await api.session(await api.agent(steps=steps, turn_timeout_s=0.3))
    done = await api.wait_turn(sid, (await api.turn(sid))["id"])
    assert done["status"] == "cancelled" and done["reason"] == "turn_timeout"
    msgs = await api.messages(sid)
    assert msgs[-1]["role"] == "tool" and "interrupted" in msgs[-1]["content"]


async def test_fifo_and_reject(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="echo", tokens=20, token_delay_ms=5))
    turns = [await api.turn(sid, f"t{i}") for i in range(4)]
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"input": "x", "on_busy": "reject"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_busy"
    for t in turns:
        assert (await api.wait_turn(sid, t["id"]))["status"] == "completed"
    msgs = await api.messages(sid)
    assert [m["content"] for m in msgs if m["role"] == "user"] == ["t0", "t1", "t2", "t3"]
    started = [e["turn_id"] for e in await api.events(sid) if e["type"] == "turn.started"]
    assert started == [t["id"] for t in turns]
    # idle again: reject accepts
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"input": "x", "on_busy": "reject"})
    assert r.status_code == 202


async def test_session_status_and_close(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="echo", tokens=200, token_delay_ms=10))
    assert (await client.get(f"/v1/sessions/{sid}")).json()["status"] == "idle"
    first = await api.turn(sid)
    queued = await api.turn(sid)
    r = await client.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200
    assert (await api.get_turn(sid, queued["id"]))["status"] == "cancelled"
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"input": "x"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_closed"
    assert (await api.wait_turn(sid, first["id"]))["status"] == "completed"
    session = (await client.get(f"/v1/sessions/{sid}")).json()
    assert session["status"] == "closed"
    assert session["last_turn"] == {"id": queued["id"], "status": "cancelled"}


async def test_create_session_with_input_and_agent_by_name(
    api: Api, client: httpx.AsyncClient
) -> None:
    await api.agent(name="helper", reply="hi")
    r = await client.post(
        "/v1/sessions", json={"agent_id": "helper", "input": "yo", "metadata": {"user": "u1"}}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["metadata"] == {"user": "u1"} and body["turn"]["status"] == "queued"
    done = await api.wait_turn(body["id"], body["turn"]["id"])
    assert done["status"] == "completed"


async def test_pagination(api: Api, client: httpx.AsyncClient) -> None:
    agent = await api.agent()
    sids = {await api.session(agent) for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "agent_id": agent, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/sessions", params=params)).json()
        seen += [s["id"] for s in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(sids, reverse=True)
