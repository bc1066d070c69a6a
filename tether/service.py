"""The use cases: what clients can ask of Tether, over the store and the bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tether import agents, domain, errors, ids, storable, streaming
from tether.bus import Bus, EndWatch
from tether.config import Settings
from tether.runtime import mcp_servers
from tether.runtime.tools import ToolRegistry
from tether.store import Page, Store, idempotency
from tether.webhooks import endpoints

DEFAULT_TENANT = "default"
_STORE_POLL_S = 0.25  # how often a stop waiting for its confirmation also asks the store


def normalize_input(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`input` is a string (one user message) or a list of {role, content} messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not value:
        raise errors.InvalidRequest("input must not be empty")
    return [{"role": item["role"], "content": item["content"]} for item in value]


@dataclass(slots=True)
class StopResult:
    turn: domain.Turn | None  # the stopped turn (final, or still `cancelling`), if any
    session: domain.Session

    @property
    def confirmed(self) -> bool:
        return self.turn is None or self.turn.status.terminal


class ApprovalResponse(BaseModel):
    """The response to an `approval` interrupt."""

    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "deny"]
    reason: str | None = Field(default=None, max_length=2000)
    arguments: dict[str, Any] | None = None  # edited arguments, where the tool allows it


class Service:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        tools: ToolRegistry,
        settings: Settings,
        mcp: mcp_servers.Servers | None = None,
    ):
        self.settings = settings
        self.store = store
        self.bus = bus
        self.tools = tools
        self.agents = agents.Agents(store, tools, settings, mcp)  # agent definitions
        self.webhooks = endpoints.Endpoints(store, settings)  # webhook endpoints, deliveries

    # --- sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        tenant: str,
        agent_ref: str,
        metadata: dict[str, Any] | None = None,
        input: str | list[dict[str, Any]] | None = None,
    ) -> tuple[domain.Session, domain.Turn | None]:
        """`agent_ref` is an agent id or, for convenience, an agent's name."""
        storable.check_metadata(metadata, "session", self.settings.max_metadata_bytes)
        agent = await self.agents.find(tenant, agent_ref)
        first = normalize_input(input) if input is not None else None
        if first is not None:
            await self._check_turn_limits(tenant)
        session_id, turn = await self.store.lifecycle.create_session(
            tenant, agent.id, self.settings.zone, metadata or {}, first
        )
        if turn:
            self.bus.notify_work()
        return await self.store.sessions.get(tenant, session_id), turn

    async def fork(
        self,
        tenant: str,
        session_id: str,
        *,
        turn_id: str | None = None,
        at: domain.ForkAt = domain.ForkAt.AFTER,
        metadata: dict[str, Any] | None = None,
        input: str | list[dict[str, Any]] | None = None,
    ) -> tuple[domain.Session, domain.Turn | None]:
        """A new session of the same agent from the source's history up to a finished turn
        (DESIGN §4b), usable at once (with its first turn queued, given `input`). The
        source is not changed."""
        session_id = ids.check_session(session_id)
        if turn_id is not None:
            ids.check("turn", turn_id)
        storable.check_metadata(metadata, "session", self.settings.max_metadata_bytes)
        first = normalize_input(input) if input is not None else None
        if first is not None:
            await self._check_turn_limits(tenant)
        fork_id, turn = await self.store.forks.fork(
            tenant, session_id, turn_id, at, self.settings.zone, metadata or {}, first
        )
        if turn:
            self.bus.notify_work()
        return await self.store.sessions.get(tenant, fork_id), turn

    async def get_session(self, tenant: str, session_id: str) -> domain.Session:
        return await self.store.sessions.get(tenant, ids.check_session(session_id))

    async def list_sessions(
        self,
        tenant: str,
        limit: int,
        cursor: str | None,
        status: domain.SessionStatus | None,
        agent_id: str | None,
    ) -> Page:
        return await self.store.sessions.page(tenant, limit, cursor, status, agent_id)

    async def close_session(self, tenant: str, session_id: str) -> domain.Session:
        session_id = ids.check_session(session_id)
        await self.store.lifecycle.close_session(tenant, session_id)
        return await self.store.sessions.get(tenant, session_id)

    async def purge_session(self, tenant: str, session_id: str, wait_s: float = 5.0) -> None:
        """Delete the session for good. First it is closed (no new turns) and its turns are
        stopped the normal way, waiting up to `wait_s` for a running one's executor to
        confirm; then everything of it goes in one transaction. An executor that has not let
        go by then is woken again, and its later writes find nothing."""
        session_id = ids.check_session(session_id)
        await self.store.lifecycle.close_session(tenant, session_id)
        await self.stop(
            tenant, session_id, scope=domain.StopScope.ALL, reason="session_purged", wait_s=wait_s
        )
        for turn_id in await self.store.purges.purge(tenant, session_id):
            self.bus.signal_stop(turn_id)

    # --- turns ---------------------------------------------------------------------------------

    async def start_turn(
        self,
        tenant: str,
        session_id: str,
        input: str | list[dict[str, Any]],
        on_busy: domain.OnBusy = domain.OnBusy.ENQUEUE,
    ) -> domain.Turn:
        """A new turn, queued; `on_busy` says what to do with a turn under way (with
        `steer` the input may join that turn instead: see `steer`)."""
        if on_busy is domain.OnBusy.STEER:
            return (await self.steer(tenant, session_id, input)).turn
        return (await self._queue(tenant, session_id, input, on_busy)).turn

    async def _queue(
        self,
        tenant: str,
        session_id: str,
        input: str | list[dict[str, Any]],
        on_busy: domain.OnBusy,
    ) -> domain.Queued:
        session_id = ids.check_session(session_id)
        await self._check_turn_limits(tenant)
        queued = await self.store.lifecycle.create_turn(
            tenant, session_id, normalize_input(input), on_busy
        )
        for turn_id in queued.to_wake:
            self.bus.signal_stop(turn_id)
        self.bus.notify_work()
        return queued

    async def stream_turn(
        self,
        tenant: str,
        session_id: str,
        input: str | list[dict[str, Any]],
        on_busy: domain.OnBusy = domain.OnBusy.ENQUEUE,
        *,
        idle_s: float | None = None,
    ) -> tuple[domain.Turn, int, streaming.Following]:
        """Queue a turn and follow it: the turn, the session's last event seq before it, and
        its frames from there. The live feed is subscribed before the turn is written, so
        however fast a worker runs it, every delta it streams is heard (in cluster mode a
        worker may finish a short turn before a subscription made afterwards is confirmed).
        Unavailable with the bus down, before anything is written. Not for a steer (it may
        join a turn under way: follow the session instead)."""
        if on_busy is domain.OnBusy.STEER:
            raise ValueError("a steer is followed from the session, not queued and followed")
        session_id = ids.check_session(session_id)
        if not self.live:
            raise errors.Unavailable("live streams are unavailable (the bus is down), retry")
        feed = await streaming.Feed.open(self.store, self.bus, session_id)
        try:
            queued = await self._queue(tenant, session_id, input, on_busy)
        except BaseException:
            feed.close()
            raise
        frames = feed.frames(queued.after, turn_id=queued.turn.id, idle_s=idle_s, live_from=True)
        return queued.turn, queued.after, streaming.Following(feed, frames)

    async def steer(
        self, tenant: str, session_id: str, input: str | list[dict[str, Any]]
    ) -> domain.Steered:
        """`on_busy: steer` (DESIGN §3): the input joins the turn under way, stored before
        this answers, and is delivered at its next step boundary; on a session with nothing
        under way it is a new turn, as with `enqueue`."""
        session_id = ids.check_session(session_id)
        messages = normalize_input(input)
        session = await self.store.sessions.get(tenant, session_id)
        if session.status is domain.SessionStatus.IDLE:
            await self._check_turn_limits(tenant)  # it will most likely make a turn
        steered = await self.store.lifecycle.steer(tenant, session_id, messages)
        if steered.turn.status is domain.TurnStatus.QUEUED:
            self.bus.notify_work()
        return steered

    async def _check_turn_limits(self, tenant: str) -> None:
        running_cap = self.settings.max_running_turns_per_tenant
        queued_cap = self.settings.max_queued_turns_per_tenant
        if running_cap is None and queued_cap is None:
            return
        counts = await self.store.sessions.count_unfinished(tenant)
        running = sum(n for status, n in counts.items() if status in domain.ACTIVE)
        queued = counts.get(domain.TurnStatus.QUEUED, 0)
        if running_cap is not None and running >= running_cap:
            raise errors.TooManyRequests(
                f"tenant has {running} running turns (limit {running_cap})", retry_after_s=2
            )
        if queued_cap is not None and queued >= queued_cap:
            raise errors.TooManyRequests(
                f"tenant has {queued} queued turns (limit {queued_cap})", retry_after_s=2
            )

    async def stop(
        self,
        tenant: str,
        session_id: str,
        *,
        turn_id: str | None = None,
        mode: domain.StopMode = domain.StopMode.INTERRUPT,
        scope: domain.StopScope = domain.StopScope.TURN,
        reason: str = "client_cancelled",
        wait_s: float = 5.0,
    ) -> StopResult:
        """Stop the session's active turn (or `turn_id`). The stop is written first; the bus
        only wakes the executor. Waits up to `wait_s` for the turn to end."""
        session_id = ids.check_session(session_id)
        if turn_id is not None:
            ids.check("turn", turn_id)
        # watched before the write, so the end cannot slip by
        watch = self.bus.watch_ends(session_id)
        try:
            turn, to_wake, _ = await self.store.lifecycle.stop(
                tenant, session_id, turn_id, mode, scope, reason
            )
            for wake in to_wake:
                self.bus.signal_stop(wake)
            self.bus.notify_work()  # a cancelled head of queue lets the next turn run
            if turn is not None and not turn.status.terminal and wait_s > 0:
                turn = await self._await_end(watch, turn, wait_s)
        finally:
            self.bus.unwatch_ends(watch)
        return StopResult(turn, await self.store.sessions.get(tenant, session_id))

    async def _await_end(self, watch: EndWatch, turn: domain.Turn, wait_s: float) -> domain.Turn:
        """The turn once it ended, or as it is after `wait_s`. The bus says when (on a path
        of its own, not behind the session's live text); the store is asked now and then
        too, in case that word is lost."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while turn.id not in watch.ended:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            watch.event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, _STORE_POLL_S)):
                    await watch.event.wait()
            if turn.id in watch.ended:
                break
            polled = await self.store.sessions.turn(turn.tenant_id, turn.session_id, turn.id)
            if polled.status.terminal:
                return polled
        return await self.store.sessions.turn(turn.tenant_id, turn.session_id, turn.id)

    # --- following a session -------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Live streams work now (the bus is up)."""
        return self.bus.up

    async def follow(
        self,
        tenant: str,
        session_id: str,
        after: int,
        *,
        turn_id: str | None = None,
        idle_s: float | None = None,
    ) -> AsyncGenerator[list[streaming.Frame], None]:
        """The session's events after `after`, then live ones (streaming.Feed.frames), for as
        long as the caller reads. NotFound, or Unavailable with the bus down, now: before
        anything is streamed (nothing is held until the first read)."""
        session_id = ids.check_session(session_id)
        await self.store.sessions.get(tenant, session_id)
        if not self.live:
            raise errors.Unavailable("live streams are unavailable (the bus is down), retry")
        return self._follow(session_id, after, turn_id, idle_s)

    async def _follow(
        self, session_id: str, after: int, turn_id: str | None, idle_s: float | None
    ) -> AsyncGenerator[list[streaming.Frame], None]:
        feed = await streaming.Feed.open(self.store, self.bus, session_id)
        frames = feed.frames(after, turn_id=turn_id, idle_s=idle_s)
        try:
            async with contextlib.aclosing(frames):
                async for batch in frames:
                    yield batch
        finally:
            feed.close()

    async def get_turn(self, tenant: str, session_id: str, turn_id: str) -> domain.Turn:
        return await self.store.sessions.turn(
            tenant, ids.check_session(session_id), ids.check("turn", turn_id)
        )

    async def list_turns(
        self, tenant: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        return await self.store.sessions.turns(tenant, ids.check_session(session_id), limit, cursor)

    async def list_messages(
        self, tenant: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        return await self.store.sessions.messages(
            tenant, ids.check_session(session_id), limit, cursor
        )

    async def events_after(
        self, tenant: str, session_id: str, after: int, limit: int
    ) -> list[domain.Event]:
        await self.get_session(tenant, session_id)
        return await self.store.sessions.events_after(session_id, after, limit)

    # --- interrupts ----------------------------------------------------------------------------

    async def get_interrupt(self, tenant: str, interrupt_id: str) -> domain.Interrupt:
        return await self.store.interrupts.get(tenant, ids.check("int", interrupt_id))

    async def list_interrupts(
        self,
        tenant: str,
        session_id: str,
        status: domain.InterruptStatus | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        session = await self.get_session(tenant, session_id)
        return await self.store.interrupts.page(tenant, session.id, status, limit, cursor)

    async def list_tenant_interrupts(
        self,
        tenant: str,
        status: domain.InterruptStatus | None,
        limit: int,
        after: tuple[datetime, datetime, str] | None,
    ) -> Page:
        """The tenant's interrupts across its sessions, soonest expiry first (the inbox), from
        after an (expiry, creation, id) key."""
        return await self.store.interrupts.inbox(tenant, status, limit, after)

    async def respond(
        self, tenant: str, interrupt_id: str, response: Any, resolved_by: str | None = None
    ) -> domain.Interrupt:
        """Answer an interrupt. The first answer wins; the turn resumes once all of its
        interrupts are answered."""
        interrupt = await self.get_interrupt(tenant, interrupt_id)
        if interrupt.status is not domain.InterruptStatus.PENDING:
            raise errors.InterruptNotPending(
                f"interrupt {interrupt_id} is {interrupt.status.value}"
            )
        if interrupt.type == "approval":
            response = self._check_approval(interrupt, response)
        answered, resumed = await self.store.lifecycle.respond(interrupt, response, resolved_by)
        if resumed:
            self.bus.notify_work()
        return answered

    def _check_approval(self, interrupt: domain.Interrupt, response: Any) -> dict[str, Any]:
        try:
            approval = ApprovalResponse.model_validate(response)
        except ValueError as exc:
            raise errors.Unprocessable(
                'an approval response is {"decision": "approve"|"deny", "reason"?, '
                f'"arguments"?}}: {exc}'
            ) from exc
        asked = interrupt.request.get("arguments")
        if approval.arguments is not None and approval.arguments != asked:
            if not interrupt.request.get("editable"):
                raise errors.ArgumentsNotEditable(
                    f"tool {interrupt.tool_name!r} does not allow editing its arguments"
                )
            tool = self.tools.get(interrupt.tool_name or "")
            if tool is not None:
                try:
                    tool.arguments.model_validate(approval.arguments)
                except ValueError as exc:
                    raise errors.Unprocessable(f"edited arguments are invalid: {exc}") from exc
        return approval.model_dump(exclude_none=True)

    # --- what the edge keeps: idempotency keys, the audit log ----------------------------------

    async def begin_idempotent(
        self, tenant: str, key: str, fingerprint: str
    ) -> idempotency.Recorded | None:
        """Claim `key` for a request (None), or answer what was recorded for it."""
        return await self.store.idempotency.begin(tenant, key, fingerprint)

    async def finish_idempotent(
        self, tenant: str, key: str, status_code: int, response: Any
    ) -> None:
        await self.store.idempotency.finish(tenant, key, status_code, response)

    async def release_idempotent(self, tenant: str, key: str) -> None:
        """The request failed in a way worth retrying: forget the key."""
        await self.store.idempotency.release(tenant, key)

    async def record(self, tenant: str, action: str, target: str | None, **who: Any) -> None:
        """Append to the audit log (`who`: key_id, key_prefix, request_id, details)."""
        await self.store.audit.record(tenant, action, target, **who)

    async def audit_log(self, tenant: str, limit: int, cursor: str | None) -> Page:
        return await self.store.audit.page(tenant, limit, cursor)

    async def ping(self) -> None:
        """The store answers (readiness)."""
        await self.store.ping()
