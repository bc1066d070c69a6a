"""Every request gets an id (its own X-Request-Id, or a new one), echoed in the answer and
recorded in the audit log."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_VALID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


class RequestId:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given if _VALID.match(given) else uuid.uuid4().hex.encode()
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        scope["headers"].append((b"x-request-id", request_id))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)
