"""The public JSON shape of records: one definition for API answers and event payloads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tether import domain


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def agent(a: domain.Agent) -> dict[str, Any]:
    return {
        "id": a.id,
        **a.spec.model_dump(mode="json"),
        "created_at": iso(a.created_at),
        "updated_at": iso(a.updated_at),
    }


def session(s: domain.Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "agent_id": s.agent_id,
        "status": s.status.value,
        "metadata": s.metadata,
        "last_turn": {"id": s.last_turn.id, "status": s.last_turn.status.value}
        if s.last_turn
        else None,
        "last_event_seq": s.last_event_seq,
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
        "closed_at": iso(s.closed_at),
    }


def turn(t: domain.Turn) -> dict[str, Any]:
    return {
        "id": t.id,
        "session_id": t.session_id,
        "seq": t.seq,
        "status": t.status.value,
        "input": t.input,
        "on_busy": t.on_busy,
        "attempt": t.attempt,
        "step": t.step,
        "usage": t.usage.as_dict(),
        "reason": t.reason,
        "error": {"code": t.error.code, "message": t.error.message} if t.error else None,
        "created_at": iso(t.created_at),
        "started_at": iso(t.started_at),
        "finished_at": iso(t.finished_at),
    }


def message(m: domain.Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "session_id": m.session_id,
        "turn_id": m.turn_id,
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "tool_calls": [c.as_dict() for c in m.tool_calls],
        "tool_call_id": m.tool_call_id,
        "name": m.name,
        "status": m.status.value,
        "created_at": iso(m.created_at),
    }


def interrupt(i: domain.Interrupt) -> dict[str, Any]:
    return {
        "id": i.id,
        "session_id": i.session_id,
        "turn_id": i.turn_id,
        "type": i.type,
        "tool_call_id": i.tool_call_id,
        "tool_name": i.tool_name,
        "request": i.request,
        "response": i.response,
        "status": i.status.value,
        "step": i.step,
        "created_at": iso(i.created_at),
        "resolved_at": iso(i.resolved_at),
        "resolved_by": i.resolved_by,
        "expires_at": iso(i.expires_at),
    }
