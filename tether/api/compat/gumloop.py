"""The Gumloop surface, `/compat/gumloop/api/v1`: sessions, messages, streams, cancel and
approvals as the official `gumloop` Python client speaks them, over Tether's use cases.

Ids are Tether's (a session id is `<ulid>.<zone>`, an agent id `agt_…`, an approval's
`action_request_id` is the interrupt id). Errors: `{"error": {code, type, message, details}}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tether import auth, domain, errors
from tether.api import cursors, deps
from tether.api.compat import common, gumloop_stream, gumloop_views
from tether.node import Node
from tether.service import Service

PREFIX = "/compat/gumloop/api/v1"

# Gumloop's own code where it documents one for the same refusal
_CODES = {"session_busy": "interaction_not_in_terminal_state"}


class FailedToAbort(errors.TetherError):
    """The stop could not be recorded."""

    code = "failed_to_abort"  # the cancel contract's 500


def render(failure: common.Failure) -> Response:
    failure = common.malformed_id_as_not_found(failure)
    body = {
        "code": _CODES.get(failure.code, failure.code),
        "type": common.error_type(failure.status),
        "message": failure.message,
        "details": failure.details or {},
    }
    return JSONResponse({"error": body}, status_code=failure.status, headers=failure.headers)


router = APIRouter(prefix=PREFIX, route_class=common.vendor_route(render), tags=["gumloop"])

Svc = Annotated[Service, Depends(deps.service)]
Reader = Annotated[str, Depends(deps.tenant_for(auth.Role.READ))]
Writer = Annotated[str, Depends(deps.tenant_for(auth.Role.WRITE))]
TheNode = Annotated[Node, Depends(deps.node)]


# --- wire schemas ------------------------------------------------------------------------------


class _In(BaseModel):
    # the client forwards unknown keyword arguments: tolerate what we do not use
    model_config = ConfigDict(extra="ignore")


Content = str | list[str | dict[str, Any]]


class SessionCreate(_In):
    input: Content | None = None
    message: Content | None = None  # Gumloop's older name for `input`
    session_id: str | None = None
    name: str | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] | None = None
    stream: bool = False
    incognito: bool = False


class ApprovalForm(_In):
    values: dict[str, Any] = Field(default_factory=dict)


class ApprovalAnswer(_In):
    action_request_id: str = Field(max_length=64)
    action: Literal["accept", "reject"]
    reason: str | None = Field(default=None, max_length=2000)
    response: ApprovalForm | None = None


class Approvals(_In):
    approval_responses: list[ApprovalAnswer] = Field(min_length=1, max_length=20)


class SessionContinue(_In):
    input: Content | None = None
    message: Content | None = None
    stream: bool = False
    attachments: list[dict[str, Any]] | None = None
    approval_responses: list[ApprovalAnswer] | None = Field(default=None, max_length=20)
    delivery: Literal["immediate", "queued"] = "immediate"


def _text(content: Content | None, *, required: bool) -> str | None:
    """Gumloop input as one user message: a string, or a list of strings and text parts."""
    if content is None:
        if required:
            raise errors.Unprocessable("input (or message) is required")
        return None
    if isinstance(content, str):
        texts = [content]
    else:
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise errors.Unprocessable("only text input is supported")
    text = "\n".join(t for t in texts if t)
    if not text.strip():
        raise errors.Unprocessable("input must not be empty")
    return text


# --- reading -----------------------------------------------------------------------------------


async def _transcript(svc: Service, tenant: str, session_id: str) -> list[domain.Message]:
    messages: list[domain.Message] = []
    cursor: int | None = None
    while True:
        page = await svc.list_messages(tenant, session_id, 1000, cursor)
        messages += page.items
        if page.next_cursor is None:
            return messages
        cursor = int(page.next_cursor)


async def _agent(svc: Service, tenant: str, session: domain.Session) -> domain.Agent | None:
    try:
        return await svc.agents.get(tenant, session.agent_id)
    except errors.NotFound:  # a deleted agent's sessions stay readable
        return None


async def _full(svc: Service, tenant: str, session: domain.Session) -> dict[str, Any]:
    """The whole `session` object: transcript, agent (None once deleted), and the asks it
    waits on."""
    agent = await _agent(svc, tenant, session)
    messages = await _transcript(svc, tenant, session.id)
    pending = None
    if session.status is domain.SessionStatus.WAITING:
        page = await svc.list_interrupts(
            tenant, session.id, domain.InterruptStatus.PENDING, 100, None
        )
        pending = page.items
    return gumloop_views.envelope(session, agent, messages, pending)


async def _answer(svc: Service, tenant: str, session_id: str, status: int = 200) -> JSONResponse:
    session = await svc.get_session(tenant, session_id)
    body = {"session": await _full(svc, tenant, session), "queue_position": None}
    return JSONResponse(body, status_code=status)


# --- sessions ----------------------------------------------------------------------------------


@router.post("/agents/{agent_id}/sessions")
async def create_session(
    request: Request,
    agent_id: str,
    body: SessionCreate,
    svc: Svc,
    tenant: Writer,
    the_node: TheNode,
) -> Response:
    """Start a session with `agent_id` (an agent id or name), optionally with a first message;
    `stream: true` answers with that message's stream."""
    if body.session_id is not None:
        raise errors.Unprocessable("client-assigned session ids are not supported")
    if body.incognito:
        raise errors.Unprocessable("incognito sessions are not supported: Tether keeps them")
    text = _text(body.input if body.input is not None else body.message, required=body.stream)
    metadata = {**(body.metadata or {}), **({"name": body.name} if body.name else {})}

    # a stream's slot is taken first: past the tenant's limit, nothing is created
    release = await deps.stream_slot(request, tenant) if body.stream else None

    async def handler() -> Response:
        session, turn = await svc.create_session(tenant, agent_id, metadata, text)
        await deps.audit(request, "session.create", session.id, surface="gumloop")
        if turn is None or release is None:
            return await _answer(svc, tenant, session.id, status=201)
        return await gumloop_stream.follow_turn(
            svc,
            tenant,
            session.id,
            gumloop_stream.Cursor(0),
            turn.id,
            only_turn=True,
            idle_s=the_node.settings.sse_ping_s,
            on_close=release,
        )

    if release is None:
        return await common.idempotent(request, svc, tenant, handler)
    try:
        return await handler()
    except BaseException:
        release()
        raise


@router.get("/agents/{agent_id}/sessions")
async def list_sessions(
    agent_id: str,
    svc: Svc,
    tenant: Reader,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
    state: gumloop_views.State | None = None,
) -> dict[str, Any]:
    """The agent's sessions, newest first. `state` filters each page (a page may come back
    short of `page_size`; follow `next_cursor`)."""
    after = cursors.id_cursor(cursor, "session")
    agent = await svc.agents.get(tenant, agent_id)
    page = await svc.list_sessions(tenant, page_size, after, None, agent.id)
    sessions = [gumloop_views.envelope(s, agent) for s in page.items]
    if state is not None:
        sessions = [s for s in sessions if s["state"] == state]
    return {"sessions": sessions, "next_cursor": page.next_cursor}


@router.get("/sessions/{session_id}")
async def get_session(
    request: Request,
    session_id: str,
    svc: Svc,
    tenant: Reader,
    the_node: TheNode,
    stream: bool = False,
    last_cursor: str | None = None,
) -> Response:
    """The session; with `stream=true`, its stream resumed after `last_cursor`: the events
    after it, then live ones until the last turn ends (at once if nothing runs)."""
    session = await svc.get_session(tenant, session_id)
    if not stream:
        return await _answer(svc, tenant, session.id)
    start = gumloop_stream.Cursor.parse(last_cursor or "0")
    release = await deps.stream_slot(request, tenant)
    busy = session.status in (domain.SessionStatus.RUNNING, domain.SessionStatus.QUEUED)
    if busy and session.last_turn is not None:
        return await gumloop_stream.follow_turn(
            svc,
            tenant,
            session.id,
            start,
            session.last_turn.id,
            only_turn=False,
            idle_s=the_node.settings.sse_ping_s,
            on_close=release,
        )
    return gumloop_stream.replay(svc, tenant, session.id, start, release)


@router.post("/sessions/{session_id}/messages")
async def send_message(
    request: Request,
    session_id: str,
    body: SessionContinue,
    svc: Svc,
    tenant: Writer,
    the_node: TheNode,
) -> Response:
    """A new user message. `immediate` (default) needs the session at rest (idle, completed
    or failed), else 409 `interaction_not_in_terminal_state`; `queued` waits its turn behind
    the active one. `approval_responses` without input answers the pending asks instead."""
    if body.attachments:
        raise errors.Unprocessable("attachments are not supported")
    content = body.input if body.input is not None else body.message
    if body.approval_responses:
        if content is not None:
            raise errors.InvalidRequest("send approval_responses without input, or use /approvals")
        return await _resolve_then_follow(request, session_id, body, svc, tenant, the_node)
    text = _text(content, required=True)
    assert text is not None
    if body.delivery == "queued":
        if body.stream:
            raise errors.InvalidRequest("queued delivery does not stream")

        async def enqueue() -> Response:
            turn = await svc.start_turn(tenant, session_id, text, domain.OnBusy.ENQUEUE)
            await deps.audit(request, "turn.create", turn.id, surface="gumloop")
            return JSONResponse({"message_id": turn.id, "status": "accepted"}, status_code=202)

        return await common.idempotent(request, svc, tenant, enqueue)

    if not body.stream:

        async def start() -> Response:
            turn = await svc.start_turn(tenant, session_id, text, domain.OnBusy.REJECT)
            await deps.audit(request, "turn.create", turn.id, surface="gumloop")
            return await _answer(svc, tenant, session_id)

        return await common.idempotent(request, svc, tenant, start)
    release = await deps.stream_slot(request, tenant)  # first: past the limit, nothing starts
    try:
        before = (await svc.get_session(tenant, session_id)).last_event_seq
        turn = await svc.start_turn(tenant, session_id, text, domain.OnBusy.REJECT)
        await deps.audit(request, "turn.create", turn.id, surface="gumloop")
    except BaseException:
        release()
        raise
    return await gumloop_stream.follow_turn(
        svc,
        tenant,
        session_id,
        gumloop_stream.Cursor(before),
        turn.id,
        only_turn=True,
        idle_s=the_node.settings.sse_ping_s,
        on_close=release,
    )


# --- control -----------------------------------------------------------------------------------


@router.post("/sessions/{session_id}/cancel")
async def cancel_session(request: Request, session_id: str, svc: Svc, tenant: Writer) -> Any:
    """Stop whatever the session runs or has queued; it ends `failed`. A session at rest is
    returned unchanged. Until the executor confirms (5 s) the state stays `processing`: the
    stop is durable and the turn can only end cancelled."""
    try:
        result = await svc.stop(tenant, session_id, scope=domain.StopScope.ALL)
    except errors.TetherError:
        raise
    except Exception as exc:
        raise FailedToAbort() from exc
    await deps.audit(
        request,
        "turn.stop",
        result.turn.id if result.turn else session_id,
        surface="gumloop",
        scope="all",
        urgent=True,
    )
    return {"session": gumloop_views.minimal(result.session), "queue_position": None}


async def _resolve(
    request: Request, svc: Service, tenant: str, session_id: str, answers: list[ApprovalAnswer]
) -> tuple[list[dict[str, Any]], str]:
    """Answer each ask in order; answers the results and the turn that asked. One already
    answered is reported, not refused: a retry of the same request is harmless."""
    who = await deps.principal(request)
    interrupts = []
    for answer in answers:  # all known before any is answered: a typo answers nothing
        interrupt = await svc.get_interrupt(tenant, answer.action_request_id)
        if interrupt.session_id != session_id:
            raise errors.NotFound(f"no approval {answer.action_request_id} in this session")
        interrupts.append(interrupt)
    results = []
    for answer, interrupt in zip(answers, interrupts, strict=True):
        outcome = "resolved"
        try:
            await svc.respond(tenant, interrupt.id, _response(answer, interrupt), who.key_id)
            await deps.audit(request, "interrupt.respond", interrupt.id, surface="gumloop")
        except errors.InterruptNotPending:
            outcome = f"already_{interrupt.status.value}"
        results.append(
            {"action_request_id": interrupt.id, "action": answer.action, "outcome": outcome}
        )
    return results, interrupts[-1].turn_id


def _response(answer: ApprovalAnswer, interrupt: domain.Interrupt) -> Any:
    if interrupt.type == "approval":
        decision = "approve" if answer.action == "accept" else "deny"
        return {"decision": decision, **({"reason": answer.reason} if answer.reason else {})}
    if answer.response is not None:
        return answer.response.values  # a question's form answers
    return {"action": answer.action, "reason": answer.reason}


@router.post("/sessions/{session_id}/approvals")
async def resolve_approvals(
    request: Request, session_id: str, body: Approvals, svc: Svc, tenant: Writer
) -> dict[str, Any]:
    """Answer pending approvals (accept/reject) and questions (form values). The turn resumes
    once all of its asks are answered; `stream_cursor` resumes its stream from here."""
    before = await svc.get_session(tenant, session_id)
    results, _ = await _resolve(request, svc, tenant, before.id, body.approval_responses)
    session = await svc.get_session(tenant, session_id)
    return {
        "session": await _full(svc, tenant, session),
        "results": results,
        "stream_cursor": str(gumloop_stream.Cursor(before.last_event_seq)),
    }


async def _resolve_then_follow(
    request: Request,
    session_id: str,
    body: SessionContinue,
    svc: Service,
    tenant: str,
    the_node: Node,
) -> Response:
    before = await svc.get_session(tenant, session_id)
    assert body.approval_responses is not None
    _, turn_id = await _resolve(request, svc, tenant, before.id, body.approval_responses)
    if not body.stream:
        return await _answer(svc, tenant, session_id)
    release = await deps.stream_slot(request, tenant)
    return await gumloop_stream.follow_turn(
        svc,
        tenant,
        session_id,
        gumloop_stream.Cursor(before.last_event_seq),
        turn_id,
        only_turn=True,
        idle_s=the_node.settings.sse_ping_s,
        on_close=release,
    )


common.add_fallback(router)
