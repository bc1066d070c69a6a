"""MCP tool calls: what a call costs through Tether's MCP client, and how fast a stop ends one.

`python -m bench.mcp [--calls 500] [--stops 20] [--turn-stops 20]`

- Call overhead: `echo` of tests/mcp_servers/tiny.py (the official Python SDK), called
  `--calls` times one after the other through `McpHub.call` on a warm connection, over stdio
  and over streamable HTTP (the server in a process of its own on loopback). The figure is the
  whole round trip: Tether's client, the SDK on both sides, the transport and the server.
- Stop: a call of `slow` (60 s) is cancelled the way a stop cancels a tool; timed from the
  cancel to the call being over for the caller (`stop_to_returned`) and to the server's own
  note that its tool was cancelled (`stop_to_server_cancelled`, read from its journal file).
- Turn stop (`turn_stop`): a Tether server in this process (SQLite, real HTTP), an agent whose
  turn calls `slow` (60 s) of the same server declared by the operator (stdio, and HTTP);
  once the server notes the call started, `POST /v1/sessions/{sid}/interrupt {"wait": 5}`
  is timed to its answer, which comes once the turn is `cancelled` (`stop_to_cancelled`),
  and to the server's note of the cancellation (`stop_to_server_cancelled`).

Figures go to stdout and bench/results/mcp-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.__main__ import RESULTS, code_version
from bench.scenarios import ms_stats
from tests import mcp_helpers
from tether.runtime import mcp_client

WARMUP = 20


async def _calls(hub: mcp_client.McpHub, server: mcp_client.Server, n: int) -> dict[str, Any]:
    for _ in range(WARMUP):
        await hub.call(server, "echo", {"text": "warm"})
    times: list[float] = []
    for i in range(n):
        started = time.perf_counter()
        result = await hub.call(server, "echo", {"text": f"call {i}"})
        times.append(time.perf_counter() - started)
        assert not result.is_error, result.text
    return {"calls": n, **ms_stats(times, "call"), "mean_ms": round(1000 * sum(times) / n, 3)}


async def _journal_says(journal: Path, after: int, event: str) -> None:
    """Wait (polling its journal file, 1 ms apart) until the server notes `event`."""
    deadline = time.monotonic() + 10
    while not any(e["event"] == event for e in mcp_helpers.journal_lines(journal)[after:]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server never noted {event!r}")
        await asyncio.sleep(0.001)


async def _stops(
    hub: mcp_client.McpHub, server: mcp_client.Server, journal: Path, n: int
) -> dict[str, Any]:
    returned: list[float] = []
    seen: list[float] = []
    for _ in range(n):
        before = len(mcp_helpers.journal_lines(journal))
        call = asyncio.create_task(hub.call(server, "slow", {"seconds": 60}))
        await _journal_says(journal, before, "started")
        stopped = time.perf_counter()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        returned.append(time.perf_counter() - stopped)
        await _journal_says(journal, before, "cancelled")
        seen.append(time.perf_counter() - stopped)
    return {
        "stops": n,
        **ms_stats(returned, "stop_to_returned"),
        **ms_stats(seen, "stop_to_server_cancelled"),
    }


async def _turn_stops(
    tmp: Path, journal: Path, http: mcp_helpers.HttpProcess, n: int
) -> dict[str, Any]:
    from tests.helpers import running_server

    tiny = mcp_helpers.tiny_stdio(journal)
    declared = tmp / "mcp.yaml"
    declared.write_text(
        json.dumps(
            {
                "servers": {
                    "stdio": {
                        "command": tiny.command,
                        "args": list(tiny.args),
                        "env": dict(tiny.env),
                        "cwd": tiny.cwd,
                    },
                    "http": {"url": http.url},
                }
            }
        )
    )
    out: dict[str, Any] = {}
    async with (
        running_server(tmp / "data", mcp_servers=declared, log_level="warning") as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        for transport in ("stdio", "http"):
            call = {"name": f"{transport}__slow", "arguments": {"seconds": 60}}
            agent = {
                "name": f"slow-{transport}",
                "model": {"provider": "scripted", "steps": [{"tool_calls": [call]}]},
                "mcp_servers": [{"name": transport}],
            }
            agent_id = (await client.post("/v1/agents", json=agent)).json()["id"]
            cancelled: list[float] = []
            seen: list[float] = []
            for _ in range(WARMUP // 4 + n):
                before = len(mcp_helpers.journal_lines(journal))
                sid = (await client.post("/v1/sessions", json={"agent_id": agent_id})).json()["id"]
                await client.post(f"/v1/sessions/{sid}/turns", json={"input": "go"})
                await _journal_says(journal, before, "started")
                stopped = time.perf_counter()
                r = await client.post(f"/v1/sessions/{sid}/interrupt", json={"wait": 5})
                cancelled.append(time.perf_counter() - stopped)
                assert r.json()["turn"]["status"] == "cancelled", r.text
                await _journal_says(journal, before, "cancelled")
                seen.append(time.perf_counter() - stopped)
            cancelled, seen = cancelled[-n:], seen[-n:]  # the warm-up's left out
            out[transport] = {
                "turn_stops": n,
                **ms_stats(cancelled, "stop_to_cancelled"),
                **ms_stats(seen, "stop_to_server_cancelled"),
            }
            print("turn stop", transport, json.dumps(out[transport]))
    return out


async def run(calls: int, stops: int, turn_stops: int = 20) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "journal.jsonl"
        http = await mcp_helpers.tiny_http(journal).start()
        hub = mcp_client.McpHub()
        try:
            for transport, server in (
                ("stdio", mcp_helpers.tiny_stdio(journal)),
                ("http", mcp_client.HttpServer("tiny", http.url)),
            ):
                out[transport] = {
                    **await _calls(hub, server, calls),
                    **await _stops(hub, server, journal, stops),
                }
                print(transport, json.dumps(out[transport]))
            await hub.aclose()
            if turn_stops:
                out["turn_stop"] = await _turn_stops(Path(tmp), journal, http, turn_stops)
        finally:
            await hub.aclose()
            http.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--stops", type=int, default=20)
    parser.add_argument("--turn-stops", type=int, default=20)
    args = parser.parse_args()
    figures = asyncio.run(run(args.calls, args.stops, args.turn_stops))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"mcp-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"code": code_version(), "figures": figures}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
