"""An agent named by something no agent can be named (a space, a slash, a letter outside the
name pattern) is simply not found, on every surface, and never looked up (service
`agents.find`). A NUL, which PostgreSQL refuses in text (it answered 500 there, found by the
fuzz campaign's sweep), does not even get that far: the input guard refuses it with 422
(tests/integration/test_input_limits.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import Api

TRUEFOUNDRY = "/compat/truefoundry/default/v1/agents/sessions"  # auth off: the default tenant
NAMELESS = ["two words", "é", "a/b", "agt_notanid"]


@pytest.mark.parametrize("ref", NAMELESS)
async def test_an_impossible_agent_reference_is_not_found(
    client: httpx.AsyncClient, api: Api, ref: str
) -> None:
    await api.agent(reply="hi")  # one that exists: the lookup is not trivially empty
    answers = {
        "v1": await client.post("/v1/sessions", json={"agent_id": ref}),
        "factory": await client.post("/compat/factory/api/v0/sessions", json={"agentId": ref}),
        "truefoundry": await client.post(TRUEFOUNDRY, json={"agent_name": ref}),
        "truefoundry list": await client.get(TRUEFOUNDRY, params={"agent_name": ref}),
    }
    for surface, r in answers.items():
        assert r.status_code == 404, (surface, r.status_code, r.text)
    assert answers["v1"].json()["error"]["code"] == "not_found"
    assert answers["factory"].json()["metadata"]["code"] == "not_found"
    assert answers["truefoundry"].json()["error"]["type"] == "not_found_error"
