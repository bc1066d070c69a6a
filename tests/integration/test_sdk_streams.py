"""The SDK's streams and retries through a proxy that cuts connections at random points: the
text yielded is the final text, every durable event comes exactly once, and a create retried
after a cut makes one object."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.helpers import Api, Server, scripted_agent, wait_for
from tests.proxy import Cut, CuttingProxy
from tether.client import AsyncTether, Event, Tether, errors

SEED = random.randrange(1 << 30)


@pytest.fixture
async def proxy(server: Server) -> AsyncIterator[CuttingProxy]:
    cutter = await CuttingProxy(server.port).start()
    yield cutter
    await cutter.stop()


def _one_connection_per_request() -> httpx.AsyncClient:
    """So that the proxy's plan, which is per connection, is per request."""
    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))


def _chatty_agent(name: str) -> dict[str, Any]:
    """Text, a tool call, then a long streamed answer: several messages, many deltas."""
    return scripted_agent(
        name,
        steps=[{"text": "Looking it up.", "tool_calls": [{"name": "get_time"}]}],
        reply="streamed answer with some words in it ",
        tokens=16,
        token_delay_ms=1,
    )


def _check_turn(events: list[Event], stored: list[dict[str, Any]], turn_id: str) -> None:
    """Durable events: exactly the stored ones of the turn, once each, in order. Text: per
    message, the deltas put end to end are its final content, with no gap or overlap."""
    mine = [e for e in stored if e["turn_id"] == turn_id]
    assert [e.seq for e in events if e.durable] == [e["seq"] for e in mine]
    text: dict[str, str] = defaultdict(str)
    for event in events:
        if event.delta is not None:
            message_id = event.data["message_id"]
            assert event.data["offset"] == len(text[message_id]), "a gap or an overlap"
            text[message_id] += event.delta
    finals = {
        e["data"]["message"]["id"]: e["data"]["message"]["content"]
        for e in mine
        if e["type"] == "message.completed" and e["data"]["message"]["role"] == "assistant"
    }
    assert finals, "the turn has assistant messages"
    assert dict(text) == finals


async def test_turn_streams_resume_after_random_cuts(server: Server, api: Api) -> None:
    """100 streamed turns (10 sessions x 10, concurrently). Every request opens a connection
    of its own; each turn's create is cut at a random byte of its answer (before the status
    line, in the middle of a frame, between frames...), and every later connection with
    probability 0.5: resumed streams, the turn lookups a waiting marker makes."""
    rng = random.Random(SEED)
    # one streamed message a turn (the other tests here have several)
    plain = scripted_agent("plain", reply="some streamed words ", tokens=20, token_delay_ms=2)
    await api.c.post("/v1/agents", json={**plain, "tools": []})

    def cut() -> Cut:  # a turn's stream is 3 to 6 kB: its stored events alone are 2.5 kB
        return Cut("down", rng.randint(0, 2400))

    async def converse() -> int:
        sid = await api.session("plain")
        proxy = await CuttingProxy(server.port).start()
        proxy.chance = lambda: cut() if rng.random() < 0.5 else None
        sdk = AsyncTether(
            proxy.url,
            max_reconnects=30,
            stream_timeout=10,
            http_client=_one_connection_per_request(),
        )
        try:
            for i in range(10):
                proxy.plan = [cut()]
                before = proxy.cuts
                stream = await sdk.turns.create(sid, f"turn {i}", stream=True)
                events = [e async for e in stream]
                assert proxy.cuts > before, "the create's answer was cut"
                assert stream.turn is not None
                assert stream.turn.status == "completed", stream.turn
                assert stream.turn_id is not None
                _check_turn(events, await api.events(sid), stream.turn_id)
        finally:
            await sdk.close()
            await proxy.stop()
        turns = (await api.c.get(f"/v1/sessions/{sid}/turns")).json()["data"]
        assert len(turns) == 10, "one turn per create, retries included"
        return proxy.cuts

    cuts = await asyncio.gather(*(converse() for _ in range(10)))
    assert sum(cuts) >= 100, f"seed {SEED}"


async def test_session_event_stream_resumes_after_cuts(
    server: Server, api: Api, proxy: CuttingProxy
) -> None:
    """A session's live stream, each of its connections cut within its first 4 kB while turns
    run, yields every durable event once, in order, and each message's text whole."""
    rng = random.Random(SEED + 1)
    await api.c.post("/v1/agents", json=_chatty_agent("chatty"))
    sid = await api.session("chatty")
    turns = 5
    async with AsyncTether(proxy.url, max_reconnects=30, stream_timeout=10) as sdk:
        proxy.chance = lambda: Cut("down", rng.randint(0, 4000))  # every connection
        stream = await sdk.sessions.events(sid)
        seen: list[Event] = []

        async def read() -> None:
            async for event in stream:
                seen.append(event)
                if sum(e.type == "turn.completed" for e in seen) == turns:
                    return

        reader = asyncio.create_task(read())
        for i in range(turns):
            await api.turn(sid, f"turn {i}")
        await asyncio.wait_for(reader, 60)
        await stream.close()
    stored = await api.events(sid)
    last = max(e.seq for e in seen if e.durable)
    assert [e.seq for e in seen if e.durable] == [e["seq"] for e in stored if e["seq"] <= last]
    for turn_id in {e.turn_id for e in seen if e.turn_id}:
        _check_turn([e for e in seen if e.turn_id == turn_id], stored, turn_id)
    assert proxy.cuts >= 3


async def test_create_retried_after_a_cut_makes_one_object(
    server: Server, api: Api, proxy: CuttingProxy
) -> None:
    """The answer of each create is cut as it begins (the server did the work): the SDK
    sends it again with the same Idempotency-Key and gets the first answer."""
    async with AsyncTether(proxy.url, http_client=_one_connection_per_request()) as sdk:
        proxy.plan = [Cut("down", 0)]
        agent = await sdk.agents.create(scripted_agent("once"))
        proxy.plan = [Cut("down", 0)]
        session = await sdk.sessions.create(agent.id)
        proxy.plan = [Cut("down", 0)]
        turn = await sdk.turns.create(session.id, "hello")
        proxy.plan = [Cut("down", 0)]
        streamed = await sdk.turns.create(session.id, "again", stream=True)
        assert (await streamed.final()).status == "completed"
        assert proxy.cuts == 4
    names = [a["name"] for a in (await api.c.get("/v1/agents")).json()["data"]]
    assert names.count("once") == 1
    sessions = (await api.c.get("/v1/sessions", params={"agent_id": agent.id})).json()["data"]
    assert [s["id"] for s in sessions] == [session.id]
    turns = (await api.c.get(f"/v1/sessions/{session.id}/turns")).json()["data"]
    assert [t["id"] for t in turns] == [turn.id, streamed.turn_id]


async def test_a_call_that_cannot_be_repeated_is_not(
    server: Server, api: Api, proxy: CuttingProxy
) -> None:
    """Answering an interrupt carries no Idempotency-Key: once the connection broke after the
    request went out, the SDK cannot know whether the server got it, so it says so rather
    than send it again (a repeat of an answer that landed would be refused)."""
    gated = scripted_agent(
        "gated",
        steps=[{"text": "", "tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}],
        tools=[{"name": "sleep", "policy": "approve"}],
    )
    await api.c.post("/v1/agents", json=gated)
    sid = await api.session("gated")
    turn = await api.turn(sid)
    async with AsyncTether(proxy.url, http_client=_one_connection_per_request()) as sdk:
        [pending] = await wait_for(
            lambda: sdk.interrupts.list(sid, status="pending").to_list(), 10, "the interrupt"
        )
        before = proxy.connections
        proxy.plan = [Cut("up", 0)]  # the request is lost on its way: nothing happened
        with pytest.raises(errors.APIConnectionError):
            await sdk.interrupts.approve(pending.id)
        proxy.plan = [Cut("down", 0)]  # answered, and the answer lost on its way back
        with pytest.raises(errors.APIConnectionError):
            await sdk.interrupts.deny(pending.id)
        assert proxy.connections == before + 2, "neither answer was sent twice"
        answered = await sdk.interrupts.get(pending.id)
        assert answered.status == "resolved"
        assert answered.response == {"decision": "deny"}
        assert (await api.wait_turn(sid, turn["id"]))["status"] == "completed"


async def test_sync_stream_resumes_after_cuts(
    server: Server, api: Api, proxy: CuttingProxy
) -> None:
    rng = random.Random(SEED + 2)
    proxy.chance = lambda: Cut("down", rng.randint(0, 5000)) if rng.random() < 0.6 else None
    await api.c.post("/v1/agents", json=_chatty_agent("chatty"))
    sid = await api.session("chatty")

    def converse() -> list[tuple[str, list[Event]]]:
        done = []
        with Tether(proxy.url, max_reconnects=30, stream_timeout=10) as sdk:
            for i in range(10):
                with sdk.turns.create(sid, f"turn {i}", stream=True) as stream:
                    events = list(stream)
                assert stream.turn_id is not None
                done.append((stream.turn_id, events))
        return done

    for turn_id, events in await asyncio.to_thread(converse):
        _check_turn(events, await api.events(sid), turn_id)
    assert proxy.cuts > 0


def _slow_agent(name: str) -> dict[str, Any]:
    """A streamed reply of many small deltas, in flight when a stop comes; long enough (10 s)
    that it cannot end before the stop on a loaded machine."""
    return scripted_agent(name, reply="one two three four five six ", tokens=5000, token_delay_ms=2)


def _assert_kept_text_whole(
    events: list[Event], stored: list[dict[str, Any]], turn_id: str
) -> None:
    _check_turn(events, stored, turn_id)
    ends = [e["type"] for e in stored if e["turn_id"] == turn_id and e["type"].startswith("turn.")]
    assert ends[-1] == "turn.cancelled", ends


async def test_a_stop_while_text_streams_keeps_the_text_whole(
    server: Server, api: Api, proxy: CuttingProxy
) -> None:
    """Turns stopped mid-reply while their text streams through a proxy that cuts connections
    at random: either the reader closes its stream at a random point, stops the turn and
    follows it (`follow()`, as `tether chat` does on Ctrl-C), or it stops the turn and reads
    on. Either way the text handed out is the kept partial text, with nothing twice and
    nothing missing, and every durable event of the turn comes exactly once."""
    rng = random.Random(SEED + 3)
    proxy.chance = lambda: Cut("down", rng.randint(0, 3000)) if rng.random() < 0.4 else None
    await api.c.post("/v1/agents", json=_slow_agent("slow"))
    sid = await api.session("slow")
    async with AsyncTether(
        proxy.url,
        max_retries=10,
        max_reconnects=30,
        stream_timeout=10,
        http_client=_one_connection_per_request(),
    ) as sdk:
        for i in range(8):
            enough = rng.randint(1, 80)  # chars of text before the stop
            events: list[Event] = []
            stream = await sdk.turns.create(sid, f"turn {i}", stream=True)
            async with stream:
                async for event in stream:
                    events.append(event)
                    if sum(len(e.delta or "") for e in events) >= enough:
                        break
                assert stream.turn_id is not None
                result = await sdk.turns.cancel(sid, stream.turn_id, wait=10)
                assert result.confirmed
                if i % 2:  # read on: the deltas in flight, then the turn's end
                    events += [e async for e in stream]
            if i % 2 == 0:
                events += [e async for e in await stream.follow()]
            _assert_kept_text_whole(events, await api.events(sid), stream.turn_id)
    assert proxy.cuts > 0


async def test_a_stop_while_text_streams_keeps_the_text_whole_sync(
    server: Server, api: Api, proxy: CuttingProxy
) -> None:
    """The same with the sync client: close at a random point, stop, `follow()`."""
    rng = random.Random(SEED + 4)
    proxy.chance = lambda: Cut("down", rng.randint(0, 3000)) if rng.random() < 0.4 else None
    await api.c.post("/v1/agents", json=_slow_agent("slow"))
    sid = await api.session("slow")
    enough = [rng.randint(1, 80) for _ in range(4)]

    def converse() -> list[tuple[str, list[Event]]]:
        done = []
        with Tether(proxy.url, max_retries=10, max_reconnects=30, stream_timeout=10) as sdk:
            for i, chars in enumerate(enough):
                events: list[Event] = []
                with sdk.turns.create(sid, f"turn {i}", stream=True) as stream:
                    for event in stream:
                        events.append(event)
                        if sum(len(e.delta or "") for e in events) >= chars:
                            break
                assert stream.turn_id is not None
                assert sdk.turns.cancel(sid, stream.turn_id, wait=10).confirmed
                events += list(stream.follow())
                done.append((stream.turn_id, events))
        return done

    for turn_id, events in await asyncio.to_thread(converse):
        _assert_kept_text_whole(events, await api.events(sid), turn_id)


async def test_a_reader_stopping_on_a_tail_gets_the_completion_from_follow(
    server: Server, api: Api, proxy: CuttingProxy
) -> None:
    """The create's answers are cut until the turn's first message has completed, so the
    stream gives its text as one tail just before its `message.completed` (the two come from
    one frame). The reader stops on that text, stops the turn (a tool still runs) and
    follows it: the completion comes from `follow()`, once, and no text twice."""
    steps = [
        {"text": "Looking it up.", "tool_calls": [{"name": "sleep", "arguments": {"seconds": 30}}]}
    ]
    await api.c.post("/v1/agents", json=scripted_agent("slowtool", steps=steps, reply="done"))
    sid = await api.session("slowtool")
    away = True
    proxy.chance = lambda: Cut("down", 0) if away else None
    async with AsyncTether(
        proxy.url, max_reconnects=30, http_client=_one_connection_per_request()
    ) as sdk:
        opening = asyncio.create_task(sdk.turns.create(sid, "go", stream=True))

        async def tool_running() -> bool:
            return any(e["type"] == "tool.started" for e in await api.events(sid))

        await wait_for(tool_running, 20, "the tool to start")
        away = False
        stream = await opening
        events: list[Event] = []
        async with stream:
            async for event in stream:
                events.append(event)
                if event.delta:
                    break
        assert events[-1].delta == "Looking it up.", "the whole message, as one tail"
        assert stream.turn_id is not None
        assert (await sdk.turns.cancel(sid, stream.turn_id, wait=10)).confirmed
        rest = await stream.follow()
        events += [e async for e in rest]
        assert [m.content for m in rest.messages if m.role == "assistant"] == ["Looking it up."]
    _assert_kept_text_whole(events, await api.events(sid), stream.turn_id)
    assert proxy.cuts > 0
