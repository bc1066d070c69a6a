"""Cluster mode with real processes: API nodes and workers on PostgreSQL + Redis, killed,
frozen and cut off from their infrastructure. (Runs with TETHER_TEST_BACKEND=cluster.)"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import helpers
from tests.acceptance.deployment import Deployment, events, http, sql, turn, turns_held_by
from tests.acceptance.procs import wait_until

pytestmark = pytest.mark.cluster

TOOL_STEPS = 2
SLOW_AGENT = {  # two tool steps, then a streamed answer: ~1.5 s a turn
    "name": "steady",
    "model": {
        "provider": "scripted",
        "steps": [
            {"text": f"step {i}", "tool_calls": [{"name": "sleep", "arguments": {"seconds": 0.4}}]}
            for i in range(TOOL_STEPS)
        ],
        "reply": "echo",
        "tokens": 20,
        "token_delay_ms": 20,
    },
    "tools": [{"name": "sleep"}],
}
LONG_STREAM = {  # one long answer: 400 tokens, 20 ms apart
    "name": "talker",
    "model": {"provider": "scripted", "reply": "word", "tokens": 400, "token_delay_ms": 20},
    "tools": [],
}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    yield d
    d.stop()


def _agent(url: str, spec: dict[str, Any]) -> str:
    r = http.post(f"{url}/v1/agents", json=spec)
    r.raise_for_status()
    return r.json()["id"]  # type: ignore[no-any-return]


def _session_and_turn(url: str, agent: str, text: str = "go") -> tuple[str, str]:
    sid = http.post(f"{url}/v1/sessions", json={"agent_id": agent}).json()["id"]
    r = http.post(f"{url}/v1/sessions/{sid}/turns", json={"input": text})
    assert r.status_code == 202, r.text
    return sid, r.json()["id"]


def _status(url: str, sid: str, tid: str) -> str:
    return turn(url, sid, tid)["status"]  # type: ignore[no-any-return]


def _store_url() -> str:
    return str(helpers.BACKEND["store_url"])


@pytest.mark.timeout(400)
def test_kill9_one_of_three_workers_with_200_turns(deployment: Deployment) -> None:
    """2 API nodes, 3 workers, 200 turns running; kill -9 one worker. Nothing is lost, no step
    is recorded twice, and every orphan is back in the queue within lease TTL + reaper interval.
    """
    a, b = deployment.add_node(), deployment.add_node()
    workers = [deployment.add_worker(concurrency=80) for _ in range(3)]
    agent = _agent(a.url, SLOW_AGENT)
    started = [_session_and_turn((a, b)[i % 2].url, agent, f"turn {i}") for i in range(200)]
    victim = workers[0]
    orphans = wait_until(lambda: turns_held_by(_store_url(), victim), 30, "turns on the victim")
    killed_at = time.time()
    victim.kill9()
    orphans |= {
        r["id"] for r in sql(_store_url(), "SELECT id FROM turns WHERE attempt > 0")
    }  # anything it held at the moment it died

    def all_ended() -> bool:
        rows = sql(_store_url(), "SELECT count(*) AS n FROM turns WHERE status = 'completed'")
        return rows[0]["n"] == len(started)

    wait_until(all_ended, 120, "all 200 turns completed")

    lease = deployment.settings["lease_ttl_s"] + deployment.settings["reaper_interval_s"]
    requeued_after: list[float] = []
    restarted_after: list[float] = []
    for i, (sid, tid) in enumerate(started):
        url = (a, b)[i % 2].url
        evs = events(url, sid)
        assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), "gap-free event log"
        assert turn(url, sid, tid)["status"] == "completed"
        msgs = http.get(f"{url}/v1/sessions/{sid}/messages", params={"limit": 100}).json()
        roles = [m["role"] for m in msgs["data"]]
        assert roles == ["user"] + ["assistant", "tool"] * TOOL_STEPS + ["assistant"], (
            f"every step recorded exactly once in {sid}: {roles}"
        )
        results = Counter(m["tool_call_id"] for m in msgs["data"] if m["role"] == "tool")
        assert all(n == 1 for n in results.values())
        resumed = [e for e in evs if e["type"] == "turn.queued" and e["data"].get("resumed")]
        if tid in orphans and resumed:
            at = _epoch(resumed[0]["created_at"])
            requeued_after.append(at - killed_at)
            restart = next(
                e for e in evs if e["type"] == "turn.started" and _epoch(e["created_at"]) >= at
            )
            restarted_after.append(_epoch(restart["created_at"]) - killed_at)
        else:
            assert not resumed, f"{tid} was not on the killed worker, yet resumed"
    assert requeued_after, "the killed worker held turns that had to be resumed"
    figures = {
        "turns": len(started),
        "orphans": len(requeued_after),
        "lost": 0,
        "duplicated_steps": 0,
        "requeued_after_kill_max_s": round(max(requeued_after), 2),
        "restarted_after_kill_max_s": round(max(restarted_after), 2),
        "bound_s": lease,
    }
    print("cluster kill -9 figures:", json.dumps(figures))
    assert max(requeued_after) <= lease + 0.5, figures  # + the reaper's own pass


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_frozen_worker_stop_unconfirmed_then_stale_writes_rejected(
    deployment: Deployment,
) -> None:
    """SIGSTOP the worker running a turn; a stop answers 202 `cancelling`; the turn ends
    `cancelled` when the lease expires (another worker's reaper); after SIGCONT, everything the
    frozen worker tries to write is refused."""
    node = deployment.add_node()
    frozen, other = deployment.add_worker(), deployment.add_worker()
    agent = _agent(node.url, LONG_STREAM)
    sid, tid = _session_and_turn(node.url, agent)
    wait_until(
        lambda: (
            tid in turns_held_by(_store_url(), frozen) or tid in turns_held_by(_store_url(), other)
        ),
        20,
        "turn running",
    )
    holder = frozen if tid in turns_held_by(_store_url(), frozen) else other
    wait_until(
        lambda: any(e["type"] == "turn.started" for e in events(node.url, sid)), 10, "started"
    )
    holder.signal(signal.SIGSTOP)
    r = http.post(f"{node.url}/v1/sessions/{sid}/interrupt", json={"wait": 1})
    assert r.status_code == 202, r.text
    assert r.json()["turn"]["status"] == "cancelling"
    wait_until(lambda: _status(node.url, sid, tid) == "cancelled", 15, "cancelled by lease expiry")
    before = events(node.url, sid)
    messages_before = http.get(f"{node.url}/v1/sessions/{sid}/messages").json()["data"]

    holder.signal(signal.SIGCONT)
    wait_until(
        lambda: (
            "no longer held" in holder.log.read_text() or "lease lost" in holder.log.read_text()
        ),
        15,
        "the thawed worker to find its lease gone",
    )
    after = events(node.url, sid)
    assert after == before, "stale writes accepted: 0"
    assert http.get(f"{node.url}/v1/sessions/{sid}/messages").json()["data"] == messages_before
    assert _status(node.url, sid, tid) == "cancelled"
    # and the session is usable: the next turn runs on a live worker
    r = http.post(f"{node.url}/v1/sessions/{sid}/turns", json={"input": "again"})
    tid2 = r.json()["id"]
    wait_until(lambda: _status(node.url, sid, tid2) in ("running", "completed"), 15, "next turn")


def test_stop_sent_to_another_node_is_confirmed(deployment: Deployment) -> None:
    a, b = deployment.add_node(), deployment.add_node()
    deployment.add_worker()
    agent = _agent(a.url, LONG_STREAM)
    for _ in range(5):
        sid, tid = _session_and_turn(a.url, agent)
        wait_until(lambda: _status(b.url, sid, tid) == "running", 10, "running")  # noqa: B023
        began = time.monotonic()
        r = http.post(f"{b.url}/v1/sessions/{sid}/interrupt", json={"wait": 5})
        assert r.status_code == 200, r.text
        assert r.json()["turn"]["status"] == "cancelled"
        assert time.monotonic() - began < 2, "confirmed over the bus, not by lease expiry"
        ends = [e["type"] for e in events(a.url, sid) if e["turn_id"] == tid][-1]
        assert ends == "turn.cancelled"


def test_bus_down_stops_land_through_the_store_and_streams_503(
    deployment: Deployment, request: pytest.FixtureRequest
) -> None:
    node = deployment.add_node()
    deployment.add_worker()
    agent = _agent(node.url, LONG_STREAM)
    sid, tid = _session_and_turn(node.url, agent)
    wait_until(lambda: _status(node.url, sid, tid) == "running", 10, "running")
    _, redis, _ = request.getfixturevalue("cluster_servers")
    redis.stop()
    try:
        wait_until(
            lambda: http.get(f"{node.url}/v1/sessions/{sid}/events").status_code == 503,
            10,
            "streams answer 503 once the bus is gone",
        )
        r = http.get(f"{node.url}/v1/sessions/{sid}/events")
        assert r.headers["retry-after"] == "1"
        assert http.get(f"{node.url}/readyz").json()["bus"] == "down"
        assert r.json()["error"]["code"] == "unavailable"
        # JSON reads need no bus
        assert http.get(f"{node.url}/v1/sessions/{sid}/events?stream=false").status_code == 200
        r = http.post(f"{node.url}/v1/sessions/{sid}/interrupt", json={"wait": 8})
        assert r.status_code in (200, 202), r.text
        wait_until(lambda: _status(node.url, sid, tid) == "cancelled", 15, "stop through the store")
    finally:
        redis.start()
    # everything reconnects: a new turn streams live again through the node
    sid2, _ = _session_and_turn(node.url, agent)
    wait_until(lambda: http.get(f"{node.url}/readyz").json()["bus"] == "ok", 15, "bus back")
    deltas = 0
    with httpx.stream("GET", f"{node.url}/v1/sessions/{sid2}/events", timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line == "event: message.delta":
                deltas += 1
                if deltas >= 3:
                    break
    http.post(f"{node.url}/v1/sessions/{sid2}/interrupt", json={})


def test_sse_resume_across_nodes_random_drops(deployment: Deployment) -> None:
    """100 random drops, each reconnect to the other API node with Last-Event-ID: every durable
    event exactly once, in order; the streamed text agrees with the final messages."""
    nodes = [deployment.add_node(), deployment.add_node()]
    deployment.add_worker()
    rng = random.Random(11)
    steps = [{"text": f"step {i}", "tool_calls": [{"name": "get_time"}]} for i in range(12)]
    agent = _agent(
        nodes[0].url,
        {
            "name": "resumer",
            "model": {
                "provider": "scripted",
                "steps": steps,
                "reply": "echo",
                "tokens": 60,
                "token_delay_ms": 3,
            },
            "tools": [{"name": "get_time"}],
            "max_steps": 100,
        },
    )
    sid, first = _session_and_turn(nodes[0].url, agent)
    turn_ids = [first]
    seen: list[int] = []
    texts: dict[str, dict[int, str]] = {}
    last_id: str | None = None
    drops = 0
    finished: set[str] = set()
    with httpx.Client(timeout=30) as client:
        while True:
            url = nodes[drops % 2].url
            headers = {"Last-Event-ID": last_id} if last_id else {}
            budget = rng.randint(1, 8)
            with client.stream("GET", f"{url}/v1/sessions/{sid}/events", headers=headers) as r:
                assert r.status_code == 200
                for frame_id, kind, data in _frames(r):
                    last_id = frame_id
                    if kind == "message.delta":
                        d = data["data"]
                        texts.setdefault(d["message_id"], {})[d["offset"]] = d["delta"]
                    else:
                        seen.append(data["seq"])
                        if kind == "turn.completed":
                            finished.add(data["turn_id"])
                    budget -= 1
                    if budget == 0 or set(turn_ids) <= finished:
                        break
            if set(turn_ids) <= finished:
                if drops >= 100:
                    break
                r2 = client.post(f"{url}/v1/sessions/{sid}/turns", json={"input": "again"})
                turn_ids.append(r2.json()["id"])
            else:
                drops += 1
    evs = events(nodes[0].url, sid)
    durable = [e["seq"] for e in evs]
    assert seen == durable[: len(seen)], "every durable event exactly once, in order"
    assert (
        len(seen) >= durable.index(max(e["seq"] for e in evs if e["type"] == "turn.completed")) + 1
    )
    finals = {
        e["data"]["message"]["id"]: e["data"]["message"]["content"]
        for e in evs
        if e["type"] == "message.completed"
    }
    for message_id, pieces in texts.items():
        for offset, piece in pieces.items():
            assert finals[message_id][offset : offset + len(piece)] == piece


def _frames(r: httpx.Response) -> Iterator[tuple[str, str, dict[str, Any]]]:
    frame: dict[str, str] = {}
    for line in r.iter_lines():
        if not line:
            if "data" in frame:
                yield frame.get("id", ""), frame.get("event", ""), json.loads(frame["data"])
            frame = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            frame[key] = value


def test_postgres_restart_503_then_recovery_nothing_acknowledged_lost(tmp_path: Path) -> None:
    """A private PostgreSQL, restarted under a node and a worker: clear 503s while it is down,
    then recovery; every turn acknowledged before, during or after is there and completes."""
    from tests import infra

    pg = infra.PostgresServer().start()
    try:
        url = asyncio_run(infra.create_database(pg, "restart"))
        d = Deployment(tmp_path, store_url=url)
        try:
            node = d.add_node()
            d.add_worker()
            agent = _agent(node.url, SLOW_AGENT)
            acknowledged = [_session_and_turn(node.url, agent) for _ in range(10)]
            pg.stop()
            r = http.post(f"{node.url}/v1/sessions", json={"agent_id": agent})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable"
            assert "retry-after" in r.headers
            assert http.get(f"{node.url}/readyz").status_code == 503
            pg.start()
            wait_until(lambda: http.get(f"{node.url}/readyz").status_code == 200, 30, "ready")
            acknowledged += [_session_and_turn(node.url, agent) for _ in range(10)]
            wait_until(
                lambda: all(_status(node.url, s, t) == "completed" for s, t in acknowledged),
                60,
                "every acknowledged turn completed",
            )
        finally:
            d.stop()
    finally:
        pg.close()


def asyncio_run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)
