"""The retry schedule of webhook deliveries (DESIGN §9): exponential, jittered, capped, and
never past the delivery's retry window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tether.config import Settings
from tether.webhooks.dispatcher import backoff_s, next_attempt_at

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@given(attempt=st.integers(1, 60), base=st.floats(0.01, 100), cap=st.floats(0.01, 10_000))
def test_the_wait_doubles_within_half_jitter_and_is_capped(
    attempt: int, base: float, cap: float
) -> None:
    ideal = min(cap, base * 2 ** (attempt - 1))
    wait = backoff_s(attempt, base, cap)
    assert ideal / 2 <= wait <= ideal


def test_retries_spread_out() -> None:
    waits = {round(backoff_s(3, 5, 3600), 6) for _ in range(50)}
    assert len(waits) > 40, "jitter: many deliveries failing together do not retry together"


@given(attempt=st.integers(1, 40), left_s=st.floats(-100, 100_000))
def test_the_last_try_is_at_the_end_of_the_window(attempt: int, left_s: float) -> None:
    settings = Settings(webhook_backoff_s=5, webhook_backoff_max_s=3600)
    deadline = NOW + timedelta(seconds=left_s)
    at = next_attempt_at(attempt, NOW, deadline, settings)
    if deadline <= NOW:
        assert at is None, "the window is over: give up"
    else:
        assert at is not None and NOW < at <= deadline
