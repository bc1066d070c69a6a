"""The edge of DESIGN §8 "Input": a request whose JSON body, query string or stored header
holds what Tether cannot store and read back (tether/storable.py: a lone surrogate, a NUL,
NaN or Infinity, nesting deeper than storable.MAX_DEPTH) is refused with 422 before any
route runs, so nothing of it is stored.

Why one ASGI middleware rather than a validator per field or per route: every surface (/v1,
Gumloop, Factory, TrueFoundry) and every route, present or future, passes through it, so no
field can be forgotten; it sees a body before FastAPI's parser does, so a body nested too
deep even for that parser (which would answer a bare 400) is refused the same way; and it
runs before any route, so nothing is written. The cost is parsing each JSON body twice;
bodies are small and capped by BodyLimit, which runs first.

Each surface answers in its own error shape: the app gives the guard one answer function per
path prefix. Path segments are left to their routes: a path names an object by id, and a
malformed id already has each surface's documented answer (400, or 404 on surfaces whose
contracts type ids as any string). The agent-threads WebSocket checks its messages with the
same `storable.parse` (api/compat/agent_threads.py). Sizes of particular fields (metadata)
are the service's to check: they are rules about those fields, not about text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether import errors, storable

Answer = Callable[[errors.TetherError], Response]

# Headers whose values are written to the store (the rest are only read, or hashed).
_STORED_HEADERS = {b"idempotency-key": "Idempotency-Key"}


class InputGuard:
    def __init__(self, app: ASGIApp, answers: Sequence[tuple[str, Answer]], default: Answer):
        self.app = app
        self.answers = sorted(answers, key=lambda pair: -len(pair[0]))  # longest prefix first
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_url_and_headers(scope)
            body, replay = await self._read_body(scope, receive)
            if body:
                with contextlib.suppress(ValueError):  # not JSON: the route says so its way
                    storable.parse(body)
        except errors.UnstorableInput as exc:
            await self._answer(scope, exc)(scope, receive, send)
            return
        await self.app(scope, replay, send)

    @staticmethod
    def _check_url_and_headers(scope: Scope) -> None:
        query = scope.get("query_string", b"")
        if query:
            # decoded as Starlette decodes it for the routes: percent-escapes as UTF-8
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                storable.check({name: value}, where="query")
        for name, value in scope["headers"]:
            if name in _STORED_HEADERS:
                storable.check({_STORED_HEADERS[name]: value.decode("latin-1")}, where="header")

    @staticmethod
    async def _read_body(scope: Scope, receive: Receive) -> tuple[bytes, Receive]:
        """The whole body (BodyLimit has bounded it), and a `receive` that hands the app the
        same messages, then whatever comes after (a disconnect)."""
        headers = dict(scope["headers"])
        if headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers:
            return b"", receive
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        return b"".join(chunks), replay

    def _answer(self, scope: Scope, exc: errors.TetherError) -> Response:
        path: str = scope["path"]
        for prefix, answer in self.answers:
            if path.startswith(prefix):
                return answer(exc)
        return self.default(exc)
