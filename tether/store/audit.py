"""The audit log: append-only records of mutations."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, insert, select

from tether import domain, ids, views
from tether.store.base import Database, Page, paged
from tether.store.schema import audit_log

_INSERT = insert(audit_log)  # built once: one per mutation, a third of a turn's writes


class AuditLog:
    def __init__(self, db: Database):
        self.db = db

    async def record(
        self,
        tenant_id: str,
        action: str,
        target: str | None,
        *,
        key_id: str | None,
        key_prefix: str | None,
        request_id: str | None,
        details: dict[str, Any] | None = None,
        urgent: bool = False,
    ) -> None:
        values = {
            "id": ids.new("aud"),
            "tenant_id": tenant_id,
            "key_id": key_id,
            "key_prefix": key_prefix,
            "action": action,
            "target": target,
            "request_id": request_id,
            "details": details,
            "created_at": domain.utcnow(),
        }
        await self.db.write(lambda conn: conn.execute(_INSERT, values), urgent=urgent)

    async def page(self, tenant_id: str, limit: int, cursor: str | None) -> Page:
        """The tenant's records, newest first, as their public JSON."""
        query = select(audit_log).where(audit_log.c.tenant_id == tenant_id)
        query = paged(query, audit_log.c.id, cursor, limit, newest_first=True)
        found = await self.db.read(lambda conn: conn.execute(query).all())
        return Page.of(found, limit, _public, lambda r: r["id"])


def _public(row: Row[Any]) -> dict[str, Any]:
    return {name: views.plain(value) for name, value in row._mapping.items()}
