"""The records of webhooks (DESIGN §9): endpoints, their deliveries and each attempt, the
event types a tenant may subscribe to, and their public JSON."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tether import views

SECRET_PREFIX = "whsec_"  # Standard Webhooks' spelling of a signing secret
ALL_EVENTS = "*"


class WebhookEvent(enum.StrEnum):
    """What an endpoint may subscribe to (`*`: all of them)."""

    TURN_COMPLETED = "turn.completed"
    TURN_FAILED = "turn.failed"
    TURN_CANCELLED = "turn.cancelled"
    TURN_WAITING = "turn.waiting"  # an interrupt awaits a human: the turn and its interrupts
    INTERRUPT_EXPIRED = "interrupt.expired"
    SESSION_CLOSED = "session.closed"


class EndpointStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"  # by PATCH, or by the receiver answering 410 Gone
    DELETED = "deleted"  # gone from the API (404); the row stays, its deliveries dropped


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # due at `next_attempt_at`
    SENDING = "sending"  # claimed under a lease by one process, in flight
    DELIVERED = "delivered"  # a 2xx answered
    FAILED = "failed"  # gave up: retry window over, 410, or the endpoint disabled or deleted


@dataclass(slots=True)
class Endpoint:
    id: str
    tenant_id: str
    url: str
    events: list[str]
    description: str | None
    status: EndpointStatus
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class Attempt:
    """One try of a delivery: what the receiver answered (or why there was no answer)."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    response: str | None  # the first bytes of the answer's body, as text
    worker_id: str


@dataclass(slots=True)
class Delivery:
    """One event for one endpoint. Its id is the `webhook-id` of every attempt."""

    seq: int  # the order of the outbox: a session's deliveries go out in this order
    id: str
    tenant_id: str
    endpoint_id: str
    session_id: str
    type: str
    body: str  # the JSON sent, exactly
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    retry_until: datetime | None  # None: the server's retry window after created_at
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    log: list[Attempt]


@dataclass(slots=True)
class Target:
    """Where a claimed delivery goes: its endpoint as it is now."""

    url: str
    secret_sealed: str
    enabled: bool


@dataclass(slots=True)
class Claimed:
    delivery: Delivery
    target: Target
    token: str


# --- public JSON ------------------------------------------------------------------------------


def endpoint_view(e: Endpoint) -> dict[str, Any]:
    return {
        "id": e.id,
        "url": e.url,
        "events": list(e.events),
        "description": e.description,
        "status": e.status.value,
        "disabled_reason": e.disabled_reason,
        "created_at": views.iso(e.created_at),
        "updated_at": views.iso(e.updated_at),
    }


def attempt_view(a: Attempt) -> dict[str, Any]:
    return {
        "at": views.iso(a.at),
        "status_code": a.status_code,
        "error": a.error,
        "duration_ms": round(a.duration_ms, 1),
        "response": a.response,
    }


def delivery_view(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "endpoint_id": d.endpoint_id,
        "session_id": d.session_id,
        "type": d.type,
        "status": d.status.value,
        "attempts": d.attempts,
        "next_attempt_at": views.iso(d.next_attempt_at)
        if d.status is DeliveryStatus.PENDING
        else None,
        "error": d.error,
        "created_at": views.iso(d.created_at),
        "finished_at": views.iso(d.finished_at),
        "log": [attempt_view(a) for a in d.log],
    }


def subscribed(events: list[str], event: str) -> bool:
    return ALL_EVENTS in events or event in events
