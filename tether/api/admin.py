"""API keys and the audit log, for admins of a tenant."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tether import ids, views
from tether.api import cursors, schemas
from tether.api.deps import audit, node, tenant_for
from tether.api.schemas import ErrorOut
from tether.auth import Role
from tether.node import Node

Admin = Annotated[str, Depends(tenant_for(Role.ADMIN))]
TheNode = Annotated[Node, Depends(node)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorOut} for s in (400, 401, 403, 404, 413, 422)
}
router = APIRouter(prefix="/v1", tags=["admin"], responses=_ERRORS)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["admin", "write", "read"]
    name: str | None = Field(default=None, max_length=128)


class KeyOut(BaseModel):
    id: str
    tenant_id: str
    role: str
    name: str | None
    prefix: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret: shown this once, stored only as a hash")


class AuditOut(BaseModel):
    id: str
    tenant_id: str
    key_id: str | None
    key_prefix: str | None
    action: str
    target: str | None
    request_id: str | None
    details: dict[str, Any] | None
    created_at: str


class KeyPage(BaseModel):
    data: list[KeyOut]
    next_cursor: str | None


class AuditPage(BaseModel):
    data: list[AuditOut]
    next_cursor: str | None


@router.post("/keys", status_code=201, response_model=KeyCreated, responses=_ERRORS)
async def create_key(
    request: Request, body: KeyCreate, tenant: Admin, the_node: TheNode
) -> JSONResponse:
    """A new key for your tenant. Its secret is in this answer and nowhere else."""
    info, key = await the_node.keys.create(tenant, Role[body.role.upper()], body.name)
    await audit(request, "key.create", info.id, role=body.role)
    return JSONResponse({**views.api_key(info), "key": key}, status_code=201)


@router.get("/keys", response_model=KeyPage)
async def list_keys(tenant: Admin, the_node: TheNode) -> dict[str, Any]:
    return schemas.page(await the_node.keys.list(tenant), views.api_key)


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=_ERRORS)
async def revoke_key(
    request: Request, key_id: str, tenant: Admin, the_node: TheNode
) -> dict[str, Any]:
    info = await the_node.keys.revoke(ids.check("key", key_id), tenant)
    await audit(request, "key.revoke", key_id)
    return views.api_key(info)


@router.get("/audit", response_model=AuditPage, responses=_ERRORS)
async def audit_log(
    tenant: Admin,
    the_node: TheNode,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Mutations of your tenant, newest first."""
    after = cursors.id_cursor(cursor, "aud")
    return schemas.page(await the_node.service.audit_log(tenant, limit, after), dict)
