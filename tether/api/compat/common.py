"""What the compatibility surfaces share: any failure as one record, rendered in the vendor's
error shape by the routes of its router (so /v1 keeps its own shape), and a vendor-shaped 404
for paths under a surface's prefix that name no endpoint."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from tether import errors
from tether.api import errors as api_errors
from tether.api import idempotency
from tether.service import Service

log = logging.getLogger("tether.api.compat")


@dataclass(frozen=True, slots=True)
class Failure:
    """An error answer before it takes a vendor's shape. `code` is Tether's stable code."""

    status: int
    code: str
    message: str
    details: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Render = Callable[[Failure], Response]

# The error `type` of an HTTP status, in the vendors' (OpenAI-style) words.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    412: "precondition_failed_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    424: "failed_dependency_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def _validation_failure(exc: RequestValidationError) -> Failure:
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    if any(p["type"] == "json_invalid" for p in problems):
        return Failure(400, "invalid_json", "the request body is not valid JSON")
    summary = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems[:5])
    return Failure(422, "validation_error", summary or "invalid request", {"errors": problems})


def failure_of(exc: Exception) -> Failure:
    """The most specific answer for `exc`, with the status /v1 would give it."""
    if isinstance(exc, errors.TetherError):
        headers = {}
        if isinstance(exc, errors.Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(exc, errors.TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after_s)
        return Failure(api_errors.status_of(exc), exc.code, exc.message, exc.details, headers)
    if isinstance(exc, RequestValidationError):
        return _validation_failure(exc)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return Failure(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
    return Failure(500, "internal_error", "internal error")


def answer_with(render: Render) -> Callable[[errors.TetherError], Response]:
    """A surface's answer to an error raised before its routes run (api/input_guard.py)."""

    def answer(exc: errors.TetherError) -> Response:
        return render(failure_of(exc))

    return answer


def malformed_id_as_not_found(failure: Failure) -> Failure:
    """The vendors' contracts type ids as any string, so a malformed one is a valid request
    for an object that does not exist: 404, where /v1 says 400."""
    if failure.code != errors.InvalidId.code:
        return failure
    return Failure(404, errors.NotFound.code, failure.message, failure.details, failure.headers)


def vendor_route(render: Render) -> type[APIRoute]:
    """A route class whose failures (in dependencies, validation or the endpoint) answer in
    `render`'s shape. Per route rather than app-wide so the surfaces and /v1 cannot disagree
    about whose shape a path gets."""

    class VendorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:  # every failure leaves in the vendor's shape
                    failure = failure_of(exc)
                    if failure.status >= 500:
                        log.exception("unexpected error", exc_info=exc)
                    return render(failure)

            return guarded

    return VendorRoute


def add_fallback(router: APIRouter) -> None:
    """Answer any other path under the router's prefix with a vendor-shaped 404. Added last, so
    real routes match first (a known path with another method also lands here: 404)."""

    async def no_such_endpoint(request: Request) -> Response:
        raise errors.NotFound(f"no endpoint {request.method} {request.url.path}")

    router.add_api_route(
        "/{unmatched:path}",
        no_such_endpoint,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )


async def idempotent(
    request: Request, svc: Service, tenant: str, handler: Callable[[], Awaitable[Response]]
) -> Response:
    """/v1's Idempotency-Key handling for a compat route whose answers are never streams."""
    return await idempotency.idempotent(request, tenant, svc, handler)
