"""The MCP servers the operator declares (DESIGN §8, §10).

`TETHER_MCP_SERVERS` names a YAML (or JSON) file:

    servers:
      files:                       # a stdio server: a command Tether runs on the worker
        command: npx
        args: ["-y", "@modelcontextprotocol/server-filesystem", "/srv/shared"]
        env: {LOG_LEVEL: warn}
      search:                      # an HTTP server the operator vouches for
        url: https://mcp.internal.example/mcp
        headers: {Authorization: "Bearer ${SEARCH_TOKEN}"}

A tenant's agent names these servers; it never supplies a command (that would be code
execution on our workers). Values of `env` and `headers` may reference the worker's
environment as `${NAME}` (`$${` is a literal `${`); they are expanded when the file is loaded,
and a missing variable is an error then, not a silently empty credential later.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tether.runtime import mcp_client

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ServerName = Annotated[str, Field(pattern=NAME_PATTERN)]
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Lookup = Callable[[str], str | None]


class McpConfigError(ValueError):
    """The MCP servers file is unreadable or invalid."""


def expand(value: str, lookup: Lookup, allowed: frozenset[str] | None = None) -> str:
    """`${NAME}` replaced by the environment variable NAME (`$${` stays a literal `${`).
    `allowed`, when given, is the set of variables that may be referenced."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "${"
        if allowed is not None and name not in allowed:
            raise McpConfigError(f"${{{name}}} is not a variable that may be referenced here")
        found = lookup(name)
        if found is None:
            raise McpConfigError(f"${{{name}}} is referenced but not set")
        return found

    return _REFERENCE.sub(one, value)


class DeclaredServer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = Field(default=None, pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_transport(self) -> DeclaredServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give a `command` (stdio) or a `url` (streamable HTTP), not both")
        if self.command is None and (self.args or self.env or self.cwd):
            raise ValueError("`args`, `env` and `cwd` are for stdio servers (`command`)")
        if self.url is None and self.headers:
            raise ValueError("`headers` are for HTTP servers (`url`)")
        return self


class DeclaredServers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    servers: dict[ServerName, DeclaredServer] = Field(default_factory=dict)


def parse(text: str, lookup: Lookup) -> dict[str, mcp_client.Server]:
    try:
        data = yaml.safe_load(text)
        declared = DeclaredServers.model_validate(data if data is not None else {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise McpConfigError(f"invalid MCP servers file: {exc}") from exc
    out: dict[str, mcp_client.Server] = {}
    for name, server in declared.servers.items():
        try:
            if server.command is not None:
                out[name] = mcp_client.StdioServer(
                    name=name,
                    command=server.command,
                    args=tuple(server.args),
                    env=tuple((k, expand(v, lookup)) for k, v in server.env.items()),
                    cwd=server.cwd,
                )
            else:
                assert server.url is not None
                out[name] = mcp_client.HttpServer(
                    name=name,
                    url=expand(server.url, lookup),
                    headers=tuple((k, expand(v, lookup)) for k, v in server.headers.items()),
                )
        except McpConfigError as exc:
            raise McpConfigError(f"MCP server {name!r}: {exc}") from exc
    return out


def load(path: Path, lookup: Lookup) -> dict[str, mcp_client.Server]:
    """The servers declared in `path`, their `${NAME}` references expanded."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise McpConfigError(f"cannot read the MCP servers file {path}: {exc}") from exc
    return parse(text, lookup)
