"""bench/bustap.py against the real Redis bus: it must see, in Redis's order, what tether's
RedisBus publishes, and count the live tokens of a turn published after the turn ended (what
bench.cluster reports as "tokens published after turn.cancelled")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench import bustap
from tests import helpers
from tests.helpers import wait_for
from tether import domain
from tether.bus.base import Delta
from tether.bus.redis import RedisBus

pytestmark = pytest.mark.cluster

SID = "01jabcdefghjkmnpqrstvwxyz0.local"
OTHER = "01jabcdefghjkmnpqrstvwxyz1.local"


def _event(sid: str, seq: int, type: domain.EventType, turn: str) -> domain.Event:
    return domain.Event(sid, seq, type, turn, {}, datetime.now(UTC))


async def test_counts_tokens_a_stale_worker_publishes_after_the_turn_ended() -> None:
    url, prefix = helpers.BACKEND["bus_url"], helpers.BACKEND["bus_prefix"]
    worker, api = RedisBus(url, prefix), RedisBus(url, prefix)  # two processes' worth
    await worker.start()
    await api.start()
    tap = bustap.BusTap(url, prefix)
    try:
        await tap.watch(SID)
        worker.publish_events(SID, [_event(SID, 1, domain.EventType.TURN_STARTED, "turn_1")])
        worker.publish_delta(Delta(SID, "turn_1", "msg_1", 0, "one two "))
        await wait_for(lambda: len(tap.log[SID]) == 2, 5, "the first delta on the tap")
        # the stop is committed elsewhere; the worker has not noticed and keeps streaming
        api.publish_events(SID, [_event(SID, 2, domain.EventType.TURN_CANCELLED, "turn_1")])
        await wait_for(lambda: len(tap.log[SID]) == 3, 5, "turn.cancelled on the tap")
        worker.publish_delta(Delta(SID, "turn_1", "msg_1", 8, "three four five "))
        # a later turn of the same session streams normally
        worker.publish_events(SID, [_event(SID, 3, domain.EventType.TURN_STARTED, "turn_2")])
        worker.publish_delta(Delta(SID, "turn_2", "msg_2", 0, "six "))
        # a session the tap does not watch is not seen
        worker.publish_delta(Delta(OTHER, "turn_9", "msg_9", 0, "x y z "))
        await wait_for(lambda: len(tap.log[SID]) == 6, 5, "all of the session's messages")
    finally:
        await tap.close()
        await worker.close()
        await api.close()

    late = bustap.after_end(tap.log[SID])
    assert late.terminal_seen
    assert (late.messages, late.tokens) == (1, 3)
    assert late.last_after_s is not None and late.last_after_s >= 0
    assert tap.undecodable == 0
    assert OTHER not in tap.log


async def test_a_turn_whose_end_was_not_seen_is_reported() -> None:
    url, prefix = helpers.BACKEND["bus_url"], helpers.BACKEND["bus_prefix"]
    worker = RedisBus(url, prefix)
    await worker.start()
    tap = bustap.BusTap(url, prefix)
    try:
        await tap.watch(SID)
        worker.publish_delta(Delta(SID, "turn_1", "msg_1", 0, "one "))
        await wait_for(lambda: tap.log[SID], 5, "the delta on the tap")
    finally:
        await tap.close()
        await worker.close()
    late = bustap.after_end(tap.log[SID])
    assert not late.terminal_seen
    assert (late.messages, late.tokens) == (0, 0)
