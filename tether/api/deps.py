"""Request dependencies: the process's Node, and who is asking (DESIGN §8)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from tether import errors
from tether.auth import Principal, Role
from tether.node import Node
from tether.service import Service


# async on purpose: FastAPI runs a sync dependency on its thread pool, once per request
async def node(connection: HTTPConnection) -> Node:
    """The process's Node (a dependency, and the one way the edge reaches it)."""
    return connection.app.state.node  # type: ignore[no-any-return]


async def service(connection: HTTPConnection) -> Service:
    return (await node(connection)).service


# Declares the scheme in OpenAPI; the checking is ours (auto_error=False).
bearer = HTTPBearer(auto_error=False, description="an API key: `tether keys create`")


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Principal:
    """The caller: from `Authorization: Bearer <key>`, or, while auth is off, the default
    tenant's admin."""
    return await admit(request)


async def admit(connection: HTTPConnection, *, query_token: bool = False) -> Principal:
    """Who is asking, decided by the node's gate (tether/gate.py) for every surface: HTTP
    requests and WebSockets alike. `query_token`: also take the key from `?access_token=`
    (RFC 6750 §2.3), for WebSocket clients that can only give a URL. Kept on the connection's
    state, where the audit log and the stream watch (api/stream_guard.py) find it."""
    cached = getattr(connection.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    key = presented_key(connection, query_token=query_token)
    who = await (await node(connection)).gate.admit(key)
    connection.state.principal = who
    return who


def presented_key(connection: HTTPConnection, *, query_token: bool = False) -> str | None:
    """The key a request presents, None without one; a malformed Authorization is 401."""
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise errors.Unauthorized()
        return key.strip()
    token = connection.query_params.get("access_token") if query_token else None
    return token.strip() if token is not None else None


def tenant_for(
    role: Role, caller: Callable[..., Awaitable[Principal]] = principal
) -> Callable[..., Awaitable[str]]:
    """A dependency answering the caller's tenant, once its role is checked. `caller`: the
    dependency that says who asks (a surface may decide the tenant its own way)."""

    # a default, not Annotated: `caller` is a closure's, and annotations are read as text
    async def dependency(who: Principal = Depends(caller)) -> str:
        who.require(role)
        return who.tenant_id

    return dependency


async def audit(
    request: Request, action: str, target: str | None, *, urgent: bool = False, **details: Any
) -> None:
    """Append a record of a mutation to the audit log; `urgent`: a stop's, written at once
    (its answer waits for it)."""
    who: Principal = request.state.principal
    await (await service(request)).record(
        who.tenant_id,
        action,
        target,
        key_id=who.key_id,
        key_prefix=who.key_prefix,
        request_id=request.headers.get("x-request-id"),
        details=details or None,
        urgent=urgent,
    )


async def stream_slot(request: Request, tenant: str) -> Callable[[], None]:
    """Take one of the tenant's SSE connections (429 past the limit); answers its release."""
    the_node = await node(request)
    if not the_node.service.live:
        raise errors.Unavailable("live streams are unavailable (the bus is down), retry")
    cap = the_node.settings.max_streams_per_tenant
    if cap is not None and the_node.streams[tenant] >= cap:
        raise errors.TooManyRequests(f"tenant has {cap} open streams (the limit)", retry_after_s=5)
    the_node.streams[tenant] += 1
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            the_node.streams[tenant] -= 1

    return release
