"""Schemathesis against Tether's own /openapi.json, stateless and stateful, on a real server
with auth on: no 5xx, responses conform to the schema, auth is not ignored. The stateless run
is the /v1 part of the fuzz campaign (tests/acceptance/fuzz.py: nasty data, TETHER_FUZZ_CASES
cases), and whatever it made must then read back on every surface."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.specs.openapi import checks
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.acceptance import fuzz, readback
from tests.acceptance.procs import ServerProcess, create_key

TENANT = "acme"  # create_key's


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("st") / "data"
    key = create_key(data)
    # webhook endpoints it makes are never sent to: fuzzed URLs must not become requests
    server = ServerProcess(data, **fuzz.SERVER_SETTINGS).start()
    yield server.url, key
    server.stop()


@pytest.fixture(scope="module")
def full_schema(live: tuple[str, str]) -> OpenApiSchema:
    url, _ = live
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.fixture(scope="module")
def api_schema(full_schema: OpenApiSchema) -> OpenApiSchema:
    # the session event stream never ends by design: the stateful run leaves it out
    return full_schema.exclude(path_regex=r".*/events$")  # type: ignore[no-any-return]


def _json_page_of_events(case: schemathesis.Case) -> None:
    """The stateless run reads events as the JSON page (an SSE stream never ends), with any
    `after` and `Last-Event-ID` it drew."""
    if case.path.endswith("/events"):
        case.query = {**(case.query or {}), "stream": "false"}


@pytest.mark.timeout(fuzz.TIMEOUT_S)
def test_stateless(full_schema: OpenApiSchema, live: tuple[str, str]) -> None:
    url, key = live
    world = fuzz.seed_world(url, key)
    outcome = fuzz.sweep(full_schema, url=url, key=key, world=world, pin=fuzz.json_pages)
    outcome += fuzz.run_stateless(
        full_schema,
        key=key,
        per_operation=fuzz.per_operation(full_schema),
        # some valid-looking input is refused for reasons no schema states (an agent naming a
        # tool that is not registered): 422 there is right
        excluded_checks=[checks.positive_data_acceptance],
        widen=fuzz.with_real_ids(world),
        pin=_json_page_of_events,
    )
    print(outcome.summary("v1"))  # shown with -rP: the campaign's record
    assert not outcome.failures, outcome.report()
    assert len(outcome.statuses) >= fuzz.CASES
    # whatever it accepted reads back, on every surface
    reader = readback.Reader(url, key, TENANT)
    try:
        reader.sessions(reader.lists())
    finally:
        reader.close()
    assert not reader.failures, "\n".join(reader.failures[:20])


def test_stateful(api_schema: OpenApiSchema, live: tuple[str, str]) -> None:
    _, key = live
    machine = api_schema.as_state_machine()
    failures: list[str] = []
    steps: list[str] = []

    class Machine(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"headers": {"Authorization": f"Bearer {key}"}, "timeout": 30}

        def validate_response(  # type: ignore[override]
            self, response: Any, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            # Collected, not raised: raising inside the machine makes Hypothesis replay the
            # steps against a server whose state moved on, and report that instead.
            try:
                case.validate_response(
                    response,
                    # unknown query parameters are ignored, as HTTP APIs commonly do
                    excluded_checks=[
                        checks.positive_data_acceptance,
                        checks.negative_data_rejection,
                    ],
                    transport_kwargs=kwargs,
                )
            except Exception as exc:
                failures.append(f"{case.method} {case.formatted_path}: {exc}"[:3000])
            steps.append(case.method)

    # Its steps draw from a live server's answers, so a replay (shrinking, the example
    # database) sees other data; and as the server's lists grow, Hypothesis may find that the
    # same choices led to other draws and stop with FlakyStrategyDefinition. That ends the
    # exploration early but says nothing of Tether: every step that ran was checked, and
    # those checks are what this test asserts.
    with contextlib.suppress(FlakyStrategyDefinition):
        Machine.run(
            settings=settings(
                max_examples=40,
                stateful_step_count=8,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
        )
    assert steps, "the stateful run made calls"
    assert not failures, "\n\n".join(failures[:3])


def test_auth_is_not_ignored(api_schema: OpenApiSchema, live: tuple[str, str]) -> None:
    url, _ = live
    import httpx

    for operation in api_schema.get_all_operations():
        op = operation.ok()
        if not op.path.startswith("/v1/"):
            continue  # health, readiness and metrics are open to probes
        path = op.path.replace("{", "").replace("}", "")
        r = httpx.request(op.method.upper(), f"{url}{path}", json={})
        assert r.status_code == 401, (op.method, op.path, r.status_code)
