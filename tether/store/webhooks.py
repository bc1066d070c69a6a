"""Webhooks in the store (DESIGN §9): tenants' endpoints, the outbox rows written in the
transaction of the state change they report (`enqueue`), and the deliveries' log. How the
dispatchers claim and send deliveries is outbox.py's."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update

from tether import domain, errors, ids, views
from tether.machines import DeliveryMove, EndpointMove
from tether.store import guards, rows
from tether.store.base import Database, Page, paged
from tether.store.schema import webhook_attempts, webhook_deliveries, webhook_endpoints
from tether.store.session_write import SESSION_BY_ID, SessionWrite
from tether.webhooks import records
from tether.webhooks.records import DeliveryStatus, EndpointStatus, WebhookEvent

_ENABLED = {EndpointStatus.ENABLED}
_LIVE = {EndpointStatus.ENABLED, EndpointStatus.DISABLED}  # not deleted: the API shows them
_ENQUEUE = insert(webhook_deliveries)
# Read in the session write of the (rare) changes a webhook reports, never on a step.
_SUBSCRIBERS = select(webhook_endpoints.c.id, webhook_endpoints.c.events).where(
    webhook_endpoints.c.tenant_id == bindparam("tenant"),
    guards.status_in(webhook_endpoints.c.status, _ENABLED),
)


# --- the outbox, inside a session write --------------------------------------------------------


def enqueue(sw: SessionWrite, event: WebhookEvent, data: dict[str, Any]) -> None:
    """A delivery of `event` to each enabled endpoint of the session's tenant subscribed to
    it, in this transaction: committed with the change it reports, or not at all."""
    subscribers = sw.conn.execute(_SUBSCRIBERS, {"tenant": sw.tenant_id}).all()
    wanted = [row.id for row in subscribers if records.subscribed(row.events, event)]
    if not wanted:
        return
    body = {"type": event.value, "timestamp": views.iso(sw.now), "data": data}
    text = views.compact_json(body)  # ASCII: any store keeps it as it is
    sw.conn.execute(
        _ENQUEUE,
        [
            {
                "id": ids.new("dlv"),
                "tenant_id": sw.tenant_id,
                "endpoint_id": endpoint_id,
                "session_id": sw.id,
                "type": event.value,
                "body": text,
                "status": DeliveryStatus.PENDING.value,
                "attempts": 0,
                "next_attempt_at": sw.now,
                "created_at": sw.now,
            }
            for endpoint_id in wanted
        ],
    )
    sw.outbox += len(wanted)


def enqueue_closed(sw: SessionWrite) -> None:
    """`session.closed`, with the session as the close leaves it: once the write is flushed."""

    def then() -> None:
        row = sw.conn.execute(SESSION_BY_ID, {"sid": sw.id}).one()
        session = views.session(rows.session(row))
        enqueue(sw, WebhookEvent.SESSION_CLOSED, {"session": session})

    sw.after_flush.append(then)


# --- rows <-> records ---------------------------------------------------------------------------


def endpoint(row: Row[Any]) -> records.Endpoint:
    return records.Endpoint(
        id=row.id,
        tenant_id=row.tenant_id,
        url=row.url,
        events=list(row.events),
        description=row.description,
        status=EndpointStatus(row.status),
        disabled_reason=row.disabled_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def attempt(row: Row[Any]) -> records.Attempt:
    return records.Attempt(
        at=row.at,
        status_code=row.status_code,
        error=row.error,
        duration_ms=row.duration_ms,
        response=row.response,
        worker_id=row.worker_id,
    )


def delivery(row: Row[Any], log: Sequence[records.Attempt] = ()) -> records.Delivery:
    return records.Delivery(
        seq=row.seq,
        id=row.id,
        tenant_id=row.tenant_id,
        endpoint_id=row.endpoint_id,
        session_id=row.session_id,
        type=row.type,
        body=row.body,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        retry_until=row.retry_until,
        error=row.error,
        created_at=row.created_at,
        finished_at=row.finished_at,
        log=list(log),
    )


def drop_pending(conn: Connection, endpoint_id: str, why: str, now: datetime) -> None:
    """The endpoint will not be sent to: its pending deliveries fail, saying why. (One in
    flight finishes; its holder then finds the endpoint disabled.)"""
    conn.execute(
        guards.update(webhook_deliveries, DeliveryMove.DROP)
        .where(webhook_deliveries.c.endpoint_id == endpoint_id)
        .values(error=why, finished_at=now)
    )


def _live(tenant_id: str, endpoint_id: str) -> Any:
    return (
        (webhook_endpoints.c.id == endpoint_id)
        & (webhook_endpoints.c.tenant_id == tenant_id)
        & guards.status_in(webhook_endpoints.c.status, _LIVE)
    )


class Webhooks:
    """Endpoints as tenants manage them, and the log of their deliveries."""

    def __init__(self, db: Database):
        self.db = db

    async def create(self, endpoint: records.Endpoint, secret_sealed: str) -> None:
        values = {
            "id": endpoint.id,
            "tenant_id": endpoint.tenant_id,
            "url": endpoint.url,
            "events": endpoint.events,
            "description": endpoint.description,
            "status": endpoint.status.value,
            "secret_sealed": secret_sealed,
            "created_at": endpoint.created_at,
            "updated_at": endpoint.updated_at,
        }
        await self.db.write(lambda conn: conn.execute(insert(webhook_endpoints).values(values)))

    async def get(self, tenant_id: str, endpoint_id: str) -> records.Endpoint:
        query = select(webhook_endpoints).where(_live(tenant_id, endpoint_id))
        row = await self.db.read(lambda conn: conn.execute(query).first())
        if row is None:
            raise errors.NotFound(f"webhook {endpoint_id} not found")
        return endpoint(row)

    async def page(self, tenant_id: str, limit: int, cursor: str | None) -> Page:
        """The tenant's endpoints, newest first."""
        query = select(webhook_endpoints).where(
            webhook_endpoints.c.tenant_id == tenant_id,
            guards.status_in(webhook_endpoints.c.status, _LIVE),
        )
        query = paged(query, webhook_endpoints.c.id, cursor, limit, newest_first=True)
        found = await self.db.read(lambda conn: conn.execute(query).all())
        return Page.of(found, limit, endpoint, lambda e: e.id)

    async def update(
        self,
        tenant_id: str,
        endpoint_id: str,
        changes: dict[str, Any],
        status: EndpointStatus | None = None,
        *,
        secret_sealed: str | None = None,
    ) -> records.Endpoint:
        """Change fields (url, events, description); `status` enables or disables it (its
        pending deliveries then fail); `secret_sealed` replaces its signing secret."""

        def tx(conn: Connection) -> Row[Any]:
            now = domain.utcnow()
            where = _live(tenant_id, endpoint_id)
            if conn.execute(select(webhook_endpoints.c.id).where(where)).first() is None:
                raise errors.NotFound(f"webhook {endpoint_id} not found")
            values = {**changes, "updated_at": now}
            if secret_sealed is not None:
                values["secret_sealed"] = secret_sealed
            conn.execute(update(webhook_endpoints).where(where).values(**values))
            if status is EndpointStatus.DISABLED:
                conn.execute(
                    guards.update(webhook_endpoints, EndpointMove.DISABLE)
                    .where(webhook_endpoints.c.id == endpoint_id)
                    .values(disabled_reason="disabled_by_request")
                )
                drop_pending(conn, endpoint_id, "the endpoint was disabled", now)
            elif status is EndpointStatus.ENABLED:
                conn.execute(
                    guards.update(webhook_endpoints, EndpointMove.ENABLE)
                    .where(webhook_endpoints.c.id == endpoint_id)
                    .values(disabled_reason=None)
                )
            return conn.execute(
                select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
            ).one()

        return endpoint(await self.db.write(tx))

    async def delete(self, tenant_id: str, endpoint_id: str) -> None:
        """Gone from the API; its pending deliveries fail. The row stays: a session write may
        be adding a delivery for it right now, and the dispatcher drops any such one."""

        def tx(conn: Connection) -> int:
            now = domain.utcnow()
            deleted = conn.execute(
                guards.update(webhook_endpoints, EndpointMove.DELETE)
                .where(webhook_endpoints.c.id == endpoint_id)
                .where(webhook_endpoints.c.tenant_id == tenant_id)
                .values(updated_at=now)
            ).rowcount
            if deleted:
                drop_pending(conn, endpoint_id, "the endpoint was deleted", now)
            return deleted

        if not await self.db.write(tx):
            raise errors.NotFound(f"webhook {endpoint_id} not found")

    async def deliveries(
        self,
        tenant_id: str,
        endpoint_id: str,
        status: DeliveryStatus | None,
        limit: int,
        cursor: int | None,
    ) -> Page:
        """An endpoint's deliveries, newest first, each with its attempts."""
        await self.get(tenant_id, endpoint_id)
        query = select(webhook_deliveries).where(
            webhook_deliveries.c.endpoint_id == endpoint_id,
            webhook_deliveries.c.tenant_id == tenant_id,
        )
        if status is not None:
            query = query.where(guards.status_in(webhook_deliveries.c.status, {status}))
        query = paged(query, webhook_deliveries.c.seq, cursor, limit, newest_first=True)

        def read(conn: Connection) -> tuple[Sequence[Row[Any]], dict[int, list[records.Attempt]]]:
            found = conn.execute(query).all()
            seqs = [row.seq for row in found[:limit]]
            logs: dict[int, list[records.Attempt]] = {seq: [] for seq in seqs}
            if seqs:
                tried = conn.execute(
                    select(webhook_attempts)
                    .where(webhook_attempts.c.delivery_seq.in_(seqs))
                    .order_by(webhook_attempts.c.delivery_seq, webhook_attempts.c.n)
                )
                for row in tried:
                    logs[row.delivery_seq].append(attempt(row))
            return found, logs

        found, logs = await self.db.read(read)
        return Page.of(found, limit, lambda r: delivery(r, logs[r.seq]), lambda d: str(d.seq))

    async def retry(
        self, tenant_id: str, endpoint_id: str, delivery_id: str, retry_until: datetime
    ) -> records.Delivery:
        """Send a failed delivery again (same id: receivers dedupe), retried until
        `retry_until`. Conflict unless it failed and its endpoint is enabled."""

        def tx(conn: Connection) -> Row[Any]:
            now = domain.utcnow()
            found = conn.execute(
                select(webhook_endpoints.c.status).where(_live(tenant_id, endpoint_id))
            ).first()
            if found is None:
                raise errors.NotFound(f"webhook {endpoint_id} not found")
            mine = (webhook_deliveries.c.id == delivery_id) & (
                webhook_deliveries.c.endpoint_id == endpoint_id
            )
            row = conn.execute(
                guards.update(webhook_deliveries, DeliveryMove.RETRY)
                .where(mine)
                .values(next_attempt_at=now, retry_until=retry_until, error=None, finished_at=None)
                .returning(*webhook_deliveries.c)
            ).first()
            current = conn.execute(select(webhook_deliveries.c.status).where(mine)).scalar()
            if current is None:
                raise errors.NotFound(f"delivery {delivery_id} not found")
            if row is None:
                raise errors.DeliveryNotFailed(
                    f"delivery {delivery_id} is {current}: only a failed one is sent again"
                )
            if found.status != EndpointStatus.ENABLED:
                raise errors.EndpointDisabled(
                    f"webhook {endpoint_id} is disabled: enable it first (PATCH status)"
                )
            return row

        row = await self.db.write(tx)
        self.db.outbox_written()
        return delivery(row)
