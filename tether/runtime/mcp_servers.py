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

An agent may also bring HTTP servers of its own (`mcp_servers: [{"name", "url", "headers"}]`):
those are the tenant's choice, so their URL passes the destination guard (DESIGN §8) and their
header values may reference only the variables in `TETHER_MCP_HEADER_ENVS`; otherwise a
tenant could have the server send an operator's secret to a host of the tenant's choosing.
`Servers` answers both questions: is an agent's list acceptable (at creation), and which
servers does it name (at turn start).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tether import destinations, errors, specs
from tether.config import Settings
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


def references(value: str) -> list[str]:
    """The variables `value` references as `${NAME}`."""
    return [m.group(1) for m in _REFERENCE.finditer(value) if m.group(1) is not None]


class DeclaredServer(BaseModel):
    # hide_input_in_errors: a refused value may be a secret (an env value, a header)
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
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
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
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


class Servers:
    """The MCP servers agents may use in this process: the operator's, declared in the file,
    and the tenants' own HTTP servers, bound by the guard and the header allowlist."""

    def __init__(
        self,
        declared: dict[str, mcp_client.Server],
        *,
        guard: destinations.Guard,
        header_envs: Collection[str] = (),
        lookup: Lookup = lambda name: None,
    ):
        self.declared = declared
        self.guard = guard
        self.header_envs = frozenset(header_envs)
        self._lookup = lookup

    def check(self, servers: Sequence[specs.McpServerSpec]) -> None:
        """At agent creation: InvalidAgent (or DestinationNotAllowed) for a list this process
        could not run."""
        names = [s.name for s in servers]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise errors.InvalidAgent(
                f"mcp_servers lists {', '.join(repeated)} more than once",
                details={"duplicate_mcp_servers": repeated},
            )
        for spec in servers:
            if spec.declared:
                if spec.name not in self.declared:
                    raise errors.InvalidAgent(
                        f"MCP server {spec.name!r} is not one the operator declared: name one of "
                        f"{sorted(self.declared) or 'none (TETHER_MCP_SERVERS is not set)'}, or "
                        "give the url of a streamable HTTP server of your own",
                        details={"field": "mcp_servers", "available": sorted(self.declared)},
                    )
                continue
            assert spec.url is not None
            try:
                self.guard.check(spec.url)
            except errors.DestinationNotAllowed as exc:
                raise errors.DestinationNotAllowed(
                    f"MCP server {spec.name!r}: {exc.message}", details={"field": "mcp_servers"}
                ) from exc
            for header, value in (spec.headers or {}).items():
                refused = [n for n in references(value.get_secret_value()) if not self._may(n)]
                if refused:
                    raise errors.InvalidAgent(
                        f"MCP server {spec.name!r}, header {header!r}: ${{{refused[0]}}} is not "
                        "a variable agents may reference (TETHER_MCP_HEADER_ENVS)",
                        details={"field": "mcp_servers", "allowed": sorted(self.header_envs)},
                    )

    def _may(self, name: str) -> bool:
        return name in self.header_envs

    def resolve(
        self, spec: specs.McpServerSpec, headers: dict[str, str] | None = None
    ) -> mcp_client.Server:
        """At turn start: the server an entry names, its `${NAME}` references expanded
        (`headers`: the tenant's, opened). McpConfigError (or DestinationNotAllowed) says why
        it cannot be used now: the operator's settings may have changed since."""
        if spec.declared:
            found = self.declared.get(spec.name)
            if found is None:
                raise McpConfigError(f"MCP server {spec.name!r} is no longer declared")
            return found
        assert spec.url is not None
        self.guard.check(spec.url)
        expanded = tuple(
            (name, expand(value, self._lookup, self.header_envs))
            for name, value in (headers or {}).items()
        )
        return mcp_client.HttpServer(spec.name, spec.url, expanded, guarded=True)


def seal_headers(headers: dict[str, str]) -> str:
    """What is sealed of a server's headers (one secret: the JSON object)."""
    return json.dumps(headers, sort_keys=True)


def unseal_headers(opened: str) -> dict[str, str]:
    loaded = json.loads(opened)
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def from_settings(settings: Settings) -> Servers:
    """This process's servers: the operator's file (`TETHER_MCP_SERVERS`, McpConfigError if it
    is unusable) and the rules for tenants' own."""
    lookup = settings.environment_key
    declared = load(settings.mcp_servers, lookup) if settings.mcp_servers is not None else {}
    return Servers(
        declared,
        guard=destinations.Guard(allow_private=settings.mcp_allow_private),
        header_envs=settings.mcp_header_envs,
        lookup=lookup,
    )
