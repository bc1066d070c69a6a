"""Idempotency keys: the first answer to a creating request, kept to replay it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tether.domain import utcnow
from tether.store.base import Database
from tether.store.schema import idempotency_keys as keys

_ONE_PER_KEY = "pk_idempotency_keys"


@dataclass(slots=True)
class Recorded:
    fingerprint: str
    status_code: int | None  # None: the first request is still in flight
    response: Any


class IdempotencyKeys:
    def __init__(self, db: Database):
        self.db = db

    async def begin(self, tenant_id: str, key: str, fingerprint: str) -> Recorded | None:
        """Claim `key` for this request (None), or answer what was recorded for it."""

        def claim(conn: Connection) -> None:
            conn.execute(
                insert(keys).values(
                    tenant_id=tenant_id, key=key, fingerprint=fingerprint, created_at=utcnow()
                )
            )

        try:
            await self.db.write(claim)
            return None
        except IntegrityError as exc:
            if self.db.violated(exc) != _ONE_PER_KEY:
                raise
        row = await self.db.read(
            lambda conn: conn.execute(
                select(keys).where(keys.c.tenant_id == tenant_id, keys.c.key == key)
            ).first()
        )
        if row is None:  # released between our insert and read: try once more
            return await self.begin(tenant_id, key, fingerprint)
        return Recorded(row.fingerprint, row.status_code, row.response)

    async def finish(self, tenant_id: str, key: str, status_code: int, response: Any) -> None:
        await self.db.write(
            lambda conn: conn.execute(
                update(keys)
                .where(keys.c.tenant_id == tenant_id, keys.c.key == key)
                .values(status_code=status_code, response=response)
            )
        )

    async def release(self, tenant_id: str, key: str) -> None:
        """The request failed in a way worth retrying: forget the key."""
        await self.db.write(
            lambda conn: conn.execute(
                delete(keys).where(keys.c.tenant_id == tenant_id, keys.c.key == key)
            )
        )

    async def expire(self, before: datetime) -> int:
        return await self.db.write(
            lambda conn: conn.execute(delete(keys).where(keys.c.created_at < before)).rowcount
        )
