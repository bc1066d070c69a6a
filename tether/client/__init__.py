"""Tether's Python SDK: `Tether` (sync) and `AsyncTether` (async) over httpx.

    from tether.client import Tether

    tether = Tether.from_env()  # TETHER_URL, TETHER_API_KEY
    session = tether.sessions.create("demo")
    for event in tether.turns.create(session.id, "Hello!", stream=True):
        print(event.delta or "", end="")

Typed models for what the API returns, typed exceptions per error code, auto-paging lists,
retries of the calls that are safe to repeat, automatic `Idempotency-Key` on creates, and
streams that resume by themselves. Never imports the server (FastAPI, SQLAlchemy).
"""

from tether.client._async_streams import AsyncEventStream, AsyncTurnStream
from tether.client._sync_streams import EventStream, TurnStream
from tether.client.async_client import AsyncPaginator, AsyncTether
from tether.client.client import Paginator, Tether
from tether.client.errors import (
    AlreadyExists,
    APIConnectionError,
    APIError,
    APITimeoutError,
    ArgumentsNotEditable,
    BadRequest,
    Conflict,
    Forbidden,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InterruptNotPending,
    InvalidAgent,
    InvalidId,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    SessionBusy,
    SessionClosed,
    TetherClientError,
    Unauthorized,
    Unprocessable,
    ValidationError,
)
from tether.client.models import (
    Agent,
    ApiKey,
    ApiKeyCreated,
    AuditEntry,
    Event,
    Interrupt,
    Message,
    ModelConfig,
    Session,
    StopResult,
    ToolCall,
    ToolConfig,
    Turn,
    TurnError,
    TurnRef,
    Usage,
    Webhook,
    WebhookAttempt,
    WebhookCreated,
    WebhookDelivery,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "Agent",
    "AlreadyExists",
    "ApiKey",
    "ApiKeyCreated",
    "ArgumentsNotEditable",
    "AsyncEventStream",
    "AsyncPaginator",
    "AsyncTether",
    "AsyncTurnStream",
    "AuditEntry",
    "BadRequest",
    "Conflict",
    "Event",
    "EventStream",
    "Forbidden",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
    "Interrupt",
    "InterruptNotPending",
    "InvalidAgent",
    "InvalidId",
    "Message",
    "ModelConfig",
    "NotFound",
    "Paginator",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "Session",
    "SessionBusy",
    "SessionClosed",
    "StopResult",
    "Tether",
    "TetherClientError",
    "ToolCall",
    "ToolConfig",
    "Turn",
    "TurnError",
    "TurnRef",
    "TurnStream",
    "Unauthorized",
    "Unprocessable",
    "Usage",
    "ValidationError",
    "Webhook",
    "WebhookAttempt",
    "WebhookCreated",
    "WebhookDelivery",
]
