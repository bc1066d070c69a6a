"""Delivering webhooks (DESIGN §9). A `Dispatcher` runs in every process that runs workers:
it claims due deliveries from the outbox under a lease (store/outbox.py: in order per endpoint
and session, never two in flight for one), sends each signed the Standard Webhooks way, and
writes what became of it: delivered on a 2xx, the endpoint disabled on a 410, otherwise tried
again after an exponential backoff with jitter until the delivery's retry window closes.

It wakes when deliveries are committed (the bus), when one of its sends ends (the next of
that session may go), at its own retries' times, and polls as a backstop. A process killed
mid-send leaves its deliveries `sending` until their lease runs out; then any process sends
them again, with the same `webhook-id`: at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import standardwebhooks

import tether
from tether import destinations, domain, errors, ids, sealing, storable
from tether.bus import Bus
from tether.config import Settings
from tether.machines import DeliveryMove
from tether.store import Store
from tether.store.outbox import Outcome
from tether.webhooks import records

log = logging.getLogger(__name__)
RESPONSE_PREFIX = 512  # bytes of a receiver's answer kept in the log: enough to debug with
USER_AGENT = f"Tether-Webhooks/{tether.__version__}"
PRUNE_BATCH = 1000  # finished deliveries deleted per sweep past their keeping time


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait after the `attempt`-th failed attempt: doubling from `base_s`, capped at
    `max_s`, jittered down by up to half so retries of many deliveries spread out."""
    return float(min(max_s, base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def next_attempt_at(
    attempt: int, now: datetime, deadline: datetime, settings: Settings
) -> datetime | None:
    """When to try again after the `attempt`-th failure, or None: the window is over. The
    last try is at the deadline itself."""
    if now >= deadline:
        return None
    wait = backoff_s(attempt, settings.webhook_backoff_s, settings.webhook_backoff_max_s)
    return min(now + timedelta(seconds=wait), deadline)


def signed_headers(delivery: records.Delivery, secret: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: same id every time, this attempt's
    timestamp, and the signature of both with the body."""
    signature = standardwebhooks.Webhook(secret).sign(delivery.id, at, delivery.body)
    return {
        "webhook-id": delivery.id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


class Dispatcher:
    def __init__(self, store: Store, bus: Bus, settings: Settings):
        self.store = store
        self.bus = bus
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{ids.new_ulid()[-8:]}"
        self.sealer = sealing.Sealer(settings)
        self.guard = destinations.Guard(allow_private=settings.webhook_allow_private)
        self._client: httpx.AsyncClient | None = None
        self._sending: dict[asyncio.Task[None], records.Claimed] = {}
        self._wake = asyncio.Event()
        self._timer: float | None = None  # monotonic time of our earliest retry
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        concurrency = self.settings.webhook_concurrency
        self._client = self.guard.httpx_client(
            timeout=self.settings.webhook_timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"user-agent": USER_AGENT},
        )
        self._tasks = [
            asyncio.create_task(self._loop(), name="tether-webhooks"),
            asyncio.create_task(self._listen(), name="tether-webhooks-wake"),
        ]

    async def stop(self) -> None:
        """Stop claiming; sends in flight are cancelled and their deliveries handed back, due
        at once for any process (none is lost, none waits out a lease)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        in_flight = dict(self._sending)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.outbox.release(list(in_flight.values()))
        if self._client is not None:
            await self._client.aclose()

    @property
    def sending(self) -> int:
        return len(self._sending)

    # --- claiming ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Wake the loop on the bus's signal, and at least every poll interval (backstop)."""
        while True:
            await self.bus.wait_for_webhooks(self.settings.poll_interval_s)
            self._wake.set()

    async def _loop(self) -> None:
        swept = 0.0
        while True:
            self._wake.clear()  # before claiming: a wake-up meanwhile makes the wait return
            if time.monotonic() - swept >= self.settings.reaper_interval_s:
                swept = time.monotonic()
                with _logged("webhook lease recovery failed"):
                    now = domain.utcnow()
                    await self.store.outbox.recover(now)
                    keep = timedelta(seconds=self.settings.webhook_keep_s)
                    await self.store.outbox.prune(now - keep, PRUNE_BATCH)
            free = self.settings.webhook_concurrency - len(self._sending)
            if free > 0:
                with _logged("webhook claim failed"):
                    for claimed in await self.store.outbox.claim(
                        free, self.settings.webhook_lease_s
                    ):
                        task = asyncio.create_task(self._deliver(claimed), name=claimed.delivery.id)
                        self._sending[task] = claimed
                        task.add_done_callback(self._sent)
            await self._sleep()

    async def _sleep(self) -> None:
        wait_s = None
        if self._timer is not None:
            wait_s = max(0.0, self._timer - time.monotonic())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._wake.wait()
        if self._timer is not None and self._timer <= time.monotonic():
            self._timer = None

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.pop(task, None)
        self._wake.set()  # a slot is free, and the session's next delivery may go

    def _retry_at(self, when: datetime) -> None:
        at = time.monotonic() + max(0.0, (when - domain.utcnow()).total_seconds())
        self._timer = at if self._timer is None else min(self._timer, at)

    # --- one delivery --------------------------------------------------------------------------

    async def _deliver(self, claimed: records.Claimed) -> None:
        outcome = await self._attempt(claimed)
        try:
            if not await self.store.outbox.finish(claimed, outcome, self.id):
                log.info("webhook delivery %s: lease lost meanwhile", claimed.delivery.id)
                return
        except Exception:
            # its lease runs out and it is sent again: at least once
            log.exception(
                "webhook delivery %s: its outcome could not be written", claimed.delivery.id
            )
            return
        if outcome.move is DeliveryMove.BACK_OFF and outcome.next_attempt_at is not None:
            self._retry_at(outcome.next_attempt_at)

    async def _attempt(self, claimed: records.Claimed) -> Outcome:
        d, target = claimed.delivery, claimed.target
        if not target.enabled:
            return Outcome(DeliveryMove.GIVE_UP, error="the endpoint is disabled")
        at = domain.utcnow()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        answer: str | None = None
        try:
            secret = self.sealer.open(d.tenant_id, target.secret_sealed)
            assert self._client is not None
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                async with self._client.stream(
                    "POST", target.url, content=d.body, headers=signed_headers(d, secret, at)
                ) as response:
                    status = response.status_code
                    answer = await _prefix(response)
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g} s"
        except errors.ProviderKeyUnavailable:
            error = "the signing secret cannot be opened with this server's TETHER_SECRET_KEY"
        except errors.DestinationNotAllowed as exc:
            error = exc.message
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug here must not leave the delivery to its lease forever
            log.exception("webhook delivery %s: the attempt failed", d.id)
            error = f"internal error: {type(exc).__name__}"
        duration_ms = (time.monotonic() - started) * 1000
        attempt = records.Attempt(at, status, error, duration_ms, answer, self.id)
        if status is not None and 200 <= status < 300:
            return Outcome(DeliveryMove.DELIVER, attempt)
        if status == 410:
            return Outcome(
                DeliveryMove.GIVE_UP,
                attempt,
                error="410 Gone: the endpoint was disabled",
                disable="gone",
            )
        now = domain.utcnow()
        window = timedelta(seconds=self.settings.webhook_retry_for_s)
        deadline = d.retry_until or d.created_at + window
        retry_at = next_attempt_at(d.attempts + 1, now, deadline, self.settings)
        if retry_at is None:
            why = f"HTTP {status}" if status is not None else (error or "failed")
            return Outcome(
                DeliveryMove.GIVE_UP,
                attempt,
                error=f"gave up after {d.attempts + 1} attempts: {why}",
            )
        return Outcome(DeliveryMove.BACK_OFF, attempt, next_attempt_at=retry_at)


async def _prefix(response: httpx.Response) -> str | None:
    """The start of the answer's body, as text that can be stored; the rest is not read."""
    got = bytearray()
    async for chunk in response.aiter_bytes():
        got += chunk
        if len(got) >= RESPONSE_PREFIX:
            break
    if not got:
        return None
    text = bytes(got[:RESPONSE_PREFIX]).decode("utf-8", "replace")
    return storable.printable(text, RESPONSE_PREFIX)


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """Log and swallow a failure of one round (the store down): the loop goes on."""
    try:
        yield
    except Exception:
        log.exception(what)
