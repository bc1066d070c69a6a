"""Pause, ask, resume (DESIGN §4), through the HTTP API."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any

import httpx

from tests.helpers import Api, Server, read_sse, wait_for
from tether import specs


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


async def agent(
    client: httpx.AsyncClient,
    calls: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    **extra: Any,
) -> str:
    body = {
        "name": f"hitl{id(calls)}{len(tools)}{asyncio.get_running_loop().time()}",
        "model": {
            "provider": "scripted",
            "steps": [{"text": "let me", "tool_calls": calls}],
            "reply": "finished",
        },
        "tools": tools,
        **extra,
    }
    r = await client.post("/v1/agents", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def waiting(
    api: Api, client: httpx.AsyncClient, sid: str, n: int = 1
) -> list[dict[str, Any]]:
    async def pending() -> list[dict[str, Any]] | None:
        r = await client.get(f"/v1/sessions/{sid}/interrupts", params={"status": "pending"})
        items = r.json()["data"]
        return items if len(items) >= n else None

    return await wait_for(pending, 10, "pending interrupts")  # type: ignore[no-any-return]


async def respond(
    client: httpx.AsyncClient, iid: str, response: Any, **extra: Any
) -> httpx.Response:
    return await client.post(f"/v1/interrupts/{iid}/respond", json={"response": response, **extra})


async def tool_events(api: Api, sid: str, kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in await api.events(sid) if e["type"] == kind]


async def test_approve_runs_once_and_releases_the_worker(
    server: Server, api: Api, client: httpx.AsyncClient
) -> None:
    aid = await agent(
        client, [call("sleep", seconds=0.01)], [{"name": "sleep", "policy": "approve"}]
    )
    sid = await api.session(aid)
    turn = await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    assert pending["type"] == "approval"
    assert pending["tool_name"] == "sleep"
    assert pending["request"] == {
        "tool_name": "sleep",
        "arguments": {"seconds": 0.01},
        "editable": False,
    }
    assert pending["session_id"] == sid
    assert pending["turn_id"] == turn["id"]
    assert (await api.get_turn(sid, turn["id"]))["status"] == "waiting"
    assert (await client.get(f"/v1/sessions/{sid}")).json()["status"] == "waiting"
    assert server.node.worker is not None
    assert server.node.worker.busy == 0, "a waiting turn holds no worker"
    assert not await tool_events(api, sid, "tool.started"), "never runs unapproved"
    r = await respond(client, pending["id"], {"decision": "approve"}, resolved_by="alice")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "resolved"
    assert r.json()["resolved_by"] == "alice"
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed"
    assert len(await tool_events(api, sid, "tool.started")) == 1
    msgs = await api.messages(sid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[2]["content"] == "slept 0.01 seconds"
    kinds = [e["type"] for e in await api.events(sid)]
    assert kinds.count("interrupt.created") == kinds.count("interrupt.resolved") == 1
    got = (await client.get(f"/v1/interrupts/{pending['id']}")).json()
    assert got["response"] == {"decision": "approve"}


async def test_deny_gives_the_model_the_reason(api: Api, client: httpx.AsyncClient) -> None:
    aid = await agent(client, [call("sleep", seconds=5)], [{"name": "sleep", "policy": "approve"}])
    sid = await api.session(aid)
    turn = await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    r = await respond(client, pending["id"], {"decision": "deny", "reason": "too slow"})
    assert r.status_code == 200
    assert (await api.wait_turn(sid, turn["id"]))["status"] == "completed"
    tool_msg = next(m for m in await api.messages(sid) if m["role"] == "tool")
    assert "Denied" in tool_msg["content"]
    assert "too slow" in tool_msg["content"]
    assert not await tool_events(api, sid, "tool.started")
    outcomes = [d["outcome"] for d in await tool_events(api, sid, "tool.completed")]
    assert outcomes == ["denied"]


async def test_edit_arguments_only_where_allowed(api: Api, client: httpx.AsyncClient) -> None:
    aid = await agent(
        client,
        [call("sleep", seconds=30)],
        [{"name": "sleep", "policy": "approve", "editable": True}],
    )
    sid = await api.session(aid)
    turn = await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    r = await respond(
        client, pending["id"], {"decision": "approve", "arguments": {"seconds": "soon"}}
    )
    assert r.status_code == 422, "edited arguments are checked against the tool's schema"
    r = await respond(client, pending["id"], {"decision": "approve", "arguments": {"seconds": 0}})
    assert r.status_code == 200
    assert (await api.wait_turn(sid, turn["id"]))["status"] == "completed"
    assert (
        next(m for m in await api.messages(sid) if m["role"] == "tool")["content"]
        == "slept 0.0 seconds"
    )

    fixed = await agent(
        client, [call("sleep", seconds=30)], [{"name": "sleep", "policy": "approve"}]
    )
    sid = await api.session(fixed)
    await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    r = await respond(client, pending["id"], {"decision": "approve", "arguments": {"seconds": 0}})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "arguments_not_editable"
    assert (await client.get(f"/v1/interrupts/{pending['id']}")).json()["status"] == "pending"
    assert not await tool_events(api, sid, "tool.started")


async def test_question_answer_and_siblings_not_rerun(api: Api, client: httpx.AsyncClient) -> None:
    aid = await agent(
        client,
        [call("get_time"), call("ask_user", question="favourite colour?")],
        [{"name": "get_time"}, {"name": "ask_user"}],
    )
    sid = await api.session(aid)
    turn = await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    assert pending["type"] == "question"
    assert pending["request"] == {"question": "favourite colour?"}
    r = await respond(client, pending["id"], "blue")
    assert r.status_code == 200
    assert (await api.wait_turn(sid, turn["id"]))["status"] == "completed"
    tools = {m["name"]: m["content"] for m in await api.messages(sid) if m["role"] == "tool"}
    assert tools["ask_user"] == "blue"
    started = [d["name"] for d in await tool_events(api, sid, "tool.started")]
    assert started.count("get_time") == 1, "a finished sibling is never re-run"


async def test_custom_interrupt(api: Api, client: httpx.AsyncClient) -> None:
    aid = await agent(
        client,
        [call("custom_interrupt", type="payment_check", request={"amount": 42})],
        [{"name": "custom_interrupt"}],
    )
    sid = await api.session(aid)
    turn = await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    assert pending["type"] == "payment_check"
    assert pending["request"] == {"amount": 42}
    await respond(client, pending["id"], {"ok": True, "ref": "p-1"})
    assert (await api.wait_turn(sid, turn["id"]))["status"] == "completed"
    tool = next(m for m in await api.messages(sid) if m["role"] == "tool")
    assert tool["content"] == '{"ok": true, "ref": "p-1"}'


async def test_expiry_deny_and_fail(api: Api, client: httpx.AsyncClient) -> None:
    deny = await agent(
        client,
        [call("sleep", seconds=1)],
        [{"name": "sleep", "policy": "approve"}],
        interrupt_ttl_s=0.3,
        on_expire="deny",
    )
    sid = await api.session(deny)
    turn = await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    assert pending["expires_at"] is not None
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed"
    got = (await client.get(f"/v1/interrupts/{pending['id']}")).json()
    assert got["status"] == "expired"
    assert got["response"] is None, "never recorded as a human denial"
    assert "expired" in next(m for m in await api.messages(sid) if m["role"] == "tool")["content"]
    r = await respond(client, pending["id"], {"decision": "approve"})
    assert r.status_code == 409, "no answer after expiry"
    assert len(await tool_events(api, sid, "interrupt.expired")) == 1

    fail = await agent(
        client,
        [call("sleep", seconds=1)],
        [{"name": "sleep", "policy": "approve", "interrupt_ttl_s": 0.3}],
        on_expire="fail",
    )
    sid = await api.session(fail)
    turn = await api.turn(sid)
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "failed"
    assert done["reason"] == "approval_expired"
    msgs = await api.messages(sid)
    assert msgs[-1]["role"] == "tool", "the transcript stays valid"
    assert not await tool_events(api, sid, "tool.started")


async def test_an_expiry_past_a_year_is_refused_and_a_year_is_kept(
    api: Api, client: httpx.AsyncClient
) -> None:
    """An interrupt's expiry is a datetime: a ttl none can add to now (1e12 s, 1e308 s) was
    accepted, then failed every turn that paused with internal_error. Past a year is 422, on
    the agent and on a tool, at creation and on update; a year is kept to the second."""
    year = specs.MAX_INTERRUPT_TTL_S
    approve = {"name": "sleep", "policy": "approve"}
    for n, ttl in enumerate((year + 1, 1e12, 1e308, 10**30)):
        model = {"provider": "scripted"}
        for extra in ({"interrupt_ttl_s": ttl}, {"tools": [{**approve, "interrupt_ttl_s": ttl}]}):
            r = await client.post("/v1/agents", json={"name": f"ttl{n}", "model": model, **extra})
            assert r.status_code == 422, r.text
            assert "interrupt_ttl_s" in r.text and "at most" in r.text
    aid = await agent(
        client,
        [call("sleep", seconds=0)],
        [{**approve, "interrupt_ttl_s": year}],
        interrupt_ttl_s=year,
    )
    r = await client.patch(f"/v1/agents/{aid}", json={"interrupt_ttl_s": 1e12})
    assert r.status_code == 422, r.text
    sid = await api.session(aid)
    turn = await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    waits = datetime.fromisoformat(pending["expires_at"]) - datetime.fromisoformat(
        pending["created_at"]
    )
    assert abs(waits.total_seconds() - year) < 1
    assert (await api.get_turn(sid, turn["id"]))["status"] == "waiting"


async def test_cancel_while_waiting(api: Api, client: httpx.AsyncClient) -> None:
    aid = await agent(client, [call("sleep", seconds=1)], [{"name": "sleep", "policy": "approve"}])
    sid = await api.session(aid)
    await api.turn(sid)
    [pending] = await waiting(api, client, sid)
    r = await client.post(f"/v1/sessions/{sid}/interrupt", json={"wait": 0})
    assert r.status_code == 200, "a waiting turn is cancelled at once, no worker needed"
    assert r.json()["turn"]["status"] == "cancelled"
    got = (await client.get(f"/v1/interrupts/{pending['id']}")).json()
    assert got["status"] == "cancelled"
    r = await respond(client, pending["id"], {"decision": "approve"})
    assert r.status_code == 409
    assert not await tool_events(api, sid, "tool.started")
    msgs = await api.messages(sid)
    assert msgs[-1]["role"] == "tool", "the paused call got its not-run result"
    # the session goes on: the next turn reaches its own approval
    nxt = await api.turn(sid)
    [again] = await waiting(api, client, sid)
    assert again["turn_id"] == nxt["id"]


async def test_parallel_interrupts_one_by_one_and_together(
    api: Api, client: httpx.AsyncClient
) -> None:
    aid = await agent(
        client,
        [call("sleep", seconds=0), call("ask_user", question="ok?"), call("sleep", seconds=0.01)],
        [{"name": "sleep", "policy": "approve"}, {"name": "ask_user"}],
    )
    sid = await api.session(aid)
    turn = await api.turn(sid)
    items = await waiting(api, client, sid, 3)
    assert sorted(i["type"] for i in items) == ["approval", "approval", "question"]
    first, *rest = items
    await respond(
        client, first["id"], {"decision": "approve"} if first["type"] == "approval" else "yes"
    )
    assert (await api.get_turn(sid, turn["id"]))["status"] == "waiting", "waits for all"
    answers = await asyncio.gather(
        *(
            respond(client, i["id"], {"decision": "approve"} if i["type"] == "approval" else "yes")
            for i in rest
        )
    )
    assert all(a.status_code == 200 for a in answers)
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed"
    started = Counter(d["name"] for d in await tool_events(api, sid, "tool.started"))
    # approved calls ran exactly once; the asking tool is called again to receive its answer
    assert started == {"sleep": 2, "ask_user": 2}
    results = [m for m in await api.messages(sid) if m["role"] == "tool"]
    assert len(results) == 3


async def test_no_way_around_approval(api: Api, client: httpx.AsyncClient) -> None:
    aid = await agent(client, [call("sleep", seconds=0)], [{"name": "sleep", "policy": "approve"}])
    s1, s2 = await api.session(aid), await api.session(aid)
    t1, t2 = await api.turn(s1), await api.turn(s2)
    [p1] = await waiting(api, client, s1)
    [p2] = await waiting(api, client, s2)
    # concurrently from two clients: one wins
    a, b = await asyncio.gather(
        respond(client, p1["id"], {"decision": "approve"}),
        respond(client, p1["id"], {"decision": "deny"}),
    )
    assert sorted([a.status_code, b.status_code]) == [200, 409]
    assert (await api.wait_turn(s1, t1["id"]))["status"] == "completed"
    # twice
    assert (await respond(client, p1["id"], {"decision": "approve"})).status_code == 409
    # answering s1's interrupt never approves s2's call
    assert (await api.get_turn(s2, t2["id"]))["status"] == "waiting"
    # malformed approval answers
    for bad in ["yes", {"decision": "maybe"}, {"decision": "approve", "extra": 1}]:
        r = await respond(client, p2["id"], bad)
        assert r.status_code == 422, bad
    assert (
        await client.post(
            "/v1/interrupts/int_01arz3ndektsv4rrffq69g5fav/respond", json={"response": 1}
        )
    ).status_code == 404
    assert (
        await client.post("/v1/interrupts/nope/respond", json={"response": 1})
    ).status_code == 400
    assert len(await tool_events(api, s1, "tool.started")) <= 1
    assert not await tool_events(api, s2, "tool.started"), "unapproved runs: 0"


async def test_turn_stream_ends_when_waiting(api: Api, client: httpx.AsyncClient) -> None:
    aid = await agent(client, [call("ask_user", question="?")], [{"name": "ask_user"}])
    sid = await api.session(aid)
    async with client.stream(
        "POST", f"/v1/sessions/{sid}/turns", json={"input": "x", "stream": True}
    ) as r:
        kinds = [k async for _, k, _ in read_sse(r)]
    assert kinds[-1] == "interrupt.created"
