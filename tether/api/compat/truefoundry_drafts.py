"""TrueFoundry's draft sessions: a session whose agent is given inline (`agent_spec`), its MCP
servers with it (DESIGN §10). `POST v1/agents/draft-sessions {agent_spec, agent_name?}`
makes a Tether agent of the spec (named `draft-<ulid>`, checked like any agent) and a session
of it; the draft's turns, events and cancel are the session routes' (truefoundry.py).

The inline spec maps onto an agent definition:
- `mcp_servers`: `{"type": "inline", name, url, headers?}` is the tenant's own streamable HTTP
  server (behind the destination guard; headers sealed, never echoed back);
  `{"type": "truefoundry-mcp-registry", name}` names a server the operator declared.
  `enable_tools`, `disable_tools` and `require_approval_for_tools` become tool entries
  (`<server>.<tool>`, `@all` as `<server>.*`) with policies `auto`, `deny`, `approve`.
- `model.name`: `openai/<model>`, `anthropic/<model>` or `scripted`. A draft linked to a saved
  agent (`agent_name`) runs that agent's model, Python tools and limits instead, its MCP
  servers joined by the draft's.
- `instructions`, `config.iteration_limit` (as `max_steps`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from tether import errors, ids, specs, views
from tether.api import deps
from tether.api.compat import truefoundry as tfy
from tether.api.compat import truefoundry_edge as edge
from tether.api.compat import truefoundry_wire as wire
from tether.service import Service

router = APIRouter(
    prefix=tfy.ROOT + "{tenant}/v1/agents/draft-sessions",
    route_class=edge.VendorRoute,
    include_in_schema=False,
)

_DRAFT = "truefoundry_draft"  # the agent's metadata key holding the draft's own spec
_PROVIDERS = ("openai", "anthropic")


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Model(_In):
    name: str = Field(min_length=1, max_length=256)
    params: dict[str, Any] | None = None


class McpServer(_In):
    type: Literal["inline", "truefoundry-mcp-registry"]
    name: str = Field(pattern=specs.MCP_SERVER_NAME_PATTERN)
    url: str | None = None
    headers: dict[str, str] | None = None  # not in TrueFoundry's types: an extra field
    enable_tools: list[str] | None = None
    disable_tools: list[str] | None = None
    require_approval_for_tools: list[str] | None = None


class RuntimeConfig(_In):
    iteration_limit: int | None = Field(default=None, ge=1, le=10_000)


class AgentSpec(_In):
    model: Model
    instructions: str | None = None
    mcp_servers: list[McpServer] = Field(default_factory=list, max_length=32)
    config: RuntimeConfig | None = None


class DraftCreate(_In):
    agent_spec: AgentSpec
    agent_name: str | None = None


def _entries(server: McpServer) -> list[specs.ToolSpec]:
    """The server's tool selectors as tool entries: exact names over `<server>.*`."""
    chosen: dict[str, specs.ToolPolicy] = {}
    order = [specs.ToolPolicy.AUTO, specs.ToolPolicy.APPROVE, specs.ToolPolicy.DENY]

    def put(tool: str, policy: specs.ToolPolicy) -> None:
        name = f"{server.name}.*" if tool == "@all" else f"{server.name}.{tool}"
        if name not in chosen or order.index(policy) > order.index(chosen[name]):
            chosen[name] = policy

    for selector in [
        *(server.enable_tools or []),
        *(server.disable_tools or []),
        *(server.require_approval_for_tools or []),
    ]:
        if selector.startswith("@") and selector != "@all":
            raise errors.InvalidRequest(
                f"MCP server {server.name!r}: tool selector {selector!r} is not supported "
                "(name tools, or @all)"
            )
    enable = set(server.enable_tools or [])
    approve = set(server.require_approval_for_tools or [])
    approve_all = "@all" in approve
    if enable and "@all" not in enable:
        put("@all", specs.ToolPolicy.DENY)  # only the enabled ones
    elif approve_all:
        put("@all", specs.ToolPolicy.APPROVE)
    for tool in enable - {"@all"}:
        gated = approve_all or tool in approve
        put(tool, specs.ToolPolicy.APPROVE if gated else specs.ToolPolicy.AUTO)
    for tool in approve - {"@all"}:
        if not enable or "@all" in enable or tool in enable:
            put(tool, specs.ToolPolicy.APPROVE)
    for tool in server.disable_tools or []:
        put(tool, specs.ToolPolicy.DENY)
    return [specs.ToolSpec(name=name, policy=policy) for name, policy in chosen.items()]


def _server(server: McpServer) -> dict[str, Any]:
    if server.type == "truefoundry-mcp-registry":
        if server.url is not None or server.headers is not None:
            raise errors.InvalidRequest(
                f"MCP server {server.name!r}: a registry server is named, not given a url"
            )
        return {"name": server.name}
    if server.url is None:
        raise errors.InvalidRequest(f"MCP server {server.name!r}: an inline server needs a url")
    out: dict[str, Any] = {"name": server.name, "transport": "http", "url": server.url}
    if server.headers is not None:
        out["headers"] = server.headers
    return out


def _model(model: Model) -> dict[str, Any]:
    if model.name == "scripted":
        return {"provider": "scripted"}
    provider, slash, name = model.name.partition("/")
    if not slash or provider not in _PROVIDERS or not name:
        raise errors.InvalidRequest(
            f"model.name {model.name!r}: give 'openai/<model>', 'anthropic/<model>' or "
            "'scripted', or link the draft to an agent (agent_name) to run its model"
        )
    params = {k: v for k, v in (model.params or {}).items() if v is not None}
    return {"provider": provider, "model": name, "params": params}


def _echo(spec: AgentSpec) -> dict[str, Any]:
    """The draft's spec as the client gave it, its servers' headers left out (secrets)."""
    echoed = spec.model_dump(mode="json", exclude_none=True)
    for server in echoed.get("mcp_servers", []):
        server.pop("headers", None)
    return echoed


async def _definition(svc: Service, tenant: str, body: DraftCreate) -> specs.AgentSpec:
    spec = body.agent_spec
    base: dict[str, Any] = {"model": _model(spec.model)}
    if body.agent_name is not None:
        linked = await svc.agents.find(tenant, body.agent_name)
        base = linked.spec.model_dump(mode="json")  # no secret: a sealed key is not dumped
        if linked.spec.model.has_own_key:
            raise errors.InvalidRequest(
                f"agent {body.agent_name!r} holds a key of its own: a draft cannot borrow it"
            )
    servers = [*base.get("mcp_servers", []), *(_server(s) for s in spec.mcp_servers)]
    tools = [
        *base.get("tools", []),
        *(e.model_dump() for s in spec.mcp_servers for e in _entries(s)),
    ]
    definition = {
        **base,
        "name": f"draft-{ids.new_ulid()}",
        "mcp_servers": servers,
        "tools": tools,
        "metadata": {_DRAFT: {"agent_spec": _echo(spec), "agent_name": body.agent_name}},
    }
    if spec.instructions is not None:
        definition["instructions"] = spec.instructions
    if spec.config is not None and spec.config.iteration_limit is not None:
        definition["max_steps"] = spec.config.iteration_limit
    try:
        return specs.AgentSpec.model_validate(definition)
    except ValueError as exc:
        raise errors.InvalidAgent(str(exc)) from exc


def _draft(session: dict[str, Any], draft: dict[str, Any], tenant: str) -> dict[str, Any]:
    return {
        "type": "session/draft",
        "id": session["id"],
        "agent_spec": draft["agent_spec"],
        "agent_name": draft.get("agent_name"),
        "title": None,
        "created_by_subject": wire.subject(tenant),
        "created_at": session["created_at"],
        "updated_at": session["updated_at"],
    }


@router.post("")
async def create_draft_session(
    request: Request, body: DraftCreate, svc: tfy.Svc, tenant: tfy.Writer
) -> dict[str, Any]:
    agent = await svc.agents.create(tenant, await _definition(svc, tenant, body))
    await deps.audit(request, "agent.create", agent.id)
    session, _ = await svc.create_session(tenant, agent.id)
    await deps.audit(request, "session.create", session.id)
    draft = agent.spec.metadata[_DRAFT]
    return {"data": _draft(views.session(session), draft, tenant)}


@router.get("/{session_id}")
async def get_draft_session(
    session_id: Annotated[str, Path(pattern=ids.SESSION_PATTERN)], svc: tfy.Svc, tenant: tfy.Reader
) -> dict[str, Any]:
    session = await svc.get_session(tenant, session_id)
    agent = await svc.agents.get(tenant, session.agent_id)
    draft = agent.spec.metadata.get(_DRAFT)
    if not isinstance(draft, dict):
        raise errors.NotFound(f"draft session {session_id} not found")
    return {"data": _draft(views.session(session), draft, tenant)}
