"""The webhook outbox as dispatchers work it (DESIGN §9): deliveries claimed under a lease like
turns, in order per (endpoint, session), then delivered, backed off, given up or handed back;
each a move of `machines.DeliveryMove`, fenced by the claim's token.

Order: a delivery is claimed only when it is the first unfinished one (pending or sending) of
its endpoint and session, and none of them is in flight. So two are never in flight for one
session and endpoint, and a later one never goes before an earlier one is delivered or has
finally failed.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, String, bindparam, delete, func, insert, select

from tether import domain, machines
from tether.machines import DeliveryMove, EndpointMove
from tether.store import guards
from tether.store.base import Database
from tether.store.schema import (
    UTCDateTime,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
)
from tether.store.webhooks import delivery, drop_pending
from tether.webhooks import records
from tether.webhooks.records import DeliveryStatus, EndpointStatus

_UNFINISHED = {DeliveryStatus.PENDING, DeliveryStatus.SENDING}
_FINISHED = {DeliveryStatus.DELIVERED, DeliveryStatus.FAILED}
_earlier = webhook_deliveries.alias("earlier")
# the first unfinished delivery of the row's endpoint and session
_HEAD = (
    select(func.min(_earlier.c.seq))
    .where(
        _earlier.c.endpoint_id == webhook_deliveries.c.endpoint_id,
        _earlier.c.session_id == webhook_deliveries.c.session_id,
        guards.status_in(_earlier.c.status, _UNFINISHED),
    )
    .correlate(webhook_deliveries)
    .scalar_subquery()
)
_in_flight = webhook_deliveries.alias("in_flight")
# one of the row's endpoint and session is being sent (a failed earlier one sent again by
# hand is the head while a later one may be in flight: it waits for it)
_SENDING = (
    select(_in_flight.c.seq)
    .where(
        _in_flight.c.endpoint_id == webhook_deliveries.c.endpoint_id,
        _in_flight.c.session_id == webhook_deliveries.c.session_id,
        guards.status_in(_in_flight.c.status, {DeliveryStatus.SENDING}),
    )
    .correlate(webhook_deliveries)
    .exists()
)
_DUE = (
    select(webhook_deliveries.c.seq)
    .where(
        guards.guard(webhook_deliveries.c.status, DeliveryMove.CLAIM),
        webhook_deliveries.c.next_attempt_at <= bindparam("now"),
        webhook_deliveries.c.seq == _HEAD,
        ~_SENDING,
    )
    .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.seq)
    .limit(bindparam("n"))
)
_HELD = (webhook_deliveries.c.seq == bindparam("dseq")) & (
    webhook_deliveries.c.claim_token == bindparam("token")
)
RELEASED = {"claim_token": None, "lease_expires_at": None}
# The statements of a delivery's round trip, built once (building costs more than running).
_CLAIM = (
    guards.update(webhook_deliveries, DeliveryMove.CLAIM)
    .where(webhook_deliveries.c.seq.in_(bindparam("seqs", expanding=True)))
    .values(claim_token=bindparam("token"), lease_expires_at=bindparam("lease", type_=UTCDateTime))
    .returning(*webhook_deliveries.c)
)
_TARGETS = select(
    webhook_endpoints.c.id,
    webhook_endpoints.c.url,
    webhook_endpoints.c.secret_sealed,
    webhook_endpoints.c.status,
).where(webhook_endpoints.c.id.in_(bindparam("ids", expanding=True)))
_ENDPOINT_STATUS = select(webhook_endpoints.c.status).where(
    webhook_endpoints.c.id == bindparam("eid")
)
_FINISH = {
    move: guards.update(webhook_deliveries, move)
    .where(_HELD)
    .values(
        **RELEASED,
        attempts=webhook_deliveries.c.attempts + bindparam("tried"),
        next_attempt_at=func.coalesce(
            bindparam("next", type_=UTCDateTime), webhook_deliveries.c.next_attempt_at
        ),
        error=bindparam("error", type_=String),
        finished_at=bindparam("finished", type_=UTCDateTime),
    )
    .returning(webhook_deliveries.c.attempts)
    for move in (DeliveryMove.DELIVER, DeliveryMove.BACK_OFF, DeliveryMove.GIVE_UP)
}
_ADD_ATTEMPT = insert(webhook_attempts)


@dataclass(slots=True)
class Outcome:
    """What to write once a claimed delivery was tried: the move, with what it sets."""

    move: machines.Move[DeliveryStatus]
    attempt: records.Attempt | None = None  # None: not sent at all
    next_attempt_at: datetime | None = None  # BACK_OFF: when to try again
    error: str | None = None  # GIVE_UP: why
    disable: str | None = None  # the endpoint is disabled for this reason (410 Gone)


class Outbox:
    def __init__(self, db: Database):
        self.db = db
        self._due = db.dialect.lock(_DUE, skip_locked=True)  # cluster: others' claims skipped
        # locked while a backoff is decided: a disable committing meanwhile would find the
        # delivery in flight (not pending, so not dropped), and the backoff would then make it
        # pending again for a disabled endpoint
        self._endpoint_status = db.dialect.lock(_ENDPOINT_STATUS, skip_locked=False)

    async def claim(self, limit: int, lease_s: float) -> list[records.Claimed]:
        """Take up to `limit` due deliveries, each the head of its (endpoint, session), under
        a lease, with their endpoints as they are now."""
        token = secrets.token_hex(16)

        def tx(conn: Connection) -> list[records.Claimed]:
            now = domain.utcnow()
            seqs = conn.execute(self._due, {"now": now, "n": limit}).scalars().all()
            if not seqs:
                return []
            lease = now + timedelta(seconds=lease_s)
            taken = conn.execute(_CLAIM, {"seqs": seqs, "token": token, "lease": lease}).all()
            wanted = sorted({row.endpoint_id for row in taken})
            targets = {
                row.id: records.Target(
                    row.url, row.secret_sealed, row.status == EndpointStatus.ENABLED
                )
                for row in conn.execute(_TARGETS, {"ids": wanted})
            }
            claimed = [
                records.Claimed(delivery(row), targets[row.endpoint_id], token) for row in taken
            ]
            return sorted(claimed, key=lambda c: c.delivery.seq)

        return await self.db.write(tx)

    async def finish(self, claimed: records.Claimed, outcome: Outcome, worker_id: str) -> bool:
        """Write what became of a claimed delivery, its attempt with it. A backoff for an
        endpoint disabled meanwhile gives up instead. False: the lease was lost (another
        process has it now, or it is gone): nothing is written."""
        d = claimed.delivery

        def tx(conn: Connection) -> bool:
            now = domain.utcnow()
            params = {"dseq": d.seq, "token": claimed.token}
            move = outcome.move
            values: dict[str, Any] = dict(RELEASED)
            enabled = conn.execute(self._endpoint_status, {"eid": d.endpoint_id}).scalar()
            if move is DeliveryMove.BACK_OFF and enabled != EndpointStatus.ENABLED:
                move = DeliveryMove.GIVE_UP
                values["error"] = "the endpoint was disabled"
            elif move is DeliveryMove.BACK_OFF:
                values["next_attempt_at"] = outcome.next_attempt_at
            if move is DeliveryMove.GIVE_UP:
                values.setdefault("error", (outcome.error or "failed")[:300])
            if move.target is not DeliveryStatus.PENDING:
                values["finished_at"] = now
            tried = 1 if outcome.attempt is not None else 0
            written = conn.execute(
                guards.update(webhook_deliveries, move)
                .where(_HELD)
                .values(attempts=webhook_deliveries.c.attempts + tried, **values)
                .returning(webhook_deliveries.c.attempts),
                params,
            ).first()
            if written is None:
                return False
            if outcome.attempt is not None:
                conn.execute(
                    insert(webhook_attempts).values(_attempt(d.seq, written[0], outcome.attempt))
                )
            if outcome.disable is not None:
                disabled = conn.execute(
                    guards.update(webhook_endpoints, EndpointMove.DISABLE)
                    .where(webhook_endpoints.c.id == d.endpoint_id)
                    .values(disabled_reason=outcome.disable, updated_at=now)
                ).rowcount
                if disabled:
                    drop_pending(conn, d.endpoint_id, "the endpoint was disabled (410 Gone)", now)
            return True

        return await self.db.write(tx)

    async def release(self, claims: Sequence[records.Claimed]) -> None:
        """Hand deliveries back unsent (shutting down): due again at once, for anyone."""
        if not claims:
            return

        def tx(conn: Connection) -> None:
            for c in claims:
                conn.execute(
                    guards.update(webhook_deliveries, DeliveryMove.RELEASE)
                    .where(_HELD)
                    .values(**RELEASED),
                    {"dseq": c.delivery.seq, "token": c.token},
                )

        await self.db.write(tx)
        self.db.outbox_written()

    async def recover(self, before: datetime) -> int:
        """Deliveries whose lease ran out before `before` (their holder died mid-send): due
        again, with the same id. A store's only server passes the end of time at start."""
        count: int = await self.db.write(
            lambda conn: (
                conn.execute(
                    guards.update(webhook_deliveries, DeliveryMove.RELEASE)
                    .where(webhook_deliveries.c.lease_expires_at < before)
                    .values(**RELEASED)
                ).rowcount
            )
        )
        if count:
            self.db.outbox_written()
        return count

    async def prune(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` deliveries that finished before `before`, with their attempts:
        the log is kept for a while, not for ever."""
        finished = (
            select(webhook_deliveries.c.seq)
            .where(
                guards.status_in(webhook_deliveries.c.status, _FINISHED),
                webhook_deliveries.c.finished_at < before,
            )
            .limit(limit)
            .scalar_subquery()
        )
        gone: int = await self.db.write(
            lambda conn: (
                conn.execute(
                    delete(webhook_deliveries).where(webhook_deliveries.c.seq.in_(finished))
                ).rowcount
            )
        )
        return gone


def _attempt(seq: int, n: int, a: records.Attempt) -> dict[str, Any]:
    return {
        "delivery_seq": seq,
        "n": n,
        "at": a.at,
        "status_code": a.status_code,
        "error": a.error[:300] if a.error else None,
        "duration_ms": a.duration_ms,
        "response": a.response,
        "worker_id": a.worker_id[:128],
    }
