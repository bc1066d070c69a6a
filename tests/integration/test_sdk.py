"""The SDK against a real server: every resource, sync and async, and a typed error for each
status the API answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests import helpers
from tests.helpers import Server, running_server, scripted_agent, wait_for
from tether.auth import Role
from tether.client import AsyncTether, Tether, errors, models
from tether.testing_anthropic import FakeAnthropic

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


def _gated(name: str, **extra: Any) -> dict[str, Any]:
    tools = [{"name": "sleep", "policy": "approve"}]
    return {**scripted_agent(name, steps=GATED_STEPS, tools=tools), **extra}


async def _waiting_on(sdk: AsyncTether, agent: str) -> models.Interrupt:
    session = await sdk.sessions.create(agent)
    stream = await sdk.turns.create(session.id, "go", stream=True)
    [pending] = (await stream.until_done()).interrupts
    return pending


async def test_me_the_inbox_and_purge(server: Server) -> None:
    """`me()` in open mode and with keys; the tenant's interrupts without a session (paged
    with the server's opaque cursor, the one expiring soonest first, another tenant's never);
    `sessions.purge` for admins only."""
    async with AsyncTether(server.url) as anyone:
        me = await anyone.me()
        assert (me.auth, me.role, me.key_id) == (False, "admin", None)
    admin_key, writer_key = await _key(server, Role.ADMIN), await _key(server, Role.WRITE)
    async with (
        AsyncTether(server.url, admin_key) as sdk,
        AsyncTether(server.url, writer_key) as writer,
        AsyncTether(server.url, await _key(server, Role.ADMIN, tenant="other")) as other,
    ):
        me = await sdk.me()
        assert (me.tenant_id, me.role) == ("acme", "admin")
        assert me.key_id is not None
        assert me.key_prefix is not None
        assert admin_key.startswith(f"tth_{me.key_prefix}_")
        assert (await writer.me()).role == "write"

        async def auth_on() -> bool:
            return (await sdk.me()).auth

        await wait_for(auth_on, 20, "the server to require keys")

        await sdk.agents.create(_gated("never"))
        await sdk.agents.create(_gated("later", interrupt_ttl_s=600))
        await sdk.agents.create(_gated("soon", interrupt_ttl_s=60))
        never = await _waiting_on(sdk, "never")
        later = await _waiting_on(sdk, "later")
        soon = await _waiting_on(sdk, "soon")
        await other.agents.create(_gated("theirs"))
        theirs = await _waiting_on(other, "theirs")

        inbox = [i.id async for i in sdk.interrupts.list(status="pending", limit=1)]
        assert inbox == [soon.id, later.id, never.id]
        assert [i.id async for i in other.interrupts.list()] == [theirs.id]
        mine = sdk.interrupts.list(later.session_id, status="pending")  # per session, as before
        assert [i.id async for i in mine] == [later.id]
        await sdk.interrupts.approve(soon.id)
        assert [i.id async for i in sdk.interrupts.list(status="pending")] == [later.id, never.id]
        everything = {i.id: i.status for i in await sdk.interrupts.list().to_list()}
        assert everything == {soon.id: "resolved", later.id: "pending", never.id: "pending"}

        with pytest.raises(errors.Forbidden):
            await writer.sessions.purge(never.session_id)
        await sdk.sessions.purge(never.session_id)
        with pytest.raises(errors.NotFound):
            await sdk.sessions.get(never.session_id)
        with pytest.raises(errors.NotFound):
            await sdk.interrupts.get(never.id)
        with pytest.raises(errors.NotFound):
            await sdk.sessions.purge(never.session_id)
        assert [i.id async for i in sdk.interrupts.list(status="pending")] == [later.id]

        def sync_calls() -> None:
            with Tether(server.url, admin_key) as sync:
                assert sync.me().tenant_id == "acme"
                assert [i.id for i in sync.interrupts.list(status="pending")] == [later.id]
                sync.sessions.purge(later.session_id)
                with pytest.raises(errors.NotFound):
                    sync.sessions.get(later.session_id)

        await asyncio.to_thread(sync_calls)


async def test_unstorable_input_and_refused_agents_have_their_exceptions(server: Server) -> None:
    """What the server cannot store, and agent settings the operator does not allow, come
    back as typed 422s; NaN and lone surrogates are sent for the server to say where they are
    (not a ValueError in the client), on streams too."""
    lone = "p\ud800"
    async with AsyncTether(server.url) as sdk:
        session = await sdk.sessions.create("demo")
        cases: list[tuple[type[errors.APIError], str, Callable[[], Any]]] = [
            (errors.InvalidText, "invalid_text", lambda: sdk.turns.create(session.id, "a\x00b")),
            (errors.InvalidText, "invalid_text", lambda: sdk.turns.create(session.id, lone)),
            (
                errors.InvalidText,
                "invalid_text",
                lambda: sdk.turns.create(session.id, lone, stream=True),
            ),
            (
                errors.InvalidNumber,
                "invalid_number",
                lambda: sdk.sessions.create("demo", metadata={"n": float("nan")}),
            ),
            (
                errors.NestingTooDeep,
                "nesting_too_deep",
                lambda: sdk.sessions.create("demo", metadata=_nested(80)),
            ),
            (
                errors.MetadataTooLarge,
                "metadata_too_large",
                lambda: sdk.sessions.create("demo", metadata={"big": "x" * 17_000}),
            ),
        ]
        for cls, code, call in cases:
            refused = await _raises(cls, call)
            assert (refused.status, refused.code) == (422, code)
            assert isinstance(refused, errors.UnstorableInput), code
        number = await _raises(
            errors.InvalidNumber, lambda: sdk.sessions.create("demo", metadata={"n": float("inf")})
        )
        assert number.details == {"in": "body", "path": "$.metadata.n"}
        text = await _raises(errors.InvalidText, lambda: sdk.sessions.create("demo", input=lone))
        assert text.details == {"in": "body", "path": "$.input"}

        def openai(**model: Any) -> dict[str, Any]:
            return {
                "name": f"o{len(model)}",
                "model": {"provider": "openai", "model": "m", **model},
            }

        refusals: list[tuple[type[errors.APIError], str, dict[str, Any]]] = [
            (errors.InvalidModelParams, "invalid_model_params", openai(params={"bogus": 1})),
            (
                errors.ProviderKeyEnvNotAllowed,
                "provider_key_env_not_allowed",
                openai(api_key_env="HOME"),
            ),
            (
                errors.ProviderBaseUrlNotAllowed,
                "provider_base_url_not_allowed",
                openai(base_url="https://llm.example.org/v1"),
            ),
            (
                errors.DestinationNotAllowed,
                "destination_not_allowed",
                openai(base_url="http://127.0.0.1:9/v1", api_key="sk-mine"),
            ),
        ]
        for cls, code, definition in refusals:
            refused = await _raises(
                cls, lambda definition=definition: sdk.agents.create(definition)
            )
            assert (refused.status, refused.code) == (422, code)
        assert issubclass(errors.ProviderKeyEnvNotAllowed, errors.ProviderNotAllowed)
        assert issubclass(errors.ProviderNotAllowed, errors.InvalidAgent)
        own_key = openai(base_url="https://llm.example.org/v1", api_key="sk-mine")
        if "store_url" in helpers.BACKEND:  # cluster mode stores own keys only with a secret key
            refused = await _raises(errors.SecretKeyMissing, lambda: sdk.agents.create(own_key))
            assert isinstance(refused, errors.ProviderNotAllowed)
        else:  # embedded mode makes one in its data dir
            assert (await sdk.agents.create(own_key)).model.base_url == own_key["model"]["base_url"]
        assert [s.id async for s in sdk.sessions.list()] == [session.id], "nothing was made"


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"k": value}
    return value


async def test_usage_carries_the_cache_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Anthropic turn (a local server speaking the Messages API) reports prompt-cache
    tokens: the SDK's `Usage` has them, typed."""
    fake = FakeAnthropic()
    await fake.start()
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    try:
        async with (
            running_server(
                tmp_path, provider_key_envs=["TEST_ANTHROPIC_KEY"], provider_base_urls=[fake.url]
            ) as server,
            AsyncTether(server.url) as sdk,
        ):
            model = {"provider": "anthropic", "model": "claude-fake-1", "base_url": fake.url}
            await sdk.agents.create(
                {"name": "claude", "model": {**model, "api_key_env": "TEST_ANTHROPIC_KEY"}}
            )
            session = await sdk.sessions.create("claude")
            turn = await (await sdk.turns.create(session.id, "hello", stream=True)).final()
    finally:
        await fake.stop()
    assert turn.status == "completed", turn.error
    usage = turn.usage
    assert (usage.input_tokens, usage.model_calls) == (11, 1)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (5, 7)
