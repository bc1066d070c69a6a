"""Rows <-> domain records, both directions, in one place: the only code that knows both
shapes. A record's fields that are columns of its table map by name; a codec says how the
values that are not stored as they are (enums, nested records, JSON) cross."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from sqlalchemy import Row, Table

from tether import domain, specs, versions
from tether.store import schema

R = TypeVar("R")
Convert = Callable[[Any], Any]


def _value(member: Any) -> Any:
    return member.value


def _optional(convert: Convert) -> Convert:
    return lambda value: None if value is None else convert(value)


class Codec(Generic[R]):
    """How one record type is stored in one table. `decode`/`encode` convert the values of
    the fields named; `derived` builds fields from the whole row (fields that are not columns,
    or whose reading depends on other columns: a schema version); `stamp` adds columns that
    are not fields to what is written."""

    def __init__(
        self,
        record: type[R],
        table: Table,
        *,
        decode: Mapping[str, Convert] | None = None,
        encode: Mapping[str, Convert] | None = None,
        derived: Mapping[str, Convert] | None = None,
        stamp: Mapping[str, Any] | None = None,
    ):
        self.record_type = record
        names = [f.name for f in dataclasses.fields(record)]  # type: ignore[arg-type]
        stored = [n for n in names if n in table.c]
        decode, encode = decode or {}, encode or {}
        self._decoders = [(n, decode.get(n)) for n in stored]
        self._encoders = [(n, encode.get(n)) for n in stored]
        self._derived = dict(derived or {})
        self._stamp = dict(stamp or {})

    def record(self, row: Row[Any]) -> R:
        values = row._mapping
        fields = {n: (d(values[n]) if d else values[n]) for n, d in self._decoders}
        for name, build in self._derived.items():
            fields[name] = build(values)
        return self.record_type(**fields)

    def values(self, record: R) -> dict[str, Any]:
        values = {
            n: (e(getattr(record, n)) if e else getattr(record, n)) for n, e in self._encoders
        }
        values.update(self._stamp)
        return values


def _last_turn(row: Mapping[str, Any]) -> domain.TurnRef | None:
    if row["last_turn_id"] is None:
        return None
    return domain.TurnRef(row["last_turn_id"], domain.TurnStatus(row["last_turn_status"]))


AGENT = Codec(
    domain.Agent,
    schema.agents,
    decode={"spec": specs.AgentSpec.from_stored},
    encode={"spec": specs.AgentSpec.stored},
)
SESSION = Codec(
    domain.Session,
    schema.sessions,
    decode={"status": domain.SessionStatus},
    encode={"status": _value},
    derived={"last_turn": _last_turn},
)
TURN = Codec(
    domain.Turn,
    schema.turns,
    decode={
        "status": domain.TurnStatus,
        "usage": lambda usage: domain.Usage(**usage),
        "error": _optional(lambda error: domain.TurnError(**error)),
    },
    encode={
        "status": _value,
        "usage": domain.Usage.as_dict,
        "error": _optional(dataclasses.asdict),
    },
)
MESSAGE = Codec(
    domain.Message,
    schema.messages,
    decode={
        "tool_calls": lambda calls: [domain.ToolCall(**c) for c in calls or ()],
        "status": domain.MessageStatus,
    },
    encode={
        "tool_calls": lambda calls: [c.as_dict() for c in calls] or None,
        "status": _value,
    },
)
EVENT = Codec(
    domain.Event,
    schema.events,
    decode={"type": domain.EventType},
    encode={"type": _value},
    derived={"data": lambda row: versions.event_data(row["v"], row["type"], row["data"])},
    stamp={"v": versions.EVENT_VERSION},
)


def _interrupt_payload(row: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    return versions.interrupt_payload(row["v"], row["request"], row["response"])


INTERRUPT = Codec(
    domain.Interrupt,
    schema.interrupts,
    decode={"status": domain.InterruptStatus},
    encode={"status": _value},
    derived={
        "request": lambda row: _interrupt_payload(row)[0],
        "response": lambda row: _interrupt_payload(row)[1],
    },
    stamp={"v": versions.RESUME_VERSION},
)

API_KEY = Codec(
    domain.ApiKey,
    schema.api_keys,
    decode={"role": lambda role: domain.Role[role.upper()]},
    encode={"role": lambda role: role.name.lower()},
)

agent = AGENT.record
api_key = API_KEY.record
session = SESSION.record
turn = TURN.record
message = MESSAGE.record
event = EVENT.record
interrupt = INTERRUPT.record
