"""API keys, roles and who is asking (DESIGN §8).

A key is `tth_<prefix>_<secret>`: the prefix (public, for lookup and display) and 256 random
bits. Only a SHA-256 of the whole key is stored; a fast hash is right for a random secret of
that size. Verification looks the key up by prefix and compares digests in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from tether import domain, errors, ids
from tether.store import Page, Store
from tether.store.schema import api_keys

KEY_PREFIX = "tth_"
_CACHE_S = 2.0  # how long a verified key is trusted without the store: a revoke's latency
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at resolution
_CHUNK = 500  # key ids per query when re-checking many


class Role(enum.IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3


@dataclass(slots=True, frozen=True)
class Principal:
    tenant_id: str
    role: Role
    key_id: str | None = None
    key_prefix: str | None = None

    def require(self, role: Role) -> None:
        if self.role < role:
            raise errors.Forbidden(
                f"this key's role ({self.role.name.lower()}) cannot do this; "
                f"{role.name.lower()} is needed"
            )


@dataclass(slots=True)
class KeyInfo:
    id: str
    tenant_id: str
    role: Role
    name: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "role": self.role.name.lower(),
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "last_used_at": self.last_used_at.isoformat().replace("+00:00", "Z")
            if self.last_used_at
            else None,
            "revoked_at": self.revoked_at.isoformat().replace("+00:00", "Z")
            if self.revoked_at
            else None,
        }


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        row.id,
        row.tenant_id,
        Role[row.role.upper()],
        row.name,
        row.prefix,
        row.created_at,
        row.last_used_at,
        row.revoked_at,
    )


class Keys:
    def __init__(self, store: Store, on_revoke: Callable[[], None] | None = None):
        self.store = store
        self.on_revoke = on_revoke  # told after a revoke through this object
        self.seen_any = False  # a key was made or verified here: keys exist
        self._cache: dict[str, tuple[float, Principal]] = {}  # digest -> (until, principal)
        self._touched: dict[str, datetime] = {}

    async def create(
        self, tenant_id: str, role: Role, name: str | None = None
    ) -> tuple[KeyInfo, str]:
        """A new key; the secret is in the answer and nowhere else, ever."""
        if not tenant_id or len(tenant_id) > 64:
            raise errors.InvalidRequest("tenant must be 1 to 64 characters")
        prefix = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        info = KeyInfo(ids.new("key"), tenant_id, role, name, prefix, domain.utcnow(), None, None)
        await self.store.runner.run(
            lambda conn: conn.execute(
                insert(api_keys).values(
                    id=info.id,
                    tenant_id=tenant_id,
                    role=role.name.lower(),
                    name=name,
                    prefix=prefix,
                    key_hash=_digest(key),
                    created_at=info.created_at,
                )
            ),
            write=True,
        )
        self.seen_any = True
        return info, key

    async def list(self, tenant_id: str | None = None) -> Page:
        query = select(api_keys).order_by(api_keys.c.id)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        rows = await self.store.runner.run(lambda conn: conn.execute(query).all(), write=False)
        return Page([_info(r) for r in rows], None)

    async def revoke(self, key_id: str, tenant_id: str | None = None) -> KeyInfo:
        def tx(conn: Connection) -> Any:
            query = update(api_keys).where(api_keys.c.id == key_id)
            if tenant_id is not None:
                query = query.where(api_keys.c.tenant_id == tenant_id)
            return conn.execute(
                query.values(
                    revoked_at=func.coalesce(api_keys.c.revoked_at, domain.utcnow())
                ).returning(*api_keys.c)
            ).first()

        row = await self.store.runner.run(tx, write=True)
        if row is None:
            raise errors.NotFound(f"key {key_id} not found")
        self.forget({key_id})
        if self.on_revoke:
            self.on_revoke()
        return _info(row)

    def forget(self, key_ids: set[str]) -> None:
        """Trust these keys no more without asking the store (revoked, maybe elsewhere)."""
        self._cache = {d: v for d, v in self._cache.items() if v[1].key_id not in key_ids}

    async def any_active(self) -> bool:
        row = await self.store.runner.run(
            lambda conn: conn.execute(
                select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
            ).first(),
            write=False,
        )
        return row is not None

    async def any_ever(self) -> bool:
        """Whether a key was ever created, revoked or not."""
        row = await self.store.runner.run(
            lambda conn: conn.execute(select(api_keys.c.id).limit(1)).first(), write=False
        )
        return row is not None

    async def active_among(self, key_ids: Iterable[str]) -> set[str]:
        """Those of `key_ids` that exist and are not revoked: straight from the store."""
        wanted = sorted(key_ids)
        chunks = [wanted[i : i + _CHUNK] for i in range(0, len(wanted), _CHUNK)]

        def read(conn: Connection) -> set[str]:
            active: set[str] = set()
            for chunk in chunks:
                query = select(api_keys.c.id).where(
                    api_keys.c.id.in_(chunk), api_keys.c.revoked_at.is_(None)
                )
                active.update(conn.execute(query).scalars())
            return active

        return await self.store.runner.run(read, write=False)

    async def verify(self, key: str) -> Principal:
        """The principal of a bearer key, or Unauthorized (never saying why)."""
        digest = _digest(key)
        cached = self._cache.get(digest)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        parts = key.split("_", 2)  # the secret may itself contain "_"
        if len(parts) != 3 or f"{parts[0]}_" != KEY_PREFIX:
            raise errors.Unauthorized()
        rows = await self.store.runner.run(
            lambda conn: conn.execute(select(api_keys).where(api_keys.c.prefix == parts[1])).all(),
            write=False,
        )
        match = next((r for r in rows if hmac.compare_digest(r.key_hash, digest)), None)
        if match is None or match.revoked_at is not None:
            raise errors.Unauthorized()
        principal = Principal(match.tenant_id, Role[match.role.upper()], match.id, match.prefix)
        self.seen_any = True
        self._cache[digest] = (time.monotonic() + _CACHE_S, principal)
        await self._touch(match.id)
        return principal

    async def _touch(self, key_id: str) -> None:
        now = domain.utcnow()
        last = self._touched.get(key_id)
        if last and now - last < _TOUCH_EVERY:
            return
        self._touched[key_id] = now
        await self.store.runner.run(
            lambda conn: conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now)
            ),
            write=True,
        )
