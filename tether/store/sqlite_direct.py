"""SQLite statements run straight on the driver, compiled once by SQLAlchemy.

A profile of short turns on SQLite (bench `throughput`) spent about half of the server's time
in SQLAlchemy's execution of already compiled statements (the cache key, building parameters,
the execution context, the result's set-up), against a few percent in sqlite3 itself: a turn
runs some 25 statements. So the store's reused statements (the module-level ones, executed
over and over) skip that layer here: SQLAlchemy compiles each once for the parameter names it
is given, as it would itself; after that a run is the bind processors, the driver's execute
and the result processors, with the same SQL, the same type conversions and the same errors.

Anything this does not do exactly as SQLAlchemy would (Python-side column defaults, expanding
IN parameters, execution options, RETURNING on executemany, a missing parameter) goes through
SQLAlchemy, as does every statement built per call (it is planned only on its second run, and
such a statement dies after its first).
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.selectable import CompoundSelect, Select

_PLANNED = (Select, CompoundSelect, Insert, Update, Delete)

Processor = Callable[[Any], Any] | None


class _Result(IteratorResult[Any]):
    """What SQLAlchemy's result offers that the store uses: rows and `rowcount`."""

    rowcount: int = -1


class _Plan:
    """One statement compiled for one set of parameter names."""

    __slots__ = ("bind", "convert", "fixed", "metadata", "names", "returns", "sql")

    def __init__(self, compiled: Any) -> None:
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        binds = compiled.binds
        # values given in the statement itself (a literal compared against, a LIMIT)
        self.fixed = {n: binds[n].effective_value for n in self.names if not binds[n].required}
        processors = compiled._bind_processors
        self.bind: tuple[Processor, ...] = tuple(processors.get(n) for n in self.names)
        columns = compiled._result_columns
        self.returns = bool(columns)
        self.metadata = SimpleResultMetaData([c.keyname for c in columns])
        dialect = compiled.dialect
        processors = [c.type._cached_result_processor(dialect, None) for c in columns]
        self.convert = tuple((i, p) for i, p in enumerate(processors) if p is not None)

    def values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The statement's positional parameters; KeyError if one is missing."""
        fixed = self.fixed
        out = []
        for name, process in zip(self.names, self.bind, strict=True):
            value = params[name] if name in params else fixed[name]
            out.append(value if process is None else process(value))
        return tuple(out)

    def rows(self, found: list[Any]) -> list[Any]:
        """The rows with their columns' result processors applied (only the columns that
        have one: a message row has 3 of 13)."""
        convert = self.convert
        if not convert:
            return found
        out = []
        for row in found:
            values = list(row)
            for i, process in convert:
                values[i] = process(values[i])
            out.append(tuple(values))
        return out


def plannable(compiled: Any) -> bool:
    """SQLAlchemy would run this compiled statement with nothing beyond binding values."""
    if compiled.insert_prefetch or compiled.update_prefetch:
        return False  # Python-side column defaults to compute per run
    if compiled.literal_execute_params or compiled.post_compile_params:
        return False  # expanding IN lists and the like: rendered per run
    names = compiled.positiontup or ()
    return compiled.positional and all(compiled.binds[n].callable is None for n in names)


class DirectConnection(Connection):
    """A Connection that runs planned statements straight on the sqlite3 connection; every
    other call is SQLAlchemy's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # statement -> {(names, many): plan}; seen once: an empty dict (weak: a statement
        # built per call is dropped with it)
        self._plans: weakref.WeakKeyDictionary[Any, dict[Any, _Plan | None]] = (
            weakref.WeakKeyDictionary()
        )

    def execute(
        self,
        statement: Any,
        parameters: Any = None,
        *,
        execution_options: Any = None,
    ) -> Any:  # a CursorResult, or a result with what the store uses of one
        if execution_options or not isinstance(statement, _PLANNED) or statement._execution_options:
            return super().execute(statement, parameters, execution_options=execution_options)
        many = isinstance(parameters, Sequence) and not isinstance(parameters, Mapping)
        rows: Sequence[Mapping[str, Any]] = parameters if many else [parameters or {}]
        if not rows:
            return super().execute(statement, parameters)
        plan = self._plan(statement, rows[0], many)
        if plan is None:
            return super().execute(statement, parameters)
        try:
            values = [plan.values(r) for r in rows]
        except KeyError:  # SQLAlchemy says which parameter is missing
            return super().execute(statement, parameters)
        return self._run(plan, values, many)

    def _plan(self, statement: Any, params: Mapping[str, Any], many: bool) -> _Plan | None:
        known = self._plans.get(statement)
        if known is None:
            self._plans[statement] = {}
            return None  # the first run: maybe a statement built for this call only
        key = (tuple(params), many)
        if key not in known:  # None: planned, but SQLAlchemy must run it
            compiled = statement.compile(
                dialect=self.dialect, column_keys=list(params), for_executemany=many
            )
            usable = plannable(compiled) and not (many and compiled.effective_returning)
            known[key] = _Plan(compiled) if usable else None
        return known[key]

    def _run(self, plan: _Plan, values: list[tuple[Any, ...]], many: bool) -> _Result:
        driver = self.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            if many:
                cursor = driver.executemany(plan.sql, values)
            else:
                cursor = driver.execute(plan.sql, values[0])
            found = cursor.fetchall() if plan.returns else []
        except sqlite3.Error as exc:  # as SQLAlchemy raises it (IntegrityError, ...)
            raise DBAPIError.instance(plan.sql, values, exc, sqlite3.Error) from exc
        result = _Result(plan.metadata, iter(plan.rows(found)))
        result.rowcount = cursor.rowcount
        return result
