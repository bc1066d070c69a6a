"""A stop racing the turn's completion: exactly one terminal state, never `completed` after a
confirmed stop."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import settings_for, wait_for
from tether import domain, specs
from tether.node import Node

# Each trial costs a few round trips on PostgreSQL + Redis, microseconds on SQLite.
TRIALS = 300 if os.environ.get("TETHER_TEST_BACKEND") == "cluster" else 1000


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(settings_for(tmp_path, workers=8))
    await node.start()
    yield node
    await node.stop()


async def test_stop_racing_completion(node: Node) -> None:
    svc = node.service
    rng = random.Random(1)
    agent = await svc.agents.create(
        "default", specs.AgentSpec(name="racer", model=specs.ModelSpec(reply="a b c", tokens=3))
    )
    # How long a turn takes here (microseconds inline on SQLite, round trips on PostgreSQL):
    # half the stops land after a random share of it, half after a few loop iterations.
    began = time.monotonic()
    for warmup in range(5):
        _, turn = await svc.create_session("default", agent.id, input=f"w{warmup}")
        assert turn is not None
        sid, tid = turn.session_id, turn.id

        async def ended(sid: str = sid, tid: str = tid) -> bool:
            return (await svc.get_turn("default", sid, tid)).status.terminal

        await wait_for(ended, 10, "a warm-up turn", interval=0.001)
    turn_s = (time.monotonic() - began) / 5
    outcomes = {"completed": 0, "cancelled": 0}
    for trial in range(TRIALS):
        session, turn = await svc.create_session("default", agent.id, input=f"t{trial}")
        assert turn is not None
        if trial % 2:  # land the stop at a different point each time
            await asyncio.sleep(rng.uniform(0, 1.5 * turn_s))
        else:
            for _ in range(rng.randint(0, 12)):
                await asyncio.sleep(0)
        result = await svc.stop("default", session.id, turn_id=turn.id, wait_s=5)
        assert result.turn is not None
        assert result.confirmed, f"trial {trial}: stop not confirmed"
        final = await svc.get_turn("default", session.id, turn.id)
        assert final.status == result.turn.status, "the confirmed state is the final state"
        assert final.status in (domain.TurnStatus.COMPLETED, domain.TurnStatus.CANCELLED)
        events = await svc.events_after("default", session.id, 0, 1000)
        terminal = [e for e in events if e.type in domain.TERMINAL_EVENT.values()]
        assert len(terminal) == 1, f"trial {trial}: {len(terminal)} terminal events"
        kinds = [e.type for e in events]
        if domain.EventType.TURN_CANCELLING in kinds:
            assert final.status is domain.TurnStatus.CANCELLED, "never completed after a stop"
        outcomes[final.status.value] += 1
    # both sides of the race were exercised
    assert outcomes["completed"] > 20, outcomes
    assert outcomes["cancelled"] > 20, outcomes
