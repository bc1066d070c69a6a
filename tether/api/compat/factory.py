"""The Factory surface, `/compat/factory/api/v0`: sessions, messages and interrupt as
Factory's public API names them, over Tether's use cases.

Factory's execution status has three values, derived from Tether's session:

| Tether                                              | Factory   |
|-----------------------------------------------------|-----------|
| idle, closed                                        | `idle`    |
| running                                             | `running` |
| running with its turn cancelling (stop requested,   | `pending` |
| not yet confirmed), queued, waiting on an interrupt |           |

Errors: `{detail, status, title, metadata}` with Tether's stable code in `metadata.code`.
"""

from __future__ import annotations

import http
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tether import auth, domain, views
from tether.api import cursors, deps
from tether.api.compat import common
from tether.service import Service

PREFIX = "/compat/factory/api/v0"


def render(failure: common.Failure) -> Response:
    failure = common.malformed_id_as_not_found(failure)
    try:
        title = http.HTTPStatus(failure.status).phrase
    except ValueError:
        title = "Error"
    body = {
        "detail": failure.message,
        "status": failure.status,
        "title": title,
        "metadata": {"code": failure.code, **(failure.details or {})},
    }
    return JSONResponse(body, status_code=failure.status, headers=failure.headers)


router = APIRouter(prefix=PREFIX, route_class=common.vendor_route(render), tags=["factory"])

Svc = Annotated[Service, Depends(deps.service)]
Reader = Annotated[str, Depends(deps.tenant_for(auth.Role.READ))]
Writer = Annotated[str, Depends(deps.tenant_for(auth.Role.WRITE))]
Limit = Annotated[int, Query(ge=1, le=1000)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionCreate(_In):
    agentId: str = Field(max_length=128, description="an agent id, or an agent's name")
    message: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class MessageCreate(_In):
    content: str = Field(min_length=1, max_length=1_000_000)


def status(session: domain.Session) -> str:
    if session.status is domain.SessionStatus.RUNNING:
        stopping = session.last_turn and session.last_turn.status is domain.TurnStatus.CANCELLING
        return "pending" if stopping else "running"
    if session.status in (domain.SessionStatus.QUEUED, domain.SessionStatus.WAITING):
        return "pending"
    return "idle"


def session_view(session: domain.Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "agentId": session.agent_id,
        "status": status(session),
        "metadata": session.metadata,
        "createdAt": views.iso(session.created_at),
        "updatedAt": views.iso(session.updated_at),
        "closedAt": views.iso(session.closed_at),
    }


def message_view(m: domain.Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "toolCalls": [c.as_dict() for c in m.tool_calls],
        "toolCallId": m.tool_call_id,
        "status": m.status.value,
        "createdAt": views.iso(m.created_at),
    }


@router.post("/sessions", status_code=201)
async def create_session(
    request: Request, body: SessionCreate, svc: Svc, tenant: Writer
) -> Response:
    """A session with an agent, optionally starting with a first message."""

    async def handler() -> Response:
        session, turn = await svc.create_session(tenant, body.agentId, body.metadata, body.message)
        await deps.audit(request, "session.create", session.id, surface="factory")
        if turn:
            await deps.audit(request, "turn.create", turn.id, surface="factory")
            session = await svc.get_session(tenant, session.id)
        return JSONResponse(session_view(session), status_code=201)

    return await common.idempotent(request, svc, tenant, handler)


@router.get("/sessions")
async def list_sessions(
    svc: Svc, tenant: Reader, limit: Limit = 50, cursor: str | None = None
) -> dict[str, Any]:
    after = cursors.id_cursor(cursor, "session")
    page = await svc.list_sessions(tenant, limit, after, None, None)
    return {"sessions": [session_view(s) for s in page.items], "nextCursor": page.next_cursor}


@router.get("/sessions/{sessionId}")
async def get_session(sessionId: str, svc: Svc, tenant: Reader) -> dict[str, Any]:
    return session_view(await svc.get_session(tenant, sessionId))


@router.post("/sessions/{sessionId}/messages", status_code=202)
async def send_message(
    request: Request, sessionId: str, body: MessageCreate, svc: Svc, tenant: Writer
) -> Response:
    """A user message. While the agent runs it is queued and runs next (status `pending`)."""

    async def handler() -> Response:
        turn = await svc.start_turn(tenant, sessionId, body.content, domain.OnBusy.ENQUEUE)
        await deps.audit(request, "turn.create", turn.id, surface="factory")
        session = await svc.get_session(tenant, sessionId)
        answer = {"sessionId": session.id, "turnId": turn.id, "status": status(session)}
        return JSONResponse(answer, status_code=202)

    return await common.idempotent(request, svc, tenant, handler)


@router.get("/sessions/{sessionId}/messages")
async def list_messages(
    sessionId: str, svc: Svc, tenant: Reader, limit: Limit = 100, cursor: str | None = None
) -> dict[str, Any]:
    page = await svc.list_messages(tenant, sessionId, limit, cursors.position(cursor))
    return {"messages": [message_view(m) for m in page.items], "nextCursor": page.next_cursor}


@router.post("/sessions/{sessionId}/interrupt")
async def interrupt_session(
    request: Request,
    sessionId: str,
    svc: Svc,
    tenant: Writer,
    wait: Annotated[float, Query(ge=0, le=60)] = 5.0,
) -> dict[str, str]:
    """Interrupt the running agent loop (Tether's stop, mode `interrupt`, scope `turn`): what
    it did so far is kept and queued input then runs. Idempotent when idle. `pending`: the
    stop is requested but not confirmed within `wait` seconds, or queued input is next."""
    result = await svc.stop(tenant, sessionId, wait_s=wait)
    await deps.audit(
        request,
        "turn.stop",
        result.turn.id if result.turn else sessionId,
        surface="factory",
        mode="interrupt",
        urgent=True,
    )
    return {"status": "pending" if not result.confirmed else status(result.session)}


common.add_fallback(router)
