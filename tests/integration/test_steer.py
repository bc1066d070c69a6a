"""Steer (DESIGN §3): input that joins the running turn, delivered at its next step boundary,
exactly once whatever happens to the turn."""

from __future__ import annotations

import asyncio
import functools
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import Api, Server, running_server, wait_for
from tether import errors
from tether.runtime.tools import builtin_registry
from tether.store import session_write

# a final answer that streams for about a second: a steer lands while it is in flight
SLOW_ANSWER = {"reply": "echo", "tokens": 50, "token_delay_ms": 20}
SLOW_TOOL = {"steps": [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 1}}]}]}


async def stubborn(seconds: float) -> str:
    """Ignores cancellation for a while: its turn stays `cancelling` that long."""
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


async def steer(client: httpx.AsyncClient, sid: str, input: Any) -> dict[str, Any]:
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"input": input, "on_busy": "steer"})
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


async def status_is(api: Api, sid: str, tid: str, status: str) -> None:
    async def check() -> bool:
        return (await api.get_turn(sid, tid))["status"] == status

    await wait_for(check, 10, f"turn {status}")


async def event_seen(api: Api, sid: str, type: str) -> None:
    async def check() -> bool:
        return any(e["type"] == type for e in await api.events(sid))

    await wait_for(check, 10, f"event {type}")


def roles(msgs: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(m["role"], m["content"] if m["role"] != "tool" else None) for m in msgs]


def echo(text: str, tokens: int = 50) -> str:
    """What the scripted model streams for `reply: echo` with `tokens`."""
    words = text.split()
    return "".join(words[i % len(words)] + " " for i in range(tokens))


async def test_a_steer_joins_the_final_answer_in_flight(
    api: Api, client: httpx.AsyncClient
) -> None:
    """Steered while the model streams what would be its final answer: the answer is kept,
    the steer joins the transcript after it, and the model is called again and sees it."""
    sid = await api.session(await api.agent(**SLOW_ANSWER))
    turn = await api.turn(sid, "hello")
    await status_is(api, sid, turn["id"], "running")
    answer = await steer(client, sid, "use JWT")
    assert answer["id"] == turn["id"] and answer["status"] == "running"
    assert answer["steer"]["joined"] is True
    [message_id] = answer["steer"]["message_ids"]
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed"
    assert done["usage"]["model_calls"] == 2
    msgs = await api.messages(sid)
    assert roles(msgs) == [
        ("user", "hello"),
        ("assistant", echo("hello")),
        ("user", "use JWT"),
        ("assistant", echo("use JWT")),
    ]
    assert msgs[2]["id"] == message_id and msgs[2]["turn_id"] == turn["id"]
    events = await api.events(sid)
    steered = [e for e in events if e["type"] == "turn.steered"]
    assert [e["data"]["message_ids"] for e in steered] == [[message_id]]
    assert [e["type"] for e in events].count("turn.completed") == 1
    r = await client.get(f"/v1/sessions/{sid}/turns")
    assert [t["id"] for t in r.json()["data"]] == [turn["id"]]  # no other turn was made


async def test_several_steers_are_delivered_together_in_order(
    api: Api, client: httpx.AsyncClient
) -> None:
    sid = await api.session(await api.agent(**SLOW_ANSWER))
    turn = await api.turn(sid, "hello")
    await status_is(api, sid, turn["id"], "running")
    first = await steer(client, sid, "one")
    two = [{"role": "user", "content": "two"}, {"role": "user", "content": "three"}]
    second = await steer(client, sid, two)
    ids = first["steer"]["message_ids"] + second["steer"]["message_ids"]
    assert len(ids) == 3 and first["id"] == second["id"] == turn["id"]
    await api.wait_turn(sid, turn["id"])
    msgs = await api.messages(sid)
    assert roles(msgs)[2:] == [
        ("user", "one"),
        ("user", "two"),
        ("user", "three"),
        ("assistant", echo("three")),
    ]
    assert [m["id"] for m in msgs[2:5]] == ids
    steered = [e for e in await api.events(sid) if e["type"] == "turn.steered"]
    assert [e["data"]["message_ids"] for e in steered] == [ids]  # together, at one boundary


async def test_a_steer_during_a_tool_batch_joins_after_its_results(
    api: Api, client: httpx.AsyncClient
) -> None:
    sid = await api.session(await api.agent(**SLOW_TOOL, reply="echo", tokens=3))
    turn = await api.turn(sid, "work")
    await event_seen(api, sid, "tool.started")
    answer = await steer(client, sid, "also this")
    assert answer["steer"]["joined"] is True
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed" and done["usage"]["model_calls"] == 2
    msgs = await api.messages(sid)
    assert roles(msgs) == [
        ("user", "work"),
        ("assistant", None),
        ("tool", None),
        ("user", "also this"),
        ("assistant", echo("also this", 3)),
    ]
    assert msgs[2]["content"].startswith("slept")  # the batch in flight was not cut
    types = [e["type"] for e in await api.events(sid)]
    assert types.index("tool.completed") < types.index("turn.steered")


async def test_a_waiting_turn_takes_the_steer_when_it_resumes(
    api: Api, client: httpx.AsyncClient
) -> None:
    steps = [{"tool_calls": [{"name": "ask_user", "arguments": {"question": "which?"}}]}]
    sid = await api.session(
        await api.agent(steps=steps, reply="echo", tokens=2, tools=[{"name": "ask_user"}])
    )
    turn = await api.turn(sid, "start")
    await status_is(api, sid, turn["id"], "waiting")
    answer = await steer(client, sid, "prefer blue")
    assert answer["id"] == turn["id"] and answer["steer"]["joined"] is True
    # a steer does not resume a waiting turn: its question still needs an answer
    assert (await api.get_turn(sid, turn["id"]))["status"] == "waiting"
    r = await client.get(f"/v1/sessions/{sid}/interrupts", params={"status": "pending"})
    [asked] = r.json()["data"]
    r = await client.post(f"/v1/interrupts/{asked['id']}/respond", json={"response": "red"})
    assert r.status_code == 200, r.text
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed"
    msgs = await api.messages(sid)
    assert roles(msgs) == [
        ("user", "start"),
        ("assistant", None),
        ("tool", None),
        ("user", "prefer blue"),
        ("assistant", echo("prefer blue", 2)),
    ]
    assert "red" in msgs[2]["content"]


async def test_a_queued_turn_takes_the_steer_as_extra_input(
    api: Api, client: httpx.AsyncClient
) -> None:
    """The head of the queue (nothing active) takes the steer with its input, when it
    starts. Here the queue waits behind a turn that is being stopped."""
    sid = await api.session(
        await api.agent(
            steps=[{"tool_calls": [{"name": "stubborn", "arguments": {"seconds": 1}}]}],
            reply="echo",
            tokens=2,
            tools=[{"name": "stubborn"}],
        )
    )
    first = await api.turn(sid, "first")
    await event_seen(api, sid, "tool.started")
    queued = await api.turn(sid, "second")
    r = await client.post(f"/v1/sessions/{sid}/interrupt", json={"wait": 0})
    assert r.json()["turn"]["status"] == "cancelling", r.text
    # the turn being stopped reaches no boundary: the next in line takes the steer
    answer = await steer(client, sid, "and this")
    assert answer["id"] == queued["id"] and answer["steer"]["joined"] is True
    assert (await api.wait_turn(sid, first["id"]))["status"] == "cancelled"
    assert (await api.wait_turn(sid, queued["id"]))["status"] == "completed"
    theirs = [m for m in await api.messages(sid) if m["turn_id"] == queued["id"]]
    assert roles(theirs)[:3] == [("user", "second"), ("user", "and this"), ("assistant", None)]
    assert theirs[1]["id"] == answer["steer"]["message_ids"][0]


async def test_a_steer_with_nothing_under_way_is_a_new_turn(
    api: Api, client: httpx.AsyncClient
) -> None:
    sid = await api.session(await api.agent(reply="echo", tokens=2))
    answer = await steer(client, sid, "hi")
    assert answer["steer"]["joined"] is False
    assert answer["status"] == "queued" and answer["on_busy"] == "steer"
    [message_id] = answer["steer"]["message_ids"]
    await api.wait_turn(sid, answer["id"])
    msgs = await api.messages(sid)
    assert [(m["id"], m["content"]) for m in msgs][:1] == [(message_id, "hi")]
    assert not [e for e in await api.events(sid) if e["type"] == "turn.steered"]


async def test_a_steer_the_turn_never_reached_becomes_a_new_turn(
    api: Api, client: httpx.AsyncClient
) -> None:
    """Stopped before its next boundary, the turn hands its pending steer over as a new
    queued turn (scope `turn`: it runs); with scope `all`, that turn is stopped too. Either
    way the steer's message is in exactly one turn, with the id its 202 gave."""
    agent = await api.agent(
        steps=[{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 2}}]}],
        reply="echo",
        tokens=2,
    )
    for scope, outcome in (("turn", "completed"), ("all", "cancelled")):
        sid = await api.session(agent)
        turn = await api.turn(sid, "long job")
        await event_seen(api, sid, "tool.started")
        [message_id] = (await steer(client, sid, "never mind"))["steer"]["message_ids"]
        r = await client.post(f"/v1/sessions/{sid}/interrupt", json={"scope": scope})
        assert r.json()["turn"]["status"] == "cancelled", r.text
        turns = (await client.get(f"/v1/sessions/{sid}/turns")).json()["data"]
        assert len(turns) == 2 and turns[0]["id"] == turn["id"], turns
        made = turns[1]
        assert made["on_busy"] == "steer"
        assert made["input"] == [{"id": message_id, "role": "user", "content": "never mind"}]
        done = await api.wait_turn(sid, made["id"])
        assert done["status"] == outcome, (scope, done)
        queued = [e for e in await api.events(sid) if e["type"] == "turn.queued"]
        assert queued[-1]["data"]["from_steer"] == {"turn_id": turn["id"]}
        if outcome == "completed":
            msgs = [m for m in await api.messages(sid) if m["turn_id"] == made["id"]]
            assert roles(msgs)[0] == ("user", "never mind")  # then the script, from its start
            assert roles(msgs)[-1] == ("assistant", echo("never mind", 2))
            assert msgs[0]["id"] == message_id
        assert not [e for e in await api.events(sid) if e["type"] == "turn.steered"]


async def test_a_failed_turn_hands_its_steer_over(api: Api, client: httpx.AsyncClient) -> None:
    """max_steps reached at the step the steer waited for: the loop cannot call the model
    again, so the boundary does not take the steer; the turn fails and the steer is a new
    turn."""
    sid = await api.session(
        await api.agent(
            steps=[{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 1}}]}],
            reply="echo",
            tokens=2,
            max_steps=2,
        )
    )
    turn = await api.turn(sid, "go")
    await event_seen(api, sid, "tool.started")
    [message_id] = (await steer(client, sid, "then this"))["steer"]["message_ids"]
    failed = await api.wait_turn(sid, turn["id"])
    assert failed["status"] == "failed" and failed["reason"] == "max_steps"
    turns = (await client.get(f"/v1/sessions/{sid}/turns")).json()["data"]
    assert len(turns) == 2
    await api.wait_turn(sid, turns[1]["id"])  # the same script: it fails the same way
    users = [(m["id"], m["turn_id"]) for m in await api.messages(sid) if m["role"] == "user"]
    assert users[1] == (message_id, turns[1]["id"])


async def test_rolled_back_turn_takes_its_delivered_steers_with_it(
    api: Api, client: httpx.AsyncClient
) -> None:
    steps = [
        {"tool_calls": [{"name": "sleep", "arguments": {"seconds": 1}}]},
        {"tool_calls": [{"name": "sleep", "arguments": {"seconds": 30}}]},
    ]
    sid = await api.session(await api.agent(steps=steps, reply="echo"))
    turn = await api.turn(sid, "go")
    await event_seen(api, sid, "tool.started")
    await steer(client, sid, "steered")
    await event_seen(api, sid, "turn.steered")
    r = await client.post(f"/v1/sessions/{sid}/interrupt", json={"mode": "rollback"})
    assert r.json()["turn"]["status"] == "cancelled", r.text
    assert await api.messages(sid) == []
    turns = (await client.get(f"/v1/sessions/{sid}/turns")).json()["data"]
    assert [t["id"] for t in turns] == [turn["id"]]  # delivered: no new turn for it


async def test_a_repeated_steer_with_its_idempotency_key_is_one_steer(
    api: Api, client: httpx.AsyncClient
) -> None:
    sid = await api.session(await api.agent(**SLOW_ANSWER))
    turn = await api.turn(sid, "hello")
    await status_is(api, sid, turn["id"], "running")
    body = {"input": "use JWT", "on_busy": "steer"}
    headers = {"Idempotency-Key": "steer-once"}
    first = await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)
    again = await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.json() == again.json()
    await api.wait_turn(sid, turn["id"])
    users = [m["content"] for m in await api.messages(sid) if m["role"] == "user"]
    assert users == ["hello", "use JWT"]


async def test_steer_refusals(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent())
    await client.delete(f"/v1/sessions/{sid}")
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"input": "x", "on_busy": "steer"})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "session_closed")
    r = await client.post(
        "/v1/sessions/01arz3ndektsv4rrffq69g5fav.local/turns",
        json={"input": "x", "on_busy": "steer"},
    )
    assert r.status_code == 404
    r = await client.post(f"/v1/sessions/{sid}/turns", json={"input": [], "on_busy": "steer"})
    assert r.status_code in (400, 422)


@pytest.mark.slow
async def test_steers_racing_turn_ends_are_each_delivered_once(
    api: Api, client: httpx.AsyncClient, server: Server
) -> None:
    """500 steers sent right behind turns that end within milliseconds: each lands in the
    running turn (delivered at its final answer, or taken at its claim), in the head of the
    queue, or, when the turn completed first, in a new turn; never lost, never twice, and
    always followed by a model call that saw it. (Through the service, not HTTP: the race is
    the store's, and 1000 requests would only make it slower.)"""
    agent = await api.agent(reply="echo", tokens=3, token_delay_ms=1)
    sessions, rounds = 20, 25
    sids = [await api.session(agent) for _ in range(sessions)]
    svc = server.node.service
    tenant = "default"
    chance = random.Random(14)
    outcomes: Counter[tuple[bool, str]] = Counter()

    async def started(sid: str, turn_id: str) -> bool:
        return (await svc.get_turn(tenant, sid, turn_id)).status.value != "queued"

    async def drive(sid: str) -> list[tuple[str, str]]:
        sent = []
        for i in range(rounds):
            turn = await svc.start_turn(tenant, sid, f"turn {i}")
            if chance.random() < 0.8:
                # once it started, after a jitter about as long as the turn takes (not to let
                # anything settle: to vary where the steer lands): while it streams, as it
                # completes, or just after (then a new turn)
                await wait_for(
                    functools.partial(started, sid, turn.id), 30, "its start", interval=0.002
                )
                await asyncio.sleep(chance.uniform(0, 0.01))
            # else at once: most likely before its claim, as extra input
            steered = await svc.steer(tenant, sid, f"steer {i}")
            outcomes[steered.joined, steered.turn.status.value] += 1
            sent.append((steered.message_ids[0], f"steer {i}"))
        return sent

    sent = await asyncio.gather(*(drive(sid) for sid in sids))

    async def all_idle() -> bool:
        for sid in sids:
            r = await client.get(f"/v1/sessions/{sid}")
            if r.json()["status"] != "idle":
                return False
        return True

    await wait_for(all_idle, 120, "every session idle", interval=0.2)
    for sid, steers in zip(sids, sent, strict=True):
        msgs = await api.messages(sid)
        turns = (await client.get(f"/v1/sessions/{sid}/turns", params={"limit": 1000})).json()
        assert {t["status"] for t in turns["data"]} == {"completed"}
        by_id = {m["id"]: m for m in msgs}
        users = [m for m in msgs if m["role"] == "user"]
        assert len(users) == rounds * 2, "every input and every steer exactly once"
        for message_id, text in steers:
            message = by_id[message_id]
            assert message["content"] == text
            after = [
                m
                for m in msgs
                if m["turn_id"] == message["turn_id"]
                and m["seq"] > message["seq"]
                and m["role"] == "assistant"
            ]
            assert after, f"no model call saw {text!r}"

    def settled(conn: Any) -> tuple[int, int]:
        from sqlalchemy import func, select

        from tether.store.schema import sessions as sessions_table
        from tether.store.schema import steers as steers_table

        pending = conn.execute(
            select(func.count()).where(steers_table.c.status == "pending")
        ).scalar()
        counted = conn.execute(select(func.sum(sessions_table.c.pending_steers))).scalar()
        return pending, counted

    assert await server.node.store.db.read(settled) == (0, 0)
    # both sides of the race were run: steers that joined a running turn, and steers that
    # came after its end
    assert outcomes[True, "running"] and outcomes[False, "queued"], outcomes


async def test_a_boundary_write_that_fails_leaves_the_steer_pending(
    api: Api, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes away during the write that delivers a steer (as a worker killed in
    the middle of it): nothing of that write stays, the turn is left to its lease, and its
    next attempt delivers the steer, once."""
    flush = session_write.SessionWrite.flush
    failed: list[str] = []

    def flaky_flush(sw: session_write.SessionWrite) -> None:
        if not failed and any(e.type.value == "turn.steered" for e in sw.events):
            failed.append(sw.id)
            raise errors.Unavailable("the store went away")
        flush(sw)

    monkeypatch.setattr(session_write.SessionWrite, "flush", flaky_flush)
    sid = await api.session(await api.agent(**SLOW_ANSWER))
    turn = await api.turn(sid, "hello")
    await status_is(api, sid, turn["id"], "running")
    [message_id] = (await steer(client, sid, "use JWT"))["steer"]["message_ids"]
    done = await api.wait_turn(sid, turn["id"], timeout=30)
    assert failed == [sid]
    assert done["status"] == "completed" and done["attempt"] == 2
    msgs = await api.messages(sid)
    # the answer in flight was never committed: the next attempt starts the turn again, and
    # its claim (a boundary: no step made yet) takes the steer with the input
    assert roles(msgs) == [("user", "hello"), ("user", "use JWT"), ("assistant", echo("use JWT"))]
    assert msgs[1]["id"] == message_id
    steered = [e for e in await api.events(sid) if e["type"] == "turn.steered"]
    assert [e["data"]["message_ids"] for e in steered] == [[message_id]]
