"""The SDK against a real server: every resource, sync and async, and a typed error for each
status the API answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from tests.helpers import Server, running_server, scripted_agent
from tether.auth import Role
from tether.client import AsyncTether, Tether, errors, models

T = TypeVar("T")

SLOW = {"reply": "word " * 50, "tokens": 400, "token_delay_ms": 10}
GATED_STEPS = [{"text": "checking", "tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}]
ASK_STEPS = [{"text": "", "tool_calls": [{"name": "ask_user", "arguments": {"question": "Who?"}}]}]


async def _key(server: Server, role: Role, tenant: str = "acme") -> str:
    return (await server.node.keys.create(tenant, role))[1]


async def test_every_resource_async(server: Server) -> None:
    admin = await _key(server, Role.ADMIN)
    async with AsyncTether(server.url, admin) as sdk:
        # agents
        agent = await sdk.agents.create(scripted_agent("helper", reply="fixed answer"))
        other = await sdk.agents.create(scripted_agent("other"))
        assert isinstance(agent, models.Agent)
        assert agent.model.provider == "scripted"
        paged = [a.id async for a in sdk.agents.list(limit=1)]  # a page per agent
        assert sorted(paged) == sorted([agent.id, other.id])
        assert (await sdk.agents.get(agent.id)).name == "helper"
        changed = await sdk.agents.update(agent.id, instructions="be brief")
        assert changed.instructions == "be brief"
        await sdk.agents.delete(other.id)
        with pytest.raises(errors.NotFound):
            await sdk.agents.get(other.id)

        # sessions, with a first turn
        session = await sdk.sessions.create("helper", metadata={"k": "v"}, input="first")
        assert session.metadata == {"k": "v"}
        assert session.turn is not None
        first = await sdk.turns.stream(session.id, session.turn.id)
        assert await first.text() == "fixed answer"
        assert (await first.final()).status == "completed"
        second = await sdk.sessions.create("helper")
        listed = [s.id async for s in sdk.sessions.list(agent_id=agent.id, limit=1)]
        assert listed == [second.id, session.id]
        assert [s.id async for s in sdk.sessions.list(status="closed")] == []
        assert (await sdk.sessions.get(session.id)).status == "idle"

        # turns
        turn = await sdk.turns.create(session.id, "again")
        assert isinstance(turn, models.Turn)
        stream = await sdk.turns.stream(session.id, turn.id)
        assert (await stream.final()).status == "completed"
        streamed = await sdk.turns.create(session.id, "streamed", stream=True)
        deltas = [text async for text in streamed.text_deltas()]
        assert "".join(deltas) == "fixed answer"
        assert streamed.turn is not None
        assert streamed.turn.done
        assert [m.role for m in streamed.messages] == ["user", "assistant"]
        turns = [t async for t in sdk.turns.list(session.id, limit=2)]
        assert [t.id for t in turns][1:] == [turn.id, streamed.turn_id]
        assert (await sdk.turns.get(session.id, turn.id)).status == "completed"
        messages = await sdk.sessions.messages(session.id, limit=2).to_list()
        assert [m.role for m in messages] == ["user", "assistant"] * 3

        # events: the stored log, and the live stream
        stored = await sdk.events.list(session.id, limit=5).to_list()
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        live = await sdk.sessions.events(session.id, after=stored[-3].seq)
        async with live:
            tail = [await live.__anext__() for _ in range(2)]
        assert [e.seq for e in tail] == [stored[-2].seq, stored[-1].seq]

        # stop: a slow reply is interrupted, its partial text kept
        await sdk.agents.create(scripted_agent("slow", **SLOW))
        slow = await sdk.sessions.create("slow")
        running = await sdk.turns.create(slow.id, "go", stream=True)
        async for event in running:
            if event.delta:
                break
        result = await sdk.sessions.stop(slow.id)
        assert result.confirmed
        assert result.turn is not None
        assert result.turn.status == "cancelled"
        rest = await running.follow()
        assert (await rest.final()).reason == "client_cancelled"
        [*_, partial] = await sdk.sessions.messages(slow.id).to_list()
        assert partial.status == "interrupted"
        assert partial.content
        assert await rest.text() == partial.content
        queued = await sdk.turns.create(slow.id, "later")
        cancelled = await sdk.turns.cancel(slow.id, queued.id, mode="rollback")
        assert cancelled.turn is not None
        assert cancelled.turn.status == "cancelled"

        # interrupts: approve, deny, answer
        tools = [{"name": "sleep", "policy": "approve"}, {"name": "ask_user"}]
        await sdk.agents.create(scripted_agent("gated", steps=GATED_STEPS, tools=tools))
        gated = await sdk.sessions.create("gated")
        waiting = await sdk.turns.create(gated.id, "do it", stream=True)
        await waiting.until_done()
        assert waiting.waiting
        [pending] = waiting.interrupts
        assert pending.type == "approval"
        assert [i.id async for i in sdk.interrupts.list(gated.id, status="pending")] == [pending.id]
        assert (await sdk.interrupts.get(pending.id)).pending
        approved = await sdk.interrupts.approve(pending.id, reason="fine")
        assert approved.response == {"decision": "approve", "reason": "fine"}
        resumed = await waiting.follow()
        assert (await resumed.final()).status == "completed"
        with pytest.raises(errors.InterruptNotPending):
            await sdk.interrupts.deny(pending.id)
        denied_turn = await sdk.turns.create(gated.id, "again", stream=True)
        [pending] = (await denied_turn.until_done()).interrupts
        await sdk.interrupts.deny(pending.id, reason="no")
        assert (await (await denied_turn.follow()).final()).status == "completed"
        await sdk.agents.create(scripted_agent("asker", steps=ASK_STEPS, tools=tools))
        asker = await sdk.sessions.create("asker")
        asking = await sdk.turns.create(asker.id, "hi", stream=True)
        [question] = (await asking.until_done()).interrupts
        assert question.request == {"question": "Who?"}
        assert (await sdk.interrupts.answer(question.id, "me")).response == "me"
        assert (await (await asking.follow()).final()).status == "completed"

        # keys and the audit log
        made = await sdk.keys.create("read", name="ci")
        assert made.key.startswith("tth_")
        assert made.id in [k.id async for k in sdk.keys.list()]
        assert (await sdk.keys.revoke(made.id)).revoked_at is not None
        actions = [entry.action async for entry in sdk.audit.list(limit=10)]
        assert "key.revoke" in actions
        assert "agent.create" in actions

        # closing
        closed = await sdk.sessions.close(session.id)
        assert closed.status == "closed"
        with pytest.raises(errors.SessionClosed):
            await sdk.turns.create(session.id, "too late")


def _sync_resources(url: str, key: str) -> None:
    with Tether(url, key) as sdk:
        gated_tools = [{"name": "sleep", "policy": "approve"}]
        agent = sdk.agents.create(scripted_agent("sync", steps=GATED_STEPS, tools=gated_tools))
        assert [a.name for a in sdk.agents.list()] == ["sync"]
        assert sdk.agents.get(agent.id).name == "sync"
        assert sdk.agents.update(agent.id, metadata={"x": 1}).metadata == {"x": 1}
        session = sdk.sessions.create(agent.id)
        assert sdk.sessions.get(session.id).status == "idle"
        assert [s.id for s in sdk.sessions.list()] == [session.id]
        with sdk.turns.create(session.id, "go", stream=True) as stream:
            stream.until_done()
        assert stream.waiting
        [pending] = list(sdk.interrupts.list(session.id, status="pending"))
        assert sdk.interrupts.get(pending.id).tool_name == "sleep"
        sdk.interrupts.approve(pending.id)
        turn = stream.follow().final()
        assert turn.status == "completed"
        assert sdk.turns.get(session.id, turn.id).status == "completed"
        assert [t.id for t in sdk.turns.list(session.id)] == [turn.id]
        roles = [m.role for m in sdk.sessions.messages(session.id, limit=2)]
        assert roles == ["user", "assistant", "tool", "assistant"]
        events = sdk.events.list(session.id).to_list()
        with sdk.events.stream(session.id, after=events[-2].seq) as live:
            assert next(live).seq == events[-1].seq
        queued = sdk.turns.create(session.id, "more")
        assert sdk.turns.cancel(session.id, queued.id).turn is not None
        assert sdk.sessions.stop(session.id).turn is None  # nothing left to stop
        second = sdk.turns.create(session.id, "and more", stream=True)
        [pending] = second.until_done().interrupts
        sdk.interrupts.deny(pending.id)
        rest = second.follow()
        answer = rest.text()
        assert rest.final().status == "completed"
        assert answer == list(sdk.sessions.messages(session.id))[-1].content
        made = sdk.keys.create("write")
        assert made.id in [k.id for k in sdk.keys.list()]
        sdk.keys.revoke(made.id)
        assert any(e.action == "key.create" for e in sdk.audit.list())
        assert sdk.sessions.close(session.id).status == "closed"
        sdk.agents.delete(agent.id)
        with pytest.raises(errors.NotFound):
            sdk.agents.get(agent.id)


async def test_every_resource_sync(server: Server) -> None:
    """The sync client, in a thread (the server runs on this event loop)."""
    await asyncio.to_thread(_sync_resources, server.url, await _key(server, Role.ADMIN))


STEERABLE = {"reply": "echo", "tokens": 40, "token_delay_ms": 20}


async def test_steer_and_fork_async(server: Server) -> None:
    admin = await _key(server, Role.ADMIN)
    async with AsyncTether(server.url, admin) as sdk:
        await sdk.agents.create(scripted_agent("steerable", **STEERABLE))
        session = await sdk.sessions.create("steerable")
        stream = await sdk.turns.create(session.id, "hello", stream=True)
        async for event in stream:
            if event.delta:
                break
        steered = await sdk.turns.steer(session.id, "use JWT")
        assert steered.steer is not None and steered.steer.joined
        assert steered.id == stream.turn_id
        rest = await stream.follow()
        events = [e async for e in rest]
        [delivered] = [e for e in events if e.type == "turn.steered"]
        assert delivered.steered == steered.steer.message_ids
        assert events[-1].terminal and events[-1].turn is not None
        assert events[-1].turn.usage.model_calls == 2
        running = await sdk.turns.create(session.id, "again")
        with pytest.raises(errors.TurnNotFinished):
            await sdk.sessions.fork(session.id, turn_id=running.id)
        await sdk.sessions.stop(session.id)
        fork = await sdk.sessions.fork(session.id, turn_id=steered.id, metadata={"try": 2})
        assert fork.forked_from == models.ForkedFrom(
            session_id=session.id, turn_id=steered.id, at="after"
        )
        assert fork.metadata == {"try": 2}
        [first, *_] = await sdk.events.list(fork.id, limit=1).to_list()
        assert first.type == "session.forked" and first.forked_from == fork.forked_from
        contents = [m.content async for m in sdk.sessions.messages(fork.id)]
        assert contents[:3] == ["hello", contents[1], "use JWT"]
        idle = await sdk.sessions.create("steerable")
        new = await sdk.turns.create(idle.id, "hi", on_busy="steer")
        assert new.steer is not None and not new.steer.joined


def _sync_steer_and_fork(url: str, key: str) -> None:
    with Tether(url, key) as sdk:
        sdk.agents.create(scripted_agent("steerable-sync", **STEERABLE))
        session = sdk.sessions.create("steerable-sync")
        with sdk.turns.create(session.id, "hello", stream=True) as stream:
            for event in stream:
                if event.delta:
                    break
            steered = sdk.turns.steer(session.id, "use JWT")
            assert steered.steer is not None and steered.steer.joined
            final = stream.final()
        assert final.usage.model_calls == 2
        fork = sdk.sessions.fork(session.id, at="before", turn_id=final.id, input="retry")
        assert fork.forked_from is not None and fork.forked_from.at == "before"
        assert fork.turn is not None and fork.turn.status == "queued"


async def test_steer_and_fork_sync(server: Server) -> None:
    await asyncio.to_thread(_sync_steer_and_fork, server.url, await _key(server, Role.ADMIN))


async def _raises(expected: type[errors.APIError], call: Callable[[], Any]) -> errors.APIError:
    with pytest.raises(expected) as caught:
        await call()
    assert caught.value.message
    assert caught.value.code
    return caught.value


async def test_each_error_status_has_its_exception(tmp_path: Any) -> None:
    async with running_server(tmp_path, max_queued_turns_per_tenant=1) as server:
        admin = await _key(server, Role.ADMIN)
        reader = await _key(server, Role.READ)
        async with (
            AsyncTether(server.url, admin) as sdk,
            AsyncTether(server.url, reader) as read_only,
            AsyncTether(server.url, "tth_0123456789ab_wrong") as stranger,
        ):
            tools = [{"name": "sleep", "policy": "approve"}]
            await sdk.agents.create(scripted_agent("gated", steps=GATED_STEPS, tools=tools))
            session = await sdk.sessions.create("gated")
            waiting = await sdk.turns.create(session.id, "go", stream=True)
            await waiting.until_done()  # an active turn: the session is busy

            bad = await _raises(errors.InvalidId, lambda: sdk.sessions.get("not an id"))
            assert (bad.status, bad.code) == (400, "invalid_id")
            assert isinstance(bad, errors.BadRequest)
            who = await _raises(errors.Unauthorized, lambda: stranger.sessions.get(session.id))
            assert who.status == 401
            denied = await _raises(errors.Forbidden, lambda: read_only.sessions.create("gated"))
            assert denied.status == 403
            missing = await _raises(
                errors.NotFound, lambda: sdk.sessions.get("01arz3ndektsv4rrffq69g5fav.local")
            )
            assert missing.status == 404
            busy = await _raises(
                errors.SessionBusy,
                lambda: sdk.turns.create(session.id, "now", on_busy="reject"),
            )
            assert (busy.status, busy.code) == (409, "session_busy")
            assert isinstance(busy, errors.Conflict)
            large = await _raises(
                errors.PayloadTooLarge, lambda: sdk.turns.create(session.id, "x" * (2 << 20))
            )
            assert large.status == 413
            invalid = await _raises(
                errors.ValidationError, lambda: sdk.agents.create({"name": "no spaces allowed"})
            )
            assert invalid.status == 422
            assert invalid.details is not None
            await sdk.turns.create(session.id, "queued behind")  # the one queued turn allowed
            limited = await _raises(errors.RateLimited, lambda: sdk.turns.create(session.id, "x"))
            assert limited.status == 429
            assert limited.retry_after == 2


async def test_sync_errors_and_an_unreachable_server(server: Server) -> None:
    def calls() -> None:
        with Tether(server.url) as sdk, pytest.raises(errors.NotFound):
            sdk.sessions.get("01arz3ndektsv4rrffq69g5fav.local")
        with Tether("http://127.0.0.1:9", max_retries=1) as nowhere:
            with pytest.raises(errors.APIConnectionError) as caught:
                nowhere.agents.list().to_list()
            assert "cannot reach Tether at http://127.0.0.1:9" in str(caught.value)

    await asyncio.to_thread(calls)


def test_from_env_reads_the_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_URL", "http://example.test:1234/")
    monkeypatch.setenv("TETHER_API_KEY", "tth_x_y")
    with Tether.from_env() as sdk:
        assert sdk.base_url == "http://example.test:1234"
        assert sdk._http.headers["authorization"] == "Bearer tth_x_y"
