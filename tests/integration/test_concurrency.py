"""Many sessions, several turns each, all at once: order kept, one running turn per session."""

from __future__ import annotations

import asyncio

from tests.helpers import Api


async def test_200_sessions_several_turns_each(api: Api) -> None:
    agent = await api.agent(
        reply="echo",
        tokens=5,
        steps=[{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0.001}}]}],
    )
    sids = await asyncio.gather(*(api.session(agent) for _ in range(200)))
    # all 200 sessions submit at once; the client keeps 64 requests in flight, as a real
    # client pool would
    gate = asyncio.Semaphore(64)

    async def drive(sid: str) -> list[str]:
        out = []
        for i in range(3):
            async with gate:
                out.append((await api.turn(sid, f"{sid[-6:]}-{i}"))["id"])
        return out

    turn_ids = await asyncio.gather(*(drive(s) for s in sids))

    async def check(sid: str, ids: list[str]) -> None:
        async with gate:
            await checked(sid, ids)

    async def checked(sid: str, ids: list[str]) -> None:
        for tid in ids:
            assert (await api.wait_turn(sid, tid, 100, 0.25))["status"] == "completed"
        events = await api.events(sid)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        running: str | None = None
        order = []
        for e in events:
            if e["type"] == "turn.started":
                if running == e["turn_id"] and e["data"]["attempt"] > 1:
                    # the same turn again: its lease lapsed (a starved worker on a loaded
                    # box) and it was claimed anew, from its last checkpoint. One turn.
                    continue
                assert running is None, f"two running turns in {sid}"
                running = e["turn_id"]
                order.append(e["turn_id"])
            elif e["type"] in ("turn.completed", "turn.failed", "turn.cancelled"):
                assert e["turn_id"] == running
                running = None
        assert order == ids, "turns ran in FIFO order"
        msgs = await api.messages(sid)
        users = [m["content"] for m in msgs if m["role"] == "user"]
        assert users == [f"{sid[-6:]}-{i}" for i in range(3)]
        assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"] * 3

    await asyncio.gather(*(check(s, ids) for s, ids in zip(sids, turn_ids, strict=True)))
