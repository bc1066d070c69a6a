"""What the compatibility surfaces' tests share: keys of two tenants, and agents."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import Server, scripted_agent
from tether.auth import Role


async def tenant_keys(server: Server) -> dict[str, str]:
    """A key per role of tenant `acme` (`admin`, `write`, `read`), and `other`: a writer of
    another tenant."""
    keys = {}
    for role in Role:
        _, keys[role.name.lower()] = await server.node.keys.create("acme", role, role.name)
    _, keys["other"] = await server.node.keys.create("other", Role.WRITE, "other")
    return keys


async def make_agent(admin: httpx.AsyncClient, name: str, **model: Any) -> str:
    r = await admin.post("/v1/agents", json=scripted_agent(name, **model))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def approval_agent(admin: httpx.AsyncClient, name: str = "careful") -> str:
    """An agent whose one tool call (`sleep`, policy `approve`) waits for an approval."""
    call = {"name": "sleep", "arguments": {"seconds": 0}}
    body = {
        "name": name,
        "model": {"provider": "scripted", "steps": [{"tool_calls": [call]}], "reply": "finished"},
        "tools": [{"name": "sleep", "policy": "approve"}],
    }
    r = await admin.post("/v1/agents", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])
