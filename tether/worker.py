"""Workers: claim -> run -> heartbeat -> stop on cancel -> release.

The same code runs as tasks inside `tether serve` (embedded) and in `tether worker` processes
(cluster). A turn is held under a lease with a claim token; every write carries the token, so a
worker that lost its lease can no longer change anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import datetime, timedelta

from tether import domain, errors, ids, metrics, sealing
from tether.bus import Bus, Delta
from tether.config import Settings
from tether.domain import TurnStatus
from tether.runtime import loop, mcp_client, mcp_servers, providers, toolbox
from tether.runtime.tools import ToolRegistry
from tether.store import Claim, Store, Unstartable

log = logging.getLogger(__name__)
IDEMPOTENCY_KEY_TTL = timedelta(hours=24)
CLAIM_BATCH = 64  # turns claimed per round: each round reads the queue heads once (500 turns
# queued at once: 16 a round made the queue reads a third of the start; 128 delayed the first)
# A tool's progress reports are written at most this often per call (the latest one wins):
# a server reporting every millisecond must not fill the session's event log.
PROGRESS_INTERVAL_S = 0.25
PROGRESS_MESSAGE_CHARS = 1000


STOPPED = domain.TurnEnd(TurnStatus.CANCELLED)  # on the requested stop's terms


class Execution:
    """One claimed turn, run here to its end, its pause or its stop. It is the loop's TurnIO:
    every write carries the claim token."""

    def __init__(self, worker: Worker, claim: Claim):
        self.worker = worker
        self.claim = claim
        self.turn = claim.turn
        self.started = time.monotonic()
        self.progress = loop.Progress()
        self.task: asyncio.Task[None] | None = None
        self.stop_requested = False
        self.lease_lost = False
        self.entered = False  # the task is inside run(), where cancellation is handled
        self._progress: dict[str, tuple[domain.ToolCall, dict[str, object]]] = {}  # by call
        self._progress_writers: dict[str, asyncio.Task[None]] = {}

    def stop_now(self) -> None:
        """A stop was written: cancel the loop wherever it is (model stream, tools)."""
        if self.stop_requested:
            return
        self.stop_requested = True
        # A task cancelled before its first step never runs its body: leave it to see the
        # flag when it enters instead.
        if self.entered and self.task and not self.task.done():
            self.task.cancel("stop requested")

    # --- TurnIO ------------------------------------------------------------------------------

    def delta(self, message_id: str, offset: int, text: str) -> None:
        if self.stop_requested:
            return  # stopping: text produced now would only be dropped by every reader
        self.worker.bus.publish_delta(
            Delta(self.turn.session_id, self.turn.id, message_id, offset, text)
        )

    def tool_progress(
        self, call: domain.ToolCall, progress: float, total: float | None, message: str | None
    ) -> None:
        """Written by a task of its own, so the tool (and an MCP connection's reader) never
        waits for the store; the latest report of a call replaces one not yet written."""
        if message is not None:
            message = message[:PROGRESS_MESSAGE_CHARS]
        self._progress[call.id] = (call, {"progress": progress, "total": total, "message": message})
        if call.id not in self._progress_writers:
            self._progress_writers[call.id] = asyncio.create_task(
                self._write_progress(call.id), name=f"{self.turn.id}:progress"
            )

    async def _write_progress(self, call_id: str) -> None:
        try:
            while (pending := self._progress.pop(call_id, None)) is not None:
                call, data = pending
                try:
                    written = await self.worker.store.tool_runs.progress(
                        self.turn, self.claim.token, call, data
                    )
                except Exception as exc:  # best effort: a report lost is no failure
                    log.debug("turn %s: progress not written: %s", self.turn.id, exc)
                    written = False
                if not written:  # the call is over, or the turn is no longer ours
                    self._progress.pop(call_id, None)
                    return
                await asyncio.sleep(PROGRESS_INTERVAL_S)
        finally:
            self._progress_writers.pop(call_id, None)

    def _stop_progress(self) -> None:
        for task in self._progress_writers.values():
            task.cancel()
        self._progress.clear()

    async def commit(self, checkpoint: domain.Checkpoint) -> list[domain.Message]:
        run_time = self.turn.run_time_s + (time.monotonic() - self.started)
        # a stop's end goes first: a connection of its own, not a queue behind checkpoints
        urgent = self.stop_requested and checkpoint.end is not None
        steered = await self.worker.store.lifecycle.checkpoint(
            self.turn, self.claim.token, checkpoint, run_time, urgent=urgent
        )
        if checkpoint.end is not None and not steered:
            metrics.TURNS_FINISHED.labels(status=checkpoint.end.status.value).inc()
        return steered

    # --- the turn's path -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run the agent loop. A stop, a timeout or a failure ends the turn with what the step
        in flight got done; a shutdown hands the turn back; a lost lease abandons it."""
        self.entered = True
        try:
            end = await self._loop()
            self._stop_progress()
            if end is not None:
                await self._end(end)
        except errors.LeaseLost:
            log.info("turn %s: lease lost, abandoning", self.turn.id)
        except errors.Unavailable as exc:
            # an outage is not the turn's fault: its lease runs out and another attempt
            # resumes it from its last checkpoint
            log.warning(
                "turn %s: the store is unavailable (%s), left to its lease", self.turn.id, exc
            )
        except asyncio.CancelledError:
            if self.worker.stopping and not self.lease_lost:
                await self.worker.hand_back(self)
            raise
        finally:
            self._stop_progress()

    async def _loop(self) -> domain.TurnEnd | None:
        """The loop, from the turn's checkpoint; the end to write if the loop did not end or
        pause the turn itself."""
        turn = self.turn
        try:
            if self.stop_requested:
                raise errors.StopRequested("stopped before it started")
            record, agent = await self.worker.agent(self.claim.agent_id, self.claim.agent_version)
            transcript = await self.worker.store.sessions.transcript(turn.session_id)
            # a turn at step 0 has made no tool call yet: nothing to resume
            resume = await self.worker.store.tool_runs.resume_state(turn.id) if turn.step else None
            budget = max(0.0, record.spec.turn_timeout_s - turn.run_time_s)
            async with asyncio.timeout(budget):
                await loop.run_turn(self, turn, transcript, agent, self.progress, resume)
            return None
        except asyncio.CancelledError:
            if not self.stop_requested or self.worker.stopping:
                raise
            # our own stop, not a shutdown: end the turn instead of dying with it
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return STOPPED
        except errors.StopRequested:  # a write found the stop before the wake-up did
            return STOPPED
        except TimeoutError:
            return domain.TurnEnd(TurnStatus.CANCELLED, reason="turn_timeout")
        except errors.TurnFailure as exc:
            error = domain.TurnError(exc.code or exc.reason, exc.message)
            return domain.TurnEnd(TurnStatus.FAILED, exc.reason, error)
        except (errors.LeaseLost, errors.Unavailable):
            raise
        except Exception as exc:
            log.exception("turn %s crashed", turn.id)
            error = domain.TurnError("internal_error", f"{type(exc).__name__}: {exc}")
            return domain.TurnEnd(TurnStatus.FAILED, "internal_error", error)

    async def _end(self, end: domain.TurnEnd) -> None:
        try:
            await self.commit(self.progress.ended(self.turn, end))
        except errors.StopRequested:
            # a stop was written before our end (the turn is cancelling): its terms win
            await self.commit(self.progress.ended(self.turn, STOPPED))


class Worker:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        tools: ToolRegistry,
        settings: Settings,
        mcp: mcp_servers.Servers | None = None,
    ):
        self.store = store
        self.bus = bus
        self.tools = tools
        self.settings = settings
        self.sealer = sealing.Sealer(settings)
        self.mcp = mcp or mcp_servers.from_settings(settings)
        # the MCP connections of this process: reused across turns, closed on stop
        self.hub = mcp_client.McpHub(
            connect_timeout_s=settings.mcp_connect_timeout_s,
            max_connections=settings.mcp_max_connections,
            guard=self.mcp.guard,
        )
        self.id = f"{socket.gethostname()}:{os.getpid()}:{ids.new_ulid()[-8:]}"
        self._running: dict[str, Execution] = {}  # by claim token
        self._by_turn: dict[str, Execution] = {}
        self._claiming: asyncio.Task[None]
        self._heartbeat: asyncio.Task[None]
        self._agents: dict[str, tuple[domain.Agent, loop.Agent]] = {}
        self._stopping = asyncio.Event()
        self._draining = False  # stop() began: claim nothing more
        self._unstartable: dict[str, float] = {}  # turn id -> when its claim last failed

    async def start(self) -> None:
        self.bus.on_stop(self._on_stop)
        self._claiming = asyncio.create_task(self._claim_loop(), name="tether-claim")
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="tether-heartbeat")

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop claiming; give running turns `grace_s` to finish, then cancel the rest and
        hand them back for another worker."""
        self._draining = True
        self.bus.notify_work(local=True)  # wakes the claim loop: it is draining, it returns
        await self._claiming  # not cancelled: claims in flight are started, not orphaned
        running = [e.task for e in self._running.values() if e.task]
        if running and grace_s > 0:
            log.info("waiting up to %.0f s for %d running turns", grace_s, len(running))
            await asyncio.wait(running, timeout=grace_s)
        self._stopping.set()
        self.bus.on_stop(None)
        self.bus.notify_work(local=True)
        self._heartbeat.cancel()
        executions = list(self._running.values())
        for execution in executions:
            if execution.task:
                execution.task.cancel()
        await asyncio.gather(
            self._heartbeat, *(e.task for e in executions if e.task), return_exceptions=True
        )
        for _, agent in self._agents.values():
            await agent.model.aclose()
        await self.hub.aclose()

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def stopping(self) -> bool:
        """Shutting down: turns still running are handed back, not ended."""
        return self._stopping.is_set()

    # --- claiming ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._draining:
            free = self.settings.workers - len(self._running)
            claimed = failed = 0
            if free > 0:
                try:
                    claims, unstartable = await self.store.leases.claim(
                        self.id, min(free, CLAIM_BATCH), self.settings.lease_ttl_s, self._skip()
                    )
                    for claim in claims:
                        self._start(claim)
                    claimed, failed = len(claims), len(unstartable)
                    now = time.monotonic()
                    for turn in unstartable:
                        self._unstartable[turn.turn_id] = now
                    await asyncio.gather(*(self._claim_failed(t) for t in unstartable))
                except Exception:
                    log.exception("claim failed")
            if claimed or failed:
                # An inline store never suspends: yield, so the turns just claimed get to
                # stream before we claim more.
                await asyncio.sleep(0)
                if claimed < free:
                    # there may be more; a full batch means we are saturated. Turns that
                    # failed are skipped now, so this looks past them at once.
                    continue
            room = self.settings.workers - len(self._running) > 0
            await self.bus.wait_for_work(self.settings.poll_interval_s, take=room)

    def _skip(self) -> list[str]:
        """Turns whose claim failed less than a poll interval ago: the next claims look past
        them (they are tried again at the next poll), so a batch of turns that cannot start
        never hides the turns queued behind them."""
        since = time.monotonic() - self.settings.poll_interval_s
        for turn_id, failed_at in list(self._unstartable.items()):
            if failed_at < since:
                del self._unstartable[turn_id]
        return list(self._unstartable)

    async def _claim_failed(self, turn: Unstartable) -> None:
        try:
            status = await self.store.lifecycle.unstartable(turn, self.settings.max_attempts)
        except Exception:
            log.exception("turn %s could not be started, nor its failure counted", turn.turn_id)
            return
        if status is TurnStatus.FAILED:
            log.error("turn %s could never be started, failed: %r", turn.turn_id, turn.error)
        elif status is TurnStatus.QUEUED:
            log.warning("turn %s could not be started: %r", turn.turn_id, turn.error)

    def _start(self, claim: Claim) -> None:
        execution = Execution(self, claim)
        self._running[claim.token] = execution
        self._by_turn[claim.turn.id] = execution
        execution.task = asyncio.create_task(execution.run(), name=claim.turn.id)
        # a done callback, not a finally: it runs even for a task cancelled before it started
        execution.task.add_done_callback(lambda _: self._forget(execution))
        metrics.TURNS_STARTED.inc()

    def _forget(self, execution: Execution) -> None:
        self._running.pop(execution.claim.token, None)
        self._by_turn.pop(execution.turn.id, None)
        # a slot of ours is free, and the session's next turn may run: our own claim loop
        # looks (other workers hear of new turns from whoever queues them, and poll)
        self.bus.notify_work(local=True)

    def _on_stop(self, turn_id: str) -> None:
        execution = self._by_turn.get(turn_id)
        if execution is not None:
            execution.stop_now()

    async def agent(
        self, agent_id: str, version: datetime | None = None
    ) -> tuple[domain.Agent, loop.Agent]:
        """The agent, from the cache if it is current (`version`: its last change, as the
        claim read it; else read now)."""
        cached = self._agents.get(agent_id)
        if cached is not None:
            current = version if version is not None else await self.store.agents.version(agent_id)
            if cached[0].updated_at == current:
                return cached
        record = await self.store.agents.by_id(agent_id)
        if cached:
            del self._agents[agent_id]
            await cached[1].model.aclose()
        # refuses (a turn failure, nothing sent) what the operator's settings no longer allow
        model = providers.model_for(record.spec.model, self.settings, self.sealer, record.tenant_id)
        tools = toolbox.Toolbox(
            record.spec,
            self.tools,
            servers=self._mcp_servers(record),
            hub=self.hub,
            scope=record.tenant_id,
        )
        runnable = loop.Agent(record.spec, model, tools)
        self._agents[agent_id] = (record, runnable)
        return record, runnable

    def _mcp_servers(self, record: domain.Agent) -> dict[str, mcp_client.Server | Exception]:
        """The agent's MCP servers as this process can reach them now; an exception says why
        one cannot be used (its calls then get that as their error result)."""
        servers: dict[str, mcp_client.Server | Exception] = {}
        for spec in record.spec.mcp_servers:
            try:
                headers = None
                if spec.headers_sealed is not None:
                    opened = self.sealer.open(record.tenant_id, spec.headers_sealed)
                    headers = mcp_servers.unseal_headers(opened)
                servers[spec.name] = self.mcp.resolve(spec, headers)
            except errors.ProviderKeyUnavailable:
                servers[spec.name] = mcp_servers.McpConfigError(
                    "its headers cannot be opened with this server's secret key (was "
                    "TETHER_SECRET_KEY changed?); set them again with PATCH"
                )
            except (mcp_servers.McpConfigError, errors.DestinationNotAllowed) as exc:
                servers[spec.name] = exc
        return servers

    async def hand_back(self, execution: Execution) -> None:
        """Shutting down: the turn goes back to the queue for another worker."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self.store.leases.release(execution.turn, execution.claim.token))

    # --- leases --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            held = dict(self._running)
            if not held:
                continue
            try:
                states = await self.store.leases.heartbeat(held, self.settings.lease_ttl_s)
            except Exception:
                log.exception("heartbeat failed")
                continue
            for token, execution in held.items():
                state = states.get(token)
                if state is None and execution.task and not execution.task.done():
                    log.warning("turn %s: lease lost", execution.turn.id)
                    execution.lease_lost = True
                    execution.task.cancel()
                elif state is not None and state.status is TurnStatus.CANCELLING:
                    execution.stop_now()  # the backstop for a lost wake-up


class Reaper:
    """Expires what is past its time: interrupts, idempotency keys, and leases (DESIGN §2).
    Any node may run one; every recovery is conditional on what it recovers still being
    expired, so concurrent reapers are harmless."""

    def __init__(self, store: Store, bus: Bus, settings: Settings):
        self.store = store
        self.bus = bus
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tether-reaper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def reap_once(self) -> int:
        now = domain.utcnow()
        due = await self.store.interrupts.due(now)
        for session_id, interrupt_id in due:
            await self.store.lifecycle.expire(session_id, interrupt_id, now)
        recovered = len(due)
        await self.store.idempotency.expire(now - IDEMPOTENCY_KEY_TTL)
        for session_id, turn_id in await self.store.leases.expired(now):
            outcome = await self.store.lifecycle.recover_lease(
                session_id, turn_id, self.settings.max_attempts, now
            )
            if outcome is not None:
                recovered += 1
                log.warning("turn %s: lease expired -> %s", turn_id, outcome.value)
        if recovered:
            self.bus.notify_work()
        return recovered

    async def _loop(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper failed")
            await asyncio.sleep(self.settings.reaper_interval_s)
