"""Schemathesis driven through Hypothesis directly (its pytest plugin predates this pytest):
every operation of a schema, against a live server."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi import checks
from schemathesis.specs.openapi.schemas import OpenApiSchema

Cases = st.SearchStrategy[schemathesis.Case]
# how to widen an operation's cases (e.g. with ids that exist on the server)
Widen = Callable[[Any, Cases], Cases]


def run_stateless(
    schema: OpenApiSchema,
    *,
    key: str,
    per_operation: int,
    excluded_checks: Sequence[Any] = (),
    base_url: str | None = None,
    widen: Widen | None = None,
) -> int:
    """Call every operation with generated cases, validating each answer (status documented,
    body conforming, no 5xx, auth not ignored); answers how many cases ran."""
    cases = 0
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
            nonlocal cases
            cases += 1
            case.call_and_validate(
                base_url=base_url,
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
                additional_checks=[checks.ignored_auth],
                excluded_checks=list(excluded_checks),
            )

        check()
    return cases
