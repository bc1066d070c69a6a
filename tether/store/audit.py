"""The audit log: append-only records of mutations."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from tether import domain, ids
from tether.store.base import Page, Store
from tether.store.schema import audit_log


class AuditLog:
    def __init__(self, store: Store):
        self.store = store

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
        await self.store.runner.run(
            lambda conn: conn.execute(insert(audit_log).values(values)), write=True
        )

    async def page(self, tenant_id: str, limit: int, cursor: str | None) -> Page:
        query = select(audit_log).where(audit_log.c.tenant_id == tenant_id)
        if cursor:
            query = query.where(audit_log.c.id < cursor)
        query = query.order_by(audit_log.c.id.desc()).limit(limit + 1)
        rows = await self.store.runner.run(lambda conn: conn.execute(query).all(), write=False)
        items = [
            {
                "id": r.id,
                "tenant_id": r.tenant_id,
                "key_id": r.key_id,
                "key_prefix": r.key_prefix,
                "action": r.action,
                "target": r.target,
                "request_id": r.request_id,
                "details": r.details,
                "created_at": r.created_at.isoformat().replace("+00:00", "Z"),
            }
            for r in rows[:limit]
        ]
        return Page(items, items[-1]["id"] if len(rows) > limit else None)
