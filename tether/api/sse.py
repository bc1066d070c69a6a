"""Server-sent events: `id: <seq>`, `event: <type>`, `data: <event JSON>` (DESIGN §7)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from tether import metrics
from tether.streaming import Frame


class Stream(EventSourceResponse):
    """An SSE answer; `replay` says how to stream it again (for Idempotency-Key repeats)."""

    replay: dict[str, Any] | None = None


def _encode(frame: Frame) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(frame.payload, separators=(",", ":")),
        event=frame.type,
        id=str(frame.seq),
    )


def response(
    frames: AsyncIterator[Frame],
    *,
    ping_s: float,
    until_terminal: bool = False,
    replay: dict[str, Any] | None = None,
    on_close: Callable[[], None] | None = None,
) -> Stream:
    async def events() -> AsyncIterator[ServerSentEvent]:
        metrics.SSE_CONNECTIONS.inc()
        try:
            async for frame in frames:
                yield _encode(frame)
                if until_terminal and frame.terminal:
                    return
        finally:
            metrics.SSE_CONNECTIONS.dec()
            if on_close:
                on_close()
            await frames.aclose()  # type: ignore[attr-defined]

    stream = Stream(
        events(),
        ping=int(max(1, ping_s)),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    stream.replay = replay
    return stream
