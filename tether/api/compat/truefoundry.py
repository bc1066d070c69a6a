"""TrueFoundry's agent harness API at /compat/truefoundry/{tenant} (DESIGN §7; the seed
contract is specs/truefoundry-cancel-turn.openapi.yaml; docs/compat/truefoundry.md maps it).

Routes are thin: they call the Service and reshape with truefoundry_wire. Nothing is stored
here: a session made through this surface is a Tether session, visible through /v1.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy.exc
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette import convertors

from tether import domain, errors, ids, streaming, views
from tether.api import cursors, deps, sse
from tether.api.compat import truefoundry_edge as edge
from tether.api.compat import truefoundry_reads as reads
from tether.api.compat import truefoundry_wire as wire
from tether.auth import Principal, Role
from tether.service import Service

Svc = Annotated[Service, Depends(deps.service)]
Reader = Annotated[str, Depends(deps.tenant_for(Role.READ, edge.caller))]
Writer = Annotated[str, Depends(deps.tenant_for(Role.WRITE, edge.caller))]
SessionId = Annotated[str, Path(pattern=ids.SESSION_PATTERN)]
TurnId = Annotated[str, Path(pattern=ids.pattern("turn"))]

DEFAULT_CANCEL_WAIT_S = 5.0  # DESIGN §3: how long a cancel waits for the executor

ROOT = "/compat/truefoundry/"  # then the tenant

router = APIRouter(
    prefix=ROOT + "{tenant}/v1/agents/sessions",
    route_class=edge.VendorRoute,
    include_in_schema=False,  # TrueFoundry's own spec documents it, not Tether's
)


# --- wire input ------------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer client's extra fields are not errors


class SessionCreate(_In):
    agent_name: str = Field(min_length=1, max_length=128)


class TextPart(_In):
    type: Literal["text"]
    text: str


class UserMessage(_In):
    type: Literal["user.message"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class Approval(_In):
    status: Literal["allow", "deny"]
    reason: str | None = None


class ToolApproval(_In):
    type: Literal["user.tool_approval"]
    thread_id: str
    tool_call_id: str
    approval: Approval


class ToolResponse(_In):
    type: Literal["user.tool_response"]
    thread_id: str
    tool_call_id: str
    content: str


InputItem = Annotated[UserMessage | ToolApproval | ToolResponse, Field(discriminator="type")]


class TurnCreate(_In):
    input: list[InputItem] | None = None
    # "auto" (the default: after the session's last turn), "none", or a turn id, which must
    # be the session's last turn (see _chains)
    previous_turn_id: str | None = None
    stream: bool = False


class Subscribe(_In):
    after_sequence_number: cursors.JsonPosition = None  # api/cursors.py: json_position


# --- sessions --------------------------------------------------------------------------------


async def _session_out(svc: Service, tenant: str, session: domain.Session) -> dict[str, Any]:
    try:
        name = (await svc.agents.get(tenant, session.agent_id)).spec.name
    except errors.NotFound:  # a deleted agent's sessions stay readable
        name = session.agent_id
    return wire.session(views.session(session), name, tenant)


@router.post("")
async def create_session(
    request: Request, body: SessionCreate, svc: Svc, tenant: Writer
) -> dict[str, Any]:
    agent = await svc.agents.find(tenant, body.agent_name)
    session, _ = await svc.create_session(tenant, agent.id)
    await deps.audit(request, "session.create", session.id)
    return {"data": wire.session(views.session(session), agent.spec.name, tenant)}


def _timestamp(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise errors.InvalidRequest(f"{name} is not an ISO-8601 timestamp") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # no zone: UTC


@router.get("")
async def list_sessions(
    svc: Svc,
    tenant: Reader,
    agent_name: str,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    order: Literal["desc"] = "desc",  # Tether lists sessions newest first only
    page_token: str | None = None,
    start_timestamp: str | None = None,
    end_timestamp: str | None = None,
) -> dict[str, Any]:
    agent = await svc.agents.find(tenant, agent_name)
    start = _timestamp(start_timestamp, "start_timestamp")
    end = _timestamp(end_timestamp, "end_timestamp")
    found: list[domain.Session] = []
    cursor, more = cursors.id_cursor(page_token, "session", "page_token"), True
    while more and len(found) < limit:
        page = await svc.list_sessions(tenant, limit, cursor, None, agent.id)
        for session in page.items:
            cursor = session.id
            if start and session.created_at < start:
                more = False  # newest first: every later one is older still
                break
            if end and session.created_at > end:
                continue
            found.append(session)
            if len(found) == limit:
                break
        else:
            more = more and page.next_cursor is not None
    data = [wire.session(views.session(s), agent.spec.name, tenant) for s in found]
    next_token = found[-1].id if found and len(found) == limit and more else None
    return {"data": data, "pagination": {"next_page_token": next_token, "limit": limit}}


@router.get("/{session_id}")
async def get_session(session_id: SessionId, svc: Svc, tenant: Reader) -> dict[str, Any]:
    return {"data": await _session_out(svc, tenant, await svc.get_session(tenant, session_id))}


# --- cancel: the seed contract ---------------------------------------------------------------


def _cancel_wait(body: Any) -> float:
    """`wait` (seconds, 0-60) is a Tether extension; anything else in the body is ignored."""
    wait = body.get("wait") if isinstance(body, dict) else None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 60:
        return float(wait)
    return DEFAULT_CANCEL_WAIT_S


class _AnyText(convertors.Convertor[str]):
    """Any text, slashes and newlines too: the router's `path` stops at a newline."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


convertors.register_url_convertor("tfy_any_text", _AnyText())


# so that any id, even one holding a slash or a newline, or none, is answered 400 as the
# contract says, rather than 404 by the router
@router.post("/{session_id:tfy_any_text}/cancel")
async def cancel(
    request: Request, session_id: str, svc: Svc, tenant: Writer, body: Any = Body(None)
) -> JSONResponse:
    """Cancel the session's last turn (interrupt mode: what it did is kept). 200 `{}` once
    the executor confirmed, or when it was not running (queued or waiting: cancelled at once;
    finished: nothing changes); 424 if it did not confirm in time (the cancel stays
    requested and completes later)."""
    if body is not None and not isinstance(body, dict):
        return edge.error(400, "invalid_request", "the body must be a JSON object", "body")
    try:
        ids.check_session(session_id)
        session = await svc.get_session(tenant, session_id)
        if session.closed_at is not None:
            return edge.error(412, "session_closed", f"session {session_id} is closed")
        last = session.last_turn.id if session.last_turn else None
        if last is None:
            return JSONResponse({})  # no turn yet: nothing to cancel
        result = await svc.stop(tenant, session_id, turn_id=last, wait_s=_cancel_wait(body))
    except errors.InvalidId as exc:
        return edge.error(400, exc.code, exc.message, "sessionId")
    except errors.NotFound:
        return edge.error(412, "session_not_found", f"session {session_id} not found")
    except (errors.Unavailable, sqlalchemy.exc.OperationalError) as exc:
        # the contract's 400 "store unavailable": the store is locked, down or unreachable
        return edge.error(400, "store_unavailable", f"the store is unavailable: {exc}"[:500])
    await deps.audit(
        request, "turn.stop", result.turn.id if result.turn else session_id, urgent=True
    )
    if not result.confirmed:
        return edge.error(
            424,
            "cancel_not_confirmed",
            "timed out waiting for the executor to confirm the cancel; it stays requested",
        )
    return JSONResponse({})


# --- turns -----------------------------------------------------------------------------------


async def _answers(
    svc: Service, tenant: str, session_id: str, items: list[ToolApproval | ToolResponse]
) -> list[tuple[dict[str, Any], Any]]:
    """The pending interrupts the items answer, each with its Tether response; all checked
    before any is answered, so a bad item changes nothing."""
    pending = await reads.pending_interrupts(svc, tenant, session_id)
    by_call = {i["tool_call_id"]: i for waiting in pending.values() for i in waiting}
    out: list[tuple[dict[str, Any], Any]] = []
    for item in items:
        interrupt = by_call.get(item.tool_call_id)
        if interrupt is None:
            raise errors.InvalidRequest(f"no pending tool call {item.tool_call_id!r} to answer")
        wants = "user.tool_approval" if interrupt["type"] == "approval" else "user.tool_response"
        if item.type != wants:
            raise errors.InvalidRequest(f"tool call {item.tool_call_id!r} waits for a {wants}")
        if isinstance(item, ToolApproval):
            decision = "approve" if item.approval.status == "allow" else "deny"
            response: Any = {"decision": decision}
            if item.approval.reason:
                response["reason"] = item.approval.reason
        else:
            response = item.content
        out.append((interrupt, response))
    return out


def _chains(session: domain.Session, previous: str | None) -> None:
    """A turn names the turn it follows. A Tether session's turns form one line, so only its
    last turn can be followed; following an earlier one would branch the conversation, which
    is what a fork does: refused, saying so (rather than run on the wrong history)."""
    if previous in (None, "auto", "none"):
        return
    last = session.last_turn.id if session.last_turn else None
    if previous != last:
        raise errors.Conflict(
            f"previous_turn_id {previous!r} is not the session's last turn ({last}): a "
            f"session's turns follow one another; to continue from an earlier turn, fork "
            f"the session (POST /v1/sessions/{session.id}/fork with that turn_id)"
        )


@router.post("/{session_id}/turns")
async def create_turn(
    request: Request,
    session_id: SessionId,
    body: TurnCreate,
    svc: Svc,
    tenant: Writer,
    who: Annotated[Principal, Depends(edge.caller)],
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Messages start a turn (a running one is cancelled, `cancelled-for-next-turn`); tool
    approvals and responses answer the waiting turn, which resumes: that turn is the answer."""
    items = body.input or []
    messages = [i.text for i in items if isinstance(i, UserMessage)]
    if not items:
        raise errors.InvalidRequest("input must hold at least one item")
    session = await svc.get_session(tenant, session_id)
    if session.closed_at is not None:
        raise errors.SessionClosed(f"session {session_id} is closed")
    if messages:
        _chains(session, body.previous_turn_id)
    before = session.last_event_seq
    answers = await _answers(
        svc, tenant, session_id, [i for i in items if not isinstance(i, UserMessage)]
    )
    for interrupt, response in answers:
        await svc.respond(tenant, interrupt["id"], response, who.key_id or tenant)
        await deps.audit(request, "interrupt.respond", interrupt["id"])
    if messages:
        # after answers the resumed turn goes first; else the new input supersedes
        on_busy = domain.OnBusy.ENQUEUE if answers else domain.OnBusy.INTERRUPT
        new = [{"role": "user", "content": text} for text in messages]
        turn = await svc.start_turn(tenant, session_id, new, on_busy)
        await deps.audit(request, "turn.create", turn.id, on_busy=on_busy.value)
        context_from = before  # a new turn: nothing of it came before
    else:
        turn = await svc.get_turn(tenant, session_id, answers[-1][0]["turn_id"])
        context_from = 0  # a resumed turn: its first part tells which message made each call
    if body.stream or "text/event-stream" in (accept or ""):
        return await _stream(request, svc, tenant, turn.id, after=before, context_from=context_from)
    return JSONResponse({"data": await reads.one_turn(svc, tenant, turn)})


@router.get("/{session_id}/turns")
async def list_turns(
    session_id: SessionId,
    svc: Svc,
    tenant: Reader,
    page_token: str | None = None,
    limit: Annotated[int, Query(ge=1, le=25)] = 10,
) -> dict[str, Any]:
    """Newest first; `page_token` is the seq of the last turn of the previous page."""
    before = cursors.position(page_token, "page_token")
    turns = await reads.all_turns(svc, tenant, session_id)
    older = [t for t in reversed(turns) if before is None or t.seq < before]
    page = older[:limit]
    index = await reads.transcript_index(svc, tenant, session_id)
    pending = await reads.pending_interrupts(svc, tenant, session_id)
    previous = {t.id: turns[i - 1].id if i else None for i, t in enumerate(turns)}
    data = [reads.turn_out(tenant, t, previous[t.id], index, pending) for t in page]
    more = len(older) > limit
    return {
        "data": data,
        "pagination": {"next_page_token": str(page[-1].seq) if more else None, "limit": limit},
    }


@router.get("/{session_id}/turns/{turn_id}")
async def get_turn(
    session_id: SessionId, turn_id: TurnId, svc: Svc, tenant: Reader
) -> dict[str, Any]:
    turn = await svc.get_turn(tenant, session_id, turn_id)
    return {"data": await reads.one_turn(svc, tenant, turn)}


@router.post("/{session_id}/turns/{turn_id}/subscribe")
async def subscribe(
    request: Request,
    session_id: SessionId,
    turn_id: TurnId,
    svc: Svc,
    tenant: Reader,
    body: Subscribe | None = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """The turn's events after `after_sequence_number` (or `Last-Event-ID`), then live ones,
    until it ends or waits for an answer."""
    given = body.after_sequence_number if body else None
    after = cursors.json_position(given, "after_sequence_number")
    resumed = cursors.position(last_event_id, "Last-Event-ID")  # both checked; the body wins
    if after is None:
        after = resumed
    turn = await svc.get_turn(tenant, session_id, turn_id)
    if turn.status.terminal:
        return await _replay(request, svc, tenant, turn_id, after=after or 0)
    return await _stream(request, svc, tenant, turn_id, after=after or 0, context_from=0)


_TURN_ENDS = frozenset(domain.TERMINAL_EVENT.values())
_REPLAY_PAGE = 500


async def _stream(
    request: Request,
    svc: Service,
    tenant: str,
    turn_id: str,
    *,
    after: int,
    context_from: int,
    log: AsyncGenerator[list[streaming.Frame], None] | None = None,
) -> Response:
    """SSE of a turn in TrueFoundry's events after `after`: `id:` is the Tether event seq (a
    delta carries the seq of the event before it, as on /v1). The turn's events from
    `context_from` to `after` are read, not sent: they give the translator its context
    (which message made a tool call, the turn's output). They come from the session's live
    feed, or from `log` (a finished turn's stored events, `_replay`)."""
    batches = log or await svc.follow(
        tenant,
        request.path_params["session_id"],
        context_from,
        turn_id=turn_id,
        idle_s=(await deps.node(request)).settings.sse_ping_s,
    )
    release = await deps.stream_slot(request, tenant)
    translator = wire.EventTranslator(tenant)

    async def translated() -> AsyncGenerator[list[streaming.Frame], None]:
        try:
            async for batch in batches:
                out: list[streaming.Frame] = []
                for frame in batch:
                    if frame.type == domain.EventType.MESSAGE_DELTA:
                        payloads = [translator.delta(frame.payload)]
                    else:
                        payloads = translator.durable(frame.payload)
                        if frame.seq <= after:
                            if frame.type in _TURN_ENDS:
                                return  # ended before the client's point: nothing can follow
                            continue
                    out += [streaming.Frame(frame.seq, p["type"], p, turn_id) for p in payloads]
                    if frame.terminal and out:  # the turn ended or waits: so does the stream
                        out[-1].ends_turn, out[-1].pauses_turn = frame.ends_turn, frame.pauses_turn
                        break
                if out or not batch:
                    yield out  # an empty batch is a keep-alive
        finally:
            await batches.aclose()

    return sse.response(translated(), until_terminal=True, on_close=release)


async def _replay(
    request: Request, svc: Service, tenant: str, turn_id: str, *, after: int
) -> Response:
    """A finished turn's stream: its stored events, then the end. Everything it will ever
    have is in the log, and following would wait for an end event that a fork's copied turns
    do not have there (their history is `session.forked` and their messages)."""
    session_id = request.path_params["session_id"]

    async def stored() -> AsyncGenerator[list[streaming.Frame], None]:
        seen = 0
        while True:
            page = await svc.events_after(tenant, session_id, seen, _REPLAY_PAGE)
            yield [streaming.event_frame(e) for e in page if e.turn_id == turn_id]
            if len(page) < _REPLAY_PAGE:
                return
            seen = page[-1].seq

    return await _stream(request, svc, tenant, turn_id, after=after, context_from=0, log=stored())


# --- events ----------------------------------------------------------------------------------


def _offset(page_token: str | None) -> int:
    return cursors.position(page_token, "page_token") or 0


def _page(items: list[Any], offset: int, limit: int) -> tuple[list[Any], str | None]:
    page = items[offset : offset + limit]
    more = offset + limit < len(items)
    return page, str(offset + limit) if more else None


@router.get("/{session_id}/turns/{turn_id}/events")
async def list_turn_events(
    session_id: SessionId,
    turn_id: TurnId,
    svc: Svc,
    tenant: Reader,
    page_token: str | None = None,
    limit: Annotated[int, Query(ge=1, le=25)] = 25,
    order: Literal["asc", "desc"] = "asc",
) -> dict[str, Any]:
    """The turn's content events (no deltas, no turn.created / turn.done)."""
    await svc.get_turn(tenant, session_id, turn_id)
    lifecycle = {"turn.created", "turn.done"}
    events = [
        t.event
        for t in await reads.translated_events(svc, tenant, session_id)
        if t.turn_id == turn_id and t.event["type"] not in lifecycle
    ]
    if order == "desc":
        events.reverse()
    page, token = _page(events, _offset(page_token), limit)
    return {"data": page, "pagination": {"next_page_token": token, "limit": limit}}


@router.get("/{session_id}/events")
async def list_events(
    session_id: SessionId,
    svc: Svc,
    tenant: Reader,
    page_token: str | None = None,
    last_turn_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> dict[str, Any]:
    """`{turn_id, event}` newest first, up to `last_turn_id` (else the last turn); a turn
    still running is left out: subscribe to it for its events."""
    turns = await reads.all_turns(svc, tenant, session_id)
    if last_turn_id is not None and page_token is None:
        anchor = next((t for t in turns if t.id == last_turn_id), None)
        if anchor is None:
            raise errors.NotFound(f"turn {last_turn_id} not found")
        turns = [t for t in turns if t.seq <= anchor.seq]
    live = {domain.TurnStatus.QUEUED, domain.TurnStatus.RUNNING, domain.TurnStatus.CANCELLING}
    shown = {t.id for t in turns if t.status not in live}
    events = [
        {"turn_id": t.turn_id, "event": t.event}
        for t in await reads.translated_events(svc, tenant, session_id)
        if t.turn_id in shown
    ]
    events.reverse()
    page, token = _page(events, _offset(page_token), limit)
    return {"data": page, "pagination": {"next_page_token": token, "limit": limit}}
