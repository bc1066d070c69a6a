"""Server-sent events: `id: <seq>`, `event: <type>`, `data: <event JSON>` (DESIGN §7).

Written straight to a StreamingResponse: each batch of frames is one write, and idle streams
get a comment line as keep-alive. (A general SSE library cost a cancel scope per write, the
largest single cost with a thousand live streams.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from tether import metrics
from tether.streaming import Batches, Frame

_KEEPALIVE = b": ping\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Stream(StreamingResponse):
    """An SSE answer; `replay` says how to stream it again (for Idempotency-Key repeats)."""

    replay: dict[str, Any] | None = None


def encode(frame: Frame) -> bytes:
    data = json.dumps(frame.payload, separators=(",", ":"))
    return f"id: {frame.seq}\nevent: {frame.type}\ndata: {data}\n\n".encode()


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
