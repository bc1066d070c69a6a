"""The state machines (machines.TurnMove, InterruptMove, ToolRunMove, SteerMove) are the one
definition of which status may follow which, and store/guards.py the one place that applies
them: checked on the table, on the code of the store, and by applying moves to rows of SQLite
`:memory:`."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, insert, select

from tether import domain, machines, specs
from tether.domain import InterruptStatus, SteerStatus, ToolRunStatus, TurnStatus
from tether.store import Store, guards, open_store, sqlite
from tether.store.schema import (
    agents,
    interrupts,
    sessions,
    steers,
    tool_runs,
    turns,
    webhook_deliveries,
    webhook_endpoints,
)
from tether.webhooks.records import DeliveryStatus, EndpointStatus

MACHINES = [
    machines.TurnMove,
    machines.InterruptMove,
    machines.ToolRunMove,
    machines.SteerMove,
    machines.DeliveryMove,
    machines.EndpointMove,
]
STORE = Path(domain.__file__).parent / "store"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


# --- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("machine", MACHINES)
def test_terminal_states_absorb(machine: type) -> None:
    table = machines.transitions(machine)
    terminal = {s for s, targets in table.items() if not targets}
    assert terminal, "every machine ends somewhere"
    for move in machines.moves_of(machine):
        assert not move.sources & terminal, f"{move.name} leaves a terminal state"


def test_turn_table() -> None:
    assert {s for s, t in machines.TURN_TRANSITIONS.items() if not t} == domain.TERMINAL
    assert machines.sources_of(TurnStatus.COMPLETED) == (TurnStatus.RUNNING,)
    # never completed once a stop was requested
    assert TurnStatus.COMPLETED not in machines.TURN_TRANSITIONS[TurnStatus.CANCELLING]
    # a turn no executor holds is never `cancelling`: a stop ends it at once
    assert machines.TurnMove.STOP.sources <= domain.HELD
    assert not machines.TurnMove.CANCEL.sources & domain.HELD
    # every status is reached by some move; every one but the terminal ones goes on
    assert {m.target for m in machines.moves_of(machines.TurnMove)} == set(TurnStatus)
    assert {s for s, t in machines.TURN_TRANSITIONS.items() if t} == set(
        TurnStatus
    ) - domain.TERMINAL


def test_a_finished_call_never_runs_again() -> None:
    assert machines.transitions(machines.ToolRunMove)[ToolRunStatus.FINISHED] == frozenset()


# --- the code: every status write goes through guards.py --------------------------------------


def _store_modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(STORE.glob("*.py")):
        if path.name != "guards.py":
            yield path, ast.parse(path.read_text())


def _is_status_column(node: ast.AST) -> bool:
    """`<table>.c.status` of a table whose status is a machine's (a session's is derived)."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "status"
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "c"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id
        in ("turns", "interrupts", "tool_runs", "steers", "webhook_deliveries", "webhook_endpoints")
    )


def test_no_hard_coded_from_state_outside_the_guards() -> None:
    found = []
    for path, tree in _store_modules():
        for node in ast.walk(tree):
            compared = isinstance(node, ast.Compare) and (
                _is_status_column(node.left) or any(map(_is_status_column, node.comparators))
            )
            listed = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("in_", "notin_")
                and _is_status_column(node.func.value)
            )
            if compared or listed:
                found.append(f"{path.name}:{node.lineno}")
    assert found == [], "a status condition outside store/guards.py"


def _root(node: ast.AST) -> ast.AST:
    """The call a method chain starts from: `update(t)` of `update(t).where(...).values(...)`."""
    while isinstance(node, ast.Call | ast.Attribute):
        inner = node.func if isinstance(node, ast.Call) else node.value
        if isinstance(node, ast.Call) and isinstance(inner, ast.Name):
            return node
        node = inner
    return node


def test_every_status_update_makes_a_move() -> None:
    """No UPDATE sets a `status` itself: guards.update sets it, to a move's target."""
    found = []
    for path, tree in _store_modules():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "values" or not any(k.arg == "status" for k in node.keywords):
                continue
            root = _root(node.func.value)
            if isinstance(root, ast.Call) and getattr(root.func, "id", "") == "insert":
                continue  # a new row starts somewhere: not a move
            found.append(f"{path.name}:{node.lineno}")
    assert found == [], "a status updated outside a move"


# --- applying the moves -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = sqlite.engine_for("sqlite:///:memory:")
    with engine.begin() as conn:
        from tether.store import migrations

        migrations.upgrade(conn)
        conn.execute(
            insert(agents).values(
                id="agt_1", tenant_id="t", name="a", spec={}, created_at=NOW, updated_at=NOW
            )
        )
        conn.execute(
            insert(sessions).values(
                id="s",
                tenant_id="t",
                agent_id="agt_1",
                status="idle",
                metadata={},
                created_at=NOW,
                updated_at=NOW,
            )
        )
    yield engine
    engine.dispose()


_turn_numbers = iter(range(1, 1_000_000))


def _turn(conn: Connection, status: TurnStatus) -> str:
    n = next(_turn_numbers)
    turn_id = f"turn_{n}"
    conn.execute(
        insert(turns).values(
            id=turn_id,
            session_id="s",
            tenant_id="t",
            seq=n,
            status=status.value,
            input=[],
            on_busy="enqueue",
            usage={},
            created_at=NOW,
        )
    )
    return turn_id


def _apply(conn: Connection, table: Any, move: machines.Move[Any], **where: Any) -> int:
    statement = guards.update(table, move)
    for column, value in where.items():
        statement = statement.where(table.c[column] == value)
    return conn.execute(statement).rowcount


def _status(conn: Connection, table: Any, **where: Any) -> str:
    query = select(table.c.status)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    return str(conn.execute(query).scalar_one())


@pytest.mark.parametrize("move", machines.moves_of(machines.TurnMove), ids=lambda m: m.name)
def test_a_turn_move_changes_exactly_its_sources(engine: Engine, move: machines.Move[Any]) -> None:
    with engine.begin() as conn:
        for status in TurnStatus:
            turn_id = _turn(conn, status)
            changed = _apply(conn, turns, move, id=turn_id)
            assert changed == (status in move.sources), (move.name, status)
            expected = move.target if status in move.sources else status
            assert _status(conn, turns, id=turn_id) == expected


@pytest.mark.parametrize("move", machines.moves_of(machines.InterruptMove), ids=lambda m: m.name)
def test_an_interrupt_move_changes_exactly_its_sources(
    engine: Engine, move: machines.Move[Any]
) -> None:
    with engine.begin() as conn:
        turn_id = _turn(conn, TurnStatus.WAITING)
        for status in InterruptStatus:
            iid = f"int_{turn_id}_{status.value}"
            conn.execute(
                insert(interrupts).values(
                    id=iid,
                    tenant_id="t",
                    session_id="s",
                    turn_id=turn_id,
                    type="question",
                    request={},
                    status=status.value,
                    step=0,
                    created_at=NOW,
                )
            )
            assert _apply(conn, interrupts, move, id=iid) == (status in move.sources)
            expected = move.target if status in move.sources else status
            assert _status(conn, interrupts, id=iid) == expected


def test_a_steer_is_settled_once() -> None:
    table = machines.transitions(machines.SteerMove)
    assert table[SteerStatus.PENDING] == {SteerStatus.DELIVERED, SteerStatus.CONVERTED}
    assert not table[SteerStatus.DELIVERED] and not table[SteerStatus.CONVERTED]


@pytest.mark.parametrize("move", machines.moves_of(machines.SteerMove), ids=lambda m: m.name)
def test_a_steer_move_changes_exactly_its_sources(engine: Engine, move: machines.Move[Any]) -> None:
    with engine.begin() as conn:
        turn_id = _turn(conn, TurnStatus.RUNNING)
        for status in SteerStatus:
            seq = conn.execute(
                insert(steers)
                .values(
                    session_id="s",
                    turn_id=turn_id,
                    status=status.value,
                    messages=[],
                    created_at=NOW,
                )
                .returning(steers.c.seq)
            ).scalar_one()
            assert _apply(conn, steers, move, seq=seq) == (status in move.sources)
            expected = move.target if status in move.sources else status
            assert _status(conn, steers, seq=seq) == expected


def _endpoint(conn: Connection, status: EndpointStatus) -> str:
    endpoint_id = f"whk_{next(_turn_numbers)}"
    conn.execute(
        insert(webhook_endpoints).values(
            id=endpoint_id,
            tenant_id="t",
            url="https://receiver.example/",
            events=["*"],
            status=status.value,
            secret_sealed="sealed",
            created_at=NOW,
            updated_at=NOW,
        )
    )
    return endpoint_id


@pytest.mark.parametrize("move", machines.moves_of(machines.EndpointMove), ids=lambda m: m.name)
def test_an_endpoint_move_changes_exactly_its_sources(
    engine: Engine, move: machines.Move[Any]
) -> None:
    with engine.begin() as conn:
        for status in EndpointStatus:
            endpoint_id = _endpoint(conn, status)
            changed = _apply(conn, webhook_endpoints, move, id=endpoint_id)
            assert changed == (status in move.sources), (move.name, status)
            expected = move.target if status in move.sources else status
            assert _status(conn, webhook_endpoints, id=endpoint_id) == expected


@pytest.mark.parametrize("move", machines.moves_of(machines.DeliveryMove), ids=lambda m: m.name)
def test_a_delivery_move_changes_exactly_its_sources(
    engine: Engine, move: machines.Move[Any]
) -> None:
    with engine.begin() as conn:
        endpoint_id = _endpoint(conn, EndpointStatus.ENABLED)
        for status in DeliveryStatus:
            delivery_id = f"dlv_{next(_turn_numbers)}"
            conn.execute(
                insert(webhook_deliveries).values(
                    id=delivery_id,
                    tenant_id="t",
                    endpoint_id=endpoint_id,
                    session_id="s",
                    type="turn.completed",
                    body="{}",
                    status=status.value,
                    next_attempt_at=NOW,
                    created_at=NOW,
                )
            )
            changed = _apply(conn, webhook_deliveries, move, id=delivery_id)
            assert changed == (status in move.sources), (move.name, status)
            expected = move.target if status in move.sources else status
            assert _status(conn, webhook_deliveries, id=delivery_id) == expected


def test_a_delivered_webhook_is_never_sent_again() -> None:
    table = machines.transitions(machines.DeliveryMove)
    assert table[DeliveryStatus.DELIVERED] == frozenset()
    # only a claim puts a delivery in flight, and only a person sends a failed one again
    assert {
        m.name
        for m in machines.moves_of(machines.DeliveryMove)
        if m.target is DeliveryStatus.SENDING
    } == {"claim"}
    assert table[DeliveryStatus.FAILED] == {DeliveryStatus.PENDING}


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = await open_store("sqlite:///:memory:")
    yield store
    await store.close()


async def test_the_ledger_upsert_follows_the_table(store: Store) -> None:
    """A ledger move creates the row of a new call, moves one in its sources, and leaves any
    other alone: a finished call is never started again."""
    from tether.store import tool_runs as ledger

    agent = await store.agents.create("t", specs.AgentSpec(name="a"))
    session_id, turn = await store.lifecycle.create_session("t", agent.id, "z", {}, [])
    assert turn is not None
    call = domain.ToolCall("call_1", "sleep", {})

    def run(body: Any) -> Any:
        return store.db.session_write(session_id, body)

    await run(lambda sw: ledger.start(sw, turn.id, [call]))
    await run(lambda sw: ledger.start(sw, turn.id, [call]))  # again, after a crash
    result = domain.Message.tool_result(session_id, turn.id, call, "done")
    done = domain.ToolResult(result, domain.ToolOutcome.COMPLETED)
    await run(lambda sw: ledger.record_results(sw, turn.id, [done]))
    await run(lambda sw: ledger.start(sw, turn.id, [call]))  # refused: finished absorbs

    def read(conn: Connection) -> tuple[str, int]:
        row = conn.execute(select(tool_runs).where(tool_runs.c.turn_id == turn.id)).one()
        return row.status, row.runs

    assert await store.db.read(read) == ("finished", 2)


@settings(max_examples=200, deadline=None)
@given(
    start=st.sampled_from(list(TurnStatus)),
    moves=st.lists(st.sampled_from(machines.moves_of(machines.TurnMove)), max_size=12),
)
def test_any_sequence_of_moves_follows_the_table(
    engine: Engine, start: TurnStatus, moves: list[machines.Move[TurnStatus]]
) -> None:
    """Whatever writes race, the row is where the table says, and a terminal state, once
    reached, is never left."""
    with engine.begin() as conn:
        turn_id = _turn(conn, start)
        expected = start
        for move in moves:
            _apply(conn, turns, move, id=turn_id)
            was_terminal = expected.terminal
            if expected in move.sources:
                expected = move.target
            assert _status(conn, turns, id=turn_id) == expected
            assert not was_terminal or expected.terminal
