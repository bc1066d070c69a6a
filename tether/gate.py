"""Who may come in (DESIGN §8): the one decision every surface asks, and the re-check that keeps
asking it for as long as a stream stays open.

Whether a request needs a key depends on the bind address and the keys that exist, never on
what happened at start only:
- off loopback, always (`TETHER_AUTH` cannot open it: `disabled` is refused at start, and
  ignored here);
- on loopback, `required` always, `disabled` never, and `auto` as soon as one key has ever
  existed, revoked or not, and from then on for the life of the process: revoking the last
  key never opens the server again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

from tether import errors, service
from tether.auth import Keys, Principal, Role
from tether.config import Settings

log = logging.getLogger("tether.gate")

_KEYS_RECHECK_S = 2.0  # `auto` on loopback: how often to look for a first key made elsewhere
WATCH_INTERVAL_S = 1.0  # how often open streams are re-admitted: a revoke's latency for them


class Gate:
    def __init__(self, settings: Settings, keys: Keys):
        self.settings = settings
        self.keys = keys
        self._keys_exist = False  # sticky: once seen, auth stays required
        self._recheck_at = 0.0

    async def required(self) -> bool:
        """Whether a request without a key is refused (401)."""
        if not self.settings.loopback or self.settings.auth == "required":
            return True
        if self.settings.auth == "disabled":
            return False
        if not self._keys_exist and self.keys.seen_any:
            self._keys_exist = True  # made or verified in this process: no need to ask
        if not self._keys_exist and time.monotonic() >= self._recheck_at:
            found = await self.keys.any_ever()
            self._keys_exist = self._keys_exist or found  # a slower, older answer never reopens
            self._recheck_at = time.monotonic() + _KEYS_RECHECK_S
        return self._keys_exist

    async def admit(self, key: str | None) -> Principal:
        """The caller presenting `key` (None: no key at all), or Unauthorized. Without a key
        and with auth off, the default tenant's admin."""
        if key is not None:
            return await self.keys.verify(key)
        if await self.required():
            raise errors.Unauthorized()
        return Principal(service.DEFAULT_TENANT, Role.ADMIN)


class StreamWatch:
    """Open streams (SSE answers, WebSockets) and who opened each. Every `interval_s` (and at
    once after a revoke in this process) each one is admitted again: a stream whose key was
    revoked, on this node or any other, ends; so does a keyless one once keys are required.
    One store query per interval for all of them, however many there are."""

    def __init__(self, gate: Gate, interval_s: float = WATCH_INTERVAL_S):
        self.gate = gate
        self.interval_s = interval_s
        self._open: dict[int, tuple[Principal, Callable[[], None]]] = {}
        self._numbers = itertools.count()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def add(self, who: Principal, end: Callable[[], None]) -> Callable[[], None]:
        """Watch a stream opened by `who`; `end` ends it. Answers the function to call when
        the stream ends by itself."""
        number = next(self._numbers)
        self._open[number] = (who, end)

        def forget() -> None:
            self._open.pop(number, None)

        return forget

    def kick(self) -> None:
        """Re-check now (a key was revoked in this process)."""
        self._kick.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tether-stream-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> int:
        """End the streams whose opener would no longer be admitted; answers how many."""
        streams = list(self._open.items())
        if not streams:
            return 0
        key_ids = {who.key_id for who, _ in self._open.values() if who.key_id is not None}
        active = await self.gate.keys.active_among(key_ids) if key_ids else set()
        self.gate.keys.forget(key_ids - active)  # new requests with them: 401 at once too
        keyless = any(who.key_id is None for who, _ in self._open.values())
        keyless_refused = keyless and await self.gate.required()
        ended = 0
        for number, (who, end) in streams:
            refused = keyless_refused if who.key_id is None else who.key_id not in active
            if refused and self._open.pop(number, None) is not None:
                end()
                ended += 1
        return ended

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self.check()
            except Exception as exc:  # the store is down: keep watching, say so once
                if not self._failing:
                    log.warning("cannot re-check the keys of open streams: %s", exc)
                self._failing = True
            else:
                self._failing = False
