"""Steers (DESIGN §3): input that joins a turn already under way, delivered at its next step
boundary.

A steer is a row, stored `pending` before the request is answered, and settled exactly once
by one of `machines.SteerMove`, always inside a session write, so never twice and never lost
across crashes and lease changes:
- `DELIVER`, by the step boundary that appends its messages to the turn's transcript (the
  checkpoint of a step, or the claim of a turn that has not made a step yet), with the event
  `turn.steered`;
- `CONVERT`, by the change that leaves its turn without another boundary (its end, whatever
  it is, or its stop): it becomes a new queued turn.

The session's `pending_steers` counts the unsettled ones, so a step looks for them only when
there are some (the session row is read by every session write anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, insert, select

from tether import domain, machines, versions, views
from tether.domain import EventType, SteerStatus
from tether.machines import SteerMove
from tether.store import guards, rows
from tether.store.schema import steers, turns
from tether.store.session_write import SessionWrite

_PENDING_OF_TURN = (
    select(steers.c.seq, steers.c.messages, steers.c.v)
    .where(
        steers.c.turn_id == bindparam("tid"),
        guards.status_in(steers.c.status, {SteerStatus.PENDING}),
    )
    .order_by(steers.c.seq)
)
_SETTLE = {
    move: guards.update(steers, move)
    .where(steers.c.seq == bindparam("sseq"))
    .values(settled_at=bindparam("now"), became_turn_id=bindparam("became"))
    for move in (SteerMove.DELIVER, SteerMove.CONVERT)
}


def add(sw: SessionWrite, turn_id: str, messages: list[dict[str, Any]]) -> None:
    """Store a steer of `turn_id`: `messages` are `{id, role, content}`, their ids those the
    transcript will show."""
    sw.conn.execute(
        insert(steers).values(
            session_id=sw.id,
            turn_id=turn_id,
            status=SteerStatus.PENDING.value,
            messages=messages,
            created_at=sw.now,
            v=versions.RESUME_VERSION,
        )
    )
    sw.pending_steers += 1


Pending = list[tuple[int, list[dict[str, Any]]]]  # (seq, messages) of steers, oldest first


def pending(sw: SessionWrite, turn_id: str) -> Pending:
    """The turn's pending steers, oldest first."""
    if sw.pending_steers <= 0:
        return []  # the hot path: a step of a session nobody steered reads nothing more
    found = sw.conn.execute(_PENDING_OF_TURN, {"tid": turn_id}).all()
    return [(r.seq, versions.steer_messages(r.v, r.messages)) for r in found]


def _settle(
    sw: SessionWrite, move: machines.Move[SteerStatus], seq: int, became: str | None = None
) -> None:
    changed = sw.conn.execute(_SETTLE[move], {"sseq": seq, "now": sw.now, "became": became})
    assert changed.rowcount == 1, f"steer {seq} was settled already"
    sw.pending_steers -= 1


def deliver(sw: SessionWrite, turn_id: str, found: Pending) -> list[domain.Message]:
    """A step boundary of `turn_id`: its pending steers (`found` by `pending`) join its
    transcript, all together, in the order they were stored. Answers their messages."""
    if not found:
        return []
    delivered: list[domain.Message] = []
    for seq, messages in found:
        _settle(sw, SteerMove.DELIVER, seq)
        for item in messages:
            delivered.append(
                sw.new_message(turn_id, item["role"], item["content"], message_id=item["id"])
            )
    turn = rows.turn(sw.conn.execute(select(turns).where(turns.c.id == turn_id)).one())
    data = {"turn": views.turn(turn), "message_ids": [m.id for m in delivered]}
    sw.event(EventType.TURN_STEERED, turn_id, data)
    return delivered


def convert(
    sw: SessionWrite, turn_id: str, queue: Callable[[list[dict[str, Any]]], domain.Turn]
) -> list[domain.Turn]:
    """`turn_id` will reach no boundary any more: each of its pending steers becomes a new
    turn, made by `queue` from the steer's messages. Answers the new turns."""
    made = []
    for seq, messages in pending(sw, turn_id):
        turn = queue(messages)
        _settle(sw, SteerMove.CONVERT, seq, became=turn.id)
        made.append(turn)
    return made
