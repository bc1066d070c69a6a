"""Cursors and positions at the edge: one parser per kind, used by every surface, refusing
anything else with 400 `invalid_request` (each surface renders it in its own error shape).

The kinds:

- a **position**: an event seq (`?after=`, `Last-Event-ID`), the seq cursor of a list of turns
  or messages, an offset into a list. ASCII digits only, from 0 to 2^31 - 1: the store keeps
  seqs in INTEGER columns, 32 bits on PostgreSQL, so no larger position can name anything, and
  comparing one with a column fails there (asyncpg refuses the parameter) as one past 2^63 - 1
  fails on SQLite (OverflowError). Python's `str.isdigit` also accepts '²' and other digits
  `int()` refuses, and `int()` alone accepts '+5', ' 5' and '5_0': neither is the check.
  The webhook outbox's seq (a delivery list's cursor) is the one 64-bit position.
- a **position sent as a JSON number** (TrueFoundry's `after_sequence_number`, agent-threads'
  `afterSeq`): an integer, not a boolean, a float or a string, with the same bounds (or the
  surface's own maximum, when its positions are not Tether seqs).
- an **id cursor**: the id of the last item of the previous page, in that list's id format
  (tether/ids.py), so nothing else ever reaches a query.
- an **inbox cursor**: the tenant's interrupts are ordered by expiry, then age, then id, so
  their cursor is those three (base64url of a JSON list, written by store/interrupts.py); it
  is read back here into values the store can compare, or refused.

An empty value is no cursor (the SSE specification gives an empty last event id that meaning;
the query parameters follow it). An invalid value is echoed in the message only in part.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import WithJsonSchema

from tether import errors, ids

MAX_POSITION = 2**31 - 1  # the largest seq the store's INTEGER columns hold on both databases
# the webhook outbox's seq: BIGINT on PostgreSQL, the 64-bit rowid on SQLite (one counter for
# every tenant's deliveries, so it may well pass 2^31)
MAX_OUTBOX_SEQ = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")
_SHOWN = 40  # characters of a bad value repeated in the error message

IdKind = Literal["agt", "int", "aud", "whk", "session"]

_INBOX_CURSOR_CHARS = 256  # an issued one has about 120: nothing longer is decoded
_POSITION_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_POSITION}

# A position query parameter, parsed by `position` (400 when invalid, not FastAPI's 422) and
# documented as the integer it is.
PositionParam = Annotated[str | None, WithJsonSchema(_POSITION_SCHEMA)]

# A position in a JSON body, parsed by `json_position` (400 in the surface's shape, with the
# parameter named) and documented as the integer it is.
JsonPosition = Annotated[object, WithJsonSchema(_POSITION_SCHEMA)]

# Where the tenant's interrupt inbox resumes: (expiry, creation, interrupt id), aware UTC.
InboxKey = tuple[datetime, datetime, str]


def invalid(name: str, value: str, expected: str) -> errors.InvalidRequest:
    shown = value if len(value) <= _SHOWN else value[:_SHOWN] + "…"
    return errors.InvalidRequest(
        f"invalid {name} {shown!r}: expected {expected}", details={"param": name}
    )


def position(value: str | None, name: str = "cursor", maximum: int = MAX_POSITION) -> int | None:
    """A position, or None when absent or empty."""
    if not value:
        return None
    # more digits than the maximum has is always too big: such a value is never converted
    too_long = len(value) > len(str(maximum))
    if too_long or _DIGITS.fullmatch(value) is None or int(value) > maximum:
        raise invalid(name, value, f"an integer from 0 to {maximum}")
    return int(value)


def json_position(value: object, name: str, maximum: int = MAX_POSITION) -> int | None:
    """A position sent as a JSON number, or None when absent (null)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        # json.dumps, not repr: what the client sent, and never a 5,000-digit conversion
        shown = value if isinstance(value, str) else json.dumps(value)[:_SHOWN]
        raise invalid(name, shown, f"an integer from 0 to {maximum}")
    return value


def id_cursor(value: str | None, kind: IdKind, name: str = "cursor") -> str | None:
    """An id cursor of this kind (`session`, or an id prefix), or None when absent or empty."""
    if not value:
        return None
    try:
        return ids.check_session(value) if kind == "session" else ids.check(kind, value)
    except errors.InvalidId:
        raise invalid(name, value, "a cursor from a previous page") from None


def inbox_cursor(value: str | None, name: str = "cursor") -> InboxKey | None:
    """An inbox cursor (store/interrupts.py writes them), or None when absent or empty. Its
    times must be ones the store can hold: a zone is required, and a time that cannot be
    moved to UTC (year 1 at +14:00) is refused here rather than overflowing in the query."""
    if not value:
        return None
    try:
        if len(value) > _INBOX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        expires, created, interrupt_id = json.loads(raw)
        key = (_utc(expires), _utc(created), ids.check("int", interrupt_id))
    except (binascii.Error, ValueError, TypeError, OverflowError, errors.InvalidId):
        raise invalid(name, value, "a cursor from a previous page") from None
    return key


def _utc(text: object) -> datetime:
    if not isinstance(text, str):
        raise TypeError("not a timestamp")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no zone")
    return moment.astimezone(UTC)
