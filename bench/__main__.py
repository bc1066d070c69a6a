"""Run Tether's benchmarks: `python -m bench [--only throughput,streams,first_token] [--quick]`.

Each benchmark starts its own `tether serve` process and drives it from a separate client
process; figures go to stdout and to bench/results/<name>-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import goals, profile, scenarios
from bench.scenarios import in_client_process
from bench.server import Server, raise_fd_limit, wait_for_quiet

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = ("throughput", "streams", "first_token")
OTHER_LOAD_WARN = 15.0  # % of a core used by other processes during a run
CLIENT_BOUND_WARN = 85.0  # % of a core used by the load client


@dataclass(frozen=True)
class Sizes:
    clients: int = 32
    short_tokens: int = 20
    warmup_s: float = 3.0
    duration_s: float = 20.0
    turns_per_session: int = 20
    stream_counts: tuple[int, ...] = (500, 1000)
    stream_tokens: int = 200
    stream_delay_ms: float = 20.0
    ttft_samples: int = 200
    ttft_warmup: int = 10
    ttft_pause_s: float = 0.02
    # A token delay of 0 would publish the whole reply before the SSE writer gets to run, so
    # the "first" token would arrive with the last; 1 ms makes the model yield before each.
    ttft_token_delay_ms: float = 1.0


FULL = Sizes()
QUICK = Sizes(warmup_s=1.0, duration_s=3.0, stream_counts=(50, 100), ttft_samples=30)


@dataclass(frozen=True)
class Spy:
    """Where py-spy should write each benchmark's stacks; no `dir`: no profiling."""

    dir: Path | None

    def __call__(self, label: str) -> Path | None:
        return self.dir / f"{label}.txt" if self.dir else None


def with_server_stats(result: dict[str, Any], server: Server) -> dict[str, Any]:
    start, end = result.pop("window")
    out = {**result, **server.stats(start, end)}
    if "tokens_delivered" in result:
        cpu = server.cpu_seconds(start, end)
        tokens = result["tokens_delivered"]
        per_token = round(1e6 * cpu / tokens, 1) if cpu is not None and tokens else None
        out["server_cpu_us_per_token"] = per_token
    return out


def run_throughput(s: Sizes, spy: Spy) -> dict[str, Any]:
    with Server(workers=128, profile=spy("throughput")) as server:
        args = (s.clients, s.short_tokens, s.warmup_s, s.duration_s, s.turns_per_session)
        timeout = s.warmup_s + s.duration_s + 120
        result = in_client_process(scenarios.throughput, server.port, *args, timeout=timeout)
        return with_server_stats(result, server)


def run_streams(s: Sizes, spy: Spy) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for count in s.stream_counts:
        with Server(workers=count + 100, profile=spy(f"streams-{count}")) as server:
            timeout = 120 + s.stream_tokens * s.stream_delay_ms / 1000
            args = (count, s.stream_tokens, s.stream_delay_ms, timeout)
            result = in_client_process(scenarios.streams, server.port, *args, timeout=timeout + 60)
            out[str(count)] = with_server_stats(result, server)
    return out


def run_first_token(s: Sizes, spy: Spy) -> dict[str, Any]:
    with Server(workers=128, profile=spy("first_token")) as server:
        args = (s.ttft_samples, s.ttft_warmup, s.short_tokens, s.ttft_token_delay_ms)
        result = in_client_process(
            scenarios.first_token, server.port, *args, s.ttft_pause_s, timeout=300
        )
        return with_server_stats(result, server)


RUNNERS: dict[str, Callable[[Sizes, Spy], dict[str, Any]]] = {
    "throughput": run_throughput,
    "streams": run_streams,
    "first_token": run_first_token,
}


def caveats(r: dict[str, Any]) -> list[str]:
    """Warnings: something besides this server and client kept the machine busy, or the
    client itself was near a full core (then it, not the server, may be the bottleneck)."""
    client = r.get("client_cpu_percent", 0)
    other = r["machine_cpu_percent"] - r["server_cpu_percent"] - client
    out = []
    if other >= OTHER_LOAD_WARN:
        out.append(f"  WARNING: other processes used ~{other:.0f}% CPU meanwhile; figures skewed")
    if r.get("machine_steal_percent", 0) >= OTHER_LOAD_WARN:
        out.append(
            f"  WARNING: the hypervisor stole {r['machine_steal_percent']:.0f}% CPU meanwhile "
            "(other guests on the host); figures skewed"
        )
    if client >= CLIENT_BOUND_WARN:
        out.append(f"  WARNING: client CPU {client}%: the client may be the bottleneck")
    return out


def server_cpu(r: dict[str, Any]) -> str:
    return f"server CPU {r['server_cpu_percent']}% (kernel {r['server_sys_cpu_percent']}%)"


def summary(name: str, r: dict[str, Any]) -> list[str]:
    if name == "throughput":
        return [*throughput_lines(r), *caveats(r)]
    if name == "first_token":
        return [
            f"time to first token ({r['samples']} sequential turns, idle server, "
            f"{r['token_delay_ms']:g} ms/token): "
            f"p50 {r['first_token_p50_ms']} ms, p99 {r['first_token_p99_ms']} ms",
            f"  whole turn p50 {r['turn_latency_p50_ms']} ms, p99 {r['turn_latency_p99_ms']} ms; "
            f"not completed {r['not_completed']}; {server_cpu(r)}",
            *caveats(r),
        ]
    lines = []
    for count, x in r.items():
        lines += [
            f"{count} concurrent streams ({x['tokens_per_stream']} tokens at "
            f"{x['token_delay_ms']:g} ms): completed {x['completed']}/{x['streams']}, "
            f"errors {x['errors']}",
            f"  all started {x['all_started_ms']} ms after the first POST (never started "
            f"{x['not_started']}); POST -> turn.started p50 {x['started_p50_ms']} ms, "
            f"p99 {x['started_p99_ms']} ms",
            f"  inter-token p50 {x['inter_token_p50_ms']} ms, p99 {x['inter_token_p99_ms']} ms, "
            f"max {x['inter_token_max_ms']} ms; {x['tokens_per_frame']} tokens/frame",
            f"  first token p50 {x['first_token_p50_ms']} ms, p99 {x['first_token_p99_ms']} ms; "
            f"stream duration p50 {x['stream_duration_p50_ms']} ms "
            f"(ideal {x['ideal_stream_duration_ms']:g}), max {x['stream_duration_max_ms']} ms",
            f"  server peak RSS {x['server_peak_rss_mb']} MB (idle {x['server_idle_rss_mb']} MB, "
            f"VmHWM {x['server_vm_hwm_mb']} MB), {server_cpu(x)}, "
            f"{x['server_cpu_us_per_token']} us CPU/token",
            f"  client CPU {x['client_cpu_percent']}% ({x['client_cpu_us_per_frame']} us/frame)",
            *caveats(x),
        ]
    return lines


def throughput_lines(r: dict[str, Any]) -> list[str]:
    """Short-turn throughput, as both python -m bench and bench.cluster print it."""
    cpu = f"{server_cpu(r)}, peak RSS {r['server_peak_rss_mb']} MB"
    return [
        f"short-turn throughput ({r['clients']} clients, {r['tokens_per_turn']} tokens, "
        f"{r['duration_s']:g} s): {r['turns_per_s']} turns/s with all tokens streamed "
        f"({r['turns_completed_per_s']} turns/s completed)",
        f"  latency p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms, "
        f"max {r['latency_max_ms']} ms",
        f"  not completed {r['not_completed']}, errors {r['errors']}; of "
        f"{r['turns_completed_run']} completed turns, {r['streams_without_delta']} streams "
        "had no message.delta and "
        f"{r['streams_with_partial_deltas']} only some of the tokens",
        f"  {cpu}; client CPU {r['client_cpu_percent']}% ({r['client_cpu_us_per_turn']} us/turn: "
        f"one core of client drives ~{r['client_turns_per_core_s']} turns/s)",
    ]


def code_version() -> dict[str, str]:
    """Which tether was measured: the commit, and a digest of tether/ as it is on disk
    (the working tree may differ from the commit)."""
    root = Path(__file__).parent.parent
    digest = hashlib.sha256()
    for path in sorted((root / "tether").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        head = ""
    return {"commit": head or "unknown", "tether_tree_sha256": digest.hexdigest()[:16]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--name", default=None, help="results file prefix (default: full/quick)")
    parser.add_argument(
        "--streams",
        default=None,
        metavar="N[,N]",
        help="concurrent stream counts of `streams` (default 500,1000; quick 50,100)",
    )
    add_quiet_options(parser, wait_s=120)
    parser.add_argument(
        "--profile", action="store_true", help="record the server with py-spy (skews figures)"
    )
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    sizes = QUICK if args.quick else FULL
    if args.streams:
        sizes = replace(sizes, stream_counts=tuple(int(n) for n in args.streams.split(",")))
    name = args.name or ("quick" if args.quick else "full")

    # SIGTERM too should unwind through the `with Server` blocks, which kill the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    report: dict[str, Any] = {
        "name": name,
        "timestamp": stamp,
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "code": {},
        "sizes": asdict(sizes),
        "machine_busy_before_percent": {},
        "attempts": {},
        "skewed": {},  # bench -> other load (or steal) was over the limit in the kept attempt
        "results": {},
    }
    spy = Spy(RESULTS / f"{name}-{stamp}-profile" if args.profile else None)

    failed = [b for b in chosen if not run_benchmark(b, sizes, spy, args, report)]

    figures = goals.embedded(report["results"], report["skewed"])
    report["figures"] = goals.as_json(figures)
    print("\n".join(goals.summary(figures, args.quick)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


def run_benchmark(
    bench: str, sizes: Sizes, spy: Spy, args: argparse.Namespace, report: dict[str, Any]
) -> bool:
    """Run one benchmark (again while other load skews it) into `report`; False if it failed."""
    wait_s, retries = quiet_options(args, 120)
    for attempt in range(1 + retries):
        if wait_s > 0:
            busy = wait_for_quiet(wait_s, OTHER_LOAD_WARN)
            report["machine_busy_before_percent"][bench] = busy
            if busy >= OTHER_LOAD_WARN:
                print(f"machine still busy ({busy}% CPU) after {wait_s:g} s")
        print(f"running {bench}…", flush=True)
        report["code"][bench] = code_version()  # tether/ may be edited between benchmarks
        report["attempts"][bench] = attempt + 1
        began = time.monotonic()
        try:
            report["results"][bench] = result = RUNNERS[bench](sizes, spy)
        except Exception as exc:
            report["results"][bench] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  {bench} failed: {type(exc).__name__}: {exc}\n")
            return False
        lines = summary(bench, result)
        print("\n".join([*lines, f"  ({time.monotonic() - began:.0f} s)"]))
        report["skewed"][bench] = any("figures skewed" in line for line in lines)
        if not report["skewed"][bench]:
            break
    for stacks in sorted(spy.dir.glob(f"{bench}*.txt")) if spy.dir else []:
        print("\n".join(profile.report(stacks)))
    print()
    return True


def add_quiet_options(parser: argparse.ArgumentParser, wait_s: float, retries: bool = True) -> None:
    """--wait-quiet and (with `retries`) --retries; with --quick both default to 0 (a smoke
    run, not figures)."""
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="S",
        help=f"before each benchmark, wait up to S seconds for other load to end "
        f"(default {wait_s:g}; 0 with --quick)",
    )
    if not retries:
        return
    parser.add_argument(
        "--retries",
        type=int,
        default=None,
        help="run a benchmark again when other load skewed it, up to this many times "
        "(default 2; 0 with --quick)",
    )


def quiet_options(args: argparse.Namespace, wait_s: float) -> tuple[float, int]:
    """The --wait-quiet and --retries to use."""
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else wait_s)
    given = getattr(args, "retries", None)
    retries = given if given is not None else (0 if args.quick else 2)
    return wait, retries


if __name__ == "__main__":
    sys.exit(main())
