"""The use cases: what clients can ask of Tether, over the store and the bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tether import domain, errors, ids, sealing
from tether.bus import Bus, Subscription
from tether.config import Settings
from tether.runtime import providers
from tether.runtime.tools import ToolRegistry
from tether.store import Page, Store, inbox
from tether.store.interrupts import InterruptStore

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
        zone: str,
        settings: Settings | None = None,
    ):
        self.settings = settings or Settings()
        self.sealer = sealing.Sealer(self.settings)
        self.store = store
        self.interrupts = InterruptStore(store)
        self.bus = bus
        self.tools = tools
        self.zone = zone

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
        return await self.store.create_agent(tenant, self._seal(tenant, spec))

    async def upsert_agent(self, tenant: str, spec: domain.AgentSpec) -> domain.Agent:
        """Create or replace the agent of that name (agents files, the demo agent)."""
        self._check_agent(spec)
        try:
            current = await self.store.get_agent(tenant, spec.name)
        except errors.NotFound:
            return await self.store.create_agent(tenant, self._seal(tenant, spec))
        if current.spec.model_dump() == spec.model_dump() and self._same_key(
            tenant, current.spec.model, spec.model
        ):
            return current
        return await self.store.update_agent(tenant, current.id, self._seal(tenant, spec))

    async def _agent_by_ref(self, tenant: str, ref: str) -> domain.Agent:
        """An agent by id or by name. A ref that is neither names nothing, and is not looked
        up (the store could not even compare some text, such as a NUL, with its names)."""
        named = len(ref) <= 128 and re.fullmatch(domain.AGENT_NAME_PATTERN, ref)
        if not named and not ids.valid("agt", ref):
            raise errors.NotFound(f"agent {ref!r} not found")
        return await self.store.get_agent(tenant, ref)

    async def get_agent(self, tenant: str, agent_id: str) -> domain.Agent:
        return await self.store.get_agent(tenant, ids.check("agt", agent_id))

    async def list_agents(self, tenant: str, limit: int, cursor: str | None) -> Page:
        return await self.store.list_agents(tenant, limit, cursor)

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
        return await self.store.update_agent(tenant, agent_id, self._seal(tenant, spec))

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
        await self.store.delete_agent(tenant, ids.check("agt", agent_id))

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
        agent = await self._agent_by_ref(tenant, agent_ref)
        first = normalize_input(input) if input is not None else None
        if first is not None:
            await self._check_turn_limits(tenant)
        session, turn = await self.store.create_session(
            tenant, agent.id, self.zone, metadata or {}, first
        )
        if turn:
            self.bus.notify_work()
        return session, turn

    async def get_session(self, tenant: str, session_id: str) -> domain.Session:
        return await self.store.get_session(tenant, ids.check_session(session_id))

    async def list_sessions(
        self,
        tenant: str,
        limit: int,
        cursor: str | None,
        status: domain.SessionStatus | None,
        agent_id: str | None,
    ) -> Page:
        return await self.store.list_sessions(tenant, limit, cursor, status, agent_id)

    async def close_session(self, tenant: str, session_id: str) -> domain.Session:
        return await self.store.close_session(tenant, ids.check_session(session_id))

    async def purge_session(self, tenant: str, session_id: str, wait_s: float = 5.0) -> None:
        """Delete the session for good. First it is closed (no new turns) and its turns are
        stopped the normal way, waiting up to `wait_s` for a running one's executor to
        confirm; then everything of it goes in one transaction. An executor that has not let
        go by then is woken again, and its later writes find nothing."""
        session_id = ids.check_session(session_id)
        await self.store.close_session(tenant, session_id)
        await self.stop(
            tenant, session_id, scope=domain.StopScope.ALL, reason="session_purged", wait_s=wait_s
        )
        for turn_id in await self.store.purge_session(tenant, session_id):
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
        turn, to_wake = await self.store.create_turn(
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
        counts = await self.store.count_turns(tenant)
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
        only wakes the executor. Waits up to `wait_s` for the executor to confirm."""
        session_id = ids.check_session(session_id)
        if turn_id is not None:
            ids.check("turn", turn_id)
        try:  # before the write, so the confirmation cannot slip by
            sub: Subscription | None = await self.bus.subscribe(session_id)
        except errors.Unavailable:
            sub = None  # the bus is down: the stop still lands in the store; poll for the end
        try:
            turn, to_wake = await self.store.request_stop(
                tenant, session_id, turn_id, mode, scope, reason
            )
            for wake in to_wake:
                self.bus.signal_stop(wake)
            self.bus.notify_work()  # a cancelled head of queue lets the next turn run
            if turn is not None and not turn.status.terminal and wait_s > 0:
                turn = await self._await_end(sub, tenant, turn, wait_s)
        finally:
            if sub is not None:
                self.bus.unsubscribe(sub)
        return StopResult(turn, await self.store.get_session(tenant, session_id))

    async def _await_end(
        self, sub: Subscription | None, tenant: str, turn: domain.Turn, wait_s: float
    ) -> domain.Turn:
        """The turn once it ended, or as it is after `wait_s`. The bus says when; the store
        is asked too every so often, since a cluster bus may lose a message (or be down)."""
        ended = {e.value for e in domain.TERMINAL_EVENT.values()}

        def ends(items: list[Any]) -> bool:
            return any(
                isinstance(item, list)
                and any(e.turn_id == turn.id and e.type in ended for e in item)
                for item in items
            )

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while True:
                    if sub is None:
                        await asyncio.sleep(_STORE_POLL_S)
                    else:
                        items = await sub.get_all(_STORE_POLL_S)
                        if ends(items):
                            break
                        if items and not sub.lagged:
                            continue
                        sub.lagged = False  # lagged or quiet: the store says how it stands
                    current = await self.store.get_turn(tenant, turn.session_id, turn.id)
                    if current.status.terminal:
                        return current
        return await self.store.get_turn(tenant, turn.session_id, turn.id)

    async def get_turn(self, tenant: str, session_id: str, turn_id: str) -> domain.Turn:
        return await self.store.get_turn(
            tenant, ids.check_session(session_id), ids.check("turn", turn_id)
        )

    async def list_turns(
        self, tenant: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        return await self.store.list_turns(tenant, ids.check_session(session_id), limit, cursor)

    async def list_messages(
        self, tenant: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        return await self.store.list_messages(tenant, ids.check_session(session_id), limit, cursor)

    async def events_after(
        self, tenant: str, session_id: str, after: int, limit: int
    ) -> list[domain.Event]:
        await self.get_session(tenant, session_id)
        return await self.store.events_after(session_id, after, limit)

    # --- interrupts ----------------------------------------------------------------------------

    async def get_interrupt(self, tenant: str, interrupt_id: str) -> domain.Interrupt:
        return await self.interrupts.get(tenant, ids.check("int", interrupt_id))

    async def list_interrupts(
        self,
        tenant: str,
        session_id: str,
        status: domain.InterruptStatus | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        return await self.interrupts.list(
            tenant, ids.check_session(session_id), status, limit, cursor
        )

    async def list_tenant_interrupts(
        self,
        tenant: str,
        status: domain.InterruptStatus | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        """The tenant's interrupts across its sessions, soonest expiry first (the inbox)."""
        return await inbox.tenant_interrupts(self.store, tenant, status, limit, cursor)

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
        answered, resumed = await self.interrupts.respond(
            tenant, interrupt_id, response, resolved_by
        )
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
