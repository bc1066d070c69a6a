"""Real MCP servers for the tests: tests/mcp_servers/tiny.py (the official Python SDK) on stdio
or streamable HTTP, and the npm `@modelcontextprotocol/server-everything` (tests/compat_node)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers import free_port, node_binary
from tether.runtime import mcp_client

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING = (
    ROOT / "tests/compat_node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)


def tiny_stdio(journal: Path, name: str = "tiny", **env: str) -> mcp_client.StdioServer:
    return mcp_client.StdioServer(
        name=name,
        command=sys.executable,
        args=("-m", "tests.mcp_servers.tiny"),
        env=tuple({"TINY_JOURNAL": str(journal), "PYTHONPATH": str(ROOT), **env}.items()),
        cwd=str(ROOT),
    )


def everything_stdio(name: str = "everything") -> mcp_client.StdioServer:
    return mcp_client.StdioServer(name=name, command=node_binary(), args=(str(EVERYTHING),))


def journal_lines(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text().splitlines() if line]


class HttpProcess:
    """A streamable HTTP MCP server in a process of its own, on a loopback port."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str], path: str = "/mcp"):
        self.argv = argv
        self.port = port
        self.env = env
        self.url = f"http://127.0.0.1:{port}{path}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> HttpProcess:
        self.proc = self._spawn()
        deadline = time.monotonic() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"MCP server {self.argv} did not start") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def tiny_http(journal: Path, port: int | None = None) -> HttpProcess:
    port = port or free_port()
    return HttpProcess(
        [sys.executable, "-m", "tests.mcp_servers.tiny", "--http", str(port)],
        port,
        {"TINY_JOURNAL": str(journal), "PYTHONPATH": str(ROOT)},
    )


def everything_http(port: int | None = None) -> HttpProcess:
    port = port or free_port()
    return HttpProcess(
        [node_binary(), str(EVERYTHING), "streamableHttp"], port, {"PORT": str(port)}
    )
