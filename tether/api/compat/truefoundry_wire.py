"""TrueFoundry agent-harness shapes of Tether's records and events (docs/compat/truefoundry.md).

Pure translation, no I/O: the routes in truefoundry.py fetch, this module only reshapes. It
works on the public JSON views (tether/views.py), the same dicts the events carry, so a turn
read from the store and a turn read from an event come out alike.

A session has one thread, the session itself: `thread_id` is the session id everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from tether import domain

# Tether's reason codes that TrueFoundry names; any other reason is `abandoned`.
_CANCEL_REASONS = {
    "client_cancelled": "client-cancelled",
    "superseded_by_new_turn": "cancelled-for-next-turn",
    "turn_timeout": "server-execution-timeout",
}
_RUNNING = {"queued", "running", "cancelling"}  # TrueFoundry has one non-terminal state


def subject(tenant: str) -> dict[str, str]:
    """Who created a session or turn. Tether records the tenant, not the key, per session."""
    return {"subject_id": tenant, "subject_type": "tenant", "subject_slug": tenant}


def session(view: dict[str, Any], agent_name: str, tenant: str) -> dict[str, Any]:
    return {
        "type": "session",
        "id": view["id"],
        "agent_name": agent_name,
        "title": None,
        "created_by_subject": subject(tenant),
        "created_at": view["created_at"],
        "updated_at": view["updated_at"],
    }


def input_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Tether turn's input as TrueFoundry input items (it has user messages only)."""
    return [
        {"type": "user.message", "content": m["content"]}
        for m in messages
        if m.get("role") == "user"
    ]


def metrics(usage: dict[str, int]) -> dict[str, int]:
    return {
        "total_input_tokens": usage["input_tokens"],
        "total_output_tokens": usage["output_tokens"],
        "total_tokens": usage["input_tokens"] + usage["output_tokens"],
    }


def model_message(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message as a `model.message` event; its id is the message id, which the
    deltas of the same message carry too (the client merges by id)."""
    calls = [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
            "tool_info": {"type": "truefoundry-system", "name": call["name"]},
        }
        for call in message["tool_calls"]
    ]
    return {
        "type": "model.message",
        "id": message["id"],
        "thread_id": message["session_id"],
        "content": message["content"],
        "tool_calls": calls or None,
        "finish_reason": "tool_calls" if calls else "stop",
        "created_at": message["created_at"],
    }


def tool_response(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "tool.response",
        "id": message["id"],
        "thread_id": message["session_id"],
        "tool_call_id": message["tool_call_id"],
        "content": message["content"] or "",
        "created_at": message["created_at"],
    }


def required_actions(
    interrupts: list[dict[str, Any]], sources: dict[str, str]
) -> list[dict[str, Any]]:
    """Pending interrupts as TrueFoundry's action-required events: approvals ask for a
    `user.tool_approval`, every other kind (questions, custom) for a `user.tool_response`.
    `sources` maps a tool call id to the id of the model.message that made the call."""
    groups = [
        ("tool.approval_required", [i for i in interrupts if i["type"] == "approval"]),
        ("tool.response_required", [i for i in interrupts if i["type"] != "approval"]),
    ]
    return [
        {
            "type": kind,
            "id": group[0]["id"],
            "thread_id": group[0]["session_id"],
            "created_at": max(i["created_at"] for i in group),
            "tool_calls": [
                {
                    "id": i["tool_call_id"],
                    "source_event_id": sources.get(i["tool_call_id"] or "", i["id"]),
                }
                for i in group
            ],
        }
        for kind, group in groups
        if group
    ]


def turn_state(
    turn: dict[str, Any],
    output: dict[str, Any] | None = None,
    pending: list[dict[str, Any]] | None = None,
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Tether turn (its view) as a TrueFoundry turn state. A turn waiting on interrupts is
    `done` with `required_actions`: from TrueFoundry's side the turn is over until the client
    answers in a new turn."""
    status = turn["status"]
    if status in _RUNNING:
        return {"status": "running"}
    used = metrics(turn["usage"])
    if status == domain.TurnStatus.WAITING:
        asked = pending or []
        return {
            "status": "done",
            "output": output,
            "required_actions": required_actions(asked, sources or {}),
            "completed_at": max(
                (i["created_at"] for i in asked), default=turn["started_at"] or turn["created_at"]
            ),
            "metrics": used,
        }
    ended = turn["finished_at"] or turn["created_at"]
    if status == domain.TurnStatus.COMPLETED:
        return {
            "status": "done",
            "output": output,
            "required_actions": [],
            "completed_at": ended,
            "metrics": used,
        }
    if status == domain.TurnStatus.CANCELLED:
        return {
            "status": "cancelled",
            "reason": _CANCEL_REASONS.get(turn["reason"] or "", "abandoned"),
            "completed_at": ended,
            "metrics": used,
        }
    error = turn["error"] or {}
    return {
        "status": "error",
        "message": error.get("message") or turn["reason"] or "the turn failed",
        "completed_at": ended,
        "metrics": used,
    }


def turn(
    view: dict[str, Any], previous_turn_id: str | None, tenant: str, state: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": view["id"],
        "session_id": view["session_id"],
        "previous_turn_id": previous_turn_id,
        "input": input_items(view["input"]),
        "state": state,
        "created_by_subject": subject(tenant),
        "created_at": view["created_at"],
    }


class EventTranslator:
    """Tether events of one session, in order, as TrueFoundry events. One Tether event gives
    zero or more; the translator remembers what later events refer back to: which model
    message made each tool call, each turn's last model message (the `done` output), and the
    interrupts of a turn's current pause."""

    def __init__(self, tenant: str):
        self.tenant = tenant
        self.sources: dict[str, str] = {}  # tool call id -> model.message id
        self.outputs: dict[str, dict[str, Any]] = {}  # turn id -> its last model.message
        self.pauses: dict[str, list[dict[str, Any]]] = {}  # turn id -> interrupts asked

    def delta(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A live `message.delta` frame's payload as a `model.message.delta`."""
        return {
            "type": "model.message.delta",
            "id": payload["data"]["message_id"],
            "thread_id": payload["session_id"],
            "content": payload["data"]["delta"],
        }

    def durable(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """A stored event (`Event.as_dict()`) as TrueFoundry events."""
        kind, data, turn_id = event["type"], event["data"], event["turn_id"]
        if kind == domain.EventType.TURN_QUEUED:
            self.pauses[turn_id] = []
            return [self._turn_created(event)]
        if kind == domain.EventType.MESSAGE_COMPLETED:
            return self._message(data["message"])
        if kind == domain.EventType.INTERRUPT_CREATED:
            self.pauses.setdefault(turn_id, []).append(data["interrupt"])
            if not data.get("turn_waiting"):
                return []
            asked = required_actions(self.pauses[turn_id], self.sources)
            state = {
                "status": "done",
                "output": self.outputs.get(turn_id),
                "required_actions": asked,
                "completed_at": event["created_at"],
            }
            return [*asked, self._turn_done(event, state)]
        if kind in (
            domain.EventType.TURN_COMPLETED,
            domain.EventType.TURN_FAILED,
            domain.EventType.TURN_CANCELLED,
        ):
            state = turn_state(data["turn"], output=self.outputs.get(turn_id))
            return [self._turn_done(event, state)]
        return []  # turn.started, tool.*, session.updated, …: nothing TrueFoundry shows

    def _message(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        if message["role"] == "assistant":
            out = model_message(message)
            self.outputs[message["turn_id"]] = out
            for call in message["tool_calls"]:
                self.sources[call["id"]] = message["id"]
            return [out]
        if message["role"] == "tool":
            return [tool_response(message)]
        return []  # the user's messages are the turn's input, in turn.created

    def _turn_created(self, event: dict[str, Any]) -> dict[str, Any]:
        view = event["data"]["turn"]
        return {
            "type": "turn.created",
            "id": f"{event['turn_id']}.{event['seq']}",
            "turn_id": event["turn_id"],
            "previous_turn_id": None,
            "input": input_items(view["input"]),
            "state": {"status": "running"},
            "created_by": subject(self.tenant),
            "created_at": event["created_at"],
            "thread_id": event["session_id"],
        }

    def _turn_done(self, event: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "turn.done",
            "id": f"{event['turn_id']}.{event['seq']}",
            "state": state,
            "created_at": event["created_at"],
            "thread_id": event["session_id"],
        }
