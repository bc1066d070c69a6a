"""Webhook delivery lag at a steady rate of turns (DESIGN §9, issue 14).

`python -m bench.webhooks [--quick] [--rate 100] [--seconds 20] [--profile]`

An embedded `tether serve` with one webhook endpoint subscribed to `turn.completed`, pointing
at a receiver in the load client's process (loopback, answering 200 at once). The client
starts turns at a fixed rate, open loop (each `POST /v1/sessions` with `input` makes a
session and its first turn; a pool of keep-alive connections sends them), for a warm-up and
then the measured window. The lag of a delivery is the time from the turn's end being
committed to the receiver having the request: the receiver's clock at arrival minus the
turn's `finished_at` in the body (taken at the start of the transaction that commits the end,
so the commit is inside the lag; one machine, one clock). Reported: p50/p99/max over the turns
started in the measured window, and whether every one of them was delivered exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import uvicorn
import uvloop

from bench import profile
from bench.__main__ import RESULTS, code_version
from bench.client import Connection
from bench.scenarios import in_client_process, percentile
from bench.server import Server, free_port, raise_fd_limit, wait_for_quiet

AGENT = {"name": "quick", "model": {"provider": "scripted", "reply": "ok"}, "tools": []}
CONNECTIONS = 16  # keep-alive connections the load is spread over
DRAIN_S = 60.0  # after the last turn, how long deliveries may still take to arrive
QUIET_WAIT_S = 60.0
# the load client and receiver use ~10-20% of a core at 100 turns/s: more than this is others'
OTHER_LOAD_WARN = 40.0
SERVER_ENV = {"TETHER_WEBHOOK_ALLOW_PRIVATE": "true"}  # the receiver is on loopback


@dataclass(frozen=True)
class Sizes:
    rate: float = 100.0  # turns started per second
    warmup_s: float = 3.0
    seconds: float = 20.0


FULL = Sizes()
QUICK = Sizes(warmup_s=1.0, seconds=5.0)


class Receiver:
    """The webhook receiver: records when each delivery arrived, answers 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrived: dict[str, list[tuple[float, dict[str, Any]]]] = {}  # webhook-id ->
        self.changed = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        now = time.time()
        headers = dict(scope["headers"])
        webhook_id = headers.get(b"webhook-id", b"").decode()
        self.arrived.setdefault(webhook_id, []).append((now, json.loads(body)))
        self.changed.set()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def scenario(port: int, sizes: Sizes) -> dict[str, Any]:
    return uvloop.run(_scenario(port, sizes))


async def _scenario(port: int, s: Sizes) -> dict[str, Any]:
    receiver = Receiver()
    config = uvicorn.Config(
        receiver, host="127.0.0.1", port=receiver.port, log_level="warning", lifespan="off"
    )
    listening = uvicorn.Server(config)
    served = asyncio.create_task(listening.serve())
    while not listening.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.01)
    setup = await Connection.open(port)
    agent = (await setup.json("POST", "/v1/agents", AGENT))["id"]
    hook = {"url": receiver.url, "events": ["turn.completed"]}
    made_hook = await setup.json("POST", "/v1/webhooks", hook)
    setup.close()

    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(await Connection.open(port))
    started: dict[str, float] = {}  # session id -> when its POST was sent (measured ones)
    errors: list[str] = []

    async def start_turn(measured: bool) -> None:
        conn = await pool.get()
        try:
            sent = time.time()
            made = await conn.json("POST", "/v1/sessions", {"agent_id": agent, "input": "x"})
            if measured:
                started[made["id"]] = sent
        except Exception as exc:  # counted, not raised: the rate goes on
            errors.append(repr(exc)[:200])
            conn = await Connection.open(port)
        finally:
            pool.put_nowait(conn)

    tasks: list[asyncio.Task[None]] = []
    begin = time.monotonic()
    total = int((s.warmup_s + s.seconds) * s.rate)
    for i in range(total):
        # open loop: turn i starts at i / rate, whatever the server's pace
        await asyncio.sleep(max(0.0, begin + i / s.rate - time.monotonic()))
        tasks.append(asyncio.create_task(start_turn(measured=i >= s.warmup_s * s.rate)))
    sent_s = time.monotonic() - begin
    await asyncio.gather(*tasks)
    window = [begin, time.monotonic()]

    def delivered() -> dict[str, tuple[float, dict[str, Any]]]:
        by_session: dict[str, tuple[float, dict[str, Any]]] = {}
        for arrivals in receiver.arrived.values():
            at, event = arrivals[0]
            by_session[event["data"]["turn"]["session_id"]] = (at, event)
        return by_session

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            while not set(started) <= set(delivered()):
                receiver.changed.clear()
                await receiver.changed.wait()
    got = delivered()
    lags = [
        at - _epoch(event["data"]["turn"]["finished_at"])
        for sid, (at, event) in got.items()
        if sid in started
    ]
    waits, sends = await _parts(port, made_hook["id"], set(started))
    listening.should_exit = True
    await served
    return {
        "turns_measured": len(started),
        "turns_failed_to_start": len(errors),
        "errors": errors[:5],
        "rate_requested": s.rate,
        "rate_sent": round(total / sent_s, 1),
        "delivered": len(lags),
        "missing": len(set(started) - set(got)),
        "duplicates": sum(len(a) - 1 for a in receiver.arrived.values()),
        "lag_p50_ms": round(1000 * percentile(lags, 50), 2),
        "lag_p99_ms": round(1000 * percentile(lags, 99), 2),
        "lag_max_ms": round(1000 * percentile(lags, 100), 2),
        # the lag in two: waiting for a dispatcher to take it, then the attempt itself
        "claim_wait_p50_ms": round(1000 * percentile(waits, 50), 2),
        "claim_wait_p99_ms": round(1000 * percentile(waits, 99), 2),
        "send_p50_ms": round(percentile(sends, 50), 2),
        "send_p99_ms": round(percentile(sends, 99), 2),
        "window": window,
    }


async def _parts(port: int, webhook_id: str, sessions: set[str]) -> tuple[list[float], list[float]]:
    """From the delivery log: commit -> first attempt started (s), and its duration (ms)."""
    conn = await Connection.open(port)
    waits: list[float] = []
    sends: list[float] = []
    cursor = ""
    try:
        for _ in range(10_000):  # bounded: pages of 200
            path = f"/v1/webhooks/{webhook_id}/deliveries?limit=200{cursor}"
            page = await conn.json("GET", path)
            for d in page["data"]:
                if d["session_id"] in sessions and d["log"]:
                    first = d["log"][0]
                    waits.append(_epoch(first["at"]) - _epoch(d["created_at"]))
                    sends.append(first["duration_ms"])
            if not page["next_cursor"]:
                break
            cursor = f"&cursor={page['next_cursor']}"
    finally:
        conn.close()
    return waits, sends


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def summary(r: dict[str, Any]) -> list[str]:
    problems = []
    if r["missing"] or r["turns_failed_to_start"]:
        problems.append(f"{r['missing']} missing, {r['turns_failed_to_start']} not started")
    lines = [
        f"webhook delivery lag at {r['rate_requested']:g} turns/s (sent at {r['rate_sent']}/s, "
        f"{r['turns_measured']} turns measured): p50 {r['lag_p50_ms']} ms, "
        f"p99 {r['lag_p99_ms']} ms, max {r['lag_max_ms']} ms",
        f"  of which waiting for a dispatcher p50 {r['claim_wait_p50_ms']} ms, p99 "
        f"{r['claim_wait_p99_ms']} ms; the attempt p50 {r['send_p50_ms']} ms, p99 "
        f"{r['send_p99_ms']} ms",
        f"  delivered {r['delivered']}/{r['turns_measured']}, duplicates {r['duplicates']}; "
        f"server CPU {r.get('server_cpu_percent')}%"
        + (f"  [{'; '.join(problems)}]" if problems else ""),
    ]
    other = r.get("machine_cpu_percent", 0) - r.get("server_cpu_percent", 0)
    if other > OTHER_LOAD_WARN:
        lines.append(
            f"  WARNING: other processes (the load client among them) used ~{other:.0f}% CPU "
            "meanwhile; figures skewed"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 5 s window instead of 20 s")
    parser.add_argument("--rate", type=float, help="turns per second (default 100)")
    parser.add_argument("--seconds", type=float, help="the measured window (default 20)")
    parser.add_argument("--workers", type=int, default=128, help="server workers (default 128)")
    parser.add_argument("--profile", action="store_true", help="record the server with py-spy")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    overrides = {"rate": args.rate, "seconds": args.seconds}
    sizes = Sizes(**{**asdict(sizes), **{k: v for k, v in overrides.items() if v is not None}})
    name = "webhooks-quick" if args.quick else "webhooks"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: kill what we started
    raise_fd_limit()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    quiet = wait_for_quiet(QUIET_WAIT_S)
    print(f"running webhooks ({sizes.rate:g} turns/s for {sizes.seconds:g} s)…", flush=True)
    spy = RESULTS / f"{name}-{stamp}-profile.txt" if args.profile else None
    with Server(workers=args.workers, profile=spy, env=SERVER_ENV) as server:
        timeout = sizes.warmup_s + sizes.seconds + DRAIN_S + 120
        result = in_client_process(scenario, server.port, sizes, timeout=timeout)
        result = {**result, **server.cpu_percent(*result.pop("window"))}
    result |= {"workers": args.workers, "machine_busy_before_percent": quiet}
    print("\n".join(summary(result)))
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
