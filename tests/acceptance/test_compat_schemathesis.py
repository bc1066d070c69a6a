"""Schemathesis against the vendors' own contracts (the seed specs, copied into specs/ beside
this file) on a real server with auth on: every answer's status is
documented and its body conforms, no 5xx, auth is not ignored. Generated ids name nothing, so
cases are also drawn with ids of real sessions in every state (idle, running, waiting, done)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st

from tests import helpers
from tests.acceptance import fuzz
from tests.acceptance.procs import ServerProcess, create_key

PER_OPERATION = 150


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("compat") / "data"
    key = create_key(data)
    server = ServerProcess(data, auth="required", workers=8).start()
    yield server.url, key
    server.stop()


def _sessions(url: str, key: str) -> list[str]:
    """Sessions in every state a surface distinguishes."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:

        def agent(body: dict[str, Any]) -> str:
            r = c.post("/v1/agents", json=body)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        quick = agent(helpers.scripted_agent(f"quick{time.monotonic_ns()}"))
        slow = agent(
            helpers.scripted_agent(f"slow{time.monotonic_ns()}", tokens=10**6, token_delay_ms=5)
        )
        call = {"name": "sleep", "arguments": {"seconds": 0}}
        careful = agent(
            {
                "name": f"careful{time.monotonic_ns()}",
                "model": {"provider": "scripted", "steps": [{"tool_calls": [call]}]},
                "tools": [{"name": "sleep", "policy": "approve"}],
            }
        )
        made = []
        for agent_id, first in [(quick, None), (quick, "hi"), (careful, "go")] + [(slow, "go")] * 3:
            body = {"agent_id": agent_id, **({"input": first} if first else {})}
            r = c.post("/v1/sessions", json=body)
            assert r.status_code == 201, r.text
            made.append(str(r.json()["id"]))
        return made


def _with_real_ids(param: str, ids: list[str]) -> fuzz.Widen:
    def widen(_: Any, cases: fuzz.Cases) -> fuzz.Cases:
        def use(pair: tuple[schemathesis.Case, str]) -> schemathesis.Case:
            case, session_id = pair
            case.path_parameters = {**(case.path_parameters or {}), param: session_id}
            return case

        return st.one_of(cases, st.tuples(cases, st.sampled_from(ids)).map(use))

    return widen


@pytest.mark.parametrize(
    ("spec", "base", "param"),
    [
        ("gumloop-cancel-session.openapi.yaml", "/compat/gumloop/api/v1", "session_id"),
        ("factory-interrupt-session.openapi.yaml", "/compat/factory", "sessionId"),
    ],
)
def test_seed_contract(live: tuple[str, str], spec: str, base: str, param: str) -> None:
    url, key = live
    statuses = fuzz.run_stateless(
        fuzz.vendor_schema(spec, url + base),
        key=key,
        per_operation=PER_OPERATION,
        widen=_with_real_ids(param, _sessions(url, key)),
    )
    assert len(statuses) >= PER_OPERATION // 2
