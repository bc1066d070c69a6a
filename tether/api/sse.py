"""Server-sent events: `id: <seq>`, `event: <type>`, `data: <event JSON>` (DESIGN §7).

Written straight to a StreamingResponse: each batch of frames is one write, and idle streams
get a comment line as keep-alive. (A general SSE library cost a cancel scope per write, the
largest single cost with a thousand live streams.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tether import metrics
from tether.streaming import Batches, Frame

_KEEPALIVE = b": ping\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# Where the app (api/app.py) leaves the server's own `send` in the scope: the stream's chunks
# go straight to it, not through each middleware's send wrapper (a fifth of the server's time
# with many streams). The start and the end of the answer still pass every middleware, and
# those look at nothing else: a request id header, whether a stream is open, whether an
# answer started.
DIRECT_SEND = "tether.direct_send"


class Stream(StreamingResponse):
    """An SSE answer; `replay` says how to stream it again (for Idempotency-Key repeats)."""

    replay: dict[str, Any] | None = None
    _direct: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream in this task; a task of its own listens for the client leaving and then
        cancels it. (Starlette's runs both in an anyio task group: a second task, a cancel
        scope and their bookkeeping per stream, for the same outcome.)"""
        self._direct = scope.get(DIRECT_SEND)
        streaming = asyncio.current_task()
        assert streaming is not None
        left = False

        async def listen() -> None:
            nonlocal left
            await self.listen_for_disconnect(receive)
            left = True
            streaming.cancel("the client left")

        listener = asyncio.create_task(listen())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not left:
                raise
            streaming.uncancel()  # the client left: the stream just ends
        finally:
            listener.cancel()

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        direct = self._direct or send
        async for chunk in self.body_iterator:
            assert isinstance(chunk, bytes)
            await direct({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def encode(frame: Frame) -> bytes:
    return frame.sse()


def response(
    batches: Batches,
    *,
    until_terminal: bool = False,
    replay: dict[str, Any] | None = None,
    on_close: Callable[[], None] | None = None,
) -> Stream:
    async def body() -> AsyncIterator[bytes]:
        metrics.SSE_CONNECTIONS.inc()
        try:
            async for batch in batches:
                if not batch:
                    yield _KEEPALIVE
                    continue
                out = []
                for frame in batch:
                    out.append(encode(frame))
                    if until_terminal and frame.terminal:
                        yield b"".join(out)
                        return
                yield b"".join(out)
        finally:
            metrics.SSE_CONNECTIONS.dec()
            if on_close:
                on_close()
            await batches.aclose()

    stream = Stream(body(), media_type="text/event-stream", headers=HEADERS)
    stream.replay = replay
    return stream
