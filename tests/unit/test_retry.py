"""Retries of model calls: only before the first token, as many as allowed, honouring what
the provider asked, cancellable during a backoff."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator

import pytest

from tests.helpers import wait_for
from tether import errors
from tether.runtime import model as m
from tether.runtime import retry


class Flaky:
    """Fails `failures` times (each failure after `before` events), then answers."""

    def __init__(self, failures: int, error: errors.ModelError, before: int = 0):
        self.failures = failures
        self.error = error
        self.before = before
        self.calls = 0
        self.closed = 0

    async def aclose(self) -> None:
        pass

    async def stream(self, request: m.ModelRequest) -> AsyncIterator[m.ModelEvent]:
        self.calls += 1
        try:
            yield m.UsageReport(10, 0)
            if self.calls <= self.failures:
                for i in range(self.before):
                    yield m.TextDelta(f"t{i}")
                raise self.error
            yield m.TextDelta("answer")
            yield m.UsageReport(0, 1)
            yield m.Finished("stop")
        finally:
            self.closed += 1


def _transient() -> errors.ModelError:
    return errors.ProviderUnavailable("503", retryable=True, retry_after_s=0.0)


async def _collect(model: retry.RetryingModel) -> list[m.ModelEvent]:
    return [e async for e in model.stream(m.ModelRequest("", []))]


async def test_retried_before_first_token_and_failed_attempts_add_no_usage() -> None:
    inner = Flaky(2, _transient())
    events = await _collect(retry.RetryingModel(inner, max_retries=2))
    assert inner.calls == 3
    assert inner.closed == 3
    assert [type(e).__name__ for e in events] == [
        "UsageReport",
        "TextDelta",
        "UsageReport",
        "Finished",
    ]
    assert sum(e.input_tokens for e in events if isinstance(e, m.UsageReport)) == 10


async def test_gives_up_after_max_retries() -> None:
    inner = Flaky(5, _transient())
    with pytest.raises(errors.ProviderUnavailable):
        await _collect(retry.RetryingModel(inner, max_retries=2))
    assert inner.calls == 3


async def test_no_retry_after_the_first_token() -> None:
    inner = Flaky(1, _transient(), before=1)
    seen: list[m.ModelEvent] = []

    async def consume() -> None:
        async for event in retry.RetryingModel(inner, max_retries=2).stream(m.ModelRequest("", [])):
            seen.append(event)

    with pytest.raises(errors.ProviderUnavailable):
        await consume()
    assert inner.calls == 1
    assert any(isinstance(e, m.TextDelta) for e in seen)


async def test_permanent_failures_are_not_retried() -> None:
    inner = Flaky(1, errors.ProviderRejected("400"))
    with pytest.raises(errors.ProviderRejected):
        await _collect(retry.RetryingModel(inner, max_retries=2))
    assert inner.calls == 1


async def test_waits_what_the_provider_asked_unless_too_long() -> None:
    waits: list[float] = []

    def backoff(attempt: int, asked: float | None) -> float:
        waits.append(retry.backoff_s(attempt, asked))
        return waits[-1]

    asked = errors.ProviderRejected("429", retryable=True, retry_after_s=0.05)
    await _collect(retry.RetryingModel(Flaky(1, asked), 2, backoff))
    assert waits == [0.05]
    too_long = errors.ProviderRejected("429", retryable=True, retry_after_s=3600)
    inner = Flaky(1, too_long)
    with pytest.raises(errors.ProviderRejected):
        await _collect(retry.RetryingModel(inner, 2))
    assert inner.calls == 1


async def test_a_stop_during_the_backoff_is_immediate() -> None:
    inner = Flaky(1, errors.ProviderUnavailable("503", retryable=True, retry_after_s=30))
    task = asyncio.create_task(_collect(retry.RetryingModel(inner, 2)))
    await wait_for(lambda: inner.closed >= 1, 5, "first attempt failed")
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5
    assert inner.calls == 1


def test_retry_after_headers() -> None:
    assert retry.retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry.retry_after_s({"retry-after": "3"}) == 3.0
    assert retry.retry_after_s({"retry-after-ms": "x", "retry-after": "2"}) == 2.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry.retry_after_s({"retry-after": later}) or 0) <= 30
    assert retry.retry_after_s({"retry-after": "soon"}) is None
    assert retry.retry_after_s({}) is None


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    for attempt in range(8):
        wait = retry.backoff_s(attempt, None)
        ceiling = min(retry.MAX_DELAY_S, retry.BASE_DELAY_S * 2**attempt)
        assert ceiling / 2 <= wait <= ceiling
