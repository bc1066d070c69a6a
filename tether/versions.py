"""Schema versions of the JSON Tether keeps and reads back later, so that a change of shape can
still read what older code wrote (as openai-agents' run state carries `$schemaVersion`).

Every stored event, interrupt and ledger row carries the version it was written in (column
`v`); the Redis bus says it with each message. A reader upgrades what it reads to the current
shape, one step per bump, and refuses what a newer Tether wrote (a rolling upgrade must not
misread it). To change a shape: bump the constant, add a changelog line, and add the step that
turns the previous version into the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tether import errors

# --- events: `data` of each event type (DESIGN §7) -----------------------------------------
#
# CHANGELOG
#   1  The first version: the payloads of Tether 0.1 (turn.*: {"turn": <turn>, ...};
#      message.completed: {"message": <message>}; tool.*: {"tool_call_id", "name", ...};
#      interrupt.*: {"interrupt": <interrupt>, "turn_waiting"?}; session.updated).
EVENT_VERSION = 1

# --- resume state: what a paused or crashed turn leaves for its next attempt ---------------
#
# Its interrupts (`request` and `response` as the loop reads them on resume), its ledger
# rows (`status` of each tool call: started | paused | finished), and its steers (the
# messages they deliver at its next step boundary).
#
# CHANGELOG
#   1  The first version: approval requests {"tool_name", "arguments", "editable",
#      "reason"?}, approval responses {"decision", "reason"?, "arguments"?}, questions and
#      custom interrupts any JSON; ledger statuses started, paused, finished; steer
#      messages [{"id", "role", "content"}] (steers came later, in this shape).
RESUME_VERSION = 1

EventStep = Callable[[str, dict[str, Any]], dict[str, Any]]
InterruptStep = Callable[[dict[str, Any], Any], tuple[dict[str, Any], Any]]
LedgerStep = Callable[[str], str]
SteerStep = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]

# Upgrade steps: the step at key N turns version N into N + 1.
_EVENT_STEPS: dict[int, EventStep] = {}
_INTERRUPT_STEPS: dict[int, InterruptStep] = {}
_LEDGER_STEPS: dict[int, LedgerStep] = {}
_STEER_STEPS: dict[int, SteerStep] = {}


class UnknownVersion(errors.TetherError):
    """Stored by a newer Tether: this one cannot read it."""

    code = "unknown_schema_version"


def _check(kind: str, version: int, current: int) -> None:
    if version > current:
        raise UnknownVersion(
            f"{kind} of schema version {version}; this Tether reads up to {current}"
        )


def event_data(version: int, type: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event's `data` as written in `version`, in today's shape."""
    _check("an event", version, EVENT_VERSION)
    for step in range(version, EVENT_VERSION):
        data = _EVENT_STEPS[step](type, data)
    return data


def interrupt_payload(
    version: int, request: dict[str, Any], response: Any
) -> tuple[dict[str, Any], Any]:
    """An interrupt's request and response as written in `version`, in today's shape."""
    _check("an interrupt", version, RESUME_VERSION)
    for step in range(version, RESUME_VERSION):
        request, response = _INTERRUPT_STEPS[step](request, response)
    return request, response


def ledger_status(version: int, status: str) -> str:
    """A ledger row's status as written in `version`, in today's terms."""
    _check("a tool run", version, RESUME_VERSION)
    for step in range(version, RESUME_VERSION):
        status = _LEDGER_STEPS[step](status)
    return status


def steer_messages(version: int, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A steer's messages as written in `version`, in today's shape."""
    _check("a steer", version, RESUME_VERSION)
    for step in range(version, RESUME_VERSION):
        messages = _STEER_STEPS[step](messages)
    return messages
