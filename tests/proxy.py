"""A loopback TCP proxy that cuts connections where a test tells it to: how the SDK's retries
and stream resumption are tested against a real server without mocking anything.

Each new connection takes the next entry of `plan` (or, once the plan is used up, asks
`chance` for one): `None` passes everything; `Cut("down", n)` forwards the first `n` bytes of
the server's answer and then drops both sides; `Cut("up", n)` does the same to the first `n`
bytes of the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Cut:
    direction: Literal["up", "down"]
    after_bytes: int


class CuttingProxy:
    """`delay_down`: the server's answers reach the client this many seconds late (in order):
    a slow link, for races that a quick one hides."""

    def __init__(self, target_port: int, delay_down: float = 0.0):
        self.target_port = target_port
        self.delay_down = delay_down
        self.plan: list[Cut | None] = []
        self.chance: Callable[[], Cut | None] = lambda: None
        self.connections = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _abort(writer)  # every pipe ends, and with it its connection's handler
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        cut = self.plan.pop(0) if self.plan else self.chance()
        writers: tuple[asyncio.StreamWriter, ...] = (client_w,)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            writers = (client_w, server_w)
            self._writers.update(writers)
            up = cut.after_bytes if cut and cut.direction == "up" else None
            down = cut.after_bytes if cut and cut.direction == "down" else None
            pipes = {
                asyncio.create_task(self._pipe(client_r, server_w, up)),
                asyncio.create_task(
                    self._delayed(server_r, client_w, self.delay_down)
                    if self.delay_down
                    else self._pipe(server_r, client_w, down)
                ),
            }
            while pipes:  # until both ends closed, or a cut
                done, pipes = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                if any(t.result() for t in done):
                    self.cuts += 1
                    break
            for pipe in pipes:
                pipe.cancel()
        except OSError:
            pass
        finally:
            for writer in writers:
                _abort(writer)
                self._writers.discard(writer)
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, budget: int | None
    ) -> bool:
        """Copy until EOF (False), or until bytes past `budget` arrive (True: cut there; with
        a budget of 0, when the first byte arrives, none of it forwarded)."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return False
                if budget is not None:
                    data, cut = data[:budget], len(data) > budget
                    budget -= len(data)
                    if data:
                        writer.write(data)
                        await writer.drain()
                    if cut:
                        return True
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return False

    @staticmethod
    async def _delayed(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> bool:
        """Copy until EOF, each chunk `delay` seconds after it arrived."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await chunks.get()
                await asyncio.sleep(due - loop.time())
                if not data:
                    writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        forwarding = asyncio.create_task(forward())
        try:
            while True:
                data = await reader.read(65536)
                chunks.put_nowait((loop.time() + delay, data))
                if not data:
                    await forwarding
                    return False
        except (ConnectionError, OSError):
            return False
        finally:
            forwarding.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection at once (RST, nothing more is sent)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
