"""kill -9 of the server in the middle of a turn, then restart (real processes)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.procs import ServerProcess, wait_until

STEPS = 5
AGENT = {
    "name": "crashy",
    "model": {
        "provider": "scripted",
        "steps": [
            {"text": f"step {i}", "tool_calls": [{"name": "sleep", "arguments": {"seconds": 0.3}}]}
            for i in range(STEPS)
        ],
        "reply": "echo",
        "tokens": 20,
        "token_delay_ms": 5,
    },
    "tools": [{"name": "sleep"}],
}


@pytest.fixture
def procs() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


def _events(url: str, sid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/v1/sessions/{sid}/events", params={"stream": "false", "limit": 1000})
    return r.json()["data"]  # type: ignore[no-any-return]


def _start_mid_turn(
    tmp_path: Path, procs: list[ServerProcess], **env: Any
) -> tuple[ServerProcess, str, str]:
    server = ServerProcess(tmp_path / "data", **env).start()
    procs.append(server)
    agent = httpx.post(f"{server.url}/v1/agents", json=AGENT).json()["id"]
    sid = httpx.post(f"{server.url}/v1/sessions", json={"agent_id": agent}).json()["id"]
    tid = httpx.post(f"{server.url}/v1/sessions/{sid}/turns", json={"input": "go"}).json()["id"]
    wait_until(
        lambda: sum(e["type"] == "tool.completed" for e in _events(server.url, sid)) >= 2,
        20,
        "two completed tool steps",
    )
    server.kill9()
    return server, sid, tid


def _ended(
    url: str, sid: str, tid: str, statuses: tuple[str, ...] = ("completed", "failed", "cancelled")
) -> Any:
    turn = httpx.get(f"{url}/v1/sessions/{sid}/turns/{tid}").json()
    return turn if turn["status"] in statuses else None


def _check_transcript(url: str, sid: str) -> list[dict[str, Any]]:
    msgs = httpx.get(f"{url}/v1/sessions/{sid}/messages", params={"limit": 1000}).json()["data"]
    assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
    calls = [c["id"] for m in msgs for c in m["tool_calls"]]
    results = Counter(m["tool_call_id"] for m in msgs if m["role"] == "tool")
    assert set(results) == set(calls)
    assert all(n == 1 for n in results.values()), "every tool call has exactly one result"
    events = _events(url, sid)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "event log gap-free"
    return msgs


def test_kill9_mid_turn_resumes_from_checkpoint(tmp_path: Path, procs: list[ServerProcess]) -> None:
    first, sid, tid = _start_mid_turn(tmp_path, procs)
    second = ServerProcess(first.data_dir, port=first.port).start()
    procs.append(second)
    turn = wait_until(lambda: _ended(second.url, sid, tid), 30, "the turn to end after restart")
    assert turn["status"] == "completed", turn
    assert turn["attempt"] == 2
    msgs = _check_transcript(second.url, sid)
    roles = [m["role"] for m in msgs]
    assert roles == ["user"] + ["assistant", "tool"] * STEPS + ["assistant"], roles
    texts = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert texts == [f"step {i}" for i in range(STEPS)] + ["go " * 20]
    events = _events(second.url, sid)
    assert [e["data"]["attempt"] for e in events if e["type"] == "turn.started"] == [1, 2]
    completed_steps = [e for e in events if e["type"] == "tool.completed"]
    assert len(completed_steps) == STEPS, "no tool step recorded twice"


def test_kill9_after_max_attempts_fails_worker_lost(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    first, sid, tid = _start_mid_turn(tmp_path, procs, max_attempts=1)
    second = ServerProcess(first.data_dir, port=first.port, max_attempts=1).start()
    procs.append(second)
    turn = wait_until(lambda: _ended(second.url, sid, tid), 30, "the turn to end after restart")
    assert turn["status"] == "failed"
    assert turn["reason"] == "worker_lost"
    assert turn["error"]["code"] == "worker_lost"
    _check_transcript(second.url, sid)
    # the session is usable at once: the next turn runs to completion
    nxt = httpx.post(f"{second.url}/v1/sessions/{sid}/turns", json={"input": "again"}).json()
    done = wait_until(
        lambda: _ended(second.url, sid, nxt["id"], ("completed",)), 30, "the next turn"
    )
    assert done["attempt"] == 1
    _check_transcript(second.url, sid)


@pytest.mark.embedded
def test_second_server_on_same_data_dir_refuses(tmp_path: Path, procs: list[ServerProcess]) -> None:
    server = ServerProcess(tmp_path / "data").start()
    procs.append(server)
    other = ServerProcess(tmp_path / "data")
    with pytest.raises(AssertionError, match="another tether process"):
        other.start(timeout=15)
