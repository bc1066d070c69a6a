"""Records, status enums and the transition rules of DESIGN §2."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from tether import ids


def utcnow() -> datetime:
    return datetime.now(UTC)


class TurnStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class InterruptStatus(enum.StrEnum):
    PENDING = "pending"
    RESOLVED = "resolved"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class SteerStatus(enum.StrEnum):
    """A steer (DESIGN §3): input for a turn, waiting for its next step boundary."""

    PENDING = "pending"  # stored: the turn it joined has not reached a boundary yet
    DELIVERED = "delivered"  # appended to that turn's transcript at a boundary
    CONVERTED = "converted"  # the turn ended (or began stopping) first: a new queued turn


class ToolRunStatus(enum.StrEnum):
    """A tool call in the ledger (DESIGN §5). No row yet: the call has not been reached."""

    STARTED = "started"  # about to run, or running; after a crash: may or may not have run
    PAUSED = "paused"  # waits on an interrupt
    FINISHED = "finished"  # its result is in the transcript


TERMINAL = frozenset({TurnStatus.COMPLETED, TurnStatus.FAILED, TurnStatus.CANCELLED})
# A turn in one of these holds its session: no other turn of the session may start.
ACTIVE = frozenset({TurnStatus.RUNNING, TurnStatus.CANCELLING, TurnStatus.WAITING})
UNFINISHED = ACTIVE | {TurnStatus.QUEUED}
# A worker holds these under a lease (and a claim token).
HELD = frozenset({TurnStatus.RUNNING, TurnStatus.CANCELLING})


class SessionStatus(enum.StrEnum):
    IDLE = "idle"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    CLOSED = "closed"


def derive_session_status(
    closed: bool, active: TurnStatus | None, has_queued: bool
) -> SessionStatus:
    """Session status from its turns: `active` is the status of its active turn, if any."""
    if active in (TurnStatus.RUNNING, TurnStatus.CANCELLING):
        return SessionStatus.RUNNING
    if active is TurnStatus.WAITING:
        return SessionStatus.WAITING
    if has_queued:
        return SessionStatus.QUEUED
    return SessionStatus.CLOSED if closed else SessionStatus.IDLE


class OnBusy(enum.StrEnum):
    ENQUEUE = "enqueue"
    REJECT = "reject"
    INTERRUPT = "interrupt"  # stop the active turn (mode interrupt), then run the new one
    ROLLBACK = "rollback"  # stop the active turn (mode rollback), then run the new one
    STEER = "steer"  # join the active turn: delivered at its next step boundary


class StopMode(enum.StrEnum):
    INTERRUPT = "interrupt"  # keep what happened; partial text marked interrupted
    ROLLBACK = "rollback"  # remove the turn's messages from the transcript


class ForkAt(enum.StrEnum):
    """Where a fork cuts its source's transcript (DESIGN §4b), relative to a turn."""

    AFTER = "after"  # up to the end of the turn
    BEFORE = "before"  # up to its start


class StopScope(enum.StrEnum):
    TURN = "turn"  # the active turn; queued turns then proceed
    ALL = "all"  # also cancel the queued turns


class EventType(enum.StrEnum):
    TURN_QUEUED = "turn.queued"
    TURN_STARTED = "turn.started"
    MESSAGE_DELTA = "message.delta"
    MESSAGE_COMPLETED = "message.completed"
    TOOL_STARTED = "tool.started"
    TOOL_COMPLETED = "tool.completed"
    TOOL_PROGRESS = "tool.progress"  # a running tool's progress report (MCP progress)
    INTERRUPT_CREATED = "interrupt.created"
    INTERRUPT_RESOLVED = "interrupt.resolved"
    INTERRUPT_EXPIRED = "interrupt.expired"
    TURN_CANCELLING = "turn.cancelling"
    TURN_COMPLETED = "turn.completed"
    TURN_FAILED = "turn.failed"
    TURN_CANCELLED = "turn.cancelled"
    SESSION_UPDATED = "session.updated"
    TURN_STEERED = "turn.steered"  # steers joined the turn's transcript at a step boundary
    SESSION_FORKED = "session.forked"  # the first event of a fork: where it came from
    # Live only, never stored (the session's log is gone with it): streams of a purged
    # session end on it.
    SESSION_DELETED = "session.deleted"


TERMINAL_EVENT = {
    TurnStatus.COMPLETED: EventType.TURN_COMPLETED,
    TurnStatus.FAILED: EventType.TURN_FAILED,
    TurnStatus.CANCELLED: EventType.TURN_CANCELLED,
}


# --- agent definitions ----------------------------------------------------------------------


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptedStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = ""
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)


# Validation context under which stored records are read back: only they may carry sealed
# secrets (a client cannot hand one in).
STORED = {"stored": True}

# The longest an interrupt may wait for its answer. Its expiry is a datetime, and none past
# the year 9999 can be made: a ttl of 1e12 s failed every turn that paused (internal_error).
# A year is longer than any honest wait; for no expiry at all, leave the ttl out.
MAX_INTERRUPT_TTL_S = 366 * 24 * 3600


def _interrupt_ttl(value: float | None, info: ValidationInfo) -> float | None:
    if value is None or value <= MAX_INTERRUPT_TTL_S:
        return value
    if (info.context or {}).get("stored"):
        return float(MAX_INTERRUPT_TTL_S)  # stored before the bound: it reads, at the bound
    raise ValueError(f"at most {MAX_INTERRUPT_TTL_S} s (a year); leave it out for no expiry")


InterruptTtl = Annotated[
    float | None,
    Field(gt=0, json_schema_extra={"maximum": MAX_INTERRUPT_TTL_S}),
    AfterValidator(_interrupt_ttl),
]


class ModelSpec(BaseModel):
    """Which model runs the agent. `scripted` needs no LLM; `openai` is any Chat Completions API;
    `anthropic` is Anthropic's Messages API.

    `api_key` is the tenant's own key: write-only. It is sealed before it is stored (into
    `api_key_sealed`) and neither field is ever dumped: no API answer, event or log shows it.
    """

    # hide_input_in_errors: a validation error must not echo an api_key back
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    provider: Literal["scripted", "openai", "anthropic"] = "scripted"
    # HTTP providers
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = Field(
        default=None, description="an environment variable of the server holding the key"
    )
    api_key: SecretStr | None = Field(
        default=None,
        exclude=True,
        min_length=1,
        max_length=4096,
        description="your own key (write-only: stored encrypted, never returned)",
    )
    api_key_sealed: SkipJsonSchema[str | None] = Field(default=None, exclude=True)
    params: dict[str, Any] = Field(default_factory=dict)
    max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="transient failures before the first token (429, 5xx, overloaded, "
        "connection reset) are retried this many times, with backoff",
    )
    # scripted
    steps: list[ScriptedStep] = Field(default_factory=list)
    reply: str = "echo"
    tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    token_delay_ms: float = Field(default=0, ge=0, le=60_000)
    fail: str | None = Field(default=None, description="scripted: fail the model call with this")

    @field_validator("api_key_sealed")
    @classmethod
    def _stored_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not (info.context or {}).get("stored"):
            raise ValueError("api_key_sealed is not a field agents may set: give api_key")
        return value

    @model_validator(mode="after")
    def _provider_fields(self) -> ModelSpec:
        if self.provider in ("openai", "anthropic") and not self.model:
            raise ValueError(f"model.model is required for provider {self.provider!r}")
        if self.provider == "scripted" and self.api_key is not None:
            raise ValueError("model.api_key is for providers that call an API, not 'scripted'")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give model.api_key or model.api_key_env, not both")
        return self

    @property
    def has_own_key(self) -> bool:
        return self.api_key is not None or self.api_key_sealed is not None


class ToolPolicy(enum.StrEnum):
    AUTO = "auto"
    APPROVE = "approve"
    DENY = "deny"


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    policy: ToolPolicy = ToolPolicy.AUTO
    editable: bool = Field(default=False, description="approvers may edit the arguments")
    interrupt_ttl_s: InterruptTtl = Field(
        default=None, description="expiry of this tool's interrupts (else the agent's)"
    )


MCP_SERVER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # an HTTP token (RFC 9110)


class McpServerSpec(BaseModel):
    """An MCP server an agent uses (DESIGN §10). A bare `name` refers to a server the operator
    declared (`TETHER_MCP_SERVERS`); with a `url`, it is the tenant's own streamable HTTP
    server. `headers` are write-only, like `model.api_key`: sealed before they are stored
    (into `headers_sealed`), never dumped."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    name: str = Field(pattern=MCP_SERVER_NAME_PATTERN)
    transport: Literal["http"] | None = Field(
        default=None, description="'http' (streamable HTTP) for a server of your own"
    )
    url: str | None = Field(default=None, max_length=2048)
    headers: dict[str, SecretStr] | None = Field(
        default=None,
        exclude=True,
        max_length=32,
        description="sent with every request (write-only: stored encrypted, never returned); "
        "values may reference the server's environment variables the operator allows, ${NAME}",
    )
    headers_sealed: SkipJsonSchema[str | None] = Field(default=None, exclude=True)

    @field_validator("headers_sealed")
    @classmethod
    def _stored_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not (info.context or {}).get("stored"):
            raise ValueError("headers_sealed is not a field agents may set: give headers")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, SecretStr] | None) -> dict[str, SecretStr] | None:
        for name, secret in (value or {}).items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name[:128]!r} is not a valid HTTP header name")
            text = secret.get_secret_value()
            if len(text) > 8192 or any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} is too long or holds a line break")
        return value

    @model_validator(mode="after")
    def _transport(self) -> McpServerSpec:
        if self.url is not None and self.transport is None:
            self.transport = "http"
        if self.transport == "http" and self.url is None:
            raise ValueError(f"MCP server {self.name!r}: transport 'http' needs a url")
        if self.url is None and self.headers is not None:
            raise ValueError(
                f"MCP server {self.name!r}: headers are for a server of your own (with a url); "
                "a server the operator declared comes with its own"
            )
        return self

    @property
    def declared(self) -> bool:
        """A server the operator declared, named only."""
        return self.url is None


AGENT_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class AgentSpec(BaseModel):
    """The body of an agent definition (DESIGN §7)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    name: str = Field(min_length=1, max_length=128, pattern=AGENT_NAME_PATTERN)
    instructions: str = ""
    model: ModelSpec = Field(default_factory=ModelSpec)
    tools: list[ToolSpec] = Field(
        default_factory=list,
        description="Python tools by name, MCP tools as `<server>.<tool>` or a pattern "
        "(`gh.*`), each with its policy",
    )
    mcp_servers: list[McpServerSpec] = Field(default_factory=list, max_length=32)
    max_steps: int = Field(default=20, ge=1, le=10_000)
    turn_timeout_s: float = Field(default=600, gt=0, le=7 * 24 * 3600)
    interrupt_ttl_s: InterruptTtl = None
    on_expire: Literal["deny", "fail"] = "deny"
    metadata: dict[str, Any] = Field(default_factory=dict)

    def stored(self) -> dict[str, Any]:
        """The form the store keeps: the public dump plus the sealed key (never a plain one)."""
        assert self.model.api_key is None, "seal the agent's api_key before storing it"
        data = self.model_dump(mode="json")
        if self.model.api_key_sealed is not None:
            data["model"]["api_key_sealed"] = self.model.api_key_sealed
        for server, dumped in zip(self.mcp_servers, data["mcp_servers"], strict=True):
            assert server.headers is None, "seal the MCP server's headers before storing them"
            if server.headers_sealed is not None:
                dumped["headers_sealed"] = server.headers_sealed
        return data

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> AgentSpec:
        return cls.model_validate(data, context=STORED)


@dataclass(slots=True)
class Interrupt:
    """A pause for outside input (DESIGN §4): the lleverage SDK's Interrupt fields, snake_case,
    plus lifecycle fields."""

    id: str
    tenant_id: str
    session_id: str
    turn_id: str
    type: str  # approval | question | a custom type
    tool_call_id: str | None
    tool_name: str | None
    request: dict[str, Any]
    response: Any
    status: InterruptStatus
    step: int
    created_at: datetime
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    expires_at: datetime | None = None
    on_expire: str = "deny"


@dataclass(slots=True)
class InterruptRequest:
    """What a paused tool call asks for, before it is stored."""

    type: str
    tool_call_id: str
    tool_name: str
    request: dict[str, Any]
    ttl_s: float | None = None
    on_expire: str = "deny"  # the agent's: what an expiry does to the turn


# --- stored records ------------------------------------------------------------------------


class Role(enum.IntEnum):
    """What an API key may do; each role may do all that the ones below it may."""

    READ = 1
    WRITE = 2
    ADMIN = 3


@dataclass(slots=True)
class ApiKey:
    """An API key as kept: never the key itself (DESIGN §8)."""

    id: str
    tenant_id: str
    role: Role
    name: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(slots=True)
class Agent:
    id: str
    tenant_id: str
    spec: AgentSpec
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class TurnRef:
    id: str
    status: TurnStatus


@dataclass(slots=True)
class Session:
    id: str
    tenant_id: str
    agent_id: str
    status: SessionStatus
    metadata: dict[str, Any]
    last_turn: TurnRef | None
    last_event_seq: int
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    # a fork's origin: {session_id, turn_id, at} (DESIGN §4b); None for other sessions
    forked_from: dict[str, Any] | None = None


@dataclass(slots=True)
class Usage:
    """Tokens a turn used. `input_tokens` excludes cached input, as Anthropic counts it: prompt
    caching adds what was written to the cache and what was read from it."""

    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.model_calls += other.model_calls
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "model_calls": self.model_calls,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


@dataclass(slots=True)
class TurnError:
    code: str
    message: str


@dataclass(slots=True)
class Turn:
    id: str
    session_id: str
    tenant_id: str
    seq: int
    status: TurnStatus
    input: list[dict[str, Any]]
    on_busy: str
    attempt: int
    step: int
    usage: Usage
    run_time_s: float
    reason: str | None
    error: TurnError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # the lease: who runs it, until when, with which fencing token
    worker_id: str | None = None
    claim_token: str | None = None
    lease_expires_at: datetime | None = None


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


class ToolOutcome(enum.StrEnum):
    """What became of a tool call: the `outcome` of its `tool.completed` event."""

    COMPLETED = "completed"  # it ran; its result is kept
    ERROR = "error"  # it failed, or could not be called: the model reads why
    DENIED = "denied"  # the approver said no
    EXPIRED = "expired"  # its interrupt expired unanswered
    UNKNOWN = "unknown"  # it may have run before a crash; not run again
    INTERRUPTED = "interrupted"  # it was running when the turn stopped
    NOT_RUN = "not_run"  # the turn ended before it ran


class MessageStatus(enum.StrEnum):
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"


MessageRole = Literal["user", "assistant", "tool", "system"]


@dataclass(slots=True)
class Message:
    id: str
    session_id: str
    turn_id: str
    seq: int
    role: MessageRole
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    status: MessageStatus = MessageStatus.COMPLETED
    created_at: datetime = field(default_factory=utcnow)
    # The provider's own form of an assistant answer, `{"provider": name, "content": [...]}`,
    # sent back verbatim on the next call (Anthropic's signed thinking blocks must be). Never
    # shown by the API: it carries opaque signatures and the model's reasoning.
    provider_data: dict[str, Any] | None = None

    @classmethod
    def tool_result(cls, session_id: str, turn_id: str, call: ToolCall, content: str) -> Message:
        """A tool call's result, for the model; numbered when the store appends it."""
        return cls(
            id=ids.new("msg"),
            session_id=session_id,
            turn_id=turn_id,
            seq=0,
            role="tool",
            content=content,
            tool_call_id=call.id,
            name=call.name,
        )


@dataclass(slots=True)
class ToolResult:
    """A tool call's result message (role `tool`) and what became of the call."""

    message: Message
    outcome: ToolOutcome


@dataclass(slots=True)
class TurnEnd:
    """How a turn ends. A stop's end with no `reason` takes the requested stop's own."""

    status: TurnStatus
    reason: str | None = None
    error: TurnError | None = None


@dataclass(slots=True)
class Checkpoint:
    """What one step of a turn makes durable, all in one transaction (DESIGN §5): the step's
    messages, the calls about to run, the results of those that ran, and whether the turn
    goes on, waits on interrupts, or ends. The executor's one way to write."""

    usage: Usage
    step_done: bool = False  # a model call or a tool batch completed: the step counter moves
    messages: list[Message] = field(default_factory=list)  # assistant messages
    started: list[ToolCall] = field(default_factory=list)  # calls about to run
    results: list[ToolResult] = field(default_factory=list)
    waits: bool = False  # the turn pauses: it waits on interrupts, holding no worker
    asks: list[InterruptRequest] = field(default_factory=list)  # the interrupts to create
    end: TurnEnd | None = None
    interrupted: list[str] = field(default_factory=list)  # calls in flight when it stopped
    # A step boundary (DESIGN §3): the transcript is valid for a model call and the loop may
    # make another. Pending steers join the transcript here, and a completing checkpoint
    # with steers pending commits as a step instead: the loop goes on.
    boundary: bool = False


@dataclass(slots=True)
class Steered:
    """What a steer request became: the turn it joined (or the new turn it made, `joined`
    False) and the ids its messages have (or will have) in the transcript."""

    turn: Turn
    message_ids: list[str]
    joined: bool


@dataclass(slots=True)
class ResumeState:
    """What the store knows of an earlier attempt of a turn's tool calls."""

    interrupts: dict[str, list[Interrupt]] = field(default_factory=dict)  # by call id, in order
    started: set[str] = field(default_factory=set)  # left `started` by a crash


@dataclass(slots=True)
class Event:
    session_id: str
    seq: int
    type: EventType
    turn_id: str | None
    data: dict[str, Any]
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type.value,
            "session_id": self.session_id,
            "turn_id": self.turn_id,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "data": self.data,
        }
