"""Tenant-wide views: who is asking (`/v1/me`), and the interrupts of all of the tenant's
sessions (`/v1/interrupts`, the approvals inbox). What the console and the CLI need beyond the
per-session routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from tether import domain, views
from tether.api import cursors, schemas
from tether.api.deps import node, principal, service, tenant_for
from tether.auth import Principal, Role
from tether.node import Node
from tether.service import Service

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorOut} for status in (400, 401, 403, 422)
}
router = APIRouter(prefix="/v1", responses=_ERRORS)


@router.get("/me", response_model=schemas.MeOut, tags=["auth"])
async def me(
    who: Annotated[Principal, Depends(principal)],
    the_node: Annotated[Node, Depends(node)],
) -> dict[str, Any]:
    """The caller's tenant and role, and whether the server requires keys at all."""
    return {
        "tenant_id": who.tenant_id,
        "role": who.role.name.lower(),
        "auth": await the_node.auth_required(),
        "key_id": who.key_id,
        "key_prefix": who.key_prefix,
    }


@router.get(
    "/interrupts",
    response_model=schemas.Page[schemas.InterruptOut],
    tags=["interrupts"],
)
async def list_tenant_interrupts(
    svc: Annotated[Service, Depends(service)],
    tenant: Annotated[str, Depends(tenant_for(Role.READ))],
    status: domain.InterruptStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Interrupts of all of your sessions (`status=pending`: the approvals inbox), the one
    expiring soonest first, then the oldest; those that never expire come last."""
    after = cursors.inbox_cursor(cursor)
    page = await svc.list_tenant_interrupts(tenant, status, limit, after)
    return schemas.page(page, views.interrupt)
