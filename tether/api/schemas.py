"""Wire schemas of the native API: what goes in and out over HTTP, apart from domain records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tether import domain, ids, specs

T = TypeVar("T")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputMessage(_In):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=1_000_000)


Input = str | list[InputMessage]


class SessionCreate(_In):
    agent_id: str = Field(description="an agent id, or an agent's name", max_length=128)
    metadata: dict[str, Any] = Field(default_factory=dict)
    input: Input | None = Field(default=None, description="optional first turn")


class TurnCreate(_In):
    input: Input
    on_busy: domain.OnBusy = domain.OnBusy.ENQUEUE
    stream: bool = Field(default=False, description="answer with the turn's SSE stream")


class ForkRequest(_In):
    turn_id: str | None = Field(
        default=None,
        pattern=ids.pattern("turn"),
        description="the turn to fork at (default: the last finished one)",
    )
    at: domain.ForkAt = Field(
        default=domain.ForkAt.AFTER,
        description="`after`: the history up to the end of the turn; `before`: up to its start",
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="the fork's metadata")
    input: Input | None = Field(default=None, description="optional first turn of the fork")


class StopRequest(_In):
    mode: domain.StopMode = domain.StopMode.INTERRUPT
    scope: domain.StopScope = domain.StopScope.TURN
    wait: float = Field(default=5.0, ge=0, le=60, description="seconds to wait for confirmation")
    reason: str = Field(
        default="client_cancelled", min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$"
    )


class TurnStopRequest(_In):
    mode: domain.StopMode = domain.StopMode.INTERRUPT
    wait: float = Field(default=5.0, ge=0, le=60)
    reason: str = Field(
        default="client_cancelled", min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$"
    )


class AgentPatch(_In):
    """Fields to change; the rest are kept."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str | None = None
    instructions: str | None = None
    model: specs.ModelSpec | None = None
    tools: list[specs.ToolSpec] | None = None
    mcp_servers: list[specs.McpServerSpec] | None = None
    max_steps: int | None = None
    turn_timeout_s: float | None = None
    interrupt_ttl_s: float | None = None
    on_expire: Literal["deny", "fail"] | None = None
    metadata: dict[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        """The fields given, as JSON. A write-only api_key is never dumped, so it is carried
        over by hand, null included (which removes the stored one); so are MCP servers'
        headers."""
        changes = self.model_dump(mode="json", exclude_unset=True)
        if self.model is not None and "api_key" in self.model.model_fields_set:
            key = self.model.api_key
            changes["model"]["api_key"] = key.get_secret_value() if key is not None else None
        for server, dumped in zip(
            self.mcp_servers or [], changes.get("mcp_servers") or [], strict=True
        ):
            if server.headers is not None:
                dumped["headers"] = {k: v.get_secret_value() for k, v in server.headers.items()}
        return changes


class AgentOut(specs.AgentSpec):
    model_config = ConfigDict(extra="forbid")
    id: str
    created_at: str
    updated_at: str


class TurnRefOut(BaseModel):
    id: str
    status: domain.TurnStatus


class ForkedFromOut(BaseModel):
    session_id: str
    turn_id: str | None = Field(description="null: the source had no finished turn")
    at: domain.ForkAt


class SessionOut(BaseModel):
    id: str
    agent_id: str
    status: domain.SessionStatus
    metadata: dict[str, Any]
    last_turn: TurnRefOut | None
    last_event_seq: int
    created_at: str
    updated_at: str
    closed_at: str | None
    forked_from: ForkedFromOut | None = Field(
        default=None, description="a fork's origin (DESIGN §4b); null for other sessions"
    )


class ErrorInfo(BaseModel):
    code: str
    message: str


class TurnOut(BaseModel):
    id: str
    session_id: str
    seq: int
    status: domain.TurnStatus
    input: list[dict[str, Any]]
    on_busy: str
    attempt: int
    step: int
    usage: dict[str, int]
    reason: str | None
    error: ErrorInfo | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class SteerOut(BaseModel):
    message_ids: list[str] = Field(description="the ids the transcript shows its messages with")
    joined: bool = Field(
        description="true: it joined this turn, delivered at its next step boundary; "
        "false: the session had nothing under way, this is a new turn"
    )


class TurnAccepted(TurnOut):
    steer: SteerOut | None = Field(default=None, description='with `on_busy: "steer"`')


class SessionCreated(SessionOut):
    turn: TurnOut | None = None


class StopOut(BaseModel):
    """200: the stop is confirmed (or there was nothing to stop); 202: still `cancelling`,
    and the stop stays in force."""

    turn: TurnOut | None
    session: SessionOut


class RespondRequest(_In):
    response: Any = Field(
        description='approval: {"decision": "approve"|"deny", "reason"?, '
        '"arguments"?}; question and custom types: any JSON'
    )
    resolved_by: str | None = Field(default=None, max_length=128)


class InterruptOut(BaseModel):
    id: str
    session_id: str
    turn_id: str
    type: str
    tool_call_id: str | None
    tool_name: str | None
    request: dict[str, Any]
    response: Any
    status: domain.InterruptStatus
    step: int
    created_at: str
    resolved_at: str | None
    resolved_by: str | None
    expires_at: str | None


class ToolCallOut(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]


class MessageOut(BaseModel):
    id: str
    session_id: str
    turn_id: str
    seq: int
    role: str
    content: str | None
    tool_calls: list[ToolCallOut]
    tool_call_id: str | None
    name: str | None
    status: str
    created_at: str


class EventOut(BaseModel):
    seq: int
    type: str
    session_id: str
    turn_id: str | None
    created_at: str
    data: dict[str, Any]


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None


def page(found: Any, view: Callable[[Any], Any]) -> dict[str, Any]:
    """A page of records (the service's answer) on the wire: each item through `view`."""
    return {"data": [view(item) for item in found.items], "next_cursor": found.next_cursor}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


class MeOut(BaseModel):
    """Who is asking: what the console shows and hides is decided from this."""

    tenant_id: str
    role: Literal["admin", "write", "read"]
    auth: bool = Field(description="whether this server requires API keys (false: open mode)")
    key_id: str | None = Field(description="the key this request carried (null in open mode)")
    key_prefix: str | None
