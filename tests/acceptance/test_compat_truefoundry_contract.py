"""Schemathesis against TrueFoundry's cancel contract (specs/truefoundry-cancel-turn), on a
real server with auth on: responses conform, only documented statuses, no 5xx."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from schemathesis.specs.openapi import checks
from truefoundry_gateway_sdk import TrueFoundryGateway
from truefoundry_gateway_sdk import errors as tfy_errors

from tests.acceptance import fuzz
from tests.acceptance.procs import ServerProcess, create_key

SPEC = "truefoundry-cancel-turn.openapi.yaml"
TENANT = "acme"


@dataclass
class Live:
    url: str
    key: str
    data: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("tfy") / "data"
    key = create_key(data, tenant=TENANT)
    server = ServerProcess(data, auth="required", workers=4).start()
    yield Live(server.url, key, data)
    server.stop()


def _session_with_a_turn(url: str, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        agent = {"name": "talker", "model": {"reply": "echo", "tokens": 5}}
        assert c.post("/v1/agents", json=agent).status_code in (201, 409)  # 409: made before
        made = c.post("/v1/sessions", json={"agent_id": "talker", "input": "hi"})
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


def test_cancel_contract(live: Live) -> None:
    url, key = live.url, live.key
    base = f"{url}/compat/truefoundry/{TENANT}"
    # The contract types sessionId as any string but documents 400 for an invalid one
    # (`<ulid>.<zone>`): a schema-valid request answered 400 is the contract, not a failure.
    lenient = [checks.positive_data_acceptance]
    outcome = fuzz.run_stateless(
        fuzz.vendor_schema(SPEC, base),
        key=key,
        per_operation=max(100, fuzz.CASES // 3),
        excluded_checks=lenient,
    )
    assert not outcome.failures, outcome.report()
    assert {400, 412} <= set(outcome.statuses), "generated ids: malformed and unknown"
    # a real session: its turn is cancelled (or already over), then every repeat is a no-op
    session = _session_with_a_turn(url, key)
    outcome = fuzz.run_stateless(
        fuzz.vendor_schema(SPEC, base),
        key=key,
        per_operation=max(30, fuzz.CASES // 20),
        path={"sessionId": session},
        excluded_checks=lenient,
    )
    assert not outcome.failures, outcome.report()
    assert 200 in outcome.statuses
    assert set(outcome.statuses) <= {200, 400}


@pytest.mark.slow
@pytest.mark.embedded  # a SQLite write lock; PostgreSQL down is tests/acceptance/test_cluster.py
def test_cancel_while_the_store_is_locked_is_400(live: Live) -> None:
    """Another process holds SQLite's write lock past the store's busy timeout (10 s): the
    contract's 400 "store unavailable"; the same cancel works once the lock is gone."""
    session = _session_with_a_turn(live.url, live.key)
    with httpx.Client(timeout=60) as transport:
        sessions = TrueFoundryGateway(
            base_url=f"{live.url}/compat/truefoundry/{TENANT}",
            api_key=live.key,
            max_retries=0,
            httpx_client=transport,
        ).agents.sessions
        holder = sqlite3.connect(live.data / "tether.db", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(tfy_errors.BadRequestError) as refused:
                sessions.cancel(session)
        finally:
            holder.close()
        assert refused.value.body.error.code == "store_unavailable"
        sessions.cancel(session)
