"""Webhook deliveries across real processes (DESIGN §9): a server killed with deliveries
pending and in flight loses none of them, and two worker processes never deliver one event
twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests import helpers
from tests.acceptance.deployment import Deployment, http, sql
from tests.acceptance.procs import ServerProcess, wait_until
from tests.webhook_receiver import Answer, Receiver, verify

SETTINGS = {
    "webhook_allow_private": "true",  # the receiver is on loopback
    "webhook_timeout_s": 1,  # a send is held for 3 s at most (lease: 2 x timeout + 1)
    "webhook_backoff_s": 0.1,
    "webhook_backoff_max_s": 0.5,
    "secret_key": Fernet.generate_key().decode(),  # the same on every process
}
AGENT = {"name": "quick", "model": {"provider": "scripted", "reply": "hi"}, "tools": []}


@pytest.fixture
def procs() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


def _turns(url: str, sessions: int, per_session: int) -> list[str]:
    agent = http.post(f"{url}/v1/agents", json=AGENT).json()["id"]
    made = []
    for _ in range(sessions):
        sid = http.post(f"{url}/v1/sessions", json={"agent_id": agent}).json()["id"]
        for i in range(per_session):
            r = http.post(f"{url}/v1/sessions/{sid}/turns", json={"input": f"turn {i}"})
            assert r.status_code == 202, r.text
            made.append(r.json()["id"])
    return made


def _deliveries(url: str, webhook_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = http.get(f"{url}/v1/webhooks/{webhook_id}/deliveries", params=params).json()
        found += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return found


def _settled(url: str, webhook_id: str, expected: int) -> list[dict[str, Any]] | None:
    """Every delivery, once there are `expected` and all are recorded as delivered."""
    found = _deliveries(url, webhook_id)
    done = len(found) == expected and all(d["status"] == "delivered" for d in found)
    return found if done else None


def test_kill9_with_deliveries_pending_and_in_flight_then_restart(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    """The receiver hangs, so some deliveries are in flight and the rest wait their turn;
    kill -9; the receiver recovers; a restarted server delivers every one, each with its
    webhook-id (lost leases are taken back: at once by an embedded server, after the lease
    in cluster mode)."""
    answering = threading.Event()

    def plan(_: Any) -> Answer:
        return Answer() if answering.is_set() else Answer(500, delay_s=30)

    with Receiver(plan) as receiver:
        first = ServerProcess(tmp_path / "data", **SETTINGS).start()
        procs.append(first)
        hook = http.post(
            f"{first.url}/v1/webhooks", json={"url": receiver.url, "events": ["turn.completed"]}
        ).json()
        turns = _turns(first.url, sessions=20, per_session=2)
        wait_until(lambda: len(receiver.requests) >= 10, 30, "deliveries in flight")
        before = _deliveries(first.url, hook["id"])
        assert {d["status"] for d in before} >= {"sending", "pending"}, before
        first.kill9()
        answering.set()
        receiver.release.set()  # the hung requests end (their sender is gone)

        second = ServerProcess(first.data_dir, port=first.port, **SETTINGS).start()
        procs.append(second)
        wait_until(lambda: len(receiver.delivered_ids()) == len(turns), 60, "all delivered")
        after = wait_until(lambda: _settled(second.url, hook["id"], len(turns)), 30, "recorded")
    assert set(receiver.delivered_ids()) == {d["id"] for d in after}, "none lost"
    delivered_turns = {r.event["data"]["turn"]["id"] for r in receiver.delivered()}
    assert delivered_turns == set(turns)
    for got in receiver.delivered():
        verify(hook["secret"], got)
    for sid, got in receiver.by_session().items():
        seqs = [r.event["data"]["turn"]["seq"] for r in got]
        assert seqs == sorted(seqs), f"{sid}: in order"


@pytest.mark.cluster
def test_two_workers_never_deliver_one_event_twice(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, **SETTINGS)
    try:
        node = deployment.add_node()  # API only: delivers nothing itself
        workers = [deployment.add_worker(concurrency=50) for _ in range(2)]
        with Receiver(lambda _: Answer(delay_s=0.01)) as receiver:
            hook = http.post(
                f"{node.url}/v1/webhooks", json={"url": receiver.url, "events": ["*"]}
            ).json()
            turns = _turns(node.url, sessions=40, per_session=2)
            wait_until(lambda: len(receiver.delivered()) >= len(turns), 90, "all delivered")

            deliveries = wait_until(
                lambda: _settled(node.url, hook["id"], len(turns)), 30, "every delivery recorded"
            )
        counted = receiver.delivered_ids()
        assert len(counted) == len(turns)
        assert set(counted.values()) == {1}, "no event delivered twice"
        assert len(receiver.requests) == len(turns), "nor even sent twice"
        # one answered attempt each (an attempt that never reached the receiver, e.g. a
        # connection refused by its full backlog on a loaded box, is retried: that is fine)
        answered = sql(
            str(helpers.BACKEND["store_url"]),
            "SELECT delivery_seq, count(*) AS n FROM webhook_attempts"
            " WHERE status_code BETWEEN 200 AND 299 GROUP BY delivery_seq",
        )
        failed = sql(
            str(helpers.BACKEND["store_url"]),
            "SELECT error, status_code FROM webhook_attempts WHERE status_code IS NULL"
            " OR status_code NOT BETWEEN 200 AND 299",
        )
        assert len(answered) == len(turns) and all(r["n"] == 1 for r in answered), failed
        assert all(d["status"] == "delivered" for d in deliveries)
        senders = sql(
            str(helpers.BACKEND["store_url"]), "SELECT DISTINCT worker_id FROM webhook_attempts"
        )
        pids = {str(w.pid) for w in workers}
        assert {r["worker_id"].split(":")[1] for r in senders} == pids, "both workers delivered"
    finally:
        deployment.stop()
