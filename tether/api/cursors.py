"""Cursors and positions at the edge: one parser per kind, used by every surface, refusing
anything else with 400 `invalid_request` (each surface renders it in its own error shape).

Two kinds:

- a **position**: an event seq (`?after=`, `Last-Event-ID`, TrueFoundry's
  `after_sequence_number`), the seq cursor of a list of turns or messages, an offset into a
  list. ASCII digits only, from 0 to 2^31 - 1: the store keeps seqs in INTEGER columns, 32
  bits on PostgreSQL, so no larger position can name anything, and comparing one with a
  column fails there (asyncpg refuses the parameter) as one past 2^63 - 1 fails on SQLite
  (OverflowError). Python's `str.isdigit` also accepts '²' and other digits `int()` refuses,
  and `int()` alone accepts '+5', ' 5' and '5_0': neither is the check.
- an **id cursor**: the id of the last item of the previous page, in that list's id format
  (tether/ids.py), so nothing else ever reaches a query.

An empty value is no cursor (the SSE specification gives an empty last event id that meaning;
the query parameters follow it). An invalid value is echoed in the message only in part.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import WithJsonSchema

from tether import errors, ids

MAX_POSITION = 2**31 - 1  # the largest seq the store's INTEGER columns hold on both databases
_POSITION = re.compile(r"[0-9]{1,10}")  # 2^31 - 1 has 10 digits: more is always too big
_SHOWN = 40  # characters of a bad value repeated in the error message

IdKind = Literal["agt", "int", "aud", "session"]

# A position query parameter, parsed by `position` (400 when invalid, not FastAPI's 422) and
# documented as the integer it is.
PositionParam = Annotated[
    str | None,
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_POSITION}),
]


def invalid(name: str, value: str, expected: str) -> errors.InvalidRequest:
    shown = value if len(value) <= _SHOWN else value[:_SHOWN] + "…"
    return errors.InvalidRequest(
        f"invalid {name} {shown!r}: expected {expected}", details={"param": name}
    )


def position(value: str | None, name: str = "cursor") -> int | None:
    """A position, or None when absent or empty."""
    if not value:
        return None
    if _POSITION.fullmatch(value) is None or int(value) > MAX_POSITION:
        raise invalid(name, value, f"an integer from 0 to {MAX_POSITION}")
    return int(value)


def id_cursor(value: str | None, kind: IdKind, name: str = "cursor") -> str | None:
    """An id cursor of this kind (`session`, or an id prefix), or None when absent or empty."""
    if not value:
        return None
    try:
        return ids.check_session(value) if kind == "session" else ids.check(kind, value)
    except errors.InvalidId:
        raise invalid(name, value, "a cursor from a previous page") from None
