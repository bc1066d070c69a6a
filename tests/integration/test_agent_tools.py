"""An agent lists each tool once: which entry's policy would apply to a repeated one?"""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import Api, Server, wait_for
from tether import specs

DUPLICATES = [{"name": "sleep", "policy": "auto"}, {"name": "sleep", "policy": "approve"}]


async def test_duplicate_tool_entries_are_refused(client: httpx.AsyncClient) -> None:
    body = {"name": "dup", "model": {"provider": "scripted"}, "tools": DUPLICATES}
    r = await client.post("/v1/agents", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_agent"
    assert "sleep" in r.json()["error"]["message"]
    assert r.json()["error"]["details"] == {"duplicate_tools": ["sleep"]}
    ok = await client.post("/v1/agents", json={**body, "tools": DUPLICATES[1:]})
    assert ok.status_code == 201
    r = await client.patch(f"/v1/agents/{ok.json()['id']}", json={"tools": DUPLICATES})
    assert r.status_code == 422
    assert (await client.get(f"/v1/agents/{ok.json()['id']}")).json()["tools"] == [
        {"name": "sleep", "policy": "approve", "editable": False, "interrupt_ttl_s": None}
    ]


async def test_a_stored_agent_with_duplicates_asks_for_approval(
    server: Server, api: Api, client: httpx.AsyncClient
) -> None:
    """One stored before the rule (written here straight to the store): the strictest entry
    holds, so the approval is not skipped."""
    spec = specs.AgentSpec.model_validate(
        {
            "name": "legacy",
            "model": {
                "provider": "scripted",
                "steps": [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}],
            },
            "tools": DUPLICATES,
        }
    )
    agent = await server.node.store.agents.create("default", spec)
    sid = await api.session(agent.id)
    await api.turn(sid, "go")

    async def pending() -> list[dict[str, Any]]:
        r = await client.get(f"/v1/sessions/{sid}/interrupts", params={"status": "pending"})
        return r.json()["data"]  # type: ignore[no-any-return]

    [asked] = await wait_for(pending, 10, "an approval request")
    assert asked["type"] == "approval"
    assert asked["tool_name"] == "sleep"
