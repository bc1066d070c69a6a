"""The agent-threads WebSocket protocol, driven by the package's own `WsClient` from npm
(tests/compat_node, `npm ci` there) through a small node script, against a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests import helpers
from tests.helpers import Api, Server, running_server, wait_for
from tether.auth import Role

NODE_DIR = Path(__file__).resolve().parents[1] / "compat_node"
SCRIPT = NODE_DIR / "threads_client.mjs"
# ~4.5 s of tokens: still streaming once node has started and subscribed
STREAMING = {"reply": "echo", "tokens": 300, "token_delay_ms": 15}
UNKNOWN_SESSION = "01arz3ndektsv4rrffq69g5fav.local"


def _node() -> list[str]:
    node = helpers.node_binary()
    assert (NODE_DIR / "node_modules" / "@lleverage-ai" / "agent-threads").is_dir(), (
        f"run `npm ci` in {NODE_DIR} (`make test` does)"
    )
    return [node]


async def run_client(scenario: dict[str, Any], deadline_s: float = 30) -> dict[str, Any]:
    """Run the node script; its JSON report."""
    proc = await asyncio.create_subprocess_exec(
        *_node(),
        str(SCRIPT),
        json.dumps({**scenario, "deadlineMs": int(deadline_s * 1000)}),
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), deadline_s + 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    report = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    assert proc.returncode == 0, (proc.returncode, report, err.decode()[-2000:])
    return report  # type: ignore[no-any-return]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path, auth="required", sse_ping_s=0.3) as srv:
        yield srv


@pytest.fixture
async def keys(server: Server) -> dict[str, str]:
    made = {}
    for tenant in ("acme", "globex"):
        _, made[tenant] = await server.node.keys.create(tenant, Role.ADMIN, "admin")
    return made


@pytest.fixture
async def api(server: Server, keys: dict[str, str]) -> AsyncIterator[Api]:
    headers = {"Authorization": f"Bearer {keys['acme']}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as c:
        yield Api(c)


def ws_url(server: Server, key: str) -> str:
    return f"ws://127.0.0.1:{server.port}/compat/agent-threads/ws?access_token={key}"


def events(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if i.get("type") != "replay-end"]


def text_of(items: list[dict[str, Any]]) -> str:
    return "".join(
        i["event"]["payload"]["delta"] for i in events(items) if i["event"]["kind"] == "text-delta"
    )


async def test_replay_then_live_then_resume(server: Server, keys: dict[str, str], api: Api) -> None:
    sid = await api.session(await api.agent(**STREAMING))
    turn = await api.turn(sid, "tick tock")

    async def streaming() -> bool:
        return any(e["type"] == "turn.started" for e in await api.events(sid))

    await wait_for(streaming, 10, "the turn to stream")
    stream = f"session:{sid}"
    report = await run_client(
        {
            "url": ws_url(server, keys["acme"]),
            "subscriptions": [{"streamId": stream, "afterSeq": 0, "until": "turn-finished"}],
        }
    )
    assert report["errors"] == [], report["errors"]
    items = report["results"][0]["items"]
    end = next(i for i, item in enumerate(items) if item.get("type") == "replay-end")
    replayed, live = items[:end], items[end + 1 :]
    kinds = [i["event"]["kind"] for i in replayed]
    assert kinds[:2] == ["user-message", "step-started"], kinds
    assert items[end]["lastReplaySeq"] == (replayed[-1]["seq"] if replayed else 0)
    assert [i["event"]["kind"] for i in live].count("text-delta") > 1, "live deltas"
    assert live[-1]["event"]["kind"] == "turn-finished"
    assert live[-1]["event"]["payload"]["status"] == "completed"
    seqs = [i["seq"] for i in events(items)]
    assert seqs == sorted(set(seqs)), "strictly increasing: no duplicates"
    final = (await api.wait_turn(sid, turn["id"]))["status"]
    assert final == "completed"
    reply = next(m for m in reversed(await api.messages(sid)) if m["role"] == "assistant")
    assert text_of(items) == reply["content"], "the text exactly once"
    assert report["raw"]["pings"] >= 1 and report["raw"]["pongs"] >= 1, report["raw"]

    # resume in the middle of the streamed message: only what came after, text included
    deltas = [i for i in events(items) if i["event"]["kind"] == "text-delta"]
    middle = deltas[len(deltas) // 2]
    report = await run_client(
        {
            "url": ws_url(server, keys["acme"]),
            "subscriptions": [
                {"streamId": stream, "afterSeq": middle["seq"], "until": "replay-end"}
            ],
        }
    )
    again = report["results"][0]["items"]
    assert all(i["seq"] > middle["seq"] for i in events(again))
    assert again[-1] == {
        "type": "replay-end",
        "streamId": stream,
        "lastReplaySeq": events(again)[-1]["seq"],
    }
    before = text_of([i for i in items if i.get("seq", 0) <= middle["seq"]])
    assert before + text_of(again) == reply["content"], "resumed: no gap, no repeat"
    assert [i["event"]["kind"] for i in events(again)][-1] == "turn-finished"


async def test_protocol_errors(server: Server, keys: dict[str, str], api: Api) -> None:
    # a session made through another surface is a session like any other
    agent = await api.agent(**STREAMING)
    made = await api.c.post(
        "/compat/truefoundry/acme/v1/agents/sessions", json={"agent_name": agent}
    )
    assert made.status_code == 200, made.text
    sid = made.json()["data"]["id"]
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {keys['globex']}"}
    ) as other:
        foreign = await Api(other).session(await Api(other).agent(**STREAMING))
    streams = ["bogus", f"session:{UNKNOWN_SESSION}", f"session:{foreign}", f"session:{sid}"]
    report = await run_client(
        {
            "url": ws_url(server, keys["acme"]),
            "subscriptions": [
                {"streamId": s, "afterSeq": 0, "until": "replay-end"} for s in streams
            ],
        }
    )
    assert [(e["code"], e["streamId"]) for e in report["errors"]] == [
        ("UNKNOWN_STREAM", s) for s in streams[:3]
    ], "unknown, malformed and other tenants' streams look alike"
    assert report["results"][-1]["items"][-1]["type"] == "replay-end", "the connection lives on"


async def test_bad_key_is_refused_at_the_handshake(server: Server) -> None:
    report = await run_client(
        {
            "url": ws_url(server, "tth_000000000000_nope"),
            "expectRefusal": True,
            "subscriptions": [{"streamId": f"session:{UNKNOWN_SESSION}", "until": "replay-end"}],
        }
    )
    assert report["outcome"] == "refused", report
    assert "connected" not in report["states"]
    assert report["results"] == []
    url = f"ws://127.0.0.1:{server.port}/compat/agent-threads/ws"
    for headers in ({}, {"Authorization": "Bearer tth_000000000000_nope"}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401


async def test_version_mismatch_and_invalid_messages(server: Server, keys: dict[str, str]) -> None:
    url = ws_url(server, keys["acme"])
    async with websockets.connect(url) as ws:
        await ws.send("not json")
        assert json.loads(await ws.recv())["code"] == "INVALID_MESSAGE"
        await ws.send(json.dumps({"type": "hello", "version": 1}))
        assert json.loads(await ws.recv()) == {"type": "server-hello", "version": 1}
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 2}))
        assert json.loads(await ws.recv())["code"] == "VERSION_MISMATCH"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002


async def test_a_client_that_never_pongs_is_closed(server: Server, keys: dict[str, str]) -> None:
    pings = 0

    async def read_until_closed(ws: websockets.ClientConnection) -> None:
        nonlocal pings
        async with asyncio.timeout(20):
            while True:
                pings += json.loads(await ws.recv())["type"] == "ping"

    async with websockets.connect(ws_url(server, keys["acme"])) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await read_until_closed(ws)
    assert pings >= 2
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
