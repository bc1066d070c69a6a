"""API keys as stored: a SHA-256 of the key and a public prefix to find it by, never the key
(what a key is and who it makes the caller is auth.py's)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from tether import domain, errors
from tether.store import rows
from tether.store.base import Database
from tether.store.schema import api_keys

_CHUNK = 500  # key ids per query when re-checking many
_ACTIVE = api_keys.c.revoked_at.is_(None)


class ApiKeys:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, key: domain.ApiKey, key_hash: str) -> None:
        values = {**rows.API_KEY.values(key), "key_hash": key_hash}
        await self.db.write(lambda conn: conn.execute(insert(api_keys).values(values)))

    async def all(self, tenant_id: str | None = None) -> list[domain.ApiKey]:
        """The keys (of a tenant, or all), oldest first."""
        query = select(api_keys).order_by(api_keys.c.id)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        found = await self.db.read(lambda conn: conn.execute(query).all())
        return [rows.api_key(r) for r in found]

    async def by_prefix(self, prefix: str) -> list[tuple[domain.ApiKey, str]]:
        """The keys with this public prefix, each with its hash to compare."""
        query = select(api_keys).where(api_keys.c.prefix == prefix)
        found = await self.db.read(lambda conn: conn.execute(query).all())
        return [(rows.api_key(r), r.key_hash) for r in found]

    async def revoke(self, key_id: str, tenant_id: str | None = None) -> domain.ApiKey:
        """Revoked from now (or since it was); NotFound if not there (in `tenant_id`)."""

        def tx(conn: Connection) -> Row[Any] | None:
            query = update(api_keys).where(api_keys.c.id == key_id)
            if tenant_id is not None:
                query = query.where(api_keys.c.tenant_id == tenant_id)
            revoked_at = func.coalesce(api_keys.c.revoked_at, domain.utcnow())
            return conn.execute(query.values(revoked_at=revoked_at).returning(*api_keys.c)).first()

        row = await self.db.write(tx)
        if row is None:
            raise errors.NotFound(f"key {key_id} not found")
        return rows.api_key(row)

    async def any_active(self) -> bool:
        query = select(api_keys.c.id).where(_ACTIVE).limit(1)
        return await self.db.read(lambda conn: conn.execute(query).first() is not None)

    async def any_ever(self) -> bool:
        """Whether a key was ever created, revoked or not."""
        query = select(api_keys.c.id).limit(1)
        return await self.db.read(lambda conn: conn.execute(query).first() is not None)

    async def active_among(self, key_ids: Iterable[str]) -> set[str]:
        """Those of `key_ids` that exist and are not revoked."""
        wanted = sorted(key_ids)
        chunks = [wanted[i : i + _CHUNK] for i in range(0, len(wanted), _CHUNK)]

        def read(conn: Connection) -> set[str]:
            active: set[str] = set()
            for chunk in chunks:
                query = select(api_keys.c.id).where(api_keys.c.id.in_(chunk), _ACTIVE)
                active.update(conn.execute(query).scalars())
            return active

        return await self.db.read(read)

    async def touch(self, key_id: str, now: datetime) -> None:
        """The key was used at `now`."""
        query = update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now)
        await self.db.write(lambda conn: conn.execute(query))
