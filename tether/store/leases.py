"""Leases (DESIGN §2): a worker claims a turn under a lease with a claim token, renews it, and
hands it back. Every later write of the holder is fenced by the token (`fenced`); a stale
holder's writes change nothing (`refused` says why). What happens when a lease expires is in
lifecycle.py."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from sqlalchemy import Connection, Row, Update, and_, bindparam, case, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tether import domain, errors, machines, views
from tether.domain import EventType, TurnStatus, utcnow
from tether.machines import TurnMove
from tether.store import guards, rows, steers
from tether.store.base import Database
from tether.store.schema import UTCDateTime, agents, messages, sessions, turns
from tether.store.session_write import IS_HELD, SESSION_BUSY, SessionWrite

log = logging.getLogger(__name__)
T = TypeVar("T")
# A claim failing for these is an outage or an overload (the store unreachable, SQLite locked
# by another process, no connection free in time), not the turn's fault: not counted against
# the turn. Anything else is: most likely its data, and a bug at worst, which then fails
# turns loudly rather than stalling every queue.
_TRANSIENT = (errors.Unavailable, OperationalError, PoolTimeout, TimeoutError)


@dataclass(slots=True)
class Claim:
    """A turn this worker now holds, with the fencing token every later write must carry."""

    turn: domain.Turn
    agent_id: str
    token: str
    agent_version: datetime | None = None  # when the agent was last changed, as claimed


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


RELEASED = {"claim_token": None, "lease_expires_at": None, "worker_id": None}
_CLAIMABLE = guards.guard(turns.c.status, TurnMove.CLAIM)
_QUEUE_HEAD = (
    select(func.min(turns.c.seq))
    .where(turns.c.session_id == sessions.c.id, _CLAIMABLE)
    .correlate(sessions)
    .scalar_subquery()
)
_CLAIM = (
    guards.update(turns, TurnMove.CLAIM)
    .where(turns.c.id == bindparam("tid"))
    .values(
        # attempts count lease losses (DESIGN §2), not claims: the first claim makes it 1
        attempt=case((turns.c.attempt == 0, 1), else_=turns.c.attempt),
        worker_id=bindparam("worker"),
        claim_token=bindparam("token"),
        lease_expires_at=bindparam("lease"),
        started_at=func.coalesce(turns.c.started_at, bindparam("now", type_=UTCDateTime)),
    )
    .returning(*turns.c)
)
_HAS_MESSAGES = select(messages.c.id).where(messages.c.turn_id == bindparam("tid")).limit(1)
_HELD_BY = select(turns.c.status).where(
    turns.c.id == bindparam("tid"), turns.c.claim_token == bindparam("token")
)


def fenced(move: machines.Move[TurnStatus]) -> Update:
    """`move` as a write of the turn's holder: only with its claim token (`tid`, `token`)."""
    return guards.update(turns, move).where(
        turns.c.id == bindparam("tid"), turns.c.claim_token == bindparam("token")
    )


async def holder_write(
    db: Database, turn: domain.Turn, body: Callable[[SessionWrite], T], *, urgent: bool = False
) -> T:
    """A session write of the worker holding `turn`. The session gone (purged under it) means
    the turn is gone too: LeaseLost, so the worker abandons the turn, writing nothing."""
    try:
        return await db.session_write(turn.session_id, body, urgent=urgent)
    except errors.NotFound as exc:
        raise errors.LeaseLost(f"turn {turn.id} is gone: its session was deleted") from exc


def refused(conn: Connection, turn_id: str, token: str) -> NoReturn:
    """A fenced write changed nothing: say why. A stop written meanwhile (the turn is
    `cancelling`, still ours) is StopRequested; anything else means we lost the turn."""
    held = conn.execute(_HELD_BY, {"tid": turn_id, "token": token}).scalar()
    if held == TurnStatus.CANCELLING:
        raise errors.StopRequested(f"turn {turn_id} is being stopped")
    raise errors.LeaseLost(f"turn {turn_id} is no longer held by this worker")


class _Taken(Exception):
    """The candidate was claimed (or its session got busy) meanwhile: by another worker, as
    a rule. Raised, not answered, so its transaction ends without writing anything (a lost
    claim cost a session update and a commit; with two workers, half of all attempts)."""


class Leases:
    def __init__(self, db: Database):
        self.db = db

    async def claim(
        self, worker_id: str, limit: int, lease_ttl_s: float, skip: Collection[str] = ()
    ) -> tuple[list[Claim], list[Unstartable]]:
        """Take up to `limit` runnable turns: the head of the queue of sessions with no active
        turn, but for those in `skip`; fair between tenants (each tenant's oldest first, then
        their second oldest, …), so a tenant with many queued, failing or unstartable turns
        delays nobody else's. First attempts put the turn's input into the transcript. Each
        turn is claimed in a transaction of its own, so one that cannot be claimed (answered
        among the Unstartable) costs the others nothing."""
        heads = (
            # the agent's version too: a worker's cached agent is checked without a read
            select(
                turns.c.id,
                turns.c.session_id,
                turns.c.created_at,
                sessions.c.agent_id,
                agents.c.updated_at,
                func.row_number()
                .over(partition_by=turns.c.tenant_id, order_by=turns.c.created_at)
                .label("rank"),
            )
            .join(sessions, sessions.c.id == turns.c.session_id)
            .outerjoin(agents, agents.c.id == sessions.c.agent_id)
            .where(
                sessions.c.status == domain.SessionStatus.QUEUED.value,
                _CLAIMABLE,
                turns.c.seq == _QUEUE_HEAD,
            )
        )
        if skip:
            heads = heads.where(turns.c.id.not_in(list(skip)))
        fair = heads.subquery()
        query = (
            select(fair.c.id, fair.c.session_id, fair.c.agent_id, fair.c.updated_at)
            .order_by(fair.c.rank, fair.c.created_at)
            .limit(limit)
        )
        candidates = await self.db.read(lambda conn: conn.execute(query).all())

        async def claim_one(cand: Row[Any, Any, Any, Any]) -> Claim | None:
            # each claim re-checks under the session's write: a candidate may have gone, or
            # another worker may be claiming it right now (skipped, not waited for)
            try:
                return await self.db.session_write(
                    cand.session_id,
                    functools.partial(
                        _claim_one,
                        turn_id=cand.id,
                        agent_id=cand.agent_id,
                        agent_version=cand.updated_at,
                        worker_id=worker_id,
                        lease_ttl_s=lease_ttl_s,
                    ),
                    skip_locked=True,
                )
            except (errors.NotFound, _Taken):
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
            held = conn.execute(
                select(turns.c.claim_token, turns.c.status, turns.c.stop).where(mine)
            ).all()
            return {r.claim_token: LeaseState(TurnStatus(r.status), r.stop) for r in held}

        return await self.db.write(tx, urgent=True)

    async def release(self, turn: domain.Turn, token: str) -> bool:
        """Hand a running turn back to the queue (graceful shutdown); not an attempt lost."""

        def body(sw: SessionWrite) -> bool:
            row = sw.conn.execute(
                fenced(TurnMove.REQUEUE).values(**RELEASED).returning(*turns.c),
                {"tid": turn.id, "token": token},
            ).first()
            if row is not None:
                resumed = {"turn": views.turn(rows.turn(row)), "resumed": True}
                sw.event(EventType.TURN_QUEUED, turn.id, resumed)
            return row is not None

        return await holder_write(self.db, turn, body)

    async def expired(self, now: datetime) -> list[tuple[str, str]]:
        """(session, turn) of the leases past their time."""
        found = await self.db.read(
            lambda conn: conn.execute(
                select(turns.c.session_id, turns.c.id).where(
                    IS_HELD, turns.c.lease_expires_at < now
                )
            ).all()
        )
        return [(r.session_id, r.id) for r in found]

    async def expire_all(self) -> int:
        """At the start of an exclusive store's only server, every lease left in it belongs to
        a dead process: expire them now rather than after their TTL."""
        return await self.db.write(
            lambda conn: (
                conn.execute(
                    update(turns)
                    .where(IS_HELD)
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1))
                ).rowcount
            )
        )


def _claim_one(
    sw: SessionWrite,
    turn_id: str,
    agent_id: str,
    agent_version: datetime | None,
    worker_id: str,
    lease_ttl_s: float,
) -> Claim:
    if sw.conn.execute(SESSION_BUSY, {"sid": sw.id}).first() is not None:
        raise _Taken  # nothing written: no flush, no commit
    token = secrets.token_hex(16)
    row = sw.conn.execute(
        _CLAIM,
        {
            "tid": turn_id,
            "worker": worker_id,
            "token": token,
            "lease": sw.now + timedelta(seconds=lease_ttl_s),
            "now": sw.now,
        },
    ).first()
    if row is None:
        raise _Taken
    turn = rows.turn(row)
    if turn.step == 0 and not sw.conn.execute(_HAS_MESSAGES, {"tid": turn.id}).first():
        for item in turn.input:
            # a steer's message keeps the id its 202 gave out
            sw.new_message(turn.id, item["role"], item["content"], message_id=item.get("id"))
    sw.event(EventType.TURN_STARTED, turn.id, {"attempt": turn.attempt})
    if turn.step == 0:
        # no step made yet: its transcript is its input, a boundary where steers are extra
        # input (later, one at the end of each step)
        steers.deliver(sw, turn.id, steers.pending(sw, turn.id))
    return Claim(turn, agent_id, token, agent_version)
