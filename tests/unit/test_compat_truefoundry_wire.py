"""Tether turns as TrueFoundry turn states."""

from __future__ import annotations

from typing import Any

import pytest

from tether.api.compat import truefoundry_wire as wire


def view(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "usage": {"input_tokens": 3, "output_tokens": 4, "model_calls": 1},
        "reason": None,
        "error": None,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:01Z",
        "finished_at": "2026-01-01T00:00:02Z",
        **extra,
    }


@pytest.mark.parametrize("status", ["queued", "running", "cancelling"])
def test_unfinished_is_running(status: str) -> None:
    assert wire.turn_state(view(status)) == {"status": "running"}


@pytest.mark.parametrize(
    ("reason", "named"),
    [
        ("client_cancelled", "client-cancelled"),
        ("superseded_by_new_turn", "cancelled-for-next-turn"),
        ("turn_timeout", "server-execution-timeout"),
        ("worker_lost", "abandoned"),
        (None, "abandoned"),
    ],
)
def test_cancel_reasons(reason: str | None, named: str) -> None:
    state = wire.turn_state(view("cancelled", reason=reason))
    assert state["status"] == "cancelled" and state["reason"] == named
    assert state["metrics"]["total_tokens"] == 7


def test_waiting_is_done_with_required_actions() -> None:
    asked = [
        {
            "id": f"int_{n}",
            "session_id": "s",
            "type": kind,
            "tool_call_id": f"call_{n}",
            "created_at": f"2026-01-01T00:00:0{n}Z",
        }
        for n, kind in ((3, "approval"), (4, "question"), (5, "approval"))
    ]
    state = wire.turn_state(view("waiting"), pending=asked, sources={"call_3": "msg_1"})
    assert state["status"] == "done"
    assert state["completed_at"] == "2026-01-01T00:00:05Z"
    approvals, responses = state["required_actions"]
    assert approvals["type"] == "tool.approval_required"
    assert approvals["tool_calls"] == [
        {"id": "call_3", "source_event_id": "msg_1"},
        {"id": "call_5", "source_event_id": "int_5"},
    ]
    assert responses["type"] == "tool.response_required"
    assert [c["id"] for c in responses["tool_calls"]] == ["call_4"]


def test_failed_is_error_with_its_message() -> None:
    failed = view("failed", reason="model_error", error={"code": "x", "message": "boom"})
    assert wire.turn_state(failed)["message"] == "boom"
