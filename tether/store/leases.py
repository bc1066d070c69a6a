"""The worker's side of the store: claim a turn under a lease, renew it, checkpoint each step
fenced by the claim token, hand it back, and recover expired leases (DESIGN §2, §5)."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    String,
    and_,
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tether import domain, errors, storable, views
from tether.domain import EventType, TurnStatus, utcnow
from tether.store import records, transitions
from tether.store.base import Store
from tether.store.schema import Json, UTCDateTime, messages, sessions, turns
from tether.store.session_write import IS_HELD, SESSION_BUSY, SessionWrite, status_in

T = TypeVar("T")


@dataclass(slots=True)
class Claim:
    """A turn this worker now holds, with the fencing token every later write must carry."""

    turn: domain.Turn
    agent_id: str
    token: str


@dataclass(slots=True)
class Unstartable:
    """A turn whose claim failed for a reason other than contention or an outage: most
    likely data it cannot start with (an input stored by an older version or a bug)."""

    turn_id: str
    session_id: str
    error: Exception


@dataclass(slots=True)
class LeaseState:
    status: TurnStatus
    stop: dict[str, Any] | None


@dataclass(slots=True)
class Finish:
    """How a turn ends: written with the turn's last messages in one transaction."""

    status: TurnStatus
    reason: str | None = None
    error: domain.TurnError | None = None


_CLAIM_TURN = (
    update(turns)
    .where(turns.c.id == bindparam("tid"), turns.c.status == TurnStatus.QUEUED.value)
    .values(
        status=TurnStatus.RUNNING.value,
        # attempts count lease losses (DESIGN §2), not claims: the first claim makes it 1
        attempt=case((turns.c.attempt == 0, 1), else_=turns.c.attempt),
        worker_id=bindparam("worker"),
        claim_token=bindparam("token"),
        lease_expires_at=bindparam("lease"),
        started_at=func.coalesce(turns.c.started_at, bindparam("now", type_=UTCDateTime)),
    )
    .returning(*turns.c)
)
_STEP = (
    update(turns)
    .where(
        turns.c.id == bindparam("tid"),
        turns.c.claim_token == bindparam("token"),
        turns.c.status == TurnStatus.RUNNING.value,
    )
    .values(
        step=turns.c.step + bindparam("step_inc"),
        usage=bindparam("usage", type_=Json),
        run_time_s=bindparam("run_time"),
    )
)
_FINISH = {
    target: update(turns)
    .where(
        turns.c.id == bindparam("tid"),
        turns.c.claim_token == bindparam("token"),
        status_in(s.value for s in domain.sources_of(target)),
    )
    .values(
        status=target.value,
        step=turns.c.step + bindparam("step_inc"),
        usage=bindparam("usage", type_=Json),
        run_time_s=bindparam("run_time"),
        reason=func.coalesce(bindparam("reason", type_=String), turns.c.reason),
        error=bindparam("error", type_=Json),
        finished_at=bindparam("now", type_=UTCDateTime),
        claim_token=None,
        lease_expires_at=None,
    )
    .returning(*turns.c)
    for target in domain.TERMINAL
}
_HELD_BY = select(turns.c.status).where(
    turns.c.id == bindparam("tid"), turns.c.claim_token == bindparam("token")
)


def held_running(turn_id: str, token: str) -> ColumnElement[bool]:
    """The guard of a fenced write: the turn is running under this claim token."""
    return and_(
        turns.c.id == turn_id,
        turns.c.claim_token == token,
        turns.c.status == TurnStatus.RUNNING.value,
    )


def refused(conn: Connection, turn_id: str, token: str) -> NoReturn:
    """A fenced write changed nothing: say why. A stop written meanwhile (the turn is
    `cancelling`, still ours) is StopRequested; anything else means we lost the turn."""
    held = conn.execute(_HELD_BY, {"tid": turn_id, "token": token}).scalar()
    if held == TurnStatus.CANCELLING.value:
        raise errors.StopRequested(f"turn {turn_id} is being stopped")
    raise errors.LeaseLost(f"turn {turn_id} is no longer held by this worker")


async def fenced_write(store: Store, turn: domain.Turn, body: Callable[[SessionWrite], T]) -> T:
    """A session write of the worker holding `turn`. The session gone (purged under it) means
    the turn is gone too: LeaseLost, so the worker abandons the turn, writing nothing."""
    try:
        return await store.session_write(turn.session_id, body)
    except errors.NotFound as exc:
        raise errors.LeaseLost(f"turn {turn.id} is gone: its session was deleted") from exc


log = logging.getLogger("tether.worker")

INVALID_TURN = "invalid_turn"  # reason and error code of a turn that could never be started
# A claim failing for these is an outage or an overload (the store unreachable, SQLite locked
# by another process, no connection free in time), not the turn's fault: not counted against
# the turn. Anything else is: most likely its data, and a bug at worst, which then fails
# turns loudly rather than stalling every queue.
_TRANSIENT = (errors.Unavailable, OperationalError, PoolTimeout, TimeoutError)


class Leases:
    def __init__(self, store: Store):
        self.store = store

    async def claim(
        self, worker_id: str, limit: int, lease_ttl_s: float, skip: Collection[str] = ()
    ) -> tuple[list[Claim], list[Unstartable]]:
        """Take up to `limit` runnable turns: the head of the queue of sessions with no active
        turn, oldest first, but for those in `skip`. First attempts put the turn's input into
        the transcript. Each turn is claimed in a transaction of its own, so one that cannot
        be claimed (answered among the Unstartable) costs the others nothing."""
        head = (
            select(func.min(turns.c.seq))
            .where(turns.c.session_id == sessions.c.id, turns.c.status == TurnStatus.QUEUED.value)
            .correlate(sessions)
            .scalar_subquery()
        )
        query = (
            select(turns.c.id, turns.c.session_id, sessions.c.agent_id)
            .join(sessions, sessions.c.id == turns.c.session_id)
            .where(
                sessions.c.status == domain.SessionStatus.QUEUED.value,
                turns.c.status == TurnStatus.QUEUED.value,
                turns.c.seq == head,
            )
            .order_by(turns.c.created_at)
            .limit(limit)
        )
        if skip:
            query = query.where(turns.c.id.not_in(list(skip)))
        candidates = await self.store.read(lambda conn: conn.execute(query).all())

        async def claim_one(cand: Row[Any, Any, Any]) -> Claim | None:
            # each claim re-checks under the session's write: a candidate may have gone, or
            # another worker may be claiming it right now (skipped, not waited for)
            try:
                return await self.store.session_write(
                    cand.session_id,
                    functools.partial(
                        self._claim_one,
                        turn_id=cand.id,
                        agent_id=cand.agent_id,
                        worker_id=worker_id,
                        lease_ttl_s=lease_ttl_s,
                    ),
                    skip_locked=True,
                )
            except errors.NotFound:
                return None

        # Concurrently (a network store would otherwise claim one round trip at a time); every
        # claim made is handed over, even when another failed: a claim nobody runs would wait
        # out its lease.
        made = await asyncio.gather(*(claim_one(c) for c in candidates), return_exceptions=True)
        claims: list[Claim] = []
        unstartable: list[Unstartable] = []
        for cand, claim in zip(candidates, made, strict=True):
            if isinstance(claim, Exception) and not isinstance(claim, _TRANSIENT):
                unstartable.append(Unstartable(cand.id, cand.session_id, claim))
            elif isinstance(claim, BaseException):
                log.warning("claim of %s failed: %s", cand.id, claim)
            elif claim is not None:
                claims.append(claim)
        return claims, unstartable

    async def claim_failed(self, failed: Unstartable, max_attempts: int) -> TurnStatus | None:
        """Count a failed start of a queued turn as one of its attempts (DESIGN §2); at
        `max_attempts` the turn ends `failed`, reason and code `invalid_turn`. A transaction of
        its own. Answers the turn's status now (None: it left the queue meanwhile)."""

        def body(sw: SessionWrite) -> TurnStatus | None:
            queued = and_(turns.c.id == failed.turn_id, turns.c.status == TurnStatus.QUEUED.value)
            attempt = sw.conn.execute(select(turns.c.attempt).where(queued)).scalar()
            if attempt is None:
                return None
            attempt = max(attempt, 1)  # the first claim makes it 1, failed or not
            if attempt < max_attempts:
                sw.conn.execute(update(turns).where(queued).values(attempt=attempt + 1))
                return TurnStatus.QUEUED
            why = storable.printable(f"{type(failed.error).__name__}: {failed.error}", 300)
            row = sw.conn.execute(
                update(turns)
                .where(queued)
                .values(
                    status=TurnStatus.FAILED.value,
                    attempt=attempt,
                    reason=INVALID_TURN,
                    error={
                        "code": INVALID_TURN,
                        "message": f"the turn could not be started (attempts: {attempt}): {why}",
                    },
                    finished_at=sw.now,
                )
                .returning(*turns.c)
            ).one()
            transitions.ended(sw, row)
            return TurnStatus.FAILED

        try:
            return await self.store.session_write(failed.session_id, body)
        except errors.NotFound:
            return None  # the session was deleted meanwhile

    @staticmethod
    def _claim_one(
        sw: SessionWrite, turn_id: str, agent_id: str, worker_id: str, lease_ttl_s: float
    ) -> Claim | None:
        if sw.conn.execute(SESSION_BUSY, {"sid": sw.id}).first() is not None:
            return None
        token = secrets.token_hex(16)
        row = sw.conn.execute(
            _CLAIM_TURN,
            {
                "tid": turn_id,
                "worker": worker_id,
                "token": token,
                "lease": sw.now + timedelta(seconds=lease_ttl_s),
                "now": sw.now,
            },
        ).first()
        if row is None:
            return None
        turn = records.turn(row)
        if (
            turn.step == 0
            and not sw.conn.execute(
                select(messages.c.id).where(messages.c.turn_id == turn.id).limit(1)
            ).first()
        ):
            for item in turn.input:
                sw.message(turn.id, item["role"], item["content"])
        sw.event(EventType.TURN_STARTED, turn.id, {"attempt": turn.attempt})
        return Claim(turn, agent_id, token)

    async def heartbeat(self, tokens: Iterable[str], lease_ttl_s: float) -> dict[str, LeaseState]:
        """Renew the leases still held; answer each held turn's status and requested stop.
        A token missing from the answer has lost its lease."""
        held_tokens = list(tokens)
        if not held_tokens:
            return {}

        def tx(conn: Connection) -> dict[str, LeaseState]:
            mine = and_(turns.c.claim_token.in_(held_tokens), IS_HELD)
            conn.execute(
                update(turns)
                .where(mine)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_ttl_s))
            )
            rows = conn.execute(
                select(turns.c.claim_token, turns.c.status, turns.c.stop).where(mine)
            ).all()
            return {r.claim_token: LeaseState(TurnStatus(r.status), r.stop) for r in rows}

        return await self.store.write(tx, urgent=True)

    async def checkpoint(
        self,
        turn: domain.Turn,
        token: str,
        *,
        usage: domain.Usage,
        run_time_s: float,
        new_messages: Sequence[domain.Message] = (),
        tool_events: Sequence[tuple[EventType, dict[str, Any]]] = (),
        started: Sequence[domain.ToolCall] = (),
        step_done: bool = False,
        finish: Finish | None = None,
    ) -> None:
        """Commit one step of a turn held under `token`: its messages, usage, step counter and
        the events describing them, and, if `finish`, the turn's end. All or nothing. Raises
        StopRequested if a stop was written meanwhile, LeaseLost if the token no longer holds
        the turn."""
        params: dict[str, Any] = {
            "tid": turn.id,
            "token": token,
            "step_inc": 1 if step_done else 0,
            "usage": usage.as_dict(),
            "run_time": run_time_s,
        }

        def body(sw: SessionWrite) -> None:
            if finish is None:
                written = sw.conn.execute(_STEP, params).rowcount == 1
                row = None
            else:
                error = finish.error
                row = sw.conn.execute(
                    _FINISH[finish.status],
                    {
                        **params,
                        "reason": finish.reason,
                        "error": {"code": error.code, "message": error.message} if error else None,
                        "now": sw.now,
                    },
                ).first()
                written = row is not None
            if not written:
                refused(sw.conn, turn.id, token)
            for m in new_messages:
                sw.message(
                    m.turn_id,
                    m.role,
                    m.content,
                    tool_calls=m.tool_calls,
                    tool_call_id=m.tool_call_id,
                    name=m.name,
                    status=m.status,
                    message_id=m.id,
                    provider_data=m.provider_data,
                )
            for type_, data in tool_events:
                sw.event(type_, turn.id, data)
            # the ledger: `started` before a call runs, `finished` with its result
            transitions.mark_runs(
                sw.conn, turn.id, [(c.id, c.name) for c in started], "started", sw.now
            )
            finished = [
                (m.tool_call_id or "", m.name or "") for m in new_messages if m.role == "tool"
            ]
            transitions.mark_runs(sw.conn, turn.id, finished, "finished", sw.now)
            if row is not None:
                if row.reason is None and row.status == TurnStatus.CANCELLED.value:
                    # a requested stop ends with its own reason
                    stop_reason = (row.stop or {}).get("reason", "client_cancelled")
                    row = sw.conn.execute(
                        update(turns)
                        .where(turns.c.id == turn.id)
                        .values(reason=stop_reason)
                        .returning(*turns.c)
                    ).one()
                transitions.ended(sw, row)

        await fenced_write(self.store, turn, body)

    async def release(self, turn: domain.Turn, token: str) -> bool:
        """Hand a running turn back to the queue (graceful shutdown); not an attempt lost."""

        def body(sw: SessionWrite) -> bool:
            row = sw.conn.execute(
                update(turns)
                .where(held_running(turn.id, token))
                .values(
                    status=TurnStatus.QUEUED.value,
                    claim_token=None,
                    lease_expires_at=None,
                    worker_id=None,
                )
                .returning(*turns.c)
            ).first()
            if row is not None:
                sw.event(
                    EventType.TURN_QUEUED,
                    turn.id,
                    {"turn": views.turn(records.turn(row)), "resumed": True},
                )
            return row is not None

        return await fenced_write(self.store, turn, body)

    async def expired_leases(self, now: datetime) -> list[tuple[str, str]]:
        rows = await self.store.read(
            lambda conn: conn.execute(
                select(turns.c.session_id, turns.c.id).where(
                    IS_HELD, turns.c.lease_expires_at < now
                )
            ).all()
        )
        return [(r.session_id, r.id) for r in rows]

    async def recover_lease(
        self, session_id: str, turn_id: str, max_attempts: int, now: datetime
    ) -> TurnStatus | None:
        """Return an expired lease (DESIGN §2): running -> queued (resume) or failed
        `worker_lost` after max attempts; cancelling -> cancelled."""

        def body(sw: SessionWrite) -> TurnStatus | None:
            row = sw.conn.execute(
                select(turns).where(
                    turns.c.id == turn_id,
                    IS_HELD,
                    turns.c.lease_expires_at < now,
                )
            ).first()
            if row is None:
                return None  # renewed or ended meanwhile
            current = records.turn(row)
            extra: dict[str, Any] = {}
            if current.status is TurnStatus.RUNNING and current.attempt < max_attempts:
                target = TurnStatus.QUEUED
                extra = {"attempt": current.attempt + 1}
            elif current.status is TurnStatus.RUNNING:
                target = TurnStatus.FAILED
                extra = {
                    "reason": "worker_lost",
                    "error": {
                        "code": "worker_lost",
                        "message": f"worker lost {current.attempt} times",
                    },
                    "finished_at": sw.now,
                }
            else:
                target = TurnStatus.CANCELLED
                stop = row.stop or {}
                extra = {"reason": stop.get("reason", "client_cancelled"), "finished_at": sw.now}
            # Conditional on the lease as we read it: a heartbeat that renewed it since (it
            # does not take the session lock) keeps the turn.
            updated = sw.conn.execute(
                update(turns)
                .where(
                    turns.c.id == turn_id,
                    turns.c.status == current.status.value,
                    turns.c.claim_token == row.claim_token,
                    turns.c.lease_expires_at < now,
                )
                .values(
                    status=target.value,
                    claim_token=None,
                    lease_expires_at=None,
                    worker_id=None,
                    **extra,
                )
                .returning(*turns.c)
            ).first()
            if updated is None:
                return None
            if target is TurnStatus.QUEUED:
                resumed = views.turn(records.turn(updated))
                sw.event(EventType.TURN_QUEUED, turn_id, {"turn": resumed, "resumed": True})
            else:
                transitions.ended(sw, updated)
            return target

        try:
            return await self.store.session_write(session_id, body)
        except errors.NotFound:
            return None  # the session was deleted meanwhile

    async def expire_all_leases(self) -> int:
        """Embedded mode at start: this process holds the data dir, so every lease left in the
        store belongs to a dead process. Expire them now rather than after their TTL."""
        return await self.store.write(
            lambda conn: (
                conn.execute(
                    update(turns)
                    .where(IS_HELD)
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1))
                ).rowcount
            )
        )
