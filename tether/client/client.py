"""`Tether`, the sync client, and its resources (one per part of the API)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

import httpx
from pydantic import BaseModel

from tether.client import _base, _calls, _streams, errors, models
from tether.client._sync_streams import EventStream, TurnStream

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Input = str | list[dict[str, Any]]


class Tether:
    """A client of Tether's native API.

    `base_url` and `api_key` default to `TETHER_URL` and `TETHER_API_KEY` (then
    http://127.0.0.1:8700, no key). Calls that may safely be repeated (reads, stops, creates,
    which carry an automatic `Idempotency-Key`) are retried up to `max_retries` times after a
    connection failure or a 502/503/504. Streams reconnect by themselves, giving up after
    `max_reconnects` attempts in a row that bring nothing new.

        with Tether() as tether:
            session = tether.sessions.create("demo")
            print(tether.turns.create(session.id, "Hello!", stream=True).text())
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        stream_timeout: float = 60.0,
        max_reconnects: int = 10,
        http_client: httpx.Client | None = None,
    ):
        self._config = _base.Config.build(
            base_url, api_key, timeout, max_retries, stream_timeout, max_reconnects
        )
        self._http = http_client or httpx.Client(timeout=self._config.http_timeout())
        self._http.base_url = httpx.URL(self._config.base_url)
        self._http.headers.update(self._config.headers())
        self.agents = Agents(self)
        self.sessions = Sessions(self)
        self.turns = Turns(self)
        self.interrupts = Interrupts(self)
        self.events = Events(self)
        self.keys = Keys(self)
        self.audit = Audit(self)
        self.webhooks = Webhooks(self)

    @classmethod
    def from_env(cls, **options: Any) -> Tether:
        """A client for `TETHER_URL` with `TETHER_API_KEY` (options as for the constructor)."""
        return cls(None, None, **options)

    @property
    def base_url(self) -> str:
        return self._config.base_url

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Tether:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def me(self) -> models.Me:
        """Who this client is to the server: tenant, role, key, and whether keys are required
        at all."""
        return self._call(_calls.me())

    def _call(self, call: _calls.Call[T], idempotency_key: str | None = None) -> T:
        """Send `call`, retrying it when that is safe; its answer, or a typed exception."""
        key = idempotency_key or (_base.new_idempotency_key() if call.creates else None)
        args = _base.request_args(self._config, call, key)
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **args)
                if response.status_code >= 400:
                    raise errors.from_response(response)
                return call.read(response)
            except (httpx.TransportError, errors.APIError) as exc:
                attempt += 1
                if attempt > self._config.max_retries or not _base.retryable(call, exc):
                    if isinstance(exc, httpx.TransportError):
                        raise errors.connection_error(exc, self._config.base_url) from exc
                    raise
                time.sleep(_base.backoff_s(attempt, _base.retry_after_of(exc)))

    def _pages(self, paged: _calls.PagedCall[M]) -> Paginator[M]:
        return Paginator(self, paged)


class Paginator(Generic[M]):
    """Every item of a list, fetching the pages as iteration reaches them."""

    def __init__(self, client: Tether, paged: _calls.PagedCall[M]):
        self._client = client
        self._paged = paged

    def __iter__(self) -> Iterator[M]:
        cursor: str | None = None
        while True:
            items, cursor = self._client._call(self._paged.page(cursor))
            yield from items
            if not cursor:
                return

    def to_list(self) -> list[M]:
        """All items, every page fetched."""
        return list(self)


class _Resource:
    def __init__(self, client: Tether):
        self._client = client


class Agents(_Resource):
    """Agents: model + instructions + tools + limits (admins create and change them)."""

    def create(
        self, definition: Mapping[str, Any] | BaseModel, *, idempotency_key: str | None = None
    ) -> models.Agent:
        """Create an agent from its definition (`{"name", "instructions", "model", "tools",
        …}`, as in DESIGN §7)."""
        return self._client._call(_calls.create_agent(definition), idempotency_key)

    def list(self, *, limit: int | None = None) -> Paginator[models.Agent]:
        """Every agent of the tenant (`limit`: page size)."""
        return self._client._pages(_calls.list_agents(limit))

    def get(self, agent_id: str) -> models.Agent:
        """One agent by id."""
        return self._client._call(_calls.get_agent(agent_id))

    def update(self, agent_id: str, **changes: Any) -> models.Agent:
        """Change some fields of an agent (`instructions=…`, `tools=[…]`, …)."""
        return self._client._call(_calls.update_agent(agent_id, changes))

    def delete(self, agent_id: str) -> None:
        """Delete an agent."""
        self._client._call(_calls.delete_agent(agent_id))


class Sessions(_Resource):
    """Sessions: conversations with an agent, their transcripts and events."""

    def create(
        self,
        agent_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        input: Input | None = None,
        idempotency_key: str | None = None,
    ) -> models.Session:
        """A new session with an agent (its id or name); with `input`, its first turn too
        (in `session.turn`)."""
        return self._client._call(_calls.create_session(agent_id, metadata, input), idempotency_key)

    def list(
        self,
        *,
        status: models.SessionStatus | None = None,
        agent_id: str | None = None,
        limit: int | None = None,
    ) -> Paginator[models.Session]:
        """The tenant's sessions, newest first, optionally by status or agent."""
        return self._client._pages(_calls.list_sessions(status, agent_id, limit))

    def get(self, session_id: str) -> models.Session:
        """One session."""
        return self._client._call(_calls.get_session(session_id))

    def close(self, session_id: str) -> models.Session:
        """Close a session: no new turns, queued ones cancelled; it stays readable."""
        return self._client._call(_calls.close_session(session_id))

    def purge(self, session_id: str) -> None:
        """Erase a session for good (admins): its turns are stopped first, then it and all
        that belongs to it (turns, messages, events, interrupts) are deleted; every read of it
        is `NotFound` after that, and its open streams end."""
        self._client._call(_calls.purge_session(session_id))

    def fork(
        self,
        session_id: str,
        *,
        turn_id: str | None = None,
        at: models.ForkAt = "after",
        metadata: Mapping[str, Any] | None = None,
        input: Input | None = None,
        idempotency_key: str | None = None,
    ) -> models.Session:
        """A new session of the same agent whose history is this one's up to the end of
        `turn_id` (`at="after"`) or its start (`"before"`); without `turn_id`, the last
        finished turn. The source is not changed; with `input`, the fork's first turn is
        queued (in `session.turn`). `TurnNotFinished` if that history holds a turn still
        running or waiting."""
        call = _calls.fork_session(session_id, turn_id, at, metadata, input)
        return self._client._call(call, idempotency_key)

    def stop(
        self,
        session_id: str,
        *,
        mode: models.StopMode = "interrupt",
        scope: models.StopScope = "turn",
        wait: float = 5.0,
        reason: str | None = None,
    ) -> models.StopResult:
        """Stop the session's active turn (`scope="all"`: and its queued ones). `interrupt`
        keeps the partial reply, `rollback` removes the turn from the transcript. Waits up to
        `wait` s for the stop to be confirmed (`result.confirmed`). Idempotent."""
        return self._client._call(_calls.stop_session(session_id, mode, scope, wait, reason))

    def messages(self, session_id: str, *, limit: int | None = None) -> Paginator[models.Message]:
        """The transcript, oldest first."""
        return self._client._pages(_calls.list_messages(session_id, limit))

    def events(self, session_id: str, *, after: int = 0) -> EventStream:
        """The session's events after seq `after`, then live ones, until closed (SSE,
        resuming by itself). Same as `events.stream`."""
        return self._client.events.stream(session_id, after=after)


class Turns(_Resource):
    """Turns: one unit of work each, run in order per session."""

    @overload
    def create(
        self,
        session_id: str,
        input: Input,
        *,
        on_busy: models.OnBusy = ...,
        stream: Literal[False] = ...,
        idempotency_key: str | None = ...,
    ) -> models.Turn: ...

    @overload
    def create(
        self,
        session_id: str,
        input: Input,
        *,
        on_busy: models.OnBusy = ...,
        stream: Literal[True],
        idempotency_key: str | None = ...,
    ) -> TurnStream: ...

    def create(
        self,
        session_id: str,
        input: Input,
        *,
        on_busy: models.OnBusy = "enqueue",
        stream: bool = False,
        idempotency_key: str | None = None,
    ) -> models.Turn | TurnStream:
        """Start a turn with `input` (a string, or a list of `{"role", "content"}`). New input
        while a turn is active follows `on_busy`. With `stream=True`, a `TurnStream` of the
        turn's events until it ends or waits, resuming by itself if the connection drops."""
        if not stream:
            return self._client._call(
                _calls.create_turn(session_id, input, on_busy), idempotency_key
            )
        record = _streams.TurnRecord(
            session_id,
            _streams.Cursor(),
            body=_calls.turn_body(input, on_busy, stream=True),
            idempotency_key=idempotency_key or _base.new_idempotency_key(),
        )
        return TurnStream(self._client, record)

    def steer(
        self, session_id: str, input: Input, *, idempotency_key: str | None = None
    ) -> models.Turn:
        """Redirect the turn under way: `input` joins it and is delivered at its next step
        boundary (the model's next call sees it). The answer is the turn it joined, with
        `turn.steer.message_ids`; with nothing under way it is a new turn
        (`turn.steer.joined` False). Same as `create(..., on_busy="steer")`."""
        return self._client._call(_calls.create_turn(session_id, input, "steer"), idempotency_key)

    def list(self, session_id: str, *, limit: int | None = None) -> Paginator[models.Turn]:
        """The session's turns, oldest first."""
        return self._client._pages(_calls.list_turns(session_id, limit))

    def get(self, session_id: str, turn_id: str) -> models.Turn:
        """One turn."""
        return self._client._call(_calls.get_turn(session_id, turn_id))

    def cancel(
        self,
        session_id: str,
        turn_id: str,
        *,
        mode: models.StopMode = "interrupt",
        wait: float = 5.0,
        reason: str | None = None,
    ) -> models.StopResult:
        """Stop this turn (queued, waiting or running). Idempotent."""
        return self._client._call(_calls.cancel_turn(session_id, turn_id, mode, wait, reason))

    def stream(self, session_id: str, turn_id: str, *, after: int = 0) -> TurnStream:
        """Follow an existing turn: its events after seq `after` until it ends or waits.
        `after` must be before the turn's end (0, the default, always is)."""
        record = _streams.TurnRecord(session_id, _streams.Cursor(after, turn_id))
        return TurnStream(self._client, record)


class Interrupts(_Resource):
    """Interrupts: a turn's pauses for a human (approvals, questions), and their answers."""

    def list(
        self,
        session_id: str | None = None,
        *,
        status: models.InterruptStatus | None = None,
        limit: int | None = None,
    ) -> Paginator[models.Interrupt]:
        """A session's interrupts, or without `session_id` those of all of your sessions,
        the one expiring soonest first (those that never expire last). `status="pending"`:
        those awaiting an answer (the approvals inbox)."""
        return self._client._pages(_calls.list_interrupts(session_id, status, limit))

    def get(self, interrupt_id: str) -> models.Interrupt:
        """One interrupt."""
        return self._client._call(_calls.get_interrupt(interrupt_id))

    def respond(
        self, interrupt_id: str, response: Any, *, resolved_by: str | None = None
    ) -> models.Interrupt:
        """Answer an interrupt with any JSON; the turn resumes once all of its interrupts are
        answered. `InterruptNotPending` if it was answered already."""
        return self._client._call(_calls.respond(interrupt_id, response, resolved_by))

    def approve(
        self,
        interrupt_id: str,
        *,
        reason: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> models.Interrupt:
        """Approve a tool call (with edited `arguments`, if the tool allows it)."""
        answer = _calls.approval("approve", reason, arguments)
        return self.respond(interrupt_id, answer)

    def deny(self, interrupt_id: str, *, reason: str | None = None) -> models.Interrupt:
        """Deny a tool call: it never runs, and the model is told (with `reason`)."""
        return self.respond(interrupt_id, _calls.approval("deny", reason, None))

    def answer(self, interrupt_id: str, answer: Any) -> models.Interrupt:
        """Answer a question."""
        return self.respond(interrupt_id, answer)


class Events(_Resource):
    """A session's events: durable ones have a gap-free `seq`."""

    def list(
        self, session_id: str, *, after: int = 0, limit: int | None = None
    ) -> Paginator[models.Event]:
        """Stored events after seq `after` (no deltas, no waiting for new ones)."""
        return self._client._pages(_calls.list_events(session_id, after, limit))

    def stream(self, session_id: str, *, after: int = 0, turn_id: str | None = None) -> EventStream:
        """Events after seq `after`, then live ones, until closed (`turn_id`: only that
        turn's). Resumes by itself if the connection drops."""
        return EventStream(self._client, session_id, _streams.Cursor(after, turn_id))


class Keys(_Resource):
    """API keys of your tenant (admins)."""

    def create(self, role: models.Role, *, name: str | None = None) -> models.ApiKeyCreated:
        """A new key; its secret (`key`) is in this answer only."""
        return self._client._call(_calls.create_key(role, name))

    def list(self) -> Paginator[models.ApiKey]:
        """Every key, never with secrets."""
        return self._client._pages(_calls.list_keys())

    def revoke(self, key_id: str) -> models.ApiKey:
        """Revoke a key: it stops working within seconds."""
        return self._client._call(_calls.revoke_key(key_id))


class Audit(_Resource):
    """The tenant's audit log (admins)."""

    def list(self, *, limit: int | None = None) -> Paginator[models.AuditEntry]:
        """Mutations, newest first."""
        return self._client._pages(_calls.list_audit(limit))


class Webhooks(_Resource):
    """Webhook endpoints of your tenant and their deliveries (admins)."""

    def create(
        self,
        url: str,
        events: list[models.WebhookEvent] | None = None,
        *,
        description: str | None = None,
    ) -> models.WebhookCreated:
        """A new endpoint told of `events` (default `["*"]`: all); its signing secret
        (`secret`) is in this answer only."""
        return self._client._call(_calls.create_webhook(url, list(events or ["*"]), description))

    def list(self, *, limit: int | None = None) -> Paginator[models.Webhook]:
        """Every endpoint, never with secrets."""
        return self._client._pages(_calls.list_webhooks(limit))

    def get(self, webhook_id: str) -> models.Webhook:
        """One endpoint."""
        return self._client._call(_calls.get_webhook(webhook_id))

    def update(self, webhook_id: str, **changes: Any) -> models.Webhook:
        """Change `url`, `events`, `description`, or `status` (`"enabled"`, `"disabled"`)."""
        return self._client._call(_calls.update_webhook(webhook_id, changes))

    def delete(self, webhook_id: str) -> None:
        """Delete an endpoint: its pending deliveries fail."""
        self._client._call(_calls.delete_webhook(webhook_id))

    def rotate_secret(self, webhook_id: str) -> models.WebhookCreated:
        """A new signing secret (`secret`, in this answer only) for every attempt from now."""
        return self._client._call(_calls.rotate_webhook_secret(webhook_id))

    def deliveries(
        self,
        webhook_id: str,
        *,
        status: models.DeliveryStatus | None = None,
        limit: int | None = None,
    ) -> Paginator[models.WebhookDelivery]:
        """The endpoint's deliveries, newest first, each with its attempts."""
        return self._client._pages(_calls.list_deliveries(webhook_id, status, limit))

    def retry(self, webhook_id: str, delivery_id: str) -> models.WebhookDelivery:
        """Send a failed delivery again, with the same `webhook-id`."""
        return self._client._call(_calls.retry_delivery(webhook_id, delivery_id))
