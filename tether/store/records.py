"""Rows to domain records. The only place that knows both shapes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from tether import domain


def agent(row: Row[Any]) -> domain.Agent:
    return domain.Agent(
        id=row.id,
        tenant_id=row.tenant_id,
        spec=domain.AgentSpec.from_stored(row.spec),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def session(row: Row[Any]) -> domain.Session:
    last = (
        domain.TurnRef(row.last_turn_id, domain.TurnStatus(row.last_turn_status))
        if row.last_turn_id
        else None
    )
    return domain.Session(
        id=row.id,
        tenant_id=row.tenant_id,
        agent_id=row.agent_id,
        status=domain.SessionStatus(row.status),
        metadata=row.metadata,
        last_turn=last,
        last_event_seq=row.last_event_seq,
        created_at=row.created_at,
        updated_at=row.updated_at,
        closed_at=row.closed_at,
    )


def turn(row: Row[Any]) -> domain.Turn:
    return domain.Turn(
        id=row.id,
        session_id=row.session_id,
        tenant_id=row.tenant_id,
        seq=row.seq,
        status=domain.TurnStatus(row.status),
        input=row.input,
        on_busy=row.on_busy,
        attempt=row.attempt,
        step=row.step,
        usage=domain.Usage(**row.usage),
        run_time_s=row.run_time_s,
        reason=row.reason,
        error=domain.TurnError(**row.error) if row.error else None,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        worker_id=row.worker_id,
        claim_token=row.claim_token,
        lease_expires_at=row.lease_expires_at,
    )


def message(row: Row[Any]) -> domain.Message:
    return domain.Message(
        id=row.id,
        session_id=row.session_id,
        turn_id=row.turn_id,
        seq=row.seq,
        role=row.role,
        content=row.content,
        tool_calls=[domain.ToolCall(**c) for c in (row.tool_calls or [])],
        tool_call_id=row.tool_call_id,
        name=row.name,
        status=domain.MessageStatus(row.status),
        created_at=row.created_at,
        provider_data=row.provider_data,
    )


def message_values(m: domain.Message, *, hidden: bool = False) -> dict[str, Any]:
    return {
        "id": m.id,
        "session_id": m.session_id,
        "turn_id": m.turn_id,
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "tool_calls": [c.as_dict() for c in m.tool_calls] or None,
        "tool_call_id": m.tool_call_id,
        "name": m.name,
        "status": m.status.value,
        "hidden": hidden,
        "created_at": m.created_at,
        "provider_data": m.provider_data,
    }


def event(row: Row[Any]) -> domain.Event:
    return domain.Event(
        session_id=row.session_id,
        seq=row.seq,
        type=domain.EventType(row.type),
        turn_id=row.turn_id,
        data=row.data,
        created_at=row.created_at,
    )


def interrupt(row: Row[Any]) -> domain.Interrupt:
    return domain.Interrupt(
        id=row.id,
        tenant_id=row.tenant_id,
        session_id=row.session_id,
        turn_id=row.turn_id,
        type=row.type,
        tool_call_id=row.tool_call_id,
        tool_name=row.tool_name,
        request=row.request,
        response=row.response,
        status=domain.InterruptStatus(row.status),
        step=row.step,
        created_at=row.created_at,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
        expires_at=row.expires_at,
        on_expire=row.on_expire,
    )
