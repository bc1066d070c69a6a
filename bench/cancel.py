"""Cancel latency: how fast POST /v1/sessions/{sid}/interrupt stops a streaming turn.

`python -m bench.cancel [--quick] [--profile]`; bench/CONTROL.md says what is measured.
A fake OpenAI provider (`python -m tether.testing`) streams the victim turns' tokens. The stops
are timed from a client process of their own, on an idle server, then on a fresh server with
other turns streaming meanwhile (read by a second client process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from types import TracebackType
from typing import Any

import uvloop

from bench import bustap, goals, procs, profile
from bench.__main__ import RESULTS, add_quiet_options, code_version, quiet_options
from bench.client import Connection, Stream, create_session, stream_turn
from bench.scenarios import in_client_process, percentile
from bench.server import Server, free_port, raise_fd_limit, wait_for_quiet

WORKERS = 600
TOKENS_BEFORE_STOP = 5  # the stop is sent once this many tokens of the victim turn arrived
STOP_WAIT_S = 5  # the interrupt's `wait`
TRIAL_TIMEOUT_S = 15.0
PAUSE_S = 0.05  # between two stops
LOAD_TOKENS = 100_000  # background turns outlast the run; they are stopped at the end
LOAD_DELAY_MS = 20.0
LOAD_READY_S = 60.0  # the background turns must all be running within this
LOAD_SETTLE_S = 2.0  # then stream this long before the stops begin
LOAD_MAX_S = 900.0  # they are stopped after this at the latest
QUIET_WAIT_S = 300.0  # before each scenario, wait this long at most for other load to end
OTHER_LOAD_WARN = 15.0  # % of a core used by other processes during a scenario
STEAL_WARN = 10.0  # % of a core the hypervisor gave to other guests during a scenario
TAP_LINGER_S = 1.0  # the bus tap keeps listening this long after the last stop


@dataclass(frozen=True)
class Sizes:
    stops: int = 200
    warmup: int = 5
    background: int = 200


FULL = Sizes()
QUICK = Sizes(stops=20, warmup=2, background=20)


# --- the fake provider ------------------------------------------------------------------------


class FakeProvider:
    """`python -m tether.testing` as a separate process; killed on exit."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FakeProvider:
        cmd = [sys.executable, "-m", "tether.testing", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        url = f"http://127.0.0.1:{self.port}/_calls"
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
                return self
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("the fake provider did not start")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        procs.stop(self.proc)


# --- the stops (in a client process) ----------------------------------------------------------


@dataclass(slots=True)
class Stop:
    """One timed stop. Durations are seconds after the interrupt was sent (t0)."""

    session_id: str = ""
    status: int = 0  # of the interrupt's answer
    turn_status: str = ""  # in that answer
    answer_s: float | None = None  # (a) the answer arrived
    cancelled_frame_s: float | None = None  # (b) `turn.cancelled` arrived on the turn's stream
    provider_closed_s: float | None = None  # (c) the fake provider saw its connection close
    provider_chunks: int = 0  # tokens the fake sent for this turn
    provider_finished: bool = False  # the fake sent its whole answer (it should not)
    tokens_seen: int = 0  # tokens that reached the client in all
    tokens_after_stop: int = 0  # arrived after t0 (may have been in flight)
    tokens_after_answer: int = 0  # arrived after the answer: should be 0
    # cluster mode, from the bus tap (None without one): the turn's live tokens published on
    # the bus after its terminal event, until the end of the scenario
    bus_saw_terminal: bool | None = None
    tokens_published_after_end: int | None = None
    last_published_after_end_s: float | None = None  # the last of them, after the end
    error: str | None = None


async def provider_call(fake: Connection, index: int) -> dict[str, Any] | None:
    """The fake's record of its call number `index`, once that connection closed (bounded)."""
    for _ in range(200):
        if not fake.open_:  # the fake closes connections idle for 5 s (a slow trial)
            fake = await Connection.open(fake.port)
        calls = await fake.json("GET", f"/_calls?after={index}")
        if calls and calls[0]["closed_at"] is not None:
            return dict(calls[0])
        await asyncio.sleep(0.01)
    return None


async def stop_one(port: int, fake: Connection, call_index: int, session_id: str) -> Stop:
    """Stream a `slow:` turn; once a few tokens arrived, stop it from another connection."""
    deltas: list[tuple[float, int]] = []  # (arrival, tokens)
    cancelled_at: float | None = None
    enough = asyncio.Event()

    def on_event(event: str, data: bytes, at: float) -> None:
        nonlocal cancelled_at
        if event == "message.delta":
            deltas.append((at, json.loads(data)["data"]["delta"].count(" ")))
            if sum(n for _, n in deltas) >= TOKENS_BEFORE_STOP:
                enough.set()
        elif event == "turn.cancelled":
            cancelled_at = at

    stop = Stop(session_id=session_id)
    stream, control = await Connection.open(port), await Connection.open(port)
    turn: asyncio.Task[tuple[int, bytes]] | None = None
    try:
        async with asyncio.timeout(TRIAL_TIMEOUT_S):
            body = {"input": "slow:100000", "stream": True}
            path = f"/v1/sessions/{session_id}/turns"
            turn = asyncio.create_task(stream.request("POST", path, body, on_event=on_event))
            turn.add_done_callback(lambda _: enough.set())
            await enough.wait()
            if turn.done():
                status, raw = turn.result()
                raise RuntimeError(f"the turn ended before the stop: {status} {raw[:200]!r}")
            t0 = time.monotonic()
            path = f"/v1/sessions/{session_id}/interrupt"
            stop.status, raw = await control.request("POST", path, {"wait": STOP_WAIT_S})
            answered = time.monotonic()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                stop.turn_status = json.loads(raw)["turn"]["status"]
            await turn
            call = await provider_call(fake, call_index)
    except (TimeoutError, OSError, RuntimeError) as exc:
        stop.error = f"{type(exc).__name__}: {exc}"
        return stop
    finally:
        if turn is not None:
            turn.cancel()
        stream.close()
        control.close()
    stop.answer_s = answered - t0
    stop.cancelled_frame_s = cancelled_at - t0 if cancelled_at is not None else None
    if call is not None:
        stop.provider_closed_s = call["closed_at"] - t0  # the same clock in every process
        stop.provider_chunks, stop.provider_finished = call["chunks"], call["finished"]
    stop.tokens_seen = sum(n for _, n in deltas)
    stop.tokens_after_stop = sum(n for at, n in deltas if at > t0)
    stop.tokens_after_answer = sum(n for at, n in deltas if at >= answered)
    return stop


def stops(
    port: int, fake_port: int, count: int, warmup: int, bus: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The timed stops; with `bus` (a Redis URL and the deployment's bus prefix), a tap on
    each victim session's channel as well."""
    return uvloop.run(_stops(port, fake_port, count, warmup, bus))


async def _stops(
    port: int, fake_port: int, count: int, warmup: int, bus: tuple[str, str] | None
) -> dict[str, Any]:
    tap = bustap.BusTap(*bus) if bus else None
    try:
        result = await _timed_stops(port, fake_port, count, warmup, tap)
        if tap is not None:
            await asyncio.sleep(TAP_LINGER_S)  # a worker still publishing shows meanwhile
    finally:
        if tap is not None:
            await tap.close()
    if tap is not None:
        for stop in result["stops"]:
            late = bustap.after_end(tap.log.get(stop["session_id"], []))
            stop["bus_saw_terminal"] = late.terminal_seen
            stop["tokens_published_after_end"] = late.tokens
            stop["last_published_after_end_s"] = late.last_after_s
        result["bus_tap_undecodable"] = tap.undecodable
    return result


async def _timed_stops(
    port: int, fake_port: int, count: int, warmup: int, tap: bustap.BusTap | None
) -> dict[str, Any]:
    setup = await Connection.open(port)
    base_url = f"http://127.0.0.1:{fake_port}/v1"  # FakeProvider.url
    model = {"provider": "openai", "model": "fake-1", "base_url": base_url}
    agent = await setup.json("POST", "/v1/agents", {"name": "victim", "model": model, "tools": []})
    setup.close()
    measured: list[Stop] = []
    start, cpu0 = time.monotonic(), time.process_time()
    for i in range(warmup + count):
        await asyncio.sleep(PAUSE_S)
        # fresh connections: both servers close keep-alive connections idle for 5 s
        setup, fake = await Connection.open(port), await Connection.open(fake_port)
        try:
            session_id = await create_session(setup, agent["id"])
            if tap is not None:
                await tap.watch(session_id)
            calls = len(await fake.json("GET", "/_calls"))
            stop = await stop_one(port, fake, calls, session_id)
        finally:
            setup.close()
            fake.close()
        if i >= warmup:
            measured.append(stop)
    end, cpu = time.monotonic(), time.process_time() - cpu0
    return {
        "stops": [asdict(s) for s in measured],
        "client_cpu_percent": round(100 * cpu / (end - start), 1),
        "window": [start, end],
    }


# --- the background load (in another client process) ------------------------------------------


async def _running_turns(conn: Connection) -> int:
    """Sessions with a running turn, through the API (so on any node, with or without
    workers)."""
    count, cursor = 0, ""
    while True:
        page = await conn.json("GET", f"/v1/sessions?status=running&limit=100{cursor}")
        count += len(page["data"])
        if not page.get("next_cursor"):
            return count
        cursor = f"&cursor={page['next_cursor']}"


async def _background(pipe: Pipe, port: int, count: int) -> dict[str, Any]:
    setup = await Connection.open(port)
    model = {
        "provider": "scripted",
        "reply": "echo",
        "tokens": LOAD_TOKENS,
        "token_delay_ms": LOAD_DELAY_MS,
    }
    agent = await setup.json("POST", "/v1/agents", {"name": "load", "model": model, "tools": []})
    session_ids = [await create_session(setup, agent["id"]) for _ in range(count)]
    conns = [await Connection.open(port) for _ in session_ids]
    turns = [
        asyncio.create_task(stream_turn(conn, sid, "x"))
        for conn, sid in zip(conns, session_ids, strict=True)
    ]
    for _ in range(int(LOAD_READY_S / 0.2)):
        if await _running_turns(setup) >= count:
            break
        await asyncio.sleep(0.2)
    else:
        raise TimeoutError(f"the {count} background turns are not all running")
    await asyncio.sleep(LOAD_SETTLE_S)
    start, cpu0 = time.monotonic(), time.process_time()
    pipe.send(("ready", None))
    await asyncio.to_thread(pipe.poll, LOAD_MAX_S)  # until told to stop
    end, client_cpu = time.monotonic(), time.process_time() - cpu0
    setup = await Connection.open(port)  # the server closes idle keep-alive connections
    async with asyncio.timeout(120):
        for sid in session_ids:  # not waiting for each: their streams say when they end
            await setup.json("POST", f"/v1/sessions/{sid}/interrupt", {"wait": 0})
        outcomes = await asyncio.gather(*turns, return_exceptions=True)
    done = [s for s in outcomes if isinstance(s, Stream)]
    window = [(at, n) for s in done for at, n in s.frames if start <= at <= end]
    gaps = [g for s in done for g in _gaps_inside(s, start, end)]
    return {
        "streams": count,
        "token_delay_ms": LOAD_DELAY_MS,
        "cancelled_at_end": sum(s.terminal == "turn.cancelled" for s in done),
        "errors": len(outcomes) - len(done),
        "tokens_per_s": round(sum(n for _, n in window) / (end - start), 1),
        "ideal_tokens_per_s": round(count * 1000 / LOAD_DELAY_MS, 1),
        **ms(gaps, "inter_token"),
        "client_cpu_percent": round(100 * client_cpu / (end - start), 1),
        "window": [start, end],
    }


def _gaps_inside(stream: Stream, start: float, end: float) -> list[float]:
    frames = [(at, n) for at, n in stream.frames if start <= at <= end]
    return Stream(frames=frames).gaps()


def _background_child(pipe: Pipe, port: int, count: int) -> None:
    try:
        pipe.send(("done", uvloop.run(_background(pipe, port, count))))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))


class Background:
    """`count` turns streaming from a client process of their own while the block runs."""

    def __init__(self, port: int, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_background_child, args=(child, port, count), daemon=True)
        self.result: dict[str, Any] = {}

    def _receive(self, timeout: float, expected: str) -> Any:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"background load: no {expected!r} after {timeout:.0f} s")
        kind, value = self.pipe.recv()
        if kind != expected:
            raise RuntimeError(f"background load failed:\n{value}")
        return value

    def __enter__(self) -> Background:
        self.proc.start()
        try:
            self._receive(LOAD_READY_S + 60, "ready")
        except BaseException:
            self.proc.terminate()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self.pipe.send("stop")
                self.result = self._receive(90, "done")
        finally:
            if self.proc.is_alive():
                self.proc.terminate()
            self.proc.join(5)


# --- figures ---------------------------------------------------------------------------------


def ms(values: Sequence[float], prefix: str) -> dict[str, float]:
    """p50, p95, p99 and max of durations in seconds, in milliseconds."""
    return {
        f"{prefix}_{name}_ms": round(1000 * percentile(values, p), 2)
        for name, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
    }


def figures(raw: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s for s in raw if s["error"] is None]
    confirmed = [s for s in ok if s["status"] == 200 and s["turn_status"] == "cancelled"]

    def durations(key: str) -> list[float]:
        return [s[key] for s in ok if s[key] is not None]

    return {
        "stops": len(raw),
        "errors": len(raw) - len(ok),
        "error_samples": [s["error"] for s in raw if s["error"]][:3],
        "confirmed_200_cancelled": len(confirmed),
        "other_answers": sorted(
            {f"{s['status']} {s['turn_status']}" for s in ok} - {"200 cancelled"}
        ),
        **ms(durations("answer_s"), "answer"),
        **ms(durations("cancelled_frame_s"), "cancelled_frame"),
        **ms(durations("provider_closed_s"), "provider_closed"),
        "provider_not_closed": sum(s["provider_closed_s"] is None for s in ok),
        "provider_finished": sum(s["provider_finished"] for s in ok),
        "tokens_after_stop_total": sum(s["tokens_after_stop"] for s in ok),
        "tokens_after_stop_max": max((s["tokens_after_stop"] for s in ok), default=0),
        "tokens_after_answer_total": sum(s["tokens_after_answer"] for s in ok),
        "stops_with_tokens_after_answer": sum(s["tokens_after_answer"] > 0 for s in ok),
        "provider_tokens_never_delivered": sum(s["provider_chunks"] - s["tokens_seen"] for s in ok),
        **published_after_end(ok),
    }


def published_after_end(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """The bus tap's figures (cluster mode); None without a tap."""
    keys = (
        "tokens_published_after_cancelled_total",
        "tokens_published_after_cancelled_max",
        "stops_with_tokens_published_after_cancelled",
        "last_published_after_cancelled_max_ms",
        "bus_tap_missed_terminal",
    )
    tapped = [s for s in ok if s["bus_saw_terminal"] is not None]
    if not tapped:
        return dict.fromkeys(keys, None)
    seen = [s for s in tapped if s["bus_saw_terminal"]]
    late = [s["tokens_published_after_end"] for s in seen]
    last = [s["last_published_after_end_s"] for s in seen if s["last_published_after_end_s"]]
    values = (
        sum(late),
        max(late, default=0),
        sum(n > 0 for n in late),
        round(1000 * max(last), 2) if last else None,
        len(tapped) - len(seen),
    )
    return dict(zip(keys, values, strict=True))


def summary(name: str, r: dict[str, Any]) -> list[str]:
    lines = [
        f"{name}: {r['stops']} stops, {r['confirmed_200_cancelled']} answered 200 cancelled, "
        f"errors {r['errors']} {r['error_samples'] or ''} {r['other_answers'] or ''}".rstrip()
    ]
    for key, label in (
        ("answer", "(a) 200 answer"),
        ("cancelled_frame", "(b) turn.cancelled frame"),
        ("provider_closed", "(c) provider closed"),
    ):
        lines.append(
            f"  {label:<25} p50 {r[f'{key}_p50_ms']:7.2f}  p95 {r[f'{key}_p95_ms']:7.2f}  "
            f"p99 {r[f'{key}_p99_ms']:7.2f}  max {r[f'{key}_max_ms']:7.2f} ms"
        )
    lines.append(
        f"  tokens after the stop was sent: {r['tokens_after_stop_total']} "
        f"(max {r['tokens_after_stop_max']}/stop); after the 200 answer: "
        f"{r['tokens_after_answer_total']} ({r['stops_with_tokens_after_answer']} stops)"
    )
    if r.get("tokens_published_after_cancelled_total") is not None:
        lines.append(
            "  bus: tokens published after turn.cancelled "
            f"{r['tokens_published_after_cancelled_total']} "
            f"(max {r['tokens_published_after_cancelled_max']}/stop, "
            f"{r['stops_with_tokens_published_after_cancelled']} stops, the last "
            f"{r['last_published_after_cancelled_max_ms']} ms after); turn.cancelled not seen "
            f"{r['bus_tap_missed_terminal']}, undecodable messages {r.get('bus_tap_undecodable')}"
        )
    lines.append(
        f"  provider: finished {r['provider_finished']}, never closed "
        f"{r['provider_not_closed']}, tokens sent but never delivered "
        f"{r['provider_tokens_never_delivered']}"
    )
    lines.append(
        f"  CPU: server {r['server_cpu_percent']}%, stop client {r['client_cpu_percent']}%, "
        f"fake provider {r['fake_provider_cpu_percent']}%, machine {r['machine_cpu_percent']}%"
    )
    if load := r.get("background"):
        lines.append(
            f"  background: {load['streams']} streams, {load['tokens_per_s']} tokens/s "
            f"(ideal {load['ideal_tokens_per_s']}), inter-token p50 {load['inter_token_p50_ms']} "
            f"p99 {load['inter_token_p99_ms']} ms; cancelled at the end "
            f"{load['cancelled_at_end']}/{load['streams']}, errors {load['errors']}, "
            f"client CPU {load['client_cpu_percent']}%"
        )
    return lines + skewed(r)


def skewed(r: dict[str, Any]) -> list[str]:
    """Warnings when something else took CPU during the scenario: other processes, or the
    hypervisor (steal time)."""
    out = []
    if r["other_cpu_percent"] >= OTHER_LOAD_WARN:
        out.append(f"  WARNING: other processes used ~{r['other_cpu_percent']:.0f}% CPU meanwhile")
    if r.get("machine_steal_percent", 0) >= STEAL_WARN:
        out.append(f"  WARNING: the hypervisor stole ~{r['machine_steal_percent']:.0f}% CPU")
    return out


# --- running it ------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_scenario(sizes: Sizes, loaded: bool, spy: Path | None, wait_s: float) -> dict[str, Any]:
    quiet = wait_for_quiet(wait_s, OTHER_LOAD_WARN) if wait_s > 0 else None
    timeout = 120 + sizes.stops * (TRIAL_TIMEOUT_S / 10)
    background = sizes.background if loaded else 0
    trial = (stops, sizes.stops, sizes.warmup, "stops")
    return against_fake_provider(trial, figures, background, spy, timeout) | {
        "machine_busy_before_percent": quiet
    }


def against_fake_provider(
    trial: tuple[Any, int, int, str],
    summarize: Any,
    background: int,
    spy: Path | None,
    timeout: float,
) -> dict[str, Any]:
    """A server driving the fake provider (a process of its own), `trial` = (the client's
    function, trials, warm-up ones, the key of its trials in what it answers) run in a client
    process, with `background` other streams from a second one (0: none); answers
    `summarize(trials)` with the server's, the fake's, the clients' and the machine's CPU."""
    client, count, warmup, key = trial
    with (
        FakeProvider() as fake,
        # the fake is on loopback: allowed as a provider destination, as an operator would
        Server(workers=WORKERS, profile=spy, env={"TETHER_PROVIDER_BASE_URLS": fake.url}) as server,
    ):
        assert fake.proc is not None
        args = (server.port, fake.port, count, warmup)
        load: Background | None = None
        fake_cpu0, began = cpu_s(fake.proc.pid), time.monotonic()
        if background:
            with Background(server.port, background) as load:
                raw = in_client_process(client, *args, timeout=timeout)
        else:
            raw = in_client_process(client, *args, timeout=timeout)
        fake_cpu = 100 * (cpu_s(fake.proc.pid) - fake_cpu0) / (time.monotonic() - began)
        result = {**summarize(raw[key]), **server.stats(*raw["window"])}
    result |= {
        "client_cpu_percent": raw["client_cpu_percent"],
        "fake_provider_cpu_percent": round(fake_cpu, 1),
    }
    mine = result["server_cpu_percent"] + result["client_cpu_percent"] + fake_cpu
    if load is not None:
        load.result.pop("window")
        result["background"] = load.result
        mine += load.result["client_cpu_percent"]
    result["other_cpu_percent"] = round(result["machine_cpu_percent"] - mine, 1)
    result["raw"] = raw[key]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cancel", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 stops, 20 background streams")
    parser.add_argument("--profile", action="store_true", help="record the server with py-spy")
    add_quiet_options(parser, wait_s=QUIET_WAIT_S)
    args = parser.parse_args(argv)
    wait_s, retries = quiet_options(args, QUIET_WAIT_S)
    sizes = QUICK if args.quick else FULL
    name = "cancel-quick" if args.quick else "cancel"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: kill what we started
    raise_fd_limit()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    spy_dir = RESULTS / f"{name}-{stamp}-profile"
    report: dict[str, Any] = {"name": name, "timestamp": stamp, "code": code_version()}
    report["sizes"] = asdict(sizes) | {"workers": WORKERS, "tokens_before_stop": TOKENS_BEFORE_STOP}
    loaded_key = f"{sizes.background}_streams"
    was_skewed: dict[str, bool] = {}
    for scenario, loaded in (("idle", False), (loaded_key, True)):
        print(f"running {scenario}…", flush=True)
        spy = spy_dir / f"{scenario}.txt" if args.profile else None
        for attempt in range(1 + retries):
            report[scenario] = result = run_scenario(sizes, loaded, spy, wait_s)
            result["attempt"] = attempt + 1
            print("\n".join(summary(scenario, result)))
            was_skewed["loaded" if loaded else "idle"] = bool(skewed(result))
            if not skewed(result):
                break
        if spy:
            print("\n".join(profile.report(spy)))
    figures = goals.stops(
        "embedded", report["idle"], report[loaded_key], was_skewed, ("idle", loaded_key)
    )
    report["figures"] = goals.as_json(figures)
    print("\n".join(goals.summary(figures, args.quick)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
