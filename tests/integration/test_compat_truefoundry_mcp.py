"""TrueFoundry's official client (`truefoundry-gateway-sdk`, unmodified) makes a draft session
whose inline agent spec carries an MCP server (tests/mcp_servers/tiny.py over streamable
HTTP); the turn then calls its tools, one of them approval-gated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from truefoundry_gateway_sdk.agents import (
    AsyncPrivateAgentSessionClient,
    TurnDoneEvent,
    TurnStateDone,
    UserToolApprovalEvent,
)
from truefoundry_gateway_sdk.types import (
    AgentSpec,
    ApprovalAllow,
    InlineMcpServer,
    Model,
    RuntimeConfig,
    UserMessage,
)

from tests import mcp_helpers
from tests.helpers import Server, running_server, scripted_agent
from tether.auth import Role

TOKEN = "tfy-inline-secret"


@pytest.fixture
async def tiny(tmp_path: Path) -> AsyncIterator[mcp_helpers.HttpProcess]:
    process = await mcp_helpers.tiny_http(tmp_path / "journal.jsonl").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Server, str, str]]:
    """The server, a write key (the client's) and an admin key (for /v1's agents)."""
    async with running_server(
        tmp_path,
        auth="required",
        mcp_allow_private=True,
        secret_key=Fernet.generate_key().decode(),  # seals the inline server's headers
    ) as srv:
        _, key = await srv.node.keys.create("acme", Role.WRITE, "tfy")
        _, admin = await srv.node.keys.create("acme", Role.ADMIN, "admin")
        yield srv, key, admin


async def test_draft_session_with_an_inline_mcp_server(
    server: tuple[Server, str, str], tiny: mcp_helpers.HttpProcess
) -> None:
    srv, key, admin = server
    steps = [
        {"tool_calls": [{"name": "web__echo", "arguments": {"text": "from MCP"}}]},
        {"tool_calls": [{"name": "web__add", "arguments": {"a": 2, "b": 3}}]},
    ]
    linked = scripted_agent("linked", steps=steps, reply="all done", tools=[])
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {admin}"}
    ) as native:
        assert (await native.post("/v1/agents", json=linked)).status_code == 201

        async with httpx.AsyncClient(timeout=30) as transport:
            client = AsyncPrivateAgentSessionClient(
                base_url=f"{srv.url}/compat/truefoundry/acme",
                api_key=key,
                max_retries=0,
                httpx_client=transport,
            )
            spec = AgentSpec(
                model=Model(name="scripted"),
                instructions="use the web server",
                mcp_servers=[
                    InlineMcpServer(
                        name="web",
                        url=tiny.url,
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        require_approval_for_tools=["add"],
                    )
                ],
                config=RuntimeConfig(iteration_limit=10),
            )
            draft = await client.create_draft_session(agent_spec=spec, agent_name="linked")
            assert draft.type == "session/draft"
            assert draft.agent_name == "linked"
            assert draft.agent_spec.mcp_servers is not None
            assert draft.agent_spec.mcp_servers[0].name == "web"
            again = await client.get_draft_session(draft.id)
            assert again.id == draft.id

            turn = draft.prepare_turn(input=[UserMessage(content="go")])
            events: list[Any] = [item.event async for item in turn.execute()]
            done = events[-1]
            assert isinstance(done, TurnDoneEvent) and isinstance(done.state, TurnStateDone)
            responses = [e for e in events if e.type == "tool.response"]
            assert "from MCP" in json.dumps(responses[0].model_dump(mode="json"))
            (required,) = done.state.required_actions
            assert required.type == "tool.approval_required"
            (call,) = required.tool_calls
            approve = UserToolApprovalEvent(
                thread_id=draft.id, tool_call_id=call.id, approval=ApprovalAllow()
            )
            resumed = draft.prepare_turn(input=[approve])
            seen = [item.event async for item in resumed.execute()]
            last = seen[-1]
            assert isinstance(last, TurnDoneEvent) and isinstance(last.state, TurnStateDone)
            assert last.state.output is not None and last.state.output.content == "all done"
            added = [e for e in seen if e.type == "tool.response"]
            assert '"5"' in json.dumps(added[0].model_dump(mode="json"))

        # the same session on /v1: the draft's agent, its header sealed and never shown
        session = (await native.get(f"/v1/sessions/{draft.id}")).json()
        agent = (await native.get(f"/v1/agents/{session['agent_id']}")).json()
        assert agent["mcp_servers"] == [{"name": "web", "transport": "http", "url": tiny.url}]
        assert {"name": "web.add", "policy": "approve"}.items() <= agent["tools"][0].items()
        everything = json.dumps(
            [
                agent,
                (
                    await native.get(f"/v1/sessions/{draft.id}/events", params={"stream": "false"})
                ).json(),
            ]
        )
        assert TOKEN not in everything


async def test_draft_session_refusals(server: tuple[Server, str, str]) -> None:
    srv, key, _ = server
    base = f"{srv.url}/compat/truefoundry/acme/v1/agents/draft-sessions"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as c:
        r = await c.post(base, json={"agent_spec": {"model": {"name": "gpt-4o"}}})
        assert r.status_code == 400 and "openai/<model>" in r.json()["error"]["message"]
        tagged = {
            "type": "inline",
            "name": "x",
            "url": "https://mcp.example.com/mcp",
            "enable_tools": ["@read-only"],
        }
        r = await c.post(
            base, json={"agent_spec": {"model": {"name": "scripted"}, "mcp_servers": [tagged]}}
        )
        assert r.status_code == 400 and "@read-only" in r.json()["error"]["message"]
        unknown = {"type": "truefoundry-mcp-registry", "name": "nothere"}
        r = await c.post(
            base, json={"agent_spec": {"model": {"name": "scripted"}, "mcp_servers": [unknown]}}
        )
        assert r.status_code in (400, 422), r.text
        assert "not one the operator declared" in r.json()["error"]["message"]
