"""Fork (DESIGN §4b): a new session from a session's history up to a finished turn."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import Api, Server, store_snapshot, wait_for
from tests.integration.test_stop import tool_results_match_calls


async def fork(client: httpx.AsyncClient, sid: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/sessions/{sid}/fork", json=body)


async def forked(client: httpx.AsyncClient, sid: str, **body: Any) -> dict[str, Any]:
    r = await fork(client, sid, **body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def three_turns(api: Api) -> tuple[str, list[str]]:
    sid = await api.session(await api.agent(reply="echo"))
    done = []
    for text in ("one", "two", "three"):
        done.append((await api.wait_turn(sid, (await api.turn(sid, text))["id"]))["id"])
    return sid, done


def content(msgs: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(m["role"], m["content"]) for m in msgs]


async def test_fork_after_and_before_a_turn(
    api: Api, client: httpx.AsyncClient, server: Server
) -> None:
    sid, turns = await three_turns(api)
    source_messages = await api.messages(sid)
    before = await store_snapshot(server)

    after = await forked(client, sid, turn_id=turns[1], metadata={"why": "retry"})
    assert (
        after["id"] != sid
        and after["agent_id"] == (await api.c.get(f"/v1/sessions/{sid}")).json()["agent_id"]
    )
    assert after["status"] == "idle" and after["metadata"] == {"why": "retry"}
    assert after["forked_from"] == {"session_id": sid, "turn_id": turns[1], "at": "after"}
    assert after["turn"] is None
    msgs = await api.messages(after["id"])
    assert content(msgs) == content(source_messages[:4])
    assert not {m["id"] for m in msgs} & {m["id"] for m in source_messages}  # new ids
    assert [m["seq"] for m in msgs] == [1, 2, 3, 4]
    copied = (await client.get(f"/v1/sessions/{after['id']}/turns")).json()["data"]
    assert [(t["seq"], t["status"], t["input"]) for t in copied] == [
        (1, "completed", [{"role": "user", "content": "one"}]),
        (2, "completed", [{"role": "user", "content": "two"}]),
    ]
    assert not {t["id"] for t in copied} & set(turns)
    assert {m["turn_id"] for m in msgs} == {t["id"] for t in copied}
    assert after["last_turn"] == {"id": copied[-1]["id"], "status": "completed"}
    events = await api.events(after["id"])
    assert events[0]["type"] == "session.forked"
    assert events[0]["data"]["forked_from"] == after["forked_from"]
    # the log alone says what the fork holds: its copied turns, then their messages
    assert events[0]["data"]["turns"] == copied
    assert [e["type"] for e in events[1:]] == ["message.completed"] * 4

    early = await forked(client, sid, turn_id=turns[1], at="before")
    assert early["forked_from"]["at"] == "before"
    assert content(await api.messages(early["id"])) == content(source_messages[:2])

    # the source is untouched: only the two new sessions (and their rows) were added
    after_forks = await store_snapshot(server)
    for table in ("turns", "messages", "events"):
        assert set(before[table]) <= set(after_forks[table])
    source = (await api.c.get(f"/v1/sessions/{sid}")).json()
    assert source["forked_from"] is None
    assert await api.messages(sid) == source_messages

    # the fork is usable at once, and its next model call sees the copied history
    nxt = await api.turn(after["id"], "four")
    assert (await api.wait_turn(after["id"], nxt["id"]))["status"] == "completed"
    assert nxt["seq"] == 3
    assert content(await api.messages(after["id"]))[-2:] == [
        ("user", "four"),
        ("assistant", "four"),
    ]


async def test_fork_without_a_turn_takes_the_last_finished_one(
    api: Api, client: httpx.AsyncClient
) -> None:
    sid, turns = await three_turns(api)
    whole = await forked(client, sid)
    assert whole["forked_from"] == {"session_id": sid, "turn_id": turns[2], "at": "after"}
    assert content(await api.messages(whole["id"])) == content(await api.messages(sid))
    # a session whose only turn runs: no finished turn, an empty history
    slow = await api.agent(reply="echo", tokens=500, token_delay_ms=20)
    busy = await api.session(slow)
    first = await api.turn(busy, "long")

    async def running_now() -> bool:
        return (await api.get_turn(busy, first["id"]))["status"] == "running"

    await wait_for(running_now, 10, "turn running")
    empty = await forked(client, busy, input="start over")
    assert empty["forked_from"] == {"session_id": busy, "turn_id": None, "at": "after"}
    assert empty["turn"]["status"] == "queued"  # its first turn, from `input`

    async def fork_turn_started() -> bool:
        turn = await api.get_turn(empty["id"], empty["turn"]["id"])
        return turn["status"] in ("running", "completed")

    await wait_for(fork_turn_started, 10, "the fork's first turn running")
    assert content(await api.messages(empty["id"]))[0] == ("user", "start over")
    for session in (busy, empty["id"]):  # both echo for 10 s: stopped, not waited for
        await client.post(f"/v1/sessions/{session}/interrupt", json={})


async def test_fork_from_a_stopped_turn_is_valid_for_the_next_call(
    api: Api, client: httpx.AsyncClient
) -> None:
    steps = [
        {
            "tool_calls": [
                {"name": "get_time"},
                {"name": "sleep", "arguments": {"seconds": 30}},
            ]
        }
    ]
    sid = await api.session(await api.agent(steps=steps, reply="echo"))
    turn = await api.turn(sid, "go")

    async def tools_running() -> bool:
        return "tool.started" in [e["type"] for e in await api.events(sid)]

    await wait_for(tools_running, 10, "the tool batch running")
    r = await client.post(f"/v1/sessions/{sid}/interrupt", json={})
    assert r.json()["turn"]["status"] == "cancelled", r.text
    copy = await forked(client, sid, turn_id=turn["id"])
    msgs = await api.messages(copy["id"])
    tool_results_match_calls(msgs)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool"]
    assert {m["content"] for m in msgs if m["role"] == "tool"} >= {
        "Tool call interrupted: the turn was stopped."
    }
    # copied as it was: a stopped turn stays cancelled
    [copied] = (await client.get(f"/v1/sessions/{copy['id']}/turns")).json()["data"]
    assert copied["status"] == "cancelled" and copied["reason"] == "client_cancelled"
    # (a provider that refuses a call without its result takes the next turn of such a
    # fork: test_anthropic_provider.py)


async def test_fork_refusals(api: Api, client: httpx.AsyncClient, server: Server) -> None:
    slow = await api.agent(
        steps=[{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 30}}]}]
    )
    sid = await api.session(slow)
    running = await api.turn(sid, "long")

    async def running_now() -> bool:
        return (await api.get_turn(sid, running["id"]))["status"] == "running"

    await wait_for(running_now, 10, "turn running")
    r = await fork(client, sid, turn_id=running["id"])
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "turn_not_finished"
    assert running["id"] in error["message"] and "running" in error["message"]
    assert "before" in error["message"]
    # before a running turn, the history is finished: allowed
    assert (await fork(client, sid, turn_id=running["id"], at="before")).status_code == 201
    # a turn id of another session
    other = await api.session(slow)
    r = await fork(client, other, turn_id=running["id"])
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = await fork(client, sid, turn_id="turn_01arz3ndektsv4rrffq69g5fav")
    assert r.status_code == 404
    r = await fork(client, "01arz3ndektsv4rrffq69g5fav.local")
    assert r.status_code == 404
    for bad in ({"at": "during"}, {"turn_id": "nope"}, {"metadata": []}, {"extra": 1}):
        r = await fork(client, sid, **bad)
        assert r.status_code == 422, (bad, r.text)
    r = await fork(client, "not-a-session")
    assert r.status_code in (400, 404, 422)
    await client.post(f"/v1/sessions/{sid}/interrupt", json={})


async def test_fork_is_idempotent_and_audited(api: Api, client: httpx.AsyncClient) -> None:
    sid, turns = await three_turns(api)
    headers = {"Idempotency-Key": "fork-once"}
    body = {"turn_id": turns[0]}
    first = await client.post(f"/v1/sessions/{sid}/fork", json=body, headers=headers)
    again = await client.post(f"/v1/sessions/{sid}/fork", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.json()["id"] == again.json()["id"]
    other = await client.post(f"/v1/sessions/{sid}/fork", json={}, headers=headers)
    assert other.status_code == 422
    audit = (await client.get("/v1/audit")).json()["data"]
    forks = [a for a in audit if a["action"] == "session.fork"]
    assert len(forks) == 1
    assert forks[0]["target"] == first.json()["id"]
    assert forks[0]["details"] == {"source": sid, "turn_id": turns[0], "at": "after"}
