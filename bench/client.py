"""A small load client: HTTP/1.1 keep-alive on raw asyncio with httptools' C parser, and an SSE
reader that stamps every frame with the time its bytes came off the socket.

Far cheaper per frame than httpx, so that on a 2-core box the client is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

HOST = "127.0.0.1"
JSON_TIMEOUT_S = 30.0
TERMINAL = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})

OnEvent = Callable[[str, bytes, float], None]  # event type, data line, arrival time


class HTTPError(Exception):
    pass


class Connection(asyncio.Protocol):
    """One keep-alive connection to the server, one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._on_event: OnEvent | None = None
        self._sse_buf = b""
        self._streaming = False
        self._now = 0.0  # arrival time of the bytes being parsed

    @classmethod
    async def open(cls, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(port), HOST, port)
        return conn

    def close(self) -> None:
        if self._transport:
            self._transport.close()

    @property
    def open_(self) -> bool:
        return self._transport is not None

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        on_event: OnEvent | None = None,
    ) -> tuple[int, bytes]:
        """Send a request; with `on_event`, a 200 answer is read as SSE and handed over frame
        by frame. Returns the status and (for non-SSE answers) the body. No time limit of its
        own: callers bound it with asyncio.timeout."""
        assert self._transport is not None, "connection closed"
        assert self._waiter is None, "one request at a time"
        payload = json.dumps(body).encode() if body is not None else b""
        accept = "text/event-stream" if on_event else "application/json"
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nAccept: {accept}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self._waiter = asyncio.get_running_loop().create_future()
        self._body, self._on_event, self._sse_buf = [], on_event, b""
        self._transport.write(head.encode() + payload)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    async def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with asyncio.timeout(JSON_TIMEOUT_S):
            status, raw = await self.request(method, path, body)
        if status >= 400:
            raise HTTPError(f"{method} {path}: {status} {raw[:300]!r}")
        return json.loads(raw) if raw else None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._now = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(exc or ConnectionError("server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._waiter and not self._waiter.done():
            self._waiter.set_exception(exc)

    # --- httptools callbacks -------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._streaming = self._on_event is not None and self._parser.get_status_code() == 200

    def on_body(self, body: bytes) -> None:
        if not self._streaming:
            self._body.append(body)
            return
        assert self._on_event is not None
        buf = self._sse_buf + body
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        *frames, self._sse_buf = buf.split(b"\n\n")
        for frame in frames:
            event, data = "message", b""
            for line in frame.split(b"\n"):
                if line.startswith(b"data: "):
                    data = line[6:] if not data else data + b"\n" + line[6:]
                elif line.startswith(b"event: "):
                    event = line[7:].decode()
            if data:  # pings are comment-only frames
                self._on_event(event, data, self._now)

    def on_message_complete(self) -> None:
        if self._waiter and not self._waiter.done():
            self._waiter.set_result((self._parser.get_status_code(), b"".join(self._body)))


# --- the Tether calls the benchmarks make ---------------------------------------------------


async def create_agent(conn: Connection, name: str, tokens: int, delay_ms: float) -> str:
    model = {"provider": "scripted", "reply": "echo", "tokens": tokens, "token_delay_ms": delay_ms}
    agent = await conn.json("POST", "/v1/agents", {"name": name, "model": model, "tools": []})
    return str(agent["id"])


async def create_session(conn: Connection, agent_id: str) -> str:
    return str((await conn.json("POST", "/v1/sessions", {"agent_id": agent_id}))["id"])


@dataclass(slots=True)
class Stream:
    """What a client saw of one streamed turn. Times are time.monotonic()."""

    sent: float = 0.0  # just before the POST was written
    started: float | None = None  # the `turn.started` frame arrived
    frames: list[tuple[float, int]] = field(default_factory=list)  # (arrival, tokens) per delta
    terminal: str | None = None
    ended: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.frames)

    @property
    def first_token(self) -> float | None:
        return self.frames[0][0] - self.sent if self.frames else None

    @property
    def latency(self) -> float:
        return self.ended - self.sent

    def gaps(self) -> list[float]:
        """Inter-token delays: a frame's first token waited since the previous frame; tokens
        coalesced into the same frame arrived with it (gap 0)."""
        out: list[float] = []
        prev: float | None = None
        for at, n in self.frames:
            if n:
                if prev is not None:
                    out.append(at - prev)
                out.extend([0.0] * (n - 1))
                prev = at
        return out


async def stream_turn(conn: Connection, session_id: str, text: str = "bench") -> Stream:
    """POST a turn with stream=true and read its SSE until the terminal event. Tokens of the
    scripted model are "word ", so a delta's token count is its number of spaces."""
    result = Stream()

    def on_event(event: str, data: bytes, at: float) -> None:
        if event == "message.delta":
            delta = json.loads(data)["data"]["delta"]
            result.frames.append((at, delta.count(" ")))
        elif event == "turn.started":
            result.started = at
        elif event in TERMINAL:
            result.terminal, result.ended = event, at

    result.sent = time.monotonic()
    status, body = await conn.request(
        "POST",
        f"/v1/sessions/{session_id}/turns",
        {"input": text, "stream": True},
        on_event=on_event,
    )
    if status != 200:
        raise HTTPError(f"turn: {status} {body[:300]!r}")
    return result
