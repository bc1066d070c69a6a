"""The TrueFoundry agent-harness surface, driven by TrueFoundry's own client
(`truefoundry-gateway-sdk` from PyPI, unmodified) against a real server with auth on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from truefoundry_gateway_sdk import AsyncTrueFoundryGateway
from truefoundry_gateway_sdk import errors as tfy_errors
from truefoundry_gateway_sdk.agents import (
    AsyncAgentSession,
    AsyncAgentSessionClient,
    TurnDoneEvent,
    TurnStateCancelled,
    TurnStateDone,
    UserToolApprovalEvent,
    UserToolResponseEvent,
)
from truefoundry_gateway_sdk.core.api_error import ApiError
from truefoundry_gateway_sdk.types import ApprovalAllow, UserMessage

from tests.helpers import Server, running_server, scripted_agent, wait_for
from tether import specs
from tether.auth import Role
from tether.runtime.tools import builtin_registry

STREAMING = scripted_agent("streaming", reply="word", tokens=150, token_delay_ms=15)
GUARDED = scripted_agent(
    "guarded",
    steps=[{"text": "checking", "tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}],
    reply="all done",
    tools=[{"name": "sleep", "policy": "approve"}],
)
STUBBORN = scripted_agent(
    "stubborn",
    steps=[{"text": "working", "tool_calls": [{"name": "stubborn", "arguments": {}}]}],
    tools=[{"name": "stubborn"}],
)


@dataclass
class Tenant:
    name: str
    keys: dict[Role, str]


@dataclass
class World:
    server: Server
    acme: Tenant
    globex: Tenant
    stubborn_started: asyncio.Event
    release_stubborn: asyncio.Event
    transports: list[httpx.AsyncClient] = field(default_factory=list)

    def transport(self) -> httpx.AsyncClient:
        """The official client's connection pool: ours, so the test closes it."""
        self.transports.append(httpx.AsyncClient(timeout=30))
        return self.transports[-1]

    def base_url(self, tenant: str) -> str:
        return f"{self.server.url}/compat/truefoundry/{tenant}"

    def client(self, tenant: Tenant, role: Role = Role.WRITE) -> AsyncAgentSessionClient:
        return AsyncAgentSessionClient(
            base_url=self.base_url(tenant.name),
            api_key=tenant.keys[role],
            max_retries=0,
            httpx_client=self.transport(),
        )

    def native(self, tenant: Tenant) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {tenant.keys[Role.ADMIN]}"},
            timeout=30,
        )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    started, release = asyncio.Event(), asyncio.Event()

    async def stubborn() -> str:
        """Ignores cancellation until the test lets it go, like a badly written tool."""
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            await asyncio.shield(release.wait())
        return "done"

    tools = builtin_registry()
    tools.register(stubborn)
    async with running_server(tmp_path, tools=tools, auth="required") as srv:
        tenants = []
        for name in ("acme", "globex"):
            keys = {}
            for role in Role:
                _, keys[role] = await srv.node.keys.create(name, role, role.name.lower())
            tenants.append(Tenant(name, keys))
        w = World(srv, tenants[0], tenants[1], started, release)
        async with w.native(w.acme) as c:
            for agent in (STREAMING, GUARDED, STUBBORN):
                r = await c.post("/v1/agents", json=agent)
                assert r.status_code == 201, r.text
        try:
            yield w
        finally:
            release.set()
            for transport in w.transports:
                await transport.aclose()


async def _turn_state(session: AsyncAgentSession, turn_id: str, status: str) -> Any:
    async def reached() -> Any:
        state = (await session.get_turn(turn_id)).state
        return state if state.status == status else None

    return await wait_for(reached, 15, f"turn {turn_id} {status}")


async def test_stream_cancel_send_again_approve(world: World) -> None:
    client = world.client(world.acme)
    session = await client.create_session(agent_name="streaming")
    assert session.agent_name == "streaming"

    # a streaming turn, cancelled mid-stream by a second request
    turn = session.prepare_turn(input=[UserMessage(content="hi")])
    events: list[Any] = []
    ids: list[int] = []
    async for item in turn.execute():
        events.append(item.event)
        ids.append(item.sequence_number)
        deltas = [e for e in events if e.type == "model.message.delta"]
        if len(deltas) == 3:
            await session.cancel()  # 200 {}: the executor confirmed
    assert events[0].type == "turn.created"
    assert isinstance(events[-1], TurnDoneEvent)
    assert isinstance(events[-1].state, TurnStateCancelled)
    assert events[-1].state.reason == "client-cancelled"
    assert ids == sorted(ids), "SSE ids are the session's event seqs, in order"
    assert turn.id is not None
    state = (await session.get_turn(turn.id)).state
    assert isinstance(state, TurnStateCancelled)

    # send again: works
    again = session.prepare_turn(input=[UserMessage(content="again")])
    async for item in again.execute():
        last, last_seq = item.event, item.sequence_number
    # resubscribed after its very end: nothing more, and the stream ends rather than waits
    async with asyncio.timeout(10):
        assert [i async for i in again.stream(after_sequence_number=last_seq)] == []
    assert isinstance(last, TurnDoneEvent) and isinstance(last.state, TurnStateDone)
    assert last.state.output is not None and "word" in str(last.state.output.content)
    assert last.state.required_actions == []

    # the same session through /v1, and through the list of the official client
    async with world.native(world.acme) as c:
        native = (await c.get(f"/v1/sessions/{session.id}")).json()
        assert native["status"] == "idle"
        assert [
            t["status"] for t in (await c.get(f"/v1/sessions/{session.id}/turns")).json()["data"]
        ] == ["cancelled", "completed"]
    listed = [t async for t in await session.list_turns()]
    assert [t.id for t in listed] == [again.id, turn.id], "newest first"
    sessions = [s.id async for s in await client.list_sessions(agent_name="streaming")]
    assert session.id in sessions

    # approve: the turn ends `done` asking for approval; the approval resumes it
    guarded = await client.create_session(agent_name="guarded")
    asking = guarded.prepare_turn(input=[UserMessage(content="delete it")])
    async for item in asking.execute():
        last = item.event
    assert isinstance(last, TurnDoneEvent) and isinstance(last.state, TurnStateDone)
    (required,) = last.state.required_actions
    assert required.type == "tool.approval_required"
    (call,) = required.tool_calls
    approve = UserToolApprovalEvent(
        thread_id=guarded.id, tool_call_id=call.id, approval=ApprovalAllow()
    )
    resumed = guarded.prepare_turn(input=[approve])
    seen = [item.event async for item in resumed.execute()]
    assert resumed.id == asking.id, "the approval resumes the waiting turn"
    assert [e.type for e in seen if e.type == "tool.response"] == ["tool.response"]
    done = seen[-1]
    assert isinstance(done, TurnDoneEvent) and isinstance(done.state, TurnStateDone)
    assert done.state.required_actions == []
    assert done.state.output is not None and done.state.output.content == "all done"


async def test_subscribe_resumes_after_a_sequence_number(world: World) -> None:
    client = world.client(world.acme)
    session = await client.create_session(agent_name="guarded")
    turn = session.prepare_turn(input=[UserMessage(content="x")])
    first = [item async for item in turn.execute()]
    assert isinstance(first[-1].event, TurnDoneEvent)
    middle = first[1].sequence_number
    again = [item async for item in turn.stream(after_sequence_number=middle)]
    assert all(i.sequence_number > middle for i in again)
    assert [i.event.type for i in again] == [i.event.type for i in first[2:]]
    assert isinstance(again[-1].event, TurnDoneEvent)
    events = [e async for e in await session.list_events()]
    assert {e.turn_id for e in events} == {turn.id}
    assert events[0].event.type == "turn.done", "newest first"
    turn_events = [e async for e in await turn.list_events()]
    assert [e.type for e in turn_events] == ["model.message", "tool.approval_required"]


async def test_a_forks_copied_turn_streams_its_history_and_ends(world: World) -> None:
    """A fork's copied turns have their messages in its log but no end event (a fork's
    history is `session.forked` and the copied messages): subscribing to one waited forever.
    A finished turn's stream is its stored events, then the end."""
    client = world.client(world.acme)
    session = await client.create_session(agent_name="guarded")
    turn = session.prepare_turn(input=[UserMessage(content="x")])
    first = [item.event async for item in turn.execute()]
    assert isinstance(first[-1], TurnDoneEvent)
    async with world.native(world.acme) as c:
        # it waits on an approval: stopped, it is a finished turn a fork can copy
        r = await c.post(f"/v1/sessions/{session.id}/interrupt", json={"wait": 10})
        assert r.json()["turn"]["status"] == "cancelled"
        r = await c.post(f"/v1/sessions/{session.id}/fork", json={})
        assert r.status_code == 201, r.text
        fork = r.json()["id"]
        [copied] = (await c.get(f"/v1/sessions/{fork}/turns")).json()["data"]
        assert copied["status"] == "cancelled"
        path = f"/compat/truefoundry/acme/v1/agents/sessions/{fork}/turns/{copied['id']}"
        async with asyncio.timeout(10):
            r = await c.post(f"{path}/subscribe", json={})
        assert r.status_code == 200, r.text
        frames = [line for line in r.text.splitlines() if line.startswith("data:")]
        assert frames and '"model.message"' in r.text, r.text[:500]
        # the source's own turn still ends with its end event, as before
        async with asyncio.timeout(10):
            mine = [item.event async for item in turn.stream()]
        assert isinstance(mine[-1], TurnDoneEvent)


def _raw(world: World) -> Any:
    """The official client's generated API (below its session helpers)."""
    return AsyncTrueFoundryGateway(
        base_url=world.base_url("acme"),
        api_key=world.acme.keys[Role.WRITE],
        max_retries=0,
        httpx_client=world.transport(),
    ).agents.sessions


async def test_cancel_not_confirmed_in_time_is_424(world: World) -> None:
    client = world.client(world.acme)
    session = await client.create_session(agent_name="stubborn")
    created = await _raw(world).create_turn(session.id, input=[UserMessage(content="x")])
    assert created.data.state.status == "running"
    await asyncio.wait_for(world.stubborn_started.wait(), 15)
    with pytest.raises(tfy_errors.FailedDependencyError) as caught:
        await session.cancel(request_options={"additional_body_parameters": {"wait": 0.05}})
    assert caught.value.body.error.code == "cancel_not_confirmed"
    # the cancel stays requested: the turn ends cancelled once the executor lets go
    world.release_stubborn.set()
    await _turn_state(session, created.data.id, "cancelled")


async def test_cancel_failures_in_vendor_shape(world: World) -> None:
    client = world.client(world.acme)
    session = await client.create_session(agent_name="streaming")
    await session.cancel()  # nothing running: a no-op, 200 {}
    async with world.native(world.acme) as c:
        assert (await c.delete(f"/v1/sessions/{session.id}")).status_code == 200
    with pytest.raises(tfy_errors.PreconditionFailedError) as closed:
        await session.cancel()
    assert closed.value.body.error.code == "session_closed"
    raw = _raw(world)
    with pytest.raises(tfy_errors.PreconditionFailedError) as unknown:
        await raw.cancel("01arz3ndektsv4rrffq69g5fav.local")  # well formed, no such session
    assert unknown.value.body.error.type == "precondition_failed_error"
    with pytest.raises(tfy_errors.BadRequestError) as malformed:
        await raw.cancel("not-a-session")
    assert malformed.value.body.error.param == "sessionId"


async def test_auth_and_tenants(world: World) -> None:
    own = world.client(world.acme)
    session = await own.create_session(agent_name="streaming")
    url = world.base_url("acme") + "/v1/agents/sessions"
    async with httpx.AsyncClient(timeout=30) as c:
        for headers in ({}, {"Authorization": "Bearer tth_000000000000_nope"}):
            r = await c.get(f"{url}/{session.id}", headers=headers)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"] == "Bearer"
            assert set(r.json()["error"]) == {"message", "type", "code", "param"}
        other = {"Authorization": f"Bearer {world.globex.keys[Role.ADMIN]}"}
        # another tenant's key on this tenant's path: 404, never a hint
        r = await c.get(f"{url}/{session.id}", headers=other)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["type"] == "not_found_error"
        # its own path, this tenant's session: 404 too
        r = await c.get(
            f"{world.base_url('globex')}/v1/agents/sessions/{session.id}", headers=other
        )
        assert r.status_code == 404, r.text
        r = await c.post(
            f"{world.base_url('globex')}/v1/agents/sessions/{session.id}/cancel",
            headers=other,
            json={},
        )
        assert r.status_code == 412, r.text
        reader = {"Authorization": f"Bearer {world.acme.keys[Role.READ]}"}
        r = await c.post(f"{url}/{session.id}/cancel", headers=reader, json={})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["type"] == "permission_error"
    with pytest.raises(tfy_errors.NotFoundError):
        await own.create_session(agent_name="no-such-agent")


async def test_question_answered_with_a_tool_response(world: World) -> None:
    async with world.native(world.acme) as c:
        asking = scripted_agent(
            "asking",
            steps=[{"tool_calls": [{"name": "ask_user", "arguments": {"question": "color?"}}]}],
            reply="noted",
            tools=[{"name": "ask_user"}],
        )
        assert (await c.post("/v1/agents", json=asking)).status_code == 201
    session = await world.client(world.acme).create_session(agent_name="asking")
    turn = session.prepare_turn(input=[UserMessage(content="ask me")])
    async for item in turn.execute():
        last = item.event
    assert isinstance(last, TurnDoneEvent) and isinstance(last.state, TurnStateDone)
    (required,) = last.state.required_actions
    assert required.type == "tool.response_required"
    answer = UserToolResponseEvent(
        thread_id=session.id, tool_call_id=required.tool_calls[0].id, content="blue"
    )
    seen = [item.event async for item in session.prepare_turn(input=[answer]).execute()]
    (response,) = [e for e in seen if e.type == "tool.response"]
    assert response.content == "blue"
    assert isinstance(seen[-1], TurnDoneEvent) and isinstance(seen[-1].state, TurnStateDone)
    # an answer to nothing pending is refused in the vendor's shape
    with pytest.raises(tfy_errors.BadRequestError) as refused:
        await session.prepare_turn(input=[answer]).execute(stream=False)
    assert refused.value.body.error.type == "invalid_request_error"


async def test_previous_turn_id_must_be_the_last_turn(world: World) -> None:
    """Following the last turn (by id, or `auto`) works; following an earlier one would
    branch the session: refused with 409, pointing at a fork."""
    session = await world.client(world.acme).create_session(agent_name="guarded")
    first = session.prepare_turn(input=[UserMessage(content="one")])
    await first.execute(stream=False)
    assert first.id is not None
    await _turn_state(session, first.id, "done")
    approve = UserToolApprovalEvent(
        thread_id=session.id,
        tool_call_id=(await session.get_turn(first.id)).state.required_actions[0].tool_calls[0].id,
        approval=ApprovalAllow(),
    )
    await session.prepare_turn(input=[approve]).execute(stream=False)
    chained = session.prepare_turn(input=[UserMessage(content="two")], previous_turn_id=first.id)
    await chained.execute(stream=False)
    assert chained.id is not None and chained.id != first.id
    branch = session.prepare_turn(input=[UserMessage(content="three")], previous_turn_id=first.id)
    with pytest.raises(ApiError) as refused:  # the client has no class of its own for it
        await branch.execute(stream=False)
    assert refused.value.status_code == 409
    assert refused.value.body["error"]["type"] == "conflict_error"
    assert "fork" in refused.value.body["error"]["message"]
    turns = [t.id async for t in await session.list_turns()]
    assert turns == [chained.id, first.id]  # nothing was started


async def test_with_auth_off_the_path_names_the_tenant(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, httpx.AsyncClient(timeout=30) as transport:
        await srv.node.service.agents.upsert("initech", specs.AgentSpec.model_validate(STREAMING))
        client = AsyncAgentSessionClient(
            base_url=f"{srv.url}/compat/truefoundry/initech",
            api_key="unused",  # the client always sends a key: with auth off, it is none
            httpx_client=transport,
        )
        made = await client.create_session(agent_name="streaming")
        assert (await srv.node.service.get_session("initech", made.id)).id == made.id
        assert made.created_by_subject.subject_slug == "initech"


async def test_session_lists_page_and_filter(world: World) -> None:
    client = world.client(world.acme)
    made = [(await client.create_session(agent_name="guarded")).id for _ in range(3)]
    pager = await client.list_sessions(agent_name="guarded", limit=2)
    assert [s.id for s in pager.items] == made[::-1][:2], "newest first"
    assert [s.id async for s in pager] == made[::-1], "the next page follows"
    earlier = "2000-01-01T00:00:00"  # no zone: UTC
    assert [
        s async for s in await client.list_sessions(agent_name="guarded", end_timestamp=earlier)
    ] == []
    since = [
        s.id
        async for s in await client.list_sessions(agent_name="guarded", start_timestamp=earlier)
    ]
    assert since == made[::-1]
    with pytest.raises(tfy_errors.BadRequestError):
        await client.list_sessions(agent_name="guarded", start_timestamp="yesterday")
