"""A stream lives only while whoever opened it would still be let in (DESIGN §8: "a revoked
key also ends the streams it opened").

An SSE answer (on any surface) or an accepted WebSocket is registered with the node's
StreamWatch (tether/gate.py) under the principal that opened it. When the watch finds that
principal no longer admitted (its key revoked, on this API node or another; or keys now
required for a keyless one), it cancels the request's work through a cancel scope, and this
middleware ends the connection properly: the last chunk of the HTTP answer, or a WebSocket
close 1008. Routes need nothing for it, so no surface can forget it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REVOKED_CLOSE_CODE = 1008  # policy violation: the client should not just reconnect


class EndRevokedStreams:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with anyio.CancelScope() as cancel:
            connection = _Connection(scope, send, cancel)
            try:
                await self.app(scope, receive, connection.send)
            finally:
                connection.forget()
        if cancel.cancelled_caught:
            await connection.end()


def _nothing() -> None:
    pass


class _Connection:
    def __init__(self, scope: Scope, send: Send, cancel: anyio.CancelScope):
        self.scope = scope
        self._send = send
        self._cancel = cancel
        self.open = False  # a stream is going out: started and not finished
        self.forget: Callable[[], None] = _nothing

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept" or (kind == "http.response.start" and _is_stream(message)):
            self.open = True
            self._watch()
        elif kind == "websocket.close" or (
            kind == "http.response.body" and not message.get("more_body", False)
        ):
            self.open = False
        await self._send(message)

    def _watch(self) -> None:
        who = self.scope.get("state", {}).get("principal")  # set by api/deps.admit
        node = getattr(getattr(self.scope.get("app"), "state", None), "node", None)
        if who is not None and node is not None:
            self.forget = node.stream_watch.add(who, self._cancel.cancel)

    async def end(self) -> None:
        """Close what the cancelled route left open."""
        if not self.open:
            return
        if self.scope["type"] == "http":
            last: Message = {"type": "http.response.body", "body": b"", "more_body": False}
        else:
            last = {"type": "websocket.close", "code": REVOKED_CLOSE_CODE, "reason": "unauthorized"}
        with contextlib.suppress(Exception):  # the client may be gone already: nothing to end
            await self._send(last)


def _is_stream(start: Message) -> bool:
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-type":
            return bool(value.split(b";")[0].strip().lower() == b"text/event-stream")
    return False
