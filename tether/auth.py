"""API keys, roles and who is asking (DESIGN §8).

A key is `tth_<prefix>_<secret>`: the prefix (public, for lookup and display) and 256 random
bits. Only a SHA-256 of the whole key is stored; a fast hash is right for a random secret of
that size. Verification looks the key up by prefix and compares digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from tether import domain, errors, ids
from tether.domain import Role as Role  # here too: who may do what is auth's question
from tether.store import Page, Store

KEY_PREFIX = "tth_"
_CACHE_S = 2.0  # how long a verified key is trusted without the store: a revoke's latency
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at resolution


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


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keys:
    def __init__(self, store: Store, on_revoke: Callable[[], None] | None = None):
        self.store = store
        self.on_revoke = on_revoke  # told after a revoke through this object
        self.seen_any = False  # a key was made or verified here: keys exist
        self._cache: dict[str, tuple[float, Principal]] = {}  # digest -> (until, principal)
        self._touched: dict[str, datetime] = {}

    async def create(
        self, tenant_id: str, role: Role, name: str | None = None
    ) -> tuple[domain.ApiKey, str]:
        """A new key; the secret is in the answer and nowhere else, ever."""
        if not tenant_id or len(tenant_id) > 64:
            raise errors.InvalidRequest("tenant must be 1 to 64 characters")
        prefix = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        info = domain.ApiKey(ids.new("key"), tenant_id, role, name, prefix, domain.utcnow())
        await self.store.keys.add(info, _digest(key))
        self.seen_any = True
        return info, key

    async def list(self, tenant_id: str | None = None) -> Page:
        return Page(await self.store.keys.all(tenant_id), None)

    async def revoke(self, key_id: str, tenant_id: str | None = None) -> domain.ApiKey:
        revoked = await self.store.keys.revoke(key_id, tenant_id)
        self.forget({key_id})
        if self.on_revoke:
            self.on_revoke()
        return revoked

    def forget(self, key_ids: set[str]) -> None:
        """Trust these keys no more without asking the store (revoked, maybe elsewhere)."""
        self._cache = {d: v for d, v in self._cache.items() if v[1].key_id not in key_ids}

    async def any_active(self) -> bool:
        return await self.store.keys.any_active()

    async def any_ever(self) -> bool:
        """Whether a key was ever created, revoked or not."""
        return await self.store.keys.any_ever()

    async def active_among(self, key_ids: Iterable[str]) -> set[str]:
        """Those of `key_ids` that exist and are not revoked: straight from the store."""
        return await self.store.keys.active_among(key_ids)

    async def verify(self, key: str) -> Principal:
        """The principal of a bearer key, or Unauthorized (never saying why)."""
        digest = _digest(key)
        cached = self._cache.get(digest)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        parts = key.split("_", 2)  # the secret may itself contain "_"
        if len(parts) != 3 or f"{parts[0]}_" != KEY_PREFIX:
            raise errors.Unauthorized()
        found = await self.store.keys.by_prefix(parts[1])
        match = next((k for k, hashed in found if hmac.compare_digest(hashed, digest)), None)
        if match is None or match.revoked_at is not None:
            raise errors.Unauthorized()
        principal = Principal(match.tenant_id, match.role, match.id, match.prefix)
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
        await self.store.keys.touch(key_id, now)
