"""The native API, /v1 (DESIGN §7). Routes are thin: parse, call the service, render."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from tether import domain, ids, specs, views
from tether.api import cursors, idempotency, schemas, sse
from tether.api.deps import (
    audit,
    node,
    principal,
    service,
    stream_slot,
    tenant_for,
)
from tether.auth import Principal, Role
from tether.node import Node
from tether.service import Service, StopResult

Svc = Annotated[Service, Depends(service)]
Reader = Annotated[str, Depends(tenant_for(Role.READ))]  # the caller's tenant, role checked
Writer = Annotated[str, Depends(tenant_for(Role.WRITE))]
Admin = Annotated[str, Depends(tenant_for(Role.ADMIN))]
Limit = Annotated[int, Query(ge=1, le=1000)]
SessionId = Annotated[str, Path(pattern=ids.SESSION_PATTERN)]
TurnId = Annotated[str, Path(pattern=ids.pattern("turn"))]
AgentId = Annotated[str, Path(pattern=ids.pattern("agt"))]
InterruptId = Annotated[str, Path(pattern=ids.pattern("int"))]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422, 429)
}
router = APIRouter(prefix="/v1", responses=_ERRORS)


def _input(value: schemas.Input) -> str | list[dict[str, Any]]:
    return value if isinstance(value, str) else [m.model_dump() for m in value]


# --- agents ----------------------------------------------------------------------------------


@router.post(
    "/agents", status_code=201, response_model=schemas.AgentOut, responses=_ERRORS, tags=["agents"]
)
async def create_agent(
    request: Request, body: specs.AgentSpec, svc: Svc, tenant: Admin
) -> Response:
    async def handler() -> Response:
        agent = await svc.agents.create(tenant, body)
        await audit(request, "agent.create", agent.id)
        return JSONResponse(views.agent(agent), status_code=201)

    return await idempotency.idempotent(request, tenant, svc, handler)


@router.get("/agents", response_model=schemas.Page[schemas.AgentOut], tags=["agents"])
async def list_agents(
    svc: Svc, tenant: Reader, limit: Limit = 50, cursor: str | None = None
) -> dict[str, Any]:
    page = await svc.agents.page(tenant, limit, cursors.id_cursor(cursor, "agt"))
    return schemas.page(page, views.agent)


@router.get(
    "/agents/{agent_id}", response_model=schemas.AgentOut, responses=_ERRORS, tags=["agents"]
)
async def get_agent(agent_id: AgentId, svc: Svc, tenant: Reader) -> dict[str, Any]:
    return views.agent(await svc.agents.get(tenant, agent_id))


@router.patch(
    "/agents/{agent_id}", response_model=schemas.AgentOut, responses=_ERRORS, tags=["agents"]
)
async def update_agent(
    request: Request, agent_id: AgentId, body: schemas.AgentPatch, svc: Svc, tenant: Admin
) -> dict[str, Any]:
    changes = body.changes()
    agent = await svc.agents.update(tenant, agent_id, changes)
    await audit(request, "agent.update", agent_id, fields=sorted(changes))
    return views.agent(agent)


@router.delete("/agents/{agent_id}", status_code=204, responses=_ERRORS, tags=["agents"])
async def delete_agent(request: Request, agent_id: AgentId, svc: Svc, tenant: Admin) -> Response:
    await svc.agents.delete(tenant, agent_id)
    await audit(request, "agent.delete", agent_id)
    return Response(status_code=204)


# --- sessions --------------------------------------------------------------------------------


@router.post(
    "/sessions",
    status_code=201,
    response_model=schemas.SessionCreated,
    responses=_ERRORS,
    tags=["sessions"],
)
async def create_session(
    request: Request, body: schemas.SessionCreate, svc: Svc, tenant: Writer
) -> Response:
    async def handler() -> Response:
        first = _input(body.input) if body.input is not None else None
        session, turn = await svc.create_session(tenant, body.agent_id, body.metadata, first)
        await audit(request, "session.create", session.id)
        if turn:
            await audit(request, "turn.create", turn.id)
        answer = {**views.session(session), "turn": views.turn(turn) if turn else None}
        return JSONResponse(answer, status_code=201)

    return await idempotency.idempotent(request, tenant, svc, handler)


@router.get(
    "/sessions",
    response_model=schemas.Page[schemas.SessionOut],
    responses=_ERRORS,
    tags=["sessions"],
)
async def list_sessions(
    svc: Svc,
    tenant: Reader,
    limit: Limit = 50,
    cursor: str | None = None,
    status: domain.SessionStatus | None = None,
    agent_id: Annotated[str | None, Query(description="an agent id")] = None,
) -> dict[str, Any]:
    if agent_id is not None:
        ids.check("agt", agent_id)
    after = cursors.id_cursor(cursor, "session")
    page = await svc.list_sessions(tenant, limit, after, status, agent_id)
    return schemas.page(page, views.session)


@router.get(
    "/sessions/{session_id}",
    response_model=schemas.SessionOut,
    responses=_ERRORS,
    tags=["sessions"],
)
async def get_session(session_id: SessionId, svc: Svc, tenant: Reader) -> dict[str, Any]:
    return views.session(await svc.get_session(tenant, session_id))


@router.delete(
    "/sessions/{session_id}",
    response_model=schemas.SessionOut,
    responses={**_ERRORS, 204: {"description": "purged: the session is gone for good"}},
    tags=["sessions"],
)
async def close_session(
    request: Request,
    session_id: SessionId,
    svc: Svc,
    tenant: Writer,
    who: Annotated[Principal, Depends(principal)],
    purge: Annotated[bool, Query(description="admins: delete it and all of it for good")] = False,
) -> Any:
    """Close the session: no new turns; queued turns are cancelled; it stays readable.
    `?purge=true` (admin keys only) deletes it instead: its turns are stopped first (a running
    one through the normal stop), then the session and all that belongs to it are deleted
    (204); every read of it is 404 after that, and its open streams end."""
    if purge:
        who.require(Role.ADMIN)
        await svc.purge_session(tenant, session_id)
        await audit(request, "session.purge", session_id)
        return Response(status_code=204)
    session = await svc.close_session(tenant, session_id)
    await audit(request, "session.close", session_id)
    return views.session(session)


# --- turns -----------------------------------------------------------------------------------


@router.post(
    "/sessions/{session_id}/fork",
    status_code=201,
    response_model=schemas.SessionCreated,
    responses=_ERRORS,
    tags=["sessions"],
)
async def fork_session(
    request: Request,
    session_id: SessionId,
    svc: Svc,
    tenant: Writer,
    body: schemas.ForkRequest | None = None,
) -> Response:
    """A new session of the same agent whose history is this one's up to the end of a
    finished turn (`at: after`, default) or its start (`before`); without `turn_id`, the last
    finished turn. The source is not changed. The fork is `idle` and usable at once (with
    `input`, its first turn is queued); its `forked_from` says where it came from and its
    event log starts with `session.forked`. 409 `turn_not_finished` if the history would
    hold a turn still running, waiting or queued. No body: at the last finished turn."""
    body = body or schemas.ForkRequest()

    async def handler() -> Response:
        first = _input(body.input) if body.input is not None else None
        fork, turn = await svc.fork(
            tenant,
            session_id,
            turn_id=body.turn_id,
            at=body.at,
            metadata=body.metadata,
            input=first,
        )
        origin = fork.forked_from or {}
        await audit(
            request,
            "session.fork",
            fork.id,
            source=session_id,
            turn_id=origin.get("turn_id"),
            at=body.at.value,
        )
        if turn:
            await audit(request, "turn.create", turn.id)
        answer = {**views.session(fork), "turn": views.turn(turn) if turn else None}
        return JSONResponse(answer, status_code=201)

    return await idempotency.idempotent(request, tenant, svc, handler)


@router.post(
    "/sessions/{session_id}/turns",
    status_code=202,
    response_model=schemas.TurnAccepted,
    responses={
        **_ERRORS,
        200: {
            "description": "the turn's events (SSE) when stream=true",
            "content": {"text/event-stream": {}},
        },
    },
    tags=["turns"],
)
async def create_turn(
    request: Request,
    session_id: SessionId,
    body: schemas.TurnCreate,
    svc: Svc,
    tenant: Writer,
    the_node: Annotated[Node, Depends(node)],
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    stream = body.stream or "text/event-stream" in (accept or "")
    ping_s = the_node.settings.sse_ping_s

    async def handler() -> Response:
        if body.on_busy is domain.OnBusy.STEER:
            # it joins a turn under way (already streaming), or queues one: followed from the
            # session's position before it
            before = (await svc.get_session(tenant, session_id)).last_event_seq if stream else 0
            steered = await svc.steer(tenant, session_id, _input(body.input))
            turn = steered.turn
            action = "turn.steer" if steered.joined else "turn.create"
            await audit(request, action, turn.id, on_busy="steer", messages=steered.message_ids)
            if not stream:
                return JSONResponse(views.steered(steered), status_code=202)
            replay = {"session_id": session_id, "after": before, "turn_id": turn.id}
            return await _turn_stream(request, tenant, svc, replay, ping_s)
        if not stream:
            turn = await svc.start_turn(tenant, session_id, _input(body.input), body.on_busy)
            await audit(request, "turn.create", turn.id, on_busy=body.on_busy.value)
            return JSONResponse(views.turn(turn), status_code=202)
        release = await stream_slot(request, tenant)  # a turn refused a stream is not queued
        try:
            turn, before, batches = await svc.stream_turn(
                tenant, session_id, _input(body.input), body.on_busy, idle_s=ping_s
            )
        except BaseException:
            release()
            raise
        try:
            await audit(request, "turn.create", turn.id, on_busy=body.on_busy.value)
        except BaseException:
            release()
            await batches.aclose()
            raise
        replay = {"session_id": session_id, "after": before, "turn_id": turn.id}
        return sse.response(batches, until_terminal=True, replay=replay, on_close=release)

    async def replay_stream(replay: dict[str, Any]) -> Response:
        return await _turn_stream(request, tenant, svc, replay, ping_s)

    return await idempotency.idempotent(request, tenant, svc, handler, replay_stream)


async def _turn_stream(
    request: Request, tenant: str, svc: Service, replay: dict[str, Any], ping_s: float
) -> Response:
    """A turn's events from just before it was queued until it ends (or waits)."""
    batches = await svc.follow(
        tenant, replay["session_id"], replay["after"], turn_id=replay["turn_id"], idle_s=ping_s
    )
    release = await stream_slot(request, tenant)
    return sse.response(batches, until_terminal=True, replay=replay, on_close=release)


@router.get(
    "/sessions/{session_id}/turns",
    response_model=schemas.Page[schemas.TurnOut],
    responses=_ERRORS,
    tags=["turns"],
)
async def list_turns(
    session_id: SessionId, svc: Svc, tenant: Reader, limit: Limit = 50, cursor: str | None = None
) -> dict[str, Any]:
    page = await svc.list_turns(tenant, session_id, limit, cursors.position(cursor))
    return schemas.page(page, views.turn)


@router.get(
    "/sessions/{session_id}/turns/{turn_id}",
    response_model=schemas.TurnOut,
    responses=_ERRORS,
    tags=["turns"],
)
async def get_turn(
    session_id: SessionId, turn_id: TurnId, svc: Svc, tenant: Reader
) -> dict[str, Any]:
    return views.turn(await svc.get_turn(tenant, session_id, turn_id))


# --- control -------------------------------------------------------------------------------

_STOP_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    202: {"model": schemas.StopOut, "description": "not yet confirmed: the turn is cancelling"},
}


def _stop_answer(result: StopResult) -> JSONResponse:
    body = {
        "turn": views.turn(result.turn) if result.turn else None,
        "session": views.session(result.session),
    }
    return JSONResponse(body, status_code=200 if result.confirmed else 202)


@router.post(
    "/sessions/{session_id}/interrupt",
    response_model=schemas.StopOut,
    responses=_STOP_RESPONSES,
    tags=["control"],
)
async def interrupt_session(
    request: Request,
    session_id: SessionId,
    svc: Svc,
    tenant: Writer,
    body: schemas.StopRequest | None = None,
) -> JSONResponse:
    """Stop the session's active turn (`scope=all`: and its queued turns). Idempotent."""
    body = body or schemas.StopRequest()
    result = await svc.stop(
        tenant, session_id, mode=body.mode, scope=body.scope, reason=body.reason, wait_s=body.wait
    )
    await audit(
        request,
        "turn.stop",
        result.turn.id if result.turn else session_id,
        mode=body.mode.value,
        scope=body.scope.value,
        reason=body.reason,
        urgent=True,
    )
    return _stop_answer(result)


@router.post(
    "/sessions/{session_id}/turns/{turn_id}/cancel",
    response_model=schemas.StopOut,
    responses=_STOP_RESPONSES,
    tags=["control"],
)
async def cancel_turn(
    request: Request,
    session_id: SessionId,
    turn_id: TurnId,
    svc: Svc,
    tenant: Writer,
    body: schemas.TurnStopRequest | None = None,
) -> JSONResponse:
    """Stop this turn: queued or waiting, it is cancelled at once; running, its executor is
    stopped; finished, nothing changes. Idempotent."""
    body = body or schemas.TurnStopRequest()
    result = await svc.stop(
        tenant, session_id, turn_id=turn_id, mode=body.mode, reason=body.reason, wait_s=body.wait
    )
    await audit(
        request, "turn.stop", turn_id, mode=body.mode.value, reason=body.reason, urgent=True
    )
    return _stop_answer(result)


# --- interrupts ------------------------------------------------------------------------------


@router.get(
    "/sessions/{session_id}/interrupts",
    response_model=schemas.Page[schemas.InterruptOut],
    responses=_ERRORS,
    tags=["interrupts"],
)
async def list_interrupts(
    session_id: SessionId,
    svc: Svc,
    tenant: Reader,
    status: domain.InterruptStatus | None = None,
    limit: Limit = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = cursors.id_cursor(cursor, "int")
    page = await svc.list_interrupts(tenant, session_id, status, limit, after)
    return schemas.page(page, views.interrupt)


@router.get(
    "/interrupts/{interrupt_id}",
    response_model=schemas.InterruptOut,
    responses=_ERRORS,
    tags=["interrupts"],
)
async def get_interrupt(interrupt_id: InterruptId, svc: Svc, tenant: Reader) -> dict[str, Any]:
    return views.interrupt(await svc.get_interrupt(tenant, interrupt_id))


@router.post(
    "/interrupts/{interrupt_id}/respond",
    response_model=schemas.InterruptOut,
    responses=_ERRORS,
    tags=["interrupts"],
)
async def respond(
    request: Request,
    interrupt_id: InterruptId,
    body: schemas.RespondRequest,
    svc: Svc,
    tenant: Writer,
    who: Annotated[Principal, Depends(principal)],
) -> dict[str, Any]:
    """Answer a pending interrupt (409 if it is no longer pending). The turn resumes from its
    checkpoint once all of its interrupts are answered. `resolved_by` is the answering key's
    id when the request carries one."""
    resolved_by = who.key_id or body.resolved_by
    answered = await svc.respond(tenant, interrupt_id, body.response, resolved_by)
    await audit(request, "interrupt.respond", interrupt_id)
    return views.interrupt(answered)


# --- transcript and events -------------------------------------------------------------------


@router.get(
    "/sessions/{session_id}/messages",
    response_model=schemas.Page[schemas.MessageOut],
    responses=_ERRORS,
    tags=["sessions"],
)
async def list_messages(
    session_id: SessionId, svc: Svc, tenant: Reader, limit: Limit = 100, cursor: str | None = None
) -> dict[str, Any]:
    page = await svc.list_messages(tenant, session_id, limit, cursors.position(cursor))
    return schemas.page(page, views.message)


@router.get(
    "/sessions/{session_id}/events",
    response_model=schemas.Page[schemas.EventOut],
    responses={
        **_ERRORS,
        200: {
            "content": {"text/event-stream": {}, "application/json": {}},
            "description": "SSE, or a JSON page with stream=false",
        },
    },
    tags=["sessions"],
)
async def session_events(
    request: Request,
    session_id: SessionId,
    svc: Svc,
    tenant: Reader,
    the_node: Annotated[Node, Depends(node)],
    after: Annotated[cursors.PositionParam, Query()] = None,
    stream: bool = True,
    limit: Limit = 500,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Any:
    """Every event after `after` (or the `Last-Event-ID` header), then live ones (SSE);
    `stream=false` answers one JSON page instead."""
    given = cursors.position(after, "after")
    resumed = cursors.position(last_event_id, "Last-Event-ID")
    start = given if given is not None else resumed or 0
    if not stream:
        items = await svc.events_after(tenant, session_id, start, limit)  # checks the session
        more = len(items) == limit
        return {
            "data": [e.as_dict() for e in items],
            "next_cursor": str(items[-1].seq) if more else None,
        }
    batches = await svc.follow(tenant, session_id, start, idle_s=the_node.settings.sse_ping_s)
    release = await stream_slot(request, tenant)
    return sse.response(batches, on_close=release)
