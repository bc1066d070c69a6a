"""The public JSON shape of records: one definition for API answers and event payloads.

Each record lists the fields it shows (never the lease, the tenant or other internals); values
render the same way everywhere: datetimes as ISO 8601 UTC with `Z`, enums as their value,
nested records as objects."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tether import domain

# JSON as frames, deliveries and messages carry it, without spaces; one encoder for all
# (json.dumps with options builds an encoder per call)
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def plain(value: Any) -> Any:
    """`value` as JSON-ready data."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _public(record: Any, names: Sequence[str]) -> dict[str, Any]:
    return {name: plain(getattr(record, name)) for name in names}


_SESSION = (
    "id",
    "agent_id",
    "status",
    "metadata",
    "last_turn",
    "last_event_seq",
    "created_at",
    "updated_at",
    "closed_at",
    "forked_from",
)
_TURN = (
    "id",
    "session_id",
    "seq",
    "status",
    "input",
    "on_busy",
    "attempt",
    "step",
    "usage",
    "reason",
    "error",
    "created_at",
    "started_at",
    "finished_at",
)
_MESSAGE = (
    "id",
    "session_id",
    "turn_id",
    "seq",
    "role",
    "content",
    "tool_calls",
    "tool_call_id",
    "name",
    "status",
    "created_at",
)
_INTERRUPT = (
    "id",
    "session_id",
    "turn_id",
    "type",
    "tool_call_id",
    "tool_name",
    "request",
    "response",
    "status",
    "step",
    "created_at",
    "resolved_at",
    "resolved_by",
    "expires_at",
)


_API_KEY = (
    "id",
    "tenant_id",
    "role",
    "name",
    "prefix",
    "created_at",
    "last_used_at",
    "revoked_at",
)


def api_key(k: domain.ApiKey) -> dict[str, Any]:
    return {**_public(k, _API_KEY), "role": k.role.name.lower()}


def agent(a: domain.Agent) -> dict[str, Any]:
    return {
        "id": a.id,
        **a.spec.model_dump(mode="json"),
        "created_at": iso(a.created_at),
        "updated_at": iso(a.updated_at),
    }


def session(s: domain.Session) -> dict[str, Any]:
    return _public(s, _SESSION)


def turn(t: domain.Turn) -> dict[str, Any]:
    return _public(t, _TURN)


def message(m: domain.Message) -> dict[str, Any]:
    return _public(m, _MESSAGE)


def steered(s: domain.Steered) -> dict[str, Any]:
    """The answer to a steer: the turn it joined (or made), and what became of it."""
    return {**turn(s.turn), "steer": {"message_ids": s.message_ids, "joined": s.joined}}


def interrupt(i: domain.Interrupt) -> dict[str, Any]:
    return _public(i, _INTERRUPT)
