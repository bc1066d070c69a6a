"""Tether records in Gumloop's shapes: the session envelope, its messages, its pending asks.

Gumloop's session `state` is derived from Tether's session status and its last turn:

| Tether                                   | Gumloop             |
|------------------------------------------|---------------------|
| running (turn running or cancelling)     | `processing`        |
| queued                                   | `queued`            |
| waiting (turn paused on an interrupt)    | `approval_required` |
| idle/closed, no turn yet                 | `idle`              |
| idle/closed, last turn completed         | `completed`         |
| idle/closed, last turn failed/cancelled  | `failed`            |
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from tether import domain, views

State = Literal["idle", "queued", "processing", "approval_required", "completed", "failed"]

_BUSY_STATES: dict[domain.SessionStatus, State] = {
    domain.SessionStatus.RUNNING: "processing",
    domain.SessionStatus.QUEUED: "queued",
    domain.SessionStatus.WAITING: "approval_required",
}
_ENDED_STATES: dict[domain.TurnStatus, State] = {
    domain.TurnStatus.COMPLETED: "completed",
    domain.TurnStatus.FAILED: "failed",
    domain.TurnStatus.CANCELLED: "failed",  # Gumloop has no "cancelled": a cancel ends `failed`
}


def state(session: domain.Session) -> State:
    busy = _BUSY_STATES.get(session.status)
    if busy is not None:
        return busy
    if session.last_turn is None:
        return "idle"
    return _ENDED_STATES.get(session.last_turn.status, "processing")


def envelope(
    session: domain.Session,
    agent: domain.Agent | None = None,
    messages: Sequence[domain.Message] = (),
    pending: Sequence[domain.Interrupt] | None = None,
) -> dict[str, Any]:
    """The `session` object. Fields Tether has no notion of (teams, creators, icons) are null
    or empty, as Gumloop itself leaves them when it does not populate them."""
    name = session.metadata.get("name")
    return {
        "id": session.id,
        "agent_id": session.agent_id,
        "name": name if isinstance(name, str) else None,
        "state": state(session),
        "messages": [message(m) for m in messages if m.role in ("user", "assistant")],
        "created_at": views.iso(session.created_at),
        "agent_name": agent.spec.name if agent else None,
        "agent_team_id": None,
        "agent_creator_user_id": None,
        "agent_icon_url": None,
        "agent_tools": [{"name": t.name, "policy": t.policy.value} for t in agent.spec.tools]
        if agent
        else [],
        "participants": {},
        "creator": None,
        "incognito": False,
        "pending_approvals": [pending_approval(i) for i in pending] if pending else None,
    }


def minimal(session: domain.Session) -> dict[str, Any]:
    """The envelope of the cancel answer: its contract populates only id, agent_id, state."""
    return {
        "id": session.id,
        "agent_id": session.agent_id,
        "messages": [],
        "created_at": None,
        "state": state(session),
        "agent_name": None,
        "agent_team_id": None,
        "agent_creator_user_id": None,
        "agent_icon_url": None,
        "agent_tools": [],
        "participants": {},
        "creator": None,
    }


def message(m: domain.Message) -> dict[str, Any]:
    parts = [
        {
            "type": "tool_invocation",
            "toolCallId": call.id,
            "toolName": call.name,
            "args": call.arguments,
        }
        for call in m.tool_calls
    ]
    return {
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "created_at": views.iso(m.created_at),
        "creator_id": None,
        "parts": parts or None,
        "status": m.status.value,
    }


def pending_approval(i: domain.Interrupt) -> dict[str, Any]:
    """An interrupt as one of Gumloop's `pending_approvals`: its `action_request_id` is the
    Tether interrupt id, which is what `POST …/approvals` answers."""
    arguments = i.request.get("arguments")
    fields = (
        [[key, json.dumps(value)] for key, value in arguments.items()]
        if isinstance(arguments, dict)
        else None
    )
    question = i.request.get("question")
    return {
        "action_request_id": i.id,
        "type": i.type,  # approval | question | a custom type
        "title": f"Run {i.tool_name}?" if i.type == "approval" else question,
        "reason": None,
        "tool_name": i.tool_name,
        "server_label": None,
        "display_fields": fields,
        "questions": [{"question": question}] if isinstance(question, str) else None,
    }
