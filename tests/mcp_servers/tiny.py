"""A small MCP server for the tests, written with the official `mcp` SDK (MCPServer).

    python -m tests.mcp_servers.tiny                 serve on stdio
    python -m tests.mcp_servers.tiny --http PORT     serve streamable HTTP on 127.0.0.1:PORT/mcp

Tools: echo, add, slow (sleeps; notes when it is cancelled), progress (reports progress),
ask (elicits an answer), crash (the process dies), whoami (pid and how many calls this
process served: tells reuse from restart), secret_env (the value of an env var it was given).

What it sees is appended, one JSON line per happening, to the file named by TINY_JOURNAL (if
set): {"pid", "event": "started" | "cancelled" | "finished", "tool"}. That is how a test
knows the server itself saw a cancellation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Annotated

from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
)
from pydantic import BaseModel

server = MCPServer("tiny")
_calls = 0


def _journal(event: str, tool: str) -> None:
    path = os.environ.get("TINY_JOURNAL")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "event": event, "tool": tool}) + "\n")


def _count() -> int:
    global _calls
    _calls += 1
    return _calls


@server.tool()
async def echo(text: str) -> str:
    """Say the text back."""
    _count()
    return text


@server.tool()
async def add(a: int, b: int) -> int:
    """Add two integers."""
    _count()
    return a + b


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep for a while (cancellable)."""
    _count()
    _journal("started", "slow")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _journal("cancelled", "slow")
        raise
    _journal("finished", "slow")
    return f"slept {seconds}"


@server.tool()
async def progress(steps: int, ctx: Context, pause_s: float = 0.0) -> str:
    """Count to `steps`, reporting progress at each (and waiting `pause_s` after each: a
    tool that works between its reports)."""
    _count()
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps, f"step {i}")
        await asyncio.sleep(pause_s)
    return f"did {steps} steps"


class Answer(BaseModel):
    answer: str


def _question(question: str) -> Elicit[Answer]:
    # A resolver: the SDK asks the way the connection's protocol version wants (an
    # elicitation request mid-call, or an input-required result the client retries with).
    _journal("asked", "ask")
    return Elicit(question, Answer)


@server.tool()
async def ask(
    question: str, reply: Annotated[ElicitationResult[Answer], Resolve(_question)]
) -> str:
    """Ask the user a question and say what they answered."""
    _count()
    if isinstance(reply, AcceptedElicitation):
        return f"you said: {reply.data.answer}"
    return f"no answer ({reply.action})"


@server.tool()
async def crash() -> str:
    """Die at once, mid-call."""
    _journal("started", "crash")
    os._exit(3)


@server.tool()
async def whoami() -> str:
    """This process's id and how many calls it served."""
    return json.dumps({"pid": os.getpid(), "calls": _count()})


@server.tool()
async def secret_env(name: str) -> str:
    """The value of an environment variable this server was given."""
    return os.environ.get(name, "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None, help="serve streamable HTTP on PORT")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
