"""The operator's MCP servers file: shapes, `${NAME}` references, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.runtime import mcp_client, mcp_servers, toolbox

ENV = {"TOKEN": "s3cret", "LEVEL": "warn"}


def test_stdio_and_http_servers(tmp_path: Path) -> None:
    path = tmp_path / "mcp.yaml"
    path.write_text(
        """
servers:
  files:
    command: npx
    args: ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]
    env: {LOG_LEVEL: "${LEVEL}", LITERAL: "$${KEEP}"}
  search:
    url: https://mcp.example.com/mcp
    headers: {Authorization: "Bearer ${TOKEN}"}
"""
    )
    servers = mcp_servers.load(path, ENV.get)
    assert servers["files"] == mcp_client.StdioServer(
        "files",
        "npx",
        ("-y", "@modelcontextprotocol/server-filesystem", "/srv"),
        (("LOG_LEVEL", "warn"), ("LITERAL", "${KEEP}")),
    )
    search = servers["search"]
    assert isinstance(search, mcp_client.HttpServer)
    assert dict(search.headers) == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(search)  # headers are credentials


def test_json_is_yaml() -> None:
    servers = mcp_servers.parse('{"servers": {"a": {"command": "x"}}}', ENV.get)
    assert servers["a"] == mcp_client.StdioServer("a", "x")
    assert mcp_servers.parse("", ENV.get) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "servers: {a: {command: x, env: {K: '${MISSING}'}}}",
            "MISSING} is referenced but not set",
        ),
        ("servers: {a: {}}", "give a `command`"),
        ("servers: {a: {command: x, url: 'http://h'}}", "not both"),
        ("servers: {a: {url: 'http://h', args: [x]}}", "for stdio servers"),
        ("servers: {a: {command: x, headers: {A: b}}}", "for HTTP servers"),
        ("servers: {'bad name': {command: x}}", "pattern"),
        ("servers: {a: {command: x, shell: true}}", "Extra inputs"),
        ("servers: {a: {url: 'ftp://h'}}", "pattern"),
        ("servers: [", "invalid MCP servers file"),
    ],
)
def test_invalid_files(text: str, message: str) -> None:
    with pytest.raises(
        mcp_servers.McpConfigError, match=message.replace("$", r"\$").replace("{", r"\{")
    ):
        mcp_servers.parse(text, ENV.get)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(mcp_servers.McpConfigError, match="cannot read"):
        mcp_servers.load(tmp_path / "absent.yaml", ENV.get)


def test_expand_with_an_allowlist() -> None:
    assert mcp_servers.expand("Bearer ${TOKEN}", ENV.get, frozenset({"TOKEN"})) == "Bearer s3cret"
    with pytest.raises(mcp_servers.McpConfigError, match="may be referenced"):
        mcp_servers.expand("${LEVEL}", ENV.get, frozenset({"TOKEN"}))


def test_model_tool_names() -> None:
    assert toolbox.model_tool_name("gh", "create_issue") == "gh__create_issue"
    assert toolbox.model_tool_name("my.srv", "get/it") == "my_srv__get_it"
    long = toolbox.model_tool_name("s", "t" * 100)
    assert len(long) == 64
    assert toolbox.model_tool_name("s", "t" * 100, {long}) == long[:62] + "_2"


def test_answers_from_question_responses() -> None:
    assert toolbox.answer_from({"action": "decline"}) == {"action": "decline"}
    assert toolbox.answer_from({"action": "accept", "content": {"a": 1}}) == {
        "action": "accept",
        "content": {"a": 1},
    }
    assert toolbox.answer_from({"a": 1}) == {"action": "accept", "content": {"a": 1}}
    assert toolbox.answer_from("yes") == {"action": "accept", "content": {"value": "yes"}}
