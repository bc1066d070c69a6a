"""Store operations on SQLite `:memory:`: a turn's life as the worker and the API write it,
without a server, a bus or a worker (the fast loop for work on the store). The same
operations run on PostgreSQL in the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, update

from tether import domain, errors, specs, versions
from tether.domain import EventType, ToolOutcome, TurnStatus
from tether.store import Claim, Store, open_store
from tether.store.schema import events, tool_runs

TENANT = "acme"


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = await open_store("sqlite:///:memory:")
    yield store
    await store.close()


@pytest.fixture
async def session_id(store: Store) -> str:
    agent = await store.agents.create(TENANT, specs.AgentSpec(name="a"))
    session_id, _ = await store.lifecycle.create_session(TENANT, agent.id, "local", {}, None)
    return session_id


async def _queued(store: Store, session_id: str, text: str = "hi") -> domain.Turn:
    queued = await store.lifecycle.create_turn(
        TENANT, session_id, [{"role": "user", "content": text}], domain.OnBusy.ENQUEUE
    )
    return queued.turn


async def _claimed(store: Store, session_id: str) -> Claim:
    claims, unstartable = await store.leases.claim("w1", 1, lease_ttl_s=30)
    assert unstartable == []
    assert [c.turn.session_id for c in claims] == [session_id]
    return claims[0]


async def _types(store: Store, session_id: str) -> list[str]:
    return [e.type.value for e in await store.sessions.events_after(session_id, 0, 1000)]


def _assistant(turn: domain.Turn, *calls: domain.ToolCall, text: str = "ok") -> domain.Message:
    return domain.Message(
        id=f"msg_{len(calls)}{text}",
        session_id=turn.session_id,
        turn_id=turn.id,
        seq=0,
        role="assistant",
        content=text,
        tool_calls=list(calls),
    )


def _usage() -> domain.Usage:
    return domain.Usage(input_tokens=3, output_tokens=2, model_calls=1)


# --- agents -----------------------------------------------------------------------------------


async def test_agent_names_are_unique_among_live_agents(store: Store) -> None:
    agent = await store.agents.create(TENANT, specs.AgentSpec(name="a"))
    with pytest.raises(errors.AlreadyExists):  # the constraint, classified by the dialect
        await store.agents.create(TENANT, specs.AgentSpec(name="a"))
    await store.agents.create("other", specs.AgentSpec(name="a"))  # per tenant
    await store.agents.delete(TENANT, agent.id)
    again = await store.agents.create(TENANT, specs.AgentSpec(name="a"))
    assert (await store.agents.get(TENANT, "a")).id == again.id
    assert (await store.agents.by_id(agent.id)).spec.name == "a", "a deleted one stays readable"


# --- a turn's life ----------------------------------------------------------------------------


async def test_a_turn_from_queue_to_completed(store: Store, session_id: str) -> None:
    turn = await _queued(store, session_id)
    assert (await store.sessions.get(TENANT, session_id)).status is domain.SessionStatus.QUEUED
    claim = await _claimed(store, session_id)
    assert claim.turn.status is TurnStatus.RUNNING and claim.turn.attempt == 1
    assert [m.content for m in await store.sessions.transcript(session_id)] == ["hi"]
    call = domain.ToolCall("call_1", "get_time", {})
    step = domain.Checkpoint(_usage(), step_done=True, messages=[_assistant(turn, call)])
    await store.lifecycle.checkpoint(claim.turn, claim.token, step, 0.1)
    started = domain.Checkpoint(_usage(), started=[call])
    await store.lifecycle.checkpoint(claim.turn, claim.token, started, 0.2)
    result = domain.Message.tool_result(session_id, turn.id, call, "noon")
    ran = domain.Checkpoint(
        _usage(), step_done=True, results=[domain.ToolResult(result, ToolOutcome.COMPLETED)]
    )
    await store.lifecycle.checkpoint(claim.turn, claim.token, ran, 0.3)
    end = domain.Checkpoint(
        _usage(),
        step_done=True,
        messages=[_assistant(turn, text="done")],
        end=domain.TurnEnd(TurnStatus.COMPLETED),
    )
    await store.lifecycle.checkpoint(claim.turn, claim.token, end, 0.4)

    final = await store.sessions.turn(TENANT, session_id, turn.id)
    assert (final.status, final.step, final.claim_token) == (TurnStatus.COMPLETED, 3, None)
    assert final.usage == _usage()
    assert await _types(store, session_id) == [
        "turn.queued",
        "session.updated",
        "message.completed",  # the input, written with the claim
        "turn.started",
        "session.updated",
        "message.completed",
        "tool.started",
        "message.completed",
        "tool.completed",
        "message.completed",
        "turn.completed",
        "session.updated",
    ]
    seqs = [e.seq for e in await store.sessions.events_after(session_id, 0, 1000)]
    assert seqs == list(range(1, len(seqs) + 1)), "gap-free"
    assert (await store.sessions.get(TENANT, session_id)).status is domain.SessionStatus.IDLE


async def test_one_turn_runs_per_session_in_order(store: Store, session_id: str) -> None:
    first, second = await _queued(store, session_id, "1"), await _queued(store, session_id, "2")
    claim = await _claimed(store, session_id)
    assert claim.turn.id == first.id
    assert await store.leases.claim("w2", 5, lease_ttl_s=30) == ([], []), "the session is busy"
    end = domain.Checkpoint(_usage(), end=domain.TurnEnd(TurnStatus.COMPLETED))
    await store.lifecycle.checkpoint(claim.turn, claim.token, end, 0.1)
    assert (await _claimed(store, session_id)).turn.id == second.id


async def test_a_stale_holder_changes_nothing(store: Store, session_id: str) -> None:
    await _queued(store, session_id)
    claim = await _claimed(store, session_id)
    step = domain.Checkpoint(_usage(), step_done=True)
    with pytest.raises(errors.LeaseLost):
        await store.lifecycle.checkpoint(claim.turn, "not-the-token", step, 0.1)
    assert await store.leases.release(claim.turn, claim.token)
    with pytest.raises(errors.LeaseLost):  # handed back: the token holds nothing now
        await store.lifecycle.checkpoint(claim.turn, claim.token, step, 0.1)


# --- stops ------------------------------------------------------------------------------------


async def test_a_stop_ends_a_queued_turn_at_once(store: Store, session_id: str) -> None:
    turn = await _queued(store, session_id)
    stopped, wake, _ = await store.lifecycle.stop(
        TENANT, session_id, None, domain.StopMode.INTERRUPT, domain.StopScope.TURN, "why"
    )
    assert stopped is not None and stopped.id == turn.id
    assert (stopped.status, stopped.reason, wake) == (TurnStatus.CANCELLED, "why", [])
    assert await store.leases.claim("w1", 5, lease_ttl_s=30) == ([], [])


async def test_a_stopped_turn_gives_every_call_an_outcome(store: Store, session_id: str) -> None:
    turn = await _queued(store, session_id)
    claim = await _claimed(store, session_id)
    done, running, waiting = (domain.ToolCall(f"call_{n}", "sleep", {}) for n in range(3))
    model = domain.Checkpoint(
        _usage(), step_done=True, messages=[_assistant(turn, done, running, waiting)]
    )
    await store.lifecycle.checkpoint(claim.turn, claim.token, model, 0.1)
    await store.lifecycle.checkpoint(
        claim.turn, claim.token, domain.Checkpoint(_usage(), started=[done, running]), 0.2
    )
    stopped, wake, _ = await store.lifecycle.stop(
        TENANT, session_id, None, domain.StopMode.INTERRUPT, domain.StopScope.TURN, "enough"
    )
    assert stopped is not None and stopped.status is TurnStatus.CANCELLING
    assert wake == [turn.id], "its executor must be woken"
    step = domain.Checkpoint(_usage(), step_done=True)
    with pytest.raises(errors.StopRequested):  # the holder learns of the stop on its next write
        await store.lifecycle.checkpoint(claim.turn, claim.token, step, 0.3)

    finished = domain.Message.tool_result(session_id, turn.id, done, "slept")
    end = domain.Checkpoint(
        _usage(),
        results=[domain.ToolResult(finished, ToolOutcome.COMPLETED)],
        end=domain.TurnEnd(TurnStatus.CANCELLED),
        interrupted=[running.id],
    )
    await store.lifecycle.checkpoint(claim.turn, claim.token, end, 0.4)

    final = await store.sessions.turn(TENANT, session_id, turn.id)
    assert (final.status, final.reason) == (TurnStatus.CANCELLED, "enough"), "the stop's reason"
    outcomes = {
        e.data["tool_call_id"]: e.data["outcome"]
        for e in await store.sessions.events_after(session_id, 0, 1000)
        if e.type is EventType.TOOL_COMPLETED
    }
    assert outcomes == {done.id: "completed", running.id: "interrupted", waiting.id: "not_run"}
    results = [m for m in await store.sessions.transcript(session_id) if m.role == "tool"]
    assert sorted(m.tool_call_id or "" for m in results) == [done.id, running.id, waiting.id]


async def test_a_rollback_removes_the_turn_from_the_transcript(
    store: Store, session_id: str
) -> None:
    turn = await _queued(store, session_id)
    claim = await _claimed(store, session_id)
    await store.lifecycle.stop(
        TENANT, session_id, turn.id, domain.StopMode.ROLLBACK, domain.StopScope.TURN, "undo"
    )
    partial = _assistant(turn, text="half")
    end = domain.Checkpoint(_usage(), messages=[partial], end=domain.TurnEnd(TurnStatus.CANCELLED))
    await store.lifecycle.checkpoint(claim.turn, claim.token, end, 0.1)
    assert await store.sessions.transcript(session_id) == []
    ended = (await store.sessions.events_after(session_id, 0, 1000))[-2]
    assert (ended.type, ended.data.get("rolled_back")) == (EventType.TURN_CANCELLED, True)


# --- pause, answer, resume --------------------------------------------------------------------


async def test_a_pause_waits_without_a_worker_and_resumes(store: Store, session_id: str) -> None:
    turn = await _queued(store, session_id)
    claim = await _claimed(store, session_id)
    call = domain.ToolCall("call_1", "delete", {"path": "/"})
    await store.lifecycle.checkpoint(
        claim.turn,
        claim.token,
        domain.Checkpoint(_usage(), step_done=True, messages=[_assistant(turn, call)]),
        0.1,
    )
    ask = domain.InterruptRequest("approval", call.id, call.name, {"arguments": call.arguments})
    pause = domain.Checkpoint(_usage(), waits=True, asks=[ask])
    await store.lifecycle.checkpoint(claim.turn, claim.token, pause, 0.2)
    waiting = await store.sessions.turn(TENANT, session_id, turn.id)
    assert (waiting.status, waiting.claim_token, waiting.worker_id) == (
        TurnStatus.WAITING,
        None,
        None,
    )
    page = await store.interrupts.page(TENANT, session_id, None, 10, None)
    [interrupt] = page.items
    resolved, resumes = await store.lifecycle.respond(interrupt, {"decision": "approve"}, "me")
    assert resumes and resolved.status is domain.InterruptStatus.RESOLVED
    with pytest.raises(errors.InterruptNotPending):  # the first answer wins
        await store.lifecycle.respond(interrupt, {"decision": "deny"}, "you")
    again = await _claimed(store, session_id)
    assert again.turn.id == turn.id
    resume = await store.tool_runs.resume_state(turn.id)
    assert [i.response for i in resume.interrupts[call.id]] == [{"decision": "approve"}]


async def test_an_expiry_that_fails_the_turn(store: Store, session_id: str) -> None:
    turn = await _queued(store, session_id)
    claim = await _claimed(store, session_id)
    ask = domain.InterruptRequest("question", "call_1", "ask_user", {}, ttl_s=1, on_expire="fail")
    pause = domain.Checkpoint(_usage(), waits=True, asks=[ask])
    await store.lifecycle.checkpoint(claim.turn, claim.token, pause, 0.1)
    later = domain.utcnow() + timedelta(seconds=5)
    [(sid, iid)] = await store.interrupts.due(later)
    await store.lifecycle.expire(sid, iid, later)
    final = await store.sessions.turn(TENANT, session_id, turn.id)
    assert (final.status, final.reason) == (TurnStatus.FAILED, "approval_expired")


# --- leases -----------------------------------------------------------------------------------


async def _expire_leases(store: Store) -> None:
    await store.leases.expire_all()


@pytest.mark.parametrize(
    ("attempts_left", "stopping", "expected"),
    [
        (True, False, TurnStatus.QUEUED),
        (False, False, TurnStatus.FAILED),
        (True, True, TurnStatus.CANCELLED),
    ],
)
async def test_an_expired_lease(
    store: Store, session_id: str, attempts_left: bool, stopping: bool, expected: TurnStatus
) -> None:
    turn = await _queued(store, session_id)
    await _claimed(store, session_id)
    if stopping:
        await store.lifecycle.stop(
            TENANT, session_id, None, domain.StopMode.INTERRUPT, domain.StopScope.TURN, "stop"
        )
    await _expire_leases(store)
    [(sid, tid)] = await store.leases.expired(domain.utcnow())
    outcome = await store.lifecycle.recover_lease(
        sid, tid, max_attempts=2 if attempts_left else 1, now=domain.utcnow()
    )
    assert outcome is expected
    final = await store.sessions.turn(TENANT, session_id, turn.id)
    assert final.status is expected
    if expected is TurnStatus.QUEUED:
        assert final.attempt == 2
    if expected is TurnStatus.FAILED:
        assert final.error == domain.TurnError("worker_lost", "worker lost 1 times")


# --- idempotency keys -------------------------------------------------------------------------


async def test_an_idempotency_key_is_claimed_once(store: Store) -> None:
    assert await store.idempotency.begin(TENANT, "k", "fp") is None
    recorded = await store.idempotency.begin(TENANT, "k", "fp")
    assert recorded is not None and recorded.status_code is None  # in flight
    await store.idempotency.finish(TENANT, "k", 201, {"json": {"id": 1}})
    done = await store.idempotency.begin(TENANT, "k", "fp")
    assert done is not None and (done.status_code, done.response) == (201, {"json": {"id": 1}})


# --- schema versions --------------------------------------------------------------------------


async def test_rows_of_a_newer_schema_are_refused(store: Store, session_id: str) -> None:
    await _queued(store, session_id)
    await store.db.write(lambda conn: conn.execute(update(events).values(v=99)))
    with pytest.raises(versions.UnknownVersion):
        await store.sessions.events_after(session_id, 0, 100)


async def test_rows_of_an_older_schema_are_upgraded(
    store: Store, session_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How a future bump reads what this version wrote: one step per version."""
    turn = await _queued(store, session_id)
    claim = await _claimed(store, session_id)
    monkeypatch.setattr(versions, "EVENT_VERSION", 2)
    monkeypatch.setitem(versions._EVENT_STEPS, 1, lambda type, data: {**data, "upgraded": type})
    # say version 1 called a started call "running" and version 2 renamed it
    monkeypatch.setattr(versions, "RESUME_VERSION", 2)
    monkeypatch.setitem(versions._LEDGER_STEPS, 1, lambda s: "started" if s == "running" else s)

    read = await store.sessions.events_after(session_id, 0, 100)
    assert read[0].data["upgraded"] == "turn.queued"

    def add_run(conn: Any) -> None:
        row = {"turn_id": turn.id, "tool_call_id": "c", "name": "n", "status": "running"}
        conn.execute(insert(tool_runs).values(**row, runs=1, updated_at=domain.utcnow(), v=1))

    await store.db.write(add_run)
    assert (await store.tool_runs.resume_state(claim.turn.id)).started == {"c"}
