"""Schemathesis over a vendor's contract against a live Tether: the way test_schemathesis.py
drives it (hypothesis directly, the pytest plugin off), for any spec. The contracts are
verbatim copies of ../shared/specs/ in specs/ beside this file, so CI needs nothing else."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.schemas import OpenApiSchema

SPECS = Path(__file__).resolve().parent / "specs"


def vendor_schema(spec: Path, base_url: str) -> OpenApiSchema:
    """The vendor's spec, aimed at `base_url` (its own server URL is a template)."""
    schema = schemathesis.openapi.from_path(spec)
    schema.config.update(base_url=base_url)
    return schema


def run_stateless(
    schema: OpenApiSchema,
    headers: dict[str, str],
    examples: int,
    *,
    path: dict[str, str] | None = None,
    additional_checks: Iterable[Any] = (),
    excluded_checks: Iterable[Any] = (),
) -> list[int]:
    """Every operation, `examples` cases each, every check; answers the statuses seen.
    `path` pins path parameters (e.g. to a real object's id) in every case."""
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            if path:
                case.path_parameters = {**(case.path_parameters or {}), **path}
            response = case.call_and_validate(
                headers=headers,
                timeout=30,
                additional_checks=list(additional_checks),
                excluded_checks=list(excluded_checks),
            )
            statuses.append(response.status_code)

        check()
    return statuses
