"""Reads the TrueFoundry surface needs that Tether's native API shapes differently: a turn's
output and the tool calls' source messages (from the transcript), turns newest first, a turn's
predecessor, and the session's events translated. All through the Service, nothing stored.

These read a session's whole transcript or event log: fine for conversations, costly for
sessions of many thousand turns (see docs/compat/truefoundry.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tether import domain, views
from tether.api.compat import truefoundry_wire as wire
from tether.service import Service

_PAGE = 1000


@dataclass(slots=True)
class TranscriptIndex:
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # turn id -> model.message
    sources: dict[str, str] = field(default_factory=dict)  # tool call id -> message id


async def transcript_index(svc: Service, tenant: str, session_id: str) -> TranscriptIndex:
    index = TranscriptIndex()
    cursor: int | None = None
    while True:
        page = await svc.list_messages(tenant, session_id, _PAGE, cursor)
        for message in page.items:
            if message.role != "assistant":
                continue
            index.outputs[message.turn_id] = wire.model_message(views.message(message))
            for call in message.tool_calls:
                index.sources[call.id] = message.id
        if page.next_cursor is None:
            return index
        cursor = int(page.next_cursor)


async def all_turns(svc: Service, tenant: str, session_id: str) -> list[domain.Turn]:
    """The session's turns, oldest first."""
    turns: list[domain.Turn] = []
    cursor: int | None = None
    while True:
        page = await svc.list_turns(tenant, session_id, _PAGE, cursor)
        turns += page.items
        if page.next_cursor is None:
            return turns
        cursor = int(page.next_cursor)


async def previous_turn_id(svc: Service, tenant: str, turn: domain.Turn) -> str | None:
    if turn.seq <= 1:
        return None
    page = await svc.list_turns(tenant, turn.session_id, 1, turn.seq - 2)
    return page.items[0].id if page.items else None


async def pending_interrupts(
    svc: Service, tenant: str, session_id: str
) -> dict[str, list[dict[str, Any]]]:
    """Pending interrupts by turn id, as views."""
    out: dict[str, list[dict[str, Any]]] = {}
    cursor: str | None = None
    while True:
        page = await svc.list_interrupts(
            tenant, session_id, domain.InterruptStatus.PENDING, _PAGE, cursor
        )
        for interrupt in page.items:
            out.setdefault(interrupt.turn_id, []).append(views.interrupt(interrupt))
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def turn_out(
    tenant: str,
    turn: domain.Turn,
    previous: str | None,
    index: TranscriptIndex,
    pending: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    view = views.turn(turn)
    state = wire.turn_state(
        view, index.outputs.get(turn.id), pending.get(turn.id, []), index.sources
    )
    return wire.turn(view, previous, tenant, state)


async def one_turn(svc: Service, tenant: str, turn: domain.Turn) -> dict[str, Any]:
    index = TranscriptIndex()
    pending: dict[str, list[dict[str, Any]]] = {}
    if turn.status in (domain.TurnStatus.COMPLETED, domain.TurnStatus.WAITING):
        index = await transcript_index(svc, tenant, turn.session_id)
    if turn.status is domain.TurnStatus.WAITING:
        pending = await pending_interrupts(svc, tenant, turn.session_id)
    previous = await previous_turn_id(svc, tenant, turn)
    return turn_out(tenant, turn, previous, index, pending)


@dataclass(slots=True)
class Translated:
    seq: int  # the Tether event it came from
    turn_id: str | None
    event: dict[str, Any]


async def translated_events(svc: Service, tenant: str, session_id: str) -> list[Translated]:
    """Every durable event of the session as TrueFoundry events, oldest first."""
    translator = wire.EventTranslator(tenant)
    out: list[Translated] = []
    after = 0
    while True:
        page = await svc.events_after(tenant, session_id, after, _PAGE)
        for event in page:
            for item in translator.durable(event.as_dict()):
                out.append(Translated(event.seq, event.turn_id, item))
        if len(page) < _PAGE:
            return out
        after = page[-1].seq
