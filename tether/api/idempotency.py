"""`Idempotency-Key` on creating POSTs (DESIGN §3): a repeat with the same key and body gets
the first answer; the same key with another body is 422; while the first is in flight, 409."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response

from tether import errors
from tether.api.errors import status_of
from tether.service import Service

REPLAYED = "Idempotent-Replayed"


async def _fingerprint(request: Request) -> str:
    raw = await request.body()
    try:
        canonical = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = raw
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


async def idempotent(
    request: Request,
    tenant: str,
    svc: Service,
    handler: Callable[[], Awaitable[Response]],
    replay_stream: Callable[[dict[str, Any]], Awaitable[Response]] | None = None,
) -> Response:
    """`handler`'s answer, or the answer recorded for the request's Idempotency-Key.
    `replay_stream` streams again an answer that was a stream (None: the route never
    streams)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return await handler()
    if not 1 <= len(key) <= 255:
        raise errors.InvalidRequest("Idempotency-Key must be 1 to 255 characters")
    fingerprint = await _fingerprint(request)
    recorded = await svc.begin_idempotent(tenant, key, fingerprint)
    if recorded is not None:
        if recorded.fingerprint != fingerprint:
            raise errors.IdempotencyKeyReused("this Idempotency-Key was used with another request")
        if recorded.status_code is None:
            raise errors.IdempotencyKeyInFlight()
        if "stream" in recorded.response:
            assert replay_stream is not None, "a stream recorded by a route that never streams"
            response = await replay_stream(recorded.response["stream"])
        else:
            response = JSONResponse(recorded.response["json"], status_code=recorded.status_code)
        response.headers[REPLAYED] = "true"
        return response
    try:
        response = await handler()
    except errors.TetherError as exc:
        status = status_of(exc)
        if status >= 500:
            await svc.release_idempotent(tenant, key)
        else:  # a refusal is an answer too: the same request gets it again
            refusal = {"error": {"code": exc.code, "message": exc.message}}
            await svc.finish_idempotent(tenant, key, status, {"json": refusal})
        raise
    except BaseException:
        await svc.release_idempotent(tenant, key)
        raise
    replay: dict[str, Any] | None = getattr(response, "replay", None)
    if replay is not None:  # an SSE answer: record how to stream it again
        await svc.finish_idempotent(tenant, key, response.status_code, {"stream": replay})
    else:
        answer = json.loads(bytes(response.body)) if response.body else None
        await svc.finish_idempotent(tenant, key, response.status_code, {"json": answer})
    return response
