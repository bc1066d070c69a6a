"""The Redis bus between two processes' worth of buses (two RedisBus instances, one Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from tests import helpers
from tests.helpers import wait_for
from tether import domain, errors
from tether.bus.base import Committed, Delta, Item
from tether.bus.redis import RedisBus

pytestmark = pytest.mark.cluster

SID = "01jabcdefghjkmnpqrstvwxyz0.local"


@pytest.fixture
async def buses() -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    url, prefix = helpers.BACKEND["bus_url"], helpers.BACKEND["bus_prefix"]
    a, b = RedisBus(url, prefix), RedisBus(url, prefix)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


def _event(seq: int, type: domain.EventType, turn: str = "turn_1") -> domain.Event:
    return domain.Event(SID, seq, type, turn, {"n": seq}, datetime.now(UTC))


async def test_events_and_deltas_cross_in_order(buses: tuple[RedisBus, RedisBus]) -> None:
    writer, reader = buses
    sub = await reader.subscribe(SID)
    writer.publish_events(SID, [_event(1, domain.EventType.TURN_STARTED)])
    offset = 0
    for piece in ["Hel", "lo ", "world"]:
        writer.publish_delta(Delta(SID, "turn_1", "msg_1", offset, piece))
        offset += len(piece)
    writer.publish_events(SID, [_event(2, domain.EventType.MESSAGE_COMPLETED)])
    items: list[Item] = []
    async with asyncio.timeout(5):
        while not (items and isinstance(items[-1], Committed) and items[-1].events[0].seq == 2):
            items += (await sub.get_all()).items
    assert isinstance(items[0], Committed) and items[0].events[0].seq == 1
    text = "".join(d.text for d in items if isinstance(d, Delta))
    assert text == "Hello world"
    last = items[-1]
    assert isinstance(last, Committed)
    assert last.events[0].type is domain.EventType.MESSAGE_COMPLETED
    reader.unsubscribe(sub)


async def test_partial_text_is_shared_and_cleared(buses: tuple[RedisBus, RedisBus]) -> None:
    writer, reader = buses
    writer.publish_delta(Delta(SID, "turn_1", "msg_1", 0, "Hello"))
    writer.publish_delta(Delta(SID, "turn_1", "msg_1", 5, ", there"))
    partial = await wait_for(reader_partial(reader, "Hello, there"), 5, "partial text")
    assert (partial.message_id, partial.offset) == ("msg_1", 0)
    writer.publish_delta(Delta(SID, "turn_1", "msg_2", 0, "Next"))  # a new message starts over
    assert (await wait_for(reader_partial(reader, "Next"), 5, "new message")).message_id == "msg_2"
    writer.publish_events(SID, [_event(3, domain.EventType.MESSAGE_COMPLETED)])

    async def gone() -> bool:
        return await reader.partial(SID) is None

    await wait_for(gone, 5, "partial cleared at message end")


def reader_partial(reader: RedisBus, text: str):  # type: ignore[no-untyped-def]
    async def check() -> Delta | None:
        partial = await reader.partial(SID)
        return partial if partial and partial.text == text else None

    return check


async def test_stop_signals_and_work_wakeups_cross(buses: tuple[RedisBus, RedisBus]) -> None:
    api, worker = buses
    stopped: list[str] = []
    worker.on_stop(stopped.append)
    api.signal_stop("turn_9")
    await wait_for(lambda: stopped == ["turn_9"], 5, "stop signal")
    worker._work.clear()
    waiting = asyncio.create_task(worker.wait_for_work(30))
    api.notify_work()
    async with asyncio.timeout(5):
        await waiting


async def test_redis_restart_lags_readers_and_reconnects(
    buses: tuple[RedisBus, RedisBus], request: pytest.FixtureRequest
) -> None:
    writer, reader = buses
    sub = await reader.subscribe(SID)
    _, redis, _ = request.getfixturevalue("cluster_servers")
    redis.stop()
    try:
        await wait_for(lambda: not reader.up, 10, "the bus notices Redis is gone")
        assert sub.lagged, "a reader that may have missed messages is sent to the store"
        with pytest.raises(errors.Unavailable):
            await reader.subscribe("01jzzzzzzzzzzzzzzzzzzzzzzz.local")
        assert await reader.partial(SID) is None
    finally:
        redis.start()
    await wait_for(lambda: reader.up and writer.up, 15, "reconnected")
    assert (await sub.get_all()).lagged
    writer.publish_events(SID, [_event(7, domain.EventType.TURN_STARTED)])
    async with asyncio.timeout(5):
        received = await sub.get_all()
    assert not received.lagged
    assert [e.seq for c in received.items if isinstance(c, Committed) for e in c.events] == [7]
