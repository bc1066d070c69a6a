"""Typed objects of the native API, as the SDK sees them.

These are the client's own models, separate from the server's wire schemas (the SDK never
imports the server). Unknown fields from a newer server are kept, not refused (`extra="allow"`);
statuses and modes are `Literal` types, so a type checker catches a misspelt one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TurnStatus = Literal[
    "queued", "running", "waiting", "cancelling", "completed", "failed", "cancelled"
]
SessionStatus = Literal["idle", "queued", "running", "waiting", "closed"]
InterruptStatus = Literal["pending", "resolved", "expired", "cancelled"]
OnBusy = Literal["enqueue", "reject", "interrupt", "rollback", "steer"]
ForkAt = Literal["after", "before"]
StopMode = Literal["interrupt", "rollback"]
StopScope = Literal["turn", "all"]
Role = Literal["admin", "write", "read"]
WebhookEvent = Literal[
    "turn.completed",
    "turn.failed",
    "turn.cancelled",
    "turn.waiting",
    "interrupt.expired",
    "session.closed",
    "*",
]
DeliveryStatus = Literal["pending", "sending", "delivered", "failed"]

TERMINAL_TURN_STATUSES = frozenset({"completed", "failed", "cancelled"})
TERMINAL_EVENT_TYPES = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})


class TetherModel(BaseModel):
    """Base of every API object: keeps fields it does not know."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())


# --- agents ---------------------------------------------------------------------------------


class ModelConfig(TetherModel):
    """Which model runs an agent: `scripted` (no LLM), `openai` (any Chat Completions API) or
    `anthropic` (the Messages API)."""

    provider: str = "scripted"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    steps: list[dict[str, Any]] = Field(default_factory=list)
    reply: str = "echo"
    tokens: int | None = None
    token_delay_ms: float = 0
    fail: str | None = None


class ToolConfig(TetherModel):
    """A tool an agent may call, with its policy (`auto`, `approve`, `deny`): a Python tool's
    name, an MCP tool's `<server>.<tool>`, or a pattern of those (`gh.*`)."""

    name: str
    policy: str = "auto"
    editable: bool = False
    interrupt_ttl_s: float | None = None


class McpServerConfig(TetherModel):
    """An MCP server an agent uses: a bare `name` is one the operator declared; with a `url`,
    a streamable HTTP server of your own (its `headers` are write-only: never returned)."""

    name: str
    transport: Literal["http"] | None = None
    url: str | None = None


class Agent(TetherModel):
    """An agent: model + instructions + tools + limits."""

    id: str
    name: str
    instructions: str = ""
    model: ModelConfig
    tools: list[ToolConfig] = Field(default_factory=list)
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)
    max_steps: int
    turn_timeout_s: float
    interrupt_ttl_s: float | None = None
    on_expire: str = "deny"
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


# --- sessions and turns -------------------------------------------------------------------


class TurnRef(TetherModel):
    """A session's last turn: its id and status."""

    id: str
    status: TurnStatus


class Usage(TetherModel):
    """What a turn used: tokens and model calls. With prompt caching (Anthropic),
    `input_tokens` leaves out the cached input: what was written to the cache and what was
    read from it are counted apart."""

    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class TurnError(TetherModel):
    """Why a turn failed: a stable `code` (`provider_timeout`, …) and a message."""

    code: str
    message: str


class Steer(TetherModel):
    """What became of input sent with `on_busy="steer"`: `joined` the turn under way (its
    messages join that turn's transcript at its next step boundary, with these ids), or,
    with nothing under way, a new turn."""

    message_ids: list[str]
    joined: bool


class Turn(TetherModel):
    """One unit of work of a session: input -> agent loop -> output. `steer` is set on the
    answer to a steer."""

    id: str
    session_id: str
    seq: int
    status: TurnStatus
    input: list[dict[str, Any]]
    on_busy: str
    attempt: int
    step: int
    usage: Usage
    reason: str | None = None
    error: TurnError | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    steer: Steer | None = None

    @property
    def done(self) -> bool:
        """Whether the turn has ended (`completed`, `failed` or `cancelled`)."""
        return self.status in TERMINAL_TURN_STATUSES


class ForkedFrom(TetherModel):
    """Where a fork came from: its source session, the turn it was cut at (None: the source
    had no finished turn) and whether `after` or `before` it."""

    session_id: str
    turn_id: str | None = None
    at: ForkAt


class Session(TetherModel):
    """A conversation with one agent. `turn` is set on the answer of a create (or a fork)
    with `input`; `forked_from` on a fork."""

    id: str
    agent_id: str
    status: SessionStatus
    metadata: dict[str, Any] = Field(default_factory=dict)
    last_turn: TurnRef | None = None
    last_event_seq: int = 0
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    forked_from: ForkedFrom | None = None
    turn: Turn | None = None


class StopResult(TetherModel):
    """The answer to a stop: the turn as it is and the session. `confirmed` is False when the
    executor had not confirmed within `wait` (the turn is still `cancelling`; the stop stays
    in force)."""

    turn: Turn | None
    session: Session
    confirmed: bool = True


class ToolCall(TetherModel):
    """A tool call the model made."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Message(TetherModel):
    """A transcript entry: `user`, `assistant` (text and/or tool calls) or `tool` (a result).
    `status` is `interrupted` for the partial text of a stopped turn."""

    id: str
    session_id: str
    turn_id: str
    seq: int
    role: str
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    status: str = "completed"
    created_at: datetime


# --- interrupts ------------------------------------------------------------------------------


class Interrupt(TetherModel):
    """A pause for outside input: `approval`, `question` or a custom type. `response` is None
    while it is pending."""

    id: str
    session_id: str
    turn_id: str
    type: str
    tool_call_id: str | None = None
    tool_name: str | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    response: Any = None
    status: InterruptStatus
    step: int = 0
    created_at: datetime
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    expires_at: datetime | None = None

    @property
    def pending(self) -> bool:
        return self.status == "pending"


# --- events ----------------------------------------------------------------------------------


class ToolProgress(TetherModel):
    """A running tool's progress report (`tool.progress`): `total` None when unknown."""

    tool_call_id: str
    name: str
    progress: float
    total: float | None = None
    message: str | None = None


class Event(TetherModel):
    """One event of a session. Durable events have their own `seq` (gap-free, increasing);
    a live `message.delta` carries the seq of the last durable event before it and, in `data`,
    `message_id`, `offset` (in characters) and `delta` (the text)."""

    seq: int
    type: str
    session_id: str
    turn_id: str | None = None
    created_at: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def durable(self) -> bool:
        """Stored, with a seq of its own (everything but `message.delta`)."""
        return self.type != "message.delta"

    @property
    def delta(self) -> str | None:
        """The text of a `message.delta`, else None."""
        return str(self.data.get("delta", "")) if self.type == "message.delta" else None

    @property
    def turn(self) -> Turn | None:
        """The turn carried by `turn.*` events."""
        value = self.data.get("turn")
        return Turn.model_validate(value) if isinstance(value, dict) else None

    @property
    def message(self) -> Message | None:
        """The message carried by `message.completed`."""
        value = self.data.get("message")
        return Message.model_validate(value) if isinstance(value, dict) else None

    @property
    def interrupt(self) -> Interrupt | None:
        """The interrupt carried by `interrupt.*` events."""
        value = self.data.get("interrupt")
        return Interrupt.model_validate(value) if isinstance(value, dict) else None

    @property
    def progress(self) -> ToolProgress | None:
        """The report carried by `tool.progress`."""
        if self.type != "tool.progress":
            return None
        return ToolProgress.model_validate(self.data)

    @property
    def steered(self) -> list[str] | None:
        """The ids of the messages a `turn.steered` delivered into the turn, in order."""
        if self.type != "turn.steered":
            return None
        return [str(i) for i in self.data.get("message_ids", [])]

    @property
    def forked_from(self) -> ForkedFrom | None:
        """Where the session came from, on its `session.forked` (its first event)."""
        value = self.data.get("forked_from") if self.type == "session.forked" else None
        return ForkedFrom.model_validate(value) if isinstance(value, dict) else None

    @property
    def terminal(self) -> bool:
        """A turn's last event: `turn.completed`, `turn.failed` or `turn.cancelled`."""
        return self.type in TERMINAL_EVENT_TYPES

    @property
    def turn_waiting(self) -> bool:
        """The `interrupt.created` after which the turn waits for answers."""
        return self.type == "interrupt.created" and bool(self.data.get("turn_waiting"))


# --- who is asking, keys and audit (admins) ----------------------------------------------------


class Me(TetherModel):
    """Who the client is to the server: its tenant and role, the key it sent, and whether
    the server requires keys at all (`auth` False: open mode, no key needed)."""

    tenant_id: str
    role: Role
    auth: bool
    key_id: str | None = None
    key_prefix: str | None = None


class ApiKey(TetherModel):
    """An API key, never with its secret."""

    id: str
    tenant_id: str
    role: str
    name: str | None = None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    """A new API key: `key` is its secret, in this answer and nowhere else."""

    key: str


class AuditEntry(TetherModel):
    """One mutation of the tenant, with who made it."""

    id: str
    tenant_id: str
    key_id: str | None = None
    key_prefix: str | None = None
    action: str
    target: str | None = None
    request_id: str | None = None
    details: dict[str, Any] | None = None
    created_at: datetime


# --- webhooks (admins) --------------------------------------------------------------------------


class Webhook(TetherModel):
    """An endpoint told of the tenant's events, never with its signing secret. `status` is
    `disabled` after a PATCH or when the receiver answered 410 (`disabled_reason: gone`)."""

    id: str
    url: str
    events: list[str]
    description: str | None = None
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None = None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(Webhook):
    """A new endpoint (or a rotated secret): `secret` (`whsec_…`), in this answer only."""

    secret: str


class WebhookAttempt(TetherModel):
    """One try of a delivery: the receiver's status code, or why there was none."""

    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float
    response: str | None = None


class WebhookDelivery(TetherModel):
    """One event for one endpoint; `id` is the `webhook-id` of every attempt."""

    id: str
    endpoint_id: str
    session_id: str
    type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = None
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    log: list[WebhookAttempt] = Field(default_factory=list)
