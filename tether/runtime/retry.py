"""Retries of a model call, the same for every provider (DESIGN §10).

A call that fails transiently (429, 5xx, Anthropic's `overloaded_error`, a dropped connection)
before it produced anything is made again after a backoff, up to `model.max_retries` times.
Once the first token has been passed on, a failure is final: the partial text is already the
turn's and a second answer could not be stitched to it.

The providers' SDKs retry too, but they do not know about stops: theirs are turned off
(`max_retries=0`) and this wrapper, whose backoff is a plain `asyncio.sleep`, is cancelled at
once by a stop like anything else the turn awaits.

Usage reports that arrive before the first token (Anthropic reports the input tokens first)
are held back until the call is known to stand, so a failed attempt adds nothing.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Mapping

from tether import errors
from tether.runtime import model as m

log = logging.getLogger(__name__)

BASE_DELAY_S = 0.5
MAX_DELAY_S = 8.0
# A provider asking for a longer wait than this is not waited for inside a turn: the call fails.
MAX_RETRY_AFTER_S = 60.0


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """How long the provider asked us to wait: `retry-after-ms` (OpenAI, Anthropic), else
    `retry-after` in seconds or as an HTTP date."""
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(attempt: int, asked_s: float | None) -> float:
    """The wait before retry number `attempt + 1`: what the provider asked for, else
    exponential with jitter (so many turns failing together do not retry together)."""
    if asked_s is not None:
        return asked_s
    return random.uniform(0.5, 1.0) * min(MAX_DELAY_S, BASE_DELAY_S * 2.0**attempt)


class RetryingModel:
    """A Model whose calls are retried before their first token."""

    def __init__(
        self,
        inner: m.Model,
        max_retries: int,
        backoff: Callable[[int, float | None], float] = backoff_s,
    ):
        self.inner = inner
        self.max_retries = max_retries
        self.backoff = backoff

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stream(self, request: m.ModelRequest) -> AsyncGenerator[m.ModelEvent, None]:
        attempt = 0
        while True:
            failure: errors.ModelError | None = None
            started = False
            held: list[m.UsageReport] = []
            events = self.inner.stream(request)
            try:
                async for event in events:
                    if not started and isinstance(event, m.UsageReport):
                        held.append(event)
                        continue
                    if not started:
                        started = True
                        for report in held:
                            yield report
                    yield event
                if not started:
                    for report in held:
                        yield report
                return
            except errors.ModelError as exc:
                if started or not exc.retryable or attempt >= self.max_retries:
                    raise
                failure = exc
            finally:
                await events.aclose()
            delay = self.backoff(attempt, failure.retry_after_s)
            if delay > MAX_RETRY_AFTER_S:
                raise failure
            attempt += 1
            log.info(
                "model call failed (%s), retry %d of %d in %.2f s",
                failure.code,
                attempt,
                self.max_retries,
                delay,
            )
            await asyncio.sleep(delay)  # a stop cancels this at once
