"""Fakes shipped for tests (Tether's own and its users'): a local Chat Completions server
speaking the real streaming wire format, to test agents without an LLM provider.

`python -m tether.testing --port 9000` runs it on its own; `GET /_calls` lists the calls it
served, with the monotonic times each started and its connection closed, and its command.

The last user message says what to do:
  anything          stream "echo: <text>" word by word
  slow:N            stream N tokens, 10 ms apart
  call:NAME[:JSON]  first call: a tool call to NAME (arguments split over chunks); after the
                    tool result: "done"
  parallel          two tool calls in one answer (get_time, sleep 0)
  http:CODE[:N]     answer CODE with an OpenAI-style error body (the first N calls with this
                    text, else all; `retry-after-ms: 20` on 429)
  hang              wait 60 s before answering
  garbage           a malformed chunk mid-stream
  badargs           a tool call with arguments that are not JSON
  html              200 with an HTML page, not an event stream (a proxy's login page, say)
Like real providers, a transcript with a tool call lacking its result is refused with 400.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Call:
    body: dict[str, Any]
    authorization: str | None = None  # the Authorization header it came with
    started: float = field(default_factory=time.monotonic)
    chunks: int = 0
    closed_at: float | None = None
    finished: bool = False  # sent [DONE]; else the client went away first
    command: str = ""  # its last user message: what it was asked to do


def _dangling(messages: list[dict[str, Any]]) -> str | None:
    pending: set[str] = set()
    for m in messages:
        if m["role"] == "tool":
            pending.discard(m.get("tool_call_id", ""))
            continue
        if pending:
            return sorted(pending)[0]
        if m["role"] == "assistant":
            pending = {c["id"] for c in m.get("tool_calls") or []}
    return sorted(pending)[0] if pending else None


def _chunk(cid: str, delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake-1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


class FakeOpenAI:
    def __init__(self, port: int | None = None) -> None:
        self.calls: list[Call] = []
        self._seen: Counter[str] = Counter()  # calls per command
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
                Route("/_calls", self.list_calls, methods=["GET"]),
            ]
        )
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

    async def list_calls(self, request: Request) -> Response:
        calls = self.calls[int(request.query_params.get("after", 0)) :]
        hidden = ("body", "authorization")
        return JSONResponse(
            [{k: v for k, v in asdict(c).items() if k not in hidden} for c in calls]
        )

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        messages = body["messages"]
        if (missing := _dangling(messages)) is not None:
            return JSONResponse(
                {
                    "error": {
                        "message": "An assistant message with 'tool_calls' must be followed "
                        "by tool messages responding to each 'tool_call_id'. "
                        f"Missing: {missing}",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": None,
                    }
                },
                status_code=400,
            )
        call = Call(body, request.headers.get("authorization"))
        self.calls.append(call)
        last_user = next(m for m in reversed(messages) if m["role"] == "user")["content"]
        call.command = last_user
        after_tool = messages[-1]["role"] == "tool"
        self._seen[last_user] += 1
        _, code_text, *times = last_user.split(":") if last_user.startswith("http:") else ["", ""]
        if code_text and (not times or self._seen[last_user] <= int(times[0])):
            code = int(code_text)
            call.finished = True
            return JSONResponse(
                {
                    "error": {
                        "message": f"fake {code}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                status_code=code,
                headers={"retry-after-ms": "20"} if code == 429 else None,
            )
        if last_user == "hang":
            await asyncio.sleep(60)
        if last_user == "html":
            call.finished = True
            return Response("<html><body>Sign in</body></html>", media_type="text/html")
        return StreamingResponse(
            self._stream(call, last_user, after_tool), media_type="text/event-stream"
        )

    async def _stream(self, call: Call, command: str, after_tool: bool) -> AsyncIterator[str]:
        cid = f"chatcmpl-{len(self.calls)}"
        try:
            yield _chunk(cid, {"role": "assistant", "content": ""})
            finish = "stop"
            tokens = 0
            if command.startswith("slow:"):
                for i in range(int(command[5:])):
                    await asyncio.sleep(0.01)
                    yield _chunk(cid, {"content": f"t{i} "})
                    call.chunks += 1
                    tokens += 1
            elif command.startswith("call:") and not after_tool:
                _, name, *rest = command.split(":", 2)
                args = rest[0] if rest else "{}"
                yield _chunk(
                    cid,
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    },
                )
                for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                    yield _chunk(
                        cid, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                    )
                finish = "tool_calls"
            elif command == "parallel" and not after_tool:
                for index, (name, args) in enumerate(
                    [("get_time", "{}"), ("sleep", '{"seconds": 0}')]
                ):
                    yield _chunk(
                        cid,
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": f"call_{index}",
                                    "type": "function",
                                    "function": {"name": name, "arguments": args},
                                }
                            ]
                        },
                    )
                finish = "tool_calls"
            elif command == "badargs":
                yield _chunk(
                    cid,
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_x",
                                "type": "function",
                                "function": {"name": "get_time", "arguments": "{oops"},
                            }
                        ]
                    },
                )
                finish = "tool_calls"
            elif command == "garbage":
                yield _chunk(cid, {"content": "fine "})
                yield "data: {this is not json\n\n"
            else:
                text = "done" if after_tool else f"echo: {command}"
                for word in text.split(" "):
                    yield _chunk(cid, {"content": word + " "})
                    call.chunks += 1
                    tokens += 1
            yield _chunk(cid, {}, finish)
            usage = {"prompt_tokens": 11, "completion_tokens": tokens, "total_tokens": 11 + tokens}
            yield f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': 0, 'model': 'fake-1', 'choices': [], 'usage': usage})}\n\n"  # noqa: E501
            yield "data: [DONE]\n\n"
            call.finished = True
        finally:
            call.closed_at = time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description="a fake OpenAI Chat Completions server")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    fake = FakeOpenAI(args.port)
    asyncio.run(fake._server.serve())


if __name__ == "__main__":
    main()
