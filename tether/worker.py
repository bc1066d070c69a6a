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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from tether import domain, errors, ids, metrics, sealing
from tether.bus import Bus, Delta
from tether.config import Settings
from tether.domain import EventType, TurnStatus
from tether.runtime import loop, providers
from tether.runtime.tools import ToolRegistry
from tether.store import Claim, Finish, Leases, Store, Unstartable
from tether.store.idempotency import IdempotencyKeys
from tether.store.interrupts import InterruptStore

log = logging.getLogger("tether.worker")
IDEMPOTENCY_KEY_TTL = timedelta(hours=24)
CLAIM_BATCH = 16  # turns claimed per store round trip; small, so claiming interleaves


@dataclass(eq=False)
class _Execution:
    """One claimed turn being run: the loop's TurnIO, fenced by the claim token."""

    worker: Worker
    claim: Claim
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    progress: loop.Progress = field(default_factory=loop.Progress)
    stop_requested: bool = False
    lease_lost: bool = False
    entered: bool = False  # the task is inside _execute, where cancellation is handled
    on_expire: str = "deny"

    def request_stop(self) -> None:
        """Stop at once: cancel the loop wherever it is (model stream, tools)."""
        if self.stop_requested:
            return
        self.stop_requested = True
        # A task cancelled before its first step never runs its body: leave it to see the
        # flag when it enters instead.
        if self.entered and self.task and not self.task.done():
            self.task.cancel("stop requested")

    @property
    def turn(self) -> domain.Turn:
        return self.claim.turn

    def _run_time(self) -> float:
        return self.turn.run_time_s + (time.monotonic() - self.started)

    def delta(self, message_id: str, offset: int, text: str) -> None:
        self.worker.bus.publish_delta(
            Delta(self.turn.session_id, self.turn.id, message_id, offset, text)
        )

    async def model_step(self, message: domain.Message, usage: domain.Usage) -> None:
        await self.worker.leases.checkpoint(
            self.turn,
            self.claim.token,
            new_messages=[message],
            step_done=True,
            usage=usage,
            run_time_s=self._run_time(),
        )
        self.progress.reset()

    async def tools_started(self, calls: Sequence[domain.ToolCall]) -> None:
        await self.worker.leases.checkpoint(
            self.turn,
            self.claim.token,
            usage=self.progress.usage,
            run_time_s=self._run_time(),
            started=calls,
            tool_events=[
                (
                    EventType.TOOL_STARTED,
                    {"tool_call_id": c.id, "name": c.name, "arguments": c.arguments},
                )
                for c in calls
            ],
        )

    async def tool_results(
        self, results: Sequence[domain.Message], outcomes: Sequence[str]
    ) -> None:
        await self.worker.leases.checkpoint(
            self.turn,
            self.claim.token,
            new_messages=results,
            tool_events=[
                (
                    EventType.TOOL_COMPLETED,
                    {"tool_call_id": r.tool_call_id, "name": r.name, "outcome": outcome},
                )
                for r, outcome in zip(results, outcomes, strict=True)
            ],
            step_done=True,
            usage=self.progress.usage,
            run_time_s=self._run_time(),
        )
        self.progress.reset()

    async def pause(
        self,
        results: Sequence[domain.Message],
        outcomes: Sequence[str],
        requests: Sequence[domain.InterruptRequest],
    ) -> None:
        await self.worker.interrupts.pause(
            self.turn,
            self.claim.token,
            usage=self.progress.usage,
            run_time_s=self._run_time(),
            results=results,
            outcomes=outcomes,
            requests=requests,
            on_expire=self.on_expire,
        )
        self.progress.reset()

    async def complete(self, message: domain.Message, usage: domain.Usage) -> None:
        await self.finish(Finish(TurnStatus.COMPLETED), [message], usage, step_done=True)

    async def end_stopped(self, reason: str | None) -> None:
        """End the turn `cancelled`, recording what the step in flight got done: partial text
        kept and marked interrupted, finished tool calls kept, running ones `interrupted`;
        calls never started get `not_run` results from the store. `reason` None means the
        requested stop's own reason (and its mode: a rollback removes the turn's messages)."""
        progress = self.progress
        kept: list[domain.Message] = []
        outcomes: list[tuple[EventType, dict[str, object]]] = []
        if progress.message_id and (progress.text or progress.tool_calls):
            kept.append(loop.partial_message(self.turn, progress, domain.MessageStatus.INTERRUPTED))
        for run in progress.tools:
            if run.result is not None:
                kept.append(run.result)
            elif run.outcome == "running":
                run.outcome = "interrupted"
                kept.append(
                    loop.tool_result(
                        self.turn, run.call, "Tool call interrupted: the turn was stopped."
                    )
                )
            else:
                continue  # not started: the store closes it as not_run
            outcomes.append(
                (
                    EventType.TOOL_COMPLETED,
                    {"tool_call_id": run.call.id, "name": run.call.name, "outcome": run.outcome},
                )
            )
        await self.finish(
            Finish(TurnStatus.CANCELLED, reason=reason),
            kept,
            progress.usage,
            tool_events=outcomes,
        )

    async def finish(
        self,
        finish: Finish,
        new_messages: Sequence[domain.Message] = (),
        usage: domain.Usage | None = None,
        *,
        step_done: bool = False,
        tool_events: Sequence[tuple[EventType, dict[str, object]]] = (),
    ) -> None:
        await self.worker.leases.checkpoint(
            self.turn,
            self.claim.token,
            new_messages=new_messages,
            tool_events=tool_events,
            step_done=step_done,
            usage=usage or self.progress.usage,
            run_time_s=self._run_time(),
            finish=finish,
        )
        metrics.TURNS_FINISHED.labels(status=finish.status.value).inc()


class Worker:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        tools: ToolRegistry,
        settings: Settings,
        *,
        concurrency: int | None = None,
    ):
        self.store = store
        self.leases = Leases(store)
        self.interrupts = InterruptStore(store)
        self.bus = bus
        self.tools = tools
        self.settings = settings
        self.sealer = sealing.Sealer(settings)
        self.concurrency = settings.workers if concurrency is None else concurrency
        self.id = f"{socket.gethostname()}:{os.getpid()}:{ids.new_ulid()[-8:]}"
        self._running: dict[str, _Execution] = {}  # by claim token
        self._by_turn: dict[str, _Execution] = {}
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
        self.bus.notify_work()  # wakes the claim loop, which sees it is draining and returns
        await self._claiming  # not cancelled: claims in flight are started, not orphaned
        running = [e.task for e in self._running.values() if e.task]
        if running and grace_s > 0:
            log.info("waiting up to %.0f s for %d running turns", grace_s, len(running))
            await asyncio.wait(running, timeout=grace_s)
        self._stopping.set()
        self.bus.on_stop(None)
        self.bus.notify_work()
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

    @property
    def busy(self) -> int:
        return len(self._running)

    # --- claiming ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._draining:
            free = self.concurrency - len(self._running)
            claimed = failed = 0
            if free > 0:
                try:
                    claims, unstartable = await self.leases.claim(
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
            await self.bus.wait_for_work(self.settings.poll_interval_s)

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
            status = await self.leases.claim_failed(turn, self.settings.max_attempts)
        except Exception:
            log.exception("turn %s could not be started, nor its failure counted", turn.turn_id)
            return
        if status is TurnStatus.FAILED:
            log.error("turn %s could never be started, failed: %r", turn.turn_id, turn.error)
        elif status is TurnStatus.QUEUED:
            log.warning("turn %s could not be started: %r", turn.turn_id, turn.error)

    def _start(self, claim: Claim) -> None:
        execution = _Execution(self, claim)
        self._running[claim.token] = execution
        self._by_turn[claim.turn.id] = execution
        execution.task = asyncio.create_task(self._execute(execution), name=claim.turn.id)
        # a done callback, not a finally: it runs even for a task cancelled before it started
        execution.task.add_done_callback(lambda _: self._forget(execution))
        metrics.TURNS_STARTED.inc()

    def _forget(self, execution: _Execution) -> None:
        self._running.pop(execution.claim.token, None)
        self._by_turn.pop(execution.turn.id, None)
        self.bus.notify_work()  # a slot is free, and the session's next turn may run

    def _on_stop(self, turn_id: str) -> None:
        execution = self._by_turn.get(turn_id)
        if execution is not None:
            execution.request_stop()

    async def _agent(self, agent_id: str) -> tuple[domain.Agent, loop.Agent]:
        cached = self._agents.get(agent_id)
        if cached and cached[0].updated_at == await self.store.agent_version(agent_id):
            return cached
        record = await self.store.agent_by_id(agent_id)
        if cached:
            del self._agents[agent_id]
            await cached[1].model.aclose()
        # refuses (a turn failure, nothing sent) what the operator's settings no longer allow
        model = providers.model_for(record.spec.model, self.settings, self.sealer, record.tenant_id)
        runnable = loop.Agent(record.spec, model, self.tools)
        self._agents[agent_id] = (record, runnable)
        return record, runnable

    async def _execute(self, execution: _Execution) -> None:
        turn = execution.turn
        execution.entered = True
        try:
            try:
                if execution.stop_requested:
                    raise errors.StopRequested("stopped before it started")
                record, agent = await self._agent(execution.claim.agent_id)
                execution.on_expire = record.spec.on_expire
                transcript = await self.store.transcript(turn.session_id)
                # a turn at step 0 has made no tool call yet: nothing to resume
                resume = await self.interrupts.resume_state(turn.id) if turn.step else None
                budget = max(0.0, record.spec.turn_timeout_s - turn.run_time_s)
                async with asyncio.timeout(budget):
                    await loop.run_turn(
                        execution, turn, transcript, agent, execution.progress, resume
                    )
            except asyncio.CancelledError:
                if not execution.stop_requested or self._stopping.is_set():
                    raise
                # our own stop, not a shutdown: finish the turn instead of dying with it
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                await execution.end_stopped(None)
            except errors.StopRequested:  # a write found the stop before the wake-up did
                await execution.end_stopped(None)
            except TimeoutError:
                await execution.end_stopped("turn_timeout")
        except errors.LeaseLost:
            log.info("turn %s: lease lost, abandoning", turn.id)
        except errors.StopRequested:
            # the stop landed between our timeout and our write: the stop's terms win
            with contextlib.suppress(errors.LeaseLost):
                await execution.end_stopped(None)
        except errors.TurnFailure as exc:
            await self._fail(execution, exc.reason, exc.message, exc.code)
        except asyncio.CancelledError:
            if self._stopping.is_set() and not execution.lease_lost:
                await self._hand_back(execution)
            raise
        except Exception as exc:
            log.exception("turn %s crashed", turn.id)
            await self._fail(execution, "internal_error", f"{type(exc).__name__}: {exc}")

    async def _fail(
        self, execution: _Execution, reason: str, message: str, code: str | None = None
    ) -> None:
        error = domain.TurnError(code or reason, message)
        with contextlib.suppress(errors.LeaseLost, errors.StopRequested):
            await execution.finish(Finish(TurnStatus.FAILED, reason=reason, error=error))

    async def _hand_back(self, execution: _Execution) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(self.leases.release(execution.turn, execution.claim.token))

    # --- leases --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            held = dict(self._running)
            if not held:
                continue
            try:
                states = await self.leases.heartbeat(held, self.settings.lease_ttl_s)
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
                    execution.request_stop()  # the backstop for a lost wake-up


class Reaper:
    """Returns expired leases (DESIGN §2). Any node may run one; recovery is conditional on the
    lease still being expired, so concurrent reapers are harmless."""

    def __init__(self, store: Store, bus: Bus, settings: Settings):
        self.store = store
        self.leases = Leases(store)
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
        recovered = await InterruptStore(self.store).expire(now)
        await IdempotencyKeys(self.store).expire(now - IDEMPOTENCY_KEY_TTL)
        for session_id, turn_id in await self.leases.expired_leases(now):
            outcome = await self.leases.recover_lease(
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
