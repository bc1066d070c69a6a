"""A local Anthropic Messages API server speaking the real streaming wire format (SSE events
`message_start`, `content_block_start/delta/stop`, `message_delta`, `message_stop`, `ping`,
`error`), to test agents on `provider: "anthropic"` without Anthropic.

`python -m tether.testing_anthropic --port 9001` runs it on its own.

The last user text says what to do:
  anything            stream "echo: <text>" word by word
  slow:N              stream N tokens, 10 ms apart
  call:NAME[:JSON]    a tool_use of NAME (its input split over input_json_delta events); after
                      the tool result: "done"
  parallel            two tool_use blocks in one answer (get_time, sleep 0)
  think               a thinking block (thinking and signature deltas), a redacted_thinking
                      block, text and a tool_use of get_time; after the tool result, the
                      request must carry those blocks unchanged (else 400, as Anthropic does)
  overloaded:N        the first N calls with this text get an `overloaded_error` event in a
                      200 stream (before any content); later ones answer normally
  http:CODE[:N]       answer CODE with an Anthropic error body (the first N calls with this
                      text, else all), with `retry-after-ms: 20` on 429 and 529
  hang                wait 60 s before answering
  garbage             a malformed event mid-stream
Like the real API, a tool_use without its tool_result in the next message is refused with 400.
Usage: 11 input tokens, 5 written to and 7 read from the cache, one output token per delta.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tether.testing import Call, free_port

SIGNATURE = "EqQBCkYIARgCIkBsig+nature/of/the/thinking=="
REDACTED = "EmwKAhgBEgy3redacted+thinking+data=="
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    kind = _ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    texts = [b.get("text", "") for b in content if b.get("type") == "text"]
    return texts[-1] if texts else ""  # the latest input, when several were merged


def _invalid(messages: list[dict[str, Any]]) -> str | None:
    """What the real API would refuse in this transcript, if anything."""
    if not messages or messages[0]["role"] != "user":
        return "messages: the first message must use the user role"
    for prev, cur in itertools.pairwise(messages):
        if prev["role"] == cur["role"]:
            return "messages: roles must alternate between user and assistant"
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or isinstance(m["content"], str):
            continue
        uses = {b["id"] for b in m["content"] if b.get("type") == "tool_use"}
        if not uses:
            continue
        nxt = messages[i + 1]["content"] if i + 1 < len(messages) else []
        answered = {b.get("tool_use_id") for b in nxt if isinstance(b, dict)}
        if missing := sorted(uses - answered):
            return (
                f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {missing[0]}"
            )
    return None


class FakeAnthropic:
    def __init__(self, port: int | None = None) -> None:
        self.calls: list[Call] = []
        self.headers: list[dict[str, str]] = []  # of each request, in order
        self.sent: dict[str, list[dict[str, Any]]] = {}  # thinking answers by text
        self._seen: Counter[str] = Counter()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                timeout_graceful_shutdown=1,
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server.should_exit = False
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("fake provider did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task:
            await self._task
        self._server.started = False

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        self.headers.append(dict(request.headers))
        messages = body["messages"]
        if (problem := _invalid(messages)) is not None:
            return _error(400, problem)
        call = Call(body)
        self.calls.append(call)
        last_user = next(m for m in reversed(messages) if m["role"] == "user")
        after_tool = not isinstance(last_user["content"], str) and any(
            b.get("type") == "tool_result" for b in last_user["content"]
        )
        command = next(
            (_text_of(m) for m in reversed(messages) if m["role"] == "user" and _text_of(m)), ""
        )
        self._seen[command] += 1
        nth = self._seen[command]
        if command.startswith("http:"):
            _, code, *times = command.split(":")
            if not times or nth <= int(times[0]):
                call.finished = True
                status = int(code)
                asks = status in (429, 529)
                return _error(status, f"fake {status}", {"retry-after-ms": "20"} if asks else None)
        if command == "think" and after_tool:
            answered = messages[-2]["content"]
            if answered != self.sent.get(command):
                call.finished = True
                return _error(
                    400,
                    "messages.1.content.0: thinking blocks cannot be modified; they must "
                    "remain as they were in the original response",
                )
        if command == "hang":
            await asyncio.sleep(60)
        return StreamingResponse(
            self._stream(call, command, nth, after_tool, body.get("model", "fake")),
            media_type="text/event-stream",
        )

    async def _stream(
        self, call: Call, command: str, nth: int, after_tool: bool, model: str
    ) -> AsyncIterator[str]:
        try:
            usage = {
                "input_tokens": 11,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 7,
                "output_tokens": 1,
            }
            message: dict[str, Any] = {
                "id": f"msg_fake{len(self.calls)}",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            }
            yield _sse("message_start", {"message": message})
            if command.startswith("overloaded:") and nth <= int(command.split(":")[1]):
                yield _sse(
                    "error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}
                )
                call.finished = True
                return
            yield _sse("ping", {})
            blocks: list[dict[str, Any]] = []
            tokens = 0
            stop = "end_turn"
            async for event, n in self._content(command, after_tool, blocks):
                yield event
                call.chunks += n
                tokens += n
            if any(b["type"] == "tool_use" for b in blocks):
                stop = "tool_use"
            if command == "think" and not after_tool:
                self.sent[command] = blocks
            yield _sse(
                "message_delta",
                {
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": tokens},
                },
            )
            yield _sse("message_stop", {})
            call.finished = True
        finally:
            call.closed_at = time.monotonic()

    async def _content(
        self, command: str, after_tool: bool, blocks: list[dict[str, Any]]
    ) -> AsyncIterator[tuple[str, int]]:
        """The content block events of the answer, each with the tokens it carries; `blocks`
        gets the blocks as the final message would hold them."""

        def start(block: dict[str, Any]) -> str:
            blocks.append(dict(block))
            return _sse("content_block_start", {"index": len(blocks) - 1, "content_block": block})

        def delta(delta: dict[str, Any]) -> str:
            block = blocks[-1]
            for key in ("text", "thinking", "signature"):
                if key in delta:
                    block[key] = block.get(key, "") + delta[key]
            if "partial_json" in delta:
                block["_json"] = block.get("_json", "") + delta["partial_json"]
            return _sse("content_block_delta", {"index": len(blocks) - 1, "delta": delta})

        def stop() -> str:
            block = blocks[-1]
            if "_json" in block:
                block["input"] = json.loads(block.pop("_json"))
            return _sse("content_block_stop", {"index": len(blocks) - 1})

        def tool_use(index: int, name: str, args: str) -> list[str]:
            events = [
                start({"type": "tool_use", "id": f"toolu_{index}", "name": name, "input": {}})
            ]
            for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                events.append(delta({"type": "input_json_delta", "partial_json": piece}))
            return [*events, stop()]

        if command.startswith("slow:"):
            yield start({"type": "text", "text": ""}), 0
            for i in range(int(command[5:])):
                await asyncio.sleep(0.01)
                yield delta({"type": "text_delta", "text": f"t{i} "}), 1
            yield stop(), 0
        elif command.startswith("call:") and not after_tool:
            _, name, *rest = command.split(":", 2)
            for event in tool_use(0, name, rest[0] if rest else "{}"):
                yield event, 0
        elif command == "parallel" and not after_tool:
            yield start({"type": "text", "text": ""}), 0
            yield delta({"type": "text_delta", "text": "Two at once."}), 1
            yield stop(), 0
            for event in tool_use(0, "get_time", "{}") + tool_use(1, "sleep", '{"seconds": 0}'):
                yield event, 0
        elif command == "think" and not after_tool:
            yield start({"type": "thinking", "thinking": "", "signature": ""}), 0
            yield delta({"type": "thinking_delta", "thinking": "The user wants "}), 1
            yield delta({"type": "thinking_delta", "thinking": "the time."}), 1
            yield delta({"type": "signature_delta", "signature": SIGNATURE}), 0
            yield stop(), 0
            yield start({"type": "redacted_thinking", "data": REDACTED}), 0
            yield stop(), 0
            yield start({"type": "text", "text": ""}), 0
            yield delta({"type": "text_delta", "text": "Let me check."}), 1
            yield stop(), 0
            for event in tool_use(0, "get_time", "{}"):
                yield event, 0
        elif command == "garbage":
            yield start({"type": "text", "text": ""}), 0
            yield delta({"type": "text_delta", "text": "fine "}), 1
            yield "event: content_block_delta\ndata: {this is not json\n\n", 0
        else:
            text = "done" if after_tool else f"echo: {command}"
            yield start({"type": "text", "text": ""}), 0
            for word in text.split(" "):
                yield delta({"type": "text_delta", "text": word + " "}), 1
            yield stop(), 0


def main() -> None:
    parser = argparse.ArgumentParser(description="a fake Anthropic Messages API server")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    fake = FakeAnthropic(args.port)
    asyncio.run(fake._server.serve())


if __name__ == "__main__":
    main()
