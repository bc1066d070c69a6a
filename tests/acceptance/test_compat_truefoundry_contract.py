"""Schemathesis against TrueFoundry's cancel contract (specs/truefoundry-cancel-turn), on a
real server with auth on: responses conform, only documented statuses, no 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from schemathesis.specs.openapi import checks

from tests.acceptance import compat_schemathesis
from tests.acceptance.procs import ServerProcess, create_key

SPEC = compat_schemathesis.SPECS / "truefoundry-cancel-turn.openapi.yaml"
TENANT = "acme"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("tfy") / "data"
    key = create_key(data, tenant=TENANT)
    server = ServerProcess(data, auth="required", workers=4).start()
    yield server.url, key
    server.stop()


def _session_with_a_turn(url: str, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        agent = {"name": "talker", "model": {"reply": "echo", "tokens": 5}}
        assert c.post("/v1/agents", json=agent).status_code == 201
        made = c.post("/v1/sessions", json={"agent_id": "talker", "input": "hi"})
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


def test_cancel_contract(live: tuple[str, str]) -> None:
    url, key = live
    base = f"{url}/compat/truefoundry/{TENANT}"
    auth = {"Authorization": f"Bearer {key}"}
    # The contract types sessionId as any string but documents 400 for an invalid one
    # (`<ulid>.<zone>`): a schema-valid request answered 400 is the contract, not a failure.
    lenient = [checks.positive_data_acceptance]
    statuses = compat_schemathesis.run_stateless(
        compat_schemathesis.vendor_schema(SPEC, base),
        auth,
        300,
        additional_checks=[checks.ignored_auth],
        excluded_checks=lenient,
    )
    assert {400, 412} <= set(statuses), "generated ids: malformed and unknown"
    # a real session: its turn is cancelled (or already over), then every repeat is a no-op
    session = _session_with_a_turn(url, key)
    statuses = compat_schemathesis.run_stateless(
        compat_schemathesis.vendor_schema(SPEC, base),
        auth,
        50,
        path={"sessionId": session},
        additional_checks=[checks.ignored_auth],
        excluded_checks=lenient,
    )
    assert 200 in statuses
    assert set(statuses) <= {200, 400}
