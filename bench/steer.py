"""Steer latency: from the 202 of `on_busy: "steer"` to the model call that sees the steer.

`python -m bench.steer [--quick] [--profile]`. A fake OpenAI provider (`python -m
tether.testing`, a process of its own) streams each turn's answer, `slow:N` (N tokens 10 ms
apart); once a few tokens reached the client, a steer is sent from another connection. The
turn's next model call is the one whose last user message is the steer: the fake records
when each call started and when the previous one's answer ended (one monotonic clock for all
the processes of the machine). Measured on an idle server, then on a fresh server with other
turns streaming meanwhile (read by a second client process).

Per steer, seconds after its 202 arrived:
- `model_call`: the model call that sees the steer started (the figure);
- `answer_end`: the answer in flight ended: a steer waits for the step boundary, by design;
- `after_boundary` (`model_call` - `answer_end`, from the end of the answer): what Tether
  adds: the final answer's checkpoint, the steer's delivery in it, and the next request;
- `steered_frame`: the `turn.steered` event reached the turn's stream;
and `answer`: the steer's POST to its 202 (the steer is stored by then).
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
from pathlib import Path
from typing import Any

import uvloop

from bench import goals, profile
from bench.__main__ import RESULTS, add_quiet_options, code_version, quiet_options
from bench.cancel import OTHER_LOAD_WARN, WORKERS, against_fake_provider, ms, skewed
from bench.client import Connection, create_session
from bench.server import raise_fd_limit, wait_for_quiet

ANSWER_TOKENS = 30  # the answer in flight: 30 tokens, 10 ms apart at the fake
TOKENS_BEFORE_STEER = 5  # the steer is sent once this many tokens of the answer arrived
TRIAL_TIMEOUT_S = 15.0
PAUSE_S = 0.05  # between two trials
QUIET_WAIT_S = 300.0


@dataclass(frozen=True)
class Sizes:
    steers: int = 100
    warmup: int = 5
    background: int = 200


FULL = Sizes()
QUICK = Sizes(steers=10, warmup=2, background=20)


@dataclass(slots=True)
class Trial:
    """One timed steer. Durations are seconds after its 202 arrived, but `answer_s`."""

    session_id: str = ""
    status: int = 0  # of the steer's answer
    joined: bool | None = None  # it joined the running turn (it should)
    answer_s: float | None = None  # the steer's POST -> its 202
    answer_end_s: float | None = None  # the answer in flight ended at the fake
    model_call_s: float | None = None  # the model call that sees the steer started
    steered_frame_s: float | None = None  # `turn.steered` reached the turn's stream
    model_calls: int = 0  # calls the fake served for the turn (2: the answer, then the steer's)
    terminal: str = ""  # the turn's last event
    error: str | None = None

    @property
    def after_boundary_s(self) -> float | None:
        if self.model_call_s is None or self.answer_end_s is None:
            return None
        return self.model_call_s - self.answer_end_s


async def calls_after(fake: Connection, index: int, count: int) -> list[dict[str, Any]]:
    """The fake's records of its calls from number `index` on, once `count` of them have
    ended (bounded)."""
    for _ in range(500):
        if not fake.open_:  # the fake closes connections idle for 5 s
            fake = await Connection.open(fake.port)
        calls = await fake.json("GET", f"/_calls?after={index}")
        if len(calls) >= count and all(c["closed_at"] is not None for c in calls[:count]):
            return list(calls)
        await asyncio.sleep(0.01)
    return []


async def steer_one(port: int, fake: Connection, call_index: int, session_id: str) -> Trial:
    """Stream a `slow:` answer; once a few tokens arrived, steer the turn from another
    connection, then follow the turn to its end."""
    tokens = 0
    steered_at: float | None = None
    terminal = ""
    enough = asyncio.Event()

    def on_event(event: str, data: bytes, at: float) -> None:
        nonlocal tokens, steered_at, terminal
        if event == "message.delta":
            tokens += json.loads(data)["data"]["delta"].count(" ")
            if tokens >= TOKENS_BEFORE_STEER:
                enough.set()
        elif event == "turn.steered":
            steered_at = at
        elif event.startswith("turn.") and event in TERMINAL:
            terminal = event

    trial = Trial(session_id=session_id)
    text = f"steer {session_id}"
    stream, control = await Connection.open(port), await Connection.open(port)
    turn: asyncio.Task[tuple[int, bytes]] | None = None
    try:
        async with asyncio.timeout(TRIAL_TIMEOUT_S):
            path = f"/v1/sessions/{session_id}/turns"
            body = {"input": f"slow:{ANSWER_TOKENS}", "stream": True}
            turn = asyncio.create_task(stream.request("POST", path, body, on_event=on_event))
            turn.add_done_callback(lambda _: enough.set())
            await enough.wait()
            if turn.done():
                status, raw = turn.result()
                raise RuntimeError(f"the turn ended before the steer: {status} {raw[:200]!r}")
            sent = time.monotonic()
            trial.status, raw = await control.request(
                "POST", path, {"input": text, "on_busy": "steer"}
            )
            answered = time.monotonic()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                trial.joined = bool(json.loads(raw)["steer"]["joined"])
            await turn
            calls = await calls_after(fake, call_index, 2)
    except (TimeoutError, OSError, RuntimeError) as exc:
        trial.error = f"{type(exc).__name__}: {exc}"
        return trial
    finally:
        if turn is not None:
            turn.cancel()
        stream.close()
        control.close()
    trial.answer_s = answered - sent
    trial.terminal = terminal
    trial.model_calls = len(calls)
    trial.steered_frame_s = steered_at - answered if steered_at is not None else None
    answer = next((c for c in calls if c["command"].startswith("slow:")), None)
    steered = next((c for c in calls if c["command"] == text), None)
    if answer is None or steered is None:
        trial.error = f"the fake saw no call for the answer or the steer: {calls}"
        return trial
    trial.answer_end_s = answer["closed_at"] - answered
    trial.model_call_s = steered["started"] - answered
    return trial


TERMINAL = ("turn.completed", "turn.failed", "turn.cancelled")


def steers(port: int, fake_port: int, count: int, warmup: int) -> dict[str, Any]:
    return uvloop.run(_steers(port, fake_port, count, warmup))


async def _steers(port: int, fake_port: int, count: int, warmup: int) -> dict[str, Any]:
    setup = await Connection.open(port)
    model = {
        "provider": "openai",
        "model": "fake-1",
        "base_url": f"http://127.0.0.1:{fake_port}/v1",
    }
    agent = await setup.json("POST", "/v1/agents", {"name": "steered", "model": model, "tools": []})
    setup.close()
    measured: list[dict[str, Any]] = []
    start, cpu0 = time.monotonic(), time.process_time()
    for i in range(warmup + count):
        await asyncio.sleep(PAUSE_S)
        # fresh connections: both servers close keep-alive connections idle for 5 s
        setup, fake = await Connection.open(port), await Connection.open(fake_port)
        try:
            session_id = await create_session(setup, agent["id"])
            calls = len(await fake.json("GET", "/_calls"))
            trial = await steer_one(port, fake, calls, session_id)
        finally:
            setup.close()
            fake.close()
        if i >= warmup:
            measured.append({**asdict(trial), "after_boundary_s": trial.after_boundary_s})
    end, cpu = time.monotonic(), time.process_time() - cpu0
    return {
        "trials": measured,
        "client_cpu_percent": round(100 * cpu / (end - start), 1),
        "window": [start, end],
    }


# --- figures ---------------------------------------------------------------------------------


def figures(raw: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in raw if t["error"] is None]

    def durations(key: str) -> list[float]:
        return [t[key] for t in ok if t[key] is not None]

    return {
        "steers": len(raw),
        "errors": len(raw) - len(ok),
        "error_samples": [t["error"] for t in raw if t["error"]][:3],
        "not_joined": sum(t["joined"] is not True for t in ok),
        "not_202": sum(t["status"] != 202 for t in ok),
        "not_completed": sum(t["terminal"] != "turn.completed" for t in ok),
        "not_two_model_calls": sum(t["model_calls"] != 2 for t in ok),
        **ms(durations("model_call_s"), "model_call"),
        **ms(durations("answer_end_s"), "answer_end"),
        **ms(durations("after_boundary_s"), "after_boundary"),
        **ms(durations("steered_frame_s"), "steered_frame"),
        **ms(durations("answer_s"), "answer"),
    }


def problem(r: dict[str, Any]) -> str | None:
    """Why the figures cannot be trusted as measured, if they cannot."""
    wrong = {
        "errors": "trials failed",
        "not_joined": "steers did not join the running turn",
        "not_202": "steers not answered 202",
        "not_completed": "turns did not complete",
        "not_two_model_calls": "turns without exactly two model calls",
    }
    found = [f"{r[key]} {what}" for key, what in wrong.items() if r[key]]
    return "; ".join(found) or None


def summary(name: str, r: dict[str, Any]) -> list[str]:
    lines = [
        f"{name}: {r['steers']} steers, errors {r['errors']} {r['error_samples'] or ''}, "
        f"not joined {r['not_joined']}, turns not completed {r['not_completed']}".rstrip()
    ]
    for key, label in (
        ("model_call", "202 -> model call sees it"),
        ("answer_end", "202 -> answer in flight ends"),
        ("after_boundary", "answer end -> model call"),
        ("steered_frame", "202 -> turn.steered frame"),
        ("answer", "POST -> 202"),
    ):
        lines.append(
            f"  {label:<29} p50 {r[f'{key}_p50_ms']:8.2f}  p95 {r[f'{key}_p95_ms']:8.2f}  "
            f"p99 {r[f'{key}_p99_ms']:8.2f}  max {r[f'{key}_max_ms']:8.2f} ms"
        )
    lines.append(
        f"  CPU: server {r['server_cpu_percent']}%, steer client {r['client_cpu_percent']}%, "
        f"fake provider {r['fake_provider_cpu_percent']}%, machine {r['machine_cpu_percent']}%"
    )
    if load := r.get("background"):
        lines.append(
            f"  background: {load['streams']} streams, {load['tokens_per_s']} tokens/s "
            f"(ideal {load['ideal_tokens_per_s']}), inter-token p99 {load['inter_token_p99_ms']} "
            f"ms, errors {load['errors']}"
        )
    return lines + skewed(r)


def figure_lines(report: dict[str, Any], scenarios: list[str]) -> list[goals.Figure]:
    out = []
    for scenario in scenarios:
        r = report[scenario]
        for key, label in (
            ("model_call", f"steer: 202 -> the model call that sees it ({scenario})"),
            ("after_boundary", f"steer: answer in flight ends -> that call ({scenario})"),
        ):
            for p in ("p50", "p99"):
                out.append(
                    goals.Figure(
                        name=f"steer.{scenario}.{key}_{p}",
                        label=f"{label}, {p}",
                        value=r[f"{key}_{p}_ms"],
                        unit="ms",
                        problem=problem(r),
                        skewed=bool(skewed(r)),
                        source=f"{scenario}.{key}_{p}_ms",
                    )
                )
    return out


# --- running it ------------------------------------------------------------------------------


def run_scenario(sizes: Sizes, loaded: bool, spy: Path | None, wait_s: float) -> dict[str, Any]:
    quiet = wait_for_quiet(wait_s, OTHER_LOAD_WARN) if wait_s > 0 else None
    timeout = 120 + sizes.steers * TRIAL_TIMEOUT_S / 5
    background = sizes.background if loaded else 0
    trial = (steers, sizes.steers, sizes.warmup, "trials")
    return against_fake_provider(trial, figures, background, spy, timeout) | {
        "machine_busy_before_percent": quiet
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 steers, 20 background streams")
    parser.add_argument("--profile", action="store_true", help="record the server with py-spy")
    parser.add_argument("--idle-only", action="store_true", help="skip the loaded scenario")
    add_quiet_options(parser, wait_s=QUIET_WAIT_S)
    args = parser.parse_args(argv)
    wait_s, retries = quiet_options(args, QUIET_WAIT_S)
    sizes = QUICK if args.quick else FULL
    name = "steer-quick" if args.quick else "steer"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: kill what we started
    raise_fd_limit()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    spy_dir = RESULTS / f"{name}-{stamp}-profile"
    report: dict[str, Any] = {"name": name, "timestamp": stamp, "code": code_version()}
    report["sizes"] = asdict(sizes) | {
        "workers": WORKERS,
        "answer_tokens": ANSWER_TOKENS,
        "answer_token_ms": 10,
        "tokens_before_steer": TOKENS_BEFORE_STEER,
    }
    scenarios = [("idle", False)]
    if not args.idle_only:
        scenarios.append((f"{sizes.background}_streams", True))
    for scenario, loaded in scenarios:
        print(f"running {scenario}…", flush=True)
        spy = spy_dir / f"{scenario}.txt" if args.profile else None
        for attempt in range(1 + retries):
            report[scenario] = result = run_scenario(sizes, loaded, spy, wait_s)
            result["attempt"] = attempt + 1
            print("\n".join(summary(scenario, result)))
            if not skewed(result):
                break
        if spy:
            print("\n".join(profile.report(spy)))
    lines = figure_lines(report, [s for s, _ in scenarios])
    report["figures"] = goals.as_json(lines)
    print("figures:")
    print("\n".join(f.line() for f in lines))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
