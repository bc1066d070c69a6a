"""The tools one agent may call (DESIGN §10): its Python tools and the tools of its MCP
servers, each under the policy of the tool entry that names it.

- A Python tool is offered when a tool entry names it exactly.
- An MCP tool of a server the agent lists is offered unless its entry denies it. Its entry is
  the one naming it exactly (`gh.create_issue`), else the strictest of the patterns matching
  it (`gh.*`, `*.delete_*`: shell-style, `fnmatch`), else none (policy `auto`). The exact
  entry wins over patterns, so `{"name": "gh.*", "policy": "approve"}` with
  `{"name": "gh.get_issue", "policy": "auto"}` gates every tool of `gh` but one. Patterns
  apply to MCP tools only: Python tools are few and named one by one.
- The model sees an MCP tool as `model_tool_name` (`gh__create_issue`: providers
  accept no dot); that name is the call's name in the transcript, the ledger and the events.
- Discovery is the hub's (per worker process, per server and tenant: kept until the server's
  connection ends or the server says its tools changed). `refresh` asks before each step, so a
  server that comes back, or whose tools changed, is seen at the next step; a server that
  cannot be reached offers nothing meanwhile, and a call to one of its tools gets an error
  result saying why.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tether import specs
from tether.runtime import mcp_client
from tether.runtime.tools import ToolContext, ToolError, ToolRegistry

log = logging.getLogger(__name__)

_STRICTNESS = [specs.ToolPolicy.AUTO, specs.ToolPolicy.APPROVE, specs.ToolPolicy.DENY]
_WILDCARDS = frozenset("*?[")


def is_pattern(name: str) -> bool:
    return any(c in _WILDCARDS for c in name)


def strictest(entries: Sequence[specs.ToolSpec]) -> specs.ToolSpec | None:
    """Of several entries for one tool, the strictest: an approval is never skipped."""
    return max(entries, key=lambda t: _STRICTNESS.index(t.policy), default=None)


class AnyTool(Protocol):
    """What the loop calls: a Python tool (`tools.Tool`) or an MCP tool."""

    name: str
    idempotent: bool

    def spec(self) -> dict[str, Any]: ...

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> str: ...


@dataclass(slots=True)
class McpTool:
    """One tool of an MCP server, called through the worker's hub."""

    name: str  # as offered to the model
    info: mcp_client.ToolInfo
    server: mcp_client.Server
    hub: mcp_client.McpHub
    scope: str  # the tenant: tenants never share a server's session
    # MCP says nothing binding about side effects (annotations are hints from the server):
    # a call a crash cut short has an unknown outcome, never run again unasked.
    idempotent: bool = False

    @property
    def qualified_name(self) -> str:
        return self.info.qualified_name

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.info.description,
            "parameters": self.info.input_schema or {"type": "object", "properties": {}},
        }

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        def on_progress(update: mcp_client.ProgressUpdate) -> None:
            ctx.progress(update.progress, update.total, update.message)

        async def on_elicit(request: mcp_client.Elicitation) -> dict[str, Any]:
            # a question interrupt; on resume the call is made again and, when the server
            # asks again, the recorded answer is given (ToolContext.ask)
            asked = {k: v for k, v in request.as_dict().items() if k != "message"}
            answer = await ctx.ask(
                {
                    "question": request.message,
                    **asked,
                    "server": self.info.server,
                    "tool": self.info.name,
                }
            )
            return answer_from(answer)

        result = await self.hub.call(
            self.server,
            self.info.name,
            arguments,
            scope=self.scope,
            on_progress=on_progress,
            on_elicit=on_elicit,
        )
        if result.is_error:
            raise ToolError(result.text)
        return result.text


class Toolbox:
    """The tools of one agent, for one tenant. `servers`: the agent's MCP servers as this
    process resolved them (an exception: why that one cannot be used now)."""

    def __init__(
        self,
        spec: specs.AgentSpec,
        registry: ToolRegistry,
        *,
        servers: dict[str, mcp_client.Server | Exception] | None = None,
        hub: mcp_client.McpHub | None = None,
        scope: str = "",
    ):
        self.spec = spec
        self.registry = registry
        self.servers = servers or {}
        self.hub = hub
        self.scope = scope
        self._exact = {t.name: t for t in spec.tools if not is_pattern(t.name)}
        self._patterns = [t for t in spec.tools if is_pattern(t.name)]
        self._mcp: dict[str, McpTool] = {}
        self._unavailable: dict[str, str] = {}  # server -> why it offers nothing now
        self._found: dict[str, list[mcp_client.ToolInfo]] = {}

    async def refresh(self) -> None:
        """Discover the MCP servers' tools (the hub remembers them: cheap when nothing
        changed)."""
        if not self.servers:
            return
        found: dict[str, list[mcp_client.ToolInfo]] = {}
        unavailable: dict[str, str] = {}
        for name, server in self.servers.items():
            if isinstance(server, Exception):
                unavailable[name] = f"MCP server {name!r} cannot be used: {server}"
                continue
            if self.hub is None:
                unavailable[name] = "MCP servers are not available in this process"
                continue
            try:
                found[name] = await self.hub.tools(server, self.scope)
            except mcp_client.McpUnavailable as exc:
                log.warning("MCP server %r offers no tools now: %s", name, exc)
                unavailable[name] = str(exc)
        # assigned at once: turns of the same agent share this toolbox
        self._unavailable = unavailable
        if found != self._found:
            self._found = found
            self._mcp = self._name(found)

    def _name(self, found: dict[str, list[mcp_client.ToolInfo]]) -> dict[str, McpTool]:
        assert self.hub is not None
        taken = {t.name for t in self.spec.tools if not is_pattern(t.name)}
        named: dict[str, McpTool] = {}
        for server, infos in found.items():
            resolved = self.servers[server]
            assert not isinstance(resolved, Exception)
            for info in infos:
                name = model_tool_name(info.server, info.name, taken)
                taken.add(name)
                named[name] = McpTool(name, info, resolved, self.hub, self.scope)
        return named

    def get(self, name: str) -> AnyTool | None:
        """The tool the model calls by `name`, if the agent has one (whatever its policy)."""
        if (mcp := self._mcp.get(name)) is not None:
            return mcp
        if name in self._exact:
            return self.registry.get(name)
        return None

    def entry(self, name: str) -> specs.ToolSpec | None:
        """The entry whose policy applies to the tool the model calls by `name`; None: the
        agent has no such tool."""
        if (mcp := self._mcp.get(name)) is not None:
            return self.policy_of(mcp.qualified_name)
        if name in self._exact and self.registry.get(name) is not None:
            return strictest([t for t in self.spec.tools if t.name == name])
        return None

    def policy_of(self, qualified: str) -> specs.ToolSpec:
        """The entry of the MCP tool `<server>.<tool>` (the default one if none names it)."""
        exact = [t for t in self.spec.tools if t.name == qualified]
        if exact:
            chosen = strictest(exact)
        else:
            matching = [t for t in self._patterns if fnmatch.fnmatchcase(qualified, t.name)]
            chosen = strictest(matching)
        return chosen or specs.ToolSpec(name=qualified)

    def offered(self) -> list[dict[str, Any]]:
        """The specs offered to the model: every tool it may call, none it may not."""
        offered: list[dict[str, Any]] = []
        for name in dict.fromkeys(t.name for t in self.spec.tools if not is_pattern(t.name)):
            entry = self.entry(name)
            if entry is None or entry.policy is specs.ToolPolicy.DENY:
                continue
            if name not in self._mcp and (tool := self.registry.get(name)) is not None:
                offered.append(tool.spec())
        for mcp in self._mcp.values():
            if self.policy_of(mcp.qualified_name).policy is not specs.ToolPolicy.DENY:
                offered.append(mcp.spec())
        return offered

    def missing(self, name: str) -> str:
        """What the model reads when it calls a tool the agent does not have."""
        why = "; ".join(self._unavailable.values())
        if why:
            return f"Error: no tool named {name!r} is available ({why})."
        return f"Error: no tool named {name!r} is available."


def model_tool_name(server: str, tool: str, taken: set[str] | None = None) -> str:
    """`<server>.<tool>` as providers accept a function name (`^[A-Za-z0-9_-]{1,64}$`): other
    characters become `_`, the dot `__`; a clash with a name in `taken` gets a number."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", server) + "__" + re.sub(r"[^A-Za-z0-9_-]", "_", tool)
    name, n = base[:64], 1
    while taken is not None and name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[: 64 - len(suffix)] + suffix
    return name


def answer_from(response: Any) -> dict[str, Any]:
    """A question interrupt's response as an elicitation answer: `{"action", "content"?}` as
    given, else an object is the accepted content, and anything else `{"value": it}`."""
    if isinstance(response, dict) and response.get("action") in ("accept", "decline", "cancel"):
        content = response.get("content")
        out: dict[str, Any] = {"action": response["action"]}
        if response["action"] == "accept" and isinstance(content, dict):
            out["content"] = content
        return out
    if isinstance(response, dict):
        return {"action": "accept", "content": response}
    return {"action": "accept", "content": {"value": response}}
