"""/v1/webhooks (DESIGN §9): a tenant's endpoints and the log of their deliveries. Admins
only: endpoints are tenant configuration (their URLs may carry the receiver's credentials),
and the log holds every session's events and the receivers' answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tether import ids
from tether.api import cursors, schemas
from tether.api.deps import audit, service, tenant_for
from tether.auth import Role
from tether.service import Service
from tether.webhooks import records
from tether.webhooks.records import DeliveryStatus

Svc = Annotated[Service, Depends(service)]
Admin = Annotated[str, Depends(tenant_for(Role.ADMIN))]
WebhookId = Annotated[str, Path(pattern=ids.pattern("whk"))]
DeliveryId = Annotated[str, Path(pattern=ids.pattern("dlv"))]
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422)
}
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=_ERRORS)

EventName = Literal[
    "turn.completed",
    "turn.failed",
    "turn.cancelled",
    "turn.waiting",
    "interrupt.expired",
    "session.closed",
    "*",
]
Url = Annotated[str, Field(min_length=1, max_length=2048, description="http(s) only")]
Events = Annotated[list[EventName], Field(min_length=1, max_length=16)]
Description = Annotated[str | None, Field(default=None, max_length=500)]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Url
    events: Events = Field(description="what to be told of; `*`: everything")
    description: Description = None


class WebhookPatch(BaseModel):
    """Fields to change; the rest are kept. `status: disabled` stops deliveries (the pending
    ones fail); `enabled` resumes them (send failed ones again with their retry)."""

    model_config = ConfigDict(extra="forbid")
    url: Url | None = None
    events: Events | None = None
    description: Description = None
    status: Literal["enabled", "disabled"] | None = None


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None = Field(
        description="`gone` (the receiver answered 410) or `disabled_by_request`"
    )
    created_at: str
    updated_at: str


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret (`whsec_…`): shown this once")


class AttemptOut(BaseModel):
    at: str
    status_code: int | None
    error: str | None
    duration_ms: float
    response: str | None = Field(description="the first bytes of the receiver's answer")


class DeliveryOut(BaseModel):
    id: str = Field(description="the `webhook-id` of every attempt")
    endpoint_id: str
    session_id: str
    type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str | None
    error: str | None
    created_at: str
    finished_at: str | None
    log: list[AttemptOut]


@router.post("", status_code=201, response_model=WebhookCreated)
async def create_webhook(
    request: Request, body: WebhookCreate, svc: Svc, tenant: Admin
) -> JSONResponse:
    """A new endpoint, enabled. Its signing secret is in this answer and nowhere else."""
    endpoint, secret = await svc.webhooks.create(tenant, body.url, body.events, body.description)
    await audit(request, "webhook.create", endpoint.id, events=endpoint.events)
    return JSONResponse({**records.endpoint_view(endpoint), "secret": secret}, status_code=201)


@router.get("", response_model=schemas.Page[WebhookOut])
async def list_webhooks(
    svc: Svc,
    tenant: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = cursors.id_cursor(cursor, "whk")
    return schemas.page(await svc.webhooks.page(tenant, limit, after), records.endpoint_view)


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: WebhookId, svc: Svc, tenant: Admin) -> dict[str, Any]:
    return records.endpoint_view(await svc.webhooks.get(tenant, webhook_id))


@router.patch("/{webhook_id}", response_model=WebhookOut)
async def update_webhook(
    request: Request, webhook_id: WebhookId, body: WebhookPatch, svc: Svc, tenant: Admin
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    endpoint = await svc.webhooks.update(tenant, webhook_id, changes)
    await audit(request, "webhook.update", webhook_id, fields=sorted(changes))
    return records.endpoint_view(endpoint)


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(
    request: Request, webhook_id: WebhookId, svc: Svc, tenant: Admin
) -> Response:
    """Delete the endpoint: its pending deliveries fail, and it is 404 from now on."""
    await svc.webhooks.delete(tenant, webhook_id)
    await audit(request, "webhook.delete", webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookCreated)
async def rotate_secret(
    request: Request, webhook_id: WebhookId, svc: Svc, tenant: Admin
) -> dict[str, Any]:
    """A new signing secret, shown this once: every attempt from now on is signed with it."""
    endpoint, secret = await svc.webhooks.rotate_secret(tenant, webhook_id)
    await audit(request, "webhook.rotate_secret", webhook_id)
    return {**records.endpoint_view(endpoint), "secret": secret}


@router.get("/{webhook_id}/deliveries", response_model=schemas.Page[DeliveryOut])
async def list_deliveries(
    webhook_id: WebhookId,
    svc: Svc,
    tenant: Admin,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The endpoint's deliveries, newest first, each with its attempts."""
    before = cursors.position(cursor, maximum=cursors.MAX_OUTBOX_SEQ)
    page = await svc.webhooks.deliveries(tenant, webhook_id, status, limit, before)
    return schemas.page(page, records.delivery_view)


@router.post("/{webhook_id}/deliveries/{delivery_id}/retry", response_model=DeliveryOut)
async def retry_delivery(
    request: Request, webhook_id: WebhookId, delivery_id: DeliveryId, svc: Svc, tenant: Admin
) -> dict[str, Any]:
    """Send a failed delivery again, with the same `webhook-id` and a fresh retry window
    (409 unless it failed and the endpoint is enabled)."""
    delivery = await svc.webhooks.retry(tenant, webhook_id, delivery_id)
    await audit(request, "webhook.delivery.retry", delivery_id, webhook_id=webhook_id)
    return records.delivery_view(delivery)
