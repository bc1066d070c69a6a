"""kill -9 while a turn waits, and mid-tool: the ledger keeps every tool to at most one run
unless a human says otherwise (real processes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.procs import ServerProcess, wait_until

TOOLS = '''
import asyncio, os

async def charge(amount: int) -> str:
    """Charge a card: not idempotent."""
    with open(os.environ["CHARGES_FILE"], "a") as f:
        f.write(f"{amount}\\n")
    await asyncio.sleep(float(os.environ.get("CHARGE_DELAY", "0")))
    return f"charged {amount}"

def register(registry):
    registry.register(charge)
'''


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "crashtools.py").write_text(TOOLS)
    charges = tmp_path / "charges.txt"
    charges.touch()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = f"{tmp_path}:{old}" if old else str(tmp_path)
    yield {"tools": "crashtools:register", "charges_file": str(charges)}
    if old is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old


class Cluster:
    def __init__(self, tmp: Path, env: dict[str, Any]):
        self.tmp, self.env = tmp, env
        self.server: ServerProcess | None = None

    def start(self, **extra: Any) -> ServerProcess:
        port = self.server.port if self.server else None
        env = {k: v for k, v in {**self.env, **extra}.items() if k != "charges_file"}
        os.environ["CHARGES_FILE"] = self.env["charges_file"]
        self.server = ServerProcess(self.tmp / "data", port=port, **env).start()
        return self.server

    def charges(self) -> list[str]:
        return Path(self.env["charges_file"]).read_text().split()


@pytest.fixture
def cluster(tmp_path: Path, env: dict[str, Any]) -> Iterator[Cluster]:
    c = Cluster(tmp_path, env)
    yield c
    if c.server:
        c.server.stop()
    os.environ.pop("CHARGES_FILE", None)
    os.environ.pop("CHARGE_DELAY", None)


def _setup(url: str, policy: str) -> tuple[str, str]:
    agent = {
        "name": "payer",
        "tools": [{"name": "charge", "policy": policy}],
        "model": {
            "provider": "scripted",
            "reply": "paid",
            "steps": [{"tool_calls": [{"name": "charge", "arguments": {"amount": 5}}]}],
        },
    }
    aid = httpx.post(f"{url}/v1/agents", json=agent).json()["id"]
    sid = httpx.post(f"{url}/v1/sessions", json={"agent_id": aid}).json()["id"]
    tid = httpx.post(f"{url}/v1/sessions/{sid}/turns", json={"input": "pay"}).json()["id"]
    return sid, tid


def _pending(url: str, sid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/v1/sessions/{sid}/interrupts", params={"status": "pending"})
    return r.json()["data"]  # type: ignore[no-any-return]


def _ended(url: str, sid: str, tid: str) -> dict[str, Any] | None:
    turn = httpx.get(f"{url}/v1/sessions/{sid}/turns/{tid}").json()
    return turn if turn["status"] in ("completed", "failed", "cancelled") else None


def _tool_messages(url: str, sid: str) -> list[dict[str, Any]]:
    msgs = httpx.get(f"{url}/v1/sessions/{sid}/messages").json()["data"]
    return [m for m in msgs if m["role"] == "tool"]


def test_kill9_while_waiting_then_respond(cluster: Cluster) -> None:
    server = cluster.start()
    sid, tid = _setup(server.url, "approve")
    [pending] = wait_until(lambda: _pending(server.url, sid), 20, "the approval")
    server.kill9()
    server = cluster.start()
    assert httpx.get(f"{server.url}/v1/interrupts/{pending['id']}").json()["status"] == "pending"
    r = httpx.post(
        f"{server.url}/v1/interrupts/{pending['id']}/respond",
        json={"response": {"decision": "approve"}},
    )
    assert r.status_code == 200
    turn = wait_until(lambda: _ended(server.url, sid, tid), 20, "the turn")
    assert turn["status"] == "completed"
    assert cluster.charges() == ["5"], "the tool ran exactly once"
    assert [m["content"] for m in _tool_messages(server.url, sid)] == ["charged 5"]


def test_kill9_mid_tool_auto_policy_is_not_rerun(cluster: Cluster) -> None:
    os.environ["CHARGE_DELAY"] = "30"
    server = cluster.start()
    sid, tid = _setup(server.url, "auto")
    wait_until(lambda: cluster.charges(), 20, "the tool to have its side effect")
    server.kill9()
    os.environ["CHARGE_DELAY"] = "0"
    server = cluster.start()
    turn = wait_until(lambda: _ended(server.url, sid, tid), 20, "the turn")
    assert turn["status"] == "completed"
    assert cluster.charges() == ["5"], "a started, unfinished, non-idempotent tool is not re-run"
    [result] = _tool_messages(server.url, sid)
    assert result["content"].startswith("Outcome unknown")


def test_kill9_mid_tool_approve_policy_goes_back_to_approval(cluster: Cluster) -> None:
    os.environ["CHARGE_DELAY"] = "30"
    server = cluster.start()
    sid, tid = _setup(server.url, "approve")
    [first] = wait_until(lambda: _pending(server.url, sid), 20, "the approval")
    httpx.post(
        f"{server.url}/v1/interrupts/{first['id']}/respond",
        json={"response": {"decision": "approve"}},
    )
    wait_until(lambda: cluster.charges(), 20, "the tool to have its side effect")
    server.kill9()
    os.environ["CHARGE_DELAY"] = "0"
    server = cluster.start()
    [again] = wait_until(lambda: _pending(server.url, sid), 20, "a new approval")
    assert again["request"]["reason"] == "outcome_unknown"
    assert again["id"] != first["id"]
    httpx.post(
        f"{server.url}/v1/interrupts/{again['id']}/respond",
        json={"response": {"decision": "deny", "reason": "it went through"}},
    )
    turn = wait_until(lambda: _ended(server.url, sid, tid), 20, "the turn")
    assert turn["status"] == "completed"
    assert cluster.charges() == ["5"]
    [result] = _tool_messages(server.url, sid)
    assert "it went through" in result["content"]
