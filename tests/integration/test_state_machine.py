"""A hypothesis state machine drives the service: start turns with each on_busy, stop with
each mode and scope, let turns run, restart the worker; the invariants of DESIGN §2-3 hold
after every step."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.helpers import settings_for
from tether import domain, errors, specs
from tether.node import Node
from tether.worker import Worker

SHAPES = {
    "short": specs.ModelSpec(reply="echo", tokens=3),
    "stream": specs.ModelSpec(reply="echo", tokens=400, token_delay_ms=2),
    "tools": specs.ModelSpec(
        steps=[
            specs.ScriptedStep(
                text="t",
                tool_calls=[
                    specs.ScriptedToolCall(name="sleep", arguments={"seconds": 0.05}),
                    specs.ScriptedToolCall(name="get_time"),
                ],
            )
        ],
        reply="ok",
    ),
}
SESSIONS = 3


_instances = itertools.count()


class ServiceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        # a tenant of its own: in cluster mode every example shares the test's database
        self.tenant = f"t-{next(_instances)}"
        self.node = Node(settings_for(Path(self.tmp.name), workers=4))
        self.run(self.node.start())
        self.svc = self.node.service
        self.agents = {
            name: self.run(
                self.svc.agents.create(
                    self.tenant,
                    specs.AgentSpec(
                        name=name,
                        model=spec,
                        tools=[specs.ToolSpec(name="sleep"), specs.ToolSpec(name="get_time")],
                    ),
                )
            )
            for name, spec in SHAPES.items()
        }
        self.sessions: list[str] = []
        self.terminal: dict[str, str] = {}  # turn id -> the terminal status first seen
        self.created: dict[str, list[str]] = {}  # session -> its turns, in creation order

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.node.stop())
        self.loop.close()
        self.tmp.cleanup()

    @rule(shape=st.sampled_from(sorted(SHAPES)))
    @precondition(lambda self: len(self.sessions) < SESSIONS)
    def new_session(self, shape: str) -> None:
        session, _ = self.run(self.svc.create_session(self.tenant, self.agents[shape].id))
        self.sessions.append(session.id)
        self.created[session.id] = []

    @rule(index=st.integers(0, SESSIONS - 1), on_busy=st.sampled_from(list(domain.OnBusy)))
    @precondition(lambda self: self.sessions)
    def start_turn(self, index: int, on_busy: domain.OnBusy) -> None:
        sid = self.sessions[index % len(self.sessions)]
        try:
            turn = self.run(self.svc.start_turn(self.tenant, sid, "hi", on_busy))
        except errors.SessionBusy:
            assert on_busy is domain.OnBusy.REJECT  # only `reject` refuses a busy session
            return
        if turn.id not in self.created[sid]:  # a steer may join a turn under way instead
            self.created[sid].append(turn.id)

    @rule(
        index=st.integers(0, SESSIONS - 1),
        mode=st.sampled_from(list(domain.StopMode)),
        scope=st.sampled_from(list(domain.StopScope)),
        wait=st.sampled_from([0, 0.5]),
    )
    @precondition(lambda self: self.sessions)
    def stop(self, index: int, mode: domain.StopMode, scope: domain.StopScope, wait: float) -> None:
        sid = self.sessions[index % len(self.sessions)]
        result = self.run(self.svc.stop(self.tenant, sid, mode=mode, scope=scope, wait_s=wait))
        if result.turn is not None and result.confirmed:
            assert result.turn.status in domain.TERMINAL

    @rule(seconds=st.sampled_from([0.0, 0.02, 0.1]))
    def let_it_run(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    @rule()
    def restart_worker(self) -> None:
        assert self.node.worker is not None
        self.run(self.node.worker.stop())
        self.node.worker = Worker(
            self.node.store, self.node.bus, self.node.tools, self.node.settings
        )
        self.run(self.node.worker.start())

    # --- invariants ------------------------------------------------------------------------

    def _turns(self, sid: str) -> list[domain.Turn]:
        page = self.run(self.svc.list_turns(self.tenant, sid, 1000, None))
        return list(page.items)

    @invariant()
    def one_active_turn_per_session(self) -> None:
        for sid in self.sessions:
            active = [t for t in self._turns(sid) if t.status in domain.ACTIVE]
            assert len(active) <= 1, active

    @invariant()
    def terminal_states_absorb(self) -> None:
        for sid in self.sessions:
            for t in self._turns(sid):
                if t.id in self.terminal:
                    assert t.status.value == self.terminal[t.id], t
                elif t.status.terminal:
                    self.terminal[t.id] = t.status.value

    @invariant()
    def events_gap_free_and_fifo(self) -> None:
        for sid in self.sessions:
            events = self.run(self.svc.events_after(self.tenant, sid, 0, 100_000))
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            first_starts = [
                e.turn_id
                for e in events
                if e.type is domain.EventType.TURN_STARTED and e.data["attempt"] == 1
            ]
            # creation order: the turns the machine made, and those the store made of steers
            # that their turn never reached (at its end), numbered in the same sequence
            order = {t.id: t.seq for t in self._turns(sid)}
            assert set(self.created[sid]) <= set(order), "every turn the machine made exists"
            assert first_starts == sorted(first_starts, key=order.__getitem__), "FIFO"
            ends = Counter(e.turn_id for e in events if e.type in domain.TERMINAL_EVENT.values())
            assert all(n == 1 for n in ends.values()), "one terminal event per turn"

    @invariant()
    def every_tool_call_has_one_result(self) -> None:
        for sid in self.sessions:
            finished = {t.id for t in self._turns(sid) if t.status.terminal}
            msgs = self.run(self.svc.list_messages(self.tenant, sid, 100_000, None)).items
            calls = [c.id for m in msgs if m.turn_id in finished for c in m.tool_calls]
            results = Counter(
                m.tool_call_id for m in msgs if m.role == "tool" and m.turn_id in finished
            )
            assert sorted(calls) == sorted(results), (calls, results)
            assert all(n == 1 for n in results.values())


ServiceMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestServiceMachine = ServiceMachine.TestCase
