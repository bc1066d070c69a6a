"""Schemathesis driven through Hypothesis directly (its pytest plugin predates this pytest):
every operation of a schema, against a live server. For Tether's own OpenAPI and for the
vendors' seed contracts, verbatim copies of ../shared/specs/ in specs/ beside this file (so
CI needs nothing outside the repository)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi import checks
from schemathesis.specs.openapi.schemas import OpenApiSchema

SPECS = Path(__file__).resolve().parent / "specs"
Cases = st.SearchStrategy[schemathesis.Case]
# how to widen an operation's cases (e.g. with ids that exist on the server)
Widen = Callable[[Any, Cases], Cases]


def vendor_schema(spec: str, base_url: str) -> OpenApiSchema:
    """A vendor's seed contract (a file in specs/), aimed at `base_url`."""
    schema = schemathesis.openapi.from_path(SPECS / spec)
    schema.config.update(base_url=base_url)
    return schema


def run_stateless(
    schema: OpenApiSchema,
    *,
    key: str,
    per_operation: int,
    excluded_checks: Sequence[Any] = (),
    base_url: str | None = None,
    widen: Widen | None = None,
    path: dict[str, str] | None = None,
) -> list[int]:
    """Call every operation with generated cases, validating each answer (status documented,
    body conforming, no 5xx, auth not ignored); answers the statuses seen. `widen` adds cases,
    `path` pins path parameters (e.g. to a real object's id) in every case."""
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()
        if widen is not None:
            strategy = widen(operation, strategy)

        @given(case=strategy)
        @settings(
            max_examples=per_operation,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            if path:
                case.path_parameters = {**(case.path_parameters or {}), **path}
            response = case.call_and_validate(
                base_url=base_url,
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
                additional_checks=[checks.ignored_auth],
                excluded_checks=list(excluded_checks),
            )
            statuses.append(response.status_code)

        check()
    return statuses
