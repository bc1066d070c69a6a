"""One tenant's input can never stall other tenants' work (DESIGN §8; issue 11, item 3).

Poisoned turns are written straight to the store, past the edge, as a bug or an older version
could have written them: input no worker can start with. Each one's claim fails in a
transaction of its own, the claim loop looks past it at once, and after `max_attempts` tries
it ends `failed` with reason `invalid_turn`. The bound is on the other tenant's turn as the
server recorded it: started at most a second later than a turn with nothing else queued."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import Api, Server, running_server, wait_for
from tether import domain, specs

POISONER = "poisoner"
# input that reads back fine but cannot start: what the claim writes to the transcript
POISONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": {"not": "text"}}],
    [{"role": "user"}],
]
FIFTY = 50


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _poison(server: Server, tenant: str, count: int) -> list[tuple[str, str]]:
    """`count` sessions of `tenant`, each with one queued turn that cannot start."""
    store = server.node.store
    spec = specs.AgentSpec(name=f"poisoned-{tenant}", model=specs.ModelSpec(reply="hi"))
    agent = await store.agents.create(tenant, spec)
    made = []
    for i in range(count):
        session_id, turn = await store.lifecycle.create_session(
            tenant, agent.id, "local", {}, POISONS[i % len(POISONS)]
        )
        assert turn is not None
        made.append((session_id, turn.id))
    return made


async def _prompt_turn(api: Api) -> dict[str, Any]:
    """Another tenant's turn, queued behind the others; answers it once completed."""
    agent = await api.agent(reply="hi")
    sid = await api.session(agent)
    turn = await api.turn(sid)
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed", done
    return done


def _waited(turn: dict[str, Any]) -> timedelta:
    return _time(turn["started_at"]) - _time(turn["created_at"])


def _assert_prompt(turn: dict[str, Any], baseline: timedelta) -> None:
    """Delayed by at most a second: beyond what a turn waits with nothing else queued, on
    the same server just before (a loaded machine slows every claim)."""
    delay = _waited(turn)
    assert delay - baseline <= timedelta(seconds=1), (
        f"the other tenant's turn waited {delay} (with nothing queued: {baseline})"
    )


async def test_poisoned_turns_do_not_delay_another_tenant(server: Server, api: Api) -> None:
    baseline = _waited(await _prompt_turn(api))
    poisoned = await _poison(server, POISONER, FIFTY)
    _assert_prompt(await _prompt_turn(api), baseline)

    store = server.node.store
    max_attempts = server.node.settings.max_attempts

    async def all_failed() -> list[domain.Turn] | None:
        turns = [await store.sessions.turn(POISONER, sid, tid) for sid, tid in poisoned]
        return turns if all(t.status.terminal for t in turns) else None

    for turn in await wait_for(all_failed, 30, "the poisoned turns to end"):
        assert turn.status is domain.TurnStatus.FAILED, turn
        assert turn.reason == "invalid_turn"
        assert turn.error is not None and turn.error.code == "invalid_turn"
        assert f"(attempts: {max_attempts})" in turn.error.message
        assert turn.attempt == max_attempts
        assert turn.started_at is None  # it never ran
    # each ended the normal way: its session is at rest and takes new work
    sid, _ = poisoned[0]
    session = await store.sessions.get(POISONER, sid)
    assert session.status is domain.SessionStatus.IDLE
    events = await store.sessions.events_after(sid, 0, 100)
    assert [e.type for e in events if e.type is domain.EventType.TURN_FAILED]
    turn = await server.node.service.start_turn(POISONER, sid, "now something valid")

    async def ended() -> domain.Turn | None:
        current = await store.sessions.turn(POISONER, sid, turn.id)
        return current if current.status.terminal else None

    assert (await wait_for(ended, 20, "a valid turn")).status is domain.TurnStatus.COMPLETED


async def test_failing_turns_do_not_delay_another_tenant(server: Server, api: Api) -> None:
    svc = server.node.service
    spec = specs.AgentSpec(name="failing", model=specs.ModelSpec(fail="scripted failure"))
    await svc.agents.create("failer", spec)
    baseline = _waited(await _prompt_turn(api))
    failing = [await svc.create_session("failer", "failing", None, "go") for _ in range(FIFTY)]
    _assert_prompt(await _prompt_turn(api), baseline)

    async def all_failed() -> bool:
        for session, turn in failing:
            assert turn is not None
            current = await svc.get_turn("failer", session.id, turn.id)
            if not current.status.terminal:
                return False
            assert current.status is domain.TurnStatus.FAILED and current.reason == "model_error"
        return True

    await wait_for(all_failed, 30, "the failing turns to end")


async def test_stopping_a_poisoned_session_is_a_normal_answer(
    server: Server, client: httpx.AsyncClient
) -> None:
    """Stopping answered 500 (though the stop applied). Whether the worker has failed the
    turn yet or not, every surface's stop answers as usual."""
    sessions = await _poison(server, "default", 4)
    stops = [
        ("/v1/sessions/{sid}/interrupt", {"scope": "all"}),
        ("/v1/sessions/{sid}/turns/{tid}/cancel", {}),
        ("/compat/gumloop/api/v1/sessions/{sid}/cancel", None),
        ("/compat/factory/api/v0/sessions/{sid}/interrupt", None),
    ]
    for (sid, tid), (path, body) in zip(sessions, stops, strict=True):
        r = await client.post(path.format(sid=sid, tid=tid), json=body)
        assert r.status_code == 200, (path, r.text)
        current = await server.node.store.sessions.turn("default", sid, tid)
        assert current.status in (domain.TurnStatus.CANCELLED, domain.TurnStatus.FAILED)


async def test_one_attempt_is_enough_when_configured(tmp_path: Path) -> None:
    """`max_attempts` bounds the tries: with 1, the first failed claim fails the turn."""
    async with running_server(tmp_path, max_attempts=1) as server:
        [(sid, tid)] = await _poison(server, "default", 1)
        server.node.bus.notify_work()

        async def failed() -> domain.Turn | None:
            turn = await server.node.store.sessions.turn("default", sid, tid)
            return turn if turn.status.terminal else None

        turn = await wait_for(failed, 20, "the poisoned turn to fail")
        assert turn.reason == "invalid_turn" and turn.attempt == 1
