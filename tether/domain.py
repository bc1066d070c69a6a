"""Records, status enums and the transition rules of DESIGN §2."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from tether import ids
from tether.specs import AgentSpec


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
class Queued:
    """A turn just queued: `to_wake`, the running turns its on_busy stopped (their executors
    must be woken); `after`, the session's last event seq before it (following it from
    there shows everything it does)."""

    turn: Turn
    to_wake: list[str]
    after: int


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
