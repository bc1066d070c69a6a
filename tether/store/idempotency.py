"""Idempotency keys: the first answer to a creating request, kept to replay it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tether.domain import utcnow
from tether.store.base import Store
from tether.store.schema import idempotency_keys as keys


@dataclass(slots=True)
class Recorded:
    fingerprint: str
    status_code: int | None  # None: the first request is still in flight
    response: Any


class IdempotencyKeys:
    def __init__(self, store: Store):
        self.store = store

    async def begin(self, tenant_id: str, key: str, fingerprint: str) -> Recorded | None:
        """Claim `key` for this request (None), or answer what was recorded for it."""

        def claim(conn: Connection) -> None:
            conn.execute(
                insert(keys).values(
                    tenant_id=tenant_id, key=key, fingerprint=fingerprint, created_at=utcnow()
                )
            )

        try:
            await self.store.runner.run(claim, write=True)
            return None
        except IntegrityError:
            pass
        row = await self.store.runner.run(
            lambda conn: conn.execute(
                select(keys).where(keys.c.tenant_id == tenant_id, keys.c.key == key)
            ).first(),
            write=False,
        )
        if row is None:  # released between our insert and read: try once more
            return await self.begin(tenant_id, key, fingerprint)
        return Recorded(row.fingerprint, row.status_code, row.response)

    async def finish(self, tenant_id: str, key: str, status_code: int, response: Any) -> None:
        await self.store.runner.run(
            lambda conn: conn.execute(
                update(keys)
                .where(keys.c.tenant_id == tenant_id, keys.c.key == key)
                .values(status_code=status_code, response=response)
            ),
            write=True,
        )

    async def release(self, tenant_id: str, key: str) -> None:
        """The request failed in a way worth retrying: forget the key."""
        await self.store.runner.run(
            lambda conn: conn.execute(
                delete(keys).where(keys.c.tenant_id == tenant_id, keys.c.key == key)
            ),
            write=True,
        )

    async def expire(self, before: datetime) -> int:
        return await self.store.runner.run(
            lambda conn: conn.execute(delete(keys).where(keys.c.created_at < before)).rowcount,
            write=True,
        )
