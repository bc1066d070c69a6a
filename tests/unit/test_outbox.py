"""The webhook outbox on SQLite `:memory:` (store/outbox.py): claims in order per endpoint and
session, one in flight at a time, leases that run out, fencing by the claim's token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from tether import domain, ids, specs
from tether.machines import DeliveryMove, Move
from tether.store import Store, open_store
from tether.store import webhooks as outbox_rows
from tether.store.outbox import Outcome
from tether.store.session_write import SessionWrite
from tether.webhooks import records
from tether.webhooks.records import DeliveryStatus, EndpointStatus, WebhookEvent

FAR = datetime(9999, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = await open_store("sqlite:///:memory:")
    yield store
    await store.close()


async def _setup(store: Store, sessions: int) -> tuple[str, list[str]]:
    now = domain.utcnow()
    endpoint = records.Endpoint(
        ids.new("whk"),
        "t",
        "https://r.example/",
        ["*"],
        None,
        EndpointStatus.ENABLED,
        None,
        now,
        now,
    )
    await store.webhooks.create(endpoint, "sealed")
    agent = await store.agents.create("t", specs.AgentSpec(name="a"))
    made = [
        (await store.lifecycle.create_session("t", agent.id, "z", {}, None))[0]
        for _ in range(sessions)
    ]
    return endpoint.id, made


async def _event(store: Store, session_id: str, n: int) -> None:
    def body(sw: SessionWrite) -> None:
        outbox_rows.enqueue(sw, WebhookEvent.TURN_COMPLETED, {"n": n})

    await store.db.session_write(session_id, body)


def _n(claimed: records.Claimed) -> int:
    return int(json.loads(claimed.delivery.body)["data"]["n"])


async def _claim(store: Store) -> list[records.Claimed]:
    return await store.outbox.claim(10, 30)


async def _done(
    store: Store, claimed: records.Claimed, move: Move[DeliveryStatus] = DeliveryMove.DELIVER
) -> None:
    assert await store.outbox.finish(claimed, Outcome(move, error="x"), "me")


async def test_one_at_a_time_per_session_in_order(store: Store) -> None:
    _, (s1, s2) = await _setup(store, 2)
    for n in range(3):
        await _event(store, s1, n)
    await _event(store, s2, 10)
    first = await _claim(store)
    assert sorted(_n(c) for c in first) == [0, 10], "each session's head, and only it"
    assert await _claim(store) == [], "nothing else while they are in flight"
    for claimed in first:
        await _done(store, claimed)
    [second] = await _claim(store)
    assert _n(second) == 1
    await _done(store, second, DeliveryMove.GIVE_UP)  # finally failed: the next may go
    [third] = await _claim(store)
    assert _n(third) == 2


async def test_a_failed_one_sent_again_waits_for_the_one_in_flight(store: Store) -> None:
    endpoint, (s1,) = await _setup(store, 1)
    for n in range(3):
        await _event(store, s1, n)
    [d0] = await _claim(store)
    await _done(store, d0, DeliveryMove.GIVE_UP)
    [d1] = await _claim(store)
    await store.webhooks.retry("t", endpoint, d0.delivery.id, FAR)
    assert await _claim(store) == [], "never two in flight for one session"
    await _done(store, d1)
    [again] = await _claim(store)
    assert again.delivery.id == d0.delivery.id, "the earliest unfinished goes first"
    await _done(store, again)
    [d2] = await _claim(store)
    assert _n(d2) == 2


async def test_a_lost_lease_is_taken_back_with_the_same_id_and_fences_the_old_holder(
    store: Store,
) -> None:
    _, (s1,) = await _setup(store, 1)
    await _event(store, s1, 0)
    [held] = await _claim(store)
    assert await store.outbox.recover(before=domain.utcnow()) == 0, "its lease still runs"
    assert await store.outbox.recover(before=domain.utcnow() + timedelta(minutes=1)) == 1
    [again] = await _claim(store)
    assert again.delivery.id == held.delivery.id
    assert again.token != held.token
    late = Outcome(DeliveryMove.DELIVER)
    assert not await store.outbox.finish(held, late, "old"), "the old holder writes nothing"
    assert await store.outbox.finish(again, late, "new")
