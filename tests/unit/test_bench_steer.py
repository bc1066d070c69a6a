"""bench.steer's figures from trials: what counts, and what marks them untrustworthy."""

from __future__ import annotations

from typing import Any

from bench import steer


def _trial(**fields: Any) -> dict[str, Any]:
    trial = steer.Trial(
        session_id="s",
        status=202,
        joined=True,
        answer_s=0.004,
        answer_end_s=0.250,
        model_call_s=0.262,
        steered_frame_s=0.263,
        model_calls=2,
        terminal="turn.completed",
    )
    for name, value in fields.items():
        setattr(trial, name, value)
    return {**steer.asdict(trial), "after_boundary_s": trial.after_boundary_s}


def test_figures_of_sound_trials() -> None:
    result = steer.figures([_trial(), _trial(model_call_s=0.270)])
    assert 262.0 <= result["model_call_p50_ms"] <= 270.0
    assert round(result["after_boundary_max_ms"], 2) == 20.0
    assert steer.problem(result) is None


def test_a_steer_that_did_not_join_or_failed_marks_the_figures() -> None:
    result = steer.figures(
        [_trial(joined=False), _trial(error="TimeoutError: x"), _trial(model_calls=1)]
    )
    assert result["errors"] == 1 and result["not_joined"] == 1
    why = steer.problem(result)
    assert why is not None
    assert "trials failed" in why and "did not join" in why and "two model calls" in why
