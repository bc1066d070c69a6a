"""kill -9 of the server while MCP calls run (real processes): the ledger's rules hold on
resume, as for Python tools. An `auto` call that may have run is not made again (outcome
`unknown`); an `approve` one goes back to a human, who may let it run again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import mcp_helpers
from tests.acceptance.procs import ServerProcess, wait_until


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "journal.jsonl"
    yield path
    for pid in {e["pid"] for e in mcp_helpers.journal_lines(path)}:
        # a server orphaned by the kill ends on its closed stdin; if not, here
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _agent(name: str, policy: str, seconds: float) -> dict[str, Any]:
    call = {"name": "tiny__slow", "arguments": {"seconds": seconds}}
    return {
        "name": name,
        "model": {"provider": "scripted", "steps": [{"tool_calls": [call]}], "reply": "done"},
        "mcp_servers": [{"name": "tiny"}],
        "tools": [{"name": "tiny.slow", "policy": policy}],
    }


def _start_turn(url: str, agent: dict[str, Any]) -> tuple[str, str]:
    aid = httpx.post(f"{url}/v1/agents", json=agent).json()["id"]
    sid = httpx.post(f"{url}/v1/sessions", json={"agent_id": aid}).json()["id"]
    tid = httpx.post(f"{url}/v1/sessions/{sid}/turns", json={"input": "go"}).json()["id"]
    return sid, tid


def _pending(url: str, sid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/v1/sessions/{sid}/interrupts", params={"status": "pending"})
    return r.json()["data"]  # type: ignore[no-any-return]


def _respond(url: str, interrupt: dict[str, Any], decision: str) -> None:
    r = httpx.post(
        f"{url}/v1/interrupts/{interrupt['id']}/respond",
        json={"response": {"decision": decision}},
    )
    assert r.status_code == 200, r.text


def _ended(url: str, sid: str, tid: str) -> dict[str, Any] | None:
    turn = httpx.get(f"{url}/v1/sessions/{sid}/turns/{tid}").json()
    return turn if turn["status"] in ("completed", "failed", "cancelled") else None


def _results(url: str, sid: str) -> list[str]:
    msgs = httpx.get(f"{url}/v1/sessions/{sid}/messages").json()["data"]
    return [m["content"] for m in msgs if m["role"] == "tool"]


def _started(journal: Path) -> int:
    return sum(e["event"] == "started" for e in mcp_helpers.journal_lines(journal))


def test_kill9_during_mcp_calls(tmp_path: Path, journal: Path) -> None:
    tiny = mcp_helpers.tiny_stdio(journal)
    declared = tmp_path / "mcp.yaml"
    declared.write_text(
        json.dumps(
            {
                "servers": {
                    "tiny": {
                        "command": tiny.command,
                        "args": list(tiny.args),
                        "env": dict(tiny.env),
                        "cwd": tiny.cwd,
                    }
                }
            }
        )
    )
    server = ServerProcess(tmp_path / "data", mcp_servers=declared).start()
    try:
        auto_sid, auto_tid = _start_turn(server.url, _agent("auto", "auto", 60))
        gated_sid, gated_tid = _start_turn(server.url, _agent("gated", "approve", 1))
        [first] = wait_until(lambda: _pending(server.url, gated_sid), 30, "the approval")
        _respond(server.url, first, "approve")
        wait_until(lambda: _started(journal) == 2, 30, "both MCP calls to run")
        server.kill9()

        server = ServerProcess(tmp_path / "data", port=server.port, mcp_servers=declared)
        server.start()
        turn = wait_until(lambda: _ended(server.url, auto_sid, auto_tid), 30, "the auto turn")
        assert turn["status"] == "completed"
        [result] = _results(server.url, auto_sid)
        assert result.startswith("Outcome unknown"), result

        [again] = wait_until(lambda: _pending(server.url, gated_sid), 30, "a new approval")
        assert again["request"]["reason"] == "outcome_unknown"
        assert again["id"] != first["id"]
        _respond(server.url, again, "approve")
        turn = wait_until(lambda: _ended(server.url, gated_sid, gated_tid), 30, "the gated turn")
        assert turn["status"] == "completed"
        assert _results(server.url, gated_sid) == ["slept 1.0"]
        assert _started(journal) == 3, "only the approved call was made again"
    finally:
        server.stop()
