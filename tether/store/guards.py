"""The state machines of machines.py, applied to SQL. Every status write starts from `update`
here with the move it makes, so no write names its own from-states: a write whose row is not
in one of the move's sources changes nothing (and says so by its row count)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Table, Update, or_
from sqlalchemy import update as sql_update

from tether import machines


def status_in(column: Any, statuses: Iterable[enum.StrEnum]) -> ColumnElement[bool]:
    """`status IN (...)` for a fixed set, as plain equalities: an IN list is re-expanded at
    every execution, equalities are compiled once."""
    return or_(*(column == s.value for s in sorted(statuses)))


def guard(column: Any, move: machines.Move[Any]) -> ColumnElement[bool]:
    """The row may make `move`: its status is one of the move's sources."""
    return status_in(column, move.sources)


def update(table: Table, move: machines.Move[Any]) -> Update:
    """`UPDATE table SET status = <target> WHERE status IN (<sources>)`: the caller adds which
    rows, and any other values."""
    return sql_update(table).where(guard(table.c.status, move)).values(status=move.target.value)
