"""10,000 sessions waiting on a tool approval: what they cost the server, and whether the
worker pool stays free for other turns meanwhile.

`python -m bench.waiting [--quick] [--workers N] [--profile]`; see bench/CONTROL.md.
The load runs in a client process of its own, which also reads the server's RSS from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench import profile
from bench.__main__ import RESULTS, code_version
from bench.client import Connection, Stream, create_session, stream_turn
from bench.scenarios import in_client_process, percentile
from bench.server import Server, raise_fd_limit, wait_for_quiet

GATED = {
    "name": "gated",
    "model": {
        "provider": "scripted",
        "steps": [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}],
        "reply": "ok",
    },
    "tools": [{"name": "sleep", "policy": "approve"}],
}
PROBE = {
    "name": "probe",
    "model": {"provider": "scripted", "reply": "hi", "tokens": 5},
    "tools": [],
}
PROBE_TOKENS = 5
PAGE = 1000  # sessions per page when counting the waiting ones
POLL_S = 1.0
WAIT_MAX_S = 900.0  # all sessions must be waiting (or the approved ones done) within this
SETTLE_S = 3.0  # quiet time before RSS is read
TURN_TIMEOUT_S = 30.0
QUIET_WAIT_S = 60.0


@dataclass(frozen=True)
class Sizes:
    sessions: int = 10_000
    warmup: int = 200
    concurrency: int = 48
    probes: int = 20
    approve: int = 100


FULL = Sizes()
QUICK = Sizes(sessions=500, warmup=50, probes=5, approve=20)


def memory_kb(pid: int) -> dict[str, int]:
    """The server's VmRSS and VmHWM (peak RSS), in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def storage_bytes(data_dir: Path) -> dict[str, int]:
    """Sizes of the SQLite file and its write-ahead log."""
    files = {"db": data_dir / "tether.db", "wal": data_dir / "tether.db-wal"}
    return {name: path.stat().st_size if path.exists() else 0 for name, path in files.items()}


# --- the load (in the client process) --------------------------------------------------------


async def create_waiting(port: int, agent_id: str, count: int, concurrency: int) -> list[str]:
    """Create `count` sessions, each with its first turn, `concurrency` requests in flight."""
    session_ids: list[str] = []
    todo = iter(range(count))

    async def client() -> None:
        conn = await Connection.open(port)
        try:
            for _ in todo:
                body = {"agent_id": agent_id, "input": "x"}
                session_ids.append((await conn.json("POST", "/v1/sessions", body))["id"])
        finally:
            conn.close()

    async with asyncio.timeout(WAIT_MAX_S):
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return session_ids


async def count_waiting(port: int) -> int:
    conn = await Connection.open(port)  # fresh: the server closes idle keep-alive connections
    try:
        count, cursor = 0, ""
        for _ in range(1000):  # bounded: 1,000 pages
            page = await conn.json("GET", f"/v1/sessions?status=waiting&limit={PAGE}{cursor}")
            count += len(page["data"])
            if not page["next_cursor"]:
                break
            cursor = f"&cursor={page['next_cursor']}"
        return count
    finally:
        conn.close()


async def until_waiting(port: int, expected: int) -> int:
    """Poll (cheaply, bounded by WAIT_MAX_S) until no session is queued or running, then
    count the waiting ones."""
    for _ in range(int(WAIT_MAX_S / POLL_S)):
        queued = await get(port, "/v1/sessions?status=queued&limit=1")
        running = await get(port, "/v1/sessions?status=running&limit=1")
        if not queued["data"] and not running["data"]:
            break
        await asyncio.sleep(POLL_S)
    return await count_waiting(port)


async def get(port: int, path: str) -> Any:
    conn = await Connection.open(port)
    try:
        return await conn.json("GET", path)
    finally:
        conn.close()


async def probe(port: int, agent_id: str, count: int) -> dict[str, Any]:
    """Turns of a 5-token agent, one after another on new sessions: can they run at once?"""
    conn = await Connection.open(port)
    streams: list[Stream] = []
    try:
        for _ in range(count):
            session_id = await create_session(conn, agent_id)
            async with asyncio.timeout(TURN_TIMEOUT_S):
                streams.append(await stream_turn(conn, session_id, "x"))
    finally:
        conn.close()
    ok = [s for s in streams if s.terminal == "turn.completed" and s.tokens == PROBE_TOKENS]
    first = [s.first_token for s in ok if s.first_token is not None]
    return {
        "turns": count,
        "completed": len(ok),
        "first_token_p50_ms": round(1000 * percentile(first, 50), 2),
        "first_token_max_ms": round(1000 * percentile(first, 100), 2),
        "turn_p50_ms": round(1000 * percentile([s.latency for s in ok], 50), 2),
        "turn_max_ms": round(1000 * percentile([s.latency for s in ok], 100), 2),
    }


async def approve(port: int, session_ids: list[str]) -> dict[str, Any]:
    """Approve the pending interrupt of each session; wait until their turns end."""
    conn = await Connection.open(port)
    try:
        start = time.monotonic()
        for sid in session_ids:
            pending = await conn.json("GET", f"/v1/sessions/{sid}/interrupts?status=pending")
            answer = {"response": {"decision": "approve"}}
            await conn.json("POST", f"/v1/interrupts/{pending['data'][0]['id']}/respond", answer)
        approved = time.monotonic() - start
    finally:
        conn.close()
    ended: dict[str, str] = {}
    for _ in range(int(WAIT_MAX_S / POLL_S)):
        conn = await Connection.open(port)
        try:
            for sid in session_ids:
                if sid not in ended:
                    last = (await conn.json("GET", f"/v1/sessions/{sid}"))["last_turn"]
                    if last["status"] in ("completed", "failed", "cancelled"):
                        ended[sid] = last["status"]
        finally:
            conn.close()
        if len(ended) == len(session_ids):
            break
        await asyncio.sleep(POLL_S)
    return {
        "approved": len(session_ids),
        "approve_requests_s": round(approved, 2),
        "completed": sum(s == "completed" for s in ended.values()),
        "not_completed": len(session_ids) - sum(s == "completed" for s in ended.values()),
        "all_ended_s": round(time.monotonic() - start, 2),
    }


def scenario(port: int, pid: int, data_dir: str, sizes: Sizes) -> dict[str, Any]:
    return uvloop.run(_scenario(port, pid, Path(data_dir), sizes))


async def _scenario(port: int, pid: int, data_dir: Path, s: Sizes) -> dict[str, Any]:
    setup = await Connection.open(port)
    gated = (await setup.json("POST", "/v1/agents", GATED))["id"]
    quick = (await setup.json("POST", "/v1/agents", PROBE))["id"]
    setup.close()
    out: dict[str, Any] = {"probe_before": await probe(port, quick, s.probes)}

    await create_waiting(port, gated, s.warmup, s.concurrency)
    out["warmup_waiting"] = await until_waiting(port, s.warmup)
    await asyncio.sleep(SETTLE_S)
    mem0, disk0 = memory_kb(pid), storage_bytes(data_dir)

    start = time.monotonic()
    session_ids = await create_waiting(port, gated, s.sessions, s.concurrency)
    out["create_s"] = round(time.monotonic() - start, 2)
    out["waiting"] = await until_waiting(port, s.warmup + s.sessions)
    out["all_waiting_s"] = round(time.monotonic() - start, 2)
    out["window"] = [start, time.monotonic()]
    await asyncio.sleep(SETTLE_S)
    mem1, disk1 = memory_kb(pid), storage_bytes(data_dir)
    out["running_turns"] = (await get(port, "/readyz"))["running_turns"]

    out["probe_after"] = await probe(port, quick, s.probes)
    out["approvals"] = await approve(port, session_ids[: s.approve])
    out["waiting_after_approvals"] = await count_waiting(port)
    out["running_turns_after_approvals"] = (await get(port, "/readyz"))["running_turns"]
    grew_kb = mem1["VmRSS"] - mem0["VmRSS"]
    grew_bytes = sum(disk1.values()) - sum(disk0.values())
    out |= {
        "rss_warm_mb": round(mem0["VmRSS"] / 1024, 1),
        "rss_after_mb": round(mem1["VmRSS"] / 1024, 1),
        "rss_peak_mb": round(mem1["VmHWM"] / 1024, 1),
        "rss_bytes_per_waiting_session": round(grew_kb * 1024 / s.sessions),
        "storage_warm_bytes": disk0,
        "storage_after_bytes": disk1,
        "storage_bytes_per_waiting_session": round(grew_bytes / s.sessions),
    }
    return out


# --- running it ------------------------------------------------------------------------------


def summary(r: dict[str, Any], sizes: Sizes) -> list[str]:
    before, after, ok = r["probe_before"], r["probe_after"], r["approvals"]
    db0, db1 = r["storage_warm_bytes"], r["storage_after_bytes"]
    return [
        f"{sizes.sessions} sessions waiting on approval (after {sizes.warmup} warm-up ones, "
        f"{r['workers']} workers): {r['waiting']} waiting; created in {r['create_s']} s, "
        f"all waiting after {r['all_waiting_s']} s; server CPU {r.get('server_cpu_percent')}%",
        f"  RSS {r['rss_warm_mb']} MB -> {r['rss_after_mb']} MB (peak {r['rss_peak_mb']} MB): "
        f"{r['rss_bytes_per_waiting_session']} bytes per waiting session",
        f"  SQLite db {db0['db']} -> {db1['db']} bytes, wal {db0['wal']} -> {db1['wal']} bytes: "
        f"{r['storage_bytes_per_waiting_session']} bytes per waiting session",
        f"  /readyz running_turns {r['running_turns']}",
        f"  {PROBE_TOKENS}-token turns ({after['turns']}, one at a time) with them waiting: "
        f"first token p50 {after['first_token_p50_ms']} max {after['first_token_max_ms']} ms, "
        f"completed p50 {after['turn_p50_ms']} max {after['turn_max_ms']} ms, "
        f"{after['completed']}/{after['turns']} ok (before: first token p50 "
        f"{before['first_token_p50_ms']} ms, completed p50 {before['turn_p50_ms']} ms)",
        f"  approved {ok['approved']}: {ok['completed']} completed, all ended "
        f"{ok['all_ended_s']} s after the first approval; waiting afterwards "
        f"{r['waiting_after_approvals']}, running_turns {r['running_turns_after_approvals']}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waiting", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="500 sessions instead of 10,000")
    parser.add_argument("--workers", type=int, default=128, help="server workers (default 128)")
    parser.add_argument("--profile", action="store_true", help="record the server with py-spy")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    name = "waiting-quick" if args.quick else "waiting"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: kill what we started
    raise_fd_limit()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    quiet = wait_for_quiet(QUIET_WAIT_S)
    print(f"running waiting ({sizes.sessions} sessions)…", flush=True)
    spy = RESULTS / f"{name}-{stamp}-profile.txt" if args.profile else None
    with Server(workers=args.workers, profile=spy) as server:
        args_ = (server.port, server.pid, str(server.data_dir), sizes)
        result = in_client_process(scenario, *args_, timeout=3 * WAIT_MAX_S)
        result = {**result, **server.cpu_percent(*result.pop("window"))}
    result |= {"workers": args.workers, "machine_busy_before_percent": quiet}
    print("\n".join(summary(result, sizes)))
    if spy:
        print("\n".join(profile.report(spy)))
    report = {"name": name, "timestamp": stamp, "code": code_version(), "sizes": asdict(sizes)}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps({**report, "results": result}, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
