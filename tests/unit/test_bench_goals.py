"""bench/goals.py: verdicts, and that each figure is the value its `source` names in the JSON;
bench/bustap.py's reading of the bus."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench import bustap, goals


def _resolve(results: dict[str, Any], source: str) -> Any:
    value: Any = results
    for key in source.split("."):
        value = value[key]
    return value


def _stream_result(**overrides: Any) -> dict[str, Any]:
    return {
        "streams": 50,
        "tokens_per_stream": 200,
        "token_delay_ms": 20.0,
        "errors": 0,
        "not_completed": 0,
        "not_started": 0,
        "all_started_ms": 900.0,
        "first_token_p50_ms": 250.0,
        "first_token_p99_ms": 700.0,
        "inter_token_p99_ms": 40.0,
        "server_cpu_us_per_token": 41.5,
        "server_vm_hwm_mb": 120.0,
        **overrides,
    }


def _throughput_result(**overrides: Any) -> dict[str, Any]:
    return {
        "clients": 32,
        "tokens_per_turn": 20,
        "turns_per_s": 410.0,
        "errors": 0,
        "not_turn_completed": 0,
        "turns_completed_run": 2000,
        "streams_without_delta": 0,
        **overrides,
    }


def _stop_result(**overrides: Any) -> dict[str, Any]:
    return {
        "stops": 200,
        "errors": 0,
        "confirmed_200_cancelled": 200,
        "answer_p50_ms": 8.0,
        "answer_p99_ms": 12.0,
        "tokens_after_stop_max": 3,
        "tokens_after_answer_total": 0,
        "tokens_published_after_cancelled_total": 0,
        "bus_tap_missed_terminal": 0,
        "bus_tap_undecodable": 0,
        "background": {"streams": 200},
        **overrides,
    }


@pytest.mark.parametrize(
    ("value", "goal", "problem", "verdict"),
    [
        (9.0, goals.at_most(10), None, "PASS"),
        (10.0, goals.at_most(10), None, "PASS"),
        (10.5, goals.at_most(10), None, "MISS"),
        (9.0, goals.at_most(10), "3 stops failed", "MISS"),
        (400.0, goals.at_least(400), None, "PASS"),
        (399.9, goals.at_least(400), None, "MISS"),
        (None, goals.at_most(10), None, "N/A"),
        (math.nan, goals.at_most(10), None, "N/A"),
        (5.0, None, None, "-"),
    ],
)
def test_verdict(
    value: float | None, goal: goals.Goal | None, problem: str | None, verdict: str
) -> None:
    figure = goals.Figure("x.y", "a figure", value, "ms", goal, problem)
    assert figure.verdict == verdict
    assert figure.line().split()[0] == verdict
    assert figure.as_json()["verdict"] == verdict


def test_embedded_figures_are_the_values_their_source_names() -> None:
    results = {"streams": {"50": _stream_result(), "100": {}}, "throughput": _throughput_result()}
    figures = goals.embedded(results, {"streams": True})
    assert [f.name for f in figures] == [
        "embedded.streams_all_started_ms",
        "embedded.streams_first_token_p50_ms",
        "embedded.streams_first_token_p99_ms",
        "embedded.streams_inter_token_p99_ms",
        "embedded.streams_server_cpu_us_per_token",
        "embedded.streams_server_vm_hwm_mb",
        "embedded.short_turns_per_s",
        "embedded.short_turn_streams_without_delta",
    ]
    for figure in figures:
        assert _resolve({"results": results}, figure.source) == figure.value, figure.name
    verdicts = {f.name: f.verdict for f in figures}
    assert verdicts["embedded.streams_server_cpu_us_per_token"] == "MISS"  # 41.5 > 40
    assert verdicts["embedded.streams_first_token_p99_ms"] == "-"
    assert verdicts["embedded.short_turns_per_s"] == "PASS"
    assert all(f.skewed == f.name.startswith("embedded.streams") for f in figures)


def test_streams_that_never_started_make_every_stream_figure_unsound() -> None:
    results = {"streams": {"500": _stream_result(not_started=3, all_started_ms=None)}}
    figures = goals.embedded(results, {})
    assert figures[0].verdict == "N/A"
    assert all(f.problem == "3 never started" for f in figures)
    assert {f.verdict for f in figures if f.goal} == {"MISS", "N/A"}


def test_a_failed_benchmark_gives_no_figures() -> None:
    assert goals.embedded({"streams": {"error": "boom"}, "throughput": {"error": "x"}}, {}) == []


def test_cluster_figures() -> None:
    results = {
        "stop_idle": _stop_result(),
        "stop_loaded": _stop_result(
            answer_p99_ms=60.0,
            confirmed_200_cancelled=198,
            tokens_published_after_cancelled_total=4,
        ),
        "throughput_1_workers": {**_throughput_result(turns_per_s=160.0), "worker_processes": 1},
        "throughput_2_workers": {
            **_throughput_result(turns_per_s=150.0, streams_without_delta=7),
            "worker_processes": 2,
        },
    }
    figures = {f.name: f for f in goals.cluster(results)}
    for figure in figures.values():
        if " / " not in figure.source:
            assert _resolve(results, figure.source) == figure.value, figure.name
    assert figures["cluster.stop_confirmed_idle_p99_ms"].goal is None  # no goal when idle
    loaded = figures["cluster.stop_confirmed_loaded_p99_ms"]
    assert (loaded.verdict, loaded.problem) == ("MISS", "2 not confirmed")
    assert "200 other streams" in loaded.label
    assert figures["cluster.tokens_published_after_cancelled_loaded"].verdict == "MISS"
    assert figures["cluster.short_turns_per_s_1_workers"].verdict == "PASS"
    assert figures["cluster.short_turn_streams_without_delta_2_workers"].verdict == "MISS"
    ratio = figures["cluster.short_turns_2_workers_vs_1"]
    assert (ratio.value, ratio.verdict) == (0.94, "MISS")


def test_a_bus_tap_that_missed_an_end_makes_its_figure_unsound() -> None:
    results = {"stop_loaded": _stop_result(bus_tap_missed_terminal=2)}
    [figure] = [f for f in goals.cluster(results) if "published" in f.name]
    assert figure.value == 0
    assert figure.verdict == "MISS"
    assert figure.problem == "2 stops whose end the bus tap missed"


def test_bus_messages_in_another_format_are_counted_not_taken_for_silence() -> None:
    wire = '"type":"message.delta","session_id":"s","turn_id":"turn_1","data":{"delta":"a b "}}'
    delta = bustap.decode("d turn_1 m 0 4\n" + wire, 1.0)
    assert delta is not None and (delta.delta_turn, delta.delta_tokens) == ("turn_1", 2)
    events = bustap.decode('{"k": "e", "events": [{"type": "turn.cancelled", "turn_id": "t"}]}', 2)
    assert events is not None and events.events == [("turn.cancelled", "t")]
    assert bustap.decode('{"kind": "delta"}', 1.0) is None
    assert bustap.decode("not json", 1.0) is None


def test_only_deltas_after_their_own_turns_end_count() -> None:
    log = [
        bustap.Published(1.0, delta_turn="a", delta_tokens=5),  # before the end: in flight
        bustap.Published(2.0, events=[("turn.cancelled", "a")]),
        bustap.Published(2.5, delta_turn="b", delta_tokens=7),  # another turn, still running
        bustap.Published(3.0, delta_turn="a", delta_tokens=2),
        bustap.Published(3.5, events=[("turn.completed", "a")]),  # a second end changes nothing
        bustap.Published(4.0, delta_turn="a", delta_tokens=1),
    ]
    late = bustap.after_end(log)
    assert (late.terminal_seen, late.messages, late.tokens, late.last_after_s) == (True, 2, 3, 2.0)
