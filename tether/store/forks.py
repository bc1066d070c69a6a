"""Forks (DESIGN §4b): a new session whose history is its source's up to a finished point.

`Forks.fork` does it in one transaction: `cut` reads where the fork starts from (and refuses a
point that is not finished: the copy must be valid for the next model call); `copy` writes
that history into the new session in its first session write. The source is only read.

What a fork holds: the source's turns up to the point, copied (new ids, the same `seq`,
status, input, usage and times: history, not new work), and their visible messages (new
ids, the same content, tool calls, results and provider data: the next model call sends back
exactly what the source would have). Rolled-back messages are not copied. Interrupts and the
ledger are not: every copied turn is finished, so all of its calls have their results in
the transcript.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select

from tether import domain, errors, ids, views
from tether.domain import EventType
from tether.store import lifecycle, rows
from tether.store.base import Database
from tether.store.schema import messages, turns
from tether.store.session_write import SESSION_BY_ID, SessionWrite


@dataclass(slots=True)
class Cut:
    """Where a fork starts: its origin, and the history it copies."""

    agent_id: str
    origin: dict[str, Any]  # the fork's `forked_from`: {session_id, turn_id, at}
    turns: list[domain.Turn]
    messages: list[domain.Message]


def cut(conn: Connection, session: Row[Any], turn_id: str | None, at: domain.ForkAt) -> Cut:
    """The history of `session` up to the end (`after`) or the start (`before`) of
    `turn_id`; without it, of the last turn of the session's finished ones (the last of
    the turns before which every turn is finished). TurnNotFinished if a turn in that
    history has not finished: a running or waiting turn is never copied."""
    all_turns = [
        rows.turn(r)
        for r in conn.execute(
            select(turns).where(turns.c.session_id == session.id).order_by(turns.c.seq)
        )
    ]
    if turn_id is not None:
        point = next((t for t in all_turns if t.id == turn_id), None)
        if point is None:
            raise errors.NotFound(f"turn {turn_id} not found in session {session.id}")
    else:
        point = _last_finished(all_turns)
    last_seq = 0  # nothing finished yet: an empty history
    if point is not None:
        last_seq = point.seq if at is domain.ForkAt.AFTER else point.seq - 1
    copied = [t for t in all_turns if t.seq <= last_seq]
    unfinished = next((t for t in copied if not t.status.terminal), None)
    if unfinished is not None:
        raise errors.TurnNotFinished(_not_finished(unfinished, point, at))
    found = conn.execute(
        select(messages)
        .where(
            messages.c.session_id == session.id,
            messages.c.turn_id.in_([t.id for t in copied]),
            messages.c.hidden.is_(False),
        )
        .order_by(messages.c.seq)
    ).all()
    origin = {
        "session_id": session.id,
        "turn_id": point.id if point else None,
        "at": at.value,
    }
    return Cut(session.agent_id, origin, copied, [rows.message(r) for r in found])


def _last_finished(all_turns: Sequence[domain.Turn]) -> domain.Turn | None:
    last = None
    for turn in all_turns:
        if not turn.status.terminal:
            break
        last = turn
    return last


def _not_finished(unfinished: domain.Turn, point: domain.Turn | None, at: domain.ForkAt) -> str:
    what = f"turn {unfinished.id} is {unfinished.status.value}"
    if point is not None and unfinished.id == point.id and at is domain.ForkAt.AFTER:
        return (
            f"{what}: a fork copies finished turns only; fork after a finished turn, or "
            f'before this one ("at": "before"), or once it has ended'
        )
    return f"{what}, and a fork copies finished turns only: fork from before it"


def copy(sw: SessionWrite, cut: Cut) -> None:
    """Write `cut`'s history into the new session of `sw`. Its log starts with
    `session.forked`, which carries the copied turns (a reader of the log alone knows
    them), then the copied messages."""
    new_ids = {turn.id: ids.new("turn") for turn in cut.turns}
    copies = [
        dataclasses.replace(
            turn,
            id=new_ids[turn.id],
            session_id=sw.id,
            worker_id=None,
            claim_token=None,
            lease_expires_at=None,
        )
        for turn in cut.turns
    ]
    data = {"forked_from": cut.origin, "turns": [views.turn(t) for t in copies]}
    sw.event(EventType.SESSION_FORKED, None, data)
    for turn in copies:
        sw.conn.execute(insert(turns), rows.TURN.values(turn))
        sw.turn_seq = turn.seq
    for message in cut.messages:
        sw.add_message(
            dataclasses.replace(message, id=ids.new("msg"), turn_id=new_ids[message.turn_id])
        )


class Forks:
    def __init__(self, db: Database):
        self.db = db

    async def fork(
        self,
        tenant_id: str,
        session_id: str,
        turn_id: str | None,
        at: domain.ForkAt,
        zone: str,
        metadata: dict[str, Any],
        first_input: list[dict[str, Any]] | None,
    ) -> tuple[str, domain.Turn | None]:
        """A new session of the same agent whose history is the source's up to the end of
        `turn_id` (`after`) or its start (`before`); without `turn_id`, up to the last of the
        source's finished turns. Answers the new session's id (and its first turn, queued,
        given `first_input`)."""
        fork_id = ids.new_session_id(zone)

        def source(conn: Connection) -> Cut:
            # not locked: what a fork copies is finished, and what is finished never changes
            row = conn.execute(SESSION_BY_ID, {"sid": session_id}).first()
            if row is None or row.tenant_id != tenant_id:
                raise errors.NotFound(f"session {session_id} not found")
            return cut(conn, row, turn_id, at)

        def new_row(found: Cut, now: datetime) -> dict[str, Any]:
            return {
                "id": fork_id,
                "tenant_id": tenant_id,
                "agent_id": found.agent_id,
                "status": domain.SessionStatus.IDLE.value,
                "metadata": metadata,
                "forked_from": found.origin,
                "created_at": now,
                "updated_at": now,
            }

        def body(sw: SessionWrite, found: Cut) -> domain.Turn | None:
            copy(sw, found)
            if first_input is None:
                return None
            return lifecycle.queue_turn(sw, first_input, domain.OnBusy.ENQUEUE)

        turn = await self.db.create_session(source, new_row, body)
        return fork_id, turn
