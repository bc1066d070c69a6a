"""SSE: frame format, turn streams, resume with Last-Event-ID / ?after=."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from tests.helpers import Api, read_sse


async def test_turn_stream_frames_and_end(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="echo", tokens=30, token_delay_ms=1))
    frames = []
    async with client.stream(
        "POST", f"/v1/sessions/{sid}/turns", json={"input": "a b c", "stream": True}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for frame in read_sse(r):
            frames.append(frame)
    ids = [int(f[0]) for f in frames if f[0] is not None]
    assert len(ids) == len(frames), "every frame has an id"
    assert ids == sorted(ids)
    kinds = [kind for _, kind, _ in frames]
    assert kinds[0] == "turn.queued" and kinds[-1] == "turn.completed"
    assert "turn.started" in kinds and "message.completed" in kinds
    for frame_id, kind, data in frames:
        assert data["type"] == kind and data["seq"] == int(frame_id)  # type: ignore[arg-type]
    text = "".join(d["data"]["delta"] for _, k, d in frames if k == "message.delta")
    final = [d for _, k, d in frames if k == "message.completed"][-1]["data"]["message"]
    assert text == final["content"] == "a b c " * 10


async def test_accept_header_streams(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="hi"))
    async with client.stream(
        "POST",
        f"/v1/sessions/{sid}/turns",
        json={"input": "x"},
        headers={"Accept": "text/event-stream"},
    ) as r:
        kinds = [k async for _, k, _ in read_sse(r)]
    assert kinds[-1] == "turn.completed"


async def test_events_json_page_and_after(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="hi"))
    await api.wait_turn(sid, (await api.turn(sid))["id"])
    events = await api.events(sid)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    r = await client.get(
        f"/v1/sessions/{sid}/events", params={"stream": "false", "after": 2, "limit": 2}
    )
    page = r.json()
    assert [e["seq"] for e in page["data"]] == [3, 4] and page["next_cursor"] == "4"
    assert "message.delta" not in {e["type"] for e in events}, "deltas are live only"


async def test_last_event_id_resumes_session_stream(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="hi"))
    await api.wait_turn(sid, (await api.turn(sid))["id"])
    events = await api.events(sid)
    got = []
    async with client.stream(
        "GET", f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": "3"}
    ) as r:
        async for frame_id, _, _ in read_sse(r):
            got.append(int(frame_id))  # type: ignore[arg-type]
            if got[-1] == events[-1]["seq"]:
                break
    assert got == [e["seq"] for e in events[3:]]
    r = await client.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": "nope"})
    assert r.status_code == 400


async def test_reconnect_mid_message_gets_text_so_far(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="echo", tokens=400, token_delay_ms=5))
    turn = await api.turn(sid, "w")
    last_id = "0"
    async with client.stream("GET", f"/v1/sessions/{sid}/events") as r:
        deltas = 0
        async for frame_id, kind, _ in read_sse(r):
            last_id = frame_id or last_id
            deltas += kind == "message.delta"
            if deltas == 10:
                break
    async with client.stream(
        "GET", f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": last_id}
    ) as r:
        async for _, kind, data in read_sse(r):
            if kind == "message.delta":
                # one coalesced delta from offset 0 holding everything streamed so far
                assert data["data"]["offset"] == 0
                assert len(data["data"]["delta"]) >= 10 * len("w ")
                break
            assert kind != "message.completed"
    await api.wait_turn(sid, turn["id"])


async def test_sse_resume_random_drops(api: Api, client: httpx.AsyncClient) -> None:
    """Drop the connection at a random frame and reconnect with Last-Event-ID, 100 times:
    every durable event arrives exactly once and in order; delta text never contradicts the
    final message."""
    rng = random.Random(7)
    steps = [
        {"text": f"step {i} thinking", "tool_calls": [{"name": "get_time"}]} for i in range(12)
    ]
    sid = await api.session(
        await api.agent(steps=steps, reply="echo", tokens=60, token_delay_ms=1, max_steps=100)
    )
    turn_ids = [(await api.turn(sid, "go"))["id"]]
    seen: list[int] = []
    texts: dict[str, dict[int, str]] = {}
    last_id: str | None = None
    drops = 0
    finished: set[str] = set()
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        budget = rng.randint(1, 8)
        async with client.stream("GET", f"/v1/sessions/{sid}/events", headers=headers) as r:
            assert r.status_code == 200
            async for frame_id, kind, data in read_sse(r):
                last_id = frame_id
                if kind == "message.delta":
                    d = data["data"]
                    texts.setdefault(d["message_id"], {})[d["offset"]] = d["delta"]
                else:
                    seen.append(data["seq"])
                    if kind == "turn.completed":
                        finished.add(data["turn_id"])
                budget -= 1
                if budget == 0 or set(turn_ids) <= finished:
                    break
        if set(turn_ids) <= finished:
            if drops >= 100:
                break
            turn_ids.append((await api.turn(sid, "again"))["id"])
        else:
            drops += 1
    events = await api.events(sid)
    async with client.stream(
        "GET", f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": str(last_id)}
    ) as r:
        async for _, kind, data in read_sse(r):  # the tail after the last turn.completed
            if kind != "message.delta":
                seen.append(data["seq"])
            if data["seq"] == events[-1]["seq"]:
                break
    assert seen == [e["seq"] for e in events], "every durable event exactly once, in order"
    finals = {
        e["data"]["message"]["id"]: e["data"]["message"]["content"]
        for e in events
        if e["type"] == "message.completed"
    }
    for message_id, pieces in texts.items():
        for offset, piece in pieces.items():
            assert finals[message_id][offset : offset + len(piece)] == piece


async def test_many_concurrent_streams_of_one_session(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="echo", tokens=50, token_delay_ms=2))

    async def reader() -> list[Any]:
        got = []
        async with client.stream("GET", f"/v1/sessions/{sid}/events") as r:
            async for _, kind, data in read_sse(r):
                if kind != "message.delta":
                    got.append(data["seq"])
                if kind == "turn.completed":
                    return got
        return got

    readers = [asyncio.create_task(reader()) for _ in range(20)]
    await asyncio.sleep(0)  # let them connect; order does not matter: all replay from 0
    await api.turn(sid, "x")
    results = await asyncio.wait_for(asyncio.gather(*readers), 30)
    events = await api.events(sid)
    end = next(e["seq"] for e in events if e["type"] == "turn.completed")
    for got in results:
        assert got == list(range(1, end + 1))


async def test_idle_stream_gets_keepalives(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="hi"))
    async with client.stream("GET", f"/v1/sessions/{sid}/events") as r:
        async for line in r.aiter_lines():
            if line.startswith(":"):
                assert line == ": ping"
                break  # the server pings an idle stream (every sse_ping_s: 1 s in tests)
