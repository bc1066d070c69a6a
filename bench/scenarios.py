"""The load each benchmark puts on the server. These functions run in a client process of their
own (see __main__), on uvloop, and return plain dicts of figures."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

import uvloop

from bench.client import Connection, Stream, create_agent, create_session, stream_turn

SETUP_CONNECTIONS = 16
TURN_TIMEOUT_S = 30.0  # a short turn that takes longer counts as an error


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of `values` (any order); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def ms_stats(values: Sequence[float], prefix: str) -> dict[str, float]:
    """p50, p99 and max of durations in seconds, as `<prefix>_p50_ms`... in milliseconds."""
    return {
        f"{prefix}_{name}_ms": round(1000 * percentile(values, p), 2)
        for name, p in (("p50", 50), ("p99", 99), ("max", 100))
    }


def _run(coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return uvloop.run(coro)  # type: ignore[arg-type]


def _ok(stream: Stream, tokens: int) -> bool:
    return stream.terminal == "turn.completed" and stream.tokens == tokens


async def _sessions(port: int, agent_id: str, count: int) -> list[str]:
    conns = [await Connection.open(port) for _ in range(SETUP_CONNECTIONS)]

    async def make(conn: Connection, n: int) -> list[str]:
        return [await create_session(conn, agent_id) for _ in range(n)]

    share = [count // len(conns) + (i < count % len(conns)) for i in range(len(conns))]
    made = await asyncio.gather(*(make(c, n) for c, n in zip(conns, share, strict=True)))
    for conn in conns:
        conn.close()
    return [sid for chunk in made for sid in chunk]


# --- the client process ------------------------------------------------------------------------


def _child(out: Pipe, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    try:
        out.send((True, fn(*args)))
    except BaseException:
        out.send((False, traceback.format_exc()))


def in_client_process(fn: Callable[..., dict[str, Any]], *args: Any, timeout: float) -> Any:
    """Run fn(*args) in a fresh process, so that the load client has an interpreter (and a
    core) of its own; the process is terminated if it overruns."""
    ctx = multiprocessing.get_context("spawn")
    answers, out = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(out, fn, args), daemon=True)
    proc.start()
    out.close()
    try:
        if not answers.poll(timeout):
            raise TimeoutError(f"client process still running after {timeout:.0f} s")
        try:
            ok, value = answers.recv()
        except EOFError:
            raise RuntimeError(f"client process died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(5)
    if not ok:
        raise RuntimeError(f"client process failed:\n{value}")
    return value


# --- 1. short-turn throughput -------------------------------------------------------------------


def throughput(
    port: int, clients: int, tokens: int, warmup_s: float, duration_s: float, per_session: int
) -> dict[str, Any]:
    return _run(_throughput(port, clients, tokens, warmup_s, duration_s, per_session))


async def _throughput(
    port: int, clients: int, tokens: int, warmup_s: float, duration_s: float, per_session: int
) -> dict[str, Any]:
    setup = await Connection.open(port)
    agent_id = await create_agent(setup, "bench-short", tokens, 0)
    conns = [await Connection.open(port) for _ in range(clients)]
    start = time.monotonic() + warmup_s
    end = start + duration_s
    counted: list[Stream] = []  # turns that ended inside [start, end]
    ran: list[Stream] = []  # every turn that ended, warm-up included
    errors: list[str] = []

    async def client(conn: Connection) -> None:
        session_id, turns = "", 0
        try:
            while time.monotonic() < end:
                if turns % per_session == 0:
                    session_id = await create_session(conn, agent_id)
                async with asyncio.timeout(TURN_TIMEOUT_S):
                    stream = await stream_turn(conn, session_id)
                turns += 1
                ran.append(stream)
                if start <= stream.ended <= end:
                    counted.append(stream)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    async def cpu_window() -> float:
        await asyncio.sleep(start - time.monotonic())
        cpu0 = time.process_time()
        await asyncio.sleep(end - time.monotonic())
        return time.process_time() - cpu0

    window = asyncio.create_task(cpu_window())
    await asyncio.gather(*(client(c) for c in conns))
    client_cpu = await window
    ok = [s for s in counted if _ok(s, tokens)]
    completed = [s for s in ran if s.terminal == "turn.completed"]
    return {
        "clients": clients,
        "tokens_per_turn": tokens,
        "duration_s": duration_s,
        "turns": len(counted),
        "turns_per_s": round(len(ok) / duration_s, 1),
        "turns_completed_per_s": round(
            sum(s.terminal == "turn.completed" for s in counted) / duration_s, 1
        ),
        "not_completed": len(counted) - len(ok),  # failed, cancelled or short of tokens
        "not_turn_completed": sum(s.terminal != "turn.completed" for s in counted),
        "errors": len(errors),
        "error_samples": errors[:3],
        **ms_stats([s.latency for s in ok], "latency"),
        # every turn of the run (warm-up included) that ended `turn.completed`: did its stream
        # carry the text live, as message.delta frames?
        "turns_run": len(ran),
        "turns_completed_run": len(completed),
        "streams_without_delta": sum(not s.frames for s in completed),
        "streams_with_partial_deltas": sum(bool(s.frames) and s.tokens < tokens for s in completed),
        "client_cpu_percent": round(100 * client_cpu / duration_s, 1),
        # what the client spends per turn, so how many turns/s one core of client could drive
        "client_cpu_us_per_turn": round(1e6 * client_cpu / len(counted), 1) if counted else None,
        "client_turns_per_core_s": round(len(counted) / client_cpu) if client_cpu > 0 else None,
        "window": [start, end],
    }


# --- 2. concurrent streams ----------------------------------------------------------------------


def streams(
    port: int, count: int, tokens: int, delay_ms: float, timeout_s: float
) -> dict[str, Any]:
    return _run(_streams(port, count, tokens, delay_ms, timeout_s))


async def _streams(
    port: int, count: int, tokens: int, delay_ms: float, timeout_s: float
) -> dict[str, Any]:
    setup = await Connection.open(port)
    agent_id = await create_agent(setup, f"bench-stream-{count}", tokens, delay_ms)
    session_ids = await _sessions(port, agent_id, count)
    conns = [await Connection.open(port) for _ in range(count)]
    await asyncio.sleep(0.5)  # let the server settle after the set-up burst

    async def one(conn: Connection, session_id: str) -> Stream:
        async with asyncio.timeout(timeout_s):
            return await stream_turn(conn, session_id)

    start, cpu0 = time.monotonic(), time.process_time()
    outcomes = await asyncio.gather(
        *(one(c, sid) for c, sid in zip(conns, session_ids, strict=True)), return_exceptions=True
    )
    end, client_cpu = time.monotonic(), time.process_time() - cpu0

    done = [s for s in outcomes if isinstance(s, Stream)]
    errors = [f"{type(e).__name__}: {e}" for e in outcomes if isinstance(e, BaseException)]
    ok = [s for s in done if _ok(s, tokens)]
    gaps = [gap for s in done for gap in s.gaps()]
    frames = sum(len(s.frames) for s in done)
    delivered = sum(s.tokens for s in done)
    started = [s.started for s in done if s.started is not None]
    return {
        "streams": count,
        "tokens_per_stream": tokens,
        "token_delay_ms": delay_ms,
        "completed": len(ok),
        "not_completed": count - len(ok),
        "errors": len(errors),
        "error_samples": errors[:3],
        # from the first POST written to the arrival of the last stream's `turn.started` frame
        "all_started_ms": (
            round(1000 * (max(started) - min(s.sent for s in done)), 1)
            if len(started) == count
            else None
        ),
        "not_started": count - len(started),
        **ms_stats([s.started - s.sent for s in done if s.started is not None], "started"),
        **ms_stats(gaps, "inter_token"),
        **ms_stats([s.first_token for s in done if s.first_token is not None], "first_token"),
        **ms_stats([s.latency for s in ok], "stream_duration"),
        "ideal_stream_duration_ms": tokens * delay_ms,
        "tokens_delivered": delivered,
        "tokens_per_frame": round(delivered / max(1, frames), 2),
        "start_spread_ms": round(1000 * (max(s.sent for s in done) - start), 1) if done else None,
        "wall_s": round(end - start, 2),
        "client_cpu_percent": round(100 * client_cpu / (end - start), 1),
        "client_cpu_us_per_frame": round(1e6 * client_cpu / frames, 1) if frames else None,
        "window": [start, end],
    }


# --- 3. time to first token ---------------------------------------------------------------------


def first_token(
    port: int, samples: int, warmup: int, tokens: int, delay_ms: float, pause_s: float
) -> dict[str, Any]:
    return _run(_first_token(port, samples, warmup, tokens, delay_ms, pause_s))


async def _first_token(
    port: int, samples: int, warmup: int, tokens: int, delay_ms: float, pause_s: float
) -> dict[str, Any]:
    conn = await Connection.open(port)
    agent_id = await create_agent(conn, "bench-ttft", tokens, delay_ms)
    session_ids = await _sessions(port, agent_id, warmup + samples)
    measured: list[Stream] = []
    start = time.monotonic()
    for i, session_id in enumerate(session_ids):
        await asyncio.sleep(pause_s)  # idle server: nothing else in flight
        async with asyncio.timeout(TURN_TIMEOUT_S):
            stream = await stream_turn(conn, session_id)
        if i >= warmup:
            measured.append(stream)
    ok = [s for s in measured if _ok(s, tokens) and s.first_token is not None]
    return {
        "samples": len(measured),
        "token_delay_ms": delay_ms,
        "not_completed": len(measured) - len(ok),
        **ms_stats([s.first_token for s in ok if s.first_token is not None], "first_token"),
        **ms_stats([s.latency for s in ok], "turn_latency"),
        "window": [start, time.monotonic()],
    }
