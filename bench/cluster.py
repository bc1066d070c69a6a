"""Cluster mode: `python -m bench.cluster [--quick] [--only stop,throughput]`.

Starts a private PostgreSQL and Redis (tests/infra.py, the servers the tests use), an API node
(`tether serve --workers 0`) and `tether worker` processes. Every stop is sent to the API node
while the turn runs in a worker process, so each crosses processes and Redis.

1. stop: 200 stops of an OpenAI-provider stream (bench.cancel's trial), idle and with 200 other
   turns streaming; goal p99 <= 50 ms for the confirmed answer under load.
2. throughput: short turns (20 tokens) by 32 clients, with 1, 2 and 4 worker processes.

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
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import cancel, scenarios
from bench.__main__ import RESULTS, code_version
from bench.scenarios import in_client_process
from bench.server import Server, raise_fd_limit, wait_for_quiet
from tests import infra

WORKER_CONCURRENCY = 600
THROUGHPUT_WORKERS = (1, 2, 4)


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


@contextmanager
def deployment(
    setup: Infra, workers: int, concurrency: int = WORKER_CONCURRENCY
) -> Iterator[Server]:
    """An API node and `workers` worker processes on a fresh database."""
    store, prefix = setup.fresh_database()
    env = {**os.environ, "TETHER_LOG_LEVEL": "warning", "TETHER_BUS_PREFIX": prefix}
    procs: list[subprocess.Popen[bytes]] = []
    tether = str(Path(sys.executable).parent / "tether")
    try:
        for _ in range(workers):
            cmd = [tether, "worker", "--store", store, "--bus", setup.redis.url]
            cmd += ["--concurrency", str(concurrency)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
        os.environ["TETHER_BUS_PREFIX"] = prefix  # the API node inherits it
        args = ("--store", store, "--bus", setup.redis.url)
        with Server(workers=0, args=args) as server:
            yield server
    finally:
        os.environ.pop("TETHER_BUS_PREFIX", None)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_stop(setup: Infra, sizes: cancel.Sizes, loaded: bool) -> dict[str, Any]:
    wait_for_quiet(cancel.QUIET_WAIT_S, cancel.OTHER_LOAD_WARN)
    timeout = 120 + sizes.stops * cancel.TRIAL_TIMEOUT_S  # trials are slow on a loaded box
    with cancel.FakeProvider() as fake, deployment(setup, workers=1) as server:
        args = (server.port, fake.port, sizes.stops, sizes.warmup)
        load: cancel.Background | None = None
        if loaded:
            with cancel.Background(server.port, sizes.background) as load:
                raw = in_client_process(cancel.stops, *args, timeout=timeout)
        else:
            raw = in_client_process(cancel.stops, *args, timeout=timeout)
        result = {**cancel.figures(raw["stops"]), **server.stats(*raw["window"])}
    result["client_cpu_percent"] = raw["client_cpu_percent"]
    result["fake_provider_cpu_percent"] = 0.0  # not sampled here
    result["other_cpu_percent"] = 0.0  # the workers, PostgreSQL and Redis are "others" here
    if load is not None:
        load.result.pop("window")
        result["background"] = load.result
    return result


def run_throughput(setup: Infra, workers: int, quick: bool) -> dict[str, Any]:
    wait_for_quiet(cancel.QUIET_WAIT_S, cancel.OTHER_LOAD_WARN)
    warmup, duration = (1.0, 5.0) if quick else (3.0, 20.0)
    with deployment(setup, workers=workers, concurrency=128) as server:
        result = in_client_process(
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
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    sizes = cancel.QUICK if args.quick else cancel.FULL
    if args.stops:
        sizes = dataclasses.replace(sizes, stops=args.stops)
    only = set(args.only.split(","))
    setup = Infra()
    results: dict[str, Any] = {"code": code_version(), "quick": args.quick}
    try:
        if "stop" in only:
            for loaded in (True,) if args.loaded_only else (False, True):
                name = "stop_loaded" if loaded else "stop_idle"
                results[name] = run_stop(setup, sizes, loaded)
                for line in cancel.summary(f"cross-process {name}", results[name]):
                    print(line, flush=True)
        if "throughput" in only:
            for workers in THROUGHPUT_WORKERS:
                r = run_throughput(setup, workers, args.quick)
                results[f"throughput_{workers}_workers"] = r
                print(
                    f"throughput, {workers} worker process(es): {r['turns_per_s']} turns/s, "
                    f"latency p50 {r['latency_p50_ms']} p99 {r['latency_p99_ms']} ms, "
                    f"errors {r['errors']}, API node CPU {r['server_cpu_percent']}%, "
                    f"machine {r['machine_cpu_percent']}%",
                    flush=True,
                )
    finally:
        setup.close()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = RESULTS / f"cluster{'-quick' if args.quick else ''}-{stamp}.json"
    for r in results.values():
        if isinstance(r, dict):
            r.pop("raw", None)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
