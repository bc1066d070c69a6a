"""Which policy an MCP tool gets (tether/runtime/toolbox.py), what an agent's servers may be
(runtime/mcp_servers.py `Servers`), and the examples of docs/mcp.md and docs/anthropic.md,
which must pass the same checks an agent's creation makes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tether import destinations, errors, specs
from tether.runtime import mcp_servers, toolbox
from tether.runtime.tools import builtin_registry

ROOT = Path(__file__).resolve().parent.parent.parent


def _box(*tools: dict[str, Any]) -> toolbox.Toolbox:
    spec = specs.AgentSpec.model_validate(
        {"name": "a", "mcp_servers": [{"name": "gh"}], "tools": list(tools)}
    )
    return toolbox.Toolbox(spec, builtin_registry())


def test_exact_entries_win_then_the_strictest_pattern() -> None:
    box = _box(
        {"name": "gh.*", "policy": "approve"},
        {"name": "gh.get_issue"},
        {"name": "*.delete_*", "policy": "deny"},
    )
    assert box.policy_of("gh.get_issue").policy is specs.ToolPolicy.AUTO
    assert box.policy_of("gh.create_issue").policy is specs.ToolPolicy.APPROVE
    assert box.policy_of("gh.delete_repo").policy is specs.ToolPolicy.DENY
    assert box.policy_of("other.thing").policy is specs.ToolPolicy.AUTO  # no entry: auto
    assert toolbox.is_pattern("gh.*") and not toolbox.is_pattern("gh.get_issue")


def test_patterns_do_not_offer_python_tools() -> None:
    box = _box({"name": "*", "policy": "approve"}, {"name": "get_time"})
    assert [t["name"] for t in box.offered()] == ["get_time"]
    assert box.get("sleep") is None
    assert box.entry("get_time") is not None


def _servers(**declared: Any) -> mcp_servers.Servers:
    return mcp_servers.Servers(
        mcp_servers.parse(json.dumps({"servers": declared}), lambda name: "x"),
        guard=destinations.Guard(),
        header_envs=["OK_TOKEN"],
        lookup={"OK_TOKEN": "t0ken"}.get,
    )


def test_tenant_servers_are_bound() -> None:
    servers = _servers(files={"command": "true"})
    own = specs.McpServerSpec.model_validate(
        {
            "name": "own",
            "url": "https://mcp.example.com/mcp",
            "headers": {"Authorization": "Bearer ${OK_TOKEN}"},
        }
    )
    servers.check([specs.McpServerSpec(name="files"), own])
    resolved = servers.resolve(own, {"Authorization": "Bearer ${OK_TOKEN}"})
    assert resolved.headers == (("Authorization", "Bearer t0ken"),)  # type: ignore[union-attr]
    assert resolved.guarded  # type: ignore[union-attr]
    with pytest.raises(errors.DestinationNotAllowed):
        servers.check([specs.McpServerSpec(name="lo", url="http://127.0.0.1:8/mcp")])
    with pytest.raises(mcp_servers.McpConfigError):
        servers.resolve(own, {"X": "${HOME}"})  # only the allowed variables, at run time too


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("doc", ["docs/mcp.md", "docs/anthropic.md"])
def test_documented_agents_pass_the_checks(doc: str) -> None:
    [declared] = _blocks(ROOT / "docs/mcp.md", "yaml")
    servers = mcp_servers.Servers(
        mcp_servers.parse(declared, lambda name: "x"), guard=destinations.Guard()
    )
    agents = [json.loads(b) for b in _blocks(ROOT / doc, "json") if b.startswith("{")]
    agents = [a for a in agents if "mcp_servers" in a]
    assert agents, f"{doc} shows an agent with MCP servers"
    registry = builtin_registry()
    for agent in agents:
        spec = specs.AgentSpec.model_validate(agent)
        servers.check(spec.mcp_servers)
        listed = {s.name for s in spec.mcp_servers}
        for entry in spec.tools:
            server = entry.name.partition(".")[0]
            assert registry.get(entry.name) or server in listed or toolbox.is_pattern(entry.name)
