"""Issue 13's figures and their goals: which result each figure is, one summary line per figure
(PASS/MISS against its goal) and the same as JSON.

`python -m bench`, `bench.cancel` and `bench.cluster` each build their figures from their
results here, so that the goals and the names live in one place. A figure's `problem` says why
its value cannot be trusted as measured (errors, streams that never started, a stop that was
not confirmed): such a figure is a MISS whatever its value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

# --- the goals (issue 13) ----------------------------------------------------------------------

STOP_IDLE_P99_MS = {"embedded": 10.0}  # cluster: no goal for the idle stop
STOP_LOADED_P99_MS = {"embedded": 20.0, "cluster": 50.0}
PUBLISHED_AFTER_CANCELLED = 0  # cluster: live tokens a worker publishes after turn.cancelled
STREAMS_ALL_STARTED_MS = 1500.0
STREAMS_FIRST_TOKEN_P50_MS = 300.0
STREAMS_INTER_TOKEN_P99_MS = 100.0
STREAMS_CPU_US_PER_TOKEN = 40.0
STREAMS_PEAK_RSS_MB = 150.0
SHORT_TURNS_PER_S = {"embedded": 400.0, "cluster": 150.0}
STREAMS_WITHOUT_DELTA = 0
# "adding a second worker process does not lower it": 2 workers give at least this share of
# what 1 gives (run-to-run noise on a shared box is a few percent)
SECOND_WORKER_RATIO = 0.95


@dataclass(frozen=True)
class Goal:
    op: Literal["<=", ">="]
    target: float

    def met(self, value: float) -> bool:
        return value <= self.target if self.op == "<=" else value >= self.target

    def __str__(self) -> str:
        return f"{self.op} {self.target:g}"


def at_most(target: float) -> Goal:
    return Goal("<=", target)


def at_least(target: float) -> Goal:
    return Goal(">=", target)


@dataclass(frozen=True)
class Figure:
    name: str  # stable key: `<mode>.<figure>`
    label: str  # what it is, for people
    value: float | None
    unit: str
    goal: Goal | None = None
    problem: str | None = None  # the measurement is not sound: a MISS whatever the value
    skewed: bool = False  # other load shared the machine while it was measured
    source: str = ""  # where in the results JSON the value comes from

    @property
    def verdict(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "N/A"
        if self.goal is None:
            return "-"
        if self.problem:
            return "MISS"
        return "PASS" if self.goal.met(self.value) else "MISS"

    def line(self) -> str:
        value = "n/a" if self.verdict == "N/A" else f"{self.value:g} {self.unit}".rstrip()
        goal = f"goal {self.goal} {self.unit}".rstrip() if self.goal else "no goal"
        notes = [n for n in (self.problem, "skewed by other load" if self.skewed else "") if n]
        tail = f"  [{'; '.join(notes)}]" if notes else ""
        return f"  {self.verdict:<4}  {value:>14}  {goal:<24}  {self.label}{tail}"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["goal"] = str(self.goal) if self.goal else None
        return out | {"verdict": self.verdict}


def summary(figures: list[Figure], quick: bool) -> list[str]:
    head = "figures (issue 13)"
    if quick:
        head += ": QUICK sizes, verdicts only show the harness works; the goals are for full sizes"
    return [head, *(f.line() for f in figures)]


def as_json(figures: list[Figure]) -> list[dict[str, Any]]:
    return [f.as_json() for f in figures]


def _problems(*pairs: tuple[Any, str]) -> str | None:
    """The descriptions whose count is non-zero, joined; None if all are zero."""
    found = [f"{n} {what}" for n, what in pairs if n]
    return ", ".join(found) or None


# --- stops: bench.cancel (embedded) and bench.cluster --------------------------------------


def stops(
    mode: str,
    idle: dict[str, Any] | None,
    loaded: dict[str, Any] | None,
    skewed: dict[str, bool] | None = None,
    keys: tuple[str, str] = ("idle", "loaded"),
) -> list[Figure]:
    """`idle` and `loaded` are bench.cancel's per-scenario results (its figures() and more),
    found under `keys` in the JSON."""
    skewed = skewed or {}
    out: list[Figure] = []
    source = dict(zip(("idle", "loaded"), keys, strict=True))
    for scenario, r in (("idle", idle), ("loaded", loaded)):
        if r is None:
            continue
        where = "idle" if scenario == "idle" else f"with {r['background']['streams']} other streams"
        problem = _problems(
            (r["errors"], "stops failed"),
            (r["stops"] - r["errors"] - r["confirmed_200_cancelled"], "not confirmed"),
        )
        goals = STOP_IDLE_P99_MS if scenario == "idle" else STOP_LOADED_P99_MS
        for p in ("p50", "p99"):
            goal = goals.get(mode) if p == "p99" else None
            out.append(
                Figure(
                    f"{mode}.stop_confirmed_{scenario}_{p}_ms",
                    f"stop -> confirmed (200 answer), {where}, {p}",
                    r[f"answer_{p}_ms"],
                    "ms",
                    at_most(goal) if goal is not None else None,
                    problem,
                    skewed.get(scenario, False),
                    f"{source[scenario]}.answer_{p}_ms",
                )
            )
    if loaded is not None:
        out.append(
            Figure(
                f"{mode}.tokens_after_stop_sent_loaded_max",
                f"tokens received after the stop was sent (loaded), max over {loaded['stops']}",
                loaded["tokens_after_stop_max"],
                "tokens",
                None,
                None,
                skewed.get("loaded", False),
                f"{source['loaded']}.tokens_after_stop_max",
            )
        )
        out.append(
            Figure(
                f"{mode}.tokens_after_answer_loaded_total",
                "tokens received after the confirmed answer (loaded), total",
                loaded["tokens_after_answer_total"],
                "tokens",
                at_most(0),
                None,
                skewed.get("loaded", False),
                f"{source['loaded']}.tokens_after_answer_total",
            )
        )
        if mode == "cluster":
            unsound = _problems(
                (loaded.get("bus_tap_missed_terminal"), "stops whose end the bus tap missed"),
                (loaded.get("bus_tap_undecodable"), "bus messages not understood"),
            )
            out.append(
                Figure(
                    f"{mode}.tokens_published_after_cancelled_loaded",
                    "tokens published on the bus after turn.cancelled (loaded), total",
                    loaded.get("tokens_published_after_cancelled_total"),
                    "tokens",
                    at_most(PUBLISHED_AFTER_CANCELLED),
                    unsound,
                    skewed.get("loaded", False),
                    f"{source['loaded']}.tokens_published_after_cancelled_total",
                )
            )
    return out


# --- python -m bench (embedded) -----------------------------------------------------------------


def embedded(results: dict[str, Any], skewed: dict[str, bool]) -> list[Figure]:
    """Figures of `python -m bench`'s results (`results` as in its JSON)."""
    out: list[Figure] = []
    streams = results.get("streams")
    if streams and "error" not in streams:
        count = next(iter(streams))  # the first size (500 at full size)
        r = streams[count]
        src = f"results.streams.{count}"
        label = f"{count} turns x {r['tokens_per_stream']} tokens @ {r['token_delay_ms']:g} ms:"
        broken = _problems(
            (r["errors"], "errors"),
            (r["not_completed"], "not completed"),
            (r["not_started"], "never started"),
        )
        sk = skewed.get("streams", False)

        def stream_figure(key: str, what: str, unit: str, goal: Goal | None) -> Figure:
            name = f"embedded.streams_{key}"
            value = r.get(key)
            return Figure(name, f"{label} {what}", value, unit, goal, broken, sk, f"{src}.{key}")

        out += [
            stream_figure(
                "all_started_ms",
                "all started (first POST -> last turn.started)",
                "ms",
                at_most(STREAMS_ALL_STARTED_MS),
            ),
            stream_figure(
                "first_token_p50_ms", "first token p50", "ms", at_most(STREAMS_FIRST_TOKEN_P50_MS)
            ),
            stream_figure("first_token_p99_ms", "first token p99", "ms", None),
            stream_figure(
                "inter_token_p99_ms", "inter-token p99", "ms", at_most(STREAMS_INTER_TOKEN_P99_MS)
            ),
            stream_figure(
                "server_cpu_us_per_token",
                "server CPU per token delivered",
                "us",
                at_most(STREAMS_CPU_US_PER_TOKEN),
            ),
            stream_figure(
                "server_vm_hwm_mb", "server peak RSS (VmHWM)", "MB", at_most(STREAMS_PEAK_RSS_MB)
            ),
        ]
    short = results.get("throughput")
    if short and "error" not in short:
        out += short_turns("embedded", short, "results.throughput", skewed.get("throughput", False))
    return out


def short_turns(
    mode: str, r: dict[str, Any], src: str, skewed: bool, workers: int | None = None
) -> list[Figure]:
    """Short-turn throughput (bench.scenarios.throughput's result); `workers`: the worker
    processes of a cluster run."""
    tag = f", {workers} worker{'s' if workers > 1 else ''}" if workers else ""
    suffix = f"_{workers}_workers" if workers else ""
    what = f"short turns ({r['tokens_per_turn']} tokens, {r['clients']} clients{tag})"
    problem = _problems(
        (r["errors"], "client errors"), (r["not_turn_completed"], "turns failed or cancelled")
    )
    return [
        Figure(
            f"{mode}.short_turns_per_s{suffix}",
            f"{what}: turns/s",
            r["turns_per_s"],
            "turns/s",
            at_least(SHORT_TURNS_PER_S[mode]),
            problem,
            skewed,
            f"{src}.turns_per_s",
        ),
        Figure(
            f"{mode}.short_turn_streams_without_delta{suffix}",
            f"{what}: streams with no live message.delta, of {r['turns_completed_run']}",
            r["streams_without_delta"],
            "turns",
            at_most(STREAMS_WITHOUT_DELTA),
            None,
            skewed,
            f"{src}.streams_without_delta",
        ),
    ]


# --- bench.cluster ------------------------------------------------------------------------------


def cluster(results: dict[str, Any]) -> list[Figure]:
    """Figures of bench.cluster's results (`results` as in its JSON)."""
    out = stops(
        "cluster",
        results.get("stop_idle"),
        results.get("stop_loaded"),
        keys=("stop_idle", "stop_loaded"),
    )
    by_workers: dict[int, dict[str, Any]] = {
        r["worker_processes"]: r
        for key, r in results.items()
        if key.startswith("throughput_") and isinstance(r, dict) and "turns_per_s" in r
    }
    for workers, r in sorted(by_workers.items()):
        out += short_turns("cluster", r, f"throughput_{workers}_workers", False, workers)
    if 1 in by_workers and 2 in by_workers:
        one, two = by_workers[1]["turns_per_s"], by_workers[2]["turns_per_s"]
        out.append(
            Figure(
                "cluster.short_turns_2_workers_vs_1",
                "short turns: turns/s with 2 worker processes / with 1",
                round(two / one, 2) if one else None,
                "x",
                at_least(SECOND_WORKER_RATIO),
                None,
                False,
                "throughput_2_workers.turns_per_s / throughput_1_workers.turns_per_s",
            )
        )
    return out
