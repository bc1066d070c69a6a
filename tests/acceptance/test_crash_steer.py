"""kill -9 of the worker holding a turn after a steer was stored, before the boundary that
would deliver it: the steer is delivered once, by the turn's next attempt (real processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.procs import ServerProcess, wait_until

AGENT = {
    "name": "steered",
    "model": {
        "provider": "scripted",
        "steps": [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 2}}]}],
        "reply": "echo",
        "tokens": 4,
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


def test_kill9_between_the_steer_and_its_boundary(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    first = ServerProcess(tmp_path / "data").start()
    procs.append(first)
    agent = httpx.post(f"{first.url}/v1/agents", json=AGENT).json()["id"]
    sid = httpx.post(f"{first.url}/v1/sessions", json={"agent_id": agent}).json()["id"]
    tid = httpx.post(f"{first.url}/v1/sessions/{sid}/turns", json={"input": "go"}).json()["id"]
    wait_until(
        lambda: any(e["type"] == "tool.started" for e in _events(first.url, sid)),
        20,
        "the tool running",
    )
    r = httpx.post(
        f"{first.url}/v1/sessions/{sid}/turns", json={"input": "use JWT", "on_busy": "steer"}
    )
    assert r.status_code == 202 and r.json()["steer"]["joined"], r.text
    [message_id] = r.json()["steer"]["message_ids"]
    first.kill9()  # the tool still sleeps: no boundary was reached

    second = ServerProcess(first.data_dir, port=first.port).start()
    procs.append(second)

    def ended() -> dict[str, Any] | None:
        turn = httpx.get(f"{second.url}/v1/sessions/{sid}/turns/{tid}").json()
        return turn if turn["status"] in ("completed", "failed", "cancelled") else None

    turn = wait_until(ended, 40, "the turn to end after restart")
    assert turn["status"] == "completed" and turn["attempt"] == 2, turn
    msgs = httpx.get(f"{second.url}/v1/sessions/{sid}/messages").json()["data"]
    assert [(m["role"], m["content"] if m["role"] != "tool" else "") for m in msgs] == [
        ("user", "go"),
        ("assistant", None),
        ("tool", ""),
        ("user", "use JWT"),
        ("assistant", "use JWT use JWT "),
    ]
    assert msgs[3]["id"] == message_id and msgs[3]["turn_id"] == tid
    events = _events(second.url, sid)
    steered = [e["data"]["message_ids"] for e in events if e["type"] == "turn.steered"]
    assert steered == [[message_id]]
    turns = httpx.get(f"{second.url}/v1/sessions/{sid}/turns").json()["data"]
    assert [t["id"] for t in turns] == [tid]  # delivered in the turn: no new turn for it
