"""MCP servers' tools, through the official `mcp` SDK: connections, discovery, calls (DESIGN §10).

One `McpHub` per worker process holds the connections. For each server (and scope: a tenant,
so tenants never share a server's session) it keeps a small pool:

- A connection carries one call at a time. MCP does not say which call a server's elicitation
  request belongs to (only the transport knows, and the SDK does not pass it on), so with one
  call per connection an elicitation, like a progress notification, is that call's for sure.
  Idle connections are reused by the next call; up to `max_connections` calls to one server
  run at once, more wait.
- A connection lives in a task of its own (the SDK's task groups must be entered and left by
  one task); calls are made from the caller's task, so a stop cancels them like any await:
  the SDK then sends `notifications/cancelled` for the request, and the server stops the tool.
- A server that cannot start, or dies (its process exits, its HTTP endpoint goes away), gives
  the call in flight an error result; the broken connection is dropped, so the next call
  starts (or reconnects to) the server afresh.
- An elicitation is handed to the call's `on_elicit`. What it returns is the answer; what it
  raises (a pause for a human, say) ends the call: the server is told the call is cancelled
  and `call` raises it. Progress notifications go to the call's `on_progress`.
- `aclose` closes every connection (stdio servers are terminated).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import httpx2
import mcp_types

from tether import destinations

# The `mcp` SDK (about a second of CPU to import) is imported where a connection is made or
# its errors are read: a process whose agents use no MCP server, or a CLI command, never
# pays for it.
if TYPE_CHECKING:
    import mcp

log = logging.getLogger(__name__)

# How long a cancelled call gets to wind down (the SDK sends `notifications/cancelled`).
CANCEL_GRACE_S = 0.5


# --- what the hub is told and answers ---------------------------------------------------


@dataclass(frozen=True)
class StdioServer:
    """A server the operator declared: a command Tether runs and talks to on stdin/stdout."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # over a minimal default environment, not Tether's
    cwd: str | None = None


@dataclass(frozen=True)
class HttpServer:
    """A streamable HTTP server; headers carry its credentials (never shown). `guarded`: a
    tenant's own server, reached only through the destination guard (DESIGN §8)."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    guarded: bool = False


Server = StdioServer | HttpServer


@dataclass(frozen=True)
class ToolInfo:
    server: str
    name: str
    description: str
    input_schema: dict[str, Any]

    @property
    def qualified_name(self) -> str:
        return f"{self.server}.{self.name}"


@dataclass(frozen=True)
class ProgressUpdate:
    progress: float
    total: float | None
    message: str | None


@dataclass(frozen=True)
class Elicitation:
    """A server asks the user something mid-call."""

    message: str
    requested_schema: dict[str, Any] | None = None  # form mode: the answer's JSON schema
    url: str | None = None  # url mode: where the user should go

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.requested_schema is not None:
            out["requested_schema"] = self.requested_schema
        if self.url is not None:
            out["url"] = self.url
        return out


@dataclass(frozen=True)
class CallResult:
    text: str
    is_error: bool = False


OnProgress = Callable[[ProgressUpdate], Awaitable[None] | None]
# returns the answer: {"action": "accept", "content": {...}} | {"action": "decline" | "cancel"}
OnElicit = Callable[[Elicitation], Awaitable[dict[str, Any]]]


class McpUnavailable(Exception):
    """The server could not be started or reached."""


def _result_text(result: mcp_types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if text is not None else f"[resource {resource.uri}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{block.type} {getattr(block, 'mime_type', '')}]".replace(" ]", "]"))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


# --- one connection ----------------------------------------------------------------------


@dataclass
class _Call:
    on_progress: OnProgress | None
    on_elicit: OnElicit | None
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    abort: BaseException | None = None  # what on_elicit raised


class _Connection:
    def __init__(
        self,
        server: Server,
        http_client: Callable[[HttpServer], httpx2.AsyncClient],
        stderr: TextIO,
        on_tools_changed: Callable[[], None] = lambda: None,
    ):
        self.server = server
        self._http_client = http_client
        self._stderr = stderr
        self._on_tools_changed = on_tools_changed
        self.client: mcp.Client | None = None
        self.call: _Call | None = None
        self.failure: BaseException | None = None
        self.idle_since = time.monotonic()
        self.broken = False  # a request found it closed before its task noticed: not reused
        self.ready = asyncio.Event()
        self.gone = asyncio.Event()  # the connection ended, whatever the reason
        self._close = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.client is not None and not self.gone.is_set() and not self.broken

    async def open(self, timeout_s: float) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.server.name}")
        ready = asyncio.create_task(self.ready.wait())
        try:
            await asyncio.wait(
                {ready, self._task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if not self.alive:
            await self.close()
            why = self.failure or TimeoutError(f"no answer in {timeout_s:g} s")
            raise McpUnavailable(f"MCP server {self.server.name!r} did not start: {_why(why)}")

    def _transport(self) -> Any:
        if isinstance(self.server, StdioServer):
            from mcp.client.stdio import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=self.server.command,
                args=list(self.server.args),
                env=dict(self.server.env),
                cwd=self.server.cwd,
            )
            return stdio_client(params, errlog=self._stderr)
        return _http_transport(self.server.url, self._http_client(self.server))

    async def _run(self) -> None:
        import mcp

        try:
            async with mcp.Client(
                self._transport(),
                elicitation_callback=self._elicit,
                message_handler=self._notified,
                client_info=mcp_types.Implementation(name="tether", version="1"),
                cache=None,
            ) as client:
                self.client = client
                self.ready.set()
                await self._close.wait()
        except asyncio.CancelledError:
            raise  # this task was cancelled (a close that took too long): not the server's doing
        except BaseException as exc:  # recorded: a dead server is a call's result
            self.failure = exc
            if not self._close.is_set():
                log.warning("MCP server %r ended: %s", self.server.name, _why(exc))
        finally:
            self.gone.set()
            self.ready.set()

    async def _notified(self, message: Any) -> None:
        """A server's notification: a changed tool list is discovered again at the next use."""
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._on_tools_changed()

    async def _elicit(
        self, context: Any, params: mcp_types.ElicitRequestParams
    ) -> mcp_types.ElicitResult | mcp_types.ErrorData:
        call = self.call
        if call is None or call.on_elicit is None:
            return mcp_types.ErrorData(code=mcp_types.INVALID_REQUEST, message="not supported")
        request = Elicitation(
            message=params.message,
            requested_schema=getattr(params, "requested_schema", None),
            url=getattr(params, "url", None),
        )
        try:
            answer = await call.on_elicit(request)
        except Exception as exc:  # a pause (or a failure): the call ends here
            call.abort = exc
            call.aborted.set()
            return mcp_types.ErrorData(code=mcp_types.INVALID_REQUEST, message="not answered")
        return mcp_types.ElicitResult(action=answer["action"], content=answer.get("content"))

    async def close(self) -> None:
        self._close.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task


@contextlib.asynccontextmanager
async def _http_transport(url: str, client: httpx2.AsyncClient) -> AsyncIterator[Any]:
    """The SDK's streamable HTTP transport on our client, which we close (the SDK closes only
    clients it made)."""
    from mcp.client.streamable_http import streamable_http_client

    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


def _why(exc: BaseException) -> str:
    """The innermost, most telling message of an exception (group)."""
    import mcp

    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, mcp.MCPError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- a pool per server ---------------------------------------------------------------------


class _Pool:
    def __init__(self, open_connection: Callable[[], Awaitable[_Connection]], size: int):
        self._open = open_connection
        self._size = size
        self._idle: list[_Connection] = []
        self._count = 0
        self._changed = asyncio.Condition()
        self.tools: list[ToolInfo] | None = None  # discovered; forgotten when a server ends
        self.closed = False

    async def acquire(self) -> _Connection:
        async with self._changed:
            while True:
                if self.closed:
                    raise McpUnavailable("the MCP hub is closed")
                while self._idle:
                    conn = self._idle.pop()
                    if conn.alive:
                        return conn
                    self._count -= 1
                    self.tools = None
                if self._count < self._size:
                    self._count += 1
                    break
                await self._changed.wait()
        try:
            return await self._open()
        except BaseException:
            await self._forget()
            raise

    async def release(self, conn: _Connection) -> None:
        conn.call = None
        conn.idle_since = time.monotonic()
        if conn.alive and not self.closed:
            async with self._changed:
                self._idle.append(conn)
                self._changed.notify()
            return
        await conn.close()
        self.tools = None
        await self._forget()

    async def _forget(self) -> None:
        async with self._changed:
            self._count -= 1
            self._changed.notify()

    @property
    def empty(self) -> bool:
        return self._count == 0

    async def sweep(self, max_idle_s: float) -> None:
        """Close the connections idle for longer than `max_idle_s` (their servers stop)."""
        now = time.monotonic()
        old = [c for c in self._idle if now - c.idle_since > max_idle_s or not c.alive]
        if not old:
            return
        self._idle = [c for c in self._idle if c not in old]
        await asyncio.gather(*(c.close() for c in old))
        async with self._changed:
            self._count -= len(old)
            self._changed.notify_all()

    async def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close() for c in idle))
        async with self._changed:
            self._changed.notify_all()


# --- the hub -------------------------------------------------------------------------------


def _default_http_client(server: HttpServer) -> httpx2.AsyncClient:
    from mcp.shared._httpx_utils import create_mcp_http_client

    return create_mcp_http_client(headers=dict(server.headers))


def _timeout() -> httpx2.Timeout:
    """The SDK's own: a response stream may stay open for a long while."""
    from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

    return httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)


class McpHub:
    """The MCP connections of one worker process."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 30.0,
        max_connections: int = 4,
        idle_timeout_s: float = 300.0,
        http_client: Callable[[HttpServer], httpx2.AsyncClient] = _default_http_client,
        stderr: TextIO | None = None,
        guard: destinations.Guard | None = None,
    ):
        """`http_client` makes the clients of the operator's HTTP servers; a tenant's own
        (`guarded`) are reached only through `guard` (private addresses refused by default)."""
        self.connect_timeout_s = connect_timeout_s
        self._guard = guard or destinations.Guard()
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self._sweeper: asyncio.Task[None] | None = None
        self._http_client = http_client
        self._stderr = stderr or sys.stderr
        self._pools: dict[tuple[str, Server], _Pool] = {}
        self._closed = False

    def _pool(self, server: Server, scope: str) -> _Pool:
        if self._closed:
            raise McpUnavailable("the MCP client is shut down")
        key = (scope, server)
        if (pool := self._pools.get(key)) is None:
            pool = self._pools[key] = self._new_pool(server)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="mcp-idle-sweeper")
        return pool

    def _new_pool(self, server: Server) -> _Pool:
        def forget_tools() -> None:  # the server's tools changed: discovered again when asked
            pool.tools = None

        async def open_connection() -> _Connection:
            conn = _Connection(server, self._client_for, self._stderr, forget_tools)
            await conn.open(self.connect_timeout_s)
            return conn

        pool = _Pool(open_connection, self.max_connections)
        return pool

    def _client_for(self, server: HttpServer) -> httpx2.AsyncClient:
        if server.guarded:
            return self._guard.httpx2_client(headers=dict(server.headers), timeout=_timeout())
        return self._http_client(server)

    async def _sweep(self) -> None:
        """Stop servers nobody called for `idle_timeout_s`: a stdio server is a process, and
        a pool per tenant and server would otherwise keep them all until shutdown."""
        while True:
            await asyncio.sleep(self.idle_timeout_s / 2)
            for key, pool in list(self._pools.items()):
                try:
                    await pool.sweep(self.idle_timeout_s)
                except Exception:  # the sweeper must outlive a bad close
                    log.exception("closing idle MCP connections failed")
                if pool.empty and self._pools.get(key) is pool:
                    del self._pools[key]

    async def tools(self, server: Server, scope: str = "") -> list[ToolInfo]:
        """The server's tools (discovered once per connection life, then remembered).
        Raises McpUnavailable if the server cannot be reached."""
        import mcp

        pool = self._pool(server, scope)
        if pool.tools is not None:
            return pool.tools
        conn = await pool.acquire()
        try:
            assert conn.client is not None
            found: list[ToolInfo] = []
            cursor: str | None = None
            for _ in range(100):  # pages; a server that never ends its listing is cut short
                page = await _until_gone(conn, conn.client.list_tools(cursor=cursor))
                found += [
                    ToolInfo(server.name, t.name, t.description or "", dict(t.input_schema))
                    for t in page.tools
                ]
                if (cursor := page.next_cursor) is None:
                    break
            pool.tools = found
            return found
        except (mcp.MCPError, OSError, httpx2.HTTPError, _Gone) as exc:
            conn.broken = True
            raise McpUnavailable(
                f"MCP server {server.name!r} did not list its tools: {_why(exc)}"
            ) from exc
        finally:
            await pool.release(conn)

    async def call(
        self,
        server: Server,
        tool: str,
        arguments: dict[str, Any],
        *,
        scope: str = "",
        on_progress: OnProgress | None = None,
        on_elicit: OnElicit | None = None,
    ) -> CallResult:
        """Call a tool. Failures of the server are an error result, never an exception; what
        `on_elicit` raises is raised; a cancellation is passed to the server."""
        try:
            conn = await (pool := self._pool(server, scope)).acquire()
        except McpUnavailable as exc:
            return CallResult(str(exc), is_error=True)
        call = conn.call = _Call(on_progress, on_elicit)

        async def report(progress: float, total: float | None, message: str | None) -> None:
            if on_progress is not None:
                outcome = on_progress(ProgressUpdate(progress, total, message))
                if inspect.isawaitable(outcome):
                    await outcome

        assert conn.client is not None
        request = asyncio.create_task(
            conn.client.call_tool(tool, arguments, progress_callback=report)
        )
        # a request the call stopped waiting for (a pause, a stop, a dead server) may still
        # end in an error: it is no one's to raise
        request.add_done_callback(_retrieve)
        try:
            return await _outcome(server, conn, call, request)
        finally:
            if not request.done():
                request.cancel()  # the SDK tells the server: notifications/cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({request}, timeout=CANCEL_GRACE_S)
            await pool.release(conn)

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(p.close() for p in pools))


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Gone(Exception):
    """The connection ended while a request was in flight."""


async def _until_gone(conn: _Connection, awaitable: Awaitable[Any]) -> Any:
    """Await a request, or raise _Gone if the connection ends first."""
    task = asyncio.ensure_future(awaitable)
    gone = asyncio.create_task(conn.gone.wait())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        raise _Gone(_why(conn.failure) if conn.failure else "connection closed")
    return task.result()


async def _outcome(
    server: Server, conn: _Connection, call: _Call, request: asyncio.Task[Any]
) -> CallResult:
    import mcp

    gone = asyncio.create_task(conn.gone.wait())
    aborted = asyncio.create_task(call.aborted.wait())
    try:
        await asyncio.wait({request, gone, aborted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        aborted.cancel()
    if call.abort is not None:
        raise call.abort
    died = f"Error: MCP server {server.name!r} died during the call"
    if not request.done():
        conn.broken = True
        why = _why(conn.failure) if conn.failure else "the connection closed"
        return CallResult(f"{died}: {why}", is_error=True)
    try:
        result: mcp_types.CallToolResult = request.result()
    except mcp.MCPError as exc:
        if conn.gone.is_set() or exc.code == mcp_types.CONNECTION_CLOSED:
            conn.broken = True
            return CallResult(f"{died}: {_why(exc)}", is_error=True)
        return CallResult(f"Error: MCP server {server.name!r}: {exc.message}", is_error=True)
    except (OSError, httpx2.HTTPError) as exc:
        conn.broken = True
        return CallResult(f"Error: MCP server {server.name!r} unreachable: {_why(exc)}", True)
    return CallResult(_result_text(result), is_error=bool(result.is_error))
