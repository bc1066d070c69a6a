"""Gumloop's session stream over Tether's event log: SSE `data:` lines of JSON parts typed
like the AI SDK's UI stream (`start`, `text-delta`, `text-end`, `tool-input-available`,
`tool-output-available`, `approval-required`, `error`, `finish`), each with a `stream_cursor`.

A cursor is `<seq>` (the last durable event seen) or `<seq>:<message_id>:<chars>` while an
assistant message is streaming (how much of its text was sent). Resuming from a cursor
replays the events after `seq` and skips the text already sent, so a reader that reconnects
sees no text twice and misses none, even if the message completed in between.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import StreamingResponse

from tether import domain, errors, views
from tether.api import cursors, sse
from tether.service import Service

_KEEPALIVE = b": ping\n\n"
# <seq>[:<message id>:<chars>]: the parts' places; the numbers are positions (api/cursors.py)
_CURSOR = re.compile(r"([^:]+)(?::(msg_[0-9a-hjkmnp-tv-z]{26}):([^:]+))?")
_PAGE = 500
ET = domain.EventType


@dataclass(frozen=True, slots=True)
class Cursor:
    seq: int
    message_id: str | None = None
    chars: int = 0

    def __str__(self) -> str:
        return f"{self.seq}:{self.message_id}:{self.chars}" if self.message_id else str(self.seq)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """A cursor as `__str__` writes it: a seq the store can hold, then maybe a message
        and how many of its characters were sent (a position too)."""
        expected = "a stream_cursor of this session"
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise cursors.invalid("last_cursor", text, expected)
        seq, message_id, chars = match.groups()
        try:
            return cls(cursors.position(seq) or 0, message_id, cursors.position(chars) or 0)
        except errors.InvalidRequest:  # named as the client named it: last_cursor
            raise cursors.invalid("last_cursor", text, expected) from None


class Translator:
    """Tether events and deltas -> Gumloop stream parts, remembering how much text of each
    message went out so that deltas, their coalesced replays and the completed message never
    repeat or skip a character."""

    def __init__(self, session_id: str, start: Cursor):
        self.session_id = session_id
        self.seq = start.seq
        self.sent: dict[str, int] = {start.message_id: start.chars} if start.message_id else {}
        self.streaming: str | None = start.message_id  # the message whose text is in flight

    def cursor(self) -> Cursor:
        if self.streaming is None:
            return Cursor(self.seq)
        return Cursor(self.seq, self.streaming, self.sent.get(self.streaming, 0))

    def parts(self, seq: int, type: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.seq = max(self.seq, seq)
        out = self._translate(type, data)
        stamp = {"stream_cursor": str(self.cursor()), "interaction_id": self.session_id}
        return [{**part, **stamp} for part in out]

    def _text(self, message_id: str, offset: int, text: str) -> list[dict[str, Any]]:
        done = self.sent.get(message_id, 0)
        # A delta past what was sent (a live feed that lost a delta) goes out as it is: the
        # missing middle is in the transcript, and the stream must not stop for it.
        fresh = text[done - offset :] if offset <= done else text
        if not fresh:
            return []
        self.sent[message_id] = offset + len(text)
        self.streaming = message_id
        return [{"type": "text-delta", "id": message_id, "delta": fresh}]

    def _translate(self, type: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if type == ET.TURN_STARTED:
            return [{"type": "start"}]
        if type == ET.MESSAGE_DELTA:
            return self._text(data["message_id"], data["offset"], data["delta"])
        if type == ET.MESSAGE_COMPLETED:
            message = data["message"]
            if message["role"] != "assistant" or not message.get("content"):
                return []
            # the rest of the text no delta carried (a resume after the deltas were gone)
            out = self._text(message["id"], 0, message["content"])
            self.streaming = None
            return [*out, {"type": "text-end", "id": message["id"]}]
        if type == ET.TOOL_STARTED:
            return [
                {
                    "type": "tool-input-available",
                    "toolCallId": data["tool_call_id"],
                    "toolName": data["name"],
                    "input": data.get("arguments"),
                }
            ]
        if type == ET.TOOL_COMPLETED:
            return [
                {
                    "type": "tool-output-available",
                    "toolCallId": data["tool_call_id"],
                    "toolName": data["name"],
                    "output": {"outcome": data.get("outcome")},
                }
            ]
        if type == ET.INTERRUPT_CREATED:
            interrupt = data["interrupt"]
            ask = {
                "type": "approval-required",
                "action_request_id": interrupt["id"],
                "approval_type": interrupt["type"],
                "tool_name": interrupt["tool_name"],
                "request": interrupt["request"],
            }
            if not data.get("turn_waiting"):
                return [ask]
            return [ask, {"type": "finish", "finishReason": "approval_required", "final": True}]
        return self._turn_end(type, data)

    @staticmethod
    def _turn_end(type: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if type == ET.TURN_COMPLETED:
            return [{"type": "finish", "finishReason": "stop", "final": True}]
        if type == ET.TURN_CANCELLED:
            return [{"type": "finish", "finishReason": "cancelled", "final": True}]
        if type == ET.TURN_FAILED:
            turn = data.get("turn") or {}
            error = turn.get("error") or {}
            message = error.get("message") or turn.get("reason") or "the turn failed"
            return [
                {
                    "type": "error",
                    "error": {"code": error.get("code", "turn_failed"), "message": message},
                    "errorMessage": message,
                },
                {"type": "finish", "finishReason": "error", "final": True},
            ]
        return []  # queued, cancelling, resolved, session updates: nothing for a Gumloop reader


def _encode(part: dict[str, Any]) -> bytes:
    data = views.compact_json(part)
    return f"id: {part['stream_cursor']}\ndata: {data}\n\n".encode()


def _respond(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=sse.HEADERS)


async def follow_turn(
    svc: Service,
    tenant: str,
    session_id: str,
    start: Cursor,
    turn_id: str,
    *,
    only_turn: bool,
    idle_s: float,
    on_close: Callable[[], None],
) -> StreamingResponse:
    """Stream from `start` until `turn_id` ends or waits for an approval. `only_turn`: leave
    out the other turns' events (a fresh message's stream); else all (a resumed stream)."""
    try:
        batches = await svc.follow(
            tenant, session_id, start.seq, turn_id=turn_id if only_turn else None, idle_s=idle_s
        )
    except BaseException:
        on_close()
        raise
    translator = Translator(session_id, start)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for batch in batches:
                if not batch:
                    yield _KEEPALIVE
                    continue
                out: list[bytes] = []
                for frame in batch:
                    parts = translator.parts(frame.seq, frame.type, frame.payload["data"])
                    out += [_encode(part) for part in parts]
                    if frame.terminal and frame.turn_id == turn_id:
                        yield b"".join(out)
                        return
                if out:
                    yield b"".join(out)
        finally:
            on_close()
            await batches.aclose()

    return _respond(body())


def replay(
    svc: Service, tenant: str, session_id: str, start: Cursor, on_close: Callable[[], None]
) -> StreamingResponse:
    """The stored events after `start`, then the end: for a session with nothing running."""
    translator = Translator(session_id, start)

    async def body() -> AsyncIterator[bytes]:
        after = start.seq
        try:
            while True:
                page = await svc.events_after(tenant, session_id, after, _PAGE)
                out: list[bytes] = []
                for event in page:
                    parts = translator.parts(event.seq, event.type.value, event.data)
                    out += [_encode(part) for part in parts]
                    after = event.seq
                if out:
                    yield b"".join(out)
                if len(page) < _PAGE:
                    return
        finally:
            on_close()

    return _respond(body())
