"""Cluster mode: `python -m bench.cluster [--quick] [--only stop,throughput]`.

Starts a private PostgreSQL and Redis (tests/infra.py, the servers the tests use), an API node
(`tether serve --workers 0`) and `tether worker` processes. Every stop is sent to the API node
while the turn runs in a worker process, so each crosses processes and Redis.

1. stop: 200 stops of an OpenAI-provider stream (bench.cancel's trial), idle and with 200 other
   turns streaming; goal p99 <= 50 ms for the confirmed answer under load. A tap on the Redis
   bus counts the tokens a worker published after the turn ended (goal 0).
2. throughput: short turns (20 tokens) by 32 clients, with 1, 2 and 4 worker processes
   (--quick: 1 and 2).

Figures go to stdout and bench/results/cluster-<timestamp>.json. On 2 cores, everything (API
node, workers, PostgreSQL, Redis, clients) shares them: the throughput figures show what one
machine gives, not how a cluster scales.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cancel, goals, scenarios
from bench.__main__ import (
    RESULTS,
    add_quiet_options,
    code_version,
    quiet_options,
    throughput_lines,
)
from bench.scenarios import in_client_process
from bench.server import Server, raise_fd_limit, wait_for_quiet
from tests import infra

WORKER_CONCURRENCY = 600
THROUGHPUT_WORKERS = (1, 2, 4)
QUICK_THROUGHPUT_WORKERS = (1, 2)  # enough for "a second worker does not lower it"


class Infra:
    def __init__(self) -> None:
        self.pg = infra.PostgresServer().start()
        self.redis = infra.RedisServer().start()
        self._databases = 0

    def fresh_database(self) -> tuple[str, str]:
        """A new database and bus prefix for one scenario."""
        self._databases += 1
        name = f"bench{self._databases}"
        return asyncio.run(infra.create_database(self.pg, name)), name

    def close(self) -> None:
        self.redis.close()
        self.pg.close()


@dataclass(frozen=True)
class Deployment:
    server: Server  # the API node
    bus: tuple[str, str]  # Redis URL and this deployment's bus prefix


@contextmanager
def deployment(
    setup: Infra,
    workers: int,
    concurrency: int = WORKER_CONCURRENCY,
    settings: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """An API node and `workers` worker processes on a fresh database; `settings`: more
    TETHER_<NAME> variables for all of them."""
    store, prefix = setup.fresh_database()
    settings = {"TETHER_BUS_PREFIX": prefix, **(settings or {})}
    env = {**os.environ, "TETHER_LOG_LEVEL": "warning", **settings}
    procs: list[subprocess.Popen[bytes]] = []
    tether = str(Path(sys.executable).parent / "tether")
    try:
        for _ in range(workers):
            cmd = [tether, "worker", "--store", store, "--bus", setup.redis.url]
            cmd += ["--concurrency", str(concurrency)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
        args = ("--store", store, "--bus", setup.redis.url)
        with Server(workers=0, args=args, env=settings) as server:
            yield Deployment(server, (setup.redis.url, prefix))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_stop(setup: Infra, sizes: cancel.Sizes, loaded: bool, wait_s: float) -> dict[str, Any]:
    if wait_s > 0:
        wait_for_quiet(wait_s, cancel.OTHER_LOAD_WARN)
    timeout = 120 + sizes.stops * cancel.TRIAL_TIMEOUT_S  # trials are slow on a loaded box
    with (
        cancel.FakeProvider() as fake,
        # the fake may receive the server's key (none is set: the agents send none)
        deployment(setup, workers=1, settings={"TETHER_PROVIDER_BASE_URLS": fake.url}) as cluster,
    ):
        server = cluster.server
        args = (server.port, fake.port, sizes.stops, sizes.warmup, cluster.bus)
        load: cancel.Background | None = None
        if loaded:
            with cancel.Background(server.port, sizes.background) as load:
                raw = in_client_process(cancel.stops, *args, timeout=timeout)
        else:
            raw = in_client_process(cancel.stops, *args, timeout=timeout)
        result = {**cancel.figures(raw["stops"]), **server.stats(*raw["window"])}
    result["client_cpu_percent"] = raw["client_cpu_percent"]
    result["bus_tap_undecodable"] = raw["bus_tap_undecodable"]
    result["fake_provider_cpu_percent"] = 0.0  # not sampled here
    result["other_cpu_percent"] = 0.0  # the workers, PostgreSQL and Redis are "others" here
    if load is not None:
        load.result.pop("window")
        result["background"] = load.result
    return result


def run_throughput(setup: Infra, workers: int, quick: bool, wait_s: float) -> dict[str, Any]:
    if wait_s > 0:
        wait_for_quiet(wait_s, cancel.OTHER_LOAD_WARN)
    warmup, duration = (1.0, 5.0) if quick else (3.0, 20.0)
    with deployment(setup, workers=workers, concurrency=128) as cluster:
        server = cluster.server
        result: dict[str, Any] = in_client_process(
            scenarios.throughput, server.port, 32, 20, warmup, duration, 20, timeout=300
        )
        result |= server.stats(*result.pop("window"))
    result["worker_processes"] = workers
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 stops, short throughput runs")
    parser.add_argument("--only", default="stop,throughput")
    parser.add_argument("--stops", type=int, help="stops per scenario (default 200)")
    parser.add_argument("--loaded-only", action="store_true", help="skip the idle stops")
    parser.add_argument(
        "--workers",
        default=None,
        metavar="N[,N]",
        help="worker processes of the throughput runs (default 1,2,4; quick 1,2)",
    )
    add_quiet_options(parser, wait_s=cancel.QUIET_WAIT_S, retries=False)
    args = parser.parse_args(argv)
    wait_s, _ = quiet_options(args, cancel.QUIET_WAIT_S)  # no retries: no load estimate here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    sizes = cancel.QUICK if args.quick else cancel.FULL
    if args.stops:
        sizes = dataclasses.replace(sizes, stops=args.stops)
    default_workers = QUICK_THROUGHPUT_WORKERS if args.quick else THROUGHPUT_WORKERS
    worker_counts = (
        tuple(int(n) for n in args.workers.split(",")) if args.workers else default_workers
    )
    only = set(args.only.split(","))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    results: dict[str, Any] = {
        "code": code_version(),
        "quick": args.quick,
        "timestamp": stamp,
        "command": " ".join([Path(sys.executable).name, "-m", "bench.cluster", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "sizes": dataclasses.asdict(sizes) | {"throughput_workers": list(worker_counts)},
    }
    setup = Infra()
    try:
        if "stop" in only:
            for loaded in (True,) if args.loaded_only else (False, True):
                name = "stop_loaded" if loaded else "stop_idle"
                print(f"running {name}…", flush=True)
                began = time.monotonic()
                results[name] = run_stop(setup, sizes, loaded, wait_s)
                lines = cancel.summary(f"cross-process {name}", results[name])
                print("\n".join([*lines, f"  ({time.monotonic() - began:.0f} s)"]), flush=True)
        if "throughput" in only:
            for workers in worker_counts:
                print(f"running throughput with {workers} worker process(es)…", flush=True)
                began = time.monotonic()
                r = run_throughput(setup, workers, args.quick, wait_s)
                results[f"throughput_{workers}_workers"] = r
                lines = throughput_lines(r)
                lines.append(f"  machine CPU {r['machine_cpu_percent']}% (all processes)")
                lines.append(f"  ({time.monotonic() - began:.0f} s)")
                print("\n".join(lines), flush=True)
    finally:
        setup.close()
    figures = goals.cluster(results)
    results["figures"] = goals.as_json(figures)
    print("\n".join(goals.summary(figures, args.quick)))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cluster{'-quick' if args.quick else ''}-{stamp}.json"
    for r in results.values():
        if isinstance(r, dict):
            r.pop("raw", None)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
