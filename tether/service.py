"""The use cases: what clients can ask of Tether, over the store and the bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tether import domain, errors, ids, sealing, streaming
from tether.bus import Bus
from tether.config import Settings
from tether.runtime import providers
from tether.runtime.tools import ToolRegistry
from tether.store import Page, Store, idempotency

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
    ):
        self.settings = settings
        self.sealer = sealing.Sealer(self.settings)
        self.store = store
        self.bus = bus
        self.tools = tools

    # --- agents --------------------------------------------------------------------------------

    def _check_metadata(self, metadata: dict[str, Any] | None, what: str) -> None:
        """Metadata rides along with every read of its object: bounded (DESIGN §8)."""
        if not metadata:
            return
        size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
        limit = self.settings.max_metadata_bytes
        if size > limit:
            raise errors.MetadataTooLarge(
                f"{what} metadata is {size} bytes as JSON; the limit is {limit}",
                details={"size": size, "limit": limit},
            )

    def _check_agent(self, spec: domain.AgentSpec) -> None:
        self._check_metadata(spec.metadata, "agent")
        unknown = [t.name for t in spec.tools if self.tools.get(t.name) is None]
        if unknown:
            raise errors.InvalidAgent(
                f"unknown tools: {', '.join(unknown)}",
                details={"unknown_tools": unknown, "available": self.tools.names()},
            )
        names = [t.name for t in spec.tools]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # which entry's policy would apply? Refuse rather than guess
            raise errors.InvalidAgent(
                f"tools lists {', '.join(repeated)} more than once: give each tool one entry",
                details={"duplicate_tools": repeated},
            )
        providers.check(spec.model, self.settings)

    def _seal(self, tenant: str, spec: domain.AgentSpec) -> domain.AgentSpec:
        """The agent as it is stored: its own API key, if any, sealed."""
        if spec.model.api_key is None:
            return spec
        sealed = self.sealer.seal(tenant, spec.model.api_key.get_secret_value())
        model = spec.model.model_copy(update={"api_key": None, "api_key_sealed": sealed})
        return spec.model_copy(update={"model": model})

    def _same_key(self, tenant: str, stored: domain.ModelSpec, given: domain.ModelSpec) -> bool:
        if given.api_key is None or stored.api_key_sealed is None:
            return given.api_key is None and stored.api_key_sealed is None
        try:
            stored_key = self.sealer.open(tenant, stored.api_key_sealed)
        except errors.ProviderKeyUnavailable:
            return False
        return stored_key == given.api_key.get_secret_value()

    async def create_agent(self, tenant: str, spec: domain.AgentSpec) -> domain.Agent:
        self._check_agent(spec)
        return await self.store.agents.create(tenant, self._seal(tenant, spec))

    async def upsert_agent(self, tenant: str, spec: domain.AgentSpec) -> domain.Agent:
        """Create or replace the agent of that name (agents files, the demo agent)."""
        self._check_agent(spec)
        try:
            current = await self.store.agents.get(tenant, spec.name)
        except errors.NotFound:
            return await self.store.agents.create(tenant, self._seal(tenant, spec))
        if current.spec.model_dump() == spec.model_dump() and self._same_key(
            tenant, current.spec.model, spec.model
        ):
            return current
        return await self.store.agents.update(tenant, current.id, self._seal(tenant, spec))

    async def find_agent(self, tenant: str, ref: str) -> domain.Agent:
        """An agent by id or by name. A ref that is neither names nothing, and is not looked
        up (the store could not even compare some text, such as a NUL, with its names)."""
        named = len(ref) <= 128 and re.fullmatch(domain.AGENT_NAME_PATTERN, ref)
        if not named and not ids.valid("agt", ref):
            raise errors.NotFound(f"agent {ref!r} not found")
        return await self.store.agents.get(tenant, ref)

    async def get_agent(self, tenant: str, agent_id: str) -> domain.Agent:
        return await self.store.agents.get(tenant, ids.check("agt", agent_id))

    async def list_agents(self, tenant: str, limit: int, cursor: str | None) -> Page:
        return await self.store.agents.page(tenant, limit, cursor)

    async def update_agent(
        self, tenant: str, agent_id: str, changes: dict[str, Any]
    ) -> domain.Agent:
        """`changes` replace whole fields (`model` too); an own API key already stored is
        kept while the provider and base URL stay the same and no other key is named."""
        current = await self.get_agent(tenant, agent_id)
        merged = {**current.spec.model_dump(mode="json"), **changes}
        try:
            spec = domain.AgentSpec.model_validate(merged)
        except ValueError as exc:
            raise errors.InvalidAgent(str(exc)) from exc
        spec = self._keep_key(current.spec.model, spec, changes.get("model"))
        self._check_agent(spec)
        return await self.store.agents.update(tenant, agent_id, self._seal(tenant, spec))

    @staticmethod
    def _keep_key(
        before: domain.ModelSpec, spec: domain.AgentSpec, model_changes: dict[str, Any] | None
    ) -> domain.AgentSpec:
        """The stored own key carried into an updated agent, where that is what the update
        means. Sent elsewhere, a key the caller cannot read must be given again: otherwise a
        change of base URL could send it to a host of anyone's choosing."""
        if before.api_key_sealed is None:
            return spec
        after = spec.model
        if model_changes is not None and (
            "api_key" in model_changes or after.api_key_env is not None
        ):
            return spec  # a new key, or none (null), or a server-held one: as asked
        if (after.provider, after.base_url) != (before.provider, before.base_url):
            raise errors.InvalidAgent(
                "model.provider or model.base_url changed: give model.api_key again (or "
                "null to use a key held by the server)",
                details={"field": "model.api_key"},
            )
        model = after.model_copy(update={"api_key_sealed": before.api_key_sealed})
        return spec.model_copy(update={"model": model})

    async def delete_agent(self, tenant: str, agent_id: str) -> None:
        await self.store.agents.delete(tenant, ids.check("agt", agent_id))

    # --- sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        tenant: str,
        agent_ref: str,
        metadata: dict[str, Any] | None = None,
        input: str | list[dict[str, Any]] | None = None,
    ) -> tuple[domain.Session, domain.Turn | None]:
        """`agent_ref` is an agent id or, for convenience, an agent's name."""
        self._check_metadata(metadata, "session")
        agent = await self.find_agent(tenant, agent_ref)
        first = normalize_input(input) if input is not None else None
        if first is not None:
            await self._check_turn_limits(tenant)
        session_id, turn = await self.store.lifecycle.create_session(
            tenant, agent.id, self.settings.zone, metadata or {}, first
        )
        if turn:
            self.bus.notify_work()
        return await self.store.sessions.get(tenant, session_id), turn

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
        for turn_id in await self.store.lifecycle.purge_session(tenant, session_id):
            self.bus.signal_stop(turn_id)

    # --- turns ---------------------------------------------------------------------------------

    async def start_turn(
        self,
        tenant: str,
        session_id: str,
        input: str | list[dict[str, Any]],
        on_busy: domain.OnBusy = domain.OnBusy.ENQUEUE,
    ) -> domain.Turn:
        session_id = ids.check_session(session_id)
        await self._check_turn_limits(tenant)
        turn, to_wake = await self.store.lifecycle.create_turn(
            tenant, session_id, normalize_input(input), on_busy
        )
        for turn_id in to_wake:
            self.bus.signal_stop(turn_id)
        self.bus.notify_work()
        return turn

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
        # opened before the write, so the end cannot slip by; with the bus down it polls
        feed = await streaming.Feed.open(self.store, self.bus, session_id, live=False)
        try:
            turn, to_wake, written = await self.store.lifecycle.stop(
                tenant, session_id, turn_id, mode, scope, reason
            )
            for wake in to_wake:
                self.bus.signal_stop(wake)
            self.bus.notify_work()  # a cancelled head of queue lets the next turn run
            if turn is not None and not turn.status.terminal and wait_s > 0:
                turn = await self._await_end(feed, turn, written, wait_s)
        finally:
            feed.close()
        return StopResult(turn, await self.store.sessions.get(tenant, session_id))

    async def _await_end(
        self, feed: streaming.Feed, turn: domain.Turn, after: int, wait_s: float
    ) -> domain.Turn:
        """The turn once it ended, or as it is after `wait_s`."""
        frames = feed.frames(after, turn_id=turn.id, idle_s=_STORE_POLL_S, text=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s), contextlib.aclosing(frames):
                async for batch in frames:
                    if any(frame.ends_turn for frame in batch):
                        break
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
        cursor: str | None,
    ) -> Page:
        """The tenant's interrupts across its sessions, soonest expiry first (the inbox)."""
        return await self.store.interrupts.inbox(tenant, status, limit, cursor)

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
