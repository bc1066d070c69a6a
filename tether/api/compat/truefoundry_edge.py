"""The edge of the TrueFoundry surface: who is asking, for which tenant, and failures in
TrueFoundry's error shape `{"error": {"message", "type", "code", "param"}}`.

The same API keys and roles as /v1 (tether/api/deps.py). The `{tenant}` path segment must be
the key's tenant: another tenant's path is 404, as any object of another tenant is. With auth
off (tether/gate.py) a request acts in the path's tenant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from tether import errors
from tether.api import deps
from tether.api import errors as api_errors
from tether.api.compat import common
from tether.auth import Principal, Role

log = logging.getLogger("tether.api.compat")


def error(
    status: int, code: str, message: str, param: str | None = None, **headers: str
) -> JSONResponse:
    body = {
        "message": message,
        "type": common.error_type(status),
        "code": code,
        "param": param,
    }
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)


def status_of(exc: errors.TetherError) -> int:
    if isinstance(exc, errors.SessionClosed):
        return 412  # TrueFoundry: "the session is no longer usable"
    if isinstance(exc, errors.Unprocessable):
        return 400  # TrueFoundry documents no 422 for most of its routes
    return api_errors.status_of(exc)


def from_exception(exc: Exception) -> JSONResponse:
    if isinstance(exc, errors.TetherError):
        headers: dict[str, str] = {}
        if isinstance(exc, errors.Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(exc, errors.TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after_s)
        param = (exc.details or {}).get("param")
        return error(status_of(exc), exc.code, exc.message, param, **headers)
    if isinstance(exc, RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {}
        where = [str(part) for part in first.get("loc", ())]
        param = where[-1] if where else None
        summary = "; ".join(
            f"{'.'.join(map(str, p.get('loc', ())))}: {p.get('msg', '')}" for p in problems[:5]
        )
        return error(400, "invalid_request", summary or "invalid request", param)
    if isinstance(exc, HTTPException):
        return error(exc.status_code, "http_error", str(exc.detail))
    log.exception("unexpected error", exc_info=exc)
    return error(500, "internal_error", "internal error")


class VendorRoute(APIRoute):
    """A route whose failures answer in TrueFoundry's shape, whatever raised them: the
    route, its dependencies (auth), request validation, or a bug (500)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every failure leaves in TrueFoundry's shape
                return from_exception(exc)

        return route


async def caller(
    request: Request, tenant: Annotated[str, Path(min_length=1, max_length=64)]
) -> Principal:
    """Who asks, in which tenant. TrueFoundry's client always sends a key: with auth off,
    one that does not verify counts as none, so the client works against a local Tether
    (and the path's tenant is stored with what it creates: 64 characters, no NUL)."""
    if "\x00" in tenant:
        raise errors.NotFound("no such tenant")
    try:
        who = await deps.principal(request)
    except errors.Unauthorized:
        if await (await deps.node(request)).gate.required():
            raise
        who = None
    if who is None or who.key_id is None:  # auth is off: the path names the tenant
        anyone = Principal(tenant, Role.ADMIN)
        request.state.principal = anyone  # the audit log's record of who
        return anyone
    if who.tenant_id != tenant:
        raise errors.NotFound(f"tenant {tenant!r} not found")
    return who
